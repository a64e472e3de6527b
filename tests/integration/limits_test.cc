// tests/integration/limits_test.cc — fairness and timeouts: per-user and per-database client
// and server limits (the web shop cannot starve the ERP), the reserve pool that opens only after
// a wait, idle-in-transaction timeout, TCP keepalive on both sides, and application_name with
// the client's address.
#include <chrono>
#include <memory>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>

#include "tests/integration/fixture.h"

namespace pgkeel::test {
namespace {

using Clock = std::chrono::steady_clock;

bool contains(const std::string& hay, std::string_view needle) { return hay.find(needle) != std::string::npos; }

}  // namespace

TEST_CASE("per-user and per-database client limits refuse with 53300 and spare everyone else", "[limits]") {
  auto& cluster = Cluster::shared();
  PgkeelOptions o;
  o.databases = "app = {}\npostgres = {}";
  o.extra_toml = "[[limit]]\nuser = \"md5user\"\nmax_client_conn = 2\n"
                 "[[limit]]\ndatabase = \"postgres\"\nmax_client_conn = 1\n";
  Pgkeel pk(cluster, o);
  PqSession a(pk.conninfo("md5user", "md5-pass", "app"));
  PqSession b(pk.conninfo("md5user", "md5-pass", "app"));
  REQUIRE(a.connected());
  REQUIRE(b.connected());
  const PqResult third = pq_exec(pk.conninfo("md5user", "md5-pass", "app"), "SELECT 1");
  CHECK_FALSE(third.ok);
  CHECK(third.sqlstate == "53300");
  CHECK(contains(third.error, "too many connections for role \"md5user\""));
  CHECK(pq_exec(pk.conninfo(), "SELECT 1").ok);  // another user is not affected

  PqSession pg(pk.conninfo("app", "app-pass", "postgres"));
  REQUIRE(pg.connected());
  const PqResult second = pq_exec(pk.conninfo("app", "app-pass", "postgres"), "SELECT 1");
  CHECK(second.sqlstate == "53300");
  CHECK(contains(second.error, "too many connections for database \"postgres\""));

  // A slot given back is usable again.
  a = PqSession(pk.conninfo("app"));  // closes the first md5user session
  CHECK(eventually(5s, [&] { return pq_exec(pk.conninfo("md5user", "md5-pass", "app"), "SELECT 1").ok; }));
}

TEST_CASE("a per-user server limit makes that user wait, then fail with the limit named; others go on", "[limits]") {
  auto& cluster = Cluster::shared();
  PgkeelOptions o;
  o.pool_extra = "wait_timeout = \"1s\"";
  o.extra_toml = "[[limit]]\nuser = \"app\"\nmax_server_conn = 2\n";
  Pgkeel pk(cluster, o);
  // Two sessions hold the user's two server connections (session pooling).
  PqSession s1(pk.conninfo());
  PqSession s2(pk.conninfo());
  REQUIRE(s1.exec("BEGIN").ok);
  REQUIRE(s2.exec("BEGIN").ok);
  const auto t0 = Clock::now();
  const PqResult r = pq_exec(pk.conninfo(), "SELECT 1");
  const auto waited = Clock::now() - t0;
  CHECK_FALSE(r.ok);
  CHECK(r.sqlstate == "53300");
  CHECK(contains(r.error, "wait_timeout"));
  CHECK(contains(r.error, "max_server_conn for user \"app\" (2)"));
  CHECK(waited >= 900ms);
  // The ERP's user is not starved by the shop's.
  CHECK(pq_exec(pk.conninfo("md5user", "md5-pass", "app"), "SELECT 1").ok);
  // When one session ends, a waiting client gets its slot.
  PqResult later;
  std::thread t([&] { later = pq_exec(pk.conninfo(), "SELECT 'got it'"); });
  std::this_thread::sleep_for(200ms);
  REQUIRE(s1.exec("COMMIT").ok);
  s1 = PqSession(pk.conninfo("md5user", "md5-pass", "app"));
  t.join();
  INFO(later.error);
  CHECK(later.scalar() == "got it");
}

TEST_CASE("the reserve pool opens only after reserve_pool_timeout", "[limits]") {
  auto& cluster = Cluster::shared();
  PgkeelOptions o;
  o.pool_extra = "wait_timeout = \"3s\"\nreserve_pool_size = 1\nreserve_pool_timeout = \"400ms\"";
  o.extra_toml = "[[limit]]\nuser = \"app\"\nmax_server_conn = 1\n";
  Pgkeel pk(cluster, o);
  PqSession s1(pk.conninfo());
  REQUIRE(s1.exec("BEGIN").ok);
  const auto t0 = Clock::now();
  PqSession s2(pk.conninfo());  // waits, then takes the reserve slot
  const PqResult r2 = s2.exec("SELECT 2");
  const auto waited = Clock::now() - t0;
  INFO(r2.error);
  CHECK(r2.scalar() == "2");
  CHECK(waited >= 350ms);
  CHECK(waited < 2500ms);
  REQUIRE(s2.exec("BEGIN").ok);
  const PqResult r3 = pq_exec(pk.conninfo(), "SELECT 3");  // the reserve is used up
  CHECK(r3.sqlstate == "53300");
  CHECK(contains(r3.error, "reserve 1"));
}

TEST_CASE("idle_transaction_timeout ends a session left idle in a transaction, and rolls it back", "[limits]") {
  auto& cluster = Cluster::shared();
  PgkeelOptions o;
  o.pool_extra = "idle_transaction_timeout = \"500ms\"";
  Pgkeel pk(cluster, o);
  cluster.psql_as_postgres("db1", "CREATE TABLE IF NOT EXISTS idle_tx (v int); GRANT ALL ON idle_tx TO app", "app");
  PqSession s(pk.conninfo());
  REQUIRE(s.exec("BEGIN").ok);
  REQUIRE(s.exec("INSERT INTO idle_tx VALUES (42)").ok);
  PqSession idle_ok(pk.conninfo());  // idle outside a transaction: untouched
  REQUIRE(idle_ok.exec("SELECT 1").ok);
  std::this_thread::sleep_for(1500ms);
  const PqResult r = s.exec("COMMIT");
  CHECK_FALSE(r.ok);
  CHECK(contains(r.error, "idle-in-transaction timeout"));
  CHECK(cluster.psql_as_postgres("db1", "SELECT count(*) FROM idle_tx WHERE v = 42", "app") == "0");
  CHECK(idle_ok.exec("SELECT 1").ok);
}

TEST_CASE("TCP keepalive runs on both sides and application_name carries the client's address", "[limits][keepalive]") {
  auto& cluster = Cluster::shared();
  PgkeelOptions o;
  o.general_extra = "tcp_keepalive_idle = \"7s\"\ntcp_keepalive_interval = \"2s\"\ntcp_keepalive_count = 3\n"
                    "tcp_user_timeout = \"9s\"\napplication_name_add_host = true";
  Pgkeel pk(cluster, o);
  PqSession s(pk.conninfo() + " application_name=erp");
  REQUIRE(s.connected());
  const PqResult name = s.exec("SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()");
  CHECK(name.scalar() == "erp - 127.0.0.1");
  // ss prints a timer under a minute as e.g. "6.076ms" (sic) or "6sec", longer ones in "min".
  static const std::regex kOurKeepalive("timer:\\(keepalive,[0-9.]+(ms|sec),");
  // ss shows the keepalive timer on pgkeel's socket toward the client and toward the node (once
  // nothing is in flight: a retransmission timer shows instead while data is unacknowledged).
  RunResult client_side;
  CHECK(eventually(3s, [&] {
    client_side = run({"ss", "-tno", "state", "established", "( sport = :" + std::to_string(pk.port()) + " )"});
    return std::regex_search(client_side.output, kOurKeepalive);
  }, 100ms));
  INFO(client_side.output);
  RunResult server_side;
  CHECK(eventually(3s, [&] {
    server_side = run({"ss", "-tnop", "state", "established"});
    // pgkeel's own socket toward db1. Our 7 s idle shows in seconds; the keeper's libpq probes
    // keep the kernel's 2 h default.
    const std::string peer = "127.0.0.1:" + std::to_string(cluster.port("db1")) + " ";
    std::istringstream lines(server_side.output);
    for (std::string line; std::getline(lines, line);) {
      if (contains(line, peer) && contains(line, "\"pgkeel\"") && std::regex_search(line, kOurKeepalive)) return true;
    }
    return false;
  }, 100ms));
  INFO(server_side.output);
}

}  // namespace pgkeel::test
