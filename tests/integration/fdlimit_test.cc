// tests/integration/fdlimit_test.cc — pgkeel's own failures are its own (issue 12, item 5): under
// a descriptor limit of 1,024 a flood of unauthenticated connections neither brings a node down
// nor floods the log; when descriptors do run out, accepting pauses with a backoff instead of
// spinning, and a server connection pgkeel cannot open is its own failure, not the node's; a
// configuration the hard limit cannot cover is refused at start, naming the limit.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cerrno>
#include <cstdint>
#include <fstream>
#include <map>
#include <optional>
#include <regex>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "tests/integration/fixture.h"

namespace pgkeel::test {
namespace {

bool contains(const std::string& hay, std::string_view needle) { return hay.find(needle) != std::string::npos; }

long open_fds(pid_t pid) {
  std::error_code ec;
  long n = 0;
  for (fs::directory_iterator it("/proc/" + std::to_string(pid) + "/fd", ec), end; !ec && it != end; it.increment(ec)) ++n;
  return n;
}

// RLIMIT_NOFILE of another process, as /proc/PID/limits shows it: {soft, hard}.
std::pair<std::string, std::string> nofile_of(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/limits");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("Max open files", 0) != 0) continue;
    std::istringstream s(line.substr(std::string("Max open files").size()));
    std::string soft, hard;
    s >> soft >> hard;
    return {soft, hard};
  }
  return {};
}

// Sets the soft RLIMIT_NOFILE of a running process (prlimit(2), as `prlimit --pid`); returns the
// old one. Lowering it below what is open makes every new descriptor fail with EMFILE.
rlimit set_soft_nofile(pid_t pid, rlim_t soft) {
  rlimit old{};
  REQUIRE(prlimit(pid, RLIMIT_NOFILE, nullptr, &old) == 0);
  rlimit now = old;
  now.rlim_cur = soft;
  REQUIRE(prlimit(pid, RLIMIT_NOFILE, &now, nullptr) == 0);
  return old;
}

void restore_nofile(pid_t pid, const rlimit& old) { REQUIRE(prlimit(pid, RLIMIT_NOFILE, &old, nullptr) == 0); }

// `n` TCP connections to 127.0.0.1:port from `source` that never send a byte, held until the
// object goes. They are started all at once (non-blocking) and then waited for, so that they
// reach pgkeel as one burst; a connect completes in the kernel's listen queue whether pgkeel
// accepts or not.
struct SilentFlood {
  std::vector<int> fds;
  SilentFlood(int port, int n, const char* source) {
    fds.reserve(static_cast<std::size_t>(n));
    sockaddr_in local{};
    local.sin_family = AF_INET;
    ::inet_pton(AF_INET, source, &local.sin_addr);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<std::uint16_t>(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    for (int i = 0; i < n; ++i) {
      const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
      if (fd < 0) break;
      if (::bind(fd, reinterpret_cast<sockaddr*>(&local), sizeof local) != 0 ||
          (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 && errno != EINPROGRESS)) {
        ::close(fd);
        break;
      }
      fds.push_back(fd);
    }
    // Wait until every connect has completed; drop those that failed.
    std::vector<pollfd> pending;
    for (int fd : fds) pending.push_back({fd, POLLOUT, 0});
    const auto deadline = std::chrono::steady_clock::now() + 30s;
    while (!pending.empty() && std::chrono::steady_clock::now() < deadline) {
      if (::poll(pending.data(), pending.size(), 1000) < 0 && errno != EINTR) break;
      std::erase_if(pending, [this](const pollfd& p) {
        if (p.revents == 0) return false;
        int err = 0;
        socklen_t len = sizeof err;
        ::getsockopt(p.fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err != 0) {
          ::close(p.fd);
          std::erase(fds, p.fd);
        }
        return true;
      });
      for (pollfd& p : pending) p.revents = 0;
    }
    for (const pollfd& p : pending) {  // never connected
      ::close(p.fd);
      std::erase(fds, p.fd);
    }
  }
  ~SilentFlood() { close(); }
  SilentFlood(const SilentFlood&) = delete;
  SilentFlood& operator=(const SilentFlood&) = delete;
  void close() {
    for (int fd : fds) ::close(fd);
    fds.clear();
  }
};

// pgkeel's log from byte `from` on, as lines (the fixture's own "---- fixture" lines left out).
std::vector<std::string> log_lines(const Pgkeel& pk, std::uintmax_t from = 0) {
  std::ifstream in(pk.log_path(), std::ios::binary);
  in.seekg(static_cast<std::streamoff>(from));
  std::vector<std::string> out;
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("---- fixture", 0) == 0) continue;
    out.push_back(std::move(line));
  }
  return out;
}

