// tests/integration/rejoin_test.cc — after a failover the cluster is whole again by itself: the
// old primary comes back as a primary on its old timeline, pgkeel says so on every surface and
// keeps it fenced, rejoins it (rejoin = "auto": tools/rejoin.sh rewinds it), checks that it
// streams on the new timeline, names it synchronous again, and a second failure right after the
// first then loses nothing.
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>

#include "tests/integration/fixture.h"
#include "tests/integration/load.h"

namespace pgkeel::test {
namespace {

using Clock = std::chrono::steady_clock;

std::string console_rows(const Pgkeel& pk, const std::string& sql) {
  auto r = pq_exec(pk.console_conninfo(), sql);
  std::string out;
  for (const auto& row : r.rows) {
    for (const auto& v : row) out += (v ? *v : std::string("NULL")) + "|";
    out += "\n";
  }
  return r.ok ? out : "ERROR: " + r.error;
}

// One console row as column -> value.
std::map<std::string, std::string> node_row(const Pgkeel& pk, const std::string& node) {
  auto r = pq_exec(pk.console_conninfo(), "SHOW NODES");
  std::map<std::string, std::string> out;
  if (!r.ok) return out;
  for (const auto& row : r.rows) {
    if (row.empty() || !row[0] || *row[0] != node) continue;
    for (std::size_t i = 0; i < row.size() && i < r.columns.size(); ++i) out[r.columns[i]] = row[i] ? *row[i] : "";
  }
  return out;
}

std::string writer_port(const Pgkeel& pk) { return pq_exec(pk.conninfo(), "SELECT current_setting('port')").scalar(); }

// The running postmaster's pid from its data folder (nodes restart under other pids).
pid_t postmaster_pid(const Cluster& cluster, std::string_view node) {
  std::ifstream in(cluster.node(node).data_dir / "postmaster.pid");
  long pid = 0;
  in >> pid;
  return static_cast<pid_t>(pid);
}

bool all_gone(const std::vector<pid_t>& pids) {
  for (pid_t p : pids) {
    if (::kill(p, 0) == 0) return false;
  }
  return true;
}

// kill -9 of every process of the node's instance (so it can be started again), and wait until
// they are gone.
void kill_instance(const Cluster& cluster, std::string_view node) {
  const pid_t pm = postmaster_pid(cluster, node);
  REQUIRE(pm > 0);
  const std::vector<pid_t> pids = instance_pids(pm);
  for (pid_t p : pids) ::kill(p, SIGKILL);
  REQUIRE(eventually(10s, [&] { return all_gone(pids); }));
}

std::string http_body(const Pgkeel& pk, const std::string& path) {
  return run({"python3", "-c",
              "import sys, urllib.request, urllib.error\n"
              "try:\n"
              "    r = urllib.request.urlopen(sys.argv[1], timeout=5); body = r.read()\n"
              "except urllib.error.HTTPError as e:\n"
              "    body = e.read()\n"
              "sys.stdout.buffer.write(body)\n",
              pk.status_url() + path},
             {}, 20s)
      .output;
}

PgkeelOptions rejoin_options(const Cluster& cluster, const std::string& mode) {
  PgkeelOptions o;
  o.console = true;
  o.status = true;
  o.health_extra = "probe_interval = \"250ms\"\nprobe_timeout = \"500ms\"";
  const fs::path tools = cluster_script().parent_path();
  o.failover_extra = "hold_timeout = \"20s\"\nrejoin = \"" + mode + "\"\nrejoin_command = \"" + (tools / "rejoin.sh").string() +
                     " " + cluster.dir().string() + "\"";
  return o;
}

}  // namespace

TEST_CASE("a returned old primary is fenced, said so everywhere, rejoined by itself; a second failure right after "
          "the first loses no acknowledged commit",
          "[rejoin][second-failure]") {
  const std::string ledger = (fs::path(PGKEEL_BINARY_DIR) / "pgkeel-ledger").string();
  REQUIRE(fs::exists(ledger));
  Cluster cluster(ClusterOptions{.standbys = 1, .sync = true});
  Pgkeel pk(cluster, rejoin_options(cluster, "auto"));
  REQUIRE(eventually(10s, [&] { return writer_port(pk) == std::to_string(cluster.port("db1")); }));
  // ANY 1 (...): PostgreSQL calls a standby that counts "quorum".
  auto is_sync = [](const std::string& state) { return state == "sync" || state == "quorum"; };
  REQUIRE(eventually(15s, [&] { return is_sync(node_row(pk, "db2")["sync_state"]); }));
  const std::string conninfo = pk.conninfo();
  auto setup = run({ledger, "setup", "--conninfo", conninfo});
  INFO(setup.output);
  REQUIRE(setup.ok());

  const fs::path out = pk.dir() / "ledger.json";
  Background load({ledger, "run", "--conninfo", conninfo, "--clients", "4", "--duration", "600", "--out", out.string()},
                  pk.dir() / "ledger.log");
  std::this_thread::sleep_for(3s);

  // First failure: db1 dies; db2 takes the writes.
  kill_instance(cluster, "db1");
  REQUIRE(eventually(20s, [&] { return writer_port(pk) == std::to_string(cluster.port("db2")); }));

  // db1 comes back as it was: a primary on timeline 1.
  cluster.start_node("db1");
  const auto returned_at = Clock::now();
  // Fenced and said so at once: SHOW NODES, /health, /api/status, an event.
  REQUIRE(eventually(10s, [&] { return node_row(pk, "db1")["standing"] == "returned primary"; }));
  {
    auto row = node_row(pk, "db1");
    CHECK(row["fenced"] == "yes");
  }
  bool said_everywhere = eventually(10s, [&] {
    const std::string health = http_body(pk, "/health");
    const std::string status = http_body(pk, "/api/status");
    const std::string events = console_rows(pk, "SHOW EVENTS");
    return health.find("db1 returned as a primary on timeline 1") != std::string::npos &&
           status.find("db1 returned as a primary on timeline 1") != std::string::npos &&
           events.find("|rejoin_needed|db1|db1 returned as a primary on timeline 1") != std::string::npos;
  });
  if (!said_everywhere) {
    INFO(http_body(pk, "/health"));
    INFO(console_rows(pk, "SHOW EVENTS"));
    CHECK(said_everywhere);
  }
  // No write reaches it meanwhile.
  CHECK(writer_port(pk) == std::to_string(cluster.port("db2")));

  // Rejoined by itself: rewound, streaming on timeline 2, synchronous again.
  const bool rejoined = eventually(120s, [&] {
    auto row = node_row(pk, "db1");
    return row["standing"] == "follows" && row["rejoin"].empty() && is_sync(row["sync_state"]) && row["fenced"] == "no";
  });
  {
    INFO(console_rows(pk, "SHOW EVENTS"));
    INFO(console_rows(pk, "SHOW NODES"));
    REQUIRE(rejoined);
  }
  const auto rejoin_ms = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - returned_at).count();
  std::printf("rejoin: db1 returned as a primary -> rejoined, streaming and synchronous: %lld ms\n",
              static_cast<long long>(rejoin_ms));
  CHECK(pq_exec(cluster.conninfo("db1"), "SELECT pg_is_in_recovery()").scalar() == "t");
  const std::string events = console_rows(pk, "SHOW EVENTS");
  INFO(events);
  CHECK(events.find("|rejoined|db1|") != std::string::npos);
  CHECK(http_body(pk, "/health").find("returned as a primary") == std::string::npos);

