// tests/integration/txpool_test.cc — transaction pooling as drivers use it (issue 14): psycopg 3's
// automatic prepared statements and the DEALLOCATE ALL it sends after a ROLLBACK; DEALLOCATE and
// DISCARD ALL from another client of the same server connection; LISTEN over the extended
// protocol (pgJDBC, psycopg) keeps the session on its connection and its notifications reach it
// idle; COPY in the extended protocol (two Syncs, one ReadyForQuery) ends its cycle; a message as
// long as PostgreSQL accepts passes in both pool modes, both directions, without pgkeel holding
// it; a statement padded past any window still pins (or is refused); a header alone reserves
// nothing. Real PostgreSQL, real drivers (psycopg 3 from Debian) or libpq.
#include <catch2/catch.hpp>
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <fstream>
#include <mutex>
#include <thread>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "tests/integration/fixture.h"

// A memory figure is asserted on the release build only: under ASan or TSan (PGKEEL_SANITIZED)
// the allocator's shadow memory and quarantine move it, and it is only reported.
#ifdef PGKEEL_SANITIZED
#define MEMORY_CHECK(...) WARN("memory (not asserted under a sanitizer): " << ((__VA_ARGS__) ? "within" : "OVER") << " the bound")
#else
#define MEMORY_CHECK(...) CHECK(__VA_ARGS__)
#endif

namespace pgkeel::test {
namespace {

// One worker and one server connection: every client of the listener shares it, so what one
// client does to the connection meets the next client's requests.
PgkeelOptions one_connection(const std::string& pool_mode, const std::string& extra = {}) {
  PgkeelOptions o;
  o.workers = 1;
  o.pool_size = 1;
  o.listeners = {ListenerSpec{.name = "rw", .pool_mode = pool_mode, .extra = extra}};
  o.pool_extra = "wait_timeout = \"5s\"";
  return o;
}

// psycopg 3 (Debian's python3-psycopg), run by the system's python3 whatever python3 comes first
// on PATH. The script gets the conninfo as argv[1].
RunResult psycopg(const std::string& script, const std::string& conninfo) {
  return run({"sh", "-c", "command -p python3 -c \"$1\" \"$2\"", "sh", script, conninfo}, {}, 120s);
}

// A kB figure from /proc/PID/status ("VmSize", "VmRSS").
long proc_status_kb(pid_t pid, const std::string& key) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key + ":", 0) == 0) return std::stol(line.substr(key.size() + 1));
  }
  return -1;
}

std::string libpq_error(PGconn* c) { return PQerrorMessage(c); }

// Runs one extended-protocol statement (Parse/Bind/Execute/Sync, as pgJDBC and psycopg send it).
PqResult exec_extended(PGconn* c, const std::string& sql) {
  PqResult out;
  PgResultPtr r(PQexecParams(c, sql.c_str(), 0, nullptr, nullptr, nullptr, nullptr, 0));
  const ExecStatusType st = PQresultStatus(r.get());
  out.ok = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
  if (!out.ok) {
    out.error = PQresultErrorMessage(r.get());
    const char* s = PQresultErrorField(r.get(), PG_DIAG_SQLSTATE);
    out.sqlstate = s != nullptr ? s : "";
  }
  if (st == PGRES_TUPLES_OK && PQntuples(r.get()) > 0) out.rows.push_back({std::string(PQgetvalue(r.get(), 0, 0))});
  return out;
}

// A TCP relay in front of a PostgreSQL node that passes everything through, except that it holds
// each CancelRequest (§55.2.7) until release_cancels(): a cancel that is slow to land, as one on
// a busy network is. Then it delivers it and relays PostgreSQL's close back. Real PostgreSQL
// behind it; nothing is answered in its place.
class CancelDelay {
 public:
  explicit CancelDelay(int target_port) : target_port_(target_port) {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    REQUIRE(::bind(listen_fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    REQUIRE(::listen(listen_fd_, 64) == 0);
    REQUIRE(::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&a), &len) == 0);
    port_ = ntohs(a.sin_port);
    acceptor_ = std::thread([this] { accept_loop(); });
  }
  ~CancelDelay() {
    {
      std::lock_guard lock(mu_);
      stopping_ = true;
      released_ = true;
    }
    cv_.notify_all();
    ::shutdown(listen_fd_, SHUT_RDWR);
    ::close(listen_fd_);
    acceptor_.join();
    for (std::thread& t : relays_) t.join();
  }
  CancelDelay(const CancelDelay&) = delete;
  CancelDelay& operator=(const CancelDelay&) = delete;
  int port() const { return port_; }
  int held() const { return held_.load(); }
  void release_cancels() {
    {
      std::lock_guard lock(mu_);
      released_ = true;
    }
    cv_.notify_all();
  }

