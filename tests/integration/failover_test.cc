// tests/integration/failover_test.cc — failover scenarios against a real primary and standbys,
// read like the runbook: the primary dies under load, writes follow the promoted standby, the
// old primary returns and gets no writes, and every acknowledged commit is on the new primary.
// Each scenario owns its cluster: they kill, stop and promote nodes.
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>

#include "tests/integration/fixture.h"

namespace pgkeel::test {
namespace {

using Clock = std::chrono::steady_clock;

// A client of the shop: inserts uniquely numbered rows through pgkeel, one per transaction, and
// reconnects after any error, as an application server does. Every attempt ends in exactly one
// of: acknowledged, failed (definitely not committed), unknown (the connection was lost while
// the statement was in flight).
class Writer {
 public:
  Writer(std::string conninfo, int client) : conninfo_(std::move(conninfo)), client_(client) {}
  ~Writer() { stop(); }

  void start() {
    thread_ = std::thread([this] { loop(); });
  }
  void stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }

  std::set<long> acknowledged() const {
    std::lock_guard l(mu_);
    return acked_;
  }
  std::set<long> unknown() const {
    std::lock_guard l(mu_);
    return unknown_;
  }
  std::set<long> failed() const {
    std::lock_guard l(mu_);
    return failed_;
  }
  std::vector<Clock::time_point> ack_times() const {
    std::lock_guard l(mu_);
    return ack_times_;
  }
  std::vector<std::string> errors() const {
    std::lock_guard l(mu_);
    return errors_;
  }

 private:
  void loop() {
    long seq = 0;
    PGconn* conn = nullptr;
    while (!stop_) {
      if (conn == nullptr || PQstatus(conn) != CONNECTION_OK) {
        if (conn) PQfinish(conn);
        conn = PQconnectdb(conninfo_.c_str());
        if (PQstatus(conn) != CONNECTION_OK) {
          note_error(std::string("connect: ") + PQerrorMessage(conn));
          PQfinish(conn);
          conn = nullptr;
          std::this_thread::sleep_for(50ms);
          continue;
        }
      }
      const long id = client_ * 1000000L + (++seq);
      const std::string sql = "INSERT INTO ledger (id) VALUES (" + std::to_string(id) + ")";
      PGresult* res = PQexec(conn, sql.c_str());
      const ExecStatusType st = PQresultStatus(res);
      const char* state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
      std::lock_guard l(mu_);
      if (st == PGRES_COMMAND_OK) {
        acked_.insert(id);
        ack_times_.push_back(Clock::now());
      } else if (PQstatus(conn) != CONNECTION_OK || (state && std::string(state).rfind("08", 0) == 0) ||
                 (state && std::string(state) == "57P01")) {
        unknown_.insert(id);  // lost while in flight: it may or may not have committed
        errors_.push_back(std::string(state ? state : "lost") + " " + PQerrorMessage(conn));
      } else {
        failed_.insert(id);
        errors_.push_back(std::string(state ? state : "?") + " " + PQerrorMessage(conn));
      }
      PQclear(res);
    }
    if (conn) PQfinish(conn);
  }

  void note_error(const std::string& e) {
    std::lock_guard l(mu_);
    errors_.push_back(e);
  }