  // Second failure right after: db2 dies; db1 takes the writes again.
  std::this_thread::sleep_for(2s);
  kill_instance(cluster, "db2");
  REQUIRE(eventually(20s, [&] { return writer_port(pk) == std::to_string(cluster.port("db1")); }));
  std::this_thread::sleep_for(3s);

  const int rc = load.terminate(60s);
  const std::string load_out = load.output();
  INFO(load_out);
  CHECK(rc == 0);
  auto verify = run({ledger, "verify", "--conninfo", conninfo, "--in", out.string()});
  INFO(verify.output);
  CHECK(verify.ok());
  // Synchronous mode, across both failovers: nothing acknowledged is lost, nothing twice.
  CHECK(verify.output.find("lost (acknowledged, missing): 0") != std::string::npos);
  CHECK(verify.output.find("duplicated ids:               0") != std::string::npos);
  // Writes end on the original node.
  CHECK(writer_port(pk) == std::to_string(cluster.port("db1")));
  const std::string all_events = console_rows(pk, "SHOW EVENTS");
  INFO(all_events);
  CHECK(all_events.find("|promotion|db2|") != std::string::npos);
  CHECK(all_events.find("|promotion|db1|") != std::string::npos);
}

TEST_CASE("rejoin = manual: a returned old primary is fenced and reported, and stays so until a DBA rejoins it",
          "[rejoin][manual]") {
  Cluster cluster(ClusterOptions{.standbys = 1, .sync = false});
  Pgkeel pk(cluster, rejoin_options(cluster, "manual"));
  REQUIRE(eventually(10s, [&] { return writer_port(pk) == std::to_string(cluster.port("db1")); }));
  kill_instance(cluster, "db1");
  REQUIRE(eventually(20s, [&] { return writer_port(pk) == std::to_string(cluster.port("db2")); }));
  cluster.start_node("db1");
  REQUIRE(eventually(15s, [&] { return node_row(pk, "db1")["rejoin"] == "needed"; }));
  auto row = node_row(pk, "db1");
  CHECK(row["fenced"] == "yes");
  CHECK(row["standing"] == "returned primary");
  CHECK_THAT(row["rejoin_why"], Catch::Contains("db1 returned as a primary on timeline 1"));
  const std::string events = console_rows(pk, "SHOW EVENTS");
  INFO(events);
  CHECK(events.find("rejoin it by hand") != std::string::npos);
  // Nothing runs by itself: still a primary a while later.
  std::this_thread::sleep_for(8s);
  CHECK(pq_exec(cluster.conninfo("db1"), "SELECT pg_is_in_recovery()").scalar() == "f");
  CHECK(console_rows(pk, "SHOW EVENTS").find("running rejoin_command") == std::string::npos);
  CHECK_THAT(http_body(pk, "/health"), Catch::Contains("to be rejoined by hand"));

  // A DBA rejoins it: pgkeel sees it follow and lifts the fence.
  const fs::path tools = cluster_script().parent_path();
  const RunResult r = run({(tools / "rejoin.sh").string(), cluster.dir().string(), "db1", "db2"}, {}, 180s);
  INFO(r.output);
  REQUIRE(r.ok());
  REQUIRE(eventually(30s, [&] {
    auto now = node_row(pk, "db1");
    return now["standing"] == "follows" && now["rejoin"].empty() && now["fenced"] == "no";
  }));
  CHECK(console_rows(pk, "SHOW EVENTS").find("|rejoined|db1|") != std::string::npos);
}

}  // namespace pgkeel::test