 private:
  static bool read_exact(int fd, unsigned char* p, std::size_t n) {
    while (n > 0) {
      const ssize_t r = ::recv(fd, p, n, 0);
      if (r <= 0) return false;
      p += r;
      n -= static_cast<std::size_t>(r);
    }
    return true;
  }
  int connect_target() const {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(static_cast<std::uint16_t>(target_port_));
    if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
      ::close(fd);
      return -1;
    }
    return fd;
  }
  void accept_loop() {
    for (;;) {
      const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) return;
      std::lock_guard lock(mu_);
      if (stopping_) {
        ::close(fd);
        return;
      }
      relays_.emplace_back([this, fd] { relay(fd); });
    }
  }
  void relay(int client) {
    unsigned char first[8];
    if (!read_exact(client, first, sizeof first)) {
      ::close(client);
      return;
    }
    std::string start(reinterpret_cast<char*>(first), sizeof first);
    // Length 16, code 80877102 (0x04d2162e): a CancelRequest.
    const bool cancel = first[0] == 0 && first[1] == 0 && first[2] == 0 && first[3] == 16 && first[4] == 0x04 &&
                        first[5] == 0xd2 && first[6] == 0x16 && first[7] == 0x2e;
    if (cancel) {
      unsigned char rest[8];
      if (!read_exact(client, rest, sizeof rest)) {
        ::close(client);
        return;
      }
      start.append(reinterpret_cast<char*>(rest), sizeof rest);
      ++held_;
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return released_; });
    }
    const int server = connect_target();
    if (server < 0 || ::send(server, start.data(), start.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(start.size())) {
      if (server >= 0) ::close(server);
      ::close(client);
      return;
    }
    pollfd fds[2] = {{client, POLLIN, 0}, {server, POLLIN, 0}};
    char buf[65536];
    for (bool open = true; open;) {
      if (::poll(fds, 2, 200) < 0) break;
      {
        std::lock_guard lock(mu_);
        if (stopping_) break;
      }
      for (int i = 0; i < 2 && open; ++i) {
        if ((fds[i].revents & (POLLIN | POLLHUP | POLLERR)) == 0) continue;
        const ssize_t n = ::recv(fds[i].fd, buf, sizeof buf, 0);
        if (n <= 0 || ::send(fds[1 - i].fd, buf, static_cast<std::size_t>(n), MSG_NOSIGNAL) != n) open = false;
      }
    }
    ::close(server);
    ::close(client);
  }

  int target_port_;
  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<int> held_{0};
  std::mutex mu_;
  std::condition_variable cv_;
  bool released_ = false;
  bool stopping_ = false;
  std::thread acceptor_;
  std::vector<std::thread> relays_;
};

}  // namespace