  std::string conninfo_;
  int client_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
  mutable std::mutex mu_;
  std::set<long> acked_;
  std::set<long> unknown_;
  std::set<long> failed_;
  std::vector<Clock::time_point> ack_times_;
  std::vector<std::string> errors_;
};

std::set<long> ledger_ids(const Cluster& cluster, std::string_view node) {
  std::set<long> ids;
  const std::string out = cluster.psql_as_postgres(node, "SELECT id FROM ledger ORDER BY id", "app");
  std::size_t pos = 0;
  while (pos < out.size()) {
    const std::size_t nl = out.find('\n', pos);
    const std::string line = out.substr(pos, nl == std::string::npos ? std::string::npos : nl - pos);
    if (!line.empty()) ids.insert(std::stol(line));
    if (nl == std::string::npos) break;
    pos = nl + 1;
  }
  return ids;
}

long ledger_duplicates(const Cluster& cluster, std::string_view node) {
  return std::stol(cluster.psql_as_postgres(
      node, "SELECT count(*) FROM (SELECT id FROM ledger GROUP BY id HAVING count(*) > 1) d", "app"));
}

void create_ledger(const Cluster& cluster) {
  cluster.psql_as_postgres("db1", "CREATE TABLE IF NOT EXISTS ledger (id bigint NOT NULL); GRANT ALL ON ledger TO app", "app");
}

// Which node serves writes through pgkeel now (by the server's own port).
std::string writer_port(const Pgkeel& pk) {
  return pq_exec(pk.conninfo(), "SELECT current_setting('port')").scalar();
}

std::string console(const Pgkeel& pk, const std::string& sql) {
  auto r = pq_exec(pk.console_conninfo(), sql);
  std::string out;
  for (const auto& row : r.rows) {
    for (const auto& v : row) out += (v ? *v : std::string("NULL")) + "|";
    out += "\n";
  }
  return r.ok ? out : "ERROR: " + r.error;
}

PgkeelOptions failover_options() {
  PgkeelOptions o;
  o.console = true;
  o.health_extra = "probe_interval = \"250ms\"\nprobe_timeout = \"500ms\"";
  o.failover_extra = "hold_timeout = \"15s\"";
  return o;
}

void kill_postmaster(const Cluster& cluster, std::string_view node, int sig) {
  const pid_t pid = cluster.pid(node);
  REQUIRE(pid > 0);
  REQUIRE(::kill(pid, sig) == 0);
}

// The node's postmaster and every process it forked (fixture.h).
std::vector<pid_t> instance_pids(const Cluster& cluster, std::string_view node) {
  return pgkeel::test::instance_pids(cluster.pid(node));
}

void signal_instance(const std::vector<pid_t>& pids, int sig) {
  for (pid_t p : pids) ::kill(p, sig);
}

bool gone(const std::vector<pid_t>& pids) {
  for (pid_t p : pids) {
    if (::kill(p, 0) == 0) return false;
  }
  return true;
}

}  // namespace

TEST_CASE("the primary is killed under load; writes follow the promoted standby", "[failover][kill]") {
  Cluster cluster(ClusterOptions{.standbys = 1, .sync = true});
  create_ledger(cluster);
  Pgkeel pk(cluster, failover_options());
  REQUIRE(eventually(10s, [&] { return writer_port(pk) == std::to_string(cluster.port("db1")); }));

  std::vector<std::unique_ptr<Writer>> writers;
  for (int i = 1; i <= 4; ++i) writers.push_back(std::make_unique<Writer>(pk.conninfo(), i));
  for (auto& w : writers) w->start();
  REQUIRE(eventually(10s, [&] { return writers[0]->acknowledged().size() > 20; }));

  const auto killed_at = Clock::now();
  SECTION("kill -9 of the postmaster") { kill_postmaster(cluster, "db1", SIGKILL); }
  SECTION("kill -9 of every process of the instance") { signal_instance(instance_pids(cluster, "db1"), SIGKILL); }
  REQUIRE(eventually(15s, [&] { return writer_port(pk) == std::to_string(cluster.port("db2")); }));
  // Writes resume: every client gets acknowledged inserts after the kill.
  REQUIRE(eventually(15s, [&] {
    for (auto& w : writers) {
      auto t = w->ack_times();
      if (t.empty() || t.back() < killed_at) return false;
    }
    return true;
  }));
  for (auto& w : writers) w->stop();

  // Write downtime: the longest stretch without any acknowledged write around the kill (an
  // orphaned backend of the dead postmaster may still acknowledge a commit just after it).
  std::vector<Clock::time_point> acks;
  for (auto& w : writers) {
    for (auto t : w->ack_times()) acks.push_back(t);
  }
  std::sort(acks.begin(), acks.end());
  Clock::duration longest{};
  for (std::size_t i = 1; i < acks.size(); ++i) {
    if (acks[i] < killed_at - 1s) continue;
    longest = std::max(longest, acks[i] - acks[i - 1]);
  }
  const auto downtime = std::chrono::duration_cast<std::chrono::milliseconds>(longest).count();
  std::printf("failover: kill -9 of the primary: write downtime (longest gap between acknowledged writes) %lld ms\n",
              static_cast<long long>(downtime));

  // Synchronous mode: every acknowledged row is on the new primary, none twice, no definitely
  // failed row is there.
  const std::set<long> on_new = ledger_ids(cluster, "db2");
  long acked = 0;
  for (auto& w : writers) {
    for (long id : w->acknowledged()) {
      ++acked;
      INFO("acknowledged id " << id);
      CHECK(on_new.count(id) == 1);
    }
    for (long id : w->failed()) CHECK(on_new.count(id) == 0);
  }
  CHECK(ledger_duplicates(cluster, "db2") == 0);
  CHECK(acked > 0);
  // Sessions on the dead primary lose their connection (08006); new connections are held and
  // served by the new primary, never refused.
  for (auto& w : writers) {
    for (const std::string& e : w->errors()) {
      INFO(e);
      CHECK(e.rfind("connect:", 0) != 0);
    }
  }

  const std::string nodes = console(pk, "SHOW NODES");
  INFO(nodes);
  CHECK(nodes.find("db2|127.0.0.1:" + std::to_string(cluster.port("db2")) + "|primary (writer)|up|") != std::string::npos);
  const std::string events = console(pk, "SHOW EVENTS");
  INFO(events);
  CHECK(events.find("|promotion|db2|") != std::string::npos);
  CHECK(pq_exec(cluster.conninfo("db2"), "SELECT pg_is_in_recovery()").scalar() == "f");
}

