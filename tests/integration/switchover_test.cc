// tests/integration/switchover_test.cc — the console's acting verbs against a real cluster, read
// like the runbook: a planned switchover under load moves writes, loses no acknowledged commit,
// and the old primary follows the new one without a rewind; FAILOVER TO a named node; the dry
// run names the node the next failover promotes; FENCE, UNFENCE, DISABLE and ENABLE, refusals
// included. Each scenario owns its cluster.
#include <signal.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

#include <catch2/catch.hpp>

#include "tests/integration/fixture.h"

namespace pgkeel::test {
namespace {

using Clock = std::chrono::steady_clock;

std::string port_of(const Cluster& cluster, std::string_view node) { return std::to_string(cluster.port(node)); }

// Which node serves a new session through the listener (by the server's own port).
std::string served_by(const Pgkeel& pk, std::string_view listener = "rw") {
  return pq_exec(pk.conninfo(kAppUser, kAppPassword, kAppDatabase, listener), "SELECT current_setting('port')", 5s).scalar();
}

// Runs one console command; "" on success, else the error message.
std::string act(const Pgkeel& pk, const std::string& sql, std::chrono::milliseconds timeout = 60s) {
  const PqResult r = pq_exec(pk.console_conninfo(), sql, timeout);
  return r.ok ? "" : (r.error.empty() ? "failed" : r.error);
}

std::string show(const Pgkeel& pk, const std::string& sql) {
  const PqResult r = pq_exec(pk.console_conninfo(), sql);
  std::string out;
  for (const auto& row : r.rows) {
    for (const auto& v : row) out += (v ? *v : std::string("NULL")) + "|";
    out += "\n";
  }
  return r.ok ? out : "ERROR: " + r.error;
}


PgkeelOptions verb_options(const Cluster& cluster, bool with_stop = true) {
  PgkeelOptions o;
  o.console = true;
  o.listeners = {ListenerSpec{}, ListenerSpec{.name = "ro", .intent = "read-only"}};
  o.health_extra = "probe_interval = \"250ms\"\nprobe_timeout = \"500ms\"";
  o.failover_extra = "hold_timeout = \"15s\"\nswitchover_timeout = \"30s\"\nswitchover_drain_timeout = \"2s\"";
  if (with_stop) o.failover_extra += "\n" + switchover_commands(cluster);
  return o;
}

bool streams_from(const Cluster& cluster, std::string_view standby, std::string_view primary) {
  return pq_exec(cluster.conninfo(primary, kPgkeelUser, kPgkeelPassword, "postgres"),
                 "SELECT count(*) FROM pg_stat_replication WHERE application_name = '" + std::string(standby) +
                     "' AND state = 'streaming'")
             .scalar() == "1";
}

}  // namespace

TEST_CASE("SWITCHOVER under a ledger load: writes move, nothing is lost, the old primary follows without a rewind",
          "[switchover]") {
  const std::string ledger = (fs::path(PGKEEL_BINARY_DIR) / "pgkeel-ledger").string();
  REQUIRE(fs::exists(ledger));
  Cluster cluster(ClusterOptions{.standbys = 1, .sync = true});
  Pgkeel pk(cluster, verb_options(cluster));
  REQUIRE(eventually(10s, [&] { return served_by(pk) == port_of(cluster, "db1"); }));
  REQUIRE(eventually(10s, [&] { return served_by(pk, "ro") == port_of(cluster, "db2"); }));
  const std::string conninfo = pk.conninfo();
  const std::string out = (pk.dir() / "ledger.json").string();
  auto setup = run({ledger, "setup", "--conninfo", conninfo});
  INFO(setup.output);
  REQUIRE(setup.ok());

  RunResult load;
  std::thread writer([&] {
    load = run({ledger, "run", "--conninfo", conninfo, "--clients", "4", "--duration", "8", "--out", out}, {}, 60s);
  });
  REQUIRE(eventually(10s, [&] {
    return std::stol(cluster.psql_as_postgres("db1", "SELECT count(*) FROM pgkeel_ledger", "app")) > 200;
  }));
  const auto asked = Clock::now();
  const std::string answer = act(pk, "SWITCHOVER TO db2");
  const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - asked).count();
  // The console answers when the switchover finished: writes go to db2 at once.
  const std::string served_after = served_by(pk);
  writer.join();
  INFO(show(pk, "SHOW EVENTS"));
  REQUIRE(answer.empty());
  CHECK(served_after == port_of(cluster, "db2"));
  std::printf("switchover: SWITCHOVER TO db2 answered in %lld ms\n", static_cast<long long>(took));

