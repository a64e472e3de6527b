// proxy/status_http.h — the HTTP status port (libevent's evhttp) on the main thread:
// /live, /health, /ready, /metrics (Prometheus text), /api/status (JSON) and / (the status page).
// It renders the same StatusSnapshot as the console, gathers one for all concurrent requests and
// reuses its renderings for a second, so scrapers cannot crowd out the keeper on that thread;
// the client and server lists need a console user's HTTP Basic credentials.
#pragma once

#include <event2/event.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

namespace pgkeel::proxy {

struct Shared;
struct StatusSnapshot;

class StatusServer {
 public:
  StatusServer(Shared& shared, event_base* base);
  ~StatusServer();
  StatusServer(const StatusServer&) = delete;
  StatusServer& operator=(const StatusServer&) = delete;

  // Binds host:port; returns false (and logs) on failure.
  bool listen(const std::string& host, std::uint16_t port);
  // A listening socket handed over by the previous pgkeel process (takeover); owned from here.
  bool listen_on(int fd);
  // The listening socket (-1: none), for a takeover to hand over; close_listener() stops it.
  int listener_fd() const;
  void close_listener();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// What /live, /ready and /health answer, and why. /live: the process serves HTTP. /ready: it
// can take clients (workers listening, not draining for shutdown, a writer decided at least
// once; a client that arrives during a failover is held, not refused). /health: a writable
// primary is routable right now.
struct Readiness {
  bool ready = false;
  std::string ready_why;
  bool healthy = false;
  std::string health_why;
  bool draining = false;
};

// An HTTP Basic "Authorization" header (RFC 7617), or nullopt when it is not one.
struct BasicCredentials {
  std::string user;
  std::string password;
};
std::optional<BasicCredentials> parse_basic_auth(std::string_view header);

// The pure renderers behind /metrics and /api/status (tested without a socket).

// A JSON string literal: quotes, backslash and control characters escaped; valid UTF-8 passed
// through; each byte of an invalid UTF-8 sequence becomes U+FFFD, so the output is always JSON.
std::string json_string(std::string_view s);

// Prometheus text exposition format 0.0.4.
std::string render_metrics(const StatusSnapshot& s, const Readiness& r);

// The /api/status document. With `connections`, the clients and servers tables are included.
std::string render_status_json(const StatusSnapshot& s, const Readiness& r, bool connections);

}  // namespace pgkeel::proxy