std::uintmax_t log_size(const Pgkeel& pk) {
  std::error_code ec;
  const std::uintmax_t n = fs::file_size(pk.log_path(), ec);
  return ec ? 0 : n;
}

std::vector<std::string> with(const std::vector<std::string>& lines, std::string_view needle) {
  std::vector<std::string> out;
  for (const std::string& l : lines) {
    if (contains(l, needle)) out.push_back(l);
  }
  return out;
}

// The value of `key=` in a key=value log line ("" when absent). Values pgkeel quotes have no
// quotes inside in the lines read here.
std::string field(const std::string& line, const std::string& key) {
  std::size_t at = line.rfind(key + "=", 0) == 0 ? 0 : line.find(" " + key + "=");
  if (at == std::string::npos) return "";
  at += (at == 0 ? 0 : 1) + key.size() + 1;
  if (at < line.size() && line[at] == '"') {
    const std::size_t end = line.find('"', at + 1);
    return line.substr(at + 1, end == std::string::npos ? std::string::npos : end - at - 1);
  }
  return line.substr(at, line.find(' ', at) - at);
}

// Lines per "component/event", most frequent first, for the report.
std::string histogram(const std::vector<std::string>& lines) {
  std::map<std::string, int> n;
  for (const std::string& l : lines) ++n[field(l, "component") + "/" + field(l, "event")];
  std::vector<std::pair<int, std::string>> v;
  for (const auto& [k, c] : n) v.emplace_back(c, k);
  std::sort(v.rbegin(), v.rend());
  std::string out;
  for (const auto& [c, k] : v) out += k + "=" + std::to_string(c) + " ";
  return out;
}

// The cell of `col` in the first row whose `key_col` is `key`.
std::string cell(const PqResult& r, const std::string& key_col, const std::string& key, const std::string& col) {
  const auto kc = std::find(r.columns.begin(), r.columns.end(), key_col);
  const auto vc = std::find(r.columns.begin(), r.columns.end(), col);
  if (kc == r.columns.end() || vc == r.columns.end()) return "";
  const auto ki = static_cast<std::size_t>(kc - r.columns.begin());
  const auto vi = static_cast<std::size_t>(vc - r.columns.begin());
  for (const auto& row : r.rows) {
    if (row[ki] && *row[ki] == key) return row[vi].value_or("");
  }
  return "";
}

// The kinds in SHOW EVENTS, in order.
std::vector<std::string> event_kinds(const Pgkeel& pk) {
  const PqResult r = pq_exec(pk.console_conninfo(), "SHOW EVENTS");
  std::vector<std::string> out;
  const auto kc = std::find(r.columns.begin(), r.columns.end(), "kind");
  if (kc == r.columns.end()) return {"(SHOW EVENTS failed: " + r.error + ")"};
  for (const auto& row : r.rows) out.push_back(row[static_cast<std::size_t>(kc - r.columns.begin())].value_or(""));
  return out;
}

std::string events_text(const Pgkeel& pk) {
  const PqResult r = pq_exec(pk.console_conninfo(), "SHOW EVENTS");
  std::string out;
  for (const auto& row : r.rows) {
    for (const auto& v : row) out += v.value_or("NULL") + "|";
    out += "\n";
  }
  return out;
}

const std::set<std::string> kFailoverKinds = {"detection", "failover_started", "failover_refused", "writes_stopped"};

std::string joined(const std::vector<std::string>& v) {
  std::string out;
  for (const std::string& s : v) out += s + " ";
  return out;
}

}  // namespace