  INFO(load.output);
  CHECK(load.ok());
  CHECK(load.output.find("; 0 connect failures") != std::string::npos);
  const auto gap = load.output.find("longest write gap (any client)");
  REQUIRE(gap != std::string::npos);
  std::printf("switchover (pgkeel-ledger): %s\n", load.output.substr(gap, load.output.find('\n', gap) - gap).c_str());
  auto verify = run({ledger, "verify", "--conninfo", conninfo, "--in", out});
  INFO(verify.output);
  CHECK(verify.ok());
  CHECK(verify.output.find("lost (acknowledged, missing): 0") != std::string::npos);
  CHECK(verify.output.find("duplicated ids:               0") != std::string::npos);

  // The old primary rejoins as a streaming standby, without a rewind, and serves reads again.
  REQUIRE(eventually(60s, [&] { return streams_from(cluster, "db1", "db2"); }));
  CHECK(pq_exec(cluster.conninfo("db1"), "SELECT pg_is_in_recovery()").scalar() == "t");
  const std::string rejoin_log = read_file(cluster.dir() / "db1.rejoin.log");
  INFO(rejoin_log);
  CHECK(rejoin_log.find("no rewind required") != std::string::npos);
  CHECK(rejoin_log.find("rewinding from") == std::string::npos);
  CHECK(eventually(10s, [&] { return served_by(pk, "ro") == port_of(cluster, "db1"); }));
  std::string events;
  CHECK(eventually(5s, [&] {
    events = show(pk, "SHOW EVENTS");
    return events.find("|rejoin|db1|rejoin_command succeeded") != std::string::npos;
  }));
  INFO(events);
  // The timeline of the switchover, for the record.
  std::istringstream lines(events);
  for (std::string line; std::getline(lines, line);) {
    if (line.find("|switchover|") != std::string::npos || line.find("|promotion|") != std::string::npos ||
        line.find("|rejoin|") != std::string::npos) {
      std::printf("switchover event: %s\n", line.c_str());
    }
  }
  const std::string nodes = show(pk, "SHOW NODES");
  INFO(nodes);
  CHECK(nodes.find("db1|127.0.0.1:" + port_of(cluster, "db1") + "|standby|up|no|yes|") != std::string::npos);
  // The record says a switchover happened, and so does the route.
  CHECK(read_file(pk.dir() / "pgkeel.state").find("node=db2") != std::string::npos);
  CHECK(read_file(pk.dir() / "pgkeel.state").find("how=switchover") != std::string::npos);
  CHECK(show(pk, "SHOW ROUTES").find("SWITCHOVER TO db2 by pgkeel") != std::string::npos);
}

