// tests/integration/proxy_test.cc — the core data path against a real primary and standby:
// psql, pgbench, pgJDBC and raw protocol clients through pgkeel behave as they do directly.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <optional>
#include <string>
#include <thread>

#include <catch2/catch.hpp>

#include "tests/integration/fixture.h"

namespace pgkeel::test {
namespace {

std::string psql_bin() { return "psql"; }

// psql through pgkeel as app, with PGPASSWORD.
RunResult psql(const Pgkeel& pk, const std::vector<std::string>& args,
               std::string_view user = kAppUser, std::string_view password = kAppPassword) {
  std::vector<std::string> argv = {psql_bin(), "-X", "-h", "127.0.0.1", "-p", std::to_string(pk.port()),
                                   "-U", std::string(user), "-d", std::string(kAppDatabase),
                                   "-v", "ON_ERROR_STOP=0"};
  argv.insert(argv.end(), args.begin(), args.end());
  return run(argv, {{"PGPASSWORD", std::string(password)}, {"PGCONNECT_TIMEOUT", "10"}});
}

// A raw TCP connection for protocol-level checks libpq cannot make.
class RawConn {
 public:
  explicit RawConn(int port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    timeval tv{5, 0};
    setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
  }
  ~RawConn() { ::close(fd_); }
  bool connected() const { return connected_; }
  bool send(const std::string& bytes) {
    return ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(bytes.size());
  }
  // Reads until EOF or timeout.
  std::string read_all() {
    std::string out;
    char buf[4096];
    while (true) {
      const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
      if (n <= 0) break;
      out.append(buf, static_cast<size_t>(n));
    }
    return out;
  }
  std::string read_some() {
    char buf[4096];
    const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
    return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
  }

