// tests/integration/reroute_test.cc — transparent rerouting (issue 6) seen by real clients:
// pgbench, pgJDBC and asyncpg with prepared statements from many connections through a
// transaction-mode listener (no statement of one client may meet another's), no 25006 through
// pgkeel across switchovers and failovers, and a HikariCP pool that lives through a kill -9 of
// the primary. Until transaction pooling lands `pool_mode = "transaction"` behaves as session
// mode, and every test but the HikariCP one holds already; that one waits for session resume.
#include <signal.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>

#include "tests/integration/fixture.h"

namespace pgkeel::test {
namespace {

bool contains(const std::string& hay, std::string_view needle) { return hay.find(needle) != std::string::npos; }

// A read-write listener "rw" in transaction pooling mode.
PgkeelOptions transaction_mode(PgkeelOptions o = {}) {
  o.listeners = {ListenerSpec{.pool_mode = "transaction"}};
  return o;
}

// Read-write listeners in both pool modes: "session" and "transaction", named after their mode.
PgkeelOptions both_modes() {
  PgkeelOptions o;
  o.listeners = {ListenerSpec{.name = "session", .pool_mode = "session"},
                 ListenerSpec{.name = "transaction", .pool_mode = "transaction"}};
  return o;
}

const std::string kPgjdbcJar = "/usr/share/java/postgresql.jar";
const std::string kHikariClasspath =
    "/usr/share/java/HikariCP.jar:/usr/share/java/slf4j-api.jar:/usr/share/java/slf4j-nop.jar:" + kPgjdbcJar;

// Compiles tests/jdbc/<program>.java into dir/classes; returns the class path to run it with.
std::string compile_java(const fs::path& dir, const std::string& program, const std::string& classpath) {
  const fs::path classes = dir / "classes";
  fs::create_directories(classes);
  const RunResult c = run({"javac", "-cp", classpath, "-d", classes.string(),
                           (fs::path(PGKEEL_SOURCE_DIR) / "tests" / "jdbc" / (program + ".java")).string()},
                          {}, 180s);
  INFO(c.output);
  REQUIRE(c.ok());
  return classes.string() + ":" + classpath;
}

// The messages a pooler that mixes up prepared statements makes PostgreSQL (or pgkeel) send.
void check_no_statement_mixup(const std::string& output) {
  CHECK_FALSE(contains(output, "does not exist"));
  CHECK_FALSE(contains(output, "already exists"));
}

// Runs a client program (argv for a listener's port) through both_modes()'s listeners: it must
// exit 0 and say " 0 wrong results, 0 errors" in the line starting with `summary`, printed here.
void run_in_both_modes(const Pgkeel& pk, const std::string& summary,
                       const std::function<std::vector<std::string>(int port)>& argv) {
  for (const std::string pool_mode : {"session", "transaction"}) {
    const RunResult r = run(argv(pk.port(pool_mode)), {}, 150s);
    INFO("pool_mode " << pool_mode << "\n" << r.output);
    CHECK(r.ok());
    check_no_statement_mixup(r.output);
    const auto at = r.output.find(summary);
    REQUIRE(at != std::string::npos);
    const std::string line = r.output.substr(at, r.output.find('\n', at) - at);
    CHECK(contains(line, " 0 wrong results, 0 errors"));
    std::printf("reroute (%s mode): %s\n", pool_mode.c_str(), line.c_str());
  }
}

// One value of HikariFailover's summary (one key per line): the text after `"key": ` up to the
// comma that ends the line; "" when the key is missing.
std::string summary_value(const std::string& json, const std::string& key) {
  const std::string needle = "\"" + key + "\": ";
  const std::size_t at = json.find(needle);
  if (at == std::string::npos) {
    return "";
  }
  const std::size_t from = at + needle.size();
  std::string v = json.substr(from, json.find('\n', from) - from);
  if (!v.empty() && v.back() == ',') {
    v.pop_back();
  }
  return v;
}

long summary_number(const std::string& json, const std::string& key) {
  const std::string v = summary_value(json, key);
  return v.empty() || v == "null" ? -1 : std::stol(v);
}

// A flat JSON object of counts, e.g. {"commit 08007": 1, "transaction 40001": 2}.
std::map<std::string, long> summary_counts(const std::string& json, const std::string& key) {
  std::map<std::string, long> counts;
  const std::string v = summary_value(json, key);
  std::size_t pos = 0;
  while ((pos = v.find('"', pos)) != std::string::npos) {
    const std::size_t end = v.find('"', pos + 1);
    const std::size_t colon = v.find(':', end);
    if (end == std::string::npos || colon == std::string::npos) {
      break;
    }
    counts[v.substr(pos + 1, end - pos - 1)] = std::stol(v.substr(colon + 1));
    pos = v.find_first_of(",}", colon);
  }
  return counts;
}

// ---- switchovers and failovers under writes ------------------------------------------------------

std::string served_port(const Pgkeel& pk, std::string_view listener = "rw") {
  return pq_exec(pk.conninfo(kAppUser, kAppPassword, kAppDatabase, listener), "SELECT current_setting('port')", 5s)
      .scalar();
}

// Runs one console command; "" on success, else the error message.
std::string console_act(const Pgkeel& pk, const std::string& sql) {
  const PqResult r = pq_exec(pk.console_conninfo(), sql, 60s);
  return r.ok ? "" : (r.error.empty() ? "failed" : r.error);
}

bool streams_to(const Cluster& cluster, std::string_view standby, std::string_view primary) {
  return pq_exec(cluster.conninfo(primary, kPgkeelUser, kPgkeelPassword, "postgres"),
                 "SELECT count(*) FROM pg_stat_replication WHERE application_name = '" + std::string(standby) +
                     "' AND state = 'streaming'")
             .scalar() == "1";
}

// Whether the keeper sees the node as a standby that is up (so a FAILOVER TO may pick it).
bool node_is_up_standby(const Pgkeel& pk, const Cluster& cluster, std::string_view node) {
  // up, a standby, and not fenced (a node that rejoined is held out until pgkeel saw it stream)
  const std::string row = std::string(node) + "|127.0.0.1:" + std::to_string(cluster.port(node)) + "|standby|up|no|";
  for (const auto& r : pq_exec(pk.console_conninfo(), "SHOW NODES").rows) {
    std::string line;
    for (const auto& v : r) {
      line += (v ? *v : std::string("NULL")) + "|";
    }
    if (line.rfind(row, 0) == 0) {
      return true;
    }
  }
  return false;
}

// Clients that write through one listener until stopped, reconnecting after any error as an
// application server does, and keep every error a client saw, by SQLSTATE.
class ErrorTally {
 public:
  ErrorTally(std::string conninfo, int clients) : conninfo_(std::move(conninfo)) {
    for (int i = 0; i < clients; ++i) {
      threads_.emplace_back([this, i] { write(i); });
    }
  }
  ~ErrorTally() { stop(); }
  ErrorTally(const ErrorTally&) = delete;
  ErrorTally& operator=(const ErrorTally&) = delete;

