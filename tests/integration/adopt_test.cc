// tests/integration/adopt_test.cc — failover that does no harm (issue 12), tested with what users
// bring: a cluster made by plain `pg_basebackup -R` (standbys stream as `walreceiver`) becomes
// synchronous, switches over and loses nothing to kill -9, and says why whenever synchronous
// replication cannot be honoured; with `ANY 1` of two, a standby that cannot be proved complete is
// not promoted; and epochs never go backwards across restarts (without the state file: never
// below a recorded one).
// Assertions read what clients, the console, the status port and PostgreSQL itself show.
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <cctype>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/integration/fixture.h"

namespace pgkeel::test {
namespace {

std::string lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}
bool contains(const std::string& hay, std::string_view needle) {
  return hay.find(needle) != std::string::npos;
}
bool contains_ci(const std::string& hay, std::string_view needle) {
  return contains(lower(hay), lower(std::string(needle)));
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) out.push_back(line);
  return out;
}

std::string port_of(const Cluster& cluster, std::string_view node) {
  return std::to_string(cluster.port(node));
}

// The port of the server that answers a new session through pgkeel's read-write listener.
std::string served_by(const Pgkeel& pk) {
  return pq_exec(pk.conninfo(), "SELECT current_setting('port')", 5s).scalar();
}

PqResult console(const Pgkeel& pk, const std::string& sql) {
  return pq_exec(pk.console_conninfo(), sql);
}

// A console action: "" when it succeeded, else its error.
std::string act(const Pgkeel& pk, const std::string& sql) {
  const PqResult r = pq_exec(pk.console_conninfo(), sql, 90s);
  return r.ok ? "" : (r.error.empty() ? "failed" : r.error);
}

// A console table as text: a header line, then one line per row, columns joined by '|'.
std::string table_text(const PqResult& r) {
  if (!r.ok) return "ERROR: " + r.error;
  std::string out;
  for (std::size_t c = 0; c < r.columns.size(); ++c) out += (c ? "|" : "") + r.columns[c];
  out += "\n";
  for (const auto& row : r.rows) {
    for (std::size_t c = 0; c < row.size(); ++c)
      out += (c ? "|" : "") + (row[c] ? *row[c] : std::string("NULL"));
    out += "\n";
  }
  return out;
}

// A value by column name, in the first row whose `key_col` equals `key`; "" if none.
std::string cell(const PqResult& r, const std::string& key_col, const std::string& key,
                 const std::string& col) {
  std::size_t kc = r.columns.size(), vc = r.columns.size();
  for (std::size_t i = 0; i < r.columns.size(); ++i) {
    if (r.columns[i] == key_col) kc = i;
    if (r.columns[i] == col) vc = i;
  }
  if (kc == r.columns.size() || vc == r.columns.size()) return "";
  for (std::size_t row = 0; row < r.rows.size(); ++row) {
    if (r.value(row, kc) == key) return r.value(row, vc);
  }
  return "";
}

// Events of one kind, as "node|detail" lines.
std::vector<std::string> events_of(const Pgkeel& pk, std::string_view kind) {
  const PqResult r = console(pk, "SHOW EVENTS");
  std::size_t kc = r.columns.size(), nc = kc, dc = kc;
  for (std::size_t i = 0; i < r.columns.size(); ++i) {
    if (r.columns[i] == "kind") kc = i;
    if (r.columns[i] == "node") nc = i;
    if (r.columns[i] == "detail") dc = i;
  }
  std::vector<std::string> out;
  for (std::size_t row = 0; row < r.rows.size(); ++row) {
    if (r.value(row, kc) == kind) out.push_back(r.value(row, nc) + "|" + r.value(row, dc));
  }
  return out;
}

// psql on the console, as a DBA runs it: rows and NOTICEs (stderr is merged into the output).
std::string console_psql(const Pgkeel& pk, const std::string& sql) {
  return run({"psql", "-X", "-A", "-F", "|", "-h", "127.0.0.1", "-p",
              std::to_string(pk.console_port()), "-U", std::string(kPgkeelUser), "-d", "pgkeel",
              "-c", sql},
             {{"PGPASSWORD", std::string(kPgkeelPassword)}, {"PGCONNECT_TIMEOUT", "5"}})
      .output;
}

struct HttpAnswer {
  int code = 0;
  std::string body;
};