TEST_CASE("a hung primary (SIGSTOP) is detected and replaced; after SIGCONT it gets no write", "[failover][hang]") {
  Cluster cluster(ClusterOptions{.standbys = 1, .sync = false});
  create_ledger(cluster);
  Pgkeel pk(cluster, failover_options());
  REQUIRE(eventually(10s, [&] { return writer_port(pk) == std::to_string(cluster.port("db1")); }));
  const std::vector<pid_t> pids = instance_pids(cluster, "db1");
  REQUIRE(pids.size() > 3);
  signal_instance(pids, SIGSTOP);
  const auto stopped_at = Clock::now();
  const bool promoted = eventually(20s, [&] { return writer_port(pk) == std::to_string(cluster.port("db2")); });
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - stopped_at).count();
  signal_instance(pids, SIGCONT);
  REQUIRE(promoted);
  std::printf("failover: SIGSTOP of the primary to writes on the new primary: %lld ms\n", static_cast<long long>(ms));
  // The old primary is alive again and still thinks it is a primary: no write reaches it.
  REQUIRE(eventually(5s, [&] { return pq_exec(cluster.conninfo("db1"), "SELECT pg_is_in_recovery()").scalar() == "f"; }));
  for (int i = 0; i < 20; ++i) {
    auto r = pq_exec(pk.conninfo(), "INSERT INTO ledger (id) VALUES (" + std::to_string(900000 + i) + ") RETURNING current_setting('port')");
    CHECK(r.scalar() == std::to_string(cluster.port("db2")));
  }
  CHECK(pq_exec(cluster.conninfo("db1"), "SELECT count(*) FROM ledger WHERE id >= 900000").scalar() == "0");
}

TEST_CASE("the old primary started again as a primary gets no writes, across pgkeel restarts", "[failover][fencing]") {
  Cluster cluster(ClusterOptions{.standbys = 1, .sync = false});
  create_ledger(cluster);
  Pgkeel pk(cluster, failover_options());
  REQUIRE(eventually(10s, [&] { return writer_port(pk) == std::to_string(cluster.port("db1")); }));
  const std::vector<pid_t> pids = instance_pids(cluster, "db1");
  signal_instance(pids, SIGKILL);  // every process of the instance, so it can start again
  REQUIRE(eventually(15s, [&] { return writer_port(pk) == std::to_string(cluster.port("db2")); }));
  REQUIRE(eventually(10s, [&] { return gone(pids); }));
  cluster.start_node("db1");  // comes back as a primary on its old timeline
  REQUIRE(eventually(10s, [&] { return pq_exec(cluster.conninfo("db1"), "SELECT pg_is_in_recovery()").scalar() == "f"; }));

  auto writes_go_to_db2 = [&] {
    for (int i = 0; i < 5; ++i) {
      if (writer_port(pk) != std::to_string(cluster.port("db2"))) return false;
    }
    return true;
  };
  SECTION("while pgkeel keeps running") { CHECK(writes_go_to_db2()); }
  SECTION("after a pgkeel restart") {
    pk.restart();
    CHECK(eventually(10s, writes_go_to_db2));
  }
  SECTION("after a pgkeel restart with its state file deleted: the record in the cluster decides") {
    pk.stop();
    fs::remove(pk.dir() / "pgkeel.state");
    pk.start();
    CHECK(eventually(10s, writes_go_to_db2));
  }
  const std::string nodes = console(pk, "SHOW NODES");
  INFO(nodes);
  CHECK(nodes.find("db1|127.0.0.1:" + std::to_string(cluster.port("db1")) + "|primary|") != std::string::npos);
}