TEST_CASE("a cancel that lands late never cancels the next client's query on the same connection",
          "[txpool][cancel]") {
  auto& cluster = Cluster::shared();
  CancelDelay delay(cluster.port("db1"));
  PgkeelOptions o = one_connection("transaction");
  o.console = true;
  o.nodes = {"db1"};
  o.pool_extra = "wait_timeout = \"20s\"";
  Pgkeel pk(cluster, o);
  // pgkeel reaches db1 through the relay: its [[node]] port is the relay's.
  pk.stop();
  {
    std::string text = pk.config_text();
    const std::string from = "port = " + std::to_string(cluster.port("db1")) + "\n";
    REQUIRE(text.find(from) != std::string::npos);
    text.replace(text.find(from), from.size(), "port = " + std::to_string(delay.port()) + "\n");
    std::ofstream(pk.config_path()) << text;
  }
  pk.start();
  REQUIRE(eventually(15s, [&] { return pq_exec(pk.conninfo(), "SELECT 1").ok; }));
  PqSession a(pk.conninfo());
  PqSession b(pk.conninfo());
  REQUIRE(a.connected());
  REQUIRE(b.connected());
  const auto active = [&](const std::string& query) {
    return cluster.psql_as_postgres("db1", "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query = $q$" +
                                               query + "$q$", "app") == "1";
  };
  // A's query runs; A cancels it; the cancel is slow to reach PostgreSQL, and A's query ends first.
  REQUIRE(PQsendQuery(a.get(), "SELECT pg_sleep(4)") == 1);
  REQUIRE(eventually(10s, [&] { return active("SELECT pg_sleep(4)"); }));
  {
    PGcancel* c = PQgetCancel(a.get());
    char err[256];
    REQUIRE(PQcancel(c, err, sizeof err) == 1);
    PQfreeCancel(c);
  }
  REQUIRE(eventually(10s, [&] { return delay.held() == 1; }));  // pgkeel sent it on; it is on its way
  {
    PgResultPtr r(PQgetResult(a.get()));
    CHECK(PQresultStatus(r.get()) == PGRES_TUPLES_OK);  // not cancelled: it finished first
    while (PGresult* extra = PQgetResult(a.get())) PQclear(extra);
  }
  // B's query: on A's connection (the only one), once that is free.
  REQUIRE(PQsendQuery(b.get(), "SELECT pg_sleep(1), 'b'") == 1);
  REQUIRE(eventually(10s, [&] {
    const PqResult clients = pq_exec(pk.console_conninfo(), "SHOW CLIENTS");
    bool waiting = false;
    for (std::size_t i = 0; i < clients.columns.size(); ++i) {
      if (clients.columns[i] != "state") continue;
      for (const auto& row : clients.rows) waiting = waiting || row[i] == std::optional<std::string>("waiting");
    }
    return waiting || active("SELECT pg_sleep(1), 'b'");
  }));
  delay.release_cancels();  // the cancel lands now
  PgResultPtr r(PQgetResult(b.get()));
  INFO(PQresultErrorMessage(r.get()));
  CHECK(PQresultStatus(r.get()) == PGRES_TUPLES_OK);  // B's query was not the one cancelled
  while (PGresult* extra = PQgetResult(b.get())) PQclear(extra);
  CHECK(a.exec("SELECT 1").ok);
}

TEST_CASE("psycopg 3 prepared statements survive another client's ROLLBACK (its DEALLOCATE ALL) on a shared connection",
          "[txpool][psycopg][prepared]") {
  Pgkeel pk(Cluster::shared(), one_connection("transaction"));
  REQUIRE(eventually(15s, [&] { return pq_exec(pk.conninfo(), "SELECT 1").ok; }));
  // Two sessions, one server connection. Each runs the same queries past prepare_threshold (5), so
  // psycopg prepares them (_pg3_N); after a ROLLBACK psycopg sends DEALLOCATE ALL before its next
  // query, which drops the statements pgkeel prepared on the connection for both of them.
  const std::string script = R"PY(
import sys, psycopg
a = psycopg.connect(sys.argv[1], autocommit=True)
b = psycopg.connect(sys.argv[1])
done = 0
def both(n):
    global done
    for i in range(n):
        for c in (a, b):
            assert c.execute("SELECT %s::int + 10", (i,)).fetchone()[0] == i + 10
            assert c.execute("SELECT %s::text || 'x'", (str(i),)).fetchone()[0] == str(i) + 'x'
            if c is b:
                c.commit()
            done += 1
both(8)                                              # past prepare_threshold: _pg3_0, _pg3_1
a.execute("CREATE TABLE IF NOT EXISTS txpool_psycopg (i int)")
a.execute("DROP TABLE txpool_psycopg")               # a's next statement: DEALLOCATE ALL first
both(8)
b.execute("ROLLBACK")                                # b's next statement: DEALLOCATE ALL first
both(8)
with b.pipeline():
    for i in range(12):
        b.execute("SELECT %s::int * 2", (i,))
b.commit()
print("psycopg done", done)
)PY";
  const RunResult r = psycopg(script, pk.conninfo());
  INFO(r.output);
  CHECK(r.ok());
  CHECK(r.output.find("psycopg done 48") != std::string::npos);
}