TEST_CASE("1,500 unauthenticated connections under a 1,024 descriptor limit: no detection, no failover, "
          "logins resume, few log lines",
          "[fdlimit]") {
  raise_nofile(8192);  // this process holds the flood
  auto& cluster = Cluster::shared();
  PgkeelOptions o;
  o.nofile = 1024;  // soft and hard, as `prlimit --nofile=1024:1024`
  o.max_client_conn = 300;
  o.pool_size = 5;
  o.pool_extra = "max_server_conn_per_node = 20";
  o.log_level = "info";
  o.console = true;
  o.general_extra = "login_timeout = \"60s\"";  // the flood stays until the test closes it
  o.health_extra = "probe_interval = \"250ms\"\nprobe_timeout = \"500ms\"\ntimeouts_to_down = 3";
  Pgkeel pk(cluster, o);
  REQUIRE(eventually(10s, [&] { return pq_exec(pk.conninfo(), "SELECT 1").ok; }));

  // The configuration fits the limit: pgkeel started, kept 1,024 and logged what it needs.
  CHECK(nofile_of(pk.pid()) == std::make_pair(std::string("1024"), std::string("1024")));
  const auto started = with(log_lines(pk), "event=fd_limit ");
  CHECK(started.size() == 1);
  const long need = started.empty() ? -1 : std::stol(field(started[0], "need"));
  CHECK(need > 0);
  CHECK(need <= 1024);
  CHECK(field(started.empty() ? "" : started[0], "nofile") == "1024");
  CHECK(field(started.empty() ? "" : started[0], "action") == "kept");

  const PqResult routes0 = pq_exec(pk.console_conninfo(), "SHOW ROUTES");
  const std::string writer0 = cell(routes0, "listener", "rw", "node");
  const std::string epoch0 = cell(routes0, "listener", "rw", "epoch");
  REQUIRE(writer0 == "db1");
  PqSession before(pk.conninfo());
  REQUIRE(before.connected());
  const long fds0 = open_fds(pk.pid());
  const std::uintmax_t log0 = log_size(pk);

  SilentFlood flood(pk.port(), 1500, "127.77.9.1");
  REQUIRE(flood.fds.size() == 1500);
  // pgkeel holds what max_client_conn lets it hold (2 x 300 + 64, `before` included) and closes
  // the rest at once.
  CHECK(eventually(10s, [&] { return open_fds(pk.pid()) >= fds0 + 600; }));
  const long fds_peak = open_fds(pk.pid());
  // The flood stays while the keeper probes db1 eight more times (every 250 ms).
  std::set<std::string> probes;
  CHECK(eventually(30s, [&] {
    probes.insert(cell(pq_exec(pk.console_conninfo(), "SHOW NODES"), "name", "db1", "last_probe"));
    return probes.size() >= 9;
  }));
  // A session opened before goes on; a new login is refused at once (53300, or closed unread as
  // far beyond max_client_conn), never left hanging.
  CHECK(before.exec("SELECT 'still here'").scalar() == "still here");
  const PqResult during = pq_exec(pk.conninfo(), "SELECT 1", 10s);
  INFO("login during the flood: " << (during.ok ? "ok" : during.sqlstate + " " + during.error));
  CHECK((during.ok || during.sqlstate == "53300" || contains(during.error, "closed the connection")));
  flood.close();

  // Logins resume once the flood is gone.
  CHECK(eventually(30s, [&] { return pq_exec(pk.conninfo(), "SELECT 2").scalar() == "2"; }));
  CHECK(before.exec("SELECT 'after'").scalar() == "after");
  CHECK(eventually(10s, [&] { return open_fds(pk.pid()) <= fds0 + 10; }));

  // No node was blamed: no detection, no failover, the same writer at the same epoch.
  const std::vector<std::string> kinds = event_kinds(pk);
  INFO("SHOW EVENTS:\n" << events_text(pk));
  for (const std::string& k : kinds) CHECK(kFailoverKinds.count(k) == 0);
  const PqResult routes1 = pq_exec(pk.console_conninfo(), "SHOW ROUTES");
  CHECK(cell(routes1, "listener", "rw", "node") == writer0);
  CHECK(cell(routes1, "listener", "rw", "epoch") == epoch0);

  // The log says what happened in a few lines, not one per connection. The console's lines are
  // this test's own polling, left out.
  std::vector<std::string> lines;
  std::size_t console_lines = 0;
  for (std::string& l : log_lines(pk, log0)) {
    if (field(l, "component") == "console" || field(l, "of_component") == "console") {
      ++console_lines;
    } else {
      lines.push_back(std::move(l));
    }
  }
  const auto suppressed = with(lines, "event=suppressed");
  std::uint64_t suppressed_lines = 0;
  for (const std::string& l : suppressed) suppressed_lines += std::stoull(field(l, "lines"));
  INFO("log lines from the flood: " << lines.size() << ": " << histogram(lines));
  CHECK(lines.size() < 100);
  CHECK(with(lines, "Too many open files").empty());  // the limit was never reached
  WARN("fd flood: need " << need << " descriptors of a 1024 limit; pgkeel held " << fds_peak << " fds at the peak (" << fds0
                         << " before); login during the flood: " << (during.ok ? "ok" : during.sqlstate.empty() ? "closed" : during.sqlstate)
                         << "; " << lines.size() << " log lines (" << histogram(lines) << "), " << suppressed_lines
                         << " suppressed, and " << console_lines << " lines of this test's console queries; events: "
                         << joined(kinds) << "; " << (suppressed.empty() ? std::string() : suppressed[0]));
}

