// proxy/console.h — the DBA console: `psql -h … -p <console port> -U <admin> pgkeel`. It speaks
// the PostgreSQL protocol (simple query only) on the main thread, beside the keeper it reports
// on, and answers a small table of verbs with ordinary result sets.
#pragma once

#include <event2/listener.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "proxy/auth_session.h"
#include "proxy/conn.h"
#include "proxy/handles.h"
#include "proxy/shared.h"
#include "proxy/status.h"

namespace pgkeel::proxy {

// The reply to one console command, before it is encoded.
struct ConsoleReply {
  std::optional<ConsoleTable> table;
  std::string command_tag;  // e.g. "SHOW", "FAILOVER"
  std::string notice;       // sent as a NoticeResponse first, when set
  std::string error_sqlstate;
  std::string error_message;
};

using ConsoleReplyFn = std::function<void(ConsoleReply)>;

// Parses and runs one command; `reply` is called on the main thread when it is done (at once
// for most, later for SHOW CLIENTS, PAUSE, FAILOVER, SWITCHOVER, KILL). `admin`: may act;
// monitor users may only SHOW.
void run_console_command(Shared& shared, std::string_view sql, bool admin, const std::string& who, ConsoleReplyFn reply);

// Encodes a reply as RowDescription / DataRow / CommandComplete (or ErrorResponse).
std::string encode_console_reply(const ConsoleReply& reply);

class ConsoleConn;

class Console {
 public:
  Console(Shared& shared, event_base* base);
  ~Console();
  Console(const Console&) = delete;
  Console& operator=(const Console&) = delete;

  // Binds host:port; returns false (and logs) on failure.
  bool listen(const std::string& host, std::uint16_t port);
  // A listening socket handed over by the previous pgkeel process (takeover); owned from here.
  bool listen_on(int fd);
  // The listening socket (-1: none), for a takeover to hand over.
  int listener_fd() const;
  void close_listener();
  void forget(ConsoleConn* c);
  Shared& shared() { return shared_; }
  event_base* base() { return base_; }

 private:
  static void on_accept(evconnlistener* l, evutil_socket_t fd, sockaddr* addr, int len, void* arg);

  Shared& shared_;
  event_base* base_;
  ListenerPtr listener_;
  std::unordered_map<ConsoleConn*, std::unique_ptr<ConsoleConn>> conns_;
  std::vector<std::unique_ptr<ConsoleConn>> dead_;
  EventPtr reap_;
};

}  // namespace pgkeel::proxy