// GET on the status port (Python's urllib, so a 503 is an answer too).
HttpAnswer http_get(const Pgkeel& pk, const std::string& path) {
  const RunResult r = run(
      {"python3", "-c",
       "import sys, urllib.request, urllib.error\n"
       "try:\n"
       "    r = urllib.request.urlopen(sys.argv[1], timeout=5); code, body = r.status, r.read()\n"
       "except urllib.error.HTTPError as e:\n"
       "    code, body = e.code, e.read()\n"
       "sys.stdout.write(str(code) + '\\n'); sys.stdout.flush(); sys.stdout.buffer.write(body)\n",
       pk.status_url() + path},
      {}, 20s);
  HttpAnswer a;
  const auto nl = r.output.find('\n');
  if (!r.ok() || nl == std::string::npos) {
    a.body = r.output;
    return a;
  }
  a.code = std::atoi(r.output.substr(0, nl).c_str());
  a.body = r.output.substr(nl + 1);
  return a;
}

// What /api/status gives as reasons, one "where=text" line each: its top-level strings (less
// version, time, writer name, mode and the failover plan, which speaks of the next failover) and
// every node's columns that are not plain state (less name, address, role, up/down, numbers and
// the bare sync_state words). Plus "degraded=true|false". A reason about a node is either in that
// node's row ("node.db2.col=...") or names it.
std::string status_reasons(const Pgkeel& pk) {
  const RunResult r = run(
      {"python3", "-c",
       "import json, sys, urllib.request\n"
       "d = json.load(urllib.request.urlopen(sys.argv[1], timeout=5))\n"
       "print('degraded=' + json.dumps(d.get('degraded')))\n"
       "for k, v in d.items():\n"
       "    if isinstance(v, str) and k not in ('version', 'taken', 'writer', 'sync_mode', "
       "'plan_summary'):\n"
       "        print('top.' + k + '=' + v.replace('\\n', ' '))\n"
       "state = {'name', 'address', 'role', 'state', 'fenced', 'enabled', 'system_identifier', "
       "'timeline', 'lsn',\n"
       "         'lag_bytes', 'lag_seconds', 'last_probe', 'probe_ms'}\n"
       "for n in d.get('nodes', []):\n"
       "    for k, v in n.items():\n"
       "        if k in state or v is None or str(v) in ('', 'sync', 'quorum', 'async', "
       "'potential'):\n"
       "            continue\n"
       "        print('node.' + str(n.get('name')) + '.' + k + '=' + str(v).replace('\\n', ' '))\n",
       pk.status_url() + "/api/status"},
      {}, 20s);
  return r.ok() ? r.output : "ERROR: " + r.output;
}

// A line of `text` that mentions `node` and one of `words` (case-insensitive); "" if none.
std::string line_about(const std::string& text, std::string_view node,
                       std::initializer_list<std::string_view> words) {
  for (const std::string& line : lines_of(text)) {
    if (!contains_ci(line, node)) continue;
    for (auto w : words) {
      if (contains_ci(line, w)) return line;
    }
  }
  return "";
}

// ---- the primary's own view of replication
// --------------------------------------------------------

struct Replica {
  std::string application_name, state, sync_state;
};

std::vector<Replica> replicas(const Cluster& cluster, std::string_view primary) {
  std::vector<Replica> out;
  for (const std::string& line : lines_of(cluster.psql_as_postgres(
           primary,
           "SELECT application_name, state, sync_state FROM pg_stat_replication ORDER BY pid"))) {
    Replica r;
    std::istringstream in(line);
    std::getline(in, r.application_name, '|');
    std::getline(in, r.state, '|');
    std::getline(in, r.sync_state, '|');
    out.push_back(r);
  }
  return out;
}

std::string describe(const std::vector<Replica>& rs) {
  std::string out;
  for (const auto& r : rs) out += r.application_name + "/" + r.state + "/" + r.sync_state + " ";
  return out.empty() ? "(no row in pg_stat_replication)" : out;
}

std::string sync_standby_names(const Cluster& cluster, std::string_view primary) {
  return cluster.psql_as_postgres(primary, "SHOW synchronous_standby_names");
}

// The standby names in a synchronous_standby_names value: 'ANY 1 ("a", b)', 'FIRST 2 (a, b)',
// '1 (a)', 'a, b' or '*'.
std::vector<std::string> names_in(std::string value) {
  const auto open = value.find('(');
  if (open != std::string::npos) value = value.substr(open + 1, value.rfind(')') - open - 1);
  std::vector<std::string> out;
  std::istringstream in(value);
  for (std::string name; std::getline(in, name, ',');) {
    name.erase(0, name.find_first_not_of(" \t"));
    name.erase(name.find_last_not_of(" \t") + 1);
    if (name.size() >= 2 && name.front() == '"' && name.back() == '"')
      name = name.substr(1, name.size() - 2);
    if (!name.empty()) out.push_back(name);
  }
  return out;
}