TEST_CASE("when descriptors run out, accepting pauses with a backoff: one line per episode, no spinning, "
          "accepting resumes",
          "[fdlimit]") {
  raise_nofile(8192);
  auto& cluster = Cluster::shared();
  PgkeelOptions o;
  o.log_level = "info";
  o.console = true;
  o.general_extra = "login_timeout = \"60s\"";
  // The fast timings, automatic failover: the keeper probes several times in the window below,
  // with no descriptor for a new connection, and must blame nobody (its own failure is no evidence).
  o.health_extra = "probe_interval = \"250ms\"\nprobe_timeout = \"500ms\"\ntimeouts_to_down = 3";
  Pgkeel pk(cluster, o);
  REQUIRE(eventually(10s, [&] { return pq_exec(pk.conninfo(), "SELECT 1").ok; }));
  const std::string writer_before = cell(pq_exec(pk.console_conninfo(), "SHOW ROUTES"), "listener", "rw", "node");
  PqSession before(pk.conninfo());
  REQUIRE(before.connected());
  const long fds0 = open_fds(pk.pid());
  const std::uintmax_t log0 = log_size(pk);

  // No new descriptor for pgkeel from now on: every accept() fails with EMFILE.
  const rlimit old = set_soft_nofile(pk.pid(), 0);
  std::size_t flooded = 0;
  std::vector<std::string> during;
  {
    SilentFlood flood(pk.port(), 200, "127.77.10.1");
    flooded = flood.fds.size();
    CHECK(flooded == 200);
    // pgkeel tried to accept and failed (the line of the new code, libevent's of the old one).
    CHECK(eventually(10s, [&] {
      const auto l = log_lines(pk, log0);
      return !with(l, "event=accept_paused").empty() || !with(l, "Error from accept() call").empty();
    }));
    // The flood waits in the listen queue while a session opened before keeps working, for the
    // length of a statement that takes 2 s (pauses of 10 ms doubling reach 1 s in that time).
    CHECK(before.exec("SELECT pg_sleep(2), 'still here'", 30s).value(0, 1) == "still here");
    during = log_lines(pk, log0);
    restore_nofile(pk.pid(), old);
    // Accepting resumes by itself: every queued connection is taken (max_client_conn is 1,000).
    CHECK(eventually(15s, [&] { return open_fds(pk.pid()) >= fds0 + static_cast<long>(flooded) - 5; }));
  }
  CHECK(eventually(30s, [&] { return pq_exec(pk.conninfo(), "SELECT 2").scalar() == "2"; }));
  // Each episode's end is logged once it has been quiet for 2 s (each worker on its own tick).
  CHECK(eventually(15s, [&] {
    const auto l = log_lines(pk, log0);
    const auto n = with(l, "event=accept_resumed").size();
    return n > 0 && n >= with(l, "event=accept_paused").size();
  }));

  const std::vector<std::string> lines = log_lines(pk, log0);
  const auto paused = with(lines, "event=accept_paused");
  const auto resumed = with(lines, "event=accept_resumed");
  INFO("log lines while descriptors were out: " << during.size() << ": " << histogram(during));
  CHECK(during.size() < 50);
  CHECK(with(during, "Error from accept() call").empty());
  // One episode per worker that had a connection to accept (two workers), logged when it starts and
  // when it ends.
  CHECK(paused.size() >= 1);
  CHECK(paused.size() <= 2);
  CHECK(resumed.size() == paused.size());
  for (const std::string& l : paused) {
    CHECK(field(l, "errno") == "EMFILE");
    CHECK(field(l, "nofile") == "0");
  }
  std::string episodes;
  for (const std::string& l : resumed) {
    CHECK(std::stoll(field(l, "pauses")) >= 5);  // 10+20+40+80+160 ms fit in 2 s many times over
    CHECK(std::stoll(field(l, "paused_ms")) >= 310);
    episodes += "worker " + field(l, "worker") + ": " + field(l, "failed_accepts") + " failed accepts, " + field(l, "pauses") +
                " pauses, paused " + field(l, "paused_ms") + " ms over " + field(l, "lasted_ms") + " ms; ";
  }
  // The keeper probed through the window (with no descriptor for its fork check) and blamed no node.
  const std::vector<std::string> kinds = event_kinds(pk);
  INFO("SHOW EVENTS:\n" << events_text(pk));
  for (const std::string& k : kinds) CHECK(kFailoverKinds.count(k) == 0);
  CHECK(cell(pq_exec(pk.console_conninfo(), "SHOW ROUTES"), "listener", "rw", "node") == writer_before);
  WARN("accept backoff: " << flooded << " connections queued with no descriptor left; " << during.size()
                          << " log lines meanwhile (" << histogram(during) << "); " << episodes
                          << "events: " << joined(event_kinds(pk)));
}

