// tools/hold-clients.cc — pgkeel-hold-clients: one process opens N authenticated connections to a
// PostgreSQL endpoint (pgkeel, PgBouncer or a server), optionally runs one SELECT 1 on each, then
// holds them idle until SIGTERM/SIGINT or --hold-seconds. The memory benchmark
// (tools/bench-memory.sh) measures the proxy while this holds its clients.
//
//   pgkeel-hold-clients --port P --clients N [--host 127.0.0.1] [--user app]
//       [--password app-pass] [--dbname app] [--mode query|auth] [--concurrency C]
//       [--connect-timeout S] [--hold-seconds S] [--ready-file FILE]
//
//   --mode query  (default) a client counts once it is logged in (ReadyForQuery) and its
//                 SELECT 1 returned one row.
//   --mode auth   a client counts once it has received AuthenticationOk; it never sends a query.
//                 Polling stops there, so a proxy that links a server only later (pgkeel queues
//                 the client for one) is measured in that state, without a ReadyForQuery.
//   --ready-file  written (atomically) once every client is held or has failed: one line
//                 "held=H failed=F". Progress and errors go to stderr; the summary to stdout.
//
// Everything is non-blocking libpq (PQconnectStartParams / PQconnectPoll, PQsendQuery) on one
// epoll set, with at most C connections in progress at once so the listener's backlog and the
// proxy's login path are not flooded. RLIMIT_NOFILE is raised as needed (up to the hard limit,
// and beyond it when we may). While holding, each socket is watched for EPOLLRDHUP only: a peer
// that closes (a FATAL, a timeout, a crash) counts as an error; bytes that arrive unasked (a
// ParameterStatus) are left unread. Exit status: 0 when all N were held to the end and none
// failed, 1 otherwise, 2 for bad arguments.
#include <libpq-fe.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "tools/ledger/ledger.h"  // PgConnPtr: the libpq handle, declared once under tools/

namespace {

using pgkeel::ledger::PgConnPtr;
using Clock = std::chrono::steady_clock;

volatile std::sig_atomic_t g_stop = 0;
void on_signal(int) { g_stop = 1; }

enum class Mode { kQuery, kAuth };

struct Options {
  std::string host = "127.0.0.1";
  std::string port;
  std::string user = "app";
  std::string password = "app-pass";
  std::string dbname = "app";
  int clients = 0;
  Mode mode = Mode::kQuery;
  int concurrency = 200;
  int connect_timeout_s = 60;
  int hold_seconds = 0;  // 0: until a signal
  std::string ready_file;
};

// Where one connection is in its life. kHeld and kFailed are final until the end.
enum class Phase : std::uint8_t { kNotStarted, kConnecting, kQuerying, kHeld, kFailed };

struct Conn {
  PgConnPtr pg;
  Phase phase = Phase::kNotStarted;
  int fd = -1;               // registered in epoll, or -1
  std::uint32_t events = 0;  // what it is registered for
  PostgresPollingStatusType poll = PGRES_POLLING_WRITING;
  Clock::time_point started{};
  bool got_row = false;
};

[[noreturn]] void usage(const char* why) {
  std::fprintf(stderr,
               "pgkeel-hold-clients: %s\n"
               "usage: pgkeel-hold-clients --port P --clients N [--host H] [--user U] "
               "[--password PW] [--dbname DB] [--mode query|auth] [--concurrency C] "
               "[--connect-timeout S] [--hold-seconds S] [--ready-file FILE]\n",
               why);
  std::exit(2);
}

int to_int(std::string_view name, const char* value, int min) {
  char* end = nullptr;
  const long v = std::strtol(value, &end, 10);
  if (end == value || *end != '\0' || v < min || v > 10'000'000) {
    usage((std::string(name) + " wants a number >= " + std::to_string(min)).c_str());
  }
  return static_cast<int>(v);
}

Options parse_args(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string_view a = argv[i];
    if (a == "-h" || a == "--help") usage("help");
    if (i + 1 >= argc) usage(("missing value for " + std::string(a)).c_str());
    const char* v = argv[++i];
    if (a == "--host")
      o.host = v;
    else if (a == "--port")
      o.port = v;
    else if (a == "--user")
      o.user = v;
    else if (a == "--password")
      o.password = v;
    else if (a == "--dbname")
      o.dbname = v;
    else if (a == "--clients")
      o.clients = to_int(a, v, 1);
    else if (a == "--concurrency")
      o.concurrency = to_int(a, v, 1);
    else if (a == "--connect-timeout")
      o.connect_timeout_s = to_int(a, v, 1);
    else if (a == "--hold-seconds")
      o.hold_seconds = to_int(a, v, 0);
    else if (a == "--ready-file")
      o.ready_file = v;
    else if (a == "--mode") {
      const std::string_view m = v;
      if (m == "query")
        o.mode = Mode::kQuery;
      else if (m == "auth")
        o.mode = Mode::kAuth;
      else
        usage("--mode is query or auth");
    } else {
      usage(("unknown argument " + std::string(a)).c_str());
    }
  }
  if (o.port.empty()) usage("--port is required");
  if (o.clients == 0) usage("--clients is required");
  return o;
}