TEST_CASE("DEALLOCATE and DISCARD ALL from one client do not break another client's prepared statements",
          "[txpool][prepared][deallocate]") {
  Pgkeel pk(Cluster::shared(), one_connection("transaction"));
  REQUIRE(eventually(15s, [&] { return pq_exec(pk.conninfo(), "SELECT 1").ok; }));
  PqSession a(pk.conninfo());
  PqSession b(pk.conninfo());
  REQUIRE(a.connected());
  REQUIRE(b.connected());
  PgResultPtr prep(PQprepare(a.get(), "s1", "SELECT 41 + 1", 0, nullptr));
  REQUIRE(PQresultStatus(prep.get()) == PGRES_COMMAND_OK);
  const auto run_s1 = [&] {
    PgResultPtr r(PQexecPrepared(a.get(), "s1", 0, nullptr, nullptr, nullptr, 0));
    INFO(PQresultErrorMessage(r.get()));
    return PQresultStatus(r.get()) == PGRES_TUPLES_OK && std::string(PQgetvalue(r.get(), 0, 0)) == "42";
  };
  REQUIRE(run_s1());
  SECTION("DEALLOCATE ALL, simple protocol (Rails' clear_cache!)") { REQUIRE(b.exec("DEALLOCATE ALL").ok); }
  SECTION("DEALLOCATE ALL, extended protocol (pgJDBC, asyncpg)") { REQUIRE(exec_extended(b.get(), "DEALLOCATE ALL").ok); }
  SECTION("DISCARD ALL") { REQUIRE(b.exec("DISCARD ALL").ok); }
  SECTION("DEALLOCATE of pgkeel's own statement by name") {
    const std::string name = b.exec("SELECT name FROM pg_prepared_statements WHERE name LIKE 'pgk_%'").scalar();
    REQUIRE(!name.empty());
    REQUIRE(exec_extended(b.get(), "DEALLOCATE " + name).ok);
  }
  CHECK(run_s1());
  CHECK(run_s1());
  // Pipelined: the DEALLOCATE, then a Parse of a statement the connection had, then its Bind, in
  // one round trip.
  REQUIRE(PQenterPipelineMode(a.get()) == 1);
  REQUIRE(PQsendQueryParams(a.get(), "DEALLOCATE ALL", 0, nullptr, nullptr, nullptr, nullptr, 0) == 1);
  REQUIRE(PQsendPrepare(a.get(), "s2", "SELECT 41 + 1", 0, nullptr) == 1);
  REQUIRE(PQsendQueryPrepared(a.get(), "s2", 0, nullptr, nullptr, nullptr, 0) == 1);
  REQUIRE(PQpipelineSync(a.get()) == 1);
  int ok = 0;
  std::string errors;
  for (int got = 0; got < 4;) {
    PGresult* r = PQgetResult(a.get());
    if (r == nullptr) continue;
    const ExecStatusType st = PQresultStatus(r);
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) ++ok;
    if (st == PGRES_FATAL_ERROR) errors += PQresultErrorMessage(r);
    if (st == PGRES_PIPELINE_SYNC || st == PGRES_FATAL_ERROR || st == PGRES_PIPELINE_ABORTED) got = 4;
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) ++got;
    PQclear(r);
  }
  INFO(errors);
  CHECK(ok == 3);
}

TEST_CASE("LISTEN over the extended protocol keeps the session on its connection; NOTIFY reaches it while idle",
          "[txpool][listen]") {
  PgkeelOptions o;
  o.workers = 1;
  o.listeners = {ListenerSpec{.name = "rw", .pool_mode = "transaction"}};
  Pgkeel pk(Cluster::shared(), o);
  REQUIRE(eventually(15s, [&] { return pq_exec(pk.conninfo(), "SELECT 1").ok; }));
  PqSession listener(pk.conninfo());
  PqSession other(pk.conninfo());
  REQUIRE(listener.connected());
  REQUIRE(other.connected());
  REQUIRE(exec_extended(listener.get(), "LISTEN txpool_ch").ok);  // as pgJDBC sends it
  const PqResult pid = exec_extended(listener.get(), "SELECT pg_backend_pid()");
  REQUIRE(pid.ok);
  std::set<std::string> others;
  for (int i = 0; i < 5; ++i) others.insert(other.exec("SELECT pg_backend_pid()").scalar());
  CHECK(others.count(pid.scalar()) == 0);
  REQUIRE(other.exec("NOTIFY txpool_ch, 'hello'").ok);
  // The listener sends nothing: the notification must arrive on its own (getNotifications()).
  PGnotify* n = nullptr;
  CHECK(eventually(10s, [&] {
    if (PQconsumeInput(listener.get()) != 1) return false;
    n = PQnotifies(listener.get());
    return n != nullptr;
  }));
  if (n != nullptr) {
    CHECK(std::string(n->extra) == "hello");
    PQfreemem(n);
  }
  CHECK(exec_extended(listener.get(), "SELECT pg_backend_pid()").scalar() == pid.scalar());
}