TEST_CASE("no false failover: a busy, full or self-restarting primary keeps its role", "[failover][false]") {
  Cluster cluster(ClusterOptions{.standbys = 1, .sync = false});
  Pgkeel pk(cluster, failover_options());
  REQUIRE(eventually(10s, [&] { return writer_port(pk) == std::to_string(cluster.port("db1")); }));
  SECTION("max_connections exhausted") {
    std::vector<std::unique_ptr<PqSession>> hogs;
    for (int i = 0; i < 110; ++i) {
      auto s = std::make_unique<PqSession>(cluster.conninfo("db1"));
      if (!s->connected()) break;
      hogs.push_back(std::move(s));
    }
    std::this_thread::sleep_for(3s);  // several probe rounds see 53300
    hogs.clear();
  }
  SECTION("the primary's CPU saturated") {
    std::vector<std::thread> burners;
    for (int i = 0; i < 3; ++i) {
      burners.emplace_back([&] {
        pq_exec(cluster.conninfo("db1"),
                "SET statement_timeout = '5s'; SELECT count(*) FROM generate_series(1, 1000000000)", 20s);
      });
    }
    for (auto& t : burners) t.join();
  }
  SECTION("a backend crash makes PostgreSQL restart itself") {
    PqSession victim(cluster.conninfo("db1", kPgkeelUser, kPgkeelPassword, "postgres"));
    REQUIRE(victim.connected());
    const std::string pid = victim.exec("SELECT pg_backend_pid()").scalar();
    REQUIRE(::kill(std::stoi(pid), SIGKILL) == 0);  // the postmaster resets every backend
    std::this_thread::sleep_for(3s);
  }
  CHECK(eventually(10s, [&] { return writer_port(pk) == std::to_string(cluster.port("db1")); }));
  CHECK(pq_exec(cluster.conninfo("db2"), "SELECT pg_is_in_recovery()").scalar() == "t");
  const std::string events = console(pk, "SHOW EVENTS");
  INFO(events);
  CHECK(events.find("|promotion|") == std::string::npos);
}

TEST_CASE("three nodes: after a failover the remaining standby follows the new primary", "[failover][three]") {
  Cluster cluster(ClusterOptions{.standbys = 2, .sync = true});
  create_ledger(cluster);
  Pgkeel pk(cluster, failover_options());
  REQUIRE(eventually(10s, [&] { return writer_port(pk) == std::to_string(cluster.port("db1")); }));
  REQUIRE(pq_exec(pk.conninfo(), "INSERT INTO ledger VALUES (1)").ok);
  kill_postmaster(cluster, "db1", SIGKILL);
  std::string new_primary;
  REQUIRE(eventually(20s, [&] {
    const std::string p = writer_port(pk);
    if (p == std::to_string(cluster.port("db2"))) new_primary = "db2";
    if (p == std::to_string(cluster.port("db3"))) new_primary = "db3";
    return !new_primary.empty();
  }));
  const std::string other = new_primary == "db2" ? "db3" : "db2";
  REQUIRE(pq_exec(pk.conninfo(), "INSERT INTO ledger VALUES (2)").ok);
  CHECK(eventually(20s, [&] {
    return pq_exec(cluster.conninfo(other), "SELECT count(*) FROM ledger WHERE id = 2").scalar() == "1";
  }));
  CHECK(cluster.psql_as_postgres(new_primary, "SELECT count(*) FROM pg_stat_replication WHERE application_name = '" + other + "'") == "1");
}

