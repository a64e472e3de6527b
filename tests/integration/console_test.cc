// tests/integration/console_test.cc — the DBA console as a DBA uses it: psql on the console port,
// every SHOW with its documented columns, the monitor role that may only look, PAUSE / RESUME
// under a pgbench run, KILL, RELOAD (good and bad), SIGHUP, SHUTDOWN, and JSON logs.
#include <signal.h>
#include <sys/wait.h>

#include <atomic>
#include <chrono>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>

#include "tests/integration/fixture.h"

namespace pgkeel::test {
namespace {

bool contains(const std::string& hay, std::string_view needle) { return hay.find(needle) != std::string::npos; }

PgkeelOptions console_options() {
  PgkeelOptions o;
  o.console = true;
  o.console_monitor_users = {"app"};  // app/app-pass may look, not act
  o.health_extra = "probe_interval = \"250ms\"\nprobe_timeout = \"500ms\"";
  return o;
}

// psql against the console, unaligned with '|' separators; the first line is the header.
RunResult console_psql(const Pgkeel& pk, const std::string& sql, std::string_view user = kPgkeelUser,
                       std::string_view password = kPgkeelPassword) {
  return run({"psql", "-X", "-A", "-F", "|", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p",
              std::to_string(pk.console_port()), "-U", std::string(user), "-d", "pgkeel", "-c", sql},
             {{"PGPASSWORD", std::string(password)}, {"PGCONNECT_TIMEOUT", "5"}});
}

// The first line that is not a NOTICE (psql prints those to stderr, merged here).
std::string header(const RunResult& r) {
  std::istringstream in(r.output);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("NOTICE:", 0) != 0 && line.rfind("  ", 0) != 0) return line;
  }
  return "";
}

// A value from a console result by column name, in the first row whose `key_col` equals `key`.
std::string cell(const PqResult& r, const std::string& key_col, const std::string& key, const std::string& col) {
  std::size_t kc = r.columns.size();
  std::size_t vc = r.columns.size();
  for (std::size_t i = 0; i < r.columns.size(); ++i) {
    if (r.columns[i] == key_col) kc = i;
    if (r.columns[i] == col) vc = i;
  }
  for (std::size_t row = 0; row < r.rows.size(); ++row) {
    if (kc < r.columns.size() && r.value(row, kc) == key && vc < r.columns.size()) return r.value(row, vc);
  }
  return "";
}

long listener_transactions(const Pgkeel& pk) {
  const PqResult r = pq_exec(pk.console_conninfo(), "SHOW STATS");
  const std::string v = cell(r, "name", "rw", "transactions");
  return v.empty() ? -1 : std::stol(v);
}

void pgbench_init(const Cluster& cluster) {
  auto init = run({"pgbench", "-i", "-s", "1", "-q", "-h", "127.0.0.1", "-p", std::to_string(cluster.port("db1")), "-U",
                   "app", "app"},
                  {{"PGPASSWORD", "app-pass"}});
  INFO(init.output);
  REQUIRE(init.ok());
}

}  // namespace

