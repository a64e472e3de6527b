// tests/integration/auth_query_test.cc — users who are not in the users file, authenticated
// with secrets looked up on the cluster ([auth] query): a password change counts at once, an
// unknown user fails like a wrong password, logins keep working while the primary is down, and
// an address that keeps failing is slowed down while everyone else is served at once. The user
// name reaches the cluster only as a bound parameter: a hostile name is just an unknown user, even
// where standard_conforming_strings is off.
#include <signal.h>

#include <chrono>
#include <string>
#include <thread>

#include <catch2/catch.hpp>

#include "tests/integration/fixture.h"

namespace pgkeel::test {
namespace {

using Clock = std::chrono::steady_clock;

bool contains(const std::string& hay, std::string_view needle) { return hay.find(needle) != std::string::npos; }

const char* kQuery = "[auth]\nquery = \"SELECT usename, passwd FROM pg_shadow WHERE usename = $1\"\n";

void create_shopper(const Cluster& cluster, const std::string& password) {
  cluster.psql_as_postgres("db1", "DO $$ BEGIN CREATE ROLE shopper LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$");
  cluster.psql_as_postgres("db1", "ALTER ROLE shopper PASSWORD '" + password + "'");
  cluster.psql_as_postgres("db1", "GRANT CONNECT ON DATABASE app TO shopper");
}

std::chrono::milliseconds timed_login(const Pgkeel& pk, const std::string& password, PqResult& out) {
  const auto t0 = Clock::now();
  out = pq_exec(pk.conninfo("shopper", password, "app"), "SELECT current_user");
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0);
}

}  // namespace

TEST_CASE("auth_query: a user missing from the users file logs in with the secret on the server", "[auth-query]") {
  auto& cluster = Cluster::shared();
  create_shopper(cluster, "pw-one");
  PgkeelOptions o;
  o.extra_toml = kQuery;
  Pgkeel pk(cluster, o);
  REQUIRE(eventually(10s, [&] { return pq_exec(pk.conninfo(), "SELECT 1").ok; }));

  PqResult r = pq_exec(pk.conninfo("shopper", "pw-one", "app"), "SELECT current_user");
  INFO(r.error);
  CHECK(r.scalar() == "shopper");

  SECTION("a password changed on the server counts at the next login, without a restart") {
    create_shopper(cluster, "pw-two");
    r = pq_exec(pk.conninfo("shopper", "pw-two", "app"), "SELECT current_user");
    INFO(r.error);
    CHECK(r.scalar() == "shopper");
    const PqResult old = pq_exec(pk.conninfo("shopper", "pw-one", "app"), "SELECT 1");
    CHECK(old.sqlstate == "28P01");
    create_shopper(cluster, "pw-one");
  }
  SECTION("an unknown user fails exactly like a wrong password") {
    const PqResult ghost = pq_exec(pk.conninfo("ghost", "whatever", "app"), "SELECT 1");
    CHECK(ghost.sqlstate == "28P01");
    CHECK(contains(ghost.error, "password authentication failed for user \"ghost\""));
  }
  SECTION("users in the users file never cost a query") {
    CHECK(pq_exec(pk.conninfo(), "SELECT 1").ok);
    CHECK_FALSE(contains(tail_file(pk.log_path(), 400), "auth_query_failed"));
  }
}

TEST_CASE("auth_query keeps logins working while the primary is down", "[auth-query][failover]") {
  Cluster cluster;  // its own: the primary dies
  create_shopper(cluster, "pw-one");
  REQUIRE(eventually(10s, [&] {
    return cluster.psql_as_postgres("db2", "SELECT count(*) FROM pg_roles WHERE rolname = 'shopper'") == "1";
  }));
  PgkeelOptions o;
  o.console = true;
  o.health_extra = "probe_interval = \"250ms\"\nprobe_timeout = \"500ms\"";
  o.failover_extra = "hold_timeout = \"20s\"";
  o.extra_toml = kQuery;
  Pgkeel pk(cluster, o);
  REQUIRE(eventually(10s, [&] { return pq_exec(pk.conninfo(), "SELECT 1").ok; }));
  REQUIRE(::kill(cluster.pid("db1"), SIGKILL) == 0);
  // At once, before any failover: the secret comes from the standby.
  PqResult r = pq_exec(pk.conninfo("shopper", "pw-one", "app"), "SELECT current_user, current_setting('port')", 30s);
  INFO(r.error);
  CHECK(r.value(0, 0) == "shopper");
  CHECK(r.value(0, 1) == std::to_string(cluster.port("db2")));  // served by the promoted standby
  CHECK_FALSE(contains(tail_file(pk.log_path(), 2000), "auth_query_unavailable"));
}

