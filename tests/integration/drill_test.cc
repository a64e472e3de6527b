// The rehearsal drill against a real cluster: pgkeel-drill drives load through pgkeel, injects a
// fault (kill, kill of every process, hang, partition, switchover, failover through the console),
// verifies every write on the surviving primary, and writes a JSON summary and an HTML report
// that must agree with each other. [drill][faults] are the runs of the other faults (15-20 s
// each); the [release-only] ones are skipped under the sanitizers (tests/CMakeLists.txt).
#include <catch2/catch.hpp>

#include <cstdio>
#include <fstream>
#include <set>
#include <sstream>

#include "tests/integration/fixture.h"
#include "tests/integration/load.h"
#include "tools/ledger/json.h"

using namespace pgkeel::test;
namespace json = pgkeel::ledger::json;

namespace {

fs::path drill_binary() { return fs::path(PGKEEL_BINARY_DIR) / "pgkeel-drill"; }
fs::path tools_dir() { return cluster_script().parent_path(); }

PgkeelOptions drill_options(const Cluster& cluster) {
  PgkeelOptions o;
  o.console = true;
  o.status = true;
  o.log_level = "info";
  o.health_extra = "probe_interval = \"250ms\"\nprobe_timeout = \"500ms\"";
  o.failover_extra = "hold_timeout = \"15s\"\nswitchover_timeout = \"30s\"\nswitchover_drain_timeout = \"2s\"";
  o.failover_extra += "\nstop_command = \"" + (tools_dir() / "stop-node.sh").string() + " " + cluster.dir().string() + "\"";
  o.failover_extra += "\nrejoin_command = \"" + (tools_dir() / "rejoin.sh").string() + " --no-rewind " +
                      cluster.dir().string() + "\"";
  return o;
}

struct DrillRun {
  RunResult result;
  std::optional<json::Value> summary;
  std::string html;
};

DrillRun run_drill(const Cluster& cluster, const Pgkeel& pk, const std::string& fault,
                   const std::string& duration = "20s", const std::vector<std::string>& extra = {}) {
  DrillRun d;
  const fs::path out = pk.dir() / "drill";
  fs::create_directories(out);
  std::vector<std::string> argv = {drill_binary().string(), "--conninfo", pk.conninfo(), "--console", pk.console_conninfo(),
                                   "--cluster-env", cluster.env_file().string(), "--sync", "--clients", "4", "--duration", duration,
                                   "--write-ratio", "0.8", "--fault", fault, "--out", out.string()};
  argv.insert(argv.end(), extra.begin(), extra.end());
  d.result = run(argv, {}, 150s);
  std::printf("pgkeel-drill (%s):\n%s\n", fault.c_str(), d.result.output.c_str());
  const std::string text = read_file(out / "drill.json");  // the reader keeps a view of it
  json::Reader reader(text);
  d.summary = reader.parse();
  d.html = read_file(out / "drill.html");
  return d;
}

std::int64_t int_at(const json::Value& v, std::string_view a, std::string_view b = {}) {
  const json::Value* x = v.find(a);
  if (x != nullptr && !b.empty()) {
    x = x->find(b);
  }
  return x != nullptr && x->is_int() ? x->integer : -1;
}

// What every synchronous run must show, whatever the fault: the one fault injected into `target`
// and recovered from; not one acknowledged commit lost or duplicated and no failed write present
// (acknowledged = found); counts that add up; a write downtime that was measured, is the fault's
// own, and ends at its recovery; every client error classified by SQLSTATE and phase, the
// classes adding up to the total. Returns the downtime for the caller to print.
std::int64_t check_sync_summary(const json::Value& s, const std::string& target) {
  CHECK(s.find("format")->string == "pgkeel-drill/1");
  CHECK(s.find("sync")->boolean);
  CHECK(int_at(s, "verification", "lost") == 0);
  CHECK(int_at(s, "verification", "duplicates") == 0);
  CHECK(int_at(s, "verification", "failed_present") == 0);
  CHECK(int_at(s, "counts", "acknowledged") > 0);
  CHECK(int_at(s, "verification", "found_acknowledged") == int_at(s, "counts", "acknowledged"));
  CHECK(int_at(s, "verification", "acknowledged") == int_at(s, "counts", "acknowledged"));
  CHECK(int_at(s, "verification", "unknown") == int_at(s, "counts", "unknown"));
  CHECK(int_at(s, "verification", "unknown") ==
        int_at(s, "verification", "unknown_committed") + int_at(s, "verification", "unknown_not_committed"));
  CHECK(int_at(s, "counts", "write_attempts") ==
        int_at(s, "counts", "acknowledged") + int_at(s, "counts", "failed") + int_at(s, "counts", "unknown"));
  CHECK(int_at(s, "errors_total") == int_at(s, "counts", "failed") + int_at(s, "counts", "unknown") +
                                         int_at(s, "counts", "reads_failed") + int_at(s, "counts", "connect_failures"));
  REQUIRE(s.find("faults")->items.size() == 1);
  const json::Value& f = s.find("faults")->items[0];
  INFO("fault detail: " << f.find("detail")->string << "; effect: " << f.find("effect")->string);
  CHECK(f.find("injected")->boolean);
  // the drill saw the fault itself (the postmaster gone, stopped, the link down), on the writer
  CHECK(f.find("effect_seen")->boolean);
  CHECK(f.find("hit_writer")->boolean);
  CHECK(f.find("target")->string == target);
  CHECK(f.find("recovered")->boolean);
  const std::int64_t downtime = int_at(s, "write_downtime_ms");
  CHECK(downtime > 0);
  CHECK(downtime == int_at(f, "write_downtime_ms"));
  CHECK(int_at(f, "recovered_ms") > int_at(f, "at_ms"));
  CHECK(int_at(f, "recovered_ms") < int_at(s, "elapsed_ms"));
  std::int64_t by_class = 0;
  for (const auto& e : s.find("errors")->items) {
    const std::string phase = e.find("phase")->string;
    INFO("error " << e.find("sqlstate")->string << " " << phase << ": " << e.find("example")->string);
    CHECK((phase == "connect" || phase == "statement" || phase == "commit" || phase == "read"));
    CHECK_FALSE(e.find("sqlstate")->string.empty());
    CHECK_FALSE(e.find("class")->string.empty());
    by_class += int_at(e, "count");
  }
  CHECK(by_class == int_at(s, "errors_total"));
  return downtime;
}

// The primary is cut off or gone and pgkeel promotes the standby: detection, then promotion.
void check_promoted(const json::Value& s, const char* what) {
  const json::Value& f = s.find("faults")->items[0];
  const std::int64_t detect = int_at(f, "time_to_detect_ms");
  const std::int64_t promote = int_at(f, "time_to_promote_ms");
  CHECK(detect >= 0);
  CHECK(promote >= detect);
  std::printf("drill %s: downtime %lld ms, detect %lld ms, promote %lld ms, errors %lld, acknowledged %lld\n", what,
              static_cast<long long>(int_at(s, "write_downtime_ms")), static_cast<long long>(detect),
              static_cast<long long>(promote), static_cast<long long>(int_at(s, "errors_total")),
              static_cast<long long>(int_at(s, "counts", "acknowledged")));
}

// One document: a doctype, one <html> ... </html>, three inline charts, nothing fetched.
void check_html(const std::string& html) {
  CHECK(html.rfind("<!DOCTYPE html>", 0) == 0);
  CHECK(html.find("<html") == html.rfind("<html"));
  CHECK(html.find("</html>") != std::string::npos);
  CHECK(html.find("</html>") + 8 == html.size());
  CHECK(html.find("<svg") != std::string::npos);
  std::size_t open = 0, close = 0;
  for (auto at = html.find("<svg"); at != std::string::npos; at = html.find("<svg", at + 1)) ++open;
  for (auto at = html.find("</svg>"); at != std::string::npos; at = html.find("</svg>", at + 1)) ++close;
  CHECK(open == 3);
  CHECK(open == close);
  CHECK(html.find("http") == std::string::npos);
  CHECK(html.find("<script") == std::string::npos);
  CHECK(html.find("<link") == std::string::npos);
  CHECK(html.find("<img") == std::string::npos);
}

// The node pgkeel routes writes to now, from the console's SHOW ROUTES; "" when none.
std::string writer(const Pgkeel& pk) {
  const PqResult r = pq_exec(pk.console_conninfo(), "SHOW ROUTES");
  std::size_t intent = r.columns.size(), node = r.columns.size();
  for (std::size_t c = 0; c < r.columns.size(); ++c) {
    if (r.columns[c] == "intent") intent = c;
    if (r.columns[c] == "node") node = c;
  }
  for (std::size_t row = 0; row < r.rows.size(); ++row) {
    if (r.value(row, intent) == "read-write") return r.value(row, node);
  }
  return "";
}

// A synchronous drill with one fault on the primary db1 of a fresh cluster: everything
// check_sync_summary asserts, a promotion, and writes on db2 afterwards (not on the old primary,
// should it have come back), and a well-formed report.
// `saturate`: the host is saturated by its own load for the whole run, as in the no-harm test
// (no_harm_test.cc) and with the same timings: a CPU hog on every core and pgbench -S -c 50
// through pgkeel beside the drill's clients.
DrillRun fault_drill(const ClusterOptions& options, const std::string& fault, const std::string& duration,
                     const char* what, bool saturate = false) {
  REQUIRE(fs::exists(drill_binary()));
  Cluster cluster(options);
  if (options.netns) {
    REQUIRE(cluster.node("db1").host != "127.0.0.1");
  }
  PgkeelOptions o = drill_options(cluster);
  if (saturate) o.pool_size = 60;
  Pgkeel pk(cluster, o);
  std::unique_ptr<Background> hog;
  std::unique_ptr<Background> bench;
  if (saturate) {
    REQUIRE(run({"pgbench", "-i", "-q", "-s", "10", cluster.conninfo("db1")}, {}, 300s).ok());
    hog = cpu_hog(pk.dir(), 120s);
    bench = std::make_unique<Background>(
        std::vector<std::string>{"pgbench", "-n", "-S", "-c", "50", "-j", "2", "-T", "60", pk.conninfo()}, pk.dir() / "pgbench.log");
  }
  DrillRun d = run_drill(cluster, pk, fault, duration);
  if (saturate) {
    bench->stop();
    hog->stop();
  }
  CHECK(d.result.exit_code == 0);
  REQUIRE(d.summary);
  check_sync_summary(*d.summary, "db1");
  check_promoted(*d.summary, what);
  CHECK(writer(pk) == "db2");
  check_html(d.html);
  return d;
}

}  // namespace