TEST_CASE("psql runs every SHOW command on the console and gets the documented columns", "[console]") {
  auto& cluster = Cluster::shared();
  Pgkeel pk(cluster, console_options());
  REQUIRE(eventually(10s, [&] { return pq_exec(pk.conninfo(), "SELECT 1").ok; }));
  PqSession client(pk.conninfo() + " application_name=console-test");
  REQUIRE(client.connected());
  REQUIRE(client.exec("SELECT 1").ok);

  const std::vector<std::pair<std::string, std::string>> shows = {
      {"SHOW NODES", "name|address|role|state|fenced|enabled|system_identifier|timeline|lsn|lag_bytes|lag_seconds|"
                     "sync_state|application_name|last_probe|probe_ms|last_error|probes|probe_failures|timeouts_excused|"
                     "standing|rejoin|rejoin_attempts|rejoin_why|rejoin_error"},
      {"SHOW ROUTES", "listener|address|intent|pool_mode|node|epoch|paused|why"},
      {"SHOW FAILOVER PLAN", "node|eligible|lsn|chosen|verdict"},
      {"SHOW LISTENERS", "name|address|unix_socket|intent|pool_mode|paused|clients"},
      {"SHOW CLIENTS", "id|address|listener|user|database|application_name|state|state_seconds|connected_seconds|"
                       "server|node|backend_pid|tls"},
      {"SHOW SERVERS", "id|node|address|user|database|state|client|backend_pid|epoch|age_seconds|idle_seconds"},
      {"SHOW POOLS", "worker|node|user|database|idle|active|connecting|waiting_clients"},
      {"SHOW STATS", "scope|name|transactions|queries|bytes_in|bytes_out|avg_xact_ms|p99_xact_ms|avg_query_ms|"
                     "p99_query_ms|last_minute_transactions|last_minute_queries|last_minute_avg_query_ms|"
                     "last_minute_p99_query_ms|last_minute_p99_xact_ms"},
      {"SHOW EVENTS", "id|time|epoch|kind|node|detail"},
      {"SHOW PEERS", "instance|address|role|applied_epoch|lease_age_seconds|store_reachable"},
      {"SHOW CONFIG", "key|value"},
      {"SHOW VERSION", "version"},
      {"SHOW HELP", "command|what it does"},
  };
  for (const auto& [sql, columns] : shows) {
    DYNAMIC_SECTION(sql) {
      const RunResult r = console_psql(pk, sql);
      INFO(r.output);
      REQUIRE(r.ok());
      CHECK(header(r) == columns);
    }
  }

  SECTION("the rows say what is true") {
    const PqResult routes = pq_exec(pk.console_conninfo(), "SHOW ROUTES");
    REQUIRE(routes.ok);
    CHECK(cell(routes, "listener", "rw", "node") == "db1");
    const PqResult clients = pq_exec(pk.console_conninfo(), "SHOW CLIENTS");
    REQUIRE(clients.ok);
    const std::string pid = cell(clients, "application_name", "console-test", "backend_pid");
    REQUIRE_FALSE(pid.empty());
    // The backend pid pgkeel shows is the server's, which pg_stat_activity confirms.
    CHECK(client.exec("SELECT pid FROM pg_stat_activity WHERE application_name = 'console-test'").scalar() == pid);
    CHECK(cell(clients, "application_name", "console-test", "state") == "idle");
    CHECK(cell(clients, "application_name", "console-test", "user") == "app");
    const PqResult config = pq_exec(pk.console_conninfo(), "SHOW CONFIG");
    CHECK(cell(config, "key", "health.password", "value") == "(set)");  // never the password itself
    const PqResult stats = pq_exec(pk.console_conninfo(), "SHOW STATS");
    CHECK(std::stol(cell(stats, "name", "rw", "queries")) >= 1);
  }

  SECTION("other SQL gets a clear error listing the commands") {
    const PqResult r = pq_exec(pk.console_conninfo(), "SELECT 1");
    CHECK_FALSE(r.ok);
    CHECK(r.sqlstate == "42601");
    CHECK(contains(r.error, "SHOW NODES"));
    CHECK(contains(r.error, "SWITCHOVER"));
  }
}