TEST_CASE("both nodes down: a clear error after hold_timeout; the recorded primary is routed again when it returns", "[failover][both]") {
  Cluster cluster(ClusterOptions{.standbys = 1, .sync = false});
  PgkeelOptions o = failover_options();
  o.failover_extra = "hold_timeout = \"2s\"";
  Pgkeel pk(cluster, o);
  REQUIRE(eventually(10s, [&] { return writer_port(pk) == std::to_string(cluster.port("db1")); }));
  cluster.stop_node("db2", "immediate");
  cluster.stop_node("db1", "immediate");
  // Once pgkeel has seen the primary go (a connection tried before that gets 08006 at once),
  // new clients are held for hold_timeout, then told why.
  REQUIRE(eventually(10s, [&] { return console(pk, "SHOW EVENTS").find("|detection|db1|") != std::string::npos; }));
  const auto t0 = Clock::now();
  auto r = pq_exec(pk.conninfo(), "SELECT 1");
  CHECK_FALSE(r.ok);
  CHECK(r.sqlstate == "57P03");
  CHECK(Clock::now() - t0 >= 1500ms);
  CHECK(pk.running());
  cluster.start_node("db1");
  CHECK(eventually(20s, [&] { return writer_port(pk) == std::to_string(cluster.port("db1")); }));
}

}  // namespace pgkeel::test

namespace pgkeel::test {

TEST_CASE("a standby lagging beyond max_lag_on_failover is not promoted, and pgkeel says why", "[failover][lag]") {
  Cluster cluster(ClusterOptions{.standbys = 1, .sync = false});
  create_ledger(cluster);
  PgkeelOptions o = failover_options();
  o.failover_extra = "synchronous_mode = \"off\"\nmax_lag_on_failover = 65536\nhold_timeout = \"2s\"";
  Pgkeel pk(cluster, o);
  REQUIRE(eventually(10s, [&] { return writer_port(pk) == std::to_string(cluster.port("db1")); }));
  // The standby stops receiving; the primary writes well past the allowed lag.
  cluster.psql_as_postgres("db2", "ALTER SYSTEM SET primary_conninfo = ''");
  cluster.psql_as_postgres("db2", "SELECT pg_reload_conf()");
  REQUIRE(pq_exec(pk.conninfo(), "INSERT INTO ledger SELECT g FROM generate_series(1, 20000) g").ok);
  // Let a probe see the primary's new position before it dies.
  REQUIRE(eventually(5s, [&] { return console(pk, "SHOW FAILOVER PLAN").find("max_lag_on_failover") != std::string::npos; }));
  kill_postmaster(cluster, "db1", SIGKILL);
  REQUIRE(eventually(15s, [&] { return console(pk, "SHOW EVENTS").find("|failover_refused|db1|") != std::string::npos; }));
  const std::string events = console(pk, "SHOW EVENTS");
  INFO(events);
  CHECK(events.find("max_lag_on_failover") != std::string::npos);
  CHECK(events.find("|promotion|") == std::string::npos);
  auto r = pq_exec(pk.conninfo(), "SELECT 1");
  CHECK_FALSE(r.ok);
  CHECK(r.sqlstate == "57P03");
  CHECK(r.error.find("max_lag_on_failover") != std::string::npos);
  CHECK(pq_exec(cluster.conninfo("db2"), "SELECT pg_is_in_recovery()").scalar() == "t");
}

TEST_CASE("the synchronous standby dies while the primary lives: commits flow in on, wait in strict", "[failover][sync]") {
  Cluster cluster(ClusterOptions{.standbys = 1, .sync = true});
  create_ledger(cluster);
  SECTION("on: pgkeel drops to asynchronous and says so") {
    Pgkeel pk(cluster, failover_options());
    REQUIRE(eventually(10s, [&] { return writer_port(pk) == std::to_string(cluster.port("db1")); }));
    cluster.stop_node("db2", "immediate");
    std::atomic<bool> done{false};
    PqResult r;
    std::thread t([&] {
      r = pq_exec(pk.conninfo(), "INSERT INTO ledger VALUES (42)");
      done = true;
    });
    const bool committed = eventually(15s, [&] { return done.load(); });
    if (!committed) cluster.start_node("db2");  // unblock the waiting commit before joining
    t.join();
    CHECK(committed);
    CHECK(r.ok);
    CHECK(console(pk, "SHOW EVENTS").find("|degraded|db1|") != std::string::npos);
    // The standby comes back: synchronous again.
    cluster.start_node("db2");
    CHECK(eventually(15s, [&] {
      return cluster.psql_as_postgres("db1", "SHOW synchronous_standby_names") == "ANY 1 (\"db2\")";
    }));
  }
  SECTION("strict: commits wait for a standby") {
    PgkeelOptions o = failover_options();
    o.failover_extra = "synchronous_mode = \"strict\"";
    Pgkeel pk(cluster, o);
    REQUIRE(eventually(10s, [&] { return writer_port(pk) == std::to_string(cluster.port("db1")); }));
    cluster.stop_node("db2", "immediate");
    std::atomic<bool> done{false};
    std::thread t([&] {
      pq_exec(pk.conninfo(), "INSERT INTO ledger VALUES (43)", 60s);
      done = true;
    });
    std::this_thread::sleep_for(3s);  // well past pgkeel's reaction time in `on`
    const bool waited = !done.load();
    cluster.start_node("db2");
    CHECK(eventually(20s, [&] { return done.load(); }));  // released once the standby is back
    t.join();
    CHECK(waited);
    CHECK(console(pk, "SHOW EVENTS").find("|degraded|") == std::string::npos);
  }
}

}  // namespace pgkeel::test