TEST_CASE("a statement padded past any window still pins its session, or is refused", "[txpool][pinning]") {
  const std::string padding_20k = "/*" + std::string(20000, ' ') + "*/";
  const std::string padding_300k = "/*" + std::string(300000, 'x') + "*/";
  SECTION("pinned: LISTEN after 20 KB and after 300 KB of padding") {
    PgkeelOptions o;
    o.workers = 1;
    o.listeners = {ListenerSpec{.name = "rw", .pool_mode = "transaction"}};
    Pgkeel pk(Cluster::shared(), o);
    REQUIRE(eventually(15s, [&] { return pq_exec(pk.conninfo(), "SELECT 1").ok; }));
    for (const std::string& padding : {padding_20k, padding_300k}) {
      PqSession listener(pk.conninfo());
      PqSession other(pk.conninfo());
      REQUIRE(listener.exec("SELECT 1; " + padding + " LISTEN txpool_padded").ok);
      const std::string pid = listener.exec("SELECT pg_backend_pid()").scalar();
      std::set<std::string> others;
      for (int i = 0; i < 5; ++i) others.insert(other.exec("SELECT pg_backend_pid()").scalar());
      INFO("padding " << padding.size());
      CHECK(others.count(pid) == 0);
      REQUIRE(other.exec("NOTIFY txpool_padded, 'p'").ok);
      CHECK(eventually(10s, [&] {
        if (PQconsumeInput(listener.get()) != 1) return false;
        PGnotify* n = PQnotifies(listener.get());
        if (n != nullptr) PQfreemem(n);
        return n != nullptr;
      }));
    }
  }
  SECTION("refused: pinning = \"refuse\" sees a temporary table after 20 KB of padding") {
    Pgkeel pk(Cluster::shared(), one_connection("transaction", "pinning = \"refuse\""));
    REQUIRE(eventually(15s, [&] { return pq_exec(pk.conninfo(), "SELECT 1").ok; }));
    PqSession s(pk.conninfo());
    const PqResult r = s.exec("SELECT 1; " + padding_20k + " CREATE TEMP TABLE txpool_padded (i int)");
    INFO(r.error);
    CHECK(r.sqlstate == "0A000");
    CHECK(s.exec("SELECT 1").ok);
  }
}

TEST_CASE("COPY FROM STDIN in the extended protocol ends its cycle: the connection serves the next client",
          "[txpool][copy]") {
  const std::string mode = GENERATE(std::string("transaction"), std::string("session"));
  INFO("pool_mode = " << mode);
  PgkeelOptions o = one_connection(mode);
  o.console = true;
  Pgkeel pk(Cluster::shared(), o);
  REQUIRE(eventually(15s, [&] { return pq_exec(pk.conninfo(), "SELECT 1").ok; }));
  REQUIRE(pq_exec(pk.conninfo(), "CREATE TABLE IF NOT EXISTS txpool_copy (i int, t text)").ok);
  for (const bool extended : {true, false}) {
    INFO((extended ? "extended protocol" : "simple protocol"));
    PqSession s(pk.conninfo());
    REQUIRE(s.connected());
    PgResultPtr start(extended ? PQexecParams(s.get(), "COPY txpool_copy FROM STDIN", 0, nullptr, nullptr, nullptr, nullptr, 0)
                               : PQexec(s.get(), "COPY txpool_copy FROM STDIN"));
    REQUIRE(PQresultStatus(start.get()) == PGRES_COPY_IN);
    const std::string rows = "1\tone\n2\ttwo\n";
    REQUIRE(PQputCopyData(s.get(), rows.data(), static_cast<int>(rows.size())) == 1);
    REQUIRE(PQputCopyEnd(s.get(), nullptr) == 1);
    PgResultPtr done(PQgetResult(s.get()));
    CHECK(PQresultStatus(done.get()) == PGRES_COMMAND_OK);
    while (PGresult* extra = PQgetResult(s.get())) PQclear(extra);
    CHECK(s.exec("SELECT 1").ok);
    if (mode == "transaction") {
      // The session is at rest: its one connection serves another client.
      const PqResult other = pq_exec(pk.conninfo(), "SELECT 2", 10s);
      INFO(other.error);
      CHECK(other.ok);
    } else {
      // Nothing runs: the console shows the session idle, not active.
      CHECK(eventually(5s, [&] {
        const PqResult c = pq_exec(pk.console_conninfo(), "SHOW CLIENTS");
        if (!c.ok) return false;
        std::size_t state_col = c.columns.size();
        for (std::size_t i = 0; i < c.columns.size(); ++i) {
          if (c.columns[i] == "state") state_col = i;
        }
        for (const auto& row : c.rows) {
          if (state_col < row.size() && row[state_col] == std::optional<std::string>("active")) return false;
        }
        return state_col < c.columns.size();
      }));
    }
  }
}