TEST_CASE("drill: the primary is killed under load; writes follow the promoted standby; no acknowledged commit is lost",
          "[drill]") {
  REQUIRE(fs::exists(drill_binary()));
  Cluster cluster(ClusterOptions{.standbys = 1, .sync = true});
  Pgkeel pk(cluster, drill_options(cluster));
  DrillRun d = run_drill(cluster, pk, "kill@5s");
  CHECK(d.result.exit_code == 0);
  REQUIRE(d.summary);
  const json::Value& s = *d.summary;
  CHECK(s.find("passed")->boolean);
  CHECK(int_at(s, "counts", "acknowledged") > 1000);
  const std::int64_t downtime = check_sync_summary(s, "db1");
  CHECK(downtime < 10'000);
  check_promoted(s, "kill");
  check_html(d.html);
}

TEST_CASE("drill: a switchover under load: no client error, no acknowledged commit lost", "[drill]") {
  REQUIRE(fs::exists(drill_binary()));
  // Session pooling with autocommit statements, and transaction pooling with prepared statements
  // inside explicit transactions (the "SWITCHOVER under -M prepared").
  const bool transaction_pooling = GENERATE(false, true);
  INFO("transaction pooling: " << transaction_pooling);
  Cluster cluster(ClusterOptions{.standbys = 1, .sync = true});
  PgkeelOptions o = drill_options(cluster);
  if (transaction_pooling) o.listeners = {ListenerSpec{.name = "rw", .pool_mode = "transaction"}};
  Pgkeel pk(cluster, o);
  DrillRun d = run_drill(cluster, pk, "switchover@5s", "20s",
                         transaction_pooling ? std::vector<std::string>{"--tx", "--prepared"} : std::vector<std::string>{});
  REQUIRE(d.summary);
  const json::Value& s = *d.summary;
  // Sessions on the old primary move to the new one (README: sessions outlive their server).
  std::string errors;
  for (const auto& e : s.find("errors")->items) {
    errors += e.find("sqlstate")->string + " " + e.find("phase")->string + ": " + e.find("example")->string + "; ";
  }
  INFO("client errors: " << errors);
  CHECK(int_at(s, "errors_total") == 0);
  CHECK(int_at(s, "counts", "unknown") == 0);
  CHECK(int_at(s, "verification", "lost") == 0);
  CHECK(int_at(s, "verification", "duplicates") == 0);
  CHECK(int_at(s, "verification", "found_acknowledged") == int_at(s, "counts", "acknowledged"));
  REQUIRE(s.find("faults")->items.size() == 1);
  CHECK(s.find("faults")->items[0].find("injected")->boolean);
  CHECK(s.find("faults")->items[0].find("effect_seen")->boolean);
  CHECK(int_at(s.find("faults")->items[0], "time_to_promote_ms") >= 0);
  CHECK(int_at(s, "write_downtime_ms") > 0);  // writes pause while the writer changes
  CHECK(d.result.exit_code == 0);
  check_html(d.html);
}

TEST_CASE("drill: every process of the primary is killed under load; writes follow the promoted standby; no "
          "acknowledged commit is lost",
          "[drill][faults][release-only]") {
  fault_drill({.standbys = 1, .sync = true}, "kill@5s:mode=all", "15s", "kill mode=all");
}

TEST_CASE("drill: the primary hangs (SIGSTOP) under load and wakes up later; writes follow the promoted standby and "
          "not the woken primary; no acknowledged commit is lost",
          "[drill][faults]") {
  const DrillRun d = fault_drill({.standbys = 1, .sync = true}, "hang@4s:for=9s", "19s", "hang");
  CHECK(d.summary->find("faults")->items[0].find("detail")->string.find("SIGCONT") != std::string::npos);
}

TEST_CASE("drill: the primary is cut off the network (its namespace's link down) under load and returns later; "
          "writes follow the promoted standby and not the returned primary; no acknowledged commit is lost",
          "[drill][faults][partition]") {
  const DrillRun d = fault_drill({.standbys = 1, .sync = true, .netns = true}, "partition@4s:for=9s", "19s", "partition");
  const std::string detail = d.summary->find("faults")->items[0].find("detail")->string;
  CHECK(detail.find(" down") != std::string::npos);
  CHECK(detail.find(" up") != std::string::npos);
}

TEST_CASE("drill: FAILOVER on the console under load; writes follow the standby it promotes; no acknowledged "
          "commit is lost",
          "[drill][faults][release-only]") {
  fault_drill({.standbys = 1, .sync = true}, "failover@5s", "15s", "failover");
}

TEST_CASE("drill under a saturating load with the fast timings: a kill -9 of the primary is found and failed over; "
          "no acknowledged commit is lost",
          "[drill][load][release-only]") {
  fault_drill({.standbys = 1, .sync = true}, "kill@5s", "15s", "kill under load", true);
}

TEST_CASE("drill under a saturating load with the fast timings: a hang (SIGSTOP) of the primary is found and failed "
          "over; no acknowledged commit is lost",
          "[drill][load][release-only]") {
  const DrillRun d = fault_drill({.standbys = 1, .sync = true}, "hang@5s:for=9s", "20s", "hang under load", true);
  CHECK(d.summary->find("faults")->items[0].find("detail")->string.find("SIGCONT") != std::string::npos);
}

// The season in small (issue 16): the drill's soak draws ten faults from a fixed seed (one of each
// kind this cluster allows: kill, kill mode=all, hang, partition, switchover, failover, lag and
// the synchronous standby's loss), each once the cluster is whole again; pgkeel rejoins every
// node that returns (rejoin = "auto"), and the ledger over the whole run loses nothing.
TEST_CASE("drill soak: ten random faults in a row, the cluster whole again after each, no acknowledged commit lost",
          "[drill][soak][release-only]") {
  REQUIRE(fs::exists(drill_binary()));
  Cluster cluster(ClusterOptions{.standbys = 1, .sync = true, .netns = true});
  PgkeelOptions o = drill_options(cluster);
  // A node that returns is rejoined by itself: a rewind after a failover, none after a switchover.
  const std::string old_rejoin = "\nrejoin_command = \"" + (tools_dir() / "rejoin.sh").string() + " --no-rewind " +
                                 cluster.dir().string() + "\"";
  const auto at = o.failover_extra.find(old_rejoin);
  REQUIRE(at != std::string::npos);
  o.failover_extra.replace(at, old_rejoin.size(),
                           "\nrejoin = \"auto\"\nrejoin_command = \"" + (tools_dir() / "rejoin.sh").string() + " " +
                               cluster.dir().string() + "\"");
  Pgkeel pk(cluster, o);
  const fs::path out = pk.dir() / "soak";
  fs::create_directories(out);
  const RunResult r = run({drill_binary().string(), "--conninfo", pk.conninfo(), "--console", pk.console_conninfo(),
                           "--cluster-env", cluster.env_file().string(), "--sync", "--clients", "4", "--write-ratio", "0.8",
                           "--soak", "10", "--seed", "192", "--soak-kinds",
                           "kill,kill-all,hang,partition,switchover,failover,lag,sync-loss", "--whole-timeout", "120s",
                           "--start-command", (tools_dir() / "cluster.sh").string() + " start " + cluster.dir().string(),
                           "--wait-ready", "60s", "--out", out.string()},
                          {}, 1500s);
  std::printf("pgkeel-drill --soak 10:\n%s\n", r.output.c_str());
  CHECK(r.exit_code == 0);
  const std::string text = read_file(out / "drill.json");
  json::Reader reader(text);
  const std::optional<json::Value> s = reader.parse();
  REQUIRE(s);
  CHECK(s->find("passed")->boolean);
  CHECK(int_at(*s, "verification", "lost") == 0);
  CHECK(int_at(*s, "verification", "duplicates") == 0);
  CHECK(int_at(*s, "verification", "failed_present") == 0);
  CHECK(int_at(*s, "verification", "found_acknowledged") == int_at(*s, "counts", "acknowledged"));
  const json::Value* soak = s->find("soak");
  REQUIRE(soak != nullptr);
  CHECK(int_at(*soak, "ran") == 10);
  CHECK(soak->find("stopped")->string.empty());
  // Every kind asked for ran, and every fault passed.
  std::set<std::string> kinds;
  for (const auto& row : soak->find("table")->items) {
    kinds.insert(row.find("kind")->string);
    CHECK(int_at(row, "passed") == int_at(row, "count"));
  }
  for (const char* k : {"kill", "kill mode=all", "hang", "partition", "switchover", "failover", "lag", "sync-loss"}) {
    INFO("kind " << k);
    CHECK(kinds.count(k) == 1);
  }
  const std::string html = read_file(out / "drill.html");
  CHECK(html.find("<h2>Soak</h2>") != std::string::npos);
  CHECK(html.find("Write downtime per fault") != std::string::npos);
}