namespace pgkeel::test {
namespace {

// A test host of our own: a network namespace joined to this one by a veth pair. The nodes
// listen on two addresses on our side (one per node), pgkeel runs inside, and a route in the
// namespace cuts pgkeel off from one node while replication (over loopback, out here) goes on.
class NetnsHost {
 public:
  NetnsHost() {
    const int n = 1 + ::getpid() % 200;
    name_ = "pgkeel-t" + std::to_string(::getpid());
    veth_ = "pk" + std::to_string(::getpid() % 100000) + "a";
    peer_ = "pk" + std::to_string(::getpid() % 100000) + "b";
    prefix_ = "10.213." + std::to_string(n) + ".";
    const std::string script =
        "set -e; ip netns add " + name_ + "; ip link add " + veth_ + " type veth peer name " + peer_ +
        // .5 first: it is the primary address, so our own clients' traffic comes from it, and
        // cutting a node's address does not cut the test off from pgkeel.
        "; ip link set " + peer_ + " netns " + name_ + "; ip addr add " + prefix_ + "5/24 dev " + veth_ +
        "; ip addr add " + prefix_ + "1/24 dev " + veth_ +
        "; ip addr add " + prefix_ + "3/24 dev " + veth_ + "; ip link set " + veth_ + " up; ip netns exec " + name_ +
        " ip addr add " + prefix_ + "2/24 dev " + peer_ + "; ip netns exec " + name_ + " ip link set " + peer_ +
        " up; ip netns exec " + name_ + " ip link set lo up";
    auto r = run_shell(script);
    if (!r.ok()) {
      cleanup();
      throw std::runtime_error("netns setup failed: " + r.output);
    }
  }
  ~NetnsHost() { cleanup(); }
  NetnsHost(const NetnsHost&) = delete;
  NetnsHost& operator=(const NetnsHost&) = delete;

  const std::string& name() const { return name_; }
  std::string inside() const { return prefix_ + "2"; }   // pgkeel's address
  std::string db1() const { return prefix_ + "1"; }      // how pgkeel reaches db1
  std::string db2() const { return prefix_ + "3"; }      // how pgkeel reaches db2
  void cut(const std::string& addr) const {
    REQUIRE(run_shell("ip netns exec " + name_ + " ip route add unreachable " + addr + "/32").ok());
  }
  void heal(const std::string& addr) const {
    REQUIRE(run_shell("ip netns exec " + name_ + " ip route del unreachable " + addr + "/32").ok());
  }