TEST_CASE("a 50 MB bytea and a 100 MB hex text pass in both pool modes, both directions, without pgkeel holding them",
          "[txpool][large]") {
  const std::string mode = GENERATE(std::string("transaction"), std::string("session"));
  INFO("pool_mode = " << mode);
  Pgkeel pk(Cluster::shared(), one_connection(mode));
  REQUIRE(eventually(15s, [&] { return pq_exec(pk.conninfo(), "SELECT 1").ok; }));
  PqSession s(pk.conninfo(), 60s);
  REQUIRE(s.connected());
  REQUIRE(s.exec("CREATE TABLE IF NOT EXISTS txpool_blob (mode text, b bytea)").ok);
  REQUIRE(s.exec("DELETE FROM txpool_blob WHERE mode = '" + mode + "'").ok);
  const long rss_before = proc_status_kb(pk.pid(), "VmRSS");
  std::string blob(50u << 20, '\0');
  std::uint32_t x = 12345;
  for (char& ch : blob) {
    x = x * 1103515245u + 12345u;
    ch = static_cast<char>(x >> 24);
  }
  {
    // Binary parameter (psycopg's %b): a Bind of 50 MB.
    const char* values[] = {mode.c_str(), blob.data()};
    const int lengths[] = {static_cast<int>(mode.size()), static_cast<int>(blob.size())};
    const int formats[] = {0, 1};
    PgResultPtr r(PQexecParams(s.get(), "INSERT INTO txpool_blob VALUES ($1, $2)", 2, nullptr, values, lengths, formats, 0));
    INFO(PQresultErrorMessage(r.get()) << libpq_error(s.get()));
    REQUIRE(PQresultStatus(r.get()) == PGRES_COMMAND_OK);
  }
  {
    // The same as hex text: a Bind of about 100 MB.
    static constexpr char kHex[] = "0123456789abcdef";
    std::string hex = "\\x";
    hex.reserve(2 + 2 * blob.size());
    for (unsigned char ch : blob) {
      hex += kHex[ch >> 4];
      hex += kHex[ch & 15];
    }
    const char* values[] = {mode.c_str(), hex.c_str()};
    PgResultPtr r(PQexecParams(s.get(), "INSERT INTO txpool_blob VALUES ($1, $2::bytea)", 2, nullptr, values, nullptr, nullptr, 0));
    INFO(PQresultErrorMessage(r.get()) << libpq_error(s.get()));
    REQUIRE(PQresultStatus(r.get()) == PGRES_COMMAND_OK);
  }
  {
    // A 20 MB statement text in the simple protocol.
    const PqResult r = s.exec("SELECT length('" + std::string(20u << 20, 'q') + "')");
    INFO(r.error);
    CHECK(r.scalar() == std::to_string(20u << 20));
  }
  {
    // Back to the client: a 50 MB DataRow, in binary.
    const char* values[] = {mode.c_str()};
    PgResultPtr r(PQexecParams(s.get(), "SELECT b FROM txpool_blob WHERE mode = $1", 1, nullptr, values, nullptr, nullptr, 1));
    REQUIRE(PQresultStatus(r.get()) == PGRES_TUPLES_OK);
    REQUIRE(PQntuples(r.get()) == 2);
    for (int row = 0; row < 2; ++row) {
      CHECK(PQgetlength(r.get(), row, 0) == static_cast<int>(blob.size()));
      CHECK(std::string_view(PQgetvalue(r.get(), row, 0), blob.size()) == blob);
    }
  }
  // pgkeel passed 200 MB through without holding a message: its resident memory grew far less.
  const long rss_after = proc_status_kb(pk.pid(), "VmRSS");
  INFO("VmRSS before " << rss_before << " kB, after " << rss_after << " kB");
  MEMORY_CHECK(rss_after - rss_before < 32 * 1024);
  CHECK(s.exec("DELETE FROM txpool_blob WHERE mode = '" + mode + "'").ok);
}