// Our own sockets plus stdio and epoll need headroom above N.
bool raise_fd_limit(int clients) {
  const rlim_t want = static_cast<rlim_t>(clients) + 64;
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return false;
  if (rl.rlim_cur >= want) return true;
  if (rl.rlim_max < want) rl.rlim_max = want;  // only root (CAP_SYS_RESOURCE) may do this
  rl.rlim_cur = want;
  if (setrlimit(RLIMIT_NOFILE, &rl) == 0) return true;
  std::fprintf(stderr, "hold-clients: cannot raise RLIMIT_NOFILE to %llu: %s\n",
               static_cast<unsigned long long>(want), std::strerror(errno));
  return false;
}

std::string first_line(const char* msg) {
  std::string s = msg != nullptr ? msg : "";
  if (const auto nl = s.find('\n'); nl != std::string::npos) s.resize(nl);
  return s.empty() ? "(no message)" : s;
}

class Holder {
 public:
  explicit Holder(const Options& o) : o_(o), conns_(static_cast<std::size_t>(o.clients)) {
    ep_ = epoll_create1(EPOLL_CLOEXEC);
  }
  ~Holder() {
    if (ep_ >= 0) close(ep_);
  }
  Holder(const Holder&) = delete;
  Holder& operator=(const Holder&) = delete;

  bool ok() const { return ep_ >= 0; }

  // Connects everyone (bounded concurrency), then holds until a signal or the hold time.
  void run() {
    const auto t0 = Clock::now();
    auto last_progress = t0;
    std::vector<epoll_event> ready(1024);
    while (!g_stop && settled_ < o_.clients) {
      while (in_flight_ < o_.concurrency && next_ < o_.clients) start(next_++);
      const int n = epoll_wait(ep_, ready.data(), static_cast<int>(ready.size()), 200);
      for (int i = 0; i < n; ++i)
        step(ready[static_cast<std::size_t>(i)].data.u32,
             ready[static_cast<std::size_t>(i)].events);
      const auto now = Clock::now();
      expire(now);
      if (now - last_progress >= std::chrono::seconds(2)) {
        progress("connecting", now - t0);
        last_progress = now;
      }
    }
    connect_time_ = Clock::now() - t0;
    progress("connected", connect_time_);
    if (!o_.ready_file.empty()) write_ready_file();

    const auto hold_until = Clock::now() + std::chrono::seconds(o_.hold_seconds);
    while (!g_stop && (o_.hold_seconds == 0 || Clock::now() < hold_until)) {
      const int n = epoll_wait(ep_, ready.data(), static_cast<int>(ready.size()), 500);
      for (int i = 0; i < n; ++i)
        step(ready[static_cast<std::size_t>(i)].data.u32,
             ready[static_cast<std::size_t>(i)].events);
    }
    held_at_end_ = count(Phase::kHeld);
  }

  void report() const {
    const long ms = std::chrono::duration_cast<std::chrono::milliseconds>(connect_time_).count();
    std::printf(
        "hold-clients: target=%s:%s mode=%s clients=%d held=%d failed=%d lost_while_held=%d "
        "connect_ms=%ld\n",
        o_.host.c_str(), o_.port.c_str(), o_.mode == Mode::kQuery ? "query" : "auth", o_.clients,
        held_at_end_, failed_, lost_, ms);
    for (const auto& [msg, n] : errors_)
      std::printf("hold-clients: error x%d: %s\n", n, msg.c_str());
    std::fflush(stdout);
  }

  bool all_held() const { return held_at_end_ == o_.clients && failed_ == 0; }