 private:
  void cleanup() {
    run_shell("ip netns del " + name_ + " 2>/dev/null; ip link del " + veth_ + " 2>/dev/null; true");
  }
  std::string name_, veth_, peer_, prefix_;
};

}  // namespace

TEST_CASE("a partition between pgkeel and the primary while the standby still receives from it: no promotion", "[failover][partition]") {
  NetnsHost host;
  Cluster cluster(ClusterOptions{.standbys = 1, .sync = false});
  for (const char* n : {"db1", "db2"}) {
    {
      std::ofstream hba(cluster.node(n).data_dir / "pg_hba.conf", std::ios::app);
      hba << "host all all 10.213.0.0/16 scram-sha-256\n";
    }
    cluster.psql_as_postgres(n, "ALTER SYSTEM SET listen_addresses = '127.0.0.1," + host.db1() + "," + host.db2() + "'");
    cluster.stop_node(n, "fast");
    cluster.start_node(n);
  }
  PgkeelOptions o = failover_options();
  o.netns = host.name();
  o.listen_host = host.inside();
  o.node_hosts = {{"db1", host.db1()}, {"db2", host.db2()}};
  o.failover_extra = "hold_timeout = \"2s\"";
  Pgkeel pk(cluster, o);
  REQUIRE(eventually(15s, [&] { return writer_port(pk) == std::to_string(cluster.port("db1")); }));
  REQUIRE(eventually(10s, [&] {
    return cluster.psql_as_postgres("db1", "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'") == "1";
  }));

  host.cut(host.db1());
  std::string seen;
  const bool refused = eventually(10s, [&] {
    seen = console(pk, "SHOW EVENTS");
    return seen.find("|failover_refused|db1|") != std::string::npos;
  });
  INFO(seen);
  REQUIRE(refused);
  std::this_thread::sleep_for(3s);  // several more probe rounds: still no promotion
  const std::string events = console(pk, "SHOW EVENTS");
  INFO(events);
  CHECK(events.find("cut off") != std::string::npos);
  CHECK(events.find("|promotion|") == std::string::npos);
  CHECK(pq_exec(cluster.conninfo("db2"), "SELECT pg_is_in_recovery()").scalar() == "t");
  auto r = pq_exec(pk.conninfo(), "SELECT 1");
  CHECK_FALSE(r.ok);
  CHECK(r.sqlstate == "57P03");

  host.heal(host.db1());
  CHECK(eventually(15s, [&] { return writer_port(pk) == std::to_string(cluster.port("db1")); }));
}

}  // namespace pgkeel::test

namespace pgkeel::test {

TEST_CASE("the ledger client through pgkeel: kill -9 of the synchronous primary loses no acknowledged commit", "[failover][ledger]") {
  const std::string ledger = (fs::path(PGKEEL_BINARY_DIR) / "pgkeel-ledger").string();
  REQUIRE(fs::exists(ledger));
  Cluster cluster(ClusterOptions{.standbys = 1, .sync = true});
  Pgkeel pk(cluster, failover_options());
  REQUIRE(eventually(10s, [&] { return writer_port(pk) == std::to_string(cluster.port("db1")); }));
  const std::string conninfo = pk.conninfo();
  const std::string out = (pk.dir() / "ledger.json").string();
  auto setup = run({ledger, "setup", "--conninfo", conninfo});
  INFO(setup.output);
  REQUIRE(setup.ok());

  RunResult load;
  std::thread writer([&] {
    load = run({ledger, "run", "--conninfo", conninfo, "--clients", "4", "--duration", "8", "--out", out}, {}, 60s);
  });
  std::this_thread::sleep_for(3s);
  kill_postmaster(cluster, "db1", SIGKILL);
  writer.join();
  INFO(load.output);
  CHECK(load.ok());
  // Connections made during the failover were held, never refused.
  CHECK(load.output.find("; 0 connect failures") != std::string::npos);
  const auto gap = load.output.find("longest write gap (any client)");
  REQUIRE(gap != std::string::npos);
  std::printf("failover (pgkeel-ledger): %s\n", load.output.substr(gap, load.output.find('\n', gap) - gap).c_str());

  REQUIRE(eventually(10s, [&] { return writer_port(pk) == std::to_string(cluster.port("db2")); }));
  auto verify = run({ledger, "verify", "--conninfo", conninfo, "--in", out});
  INFO(verify.output);
  CHECK(verify.ok());
  CHECK(verify.output.find("lost (acknowledged, missing): 0") != std::string::npos);
  CHECK(verify.output.find("duplicated ids:               0") != std::string::npos);
}

}  // namespace pgkeel::test