TEST_CASE("a monitor user may look but not act", "[console]") {
  auto& cluster = Cluster::shared();
  Pgkeel pk(cluster, console_options());
  const std::string monitor = "host=127.0.0.1 port=" + std::to_string(pk.console_port()) +
                              " user=app password=app-pass dbname=pgkeel connect_timeout=5";
  const PqResult shown = pq_exec(monitor, "SHOW NODES");
  INFO(shown.error);
  CHECK(shown.ok);
  for (const std::string act : {"PAUSE", "RESUME", "FAILOVER", "SWITCHOVER", "FENCE db2", "UNFENCE db2", "DISABLE db2",
                                "ENABLE db2", "KILL c0-1", "RELOAD", "SHUTDOWN"}) {
    DYNAMIC_SECTION(act) {
      const PqResult r = pq_exec(monitor, act);
      INFO(r.error);
      CHECK_FALSE(r.ok);
      CHECK(r.sqlstate == "42501");
    }
  }
  // A user in neither list cannot log in at all, and a wrong password fails like PostgreSQL's.
  const std::string stranger = "host=127.0.0.1 port=" + std::to_string(pk.console_port()) +
                               " user=md5user password=md5-pass dbname=pgkeel connect_timeout=5";
  const PqResult r = pq_exec(stranger, "SHOW NODES");
  INFO(r.error);
  CHECK_FALSE(r.ok);
  CHECK(r.sqlstate == "28P01");
  CHECK(pk.running());
}

TEST_CASE("PAUSE holds a pgbench run without errors and RESUME releases it", "[console][pause]") {
  auto& cluster = Cluster::shared();
  pgbench_init(cluster);
  Pgkeel pk(cluster, console_options());
  REQUIRE(eventually(10s, [&] { return pq_exec(pk.conninfo(), "SELECT 1").ok; }));

  RunResult bench;
  std::thread t([&] {
    bench = run({"pgbench", "-M", "prepared", "-c", "4", "-j", "2", "-T", "6", "-h", "127.0.0.1", "-p",
                 std::to_string(pk.port()), "-U", "app", "app"},
                {{"PGPASSWORD", "app-pass"}});
  });
  REQUIRE(eventually(5s, [&] { return listener_transactions(pk) > 50; }));

  const PqResult paused = pq_exec(pk.console_conninfo(), "PAUSE");
  INFO(paused.error);
  REQUIRE(paused.ok);
  const long at_pause = listener_transactions(pk);
  // No progress while paused (at most the transactions that were running when PAUSE answered
  // complete; PAUSE answers once they have).
  std::this_thread::sleep_for(1500ms);
  const long later = listener_transactions(pk);
  CHECK(later == at_pause);
  const PqResult clients = pq_exec(pk.console_conninfo(), "SHOW CLIENTS");
  int paused_clients = 0;
  for (std::size_t i = 0; i < clients.rows.size(); ++i) {
    if (clients.value(i, 6) == "paused") ++paused_clients;
  }
  CHECK(paused_clients == 4);
  CHECK(cell(pq_exec(pk.console_conninfo(), "SHOW ROUTES"), "listener", "rw", "paused") == "yes");

  REQUIRE(pq_exec(pk.console_conninfo(), "RESUME").ok);
  REQUIRE(eventually(5s, [&] { return listener_transactions(pk) > later + 50; }));
  t.join();
  INFO(bench.output);
  CHECK(bench.ok());
  CHECK(contains(bench.output, "number of failed transactions: 0"));
  const PqResult events = pq_exec(pk.console_conninfo(), "SHOW EVENTS");
  bool seen = false;
  for (std::size_t i = 0; i < events.rows.size(); ++i) seen = seen || contains(events.value(i, 5), "PAUSE all listeners by pgkeel");
  CHECK(seen);
}

TEST_CASE("KILL ends one client's session and no other", "[console]") {
  auto& cluster = Cluster::shared();
  Pgkeel pk(cluster, console_options());
  PqSession victim(pk.conninfo() + " application_name=victim");
  PqSession bystander(pk.conninfo() + " application_name=bystander");
  REQUIRE(victim.connected());
  REQUIRE(bystander.connected());
  REQUIRE(victim.exec("SELECT 1").ok);
  const std::string id = cell(pq_exec(pk.console_conninfo(), "SHOW CLIENTS"), "application_name", "victim", "id");
  REQUIRE_FALSE(id.empty());
  const PqResult k = pq_exec(pk.console_conninfo(), "KILL " + id);
  INFO(k.error);
  CHECK(k.ok);
  const PqResult after = victim.exec("SELECT 1");
  CHECK_FALSE(after.ok);
  CHECK(bystander.exec("SELECT 1").ok);
  CHECK(pq_exec(pk.console_conninfo(), "KILL " + id).sqlstate == "42704");  // gone now
  CHECK(pq_exec(pk.console_conninfo(), "KILL nonsense").sqlstate == "42704");
  const PqResult events = pq_exec(pk.console_conninfo(), "SHOW EVENTS");
  bool seen = false;
  for (std::size_t i = 0; i < events.rows.size(); ++i) seen = seen || contains(events.value(i, 5), "KILL " + id + " by pgkeel");
  CHECK(seen);
}