TEST_CASE("a server connection pgkeel cannot open for want of descriptors gets 53300 and is not reported "
          "against the node",
          "[fdlimit]") {
  auto& cluster = Cluster::shared();
  PgkeelOptions o;
  o.log_level = "info";
  o.console = true;
  o.listeners = {ListenerSpec{"tx", "read-write", 0, "transaction", ""}};
  o.pool_extra = "server_idle_timeout = \"1s\"";
  // Probes only at start and every 30 s: a probe in the window below could only come from a
  // report of the failed connect (Keeper::suspect), which is what must not happen.
  o.health_extra = "probe_interval = \"30s\"";
  o.failover_extra = "mode = \"manual\"";
  Pgkeel pk(cluster, o);
  const std::string tx = pk.conninfo(kAppUser, kAppPassword, kAppDatabase, "tx");
  REQUIRE(eventually(10s, [&] { return pq_exec(tx, "SELECT 1").ok; }));
  PqSession a(tx);
  REQUIRE(a.exec("SELECT 1").ok);
  // Transaction pooling: the session holds no server connection between transactions, and the
  // pool's warm one is closed after server_idle_timeout; the next statement needs a new one.
  REQUIRE(eventually(15s, [&] { return pq_exec(pk.console_conninfo(), "SHOW SERVERS").rows.empty(); }));
  const std::uintmax_t log0 = log_size(pk);

  const rlimit old = set_soft_nofile(pk.pid(), 0);
  const PqResult r = a.exec("SELECT 'needs a new server connection'", 10s);
  restore_nofile(pk.pid(), old);

  INFO("the statement got: " << (r.ok ? "ok" : r.sqlstate + " " + r.error));
  CHECK_FALSE(r.ok);
  CHECK(r.sqlstate == "53300");
  CHECK(contains(r.error, "pgkeel cannot open a connection to node db1 now: Too many open files"));
  // Not reported to the keeper: no probe was asked for, nothing was detected.
  const std::vector<std::string> kinds = event_kinds(pk);
  INFO("SHOW EVENTS:\n" << events_text(pk));
  for (const std::string& k : kinds) CHECK(kFailoverKinds.count(k) == 0);
  CHECK(cell(pq_exec(pk.console_conninfo(), "SHOW ROUTES"), "listener", "tx", "node") == "db1");
  const auto failed = with(log_lines(pk, log0), "event=login_failed");
  REQUIRE(failed.size() >= 1);
  CHECK(contains(field(failed[0], "reason"), "pgkeel's own limit, not the node's"));
  // With descriptors back, the next session is served.
  CHECK(eventually(10s, [&] { return pq_exec(tx, "SELECT 3").scalar() == "3"; }));
  WARN("server connect under EMFILE: the client got " << r.sqlstate << " \"" << r.error.substr(0, r.error.find('\n'))
                                                      << "\"; log: " << failed[0] << "; events: " << joined(kinds));
}