// "X/Y" -> a WAL position; 0 when it does not parse.
std::uint64_t parse_lsn(const std::string& text) {
  const auto slash = text.find('/');
  if (slash == std::string::npos) return 0;
  try {
    return (std::stoull(text.substr(0, slash), nullptr, 16) << 32) |
           std::stoull(text.substr(slash + 1), nullptr, 16);
  } catch (...) {
    return 0;
  }
}

// Waits until the primary itself reports each of `standbys` synchronous — as many rows in
// pg_stat_replication, every one streaming with sync_state sync or quorum, and a non-empty
// synchronous_standby_names — and SHOW NODES shows sync or quorum for each of them. `seen` gets
// what was last observed.
bool await_synchronous(const Cluster& cluster, const Pgkeel& pk, std::string_view primary,
                       const std::vector<std::string>& standbys, std::string& seen,
                       std::chrono::milliseconds deadline = 20s) {
  return eventually(
      deadline,
      [&] {
        const auto rs = replicas(cluster, primary);
        const std::string names = sync_standby_names(cluster, primary);
        const PqResult nodes = console(pk, "SHOW NODES");
        seen = "pg_stat_replication on " + std::string(primary) + ": " + describe(rs) +
               "\nsynchronous_standby_names = '" + names + "'\nSHOW NODES:\n" + table_text(nodes);
        std::size_t sync = 0;
        for (const auto& r : rs) {
          if (r.state == "streaming" && (r.sync_state == "sync" || r.sync_state == "quorum"))
            ++sync;
        }
        if (sync != standbys.size() || rs.size() != standbys.size() || names.empty()) return false;
        for (const auto& s : standbys) {
          const std::string st = cell(nodes, "name", s, "sync_state");
          if (st != "sync" && st != "quorum") return false;
        }
        return true;
      },
      250ms);
}

// A statement through pgkeel on a thread of its own, so the test can watch it wait.
class Background {
 public:
  Background(std::string conninfo, std::string sql)
      : thread_([this, conninfo = std::move(conninfo), sql = std::move(sql)] {
          result_ = pq_exec(conninfo, sql, 90s);
          done_ = true;
        }) {}
  ~Background() { join(); }
  Background(const Background&) = delete;
  Background& operator=(const Background&) = delete;
  bool done() const { return done_; }
  const PqResult& result() {
    join();
    return result_;
  }
  void join() {
    if (thread_.joinable()) thread_.join();
  }

 private:
  std::atomic<bool> done_{false};
  PqResult result_;
  std::thread thread_;
};

// The test's own cleanup for a commit stuck waiting on a synchronous standby: clear the setting on
// the primary directly, which releases every waiter (pgkeel may set it again afterwards).
void release_sync_waiters(const Cluster& cluster, std::string_view primary) {
  cluster.psql_as_postgres(primary, "ALTER SYSTEM SET synchronous_standby_names = ''");
  cluster.psql_as_postgres(primary, "SELECT pg_reload_conf()");
}

PgkeelOptions adopt_options(const Cluster& cluster) {
  PgkeelOptions o;
  o.console = true;
  o.status = true;
  o.health_extra = "probe_interval = \"250ms\"\nprobe_timeout = \"500ms\"";
  o.failover_extra =
      "hold_timeout = \"15s\"\nswitchover_timeout = \"30s\"\nswitchover_drain_timeout = \"2s\"\n" +
      switchover_commands(cluster);
  return o;
}

void create_table(const Cluster& cluster, const std::string& table) {
  cluster.psql_as_postgres("db1",
                           "CREATE TABLE " + table +
                               " (id bigint NOT NULL, note text); GRANT ALL ON " + table +
                               " TO app",
                           "app");
}