TEST_CASE("an address that keeps failing to log in is slowed down; a right password is not", "[auth-query][throttle]") {
  auto& cluster = Cluster::shared();
  create_shopper(cluster, "pw-one");
  PgkeelOptions o;
  o.extra_toml = std::string(kQuery) + "max_failures = 3\nfailure_delay = \"300ms\"\n";
  Pgkeel pk(cluster, o);
  REQUIRE(eventually(10s, [&] { return pq_exec(pk.conninfo(), "SELECT 1").ok; }));
  PqResult r;
  std::vector<long> took;
  for (int i = 0; i < 5; ++i) {
    took.push_back(timed_login(pk, "wrong", r).count());
    CHECK(r.sqlstate == "28P01");
  }
  INFO("attempt times (ms): " << took[0] << " " << took[1] << " " << took[2] << " " << took[3] << " " << took[4]);
  CHECK(took[2] < 300);
  CHECK(took[3] >= 300);  // the 4th failure waits failure_delay
  CHECK(took[4] >= 600);  // then twice that
  // Meanwhile, a client that knows its password is answered at once (and resets the count).
  PqResult wrong;
  std::thread slow([&] { timed_login(pk, "wrong", wrong); });
  std::this_thread::sleep_for(50ms);
  const auto ok_time = timed_login(pk, "pw-one", r);
  slow.join();
  INFO(r.error);
  CHECK(r.scalar() == "shopper");
  CHECK(ok_time.count() < 300);
  CHECK(wrong.sqlstate == "28P01");
  CHECK(timed_login(pk, "wrong", r).count() < 300);  // the count started again
}

TEST_CASE("auth_query binds the user name: a hostile name is an unknown user even with standard_conforming_strings = off",
          "[auth-query][injection]") {
  auto& cluster = Cluster::shared();
  // A database of its own whose sessions parse backslashes in '...' as escapes (the pre-9.1
  // default), so the lookup runs there; the rest of the shared cluster is untouched.
  cluster.psql_as_postgres("db1", "DROP DATABASE IF EXISTS authq_legacy");
  cluster.psql_as_postgres("db1", "CREATE DATABASE authq_legacy");
  cluster.psql_as_postgres("db1", "ALTER DATABASE authq_legacy SET standard_conforming_strings = off");
  REQUIRE(cluster.psql_as_postgres("db1", "SHOW standard_conforming_strings", "authq_legacy") == "off");
  PgkeelOptions o;
  o.extra_toml = std::string(kQuery) + "dbname = \"authq_legacy\"\n";
  Pgkeel pk(cluster, o);
  REQUIRE(eventually(10s, [&] { return pq_exec(pk.conninfo(), "SELECT 1").ok; }));

  // Quoting by doubling quotes turns  x\'  into  'x\''  : with standard_conforming_strings off the
  // backslash escapes the first quote and the second one ends the literal, so what follows is SQL.
  SECTION("a UNION that would supply the secret of the attacker's choice") {
    const std::string hostile = "x\\' UNION SELECT $$app$$, $$owned-pass$$ --";
    const PqResult r = pq_exec(pk.conninfo(hostile, "owned-pass", "app"), "SELECT current_user");
    INFO(r.error);
    CHECK_FALSE(r.ok);
    CHECK(r.sqlstate == "28P01");
    CHECK(contains(r.error, "password authentication failed"));
    // Refused by pgkeel itself. Spliced, the lookup returned the attacker's password, pgkeel let the
    // client in and only the server then refused the role: a server's FATAL names its source code
    // location (LOCATION: auth_failed, auth.c), pgkeel's own never does.
    CHECK_FALSE(contains(r.error, "LOCATION:"));
  }
  SECTION("a second statement run by the lookup user (a superuser) before anyone authenticated") {
    cluster.psql_as_postgres("db1", "DROP TABLE IF EXISTS injected_by_login", "authq_legacy");
    const std::string hostile = "x\\'; CREATE TABLE injected_by_login (); SELECT $$a$$, $$b$$ --";
    const PqResult r = pq_exec(pk.conninfo(hostile, "b", "app"), "SELECT 1");
    INFO(r.error);
    CHECK(r.sqlstate == "28P01");
    CHECK_FALSE(contains(r.error, "LOCATION:"));
    CHECK(cluster.psql_as_postgres("db1", "SELECT to_regclass('injected_by_login') IS NULL", "authq_legacy") == "t");
  }
  // The query itself still works there: a real cluster-only user logs in.
  create_shopper(cluster, "pw-one");
  const PqResult ok = pq_exec(pk.conninfo("shopper", "pw-one", "app"), "SELECT current_user");
  INFO(ok.error);
  CHECK(ok.scalar() == "shopper");
}

}  // namespace pgkeel::test