 private:
  int fd_ = -1;
  bool connected_ = false;
};

std::string be32(uint32_t v) {
  std::string s(4, '\0');
  s[0] = static_cast<char>(v >> 24);
  s[1] = static_cast<char>(v >> 16);
  s[2] = static_cast<char>(v >> 8);
  s[3] = static_cast<char>(v);
  return s;
}

std::string startup_packet(uint32_t version, const std::vector<std::pair<std::string, std::string>>& params) {
  std::string body = be32(version);
  for (const auto& [k, v] : params) {
    body += k;
    body.push_back('\0');
    body += v;
    body.push_back('\0');
  }
  body.push_back('\0');
  return be32(static_cast<uint32_t>(body.size() + 4)) + body;
}

// The SQLSTATE of the first ErrorResponse in a byte stream, or "".
std::string first_sqlstate(const std::string& bytes) {
  size_t pos = 0;
  while (pos + 5 <= bytes.size()) {
    const char type = bytes[pos];
    const uint32_t len = (static_cast<uint8_t>(bytes[pos + 1]) << 24) | (static_cast<uint8_t>(bytes[pos + 2]) << 16) |
                         (static_cast<uint8_t>(bytes[pos + 3]) << 8) | static_cast<uint8_t>(bytes[pos + 4]);
    if (type == 'E') {
      std::string body = bytes.substr(pos + 5, len - 4);
      size_t i = 0;
      while (i < body.size() && body[i] != '\0') {
        const char field = body[i];
        const size_t end = body.find('\0', i + 1);
        if (end == std::string::npos) break;
        if (field == 'C') return body.substr(i + 1, end - i - 1);
        i = end + 1;
      }
      return "";
    }
    pos += 1 + len;
  }
  return "";
}

bool contains(const std::string& hay, std::string_view needle) { return hay.find(needle) != std::string::npos; }

}  // namespace

TEST_CASE("psql runs queries, multi-statement strings and \\copy through pgkeel", "[proxy][psql]") {
  auto& cluster = Cluster::shared();
  Pgkeel pk(cluster);

  SECTION("a simple query reaches the primary") {
    auto r = psql(pk, {"-Atc", "SELECT pg_is_in_recovery(), current_user, current_database()"});
    INFO(r.output);
    REQUIRE(r.ok());
    CHECK(contains(r.output, "f|app|app"));
  }
  SECTION("a multi-statement string with an error in the middle") {
    auto r = psql(pk, {"-At", "-c", "SELECT 1; SELECT 1/0; SELECT 2", "-c", "SELECT 'still here'"});
    INFO(r.output);
    CHECK(contains(r.output, "division by zero"));
    CHECK(contains(r.output, "still here"));
  }
  SECTION("\\copy in and out") {
    const std::string file = (pk.dir() / "rows.csv").string();
    {
      std::ofstream out(file);
      for (int i = 0; i < 5000; ++i) out << i << ",row " << i << "\n";
    }
    auto r = psql(pk, {"-At", "-c", "DROP TABLE IF EXISTS copy_t; CREATE TABLE copy_t (id int, v text)",
                       "-c", "\\copy copy_t FROM '" + file + "' WITH (FORMAT csv)",
                       "-c", "SELECT count(*), sum(id) FROM copy_t",
                       "-c", "\\copy copy_t TO '" + file + ".out' WITH (FORMAT csv)"});
    INFO(r.output);
    REQUIRE(r.ok());
    CHECK(contains(r.output, "5000|12497500"));
    std::ifstream back(file + ".out");
    int lines = 0;
    for (std::string l; std::getline(back, l);) ++lines;
    CHECK(lines == 5000);
  }
  SECTION("a large result is streamed") {
    auto r = psql(pk, {"-Atc", "SELECT count(*) FROM (SELECT repeat('x', 100) FROM generate_series(1, 300000)) s",
                       "-c", "SELECT length(string_agg(repeat('y', 1000), '')) FROM generate_series(1, 20000)"});
    INFO(r.output);
    REQUIRE(r.ok());
    CHECK(contains(r.output, "300000"));
    CHECK(contains(r.output, "20000000"));
  }
  SECTION("over the Unix socket too") {
    PgkeelOptions o;
    o.unix_socket_dir = pk.dir();
    o.listeners = {ListenerSpec{}};
    Pgkeel pk2(cluster, o);
    auto r = run({psql_bin(), "-X", "-h", pk.dir().string(), "-p", std::to_string(pk2.port()), "-U", "app", "-d", "app",
                  "-Atc", "SELECT 42"},
                 {{"PGPASSWORD", "app-pass"}});
    INFO(r.output);
    CHECK(r.ok());
    CHECK(contains(r.output, "42"));
  }
}

TEST_CASE("pgbench runs in simple, extended and prepared mode through pgkeel", "[proxy][pgbench]") {
  auto& cluster = Cluster::shared();
  Pgkeel pk(cluster);
  auto init = run({"pgbench", "-i", "-s", "1", "-q", "-h", "127.0.0.1", "-p", std::to_string(cluster.port("db1")),
                   "-U", "app", "app"},
                  {{"PGPASSWORD", "app-pass"}});
  INFO(init.output);
  REQUIRE(init.ok());
  for (const std::string mode : {"simple", "extended", "prepared"}) {
    DYNAMIC_SECTION("mode " << mode) {
      auto r = run({"pgbench", "-M", mode, "-c", "8", "-j", "2", "-t", "150", "-h", "127.0.0.1", "-p",
                    std::to_string(pk.port()), "-U", "app", "app"},
                   {{"PGPASSWORD", "app-pass"}});
      INFO(r.output);
      REQUIRE(r.ok());
      CHECK(contains(r.output, "number of transactions actually processed: 1200/1200"));
      CHECK(contains(r.output, "number of failed transactions: 0"));
    }
  }
}

TEST_CASE("pgJDBC behaves through pgkeel as it does directly", "[proxy][jdbc]") {
  auto& cluster = Cluster::shared();
  Pgkeel pk(cluster);
  const fs::path classes = pk.dir() / "classes";
  fs::create_directories(classes);
  const std::string jar = "/usr/share/java/postgresql.jar";
  auto c = run({"javac", "-cp", jar, "-d", classes.string(),
                (fs::path(PGKEEL_SOURCE_DIR) / "tests" / "jdbc" / "JdbcSuite.java").string()},
               {}, 180s);
  INFO(c.output);
  REQUIRE(c.ok());
  const std::string url = "jdbc:postgresql://127.0.0.1:" + std::to_string(pk.port()) + "/app";
  auto r = run({"java", "-cp", classes.string() + ":" + jar, "JdbcSuite", url, "app", "app-pass"}, {}, 300s);
  INFO(r.output);
  CHECK(r.ok());
  CHECK(contains(r.output, " 0 failed"));
}

TEST_CASE("a warm server connection never carries one client's settings to the next", "[proxy][pool]") {
  auto& cluster = Cluster::shared();
  PgkeelOptions o;
  o.workers = 1;  // both clients on one worker, so the second can reuse the first's connection
  Pgkeel pk(cluster, o);
  int first_pid = 0;
  {
    PqSession s(pk.conninfo() + " application_name=first");
    REQUIRE(s.connected());
    first_pid = std::stoi(s.exec("SELECT pg_backend_pid()").scalar());  // PQbackendPID is pgkeel's
    REQUIRE(s.exec("SET search_path = pg_catalog; SET work_mem = '7MB'; PREPARE p1 AS SELECT 1").ok);
  }
  SECTION("same parameters: the connection is reused, reset") {
    // The reset runs after the client has gone; wait for it, so the next client finds the
    // connection idle in the pool rather than opening a new one.
    REQUIRE(eventually(5s, [&] {
      return cluster.psql_as_postgres("db1", "SELECT state || ':' || query FROM pg_stat_activity WHERE pid = " +
                                                 std::to_string(first_pid)) == "idle:DISCARD ALL";
    }));
    PqSession s(pk.conninfo() + " application_name=first");
    REQUIRE(s.connected());
    REQUIRE(s.exec("SELECT pg_backend_pid()").scalar() == std::to_string(first_pid));
    CHECK(s.exec("SHOW search_path").scalar() == "\"$user\", public");
    CHECK(s.exec("SHOW work_mem").scalar() == "4MB");
    CHECK_FALSE(s.exec("EXECUTE p1").ok);
    CHECK(s.exec("SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()").scalar() == "first");
  }
  SECTION("other startup parameters: another connection") {
    PqSession s(pk.conninfo() + " application_name=second options='-c statement_timeout=1234'");
    REQUIRE(s.connected());
    CHECK(s.exec("SELECT pg_backend_pid()").scalar() != std::to_string(first_pid));
    CHECK(s.exec("SHOW statement_timeout").scalar() == "1234ms");
    CHECK(s.exec("SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()").scalar() == "second");
  }
}

TEST_CASE("pgkeel authenticates clients itself, and servers on their behalf", "[proxy][auth]") {
  auto& cluster = Cluster::shared();
  PgkeelOptions o;
  o.databases = "app = {}\nshop = { dbname = \"app\" }\npostgres = {}";
  Pgkeel pk(cluster, o);
  SECTION("SCRAM pass-through with the verifier from pg_authid") {
    auto r = pq_exec(pk.conninfo(), "SELECT current_user");
    INFO(r.error);
    CHECK(r.scalar() == "app");
  }
  SECTION("a wrong password is 28P01") {
    auto r = pq_exec(pk.conninfo("app", "wrong"), "SELECT 1");
    CHECK_FALSE(r.ok);
    CHECK(r.sqlstate == "28P01");
  }
  SECTION("an unknown user looks like a wrong password") {
    auto r = pq_exec(pk.conninfo("nobody", "x"), "SELECT 1");
    CHECK_FALSE(r.ok);
    CHECK(r.sqlstate == "28P01");
    CHECK(contains(r.error, "password authentication failed for user \"nobody\""));
  }
  SECTION("an unknown database is 3D000") {
    auto r = pq_exec(pk.conninfo("app", "app-pass", "nosuchdb"), "SELECT 1");
    CHECK_FALSE(r.ok);
    CHECK(r.sqlstate == "3D000");
  }
  SECTION("a client-facing database name maps to the server's") {
    CHECK(pq_exec(pk.conninfo("app", "app-pass", "shop"), "SELECT current_database()").scalar() == "app");
  }
  SECTION("md5: the client answers pgkeel's md5, pgkeel answers the server's") {
    auto r = pq_exec(pk.conninfo(kMd5User, kMd5Password, "app"), "SELECT current_user");
    INFO(r.error);
    CHECK(r.scalar() == "md5user");
    CHECK(pq_exec(pk.conninfo(kMd5User, "bad", "app"), "SELECT 1").sqlstate == "28P01");
  }
  SECTION("a plaintext service account reaches a server that asks for a cleartext password") {
    auto r = pq_exec(pk.conninfo(kClearUser, kClearPassword, "app"), "SELECT current_user");
    INFO(r.error);
    CHECK(r.scalar() == "clearuser");
  }
  SECTION("replication connections are refused with a clear error") {
    auto r = pq_exec(pk.conninfo() + " replication=database", "IDENTIFY_SYSTEM");
    CHECK_FALSE(r.ok);
    CHECK(contains(r.error, "does not proxy replication"));
  }
  SECTION("SSL is declined, so sslmode=prefer works and require fails cleanly") {
    CHECK(pq_exec(pk.conninfo() + " sslmode=prefer", "SELECT 1").ok);
    auto r = pq_exec(pk.conninfo() + " sslmode=require", "SELECT 1");
    CHECK_FALSE(r.ok);
    CHECK(contains(r.error, "does not support SSL"));
  }
}

TEST_CASE("limits answer with clear PostgreSQL errors, never a hang", "[proxy][limits]") {
  auto& cluster = Cluster::shared();
  SECTION("max_client_conn is 53300") {
    PgkeelOptions o;
    o.max_client_conn = 2;
    Pgkeel pk(cluster, o);
    PqSession a(pk.conninfo());
    PqSession b(pk.conninfo());
    REQUIRE(a.connected());
    REQUIRE(b.connected());
    auto r = pq_exec(pk.conninfo(), "SELECT 1");
    CHECK_FALSE(r.ok);
    CHECK(r.sqlstate == "53300");
  }
  SECTION("a full pool makes the next client wait, then fail with 53300 after wait_timeout") {
    PgkeelOptions o;
    o.workers = 1;
    o.pool_size = 2;
    o.pool_extra = "max_server_conn_per_node = 2\nwait_timeout = \"1s\"";
    Pgkeel pk(cluster, o);
    std::optional<PqSession> a(std::in_place, pk.conninfo());
    PqSession b(pk.conninfo());
    REQUIRE(a->connected());
    REQUIRE(b.connected());
    const auto t0 = std::chrono::steady_clock::now();
    auto r = pq_exec(pk.conninfo(), "SELECT 1");
    const auto waited = std::chrono::steady_clock::now() - t0;
    CHECK_FALSE(r.ok);
    CHECK(r.sqlstate == "53300");
    CHECK(waited >= 900ms);
    // A waiting client gets the connection another one gives back.
    std::thread release([&] {
      std::this_thread::sleep_for(300ms);  // let the next client queue up first
      a.reset();
    });
    auto ok = pq_exec(pk.conninfo(), "SELECT 7");
    release.join();
    CHECK(ok.scalar() == "7");
  }
  SECTION("a node that cannot be reached: clients are held, then told why (57P03)") {
    PgkeelOptions o;
    o.failover_extra = "hold_timeout = \"1s\"";
    Pgkeel pk(cluster, o);
    const int dead_port = free_port();
    std::string text = pk.config_text();
    const std::string needle = "port = " + std::to_string(cluster.port("db1"));
    REQUIRE(contains(text, needle));
    text.replace(text.find(needle), needle.size(), "port = " + std::to_string(dead_port));
    pk.stop();
    { std::ofstream(pk.config_path()) << text; }
    pk.start();
    auto r = pq_exec(pk.conninfo(), "SELECT 1");
    CHECK_FALSE(r.ok);
    CHECK(r.sqlstate == "57P03");
    INFO(r.error);
    CHECK(contains(r.error, "db1 is not"));
    CHECK(contains(r.error, "Connection refused"));
  }
}

TEST_CASE("a cancel request reaches the one backend its client is using", "[proxy][cancel]") {
  auto& cluster = Cluster::shared();
  Pgkeel pk(cluster);
  PqSession victim(pk.conninfo());
  PqSession bystander(pk.conninfo());
  REQUIRE(victim.connected());
  REQUIRE(bystander.connected());
  PqResult slow_other;
  std::thread other([&] { slow_other = bystander.exec("SELECT pg_sleep(1.5), 'done'"); });
  REQUIRE(PQsendQuery(victim.get(), "SELECT pg_sleep(30)") == 1);
  std::this_thread::sleep_for(300ms);  // the query must be running before it can be cancelled
  PGcancel* cancel = PQgetCancel(victim.get());
  char err[256];
  REQUIRE(PQcancel(cancel, err, sizeof err) == 1);
  PQfreeCancel(cancel);
  std::string state;
  while (PGresult* res = PQgetResult(victim.get())) {
    if (const char* s = PQresultErrorField(res, PG_DIAG_SQLSTATE)) state = s;
    PQclear(res);
  }
  other.join();
  CHECK(state == "57014");
  CHECK(slow_other.ok);
  CHECK(slow_other.value(0, 1) == "done");
  CHECK(victim.exec("SELECT 'usable'").scalar() == "usable");
}

TEST_CASE("bad input gets a protocol error, never a crash", "[proxy][protocol]") {
  auto& cluster = Cluster::shared();
  Pgkeel pk(cluster);
  SECTION("a startup packet with an absurd length") {
    RawConn c(pk.port());
    REQUIRE(c.connected());
    c.send(be32(0x7fffffff) + be32(196608));
    CHECK(first_sqlstate(c.read_all()) == "08P01");
  }
  SECTION("an unsupported protocol version") {
    RawConn c(pk.port());
    c.send(startup_packet(2 << 16, {{"user", "app"}}));
    CHECK(first_sqlstate(c.read_all()) == "0A000");
  }
  SECTION("a newer minor version gets NegotiateProtocolVersion, then authentication") {
    RawConn c(pk.port());
    c.send(startup_packet((3 << 16) | 5, {{"user", "app"}, {"database", "app"}, {"_pq_.future", "1"}}));
    const std::string got = c.read_some();
    REQUIRE(got.size() > 9);
    CHECK(got[0] == 'v');
    CHECK(contains(got, "_pq_.future"));
  }
  SECTION("random bytes where a protocol version should be") {
    RawConn c(pk.port());
    c.send(std::string("\x00\x00\x00\x10garbage-garbage!", 16));
    CHECK(first_sqlstate(c.read_all()) == "0A000");  // as PostgreSQL: unsupported protocol
  }
  SECTION("a startup packet whose parameters are not terminated") {
    RawConn c(pk.port());
    c.send(be32(17) + be32(196608) + std::string("user\0app", 8) + "z");
    CHECK(first_sqlstate(c.read_all()) == "08P01");
  }
  SECTION("a frontend message with an absurd length after login") {
    PqSession s(pk.conninfo());
    REQUIRE(s.connected());
    const int fd = PQsocket(s.get());
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);  // libpq leaves it non-blocking
    const std::string bad = std::string("Q") + be32(0x7ffffff0);
    REQUIRE(::send(fd, bad.data(), bad.size(), MSG_NOSIGNAL) == 5);
    std::string got;
    char buf[1024];
    timeval tv{5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    for (ssize_t n; (n = ::recv(fd, buf, sizeof buf, 0)) > 0;) got.append(buf, static_cast<size_t>(n));
    CHECK(first_sqlstate(got) == "08P01");
  }
  // Everyone else is still served.
  CHECK(pq_exec(pk.conninfo(), "SELECT 1").scalar() == "1");
}

TEST_CASE("SIGTERM closes idle sessions with 57P01 and lets running ones finish", "[proxy][shutdown]") {
  auto& cluster = Cluster::shared();
  Pgkeel pk(cluster);
  PqSession idle(pk.conninfo());
  PqSession busy(pk.conninfo());
  REQUIRE(idle.connected());
  REQUIRE(busy.connected());
  PqResult slow;
  std::thread t([&] { slow = busy.exec("SELECT pg_sleep(1), 'finished'"); });
  std::this_thread::sleep_for(200ms);
  pk.signal(SIGTERM);
  t.join();
  CHECK(slow.ok);
  CHECK(slow.value(0, 1) == "finished");
  auto r = idle.exec("SELECT 1");
  CHECK_FALSE(r.ok);
  CHECK(eventually(10s, [&] { return !pk.running(); }));
  REQUIRE(pk.exit_status().has_value());
  CHECK(WIFEXITED(*pk.exit_status()));
  CHECK(WEXITSTATUS(*pk.exit_status()) == 0);
}

}  // namespace pgkeel::test