// kill -9 of the primary's postmaster under four pgkeel-ledger writers through pgkeel; then, on
// whichever standby took over, every acknowledged commit must be there once.
void kill_primary_under_ledger(const Cluster& cluster, const Pgkeel& pk,
                               const std::vector<std::string>& standbys) {
  const std::string ledger = (fs::path(PGKEEL_BINARY_DIR) / "pgkeel-ledger").string();
  REQUIRE(fs::exists(ledger));
  const std::string conninfo = pk.conninfo();
  const std::string out = (pk.dir() / "ledger.json").string();
  const RunResult setup = run({ledger, "setup", "--conninfo", conninfo});
  INFO(setup.output);
  REQUIRE(setup.ok());
  RunResult load;
  std::thread writer([&] {
    load = run(
        {ledger, "run", "--conninfo", conninfo, "--clients", "4", "--duration", "6", "--out", out},
        {}, 90s);
  });
  const bool loaded = eventually(15s, [&] {
    return std::stol(cluster.psql_as_postgres("db1", "SELECT count(*) FROM pgkeel_ledger", "app")) >
           1000;
  });
  if (loaded) REQUIRE(::kill(cluster.pid("db1"), SIGKILL) == 0);
  writer.join();
  REQUIRE(loaded);
  INFO(load.output);
  CHECK(load.ok());
  std::string now;
  REQUIRE(eventually(20s, [&] {
    now = served_by(pk);
    for (const auto& s : standbys) {
      if (now == port_of(cluster, s)) return true;
    }
    return false;
  }));
  for (const std::string& e : events_of(pk, "candidate"))
    std::printf("adopt: candidate event: %s\n", e.c_str());
  const RunResult verify = run({ledger, "verify", "--conninfo", conninfo, "--in", out});
  INFO(verify.output);
  const auto lost = verify.output.find("lost (acknowledged, missing):");
  std::printf("adopt: kill -9 under pgkeel-ledger, new primary on port %s: %s\n", now.c_str(),
              lost == std::string::npos
                  ? "(no verdict)"
                  : verify.output.substr(lost, verify.output.find('\n', lost) - lost).c_str());
  CHECK(verify.ok());
  CHECK(contains(verify.output, "lost (acknowledged, missing): 0"));
  CHECK(contains(verify.output, "duplicated ids:               0"));
}

}  // namespace

// ---- an adopted cluster ------------------------------------------------------------------------

TEST_CASE(
    "an adopted cluster (pg_basebackup -R: the standby streams as walreceiver) becomes synchronous "
    "and switches over",
    "[adopt]") {
  Cluster cluster(ClusterOptions{.standbys = 1, .basebackup = true});
  REQUIRE(describe(replicas(cluster, "db1")) ==
          "walreceiver/streaming/async ");  // what users bring
  Pgkeel pk(cluster, adopt_options(cluster));
  REQUIRE(eventually(10s, [&] { return served_by(pk) == port_of(cluster, "db1"); }));

  // Within seconds the primary itself reports the standby synchronous, and pgkeel says so.
  std::string seen;
  const bool synchronous = await_synchronous(cluster, pk, "db1", {"db2"}, seen);
  {
    INFO(seen);
    CHECK(synchronous);
  }
  std::string status;
  const bool not_degraded = eventually(10s, [&] {
    status = status_reasons(pk);
    return contains(status, "degraded=false");
  });
  {
    INFO("/api/status reasons:\n" << status);
    CHECK(not_degraded);
  }
  // Matching (or naming) the standby is an event that says what it streamed as.
  const std::string events = table_text(console(pk, "SHOW EVENTS"));
  {
    INFO(events);
    CHECK_FALSE(line_about(events, "db2", {"walreceiver", "application_name"}).empty());
  }

  // A planned switchover to it works.
  const std::string answer = act(pk, "SWITCHOVER TO db2");
  INFO(table_text(console(pk, "SHOW EVENTS")));
  CHECK(answer == "");
  CHECK(served_by(pk) == port_of(cluster, "db2"));
}

TEST_CASE(
    "an adopted cluster with one standby: kill -9 of the primary under a ledger writer loses no "
    "acknowledged commit",
    "[adopt][kill]") {
  Cluster cluster(ClusterOptions{.standbys = 1, .basebackup = true});
  Pgkeel pk(cluster, adopt_options(cluster));
  REQUIRE(eventually(10s, [&] { return served_by(pk) == port_of(cluster, "db1"); }));
  std::string seen;
  const bool synchronous = await_synchronous(cluster, pk, "db1", {"db2"}, seen);
  {
    INFO(seen);
    CHECK(synchronous);
  }
  kill_primary_under_ledger(cluster, pk, {"db2"});
}

TEST_CASE(
    "an adopted cluster with two standbys: both synchronous; kill -9 of the primary loses nothing",
    "[adopt][kill][release-only]") {
  Cluster cluster(ClusterOptions{.standbys = 2, .basebackup = true});
  Pgkeel pk(cluster, adopt_options(cluster));
  REQUIRE(eventually(10s, [&] { return served_by(pk) == port_of(cluster, "db1"); }));
  std::string seen;
  const bool synchronous = await_synchronous(cluster, pk, "db1", {"db2", "db3"}, seen);
  {
    INFO(seen);
    CHECK(synchronous);
  }
  kill_primary_under_ledger(cluster, pk, {"db2", "db3"});
}