TEST_CASE("a message header alone reserves no memory in pgkeel", "[txpool][limits]") {
  PgkeelOptions o = one_connection("transaction");
  o.pool_size = 4;
  Pgkeel pk(Cluster::shared(), o);
  REQUIRE(eventually(15s, [&] { return pq_exec(pk.conninfo(), "SELECT 1").ok; }));
  const long before = proc_status_kb(pk.pid(), "VmSize");
  // Three logged-in clients each announce a 16 MB Query and send 5 bytes of it (each then holds
  // one of the four server connections, waiting for the rest).
  std::vector<PgConnPtr> conns;
  for (int i = 0; i < 3; ++i) {
    PgConnPtr c(PQconnectdb(pk.conninfo().c_str()));
    REQUIRE(PQstatus(c.get()) == CONNECTION_OK);
    const std::uint32_t len = 16u << 20;
    const unsigned char head[] = {'Q', static_cast<unsigned char>(len >> 24), static_cast<unsigned char>(len >> 16),
                                  static_cast<unsigned char>(len >> 8), static_cast<unsigned char>(len), 'S', 'E', 'L',
                                  'E', 'C'};
    REQUIRE(::send(PQsocket(c.get()), head, sizeof head, MSG_NOSIGNAL) == static_cast<ssize_t>(sizeof head));
    conns.push_back(std::move(c));
  }
  // One worker: once a later client is served, the three clients' bytes were read.
  REQUIRE(eventually(10s, [&] { return pq_exec(pk.conninfo(), "SELECT 1").ok; }));
  const long after = proc_status_kb(pk.pid(), "VmSize");
  INFO("VmSize before " << before << " kB, after " << after << " kB");
  MEMORY_CHECK(after - before < 20 * 1024);  // 3 x 16 MB reserved would be 48 MB
}

}  // namespace pgkeel::test

namespace pgkeel::test {

TEST_CASE("asyncpg's statement cache survives another client's DEALLOCATE ALL on a shared connection",
          "[txpool][prepared][asyncpg]") {
  Pgkeel pk(Cluster::shared(), one_connection("transaction"));
  REQUIRE(eventually(15s, [&] { return pq_exec(pk.conninfo(), "SELECT 1").ok; }));
  const std::string script = R"PY(
import asyncio, sys, asyncpg
async def main():
    a = await asyncpg.connect(sys.argv[1])
    b = await asyncpg.connect(sys.argv[1])
    for i in range(3):
        for c in (a, b):
            assert await c.fetchval("SELECT $1::int + 10", i) == i + 10
    # b drops every prepared statement of the connection (its own too, as PostgreSQL would: b does
    # not use its cache after this); a's cached statements must still run.
    await b.execute("DEALLOCATE ALL")                           # simple protocol
    for i in range(3):
        assert await a.fetchval("SELECT $1::int + 10", i) == i + 10
    await b.fetch("DEALLOCATE ALL")                             # extended protocol
    for i in range(3):
        assert await a.fetchval("SELECT $1::int + 10", i) == i + 10
    print("asyncpg done")
asyncio.run(main())
)PY";
  const RunResult r = run({"sh", "-c", "command -p python3 -c \"$1\" \"$2\"", "sh", script,
                           "postgresql://app:app-pass@127.0.0.1:" + std::to_string(pk.port()) + "/app"},
                          {}, 120s);
  INFO(r.output);
  CHECK(r.ok());
  CHECK(r.output.find("asyncpg done") != std::string::npos);
}

TEST_CASE("a lost transaction's answers are made only as fast as the client reads them", "[txpool][limits][resume]") {
  Cluster cluster(ClusterOptions{.standbys = 1, .sync = true});
  PgkeelOptions o;
  o.console = true;
  o.workers = 1;
  o.listeners = {ListenerSpec{.name = "rw", .pool_mode = "transaction"}};
  o.health_extra = "probe_interval = \"250ms\"\nprobe_timeout = \"500ms\"";
  o.failover_extra = "hold_timeout = \"20s\"\nswitchover_timeout = \"30s\"\nswitchover_drain_timeout = \"5s\"\n" +
                     switchover_commands(cluster);
  Pgkeel pk(cluster, o);
  REQUIRE(eventually(15s, [&] { return pq_exec(pk.conninfo(), "SELECT 1").ok; }));
  PqSession s(pk.conninfo());
  REQUIRE(s.connected());
  REQUIRE(s.exec("BEGIN").ok);
  REQUIRE(s.exec("SELECT 1").ok);
  const PqResult f = pq_exec(pk.console_conninfo(), "FAILOVER", 60s);
  INFO(f.error);
  REQUIRE(f.ok);
  // The transaction is lost: its next statement gets 40001, a long one too (pgkeel reads it as it
  // comes, without a server), then 25P02 until the client ends it.
  const PqResult long_one = s.exec("SELECT length('" + std::string(1u << 20, 'l') + "')");
  INFO(long_one.error);
  CHECK(long_one.sqlstate == "40001");
  CHECK(s.exec("SELECT 1").sqlstate == "25P02");
  // Every Sync the client sends now is answered by pgkeel itself. The client sends 40 MB of Syncs
  // and reads nothing.
  const long before = proc_status_kb(pk.pid(), "VmRSS");
  const int fd = PQsocket(s.get());
  REQUIRE(::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK) == 0);  // libpq's socket: the sender waits
  std::atomic<bool> sent_all{false};
  std::thread sender([&] {
    const std::string syncs = [] {
      std::string m;
      for (int i = 0; i < 65536 / 5; ++i) m.append("S\0\0\0\4", 5);
      return m;
    }();
    std::size_t total = 0;
    while (total < (40u << 20)) {
      const ssize_t n = ::send(fd, syncs.data(), syncs.size(), MSG_NOSIGNAL);
      if (n <= 0) return;
      total += static_cast<std::size_t>(n);
    }
    sent_all = true;
  });
  const bool grew = eventually(15s, [&] { return proc_status_kb(pk.pid(), "VmRSS") - before > 16 * 1024; });
  const long after = proc_status_kb(pk.pid(), "VmRSS");
  ::shutdown(fd, SHUT_RDWR);  // ends the sender, blocked or not
  sender.join();
  INFO("VmRSS before " << before << " kB, after " << after << " kB; all 40 MB sent: " << sent_all.load());
  MEMORY_CHECK(!grew);
}

}  // namespace pgkeel::test