TEST_CASE("SWITCHOVER is refused with the reason, and a failing stop command leaves writes on the old primary",
          "[switchover]") {
  Cluster cluster(ClusterOptions{.standbys = 2, .sync = false});
  SECTION("without a stop_command") {
    Pgkeel pk(cluster, verb_options(cluster, false));
    REQUIRE(eventually(10s, [&] { return served_by(pk) == port_of(cluster, "db1"); }));
    CHECK(act(pk, "SWITCHOVER TO db2").find("no stop_command configured") != std::string::npos);
  }
  SECTION("bad targets") {
    Pgkeel pk(cluster, verb_options(cluster));
    REQUIRE(eventually(10s, [&] { return served_by(pk) == port_of(cluster, "db1"); }));
    CHECK(act(pk, "SWITCHOVER TO db9").find("no node named db9") != std::string::npos);
    CHECK(act(pk, "SWITCHOVER TO DB2").find("no node named DB2") != std::string::npos);
    CHECK(act(pk, "SWITCHOVER TO db1").find("db1 is the writer already") != std::string::npos);
    REQUIRE(act(pk, "FENCE db2").empty());
    CHECK(act(pk, "SWITCHOVER TO db2").find("cannot switch over to db2: fenced") != std::string::npos);
    REQUIRE(act(pk, "DISABLE db3").empty());
    CHECK(act(pk, "SWITCHOVER TO db3").find("cannot switch over to db3: disabled for maintenance") != std::string::npos);
    CHECK(act(pk, "SWITCHOVER").find("no standby can take over; db2: fenced; db3: disabled for maintenance") !=
          std::string::npos);
    CHECK(served_by(pk) == port_of(cluster, "db1"));
  }
  SECTION("the stop command fails: the switchover aborts and writes resume on the old primary") {
    PgkeelOptions o = verb_options(cluster, false);
    o.failover_extra += "\nstop_command = \"echo refusing; exit 3\"";
    Pgkeel pk(cluster, o);
    REQUIRE(eventually(10s, [&] { return served_by(pk) == port_of(cluster, "db1"); }));
    const std::string answer = act(pk, "SWITCHOVER TO db2");
    INFO(show(pk, "SHOW EVENTS"));
    CHECK(answer.find("aborted at stop: stop_command failed (status 3)") != std::string::npos);
    CHECK(answer.find("writes resume on db1") != std::string::npos);
    CHECK(served_by(pk) == port_of(cluster, "db1"));
    CHECK(pq_exec(pk.conninfo(), "SELECT 1").ok);
    CHECK(pq_exec(cluster.conninfo("db2"), "SELECT pg_is_in_recovery()").scalar() == "t");
  }
}

TEST_CASE("FAILOVER TO a named standby moves writes there; the fenced old primary is never unfenced",
          "[console-verbs][failover-to]") {
  Cluster cluster(ClusterOptions{.standbys = 2, .sync = false});
  Pgkeel pk(cluster, verb_options(cluster, false));
  REQUIRE(eventually(10s, [&] { return served_by(pk) == port_of(cluster, "db1"); }));
  CHECK(act(pk, "FAILOVER TO DB3").find("no node named DB3") != std::string::npos);
  CHECK(act(pk, "FAILOVER TO db1").find("db1 is the primary already") != std::string::npos);
  const std::string answer = act(pk, "FAILOVER TO db3");
  INFO(show(pk, "SHOW EVENTS"));
  REQUIRE(answer.empty());
  // The console answered once the sequence finished: the next session writes on db3.
  CHECK(served_by(pk) == port_of(cluster, "db3"));
  CHECK(pq_exec(cluster.conninfo("db3"), "SELECT pg_is_in_recovery()").scalar() == "f");
  // The old primary still runs as a primary: fenced, it may never be unfenced.
  REQUIRE(act(pk, "FENCE db1").empty());
  CHECK(act(pk, "UNFENCE db1").find("is not in recovery") != std::string::npos);
  CHECK(show(pk, "SHOW NODES").find("db1|127.0.0.1:" + port_of(cluster, "db1") + "|primary|up|yes|") != std::string::npos);
  CHECK(show(pk, "SHOW ROUTES").find("FAILOVER TO db3 by pgkeel") != std::string::npos);
}