TEST_CASE(
    "an adopted cluster in strict mode never waits for a name no standby uses and says why commits "
    "wait",
    "[adopt][strict]") {
  Cluster cluster(ClusterOptions{.standbys = 1, .basebackup = true});
  create_table(cluster, "strict_rows");
  PgkeelOptions o = adopt_options(cluster);
  o.failover_extra += "\nsynchronous_mode = \"strict\"";
  Pgkeel pk(cluster, o);
  REQUIRE(eventually(10s, [&] { return served_by(pk) == port_of(cluster, "db1"); }));

  // Every application_name the standby streamed under, as the primary showed it.
  std::set<std::string> used;
  auto look = [&] {
    for (const auto& r : replicas(cluster, "db1")) {
      if (r.state == "streaming") used.insert(r.application_name);
    }
    return sync_standby_names(cluster, "db1");
  };
  auto only_used_names = [&](const std::string& value) {
    for (const auto& n : names_in(value)) {
      if (n != "*" && used.count(n) == 0) return false;
    }
    return true;
  };
  std::string names;
  const bool named = eventually(
      20s,
      [&] {
        names = look();
        return !names_in(names).empty() && only_used_names(names);
      },
      250ms);
  std::string used_text;
  for (const auto& u : used) used_text += u + " ";
  {
    INFO("synchronous_standby_names = '" << names
                                         << "'; names the standby streamed as: " << used_text);
    CHECK(named);
  }
  // While the standby streams, a commit goes through.
  {
    Background commit(pk.conninfo(), "INSERT INTO strict_rows VALUES (1, 'standby streaming')");
    const bool committed = eventually(20s, [&] { return commit.done(); });
    const std::string state = "synchronous_standby_names = '" + sync_standby_names(cluster, "db1") +
                              "'; " + describe(replicas(cluster, "db1"));
    if (!committed) {
      release_sync_waiters(cluster, "db1");
      // pgkeel sets its value again before the test goes on, so what follows sees pgkeel's choice.
      eventually(
          10s, [&] { return !sync_standby_names(cluster, "db1").empty(); }, 250ms);
    }
    INFO("while the commit waited: " << state);
    CHECK(committed);
    CHECK(commit.result().ok);
  }

  // The standby stops: commits wait (strict), for a name the standby used, and pgkeel says why.
  cluster.stop_node("db2", "immediate");
  Background waiting(pk.conninfo(), "INSERT INTO strict_rows VALUES (2, 'standby stopped')");
  CHECK(eventually(20s, [&] {
    return cluster.psql_as_postgres(
               "db1", "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'") != "0";
  }));
  names = sync_standby_names(cluster, "db1");
  {
    INFO("synchronous_standby_names = '" << names
                                         << "'; names the standby streamed as: " << used_text);
    CHECK(only_used_names(names));
  }
  HttpAnswer health;
  const bool health_says = eventually(
      15s,
      [&] {
        health = http_get(pk, "/health");
        return contains_ci(health.body, "db2") && contains_ci(health.body, "sync");
      },
      250ms);
  {
    INFO("/health: " << health.code << " " << health.body);
    CHECK(health_says);
  }
  std::string status;
  const bool status_says = eventually(
      15s,
      [&] {
        status = status_reasons(pk);
        return !line_about(status, "db2", {"sync"}).empty();
      },
      250ms);
  {
    INFO("/api/status reasons:\n"
         << status << "SHOW NODES:\n"
         << table_text(console(pk, "SHOW NODES")));
    CHECK(status_says);
  }

  // Cleanup: the standby back, and the waiting commit released whatever happens.
  cluster.start_node("db2");
  if (!eventually(20s, [&] { return waiting.done(); })) release_sync_waiters(cluster, "db1");
  waiting.join();
}

