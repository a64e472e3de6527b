// tests/integration/resume_test.cc — sessions that outlive their server: an idle session keeps
// its settings and prepared statements across a failover and sees no error; a transaction that
// was open gets 40001, then 25P02 until it ends it; sessions that cannot move (LISTEN, a
// temporary table, an advisory lock) get an error naming why; transaction pooling keeps such a
// session on its server connection; a planned switchover under pgbench -M prepared in
// transaction pooling fails no transaction. Each scenario owns its cluster (roles change).
#include <catch2/catch.hpp>
#include <chrono>
#include <set>
#include <string>
#include <thread>

#include "tests/integration/fixture.h"

namespace pgkeel::test {
namespace {

PgkeelOptions resume_options(const Cluster& cluster, const std::string& pool_mode) {
  PgkeelOptions o;
  o.console = true;
  o.listeners = {ListenerSpec{.name = "rw", .pool_mode = pool_mode}};
  o.health_extra = "probe_interval = \"250ms\"\nprobe_timeout = \"500ms\"";
  o.failover_extra = "hold_timeout = \"20s\"\nswitchover_timeout = \"30s\"\nswitchover_drain_timeout = \"5s\"\n" +
                     switchover_commands(cluster);
  return o;
}

// The console's FAILOVER (a planned promotion without stopping the old primary: the old
// primary's connections are closed by pgkeel, as in a real failover).
void fail_over(const Pgkeel& pk) {
  const PqResult r = pq_exec(pk.console_conninfo(), "FAILOVER", 60s);
  INFO(r.error);
  REQUIRE(r.ok);
}

// A fresh cluster (roles change) and a pgkeel in front of it, serving.
struct ResumeRig {
  Cluster cluster{ClusterOptions{.standbys = 1, .sync = true}};
  Pgkeel pk;
  explicit ResumeRig(const std::string& pool_mode) : pk(cluster, resume_options(cluster, pool_mode)) {
    REQUIRE(eventually(15s, [&] { return pq_exec(pk.conninfo(), "SELECT 1").ok; }));
  }
};

std::string port_now(PqSession& s) { return s.exec("SELECT current_setting('port')").scalar(); }

}  // namespace

TEST_CASE("an idle session keeps its settings and prepared statements across a failover, with no error", "[resume]") {
  const std::string mode = GENERATE(std::string("session"), std::string("transaction"));
  INFO("pool_mode = " << mode);
  ResumeRig rig(mode);
  Cluster& cluster = rig.cluster;
  Pgkeel& pk = rig.pk;
  PqSession s(pk.conninfo());
  REQUIRE(s.connected());
  REQUIRE(s.exec("CREATE SCHEMA IF NOT EXISTS resume_shop").ok);
  REQUIRE(s.exec("SET search_path = resume_shop, public").ok);
  REQUIRE(s.exec("SET statement_timeout = '7s'").ok);
  PgResultPtr prep(PQprepare(s.get(), "add_one", "SELECT $1::int + 1", 1, nullptr));
  REQUIRE(PQresultStatus(prep.get()) == PGRES_COMMAND_OK);
  // SQL-level PREPARE too (in transaction pooling it pins the session, so only in session mode).
  if (mode == "session") REQUIRE(s.exec("PREPARE forty_two AS SELECT 42").ok);
  const std::string before = port_now(s);
  CHECK(before == std::to_string(cluster.port("db1")));

  fail_over(pk);

  // The next statements run on the new primary as if nothing happened.
  const PqResult where = s.exec("SELECT current_setting('port')");
  INFO(where.error);
  REQUIRE(where.ok);
  CHECK(where.scalar() == std::to_string(cluster.port("db2")));
  CHECK(s.exec("SHOW statement_timeout").scalar() == "7s");
  CHECK(s.exec("SHOW search_path").scalar() == "resume_shop, public");
  const char* params[] = {"41"};
  PgResultPtr run(PQexecPrepared(s.get(), "add_one", 1, params, nullptr, nullptr, 0));
  INFO(PQresultErrorMessage(run.get()));
  REQUIRE(PQresultStatus(run.get()) == PGRES_TUPLES_OK);
  CHECK(std::string(PQgetvalue(run.get(), 0, 0)) == "42");
  CHECK(s.exec("SELECT pg_is_in_recovery()").scalar() == "f");
  if (mode == "session") CHECK(s.exec("EXECUTE forty_two").scalar() == "42");
}

TEST_CASE("a transaction open at a failover gets 40001, then 25P02 until it ends; the session goes on", "[resume]") {
  const std::string mode = GENERATE(std::string("session"), std::string("transaction"));
  INFO("pool_mode = " << mode);
  ResumeRig rig(mode);
  Cluster& cluster = rig.cluster;
  Pgkeel& pk = rig.pk;
  PqSession s(pk.conninfo());
  REQUIRE(s.connected());
  REQUIRE(s.exec("CREATE TABLE IF NOT EXISTS resume_rows (id int)").ok);
  REQUIRE(s.exec("BEGIN").ok);
  REQUIRE(s.exec("INSERT INTO resume_rows VALUES (1)").ok);

  fail_over(pk);

  const PqResult first = s.exec("INSERT INTO resume_rows VALUES (2)");
  CHECK_FALSE(first.ok);
  CHECK(first.sqlstate == "40001");
  const PqResult again = s.exec("SELECT 1");
  CHECK(again.sqlstate == "25P02");
  const PqResult commit = s.exec("COMMIT");
  CHECK(commit.ok);
  CHECK(commit.command_status == "ROLLBACK");
  // The session is alive and on the new primary; the lost transaction left nothing behind.
  CHECK(s.exec("SELECT current_setting('port')").scalar() == std::to_string(cluster.port("db2")));
  CHECK(s.exec("SELECT count(*) FROM resume_rows").scalar() == "0");
}

TEST_CASE("sessions that cannot move get an error naming why at a failover", "[resume]") {
  ResumeRig rig("session");
  Pgkeel& pk = rig.pk;
  PqSession listener(pk.conninfo());
  PqSession temp(pk.conninfo());
  PqSession locker(pk.conninfo());
  PqSession plain(pk.conninfo());
  REQUIRE(listener.exec("LISTEN resume_channel").ok);
  REQUIRE(temp.exec("CREATE TEMP TABLE resume_scratch (i int)").ok);
  REQUIRE(locker.exec("SELECT pg_advisory_lock(4711)").ok);
  REQUIRE(plain.exec("SELECT 1").ok);

  fail_over(pk);

  for (auto [session, why] : {std::pair{&listener, "LISTEN"}, std::pair{&temp, "temporary"}, std::pair{&locker, "advisory"}}) {
    const PqResult r = session->exec("SELECT 1");
    INFO(why << ": " << r.error);
    CHECK_FALSE(r.ok);
    CHECK(r.error.find("cannot move to another server") != std::string::npos);
    CHECK(r.error.find(why) != std::string::npos);
  }
  CHECK(plain.exec("SELECT 1").ok);
}

TEST_CASE("transaction pooling keeps a session that used LISTEN on its server connection", "[resume][transaction]") {
  auto& cluster = Cluster::shared();
  PgkeelOptions o;
  o.listeners = {ListenerSpec{.name = "rw", .pool_mode = "transaction"}};
  o.workers = 1;
  Pgkeel pk(cluster, o);
  REQUIRE(eventually(15s, [&] { return pq_exec(pk.conninfo(), "SELECT 1").ok; }));
  PqSession pinned(pk.conninfo());
  PqSession other(pk.conninfo());
  REQUIRE(pinned.exec("LISTEN resume_pinned").ok);
  const std::string pid = pinned.exec("SELECT pg_backend_pid()").scalar();
  std::set<std::string> other_pids;
  for (int i = 0; i < 5; ++i) {
    CHECK(pinned.exec("SELECT pg_backend_pid()").scalar() == pid);
    other_pids.insert(other.exec("SELECT pg_backend_pid()").scalar());
  }
  CHECK(other_pids.count(pid) == 0);  // nobody else gets the pinned connection
  // NOTIFY reaches the pinned session: it still listens where it listened.
  REQUIRE(other.exec("NOTIFY resume_pinned, 'hello'").ok);
  CHECK(pinned.exec("SELECT 1").ok);
  PGnotify* n = PQnotifies(pinned.get());
  REQUIRE(n != nullptr);
  CHECK(std::string(n->extra) == "hello");
  PQfreemem(n);
}

TEST_CASE("transaction pooling with pinning = refuse fails what would tie a session to its connection", "[resume][transaction]") {
  auto& cluster = Cluster::shared();
  PgkeelOptions o;
  o.listeners = {ListenerSpec{.name = "rw", .pool_mode = "transaction", .extra = "pinning = \"refuse\""}};
  Pgkeel pk(cluster, o);
  REQUIRE(eventually(15s, [&] { return pq_exec(pk.conninfo(), "SELECT 1").ok; }));
  PqSession s(pk.conninfo());
  for (const char* sql : {"LISTEN resume_refused", "CREATE TEMP TABLE resume_refused (i int)", "SELECT pg_advisory_lock(99)",
                          "PREPARE resume_q AS SELECT 1"}) {
    const PqResult r = s.exec(sql);
    INFO(sql << ": " << r.error);
    CHECK_FALSE(r.ok);
    CHECK(r.sqlstate == "0A000");
    CHECK(r.error.find("pinning = \"refuse\"") != std::string::npos);
    CHECK(s.exec("SELECT 1").ok);  // the session goes on
  }
  // Inside a transaction the refusal fails the transaction, as any error would.
  REQUIRE(s.exec("BEGIN").ok);
  CHECK(s.exec("LISTEN resume_refused").sqlstate == "0A000");
  CHECK(s.exec("SELECT 1").sqlstate == "25P02");
  CHECK(s.exec("ROLLBACK").ok);
  CHECK(s.exec("SET statement_timeout = '3s'").ok);  // settings still follow the client
  CHECK(s.exec("SHOW statement_timeout").scalar() == "3s");
}

TEST_CASE("SWITCHOVER under pgbench -M prepared with transaction pooling: no failed transaction", "[resume][switchover]") {
  ResumeRig rig("transaction");
  Cluster& cluster = rig.cluster;
  Pgkeel& pk = rig.pk;
  const Env env{{"PGPASSWORD", std::string(kAppPassword)}};
  const std::string host = "127.0.0.1";
  const std::string port = std::to_string(pk.port());
  const RunResult init = run({"pgbench", "-i", "-s", "1", "-q", "-h", host, "-p", port, "-U", std::string(kAppUser), std::string(kAppDatabase)}, env);
  INFO(init.output);
  REQUIRE(init.exit_code == 0);
  RunResult bench;
  std::thread load([&] {
    bench = run({"pgbench", "-M", "prepared", "-c", "4", "-j", "4", "-T", "12", "-h", host, "-p", port, "-U", std::string(kAppUser),
                 std::string(kAppDatabase)},
                env, 90s);
  });
  std::this_thread::sleep_for(4s);
  const PqResult so = pq_exec(pk.console_conninfo(), "SWITCHOVER", 60s);
  load.join();
  INFO(so.error);
  CHECK(so.ok);
  INFO(bench.output);
  CHECK(bench.exit_code == 0);
  CHECK(bench.output.find("number of failed transactions: 0 (0.000%)") != std::string::npos);
  CHECK(bench.output.find("aborted") == std::string::npos);
  CHECK(pq_exec(pk.conninfo(), "SELECT current_setting('port')").scalar() == std::to_string(cluster.port("db2")));
}

}  // namespace pgkeel::test
