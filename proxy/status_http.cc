#include "proxy/status_http.h"

#include "proxy/log.h"
#include "proxy/shared.h"

namespace pgkeel::proxy {

struct StatusServer::Impl {};

StatusServer::StatusServer(Shared&, event_base*) : impl_(std::make_unique<Impl>()) {}
StatusServer::~StatusServer() = default;

bool StatusServer::listen(const std::string& host, std::uint16_t port) {
  log::error("status").kv("event", "listen_failed").kv("addr", host + ":" + std::to_string(port))
      .kv("reason", "the status port is not implemented yet").emit();
  return false;
}

}  // namespace pgkeel::proxy