TEST_CASE(
    "an adopted cluster in on mode: when its standby stops commits flow and every surface says it "
    "is degraded and why",
    "[adopt][degraded]") {
  Cluster cluster(ClusterOptions{.standbys = 1, .basebackup = true});
  create_table(cluster, "degraded_rows");
  Pgkeel pk(cluster, adopt_options(cluster));
  REQUIRE(eventually(10s, [&] { return served_by(pk) == port_of(cluster, "db1"); }));
  std::string seen;
  const bool synchronous = await_synchronous(cluster, pk, "db1", {"db2"}, seen);
  {
    INFO(seen);
    CHECK(synchronous);
  }

  cluster.stop_node("db2", "immediate");
  {
    Background commit(pk.conninfo(), "INSERT INTO degraded_rows VALUES (1, 'standby stopped')");
    const bool committed = eventually(20s, [&] { return commit.done(); });
    if (!committed) release_sync_waiters(cluster, "db1");
    CHECK(committed);
    CHECK(commit.result().ok);
  }
  const bool event = eventually(
      20s, [&] { return !events_of(pk, "degraded").empty(); }, 250ms);
  {
    INFO(table_text(console(pk, "SHOW EVENTS")));
    CHECK(event);
  }
  std::string status;
  const bool status_says = eventually(
      15s,
      [&] {
        status = status_reasons(pk);
        return contains(status, "degraded=true") &&
               !line_about(status, "db2", {"sync", "degraded"}).empty();
      },
      250ms);
  {
    INFO("/api/status reasons:\n" << status);
    CHECK(status_says);
  }
  HttpAnswer health;
  const bool health_says = eventually(
      15s,
      [&] {
        health = http_get(pk, "/health");
        return contains_ci(health.body, "db2") &&
               (contains_ci(health.body, "sync") || contains_ci(health.body, "degraded"));
      },
      250ms);
  INFO("/health: " << health.code << " " << health.body);
  CHECK(health_says);
}

// ---- two standbys, ANY 1 -----------------------------------------------------------------------

TEST_CASE(
    "ANY 1 of two: the primary and the standby that acknowledged are lost together; the other is "
    "not promoted",
    "[quorum][release-only]") {
  Cluster cluster(ClusterOptions{.standbys = 2, .sync = true});
  create_table(cluster, "acked");
  PgkeelOptions o;
  o.console = true;
  o.health_extra = "probe_interval = \"250ms\"\nprobe_timeout = \"500ms\"";
  o.failover_extra = "hold_timeout = \"2s\"";
  Pgkeel pk(cluster, o);
  REQUIRE(eventually(10s, [&] { return served_by(pk) == port_of(cluster, "db1"); }));

  // db3 keeps its replication connection but receives nothing: its walsender on db1 is stopped,
  // and db3's receiver (timeout 0, applied by a restart) never gives up on it. The primary keeps
  // listing db3 as streaming and quorum; db2 alone acknowledges what follows.
  cluster.psql_as_postgres("db3", "ALTER SYSTEM SET wal_receiver_timeout = 0");
  cluster.stop_node("db3", "fast");
  cluster.start_node("db3");
  std::string seen;
  {
    const bool synchronous = await_synchronous(cluster, pk, "db1", {"db2", "db3"}, seen);
    INFO(seen);
    REQUIRE(synchronous);
  }
  const std::string walsender = cluster.psql_as_postgres(
      "db1", "SELECT pid FROM pg_stat_replication WHERE application_name = 'db3'");
  REQUIRE_FALSE(walsender.empty());
  const pid_t stopped = static_cast<pid_t>(std::stol(walsender));
  REQUIRE(::kill(stopped, SIGSTOP) == 0);
  struct Resume {  // whatever happens, nothing stays stopped
    pid_t pid;
    ~Resume() {
      if (pid > 0) ::kill(pid, SIGCONT);
    }
  } resume{stopped};

  constexpr int kRows = 50;
  {
    PqSession writer(pk.conninfo());
    REQUIRE(writer.connected());
    for (int i = 1; i <= kRows; ++i) {
      const PqResult r = writer.exec("INSERT INTO acked VALUES (" + std::to_string(i) +
                                     ", 'acknowledged by db2')");
      INFO(r.error);
      REQUIRE(r.ok);
    }
  }
  const std::uint64_t written =
      parse_lsn(cluster.psql_as_postgres("db1", "SELECT pg_current_wal_lsn()"));
  // The premise, as PostgreSQL shows it: db2 has every acknowledged row, db3 none, and the
  // primary still lists db3 as a streaming quorum standby, through the same (stopped) walsender.
  REQUIRE(eventually(10s, [&] {
    return cluster.psql_as_postgres("db2", "SELECT count(*) FROM acked", "app") ==
           std::to_string(kRows);
  }));
  REQUIRE(cluster.psql_as_postgres("db3", "SELECT count(*) FROM acked", "app") == "0");
  REQUIRE(cluster.psql_as_postgres(
              "db1",
              "SELECT pid || ' ' || state || ' ' || sync_state FROM pg_stat_replication "
              "WHERE application_name = 'db3'") == walsender + " streaming quorum");
  // pgkeel has probed the primary after the writes, with db3 still shown as quorum.
  REQUIRE(eventually(
      10s,
      [&] {
        const PqResult nodes = console(pk, "SHOW NODES");
        return parse_lsn(cell(nodes, "name", "db1", "lsn")) >= written &&
               cell(nodes, "name", "db3", "sync_state") == "quorum";
      },
      250ms));

  // The primary and the standby that acknowledged are lost together.
  REQUIRE(::kill(cluster.pid("db1"), SIGKILL) == 0);
  REQUIRE(::kill(cluster.pid("db2"), SIGKILL) == 0);
  REQUIRE(::kill(stopped, SIGKILL) ==
          0);  // db1's walsender to db3: part of db1, it must send nothing more
  resume.pid = 0;

  // pgkeel decides: either it promotes, or it refuses saying why.
  std::string plan;
  const bool decided = eventually(
      30s,
      [&] {
        plan = console_psql(pk, "SHOW FAILOVER PLAN");
        return !events_of(pk, "promotion").empty() || !events_of(pk, "failover_refused").empty() ||
               !line_about(plan, "db3", {"quorum", "heard"}).empty();
      },
      250ms);
  INFO("SHOW FAILOVER PLAN:\n" << plan);
  INFO(table_text(console(pk, "SHOW EVENTS")));
  CHECK(decided);
  // Several more probe rounds and failover attempts: still no promotion.
  const bool promoted = eventually(
      10s, [&] { return !events_of(pk, "promotion").empty(); }, 250ms);
  const std::string on_db3 = cluster.psql_as_postgres("db3", "SELECT count(*) FROM acked", "app");
  std::printf("quorum: automatic promotion of db3: %s; acknowledged rows on db3: %s of %d\n",
              promoted ? "yes" : "no", on_db3.c_str(), kRows);
  CHECK_FALSE(promoted);
  CHECK(cluster.psql_as_postgres("db3", "SELECT pg_is_in_recovery()") == "t");
  const PqResult write =
      pq_exec(pk.conninfo(), "INSERT INTO acked VALUES (0, 'after the loss')", 20s);
  CHECK_FALSE(write.ok);
  CHECK(write.sqlstate == "57P03");
  plan = console_psql(pk, "SHOW FAILOVER PLAN");
  INFO("SHOW FAILOVER PLAN now:\n" << plan);
  CHECK_FALSE(line_about(plan, "db3", {"quorum", "heard"}).empty());

  // The DBA may still force it, knowing what it lacks: record what happens.
  const std::string forced = act(pk, "FAILOVER TO db3 FORCE");
  std::printf("quorum: FAILOVER TO db3 FORCE: %s\n", forced.empty() ? "done" : forced.c_str());
  if (forced.empty()) {
    CHECK(served_by(pk) == port_of(cluster, "db3"));
    std::printf(
        "quorum: after FORCE, acknowledged rows on db3: %s of %d\n",
        cluster.psql_as_postgres("db3", "SELECT count(*) FROM acked WHERE id > 0", "app").c_str(),
        kRows);
  }
}

