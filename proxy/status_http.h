// proxy/status_http.h — the HTTP status port (libevent's evhttp) on the main thread:
// /live, /health, /ready, /metrics (Prometheus text), /api/status (JSON) and / (the status page).
// It renders the same StatusSnapshot as the console.
#pragma once

#include <event2/event.h>

#include <cstdint>
#include <memory>
#include <string>

namespace pgkeel::proxy {

struct Shared;

class StatusServer {
 public:
  StatusServer(Shared& shared, event_base* base);
  ~StatusServer();
  StatusServer(const StatusServer&) = delete;
  StatusServer& operator=(const StatusServer&) = delete;

  // Binds host:port; returns false (and logs) on failure.
  bool listen(const std::string& host, std::uint16_t port);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace pgkeel::proxy