namespace pgkeel::test {

// Decide, then cut: a failover that is refused or aborted before the promotion costs clients
// nothing. The fence runs before any write is cut, so a failing fence_command leaves every
// session on the primary as it was.
TEST_CASE("fence_command runs before writes are cut: when it fails the sessions on the primary go on; when it "
          "succeeds the old primary is fenced",
          "[failover][fence]") {
  Cluster cluster(ClusterOptions{.standbys = 1, .sync = true});
  create_ledger(cluster);
  const fs::path marker = cluster.dir() / "fenced.txt";
  PgkeelOptions o = failover_options();
  SECTION("a failing fence_command") {
    o.failover_extra += "\nfence_command = \"echo fence ran for $PGKEEL_NODE > " + marker.string() +
                        "; echo the power switch did not answer; exit 3\"";
    Pgkeel pk(cluster, o);
    REQUIRE(eventually(10s, [&] { return writer_port(pk) == std::to_string(cluster.port("db1")); }));
    PqSession session(pk.conninfo());
    REQUIRE(session.connected());
    REQUIRE(session.exec("BEGIN").ok);
    REQUIRE(session.exec("INSERT INTO ledger VALUES (1)").ok);
    const int backend = std::stoi(session.exec("SELECT pg_backend_pid()").scalar());
    const PqResult f = pq_exec(pk.console_conninfo(), "FAILOVER TO db2");
    INFO(f.error);
    CHECK_FALSE(f.ok);
    CHECK(f.error.find("fence_command failed (status 3: the power switch did not answer)") != std::string::npos);
    CHECK(eventually(5s, [&] { return tail_file(marker).find("fence ran for db1") != std::string::npos; }));
    // Nothing was cut: the open transaction goes on on the same backend and commits.
    CHECK(std::stoi(session.exec("SELECT pg_backend_pid()").scalar()) == backend);
    CHECK(session.exec("INSERT INTO ledger VALUES (2)").ok);
    CHECK(session.exec("COMMIT").ok);
    CHECK(cluster.psql_as_postgres("db1", "SELECT count(*) FROM ledger", "app") == "2");
    CHECK(writer_port(pk) == std::to_string(cluster.port("db1")));
    CHECK(pq_exec(cluster.conninfo("db2"), "SELECT pg_is_in_recovery()").scalar() == "t");
    const std::string events = console(pk, "SHOW EVENTS");
    INFO(events);
    CHECK(events.find("|writes_stopped|") == std::string::npos);
    CHECK(events.find("|failover_refused|") != std::string::npos);
    // The standby streams from the primary again, with its own conninfo, and acknowledges commits.
    CHECK(eventually(15s, [&] {
      return cluster.psql_as_postgres("db1", "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'db2'") ==
             "quorum";
    }));
  }
  SECTION("a fence_command that succeeds") {
    o.failover_extra += "\nfence_command = \"echo fenced $PGKEEL_NODE $PGKEEL_PORT > " + marker.string() + "\"";
    Pgkeel pk(cluster, o);
    REQUIRE(eventually(10s, [&] { return writer_port(pk) == std::to_string(cluster.port("db1")); }));
    kill_postmaster(cluster, "db1", SIGKILL);
    CHECK(eventually(20s, [&] { return writer_port(pk) == std::to_string(cluster.port("db2")); }));
    CHECK(tail_file(marker).find("fenced db1 " + std::to_string(cluster.port("db1"))) != std::string::npos);
    const std::string events = console(pk, "SHOW EVENTS");
    INFO(events);
    // The fence ran before the cut.
    CHECK(events.find("fence_command succeeded") != std::string::npos);
    CHECK(events.find("fence_command succeeded") < events.find("|writes_stopped|"));
    CHECK(console(pk, "SHOW NODES").find("db1|") != std::string::npos);
  }
}

}  // namespace pgkeel::test