 private:
  void start(int i) {
    Conn& c = conns_[static_cast<std::size_t>(i)];
    const std::string timeout = std::to_string(o_.connect_timeout_s);
    const char* keys[] = {"hostaddr",
                          "host",
                          "port",
                          "user",
                          "password",
                          "dbname",
                          "sslmode",
                          "gssencmode",
                          "connect_timeout",
                          "application_name",
                          nullptr};
    const char* values[] = {
        o_.host.c_str(),     o_.host.c_str(),       o_.port.c_str(), o_.user.c_str(),
        o_.password.c_str(), o_.dbname.c_str(),     "disable",       "disable",
        timeout.c_str(),     "pgkeel-hold-clients", nullptr};
    c.pg.reset(PQconnectStartParams(keys, values, 0));
    c.started = Clock::now();
    c.phase = Phase::kConnecting;
    ++in_flight_;
    if (!c.pg || PQstatus(c.pg.get()) == CONNECTION_BAD) {
      fail(i, c.pg ? PQerrorMessage(c.pg.get()) : "out of memory");
      return;
    }
    c.poll = PGRES_POLLING_WRITING;  // as libpq documents for the first PQconnectPoll
    watch(i, EPOLLOUT);
  }

  // Registers (or re-registers) connection i's current socket for `events`.
  void watch(int i, std::uint32_t events) {
    Conn& c = conns_[static_cast<std::size_t>(i)];
    const int fd = PQsocket(c.pg.get());
    if (fd != c.fd && c.fd >= 0) {
      epoll_ctl(ep_, EPOLL_CTL_DEL, c.fd, nullptr);  // libpq may have closed it already
      c.fd = -1;
    }
    if (fd < 0) {
      fail(i, "libpq has no socket");
      return;
    }
    if (c.fd == fd && c.events == events) return;
    epoll_event ev{};
    ev.events = events;
    ev.data.u32 = static_cast<std::uint32_t>(i);
    const int op = c.fd == fd ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
    if (epoll_ctl(ep_, op, fd, &ev) != 0) {
      fail(i, std::string("epoll_ctl: ") + std::strerror(errno));
      return;
    }
    c.fd = fd;
    c.events = events;
  }

  void unwatch(Conn& c) {
    if (c.fd >= 0) epoll_ctl(ep_, EPOLL_CTL_DEL, c.fd, nullptr);
    c.fd = -1;
    c.events = 0;
  }

  void step(std::uint32_t index, std::uint32_t events) {
    const int i = static_cast<int>(index);
    Conn& c = conns_[index];
    switch (c.phase) {
      case Phase::kConnecting:
        connect_step(i);
        break;
      case Phase::kQuerying:
        query_step(i);
        break;
      case Phase::kHeld:
        if ((events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) != 0) {
          ++lost_;
          --held_;
          c.phase = Phase::kFailed;
          ++failed_;
          // The peer's last word, if it sent a FATAL before closing (query mode reads it).
          std::string why = "peer closed a held connection";
          if (PQconsumeInput(c.pg.get()) == 0) why += ": " + first_line(PQerrorMessage(c.pg.get()));
          note_error(why);
          unwatch(c);
          c.pg.reset();
        }
        break;
      default:
        break;
    }
  }

  void connect_step(int i) {
    Conn& c = conns_[static_cast<std::size_t>(i)];
    c.poll = PQconnectPoll(c.pg.get());
    const ConnStatusType st = PQstatus(c.pg.get());
    if (c.poll == PGRES_POLLING_FAILED || st == CONNECTION_BAD) {
      fail(i, PQerrorMessage(c.pg.get()));
      return;
    }
    if (o_.mode == Mode::kAuth && (st == CONNECTION_AUTH_OK || c.poll == PGRES_POLLING_OK)) {
      hold(i);
      return;
    }
    if (c.poll == PGRES_POLLING_OK) {
      if (PQsetnonblocking(c.pg.get(), 1) != 0 || PQsendQuery(c.pg.get(), "SELECT 1") == 0) {
        fail(i, PQerrorMessage(c.pg.get()));
        return;
      }
      c.phase = Phase::kQuerying;
      flush_or_read(i);
      return;
    }
    watch(i, c.poll == PGRES_POLLING_READING ? EPOLLIN : EPOLLOUT);
  }

