// tests/integration/preauth_test.cc — what a client that has not authenticated can cost (issue 12,
// item 10), seen from raw sockets and real clients: sockets that never answer the authentication
// request hold no place under per-user and per-database limits; the console's answers before its
// verdict are the data listeners' answers (so they tell nobody who may use the console), its
// connections are capped and its failed logins throttled like the listeners'; a flood of logins
// of invented names costs the cluster a bounded number of auth_query lookups.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>

#include "tests/integration/fixture.h"

namespace pgkeel::test {
namespace {

using Clock = std::chrono::steady_clock;

bool contains(const std::string& hay, std::string_view needle) { return hay.find(needle) != std::string::npos; }

std::string be32(std::uint32_t v) {
  std::string s(4, '\0');
  for (int i = 0; i < 4; ++i) s[static_cast<std::size_t>(i)] = static_cast<char>(v >> (24 - 8 * i));
  return s;
}

std::uint32_t read_be32(std::string_view s, std::size_t at) {
  std::uint32_t v = 0;
  for (std::size_t i = 0; i < 4; ++i) v = (v << 8) | static_cast<std::uint8_t>(s[at + i]);
  return v;
}

// A raw TCP connection to 127.0.0.1 that speaks the protocol by hand (§55.2.1).
class RawClient {
 public:
  explicit RawClient(int port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    timeval tv{10, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<std::uint16_t>(port));
    ::inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
    connected_ = ::connect(fd_, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0;
  }
  ~RawClient() {
    if (fd_ >= 0) ::close(fd_);
  }
  RawClient(const RawClient&) = delete;
  RawClient& operator=(const RawClient&) = delete;

  bool connected() const { return connected_; }

  bool send(const std::string& bytes) {
    return connected_ && ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(bytes.size());
  }

  bool startup(const std::string& user, const std::string& database) {
    std::string body = be32(196608);  // protocol 3.0
    for (const auto& [k, v] : {std::pair{std::string("user"), user}, std::pair{std::string("database"), database}}) {
      body += k + '\0' + v + '\0';
    }
    body += '\0';
    return send(be32(static_cast<std::uint32_t>(body.size() + 4)) + body);
  }

  // The next backend message: its type and body; nullopt on EOF or timeout.
  std::optional<std::pair<char, std::string>> read_message() {
    while (true) {
      if (rx_.size() >= 5) {
        const std::uint32_t len = read_be32(rx_, 1);
        if (len >= 4 && rx_.size() >= 1 + len) {
          std::pair<char, std::string> m{rx_[0], rx_.substr(5, len - 4)};
          rx_.erase(0, 1 + len);
          return m;
        }
      }
      char buf[4096];
      const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
      if (n <= 0) return std::nullopt;
      rx_.append(buf, static_cast<std::size_t>(n));
    }
  }

 private:
  int fd_ = -1;
  bool connected_ = false;
  std::string rx_;
};

// What a server shows a client that has sent its startup packet and, for SCRAM, its first
// message: "scram s=<salt> i=<iterations>", "md5", or "error <SQLSTATE>". Everything a prober
// learns before the password is checked.
std::string first_answer(int port, const std::string& user, const std::string& database) {
  RawClient c(port);
  if (!c.startup(user, database)) return "no connection";
  auto m = c.read_message();
  if (!m) return "closed";
  if (m->first == 'E') {
    const std::size_t at = m->second.find("\0C", 0, 2);
    return "error " + (at == std::string::npos ? std::string("?") : m->second.substr(at + 2, 5));
  }
  if (m->first != 'R' || m->second.size() < 4) return std::string("unexpected ") + m->first;
  const std::uint32_t code = read_be32(m->second, 0);
  if (code == 5) return "md5";
  if (code != 10) return "auth code " + std::to_string(code);
  const std::string data = "n,,n=,r=fixedclientnonce";
  std::string body = std::string("SCRAM-SHA-256") + '\0' + be32(static_cast<std::uint32_t>(data.size())) + data;
  if (!c.send("p" + be32(static_cast<std::uint32_t>(body.size() + 4)) + body)) return "send failed";
  m = c.read_message();
  if (!m || m->first != 'R' || m->second.size() < 4 || read_be32(m->second, 0) != 11) return "no SASLContinue";
  const std::string first = m->second.substr(4);
  const std::size_t s = first.find(",s=");
  return s == std::string::npos ? "malformed " + first : "scram " + first.substr(s + 1);  // "s=...,i=..."
}

// Sends the startup packet and reads the server's authentication request, then never answers:
// a client stuck before authentication (until login_timeout).
std::unique_ptr<RawClient> stuck_in_auth(int port, const std::string& user, const std::string& database) {
  auto c = std::make_unique<RawClient>(port);
  REQUIRE(c->startup(user, database));
  const auto m = c->read_message();
  REQUIRE(m);
  CHECK(m->first == 'R');  // an authentication request, not a refusal
  return c;
}

}  // namespace

TEST_CASE("sockets that never authenticate hold no place under per-user and per-database limits", "[limits][preauth]") {
  auto& cluster = Cluster::shared();
  PgkeelOptions o;
  o.databases = "app = {}\npostgres = {}";
  o.extra_toml = "[[limit]]\nuser = \"app\"\nmax_client_conn = 3\n"
                 "[[limit]]\ndatabase = \"postgres\"\nmax_client_conn = 1\n";
  Pgkeel pk(cluster, o);
  REQUIRE(eventually(10s, [&] { return pq_exec(pk.conninfo("md5user", "md5-pass", "app"), "SELECT 1").ok; }));

  // As many idle sockets as the limit allows sessions: each sent a startup packet for the role
  // (and the database), got its authentication request, and says nothing more.
  std::vector<std::unique_ptr<RawClient>> idle;
  for (int i = 0; i < 3; ++i) idle.push_back(stuck_in_auth(pk.port(), "app", "app"));
  idle.push_back(stuck_in_auth(pk.port(), "md5user", "postgres"));

  // The role and the database are not locked out.
  const PqResult app = pq_exec(pk.conninfo("app", "app-pass", "app"), "SELECT current_user");
  INFO(app.error);
  CHECK(app.scalar() == "app");
  const PqResult db = pq_exec(pk.conninfo("md5user", "md5-pass", "postgres"), "SELECT current_database()");
  INFO(db.error);
  CHECK(db.scalar() == "postgres");

  // The limits still hold for sessions that did log in.
  std::vector<std::unique_ptr<PqSession>> sessions;
  for (int i = 0; i < 3; ++i) {
    sessions.push_back(std::make_unique<PqSession>(pk.conninfo("app", "app-pass", "app")));
    REQUIRE(sessions.back()->connected());
  }
  const PqResult fourth = pq_exec(pk.conninfo("app", "app-pass", "app"), "SELECT 1");
  CHECK(fourth.sqlstate == "53300");
  CHECK(contains(fourth.error, "too many connections for role \"app\""));
  PqSession one_db(pk.conninfo("md5user", "md5-pass", "postgres"));
  REQUIRE(one_db.connected());
  const PqResult second_db = pq_exec(pk.conninfo("md5user", "md5-pass", "postgres"), "SELECT 1");
  CHECK(second_db.sqlstate == "53300");
  CHECK(contains(second_db.error, "too many connections for database \"postgres\""));
}

TEST_CASE("the console answers every name as the data listeners do, so nothing tells its users apart", "[console][preauth]") {
  auto& cluster = Cluster::shared();
  PgkeelOptions o;
  o.console = true;  // admin: pgkeel; no monitor users
  Pgkeel pk(cluster, o);
  REQUIRE(eventually(10s, [&] { return pq_exec(pk.console_conninfo(), "SHOW VERSION").ok; }));

  // pgkeel: a console user; app: in the users file (SCRAM verifier), not a console user;
  // clearuser: a plaintext password in the users file; md5user: an md5 hash; ghost-*: unknown.
  std::map<std::string, std::string> console;
  for (const std::string user : {"pgkeel", "app", "clearuser", "md5user", "ghost-1", "ghost-2"}) {
    console[user] = first_answer(pk.console_port(), user, "pgkeel");
    const std::string listener = first_answer(pk.port(), user, "app");
    INFO(user << ": console " << console[user] << ", listener " << listener);
    CHECK(console[user] == listener);
  }
  INFO("app: " << console["app"] << "; ghost-1: " << console["ghost-1"] << "; ghost-2: " << console["ghost-2"]);
  CHECK(console["app"].rfind("scram ", 0) == 0);
  CHECK(console["md5user"] == "md5");
  // An unknown name and a known non-console name look alike: each has a salt of its own, stable.
  CHECK(console["ghost-1"] != console["app"]);
  CHECK(console["ghost-1"] != console["ghost-2"]);
  CHECK(first_answer(pk.console_port(), "ghost-1", "pgkeel") == console["ghost-1"]);
  CHECK(console["ghost-1"].find(",i=4096") != std::string::npos);

  // A user who may not use the console fails with its right password exactly as with a wrong one.
  const PqResult right = pq_exec(pk.console_conninfo() + " user=app password=app-pass", "SHOW VERSION");
  const PqResult wrong = pq_exec(pk.console_conninfo() + " user=app password=not-it", "SHOW VERSION");
  CHECK(right.sqlstate == "28P01");
  CHECK(right.error == wrong.error);
  CHECK(contains(right.error, "password authentication failed for user \"app\""));
  CHECK(pq_exec(pk.console_conninfo(), "SHOW VERSION").ok);
}

TEST_CASE("the console caps its connections and throttles failed logins with the listeners' throttle", "[console][preauth]") {
  auto& cluster = Cluster::shared();
  PgkeelOptions o;
  o.console = true;
  o.console_extra = "max_connections = 3";
  o.extra_toml = "[auth]\nmax_failures = 2\nfailure_delay = \"400ms\"\n";
  Pgkeel pk(cluster, o);
  REQUIRE(eventually(10s, [&] { return pq_exec(pk.console_conninfo(), "SHOW VERSION").ok; }));

  SECTION("beyond max_connections a login gets 53300; the slots come back when the sockets go") {
    for (int round = 0; round < 2; ++round) {
      INFO("round " << round);
      std::vector<std::unique_ptr<RawClient>> silent;
      for (int i = 0; i < 3; ++i) {
        silent.push_back(std::make_unique<RawClient>(pk.console_port()));
        REQUIRE(silent.back()->connected());
      }
      PqResult over;
      CHECK(eventually(5s, [&] {
        over = pq_exec(pk.console_conninfo(), "SHOW VERSION");  // libpq asks for TLS first: answered 'N'
        return over.sqlstate == "53300";
      }));
      INFO(over.error);
      CHECK(contains(over.error, "sorry, too many clients already"));
      silent.clear();
      CHECK(eventually(5s, [&] { return pq_exec(pk.console_conninfo(), "SHOW VERSION").ok; }));
    }
  }

  SECTION("past max_failures a failure waits failure_delay, on the console and on the listeners alike") {
    const std::string wrong = pk.console_conninfo() + " password=wrong";
    std::vector<long> took;
    for (int i = 0; i < 3; ++i) {
      const auto t0 = Clock::now();
      const PqResult r = pq_exec(wrong, "SHOW VERSION");
      took.push_back(std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count());
      CHECK(r.sqlstate == "28P01");
    }
    WARN("console failures took (ms): " << took[0] << " " << took[1] << " " << took[2]);
    CHECK(took[2] >= 400);  // the third failure from this address waited failure_delay
    // The same address on a data listener is throttled too: one count per address.
    const auto t0 = Clock::now();
    const PqResult data = pq_exec(pk.conninfo("app", "wrong"), "SELECT 1");
    const auto data_took = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count();
    WARN("the next failure on a data listener took " << data_took << " ms");
    CHECK(data.sqlstate == "28P01");
    CHECK(data_took >= 800);  // the fourth: twice failure_delay
    // The right password still gets in, and starts the count afresh.
    CHECK(pq_exec(pk.console_conninfo(), "SHOW VERSION").ok);
  }
}

TEST_CASE("a flood of logins of invented names costs a bounded number of auth_query lookups", "[auth-query][preauth]") {
  auto& cluster = Cluster::shared();
  cluster.psql_as_postgres("db1", "CREATE SEQUENCE IF NOT EXISTS public.authq_calls");
  cluster.psql_as_postgres("db1", "SELECT nextval('public.authq_calls')");
  const auto calls = [&] { return std::stol(cluster.psql_as_postgres("db1", "SELECT last_value FROM public.authq_calls")); };
  // Each lookup counts itself (nextval) and takes half a second, so concurrent logins overlap.
  const std::string query =
      "SELECT usename, passwd FROM pg_shadow WHERE usename = $1 "
      "UNION ALL SELECT NULL, NULL FROM pg_sleep(0.5) WHERE nextval('public.authq_calls') < 0";
  const auto logins = [&](const Pgkeel& pk, int n, const std::function<std::string(int)>& name) {
    std::vector<PqResult> out(static_cast<std::size_t>(n));
    std::atomic<int> ready{0};
    std::vector<std::thread> threads;
    for (int i = 0; i < n; ++i) {
      threads.emplace_back([&, i] {
        ++ready;
        while (ready.load() < n) std::this_thread::yield();
        out[static_cast<std::size_t>(i)] = pq_exec(pk.conninfo(name(i), "whatever", "app"), "SELECT 1");
      });
    }
    for (auto& t : threads) t.join();
    return out;
  };

  SECTION("logins of one name share one lookup, and its not-found answer is reused") {
    PgkeelOptions o;
    o.extra_toml = "[auth]\nquery = \"" + query + "\"\nnegative_cache_lifetime = \"60s\"\n";
    Pgkeel pk(cluster, o);
    REQUIRE(eventually(10s, [&] { return pq_exec(pk.conninfo(), "SELECT 1").ok; }));
    const long before = calls();
    const std::vector<PqResult> herd = logins(pk, 12, [](int) { return std::string("ghost-herd"); });
    for (const PqResult& r : herd) {
      INFO(r.error);
      CHECK(r.sqlstate == "28P01");
    }
    const long during = calls() - before;
    WARN("lookups for 12 concurrent logins of one name: " << during);
    CHECK(during >= 1);
    CHECK(during <= 2);  // at most one per worker
    CHECK(pq_exec(pk.conninfo("ghost-herd", "again", "app"), "SELECT 1").sqlstate == "28P01");
    CHECK(calls() - before == during);  // answered from the negative cache
  }

  SECTION("beyond max_queued_lookups a login is refused at once with 53300; users in the file go on") {
    PgkeelOptions o;
    o.extra_toml = "[auth]\nquery = \"" + query + "\"\nmax_queued_lookups = 1\n";
    Pgkeel pk(cluster, o);
    REQUIRE(eventually(10s, [&] { return pq_exec(pk.conninfo(), "SELECT 1").ok; }));
    const long before = calls();
    PqResult bystander;
    std::thread file_user([&] { bystander = pq_exec(pk.conninfo(), "SELECT 1"); });
    const std::vector<PqResult> flood = logins(pk, 12, [](int i) { return "invented-" + std::to_string(i); });
    file_user.join();
    int refused = 0;
    int failed = 0;
    for (const PqResult& r : flood) {
      INFO(r.error);
      if (r.sqlstate == "53300") {
        ++refused;
        CHECK(contains(r.error, "too many logins are waiting for the auth query"));
      } else {
        CHECK(r.sqlstate == "28P01");
        ++failed;
      }
    }
    const long lookups = calls() - before;
    WARN("12 concurrent invented names: " << refused << " refused, " << failed << " failed after a lookup, " << lookups
                                          << " lookups");
    CHECK(refused >= 1);
    CHECK(lookups == failed);  // a refused login cost no query
    INFO(bystander.error);
    CHECK(bystander.ok);
  }
}

}  // namespace pgkeel::test