TEST_CASE("RELOAD and SIGHUP apply a good configuration and keep serving through a bad one", "[console][reload]") {
  auto& cluster = Cluster::shared();
  Pgkeel pk(cluster, console_options());
  PqSession session(pk.conninfo());
  REQUIRE(session.connected());
  REQUIRE(session.exec("SELECT 1").ok);

  SECTION("a good change is applied without dropping connections") {
    pk.options().pool_size = 7;
    pk.write_config();
    const PqResult r = pq_exec(pk.console_conninfo(), "RELOAD");
    INFO(r.error);
    REQUIRE(r.ok);
    CHECK(cell(pq_exec(pk.console_conninfo(), "SHOW CONFIG"), "key", "pool.pool_size", "value") == "7");
    CHECK(session.exec("SELECT 1").ok);
    // SIGHUP does the same.
    pk.options().pool_size = 9;
    pk.write_config();
    pk.signal(SIGHUP);
    CHECK(eventually(5s, [&] {
      return cell(pq_exec(pk.console_conninfo(), "SHOW CONFIG"), "key", "pool.pool_size", "value") == "9";
    }));
    CHECK(session.exec("SELECT 1").ok);
  }

  SECTION("an invalid file is rejected whole, every error named, the running config kept") {
    {
      std::ofstream f(pk.config_path(), std::ios::app);
      f << "\n[pool]\npool_size = \"many\"\n";  // duplicate table and a wrong type
    }
    const PqResult r = pq_exec(pk.console_conninfo(), "RELOAD");
    CHECK_FALSE(r.ok);
    CHECK(r.sqlstate == "F0000");
    CHECK(contains(r.error, pk.config_path().string()));
    CHECK(contains(r.error, "running configuration is kept"));
    CHECK(session.exec("SELECT 1").ok);
    CHECK(pq_exec(pk.conninfo(), "SELECT 1").ok);
    pk.signal(SIGHUP);
    CHECK(eventually(5s, [&] { return contains(tail_file(pk.log_path(), 400), "reload_rejected"); }));
    CHECK(pq_exec(pk.conninfo(), "SELECT 1").ok);
    const PqResult events = pq_exec(pk.console_conninfo(), "SHOW EVENTS");
    int rejected = 0;
    for (std::size_t i = 0; i < events.rows.size(); ++i) {
      if (events.value(i, 3) == "reload" && contains(events.value(i, 5), "rejected")) ++rejected;
    }
    CHECK(rejected == 2);
  }

  SECTION("a change that needs a restart is refused and named") {
    pk.options().workers = 3;
    pk.write_config();
    const PqResult r = pq_exec(pk.console_conninfo(), "RELOAD");
    CHECK_FALSE(r.ok);
    CHECK(contains(r.error, "general.workers"));
    CHECK(contains(r.error, "restart"));
    CHECK(session.exec("SELECT 1").ok);
  }
}