  void flush_or_read(int i) {
    Conn& c = conns_[static_cast<std::size_t>(i)];
    const int f = PQflush(c.pg.get());
    if (f < 0) {
      fail(i, PQerrorMessage(c.pg.get()));
      return;
    }
    watch(i, f == 1 ? EPOLLIN | EPOLLOUT : EPOLLIN);
  }

  void query_step(int i) {
    Conn& c = conns_[static_cast<std::size_t>(i)];
    if (PQconsumeInput(c.pg.get()) == 0) {
      fail(i, PQerrorMessage(c.pg.get()));
      return;
    }
    while (PQisBusy(c.pg.get()) == 0) {
      pgkeel::ledger::PgResultPtr res(PQgetResult(c.pg.get()));
      if (!res) {  // the query cycle is over
        if (!c.got_row) {
          fail(i, "SELECT 1 returned no row");
          return;
        }
        hold(i);
        return;
      }
      if (PQresultStatus(res.get()) != PGRES_TUPLES_OK) {
        fail(i, PQresultErrorMessage(res.get()));
        return;
      }
      c.got_row = PQntuples(res.get()) == 1;
    }
    flush_or_read(i);
  }

  void hold(int i) {
    Conn& c = conns_[static_cast<std::size_t>(i)];
    c.phase = Phase::kHeld;
    ++held_;
    settle();
    watch(i, EPOLLRDHUP);
  }

  void fail(int i, const std::string& why) {
    Conn& c = conns_[static_cast<std::size_t>(i)];
    unwatch(c);
    c.pg.reset();
    c.phase = Phase::kFailed;
    ++failed_;
    settle();
    note_error(first_line(why.c_str()));
  }

  void settle() {
    --in_flight_;
    ++settled_;
  }

  void note_error(const std::string& msg) {
    if (errors_[msg]++ < 3) std::fprintf(stderr, "hold-clients: error: %s\n", msg.c_str());
  }

  // libpq's connect_timeout works only in blocking calls; enforce ours (plus the query) here.
  void expire(Clock::time_point now) {
    const auto limit = std::chrono::seconds(o_.connect_timeout_s);
    for (int i = first_unsettled_; i < next_; ++i) {
      const Conn& c = conns_[static_cast<std::size_t>(i)];
      if ((c.phase == Phase::kConnecting || c.phase == Phase::kQuerying) &&
          now - c.started > limit) {
        fail(i, c.phase == Phase::kConnecting ? "timeout while connecting"
                                              : "timeout waiting for SELECT 1");
      }
    }
    while (first_unsettled_ < next_ &&
           (conns_[static_cast<std::size_t>(first_unsettled_)].phase == Phase::kHeld ||
            conns_[static_cast<std::size_t>(first_unsettled_)].phase == Phase::kFailed)) {
      ++first_unsettled_;
    }
  }

  int count(Phase p) const {
    int n = 0;
    for (const Conn& c : conns_) n += c.phase == p ? 1 : 0;
    return n;
  }

  void progress(const char* what, Clock::duration elapsed) const {
    std::fprintf(stderr, "hold-clients: %s: held=%d failed=%d in_progress=%d of %d (%.1f s)\n",
                 what, held_, failed_, in_flight_, o_.clients,
                 std::chrono::duration<double>(elapsed).count());
  }

  void write_ready_file() const {
    const std::string tmp = o_.ready_file + ".tmp";
    {
      std::ofstream out(tmp);
      out << "held=" << held_ << " failed=" << failed_ << "\n";
    }
    std::rename(tmp.c_str(), o_.ready_file.c_str());
  }

  const Options& o_;
  std::vector<Conn> conns_;
  int ep_ = -1;
  int next_ = 0;             // the next connection to start
  int first_unsettled_ = 0;  // every connection before it is held or failed
  int in_flight_ = 0;
  int settled_ = 0;
  int held_ = 0;
  int failed_ = 0;
  int lost_ = 0;
  int held_at_end_ = 0;
  Clock::duration connect_time_{};
  std::map<std::string, int> errors_;
};

}  // namespace

int main(int argc, char** argv) {
  const Options o = parse_args(argc, argv);
  if (!raise_fd_limit(o.clients)) return 1;
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  std::signal(SIGPIPE, SIG_IGN);

  Holder h(o);
  if (!h.ok()) {
    std::perror("hold-clients: epoll_create1");
    return 1;
  }
  h.run();
  h.report();
  return h.all_held() ? 0 : 1;
}
