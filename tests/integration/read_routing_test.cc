// tests/integration/read_routing_test.cc — a read-only listener over two real standbys: reads
// spread over them, a standby whose replay is paused leaves the pool once it falls behind and
// comes back when it has caught up, and the fallback setting decides what happens with none fit.
#include <catch2/catch.hpp>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "tests/integration/fixture.h"

namespace pgkeel::test {
namespace {

PgkeelOptions read_options(const std::string& listener_extra) {
  PgkeelOptions o;
  o.console = true;
  o.health_extra = "probe_interval = \"200ms\"\nprobe_timeout = \"500ms\"";
  o.listeners.push_back(ListenerSpec{"ro", "read-only", 0, "", listener_extra});
  return o;
}

// Opens `n` sessions through the read-only listener at once (each keeps its server in session
// mode, so the least-busy choice spreads them) and counts them by the node's port.
std::map<int, int> spread(const Pgkeel& pk, int n) {
  std::vector<std::unique_ptr<PqSession>> sessions;
  std::map<int, int> by_port;
  for (int i = 0; i < n; ++i) {
    sessions.push_back(std::make_unique<PqSession>(pk.conninfo(kAppUser, kAppPassword, kAppDatabase, "ro")));
    const PqResult r = sessions.back()->exec("SELECT inet_server_port()");
    if (r.ok) ++by_port[std::stoi(r.scalar())];
  }
  return by_port;
}

// Resumes replay on the node however the test ends (the cluster is shared).
struct ReplayPause {
  const Cluster& cluster;
  std::string node;
  ReplayPause(const Cluster& c, std::string n) : cluster(c), node(std::move(n)) {
    cluster.psql_as_postgres(node, "SELECT pg_wal_replay_pause()");
  }
  ~ReplayPause() { resume(); }
  void resume() { cluster.psql_as_postgres(node, "SELECT pg_wal_replay_resume()"); }
};

}  // namespace

TEST_CASE("a read-only listener spreads reads over fit standbys; a lagging one leaves and rejoins", "[reads]") {
  auto& cluster = Cluster::shared({.standbys = 2, .sync = true});
  Pgkeel pk(cluster, read_options("max_replica_lag_bytes = 65536\nmax_replica_lag = \"0s\""));
  const int db2 = cluster.port("db2");
  const int db3 = cluster.port("db3");
  // The cluster is shared: WAL from the tests before can leave a standby over the 64 KB limit
  // until its next probe, and its reads then fall back to the primary. Wait for a sample in which
  // every read went to a standby; that same sample must be spread over both.
  std::map<int, int> both;
  REQUIRE(eventually(20s, [&] {
    both = spread(pk, 8);
    return both[db2] + both[db3] == 8;
  }));
  INFO("db2 " << both[db2] << ", db3 " << both[db3]);
  CHECK(both[db2] >= 2);
  CHECK(both[db3] >= 2);

  ReplayPause pause(cluster, "db2");
  // About 1 MB of WAL that db2 receives and does not replay.
  REQUIRE(pq_exec(cluster.conninfo("db1"),
                  "CREATE TABLE IF NOT EXISTS read_routing_filler (i int, pad text);"
                  "INSERT INTO read_routing_filler SELECT g, repeat('x', 100) FROM generate_series(1, 8000) g")
              .ok);
  CHECK(eventually(10s, [&] {
    const std::map<int, int> s = spread(pk, 6);
    return s.count(db2) == 0 && s.count(db3) == 1 && s.at(db3) == 6;
  }));
  const PqResult routes = pq_exec(pk.console_conninfo(), "SHOW ROUTES");
  CHECK(routes.ok);

  pause.resume();
  CHECK(eventually(10s, [&] { return spread(pk, 8).count(db2) == 1; }));
  pq_exec(cluster.conninfo("db1"), "DROP TABLE IF EXISTS read_routing_filler");
}

TEST_CASE("with no standby fit, a read-only listener falls back to the primary or refuses, by its setting", "[reads]") {
  auto& cluster = Cluster::shared({.standbys = 2, .sync = true});
  const int db1 = cluster.port("db1");

  SECTION("read_fallback = primary (the default)") {
    PgkeelOptions o = read_options("");
    o.nodes = {"db1"};  // no standby at all
    Pgkeel pk(cluster, o);
    CHECK(eventually(15s, [&] { return spread(pk, 1).count(db1) == 1; }));
  }
  SECTION("read_fallback = refuse") {
    PgkeelOptions o = read_options("read_fallback = \"refuse\"");
    o.nodes = {"db1"};
    Pgkeel pk(cluster, o);
    REQUIRE(eventually(15s, [&] { return pq_exec(pk.conninfo(), "SELECT 1").ok; }));
    const PqResult r = pq_exec(pk.conninfo(kAppUser, kAppPassword, kAppDatabase, "ro"), "SELECT 1");
    CHECK_FALSE(r.ok);
    CHECK(r.sqlstate == "57P03");
    CHECK(r.error.find("read_fallback = refuse") != std::string::npos);
  }
}

}  // namespace pgkeel::test