TEST_CASE("RELOAD adds, moves and removes listeners and nodes without dropping connections", "[console][reload]") {
  auto& cluster = Cluster::shared();
  PgkeelOptions o = console_options();
  o.nodes = {"db1"};  // db2 joins by a reload
  Pgkeel pk(cluster, o);
  REQUIRE(eventually(10s, [&] { return pq_exec(pk.conninfo(), "SELECT 1").ok; }));
  PqSession session(pk.conninfo());
  REQUIRE(session.connected());
  REQUIRE(session.exec("SELECT 1").ok);
  auto reload = [&] {
    pk.write_config();
    const PqResult r = pq_exec(pk.console_conninfo(), "RELOAD");
    INFO(r.error);
    REQUIRE(r.ok);
  };
  auto node_state = [&](const std::string& name) { return cell(pq_exec(pk.console_conninfo(), "SHOW NODES"), "name", name, "state"); };
  auto listed = [&](const std::string& what, const std::string& col, const std::string& name) {
    const PqResult r = pq_exec(pk.console_conninfo(), what);
    for (std::size_t i = 0; i < r.rows.size(); ++i) {
      for (std::size_t c = 0; c < r.columns.size(); ++c) {
        if (r.columns[c] == col && r.value(i, c) == name) return true;
      }
    }
    return false;
  };

  // A node and a read-only listener are added.
  pk.options().nodes = {"db1", "db2"};
  pk.options().listeners.push_back(ListenerSpec{"ro", "read-only", free_port(), "", ""});
  reload();
  CHECK(eventually(10s, [&] { return node_state("db2") == "up"; }));
  CHECK(eventually(10s, [&] { return pq_exec(pk.conninfo(kAppUser, kAppPassword, kAppDatabase, "ro"), "SELECT pg_is_in_recovery()").value(0, 0) == "t"; }));
  CHECK(listed("SHOW LISTENERS", "name", "ro"));
  CHECK(session.exec("SELECT 1").ok);
  const PqResult events = pq_exec(pk.console_conninfo(), "SHOW EVENTS");
  bool added_event = false;
  for (std::size_t i = 0; i < events.rows.size(); ++i) added_event |= events.value(i, 3) == "node_added" && events.value(i, 4) == "db2";
  CHECK(added_event);

  // The read-write listener moves to another port: its sessions stay, the old port closes.
  const std::string old_rw = pk.conninfo();
  pk.options().listeners[0].port = free_port();
  reload();
  CHECK(session.exec("SELECT 1").ok);
  CHECK(pq_exec(pk.conninfo(), "SELECT 1").ok);
  CHECK_FALSE(pq_exec(old_rw, "SELECT 1").ok);

  // The read-only listener goes: a session through it stays, new ones are refused.
  PqSession reader(pk.conninfo(kAppUser, kAppPassword, kAppDatabase, "ro"));
  REQUIRE(reader.connected());
  REQUIRE(reader.exec("SELECT 1").ok);
  const std::string ro = pk.conninfo(kAppUser, kAppPassword, kAppDatabase, "ro");
  pk.options().listeners.pop_back();
  reload();
  CHECK(reader.exec("SELECT pg_is_in_recovery()").value(0, 0) == "t");
  CHECK_FALSE(pq_exec(ro, "SELECT 1").ok);
  CHECK_FALSE(listed("SHOW LISTENERS", "name", "ro"));

  // The primary cannot be removed by a reload; a standby can.
  pk.options().nodes = {"db2"};
  pk.options().initial_primary = "db2";  // else the file itself is invalid
  pk.write_config();
  const PqResult refused = pq_exec(pk.console_conninfo(), "RELOAD");
  CHECK_FALSE(refused.ok);
  CHECK(contains(refused.error, "SWITCHOVER first"));
  CHECK(session.exec("SELECT 1").ok);
  pk.options().nodes = {"db1"};
  pk.options().initial_primary = "db1";
  reload();
  CHECK_FALSE(listed("SHOW NODES", "name", "db2"));
  CHECK_FALSE(listed("SHOW CONFIG", "key", "node.db2.address"));
  CHECK(session.exec("SELECT 1").ok);

  // A node that comes back gets a new index and is probed again.
  pk.options().nodes = {"db1", "db2"};
  reload();
  CHECK(eventually(10s, [&] { return node_state("db2") == "up"; }));
  CHECK(session.exec("SELECT 1").ok);
}