// ---- epochs ------------------------------------------------------------------------------------

namespace {

long route_epoch(const Pgkeel& pk) {
  const std::string e = cell(console(pk, "SHOW ROUTES"), "listener", "rw", "epoch");
  return e.empty() ? -1 : std::stol(e);
}

std::string history(const Cluster& cluster, std::string_view node) {
  return cluster.psql_as_postgres(node,
                                  "SELECT string_agg(epoch || ':' || node, ' ' ORDER BY "
                                  "recorded_at) FROM pgkeel.primary_history",
                                  "postgres");
}

}  // namespace

TEST_CASE(
    "two failovers across three restarts then the state file lost: writes go to the latest primary; "
    "epochs only grow",
    "[epoch][release-only]") {
  Cluster cluster(ClusterOptions{.standbys = 1});
  create_table(cluster, "epoch_rows");
  PgkeelOptions o;
  o.console = true;
  o.health_extra = "probe_interval = \"250ms\"\nprobe_timeout = \"500ms\"";
  o.failover_extra = "hold_timeout = \"15s\"";
  Pgkeel pk(cluster, o);
  std::vector<long> epochs;  // every routing epoch seen, in order
  auto note_epoch = [&](const char* when) {
    epochs.push_back(route_epoch(pk));
    std::printf("epoch: %s: SHOW ROUTES epoch %ld\n", when, epochs.back());
  };
  REQUIRE(eventually(10s, [&] { return served_by(pk) == port_of(cluster, "db1"); }));
  note_epoch("first start");

  REQUIRE(act(pk, "FAILOVER TO db2") == "");
  REQUIRE(eventually(10s, [&] { return served_by(pk) == port_of(cluster, "db2"); }));
  note_epoch("after FAILOVER TO db2");

  // db1 follows db2 (rewound), pgkeel restarts, and once db1 streams it takes over again. The
  // CHECKPOINT first: until db2's end-of-recovery checkpoint is done its control file still shows
  // timeline 1, and pg_rewind then finds "no rewind required" for a node that cannot follow.
  cluster.psql_as_postgres("db2", "CHECKPOINT");
  const RunResult rejoin = run({(cluster_script().parent_path() / "rejoin.sh").string(),
                                cluster.dir().string(), "db1", "db2"},
                               {}, 180s);
  cluster.refresh();
  INFO(rejoin.output);
  REQUIRE(rejoin.ok());
  // It really follows db2: it has replayed db2's own record of its promotion.
  REQUIRE(eventually(15s, [&] { return contains(history(cluster, "db1"), ":db2"); }));
  pk.restart();
  REQUIRE(eventually(15s, [&] { return served_by(pk) == port_of(cluster, "db2"); }));
  note_epoch("second start");
  REQUIRE(eventually(15s, [&] {
    const PqResult nodes = console(pk, "SHOW NODES");
    return cell(nodes, "name", "db1", "role") == "standby" &&
           cell(nodes, "name", "db1", "state") == "up";
  }));
  REQUIRE(act(pk, "FAILOVER TO db1") == "");
  REQUIRE(eventually(10s, [&] { return served_by(pk) == port_of(cluster, "db1"); }));
  note_epoch("after FAILOVER TO db1");
  const PqResult row = pq_exec(
      pk.conninfo(),
      "INSERT INTO epoch_rows VALUES (1, 'written on db1') RETURNING current_setting('port')");
  INFO(row.error);
  REQUIRE(row.scalar() == port_of(cluster, "db1"));
  note_epoch("after the write");
  // Two tables that name no new primary, so that the last epoch handed out is in no record.
  REQUIRE(act(pk, "DISABLE db2") == "");
  REQUIRE(act(pk, "ENABLE db2") == "");
  note_epoch("after DISABLE and ENABLE db2");
  const std::string history_before =
      "db1: " + history(cluster, "db1") + "; db2: " + history(cluster, "db2");
  std::printf("epoch: pgkeel.primary_history before the restarts: %s\n", history_before.c_str());
  long recorded = -1;  // the highest epoch in the cluster's records
  for (const char* n : {"db1", "db2"}) {
    const std::string max =
        cluster.psql_as_postgres(n, "SELECT coalesce(max(epoch), -1) FROM pgkeel.primary_history");
    recorded = std::max(recorded, std::stol(max));
  }
  const long highest = *std::max_element(epochs.begin(), epochs.end());
  INFO("the cluster's highest record epoch: " << recorded);
  CHECK(highest > recorded);

  // A restart with the state file starts above every epoch the last run handed out.
  pk.restart();
  REQUIRE(eventually(15s, [&] { return served_by(pk) == port_of(cluster, "db1"); }));
  const long restarted = route_epoch(pk);
  std::printf("epoch: third start: SHOW ROUTES epoch %ld; the highest seen before %ld\n",
              restarted, highest);
  CHECK(restarted > highest);

  // The state file is lost; the fourth start must find the latest primary in the cluster, and
  // start above every epoch recorded there (the epochs between records were in the lost file).
  pk.stop();
  fs::remove(pk.dir() / "pgkeel.state");
  pk.start();
  std::string served;
  const bool to_db1 = eventually(15s, [&] {
    served = served_by(pk);
    return served == port_of(cluster, "db1");
  });
  INFO(history_before);
  INFO(table_text(console(pk, "SHOW EVENTS")));
  INFO(table_text(console(pk, "SHOW ROUTES")));
  std::printf("epoch: fourth start without the state file: writes go to port %s (db1 %s, db2 %s)\n",
              served.c_str(), port_of(cluster, "db1").c_str(), port_of(cluster, "db2").c_str());
  CHECK(to_db1);
  CHECK(pq_exec(pk.conninfo(), "SELECT count(*) FROM epoch_rows WHERE id = 1").scalar() == "1");
  const long after = route_epoch(pk);
  std::printf("epoch: fourth start: SHOW ROUTES epoch %ld; the highest recorded %ld\n", after,
              recorded);
  CHECK(after > recorded);
  // db1's record of primaries, oldest first, has strictly growing epochs.
  const std::string db1_history = history(cluster, "db1");
  INFO("db1's pgkeel.primary_history: " << db1_history);
  std::istringstream in(db1_history);
  long last = -1;
  int entries = 0;
  for (std::string entry; in >> entry; ++entries) {
    const long e = std::stol(entry.substr(0, entry.find(':')));
    CHECK(e > last);
    last = e;
  }
  CHECK(entries >= 3);
}

}  // namespace pgkeel::test