namespace pgkeel::test {

TEST_CASE("session pooling: a LISTEN past a long statement's first 8 KB keeps the session from moving at a failover",
          "[txpool][pinning][resume]") {
  Cluster cluster(ClusterOptions{.standbys = 1, .sync = true});
  PgkeelOptions o;
  o.console = true;
  o.listeners = {ListenerSpec{.name = "rw", .pool_mode = "session"}};
  o.health_extra = "probe_interval = \"250ms\"\nprobe_timeout = \"500ms\"";
  o.failover_extra = "hold_timeout = \"20s\"\nswitchover_timeout = \"30s\"\nswitchover_drain_timeout = \"5s\"\n" +
                     switchover_commands(cluster);
  Pgkeel pk(cluster, o);
  REQUIRE(eventually(15s, [&] { return pq_exec(pk.conninfo(), "SELECT 1").ok; }));
  PqSession padded(pk.conninfo());
  PqSession plain(pk.conninfo());
  REQUIRE(padded.exec("SELECT 1; /*" + std::string(20000, ' ') + "*/ LISTEN txpool_far").ok);
  REQUIRE(plain.exec("SELECT 1; /*" + std::string(20000, ' ') + "*/ SELECT 2").ok);  // nothing that pins
  const PqResult f = pq_exec(pk.console_conninfo(), "FAILOVER", 60s);
  INFO(f.error);
  REQUIRE(f.ok);
  const PqResult r = padded.exec("SELECT 1");
  INFO(r.error);
  CHECK_FALSE(r.ok);
  CHECK(r.error.find("LISTEN") != std::string::npos);  // "... cannot move to another server: it used ..."
  CHECK(plain.exec("SELECT 1").ok);                     // the other session moved on
}

}  // namespace pgkeel::test

namespace pgkeel::test {

TEST_CASE("pgJDBC: LISTEN reaches an idle listener, statements survive another connection's DEALLOCATE ALL, CopyManager",
          "[txpool][jdbc]") {
  PgkeelOptions o = one_connection("transaction");
  o.pool_size = 2;  // one for the pinned listener, one shared by the rest
  Pgkeel pk(Cluster::shared(), o);
  REQUIRE(eventually(15s, [&] { return pq_exec(pk.conninfo(), "SELECT 1").ok; }));
  const std::string jar = "/usr/share/java/postgresql.jar";
  const fs::path classes = pk.dir() / "classes";
  fs::create_directories(classes);
  const RunResult c = run({"javac", "-cp", jar, "-d", classes.string(),
                           (fs::path(PGKEEL_SOURCE_DIR) / "tests" / "jdbc" / "TxpoolJdbc.java").string()},
                          {}, 180s);
  INFO(c.output);
  REQUIRE(c.ok());
  const RunResult r = run({"java", "-cp", classes.string() + ":" + jar, "TxpoolJdbc",
                           "jdbc:postgresql://127.0.0.1:" + std::to_string(pk.port()) + "/app", "app", "app-pass"},
                          {}, 180s);
  INFO(r.output);
  CHECK(r.ok());
  CHECK(r.output.find("TxpoolJdbc: ok") != std::string::npos);
}

}  // namespace pgkeel::test