namespace pgkeel::test {

TEST_CASE("read_write_split sends read-only transactions to standbys; read_your_writes sees every write", "[reads][split]") {
  auto& cluster = Cluster::shared({.standbys = 2, .sync = true});
  PgkeelOptions o;
  o.health_extra = "probe_interval = \"200ms\"\nprobe_timeout = \"500ms\"";
  o.listeners = {ListenerSpec{.name = "rw", .pool_mode = "transaction", .extra = "read_write_split = true\nread_your_writes = true"}};
  Pgkeel pk(cluster, o);
  REQUIRE(eventually(15s, [&] { return pq_exec(pk.conninfo(), "SELECT 1").ok; }));
  const std::string primary = std::to_string(cluster.port("db1"));
  const std::set<std::string> standbys = {std::to_string(cluster.port("db2")), std::to_string(cluster.port("db3"))};
  REQUIRE(pq_exec(cluster.conninfo("db1"), "CREATE TABLE IF NOT EXISTS ryw_rows (id int)").ok);
  PqSession s(pk.conninfo());
  REQUIRE(s.connected());
  auto read_only_port = [&] {
    if (!s.exec("BEGIN READ ONLY").ok) return std::string("BEGIN failed");
    const std::string port = s.exec("SELECT current_setting('port')").scalar();
    s.exec("COMMIT");
    return port;
  };

  // Undeclared transactions stay on the primary; declared read-only ones go to a standby.
  CHECK(s.exec("SELECT current_setting('port')").scalar() == primary);
  CHECK(eventually(10s, [&] { return standbys.count(read_only_port()) == 1; }));
  // SET TRANSACTION READ ONLY in the same request as the BEGIN declares it too.
  CHECK(eventually(10s, [&] {
    const std::string port = s.exec("BEGIN; SET TRANSACTION READ ONLY; SELECT current_setting('port')").scalar();
    s.exec("COMMIT");
    return standbys.count(port) == 1;
  }));
  REQUIRE(s.exec("SET default_transaction_read_only = on").ok);
  CHECK(eventually(10s, [&] { return standbys.count(s.exec("SELECT current_setting('port')").scalar()) == 1; }));
  REQUIRE(s.exec("SET default_transaction_read_only = off").ok);
  CHECK(s.exec("SELECT current_setting('port')").scalar() == primary);

  // Read-your-writes: a read right after a write sees it, every time (a standby only when it has
  // replayed the write, else the primary).
  int on_standby = 0;
  for (int i = 1; i <= 30; ++i) {
    REQUIRE(s.exec("INSERT INTO ryw_rows VALUES (" + std::to_string(i) + ")").ok);
    REQUIRE(s.exec("BEGIN READ ONLY").ok);
    const PqResult seen = s.exec("SELECT count(*), current_setting('port') FROM ryw_rows WHERE id = " + std::to_string(i));
    s.exec("COMMIT");
    INFO("write " << i);
    CHECK(seen.value(0, 0) == "1");
    on_standby += standbys.count(seen.value(0, 1)) ? 1 : 0;
  }
  // Once the standbys' replay has been observed past the last write, reads go there again.
  CHECK(eventually(10s, [&] { return standbys.count(read_only_port()) == 1; }));
  std::printf("read_your_writes: %d of 30 reads right after a write were served by a standby\n", on_standby);
  pq_exec(cluster.conninfo("db1"), "DROP TABLE IF EXISTS ryw_rows");
}

}  // namespace pgkeel::test