TEST_CASE("SHOW FAILOVER PLAN names the node the next failover promotes", "[console-verbs][plan]") {
  Cluster cluster(ClusterOptions{.standbys = 2, .sync = false});
  Pgkeel pk(cluster, verb_options(cluster, false));
  REQUIRE(eventually(10s, [&] { return served_by(pk) == port_of(cluster, "db1"); }));
  std::string expected = "db2";
  SECTION("every standby eligible") {}
  SECTION("db2 disabled for maintenance") {
    REQUIRE(act(pk, "DISABLE db2").empty());
    expected = "db3";
  }
  // The plan must settle on both standbys' latest positions; read it as the keeper has it now.
  std::string chosen;
  REQUIRE(eventually(10s, [&] {
    const PqResult r = pq_exec(pk.console_conninfo(), "SHOW FAILOVER PLAN");
    chosen.clear();
    std::size_t col = r.columns.size();
    for (std::size_t i = 0; i < r.columns.size(); ++i) {
      if (r.columns[i] == "chosen") col = i;
    }
    for (const auto& row : r.rows) {
      if (col < row.size() && row[col] && *row[col] == "yes" && row[0]) chosen = *row[0];
    }
    return !chosen.empty();
  }));
  INFO(show(pk, "SHOW FAILOVER PLAN"));
  CHECK(chosen == expected);
  REQUIRE(::kill(cluster.pid("db1"), SIGKILL) == 0);
  REQUIRE(eventually(20s, [&] { return served_by(pk) == port_of(cluster, chosen); }));
  CHECK(pq_exec(cluster.conninfo(chosen), "SELECT pg_is_in_recovery()").scalar() == "f");
}

TEST_CASE("FENCE, UNFENCE, DISABLE and ENABLE move traffic and refuse what is unsafe", "[console-verbs]") {
  Cluster cluster(ClusterOptions{.standbys = 1, .sync = false});
  PgkeelOptions o = verb_options(cluster, false);
  o.failover_extra = "hold_timeout = \"1s\"";
  Pgkeel pk(cluster, o);
  const std::string db1 = port_of(cluster, "db1");
  const std::string db2 = port_of(cluster, "db2");
  REQUIRE(eventually(10s, [&] { return served_by(pk) == db1 && served_by(pk, "ro") == db2; }));

  CHECK(act(pk, "DISABLE db1").find("db1 is the writer; use SWITCHOVER first") != std::string::npos);
  CHECK(act(pk, "FENCE db9").find("no node named db9") != std::string::npos);

  REQUIRE(act(pk, "DISABLE db2").empty());
  CHECK(served_by(pk, "ro") == db1);  // no standby left: the primary serves reads
  CHECK(show(pk, "SHOW NODES").find("db2|127.0.0.1:" + db2 + "|standby|up|no|no|") != std::string::npos);
  CHECK(show(pk, "SHOW FAILOVER PLAN").find("db2|no|") != std::string::npos);
  REQUIRE(act(pk, "ENABLE db2").empty());
  CHECK(served_by(pk, "ro") == db2);

  REQUIRE(act(pk, "FENCE db2").empty());
  CHECK(served_by(pk, "ro") == db1);
  REQUIRE(act(pk, "UNFENCE db2").empty());  // a standby, in recovery
  CHECK(served_by(pk, "ro") == db2);

  // Fencing the writer leaves no writer: clients are held, then refused after hold_timeout.
  REQUIRE(act(pk, "FENCE db1").empty());
  const PqResult held = pq_exec(pk.conninfo(), "SELECT 1", 10s);
  CHECK_FALSE(held.ok);
  CHECK(held.sqlstate == "57P03");
  // The recorded primary itself may be unfenced: writes go to it again.
  REQUIRE(act(pk, "UNFENCE db1").empty());
  CHECK(eventually(5s, [&] { return served_by(pk) == db1; }));
  const std::string events = show(pk, "SHOW EVENTS");
  INFO(events);
  CHECK(events.find("|fence|db1|FENCE by pgkeel") != std::string::npos);
  CHECK(events.find("|disable|db2|DISABLE by pgkeel") != std::string::npos);
}

}  // namespace pgkeel::test