TEST_CASE("SHUTDOWN from the console drains and exits cleanly", "[console]") {
  auto& cluster = Cluster::shared();
  Pgkeel pk(cluster, console_options());
  REQUIRE(eventually(10s, [&] { return pq_exec(pk.conninfo(), "SELECT 1").ok; }));
  const PqResult r = pq_exec(pk.console_conninfo(), "SHUTDOWN");
  INFO(r.error);
  CHECK(r.ok);
  CHECK(eventually(10s, [&] { return !pk.running(); }));
  REQUIRE(pk.exit_status().has_value());
  CHECK(WIFEXITED(*pk.exit_status()));
  CHECK(WEXITSTATUS(*pk.exit_status()) == 0);
}

TEST_CASE("log_format = json writes one JSON object per line", "[console][logs]") {
  auto& cluster = Cluster::shared();
  PgkeelOptions o = console_options();
  o.general_extra = "log_format = \"json\"";
  Pgkeel pk(cluster, o);
  REQUIRE(eventually(10s, [&] { return pq_exec(pk.conninfo(), "SELECT 1").ok; }));
  REQUIRE(pq_exec(pk.console_conninfo(), "SHOW NODES").ok);
  const RunResult r = run({"python3", "-c",
                           "import json,sys\n"
                           "n=0\n"
                           "for line in open(sys.argv[1]):\n"
                           "    if line.startswith('---- fixture'): continue\n"
                           "    o=json.loads(line)\n"
                           "    assert 'ts' in o and 'level' in o and 'component' in o, line\n"
                           "    n+=1\n"
                           "assert n>5, n\n"
                           "print('lines', n)\n",
                           pk.log_path().string()});
  INFO(r.output);
  CHECK(r.ok());
}

}  // namespace pgkeel::test

namespace pgkeel::test {

TEST_CASE("no descriptor of pgkeel leaks into the commands it runs (all close-on-exec)", "[console][cloexec]") {
  auto& cluster = Cluster::shared();
  PgkeelOptions o = console_options();
  o.status = true;
  Pgkeel pk(cluster, o);
  PqSession s(pk.conninfo());
  REQUIRE(s.exec("SELECT 1").ok);
  REQUIRE(pq_exec(pk.console_conninfo(), "SHOW NODES").ok);
  // Hooks, fence, stop and rejoin commands are exec'd from pgkeel: a listening socket inherited by
  // a restarted PostgreSQL would keep pgkeel's port after pgkeel exits.
  const fs::path fd_dir = "/proc/" + std::to_string(pk.pid()) + "/fd";
  int checked = 0;
  for (const auto& e : fs::directory_iterator(fd_dir)) {
    const int fd = std::stoi(e.path().filename().string());
    if (fd <= 2) continue;
    std::ifstream info("/proc/" + std::to_string(pk.pid()) + "/fdinfo/" + std::to_string(fd));
    std::string key;
    std::string flags;
    while (info >> key) {
      if (key == "flags:") {
        info >> flags;
        break;
      }
    }
    if (flags.empty()) continue;  // closed meanwhile
    std::error_code ec;
    const std::string target = fs::read_symlink(e.path(), ec).string();
    // pgkeel's own: sockets, eventfds and epoll. (/dev/null and pipes can come from whoever
    // started this test; they are not pgkeel's to close.)
    if (target.rfind("socket:", 0) != 0 && target.rfind("anon_inode:", 0) != 0) continue;
    const unsigned long bits = std::stoul(flags, nullptr, 8);
    INFO("fd " << fd << " -> " << target << " flags " << flags);
    CHECK((bits & 02000000) != 0);  // O_CLOEXEC
    ++checked;
  }
  CHECK(checked >= 6);  // listeners, console, status port, eventfds, epoll, a client and a server
}

}  // namespace pgkeel::test
