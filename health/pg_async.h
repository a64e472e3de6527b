// health/pg_async.h — one libpq connection driven by a libevent loop: non-blocking connect and
// queries with deadlines, never a blocking libpq call. Used by probes and by the admin steps of
// a failover (ALTER SYSTEM, pg_promote). Conninfo must carry `hostaddr` (numeric), so
// PQconnectStart never resolves a name.
#pragma once

#include <event2/event.h>
#include <libpq-fe.h>

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "conf/config.h"

namespace pgkeel::health {

struct PgConnDeleter {
  void operator()(PGconn* c) const { PQfinish(c); }
};
struct PgEventDeleter {
  void operator()(event* e) const { event_free(e); }
};
using PgConnHandle = std::unique_ptr<PGconn, PgConnDeleter>;
using PgEventHandle = std::unique_ptr<event, PgEventDeleter>;

struct PgResult {
  bool ok = false;
  bool timed_out = false;
  bool connection_lost = false;  // the connection is gone (reset, refused, EOF)
  std::string error;             // libpq's message, one line
  std::string sqlstate;          // from an ErrorResponse, when there was one
  std::vector<std::vector<std::optional<std::string>>> rows;  // of the last statement
};

// A value for a libpq conninfo string: single-quoted, with ' and \ escaped.
std::string conninfo_value(const std::string& s);

// The libpq TLS keywords for `mode` and [server_tls]'s files (" sslmode=verify-full
// sslrootcert='...'"), so that pgkeel's own libpq connections (probes, admin actions, auth_query)
// meet the nodes as the data path does. Without a CA file, libpq's default root file applies.
std::string tls_conninfo(conf::SslMode mode, const conf::ServerTlsConfig& tls);

class PgAsync {
 public:
  using Callback = std::function<void(const PgResult&)>;

  PgAsync(event_base* base, std::string conninfo);
  ~PgAsync();
  PgAsync(const PgAsync&) = delete;
  PgAsync& operator=(const PgAsync&) = delete;

  bool connected() const { return conn_ && PQstatus(conn_.get()) == CONNECTION_OK && !connecting_; }
  bool busy() const { return static_cast<bool>(cb_) || late_; }
  // Patience: past a query's deadline the caller hears "timed out" as usual, but the connection is
  // kept for up to `wait` more, its late answer read and dropped, so a slow server does not cost a
  // new connection (and its authentication) every time. A run() meanwhile reports a timeout at once.
  // A connect that passes its deadline goes on the same way and leaves the connection ready.
  void set_patience(std::chrono::milliseconds wait) { patience_ = wait; }
  // Connects if needed, then runs `sql` (may hold several statements; the last one's rows are
  // returned). `cb` runs exactly once, from the loop, never from inside run().
  void run(const std::string& sql, std::chrono::milliseconds timeout, Callback cb);
  // One statement with text parameters ($1, $2, ...), sent with the extended protocol: values are
  // never spliced into the SQL, whatever standard_conforming_strings says.
  void run_params(const std::string& sql, std::vector<std::string> params, std::chrono::milliseconds timeout,
                  Callback cb);
  void close();

 private:
  void start(const std::string& sql, std::optional<std::vector<std::string>> params, std::chrono::milliseconds timeout,
             Callback cb);
  static void on_io(evutil_socket_t fd, short what, void* arg);
  static void on_timeout(evutil_socket_t fd, short what, void* arg);
  static void on_patience_over(evutil_socket_t fd, short what, void* arg);
  void start_connect();
  void poll_connect();
  void send_query();
  void read_results();
  void wait_for(short what);
  void lost();
  void finish(PgResult r);

  event_base* base_;
  std::string conninfo_;
  PgConnHandle conn_;
  PgEventHandle io_;
  PgEventHandle timer_;
  PgEventHandle patience_timer_;
  std::chrono::milliseconds patience_{0};
  bool late_ = false;  // past the deadline, still waiting (patience)
  bool connecting_ = false;
  std::string sql_;
  std::optional<std::vector<std::string>> params_;  // run_params(): sent with PQsendQueryParams
  Callback cb_;
  PgResult partial_;
};

}  // namespace pgkeel::health