TEST_CASE("pgkeel refuses to start when the hard descriptor limit cannot cover max_client_conn, naming the limit",
          "[fdlimit]") {
  auto& cluster = Cluster::shared();
  PgkeelOptions o;
  o.nofile = 1024;
  o.max_client_conn = 5000;
  o.log_level = "info";
  std::string why;
  try {
    Pgkeel pk(cluster, o);
  } catch (const std::runtime_error& e) {
    why = e.what();
  }
  INFO(why);
  REQUIRE_FALSE(why.empty());
  CHECK(contains(why, "exited with exit code 2"));
  const std::regex line_re("[^\n]*event=fd_limit_too_low[^\n]*");
  std::smatch m;
  REQUIRE(std::regex_search(why, m, line_re));
  const std::string line = m[0];
  CHECK(field(line, "level") == "error");
  CHECK(field(line, "nofile_hard") == "1024");
  const long need = std::stol(field(line, "need"));
  CHECK(need > 10000);  // 2 x 5,000 clients and more
  CHECK(contains(field(line, "fix"), "LimitNOFILE=" + std::to_string(need)));
  CHECK(contains(field(line, "reason"), "RLIMIT_NOFILE 1024"));
  WARN("refused: " << line);
}

}  // namespace pgkeel::test

namespace pgkeel::test {

TEST_CASE("under a soft limit of 1,024 and a higher hard one, pgkeel raises its soft limit to what it needs",
          "[fdlimit]") {
  auto& cluster = Cluster::shared();
  PgkeelOptions o;
  o.log_level = "info";  // the default max_client_conn of 1,000: 2 x 1,000 clients and more
  rlimit mine{};
  REQUIRE(getrlimit(RLIMIT_NOFILE, &mine) == 0);
  REQUIRE(mine.rlim_max >= 4096);  // as the [bad-input] floods need too
  // pgkeel inherits this process's limits: systemd's defaults are 1,024 soft under a higher hard one.
  rlimit lowered = mine;
  lowered.rlim_cur = 1024;
  REQUIRE(setrlimit(RLIMIT_NOFILE, &lowered) == 0);
  std::optional<Pgkeel> pk;
  try {
    pk.emplace(cluster, o);
  } catch (...) {
    setrlimit(RLIMIT_NOFILE, &mine);
    throw;
  }
  REQUIRE(setrlimit(RLIMIT_NOFILE, &mine) == 0);
  REQUIRE(eventually(10s, [&] { return pq_exec(pk->conninfo(), "SELECT 1").ok; }));
  const auto started = with(log_lines(*pk), "event=fd_limit ");
  REQUIRE(started.size() == 1);
  const std::string need = field(started[0], "need");
  CHECK(field(started[0], "action") == "raised");
  CHECK(field(started[0], "was") == "1024");
  CHECK(field(started[0], "nofile") == need);
  CHECK(std::stol(need) > 2000);
  CHECK(nofile_of(pk->pid()) == std::make_pair(need, std::to_string(mine.rlim_max)));
  WARN("raised: " << started[0]);
}

}  // namespace pgkeel::test