  void stop() {
    stop_ = true;
    for (auto& t : threads_) {
      if (t.joinable()) {
        t.join();
      }
    }
  }
  long writes() const { return writes_; }
  std::map<std::string, long> by_sqlstate() const {
    std::lock_guard l(mu_);
    return by_sqlstate_;
  }
  std::vector<std::string> samples() const {
    std::lock_guard l(mu_);
    return samples_;
  }

 private:
  void write(int client) {
    PgConnPtr conn;
    for (long seq = 1; !stop_; ++seq) {
      if (!conn || PQstatus(conn.get()) != CONNECTION_OK) {
        conn.reset(PQconnectdb(conninfo_.c_str()));
        if (PQstatus(conn.get()) != CONNECTION_OK) {
          note("connect", PQerrorMessage(conn.get()));
          conn.reset();
          std::this_thread::sleep_for(50ms);
          continue;
        }
      }
      const std::string sql = "INSERT INTO reroute_writes (client, seq) VALUES (" + std::to_string(client) + ", " +
                              std::to_string(seq) + ")";
      // Not PQexec: when a FATAL is followed by the connection's end, it keeps only libpq's own
      // "server closed the connection" result, without the FATAL's SQLSTATE.
      bool ok = PQsendQuery(conn.get(), sql.c_str()) == 1;
      std::string state;
      std::string message = ok ? "" : PQerrorMessage(conn.get());
      for (PgResultPtr res(PQgetResult(conn.get())); res; res.reset(PQgetResult(conn.get()))) {
        if (PQresultStatus(res.get()) == PGRES_COMMAND_OK) {
          continue;
        }
        ok = false;
        const char* s = PQresultErrorField(res.get(), PG_DIAG_SQLSTATE);
        if (state.empty() && s) {
          state = s;
        }
        if (message.empty()) {
          message = PQresultErrorMessage(res.get());
        }
      }
      if (ok) {
        ++writes_;
        continue;
      }
      note(state.empty() ? "none" : state, message);
      if (state == "25006") {
        conn.reset();  // a wrong node: never keep it
      }
    }
  }

  void note(const std::string& state, const std::string& message) {
    std::lock_guard l(mu_);
    ++by_sqlstate_[state];
    if (samples_.size() < 10) {
      samples_.push_back(state + " " + message);
    }
  }

  std::string conninfo_;
  std::atomic<bool> stop_{false};
  std::atomic<long> writes_{0};
  std::vector<std::thread> threads_;
  mutable std::mutex mu_;
  std::map<std::string, long> by_sqlstate_;
  std::vector<std::string> samples_;
};

}  // namespace

TEST_CASE("pgbench -M prepared and -M extended through a transaction-mode listener: no failed transaction",
          "[reroute][prepared]") {
  auto& cluster = Cluster::shared();
  auto init = run({"pgbench", "-i", "-s", "1", "-q", "-h", "127.0.0.1", "-p", std::to_string(cluster.port("db1")),
                   "-U", "app", "app"},
                  {{"PGPASSWORD", "app-pass"}});
  INFO(init.output);
  REQUIRE(init.ok());
  Pgkeel pk(cluster, transaction_mode());
  for (const std::string mode : {"prepared", "extended"}) {
    DYNAMIC_SECTION("mode " << mode) {
      // -C: a new connection per transaction as well, so statements are prepared again and again.
      for (const bool reconnect : {false, true}) {
        const std::string per_client = reconnect ? "25" : "100";
        std::vector<std::string> argv = {"pgbench", "-M", mode, "-c", "8", "-j", "2", "-t", per_client,
                                         "-h", "127.0.0.1", "-p", std::to_string(pk.port()), "-U", "app", "app"};
        if (reconnect) {
          argv.insert(argv.begin() + 1, "-C");
        }
        const RunResult r = run(argv, {{"PGPASSWORD", "app-pass"}}, 120s);
        INFO((reconnect ? "with -C\n" : "") << r.output);
        REQUIRE(r.ok());
        const int total = 8 * std::stoi(per_client);
        CHECK(contains(r.output, "number of transactions actually processed: " + std::to_string(total) + "/" +
                                     std::to_string(total)));
        CHECK(contains(r.output, "number of failed transactions: 0"));
        check_no_statement_mixup(r.output);
        const auto tps = r.output.find("tps = ");
        std::printf("reroute: pgbench -M %s%s, 8 clients, transaction mode: %s\n", mode.c_str(),
                    reconnect ? " -C" : "",
                    tps == std::string::npos ? "?" : r.output.substr(tps, r.output.find('\n', tps) - tps).c_str());
      }
    }
  }
}

TEST_CASE("pgJDBC with server-prepared statements from 16 connections: every result right, in both pool modes",
          "[reroute][prepared][jdbc]") {
  Pgkeel pk(Cluster::shared(), both_modes());
  const std::string classpath = compile_java(pk.dir(), "PreparedMany", kPgjdbcJar);
  run_in_both_modes(pk, "PreparedMany: ", [&](int port) {
    return std::vector<std::string>{"java", "-cp", classpath, "PreparedMany",
                                    "jdbc:postgresql://127.0.0.1:" + std::to_string(port) + "/app", "app", "app-pass",
                                    "16", "30"};
  });
}

TEST_CASE("asyncpg with its statement cache on, from 4 processes x 4 connections: every result right, in both pool modes",
          "[reroute][prepared][asyncpg]") {
  Pgkeel pk(Cluster::shared(), both_modes());
  const std::string script = (fs::path(PGKEEL_SOURCE_DIR) / "tests" / "python" / "prepared_asyncpg.py").string();
  run_in_both_modes(pk, "prepared_asyncpg: ", [&](int port) {
    // `command -p`: the system's python3 (with Debian's python3-asyncpg), found on the POSIX
    // default PATH, whatever python3 comes first on ours.
    return std::vector<std::string>{"sh", "-c", "command -p python3 \"$@\"", "sh", script,
                                    "postgresql://app:app-pass@127.0.0.1:" + std::to_string(port) + "/app",
                                    "--processes", "4", "--connections", "4", "--rounds", "20"};
  });
}

TEST_CASE("no 25006 through pgkeel: writers in both pool modes across a SWITCHOVER and a FAILOVER TO",
          "[reroute][no-25006]") {
  Cluster cluster(ClusterOptions{.standbys = 1, .sync = true});
  cluster.psql_as_postgres("db1", "CREATE TABLE reroute_writes (client int, seq bigint); GRANT ALL ON reroute_writes TO app",
                           "app");
  const fs::path tools = cluster_script().parent_path();
  PgkeelOptions o;
  o.console = true;
  o.listeners = {ListenerSpec{}, ListenerSpec{.name = "tx", .pool_mode = "transaction"}};
  o.health_extra = "probe_interval = \"250ms\"\nprobe_timeout = \"500ms\"";
  o.failover_extra = "hold_timeout = \"15s\"\nswitchover_timeout = \"30s\"\nswitchover_drain_timeout = \"2s\"";
  o.failover_extra += "\nstop_command = \"" + (tools / "stop-node.sh").string() + " " + cluster.dir().string() + "\"";
  o.failover_extra += "\nrejoin_command = \"" + (tools / "rejoin.sh").string() + " --no-rewind " +
                      cluster.dir().string() + "\"";
  Pgkeel pk(cluster, o);
  REQUIRE(eventually(10s, [&] { return served_port(pk) == std::to_string(cluster.port("db1")); }));

  ErrorTally session(pk.conninfo(), 2);
  ErrorTally transaction(pk.conninfo(kAppUser, kAppPassword, kAppDatabase, "tx"), 2);
  auto writes_flow = [&] {
    const long s = session.writes(), t = transaction.writes();
    return eventually(15s, [&] { return session.writes() > s + 20 && transaction.writes() > t + 20; });
  };
  REQUIRE(writes_flow());

  // A planned switchover: db1 stops and rejoins as a standby of db2, which for a while is a
  // read-only node that served writes a moment ago.
  std::string answer = console_act(pk, "SWITCHOVER TO db2");
  INFO(answer);
  REQUIRE(answer.empty());
  CHECK(writes_flow());
  REQUIRE(eventually(60s, [&] { return streams_to(cluster, "db1", "db2"); }));
  REQUIRE(eventually(10s, [&] { return node_is_up_standby(pk, cluster, "db1"); }));
  CHECK(writes_flow());
  // An unplanned one named by the operator: db1, a standby again, takes the writes back.
  answer = console_act(pk, "FAILOVER TO db1");
  INFO(answer);
  REQUIRE(answer.empty());
  CHECK(served_port(pk, "tx") == std::to_string(cluster.port("db1")));
  CHECK(writes_flow());
  session.stop();
  transaction.stop();

  for (const ErrorTally* tally : {&session, &transaction}) {
    const char* listener = tally == &session ? "session" : "transaction";
    std::string seen;
    for (const auto& [state, n] : tally->by_sqlstate()) {
      seen += " ";
      seen += state;
      seen += "=" + std::to_string(n);
    }
    std::printf("reroute: no-25006 (%s mode): %ld writes; errors by SQLSTATE:%s\n", listener, tally->writes(),
                seen.empty() ? " none" : seen.c_str());
    for (const std::string& s : tally->samples()) {
      std::printf("reroute:   %s", s.c_str());
    }
    INFO(listener << " errors:" << seen);
    CHECK(tally->by_sqlstate().count("25006") == 0);
  }
}

// A client in the queue for a connection to the primary when routing demotes it was routed under
// the older epoch. It must be routed again: held through the failover and served by the new
// primary, never given a connection opened to the old one (which still runs here) nor the error
// of a login that the demotion cut.
TEST_CASE("a client waiting for a connection to the primary when it is demoted is held and served by the new one",
          "[reroute][waiting]") {
  Cluster cluster(ClusterOptions{.standbys = 1, .sync = true});
  PgkeelOptions o;
  o.console = true;
  o.workers = 1;
  o.pool_size = 1;
  o.pool_extra = "max_server_conn_per_node = 1";  // so that a second client waits in the queue
  o.failover_extra = "hold_timeout = \"15s\"";
  Pgkeel pk(cluster, o);
  const std::string db1 = std::to_string(cluster.port("db1"));
  const std::string db2 = std::to_string(cluster.port("db2"));
  REQUIRE(eventually(10s, [&] { return served_port(pk) == db1; }));

  PqSession first(pk.conninfo());
  REQUIRE(first.exec("SELECT 1").ok);  // session pooling: it keeps db1's only connection
  PqResult second;
  std::thread waiter([&] {
    PqSession s(pk.conninfo(), 30s);
    if (!s.connected()) {
      second.error = s.error();
      second.sqlstate = s.sqlstate();
      return;
    }
    second = s.exec("SELECT current_setting('port') || ' ' || pg_is_in_recovery()::text");
  });
  auto waiting = [&] {
    for (const auto& row : pq_exec(pk.console_conninfo(), "SHOW CLIENTS").rows) {
      for (const auto& v : row) {
        if (v && *v == "waiting") return true;
      }
    }
    return false;
  };
  const bool queued = eventually(10s, waiting);
  CHECK(queued);
  const std::string answer = console_act(pk, "FAILOVER TO db2");
  waiter.join();
  INFO(answer);
  INFO("the waiting client: " << second.error);
  REQUIRE(answer.empty());
  CHECK(second.ok);
  CHECK(second.scalar() == db2 + " false");
  CHECK(first.exec("SELECT current_setting('port')").scalar() == db2);  // the session moved too
}

TEST_CASE("a HikariCP pool lives through a kill -9 of the primary: only transactions in flight fail",
          "[reroute][hikari][release-only]") {
  Cluster cluster(ClusterOptions{.standbys = 1, .sync = true});
  PgkeelOptions o = transaction_mode();
  o.console = true;
  o.health_extra = "probe_interval = \"250ms\"\nprobe_timeout = \"500ms\"";
  o.failover_extra = "hold_timeout = \"15s\"";
  Pgkeel pk(cluster, o);
  REQUIRE(eventually(10s, [&] { return served_port(pk) == std::to_string(cluster.port("db1")); }));
  const std::string classpath = compile_java(pk.dir(), "HikariFailover", kHikariClasspath);
  const fs::path ready = pk.dir() / "hikari.ready";
  const fs::path killed = pk.dir() / "hikari.killed";
  const std::string url = "jdbc:postgresql://127.0.0.1:" + std::to_string(pk.port()) + "/app";

  RunResult r;
  std::thread program([&] {
    r = run({"java", "-cp", classpath, "HikariFailover", "--url", url, "--user", "app", "--password", "app-pass",
             "--threads", "6", "--pool", "8", "--duration", "12", "--after-kill", "8", "--ready-file", ready.string(),
             "--kill-file", killed.string()},
            {}, 180s);
  });
  const bool warm = eventually(60s, [&] { return fs::exists(ready); }, 50ms);
  if (warm) {
    ::kill(cluster.pid("db1"), SIGKILL);
  }
  std::ofstream(killed) << "killed\n";  // also when it never got warm: the program ends sooner
  const bool promoted = warm && eventually(20s, [&] { return served_port(pk) == std::to_string(cluster.port("db2")); });
  program.join();
  INFO(r.output);
  REQUIRE(warm);
  REQUIRE(promoted);
  const auto json_at = r.output.find("{\n");
  REQUIRE(json_at != std::string::npos);
  const std::string json = r.output.substr(json_at);
  std::printf("reroute: HikariCP through a kill -9 of the primary:\n%s\n", json.c_str());

  // The harness itself: the kill was seen, writes resumed, the summary is complete.
  CHECK(summary_value(json, "kill_seen") == "true");
  CHECK(summary_number(json, "committed_after_kill") > 0);
  CHECK(summary_number(json, "errors_before_kill") == 0);
  // Its own checks: the schema and prepared statements on every pooled connection after the
  // failover, every committed id on the new primary, no id that failed before COMMIT there.
  CHECK(r.ok());
  CHECK(summary_number(json, "missing_commits") == 0);
  CHECK(summary_number(json, "phantom_ids") == 0);
  CHECK(summary_number(json, "schema_failures") == 0);
  CHECK(summary_number(json, "final_ok") == 8);
  CHECK(summary_number(json, "read_mismatches") == 0);

  // The promise. Only transactions in flight when pgkeel loses the primary fail, each
  // with the documented SQLSTATE: 40001 (then 25P02 until the rollback) for a statement inside a
  // transaction, 08007 for a COMMIT whose outcome pgkeel does not know; the pool never fails to
  // hand out a connection. The backends die a little after their postmaster, so a transaction
  // begun just after the kill may be in flight then too: that one may fail, but no thread fails
  // twice (its next transaction runs on the new primary).
  CHECK(summary_number(json, "errors") <= 6);
  long must_evict = 0;
  for (const auto& [what, n] : summary_counts(json, "errors_by_phase_and_sqlstate")) {
    INFO(what << ": " << n);
    // A COMMIT sent after the transaction was lost (it was open, idle, at the kill) is told
    // 40001: it did not commit, and the client must hear so (README: what a client sees).
    // A statement outside a transaction block (a validation query, say) in flight at the kill
    // may have run: 08007 too.
    const bool documented = what == "transaction 40001" || what == "transaction 25P02" || what == "commit 08007" ||
                            what == "commit 40001" || what == "transaction 08007";
    CHECK(documented);
    if (what.size() >= 5 && what.compare(what.size() - 5, 5, "08007") == 0) {
      must_evict += n;  // HikariCP evicts on every 08xxx
    }
  }
  // Idle pooled connections keep their schema and prepared statements: HikariCP evicts only
  // what a documented error made it evict, and every other connection made before the kill is
  // still in the pool.
  CHECK(summary_number(json, "failed_validations") == 0);
  CHECK(summary_number(json, "evictions") <= must_evict);
  CHECK(summary_number(json, "connections_created_after_kill") == summary_number(json, "evictions"));
  CHECK(summary_number(json, "final_survivors") >= 8 - summary_number(json, "evictions"));
}

}  // namespace pgkeel::test
