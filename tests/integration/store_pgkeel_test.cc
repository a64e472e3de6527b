// Several pgkeel instances acting as one through etcd ([store]), with a real 3-member etcd and a
// real PostgreSQL primary and standby: one failover for all of them, and an instance that cannot
// reach etcd stops routing writes (new logins get 57P03 with the reason) and resumes by itself.

#include <signal.h>

#include <catch2/catch.hpp>
#include <cstdlib>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/integration/etcd_fixture.h"
#include "tests/integration/fixture.h"
#include "tests/integration/http_client.h"

using namespace pgkeel::test;

namespace {

std::string writer_port(const Pgkeel& pk) {
  return pq_exec(pk.conninfo(), "SELECT current_setting('port')", 5s).scalar();
}

PgkeelOptions instance(const EtcdCluster& etcd, const std::string& name, const std::string& prefix,
                       const std::string& failover_extra = {}, const std::string& lease_ttl = "3s") {
  PgkeelOptions o;
  o.console = true;
  o.status = true;
  o.health_extra = "probe_interval = \"250ms\"\nprobe_timeout = \"500ms\"";
  o.failover_extra = "hold_timeout = \"30s\"\n" + failover_extra;
  std::string endpoints;
  for (const std::string& u : etcd.urls()) endpoints += (endpoints.empty() ? "\"" : ", \"") + u + "\"";
  o.extra_toml = "[store]\nendpoints = [" + endpoints + "]\nprefix = \"" + prefix + "\"\nname = \"" + name +
                 "\"\nlease_ttl = \"" + lease_ttl + "\"\nrequest_timeout = \"1s\"\n";
  return o;
}

// SHOW EVENTS' detail column, one event a line.
std::string event_details(const Pgkeel& pk) {
  const PqResult r = pq_exec(pk.console_conninfo(), "SHOW EVENTS");
  std::string out;
  for (std::size_t i = 0; i < r.rows.size(); ++i) out += r.value(i, 3) + " " + r.value(i, 5) + "\n";
  return out;
}

bool has_event(const Pgkeel& pk, const std::string& kind) {
  const PqResult r = pq_exec(pk.console_conninfo(), "SHOW EVENTS", 5s);
  for (std::size_t i = 0; i < r.rows.size(); ++i) {
    if (r.value(i, 3) == kind) return true;
  }
  return false;
}

std::string role_of(const Pgkeel& pk) {
  const PqResult r = pq_exec(pk.console_conninfo(), "SHOW PEERS", 5s);
  return r.value(0, 2);  // this instance's row comes first
}

int promotions(const Pgkeel& pk) {
  const PqResult r = pq_exec(pk.console_conninfo(), "SHOW EVENTS");
  int n = 0;
  for (std::size_t i = 0; i < r.rows.size(); ++i) n += r.value(i, 3) == "promotion" ? 1 : 0;
  return n;
}

}  // namespace

TEST_CASE("two instances through etcd: kill -9 of the primary, one failover, writes follow it through both",
          "[store][etcd][failover]") {
  EtcdCluster etcd;
  Cluster cluster(ClusterOptions{.standbys = 1, .sync = true});
  Pgkeel pk1(cluster, instance(etcd, "pk1", "/pgkeel/it1"));
  Pgkeel pk2(cluster, instance(etcd, "pk2", "/pgkeel/it1"));
  const std::string db1 = std::to_string(cluster.port("db1"));
  const std::string db2 = std::to_string(cluster.port("db2"));
  REQUIRE(eventually(30s, [&] { return writer_port(pk1) == db1 && writer_port(pk2) == db1; }, 100ms));
  CHECK(etcd.ctl({"get", "/pgkeel/it1/record", "--print-value-only"}).find("node=db1") != std::string::npos);
  // SHOW PEERS: both instances, this one first, exactly one leader, seen alike from both.
  auto peers = [](const Pgkeel& pk) {
    const PqResult r = pq_exec(pk.console_conninfo(), "SHOW PEERS");
    std::string out;
    for (std::size_t i = 0; i < r.rows.size(); ++i) out += r.value(i, 0) + ":" + r.value(i, 2) + ":" + r.value(i, 5) + " ";
    return out;
  };
  REQUIRE(eventually(15s, [&] {
    const std::string a = peers(pk1);
    const std::string b = peers(pk2);
    return (a == "pk1:leader:yes pk2:follower:yes " && b == "pk2:follower:yes pk1:leader:yes ") ||
           (a == "pk1:follower:yes pk2:leader:yes " && b == "pk2:leader:yes pk1:follower:yes ");
  }, 100ms));
  // The status page as a browser draws it: both instances, one leader; /metrics agrees.
  const RunResult dom = run({(fs::path(PGKEEL_SOURCE_DIR) / "tests" / "status" / "page.sh").string(), "dom",
                             pk1.status_url() + "/"},
                            {}, 60s);
  INFO(dom.output.substr(0, 2000));
  REQUIRE(dom.ok());
  CHECK(dom.output.find("data-instance=\"pk1\"") != std::string::npos);
  CHECK(dom.output.find("data-instance=\"pk2\"") != std::string::npos);
  CHECK(dom.output.find("data-role=\"leader\"") != std::string::npos);
  CHECK(dom.output.find("id=\"peers-section\" hidden") == std::string::npos);
  const HttpResponse metrics = http(pk1.status_port(), "GET", "/metrics");
  CHECK(metrics.body.find("pgkeel_store_peers 2") != std::string::npos);

  REQUIRE(::kill(cluster.pid("db1"), SIGKILL) == 0);
  REQUIRE(eventually(40s, [&] { return writer_port(pk1) == db2 && writer_port(pk2) == db2; }, 100ms));
  const std::string record = etcd.ctl({"get", "/pgkeel/it1/record", "--print-value-only"});
  INFO(record);
  CHECK(record.find("node=db2") != std::string::npos);
  CHECK(record.find("how=failover") != std::string::npos);
  // One instance decided, once; the other applied the fenced record before anything was promoted
  // (the leader waited for it), then the new one.
  CHECK(promotions(pk1) + promotions(pk2) == 1);
  const Pgkeel& follower = promotions(pk1) == 1 ? pk2 : pk1;
  const std::string seen = event_details(follower);
  INFO(seen);
  const std::size_t fenced = seen.find("how=fenced");
  REQUIRE(fenced != std::string::npos);
  CHECK(seen.find("node=db2", fenced) != std::string::npos);
  CHECK(seen.find("promotion") == std::string::npos);
  // Writes go through both.
  for (const Pgkeel* pk : {&pk1, &pk2}) {
    const PqResult w = pq_exec(pk->conninfo(), "CREATE TABLE IF NOT EXISTS store_it (n int); INSERT INTO store_it VALUES (1)");
    INFO(w.error);
    CHECK(w.ok);
  }
}

TEST_CASE("etcd over TLS with authentication: instances lead and follow; a wrong password is refused and said",
          "[store][etcd][tls][release-only]") {
  EtcdCluster etcd(EtcdOptions{.tls = true, .password = "etcd-s3cret"});
  Cluster cluster(ClusterOptions{.standbys = 1});
  const auto secured = [&](const std::string& name, const std::string& password) {
    PgkeelOptions o = instance(etcd, name, "/pgkeel/tls");
    o.extra_toml += "ca_file = \"" + etcd.ca_file().string() + "\"\nusername = \"pgkeel\"\npassword = \"" + password + "\"\n";
    return o;
  };
  REQUIRE(etcd.urls().front().rfind("https://", 0) == 0);
  Pgkeel pk1(cluster, secured("pk1", "etcd-s3cret"));
  Pgkeel pk2(cluster, secured("pk2", "etcd-s3cret"));
  const std::string db1 = std::to_string(cluster.port("db1"));
  REQUIRE(eventually(30s, [&] { return writer_port(pk1) == db1 && writer_port(pk2) == db1; }, 100ms));
  REQUIRE(eventually(15s, [&] {
    const std::string a = role_of(pk1);
    const std::string b = role_of(pk2);
    return (a == "leader" && b == "follower") || (a == "follower" && b == "leader");
  }, 100ms));
  CHECK(etcd.ctl({"get", "/pgkeel/tls/record", "--print-value-only"}).find("node=db1") != std::string::npos);
  // A wrong password: the instance never serves, and says why.
  Pgkeel wrong(cluster, secured("pk3", "not-the-password"));
  PqResult refused;
  REQUIRE(eventually(20s, [&] {
    refused = pq_exec(wrong.conninfo(), "SELECT 1", 5s);
    return !refused.ok && !refused.sqlstate.empty();
  }, 200ms));
  INFO(refused.error);
  CHECK(refused.sqlstate == "57P03");
  const std::string text = read_file(wrong.log_path());
  CHECK(text.find("authentication failed") != std::string::npos);
}

TEST_CASE("two of three etcd members stopped under a ledger writer: no failover, writes stop with 57P03, "
          "then resume with nothing lost and no client reset",
          "[store][etcd][cut][release-only]") {
  EtcdCluster etcd;
  Cluster cluster(ClusterOptions{.standbys = 1, .sync = true});
  Pgkeel pk(cluster, instance(etcd, "pk1", "/pgkeel/it2"));
  const std::string db1 = std::to_string(cluster.port("db1"));
  REQUIRE(eventually(30s, [&] { return writer_port(pk) == db1; }, 100ms));
  const std::string record_before = etcd.ctl({"get", "/pgkeel/it2/record", "--print-value-only"});
  // An idle session from before: it outlives the outage without a reconnect.
  PqSession idle(pk.conninfo());
  REQUIRE(idle.connected());
  REQUIRE(idle.exec("SET application_name = 'from before the outage'").ok);
  const std::string ledger = (fs::path(PGKEEL_BINARY_DIR) / "pgkeel-ledger").string();
  const RunResult setup = run({ledger, "setup", "--conninfo", pk.conninfo()});
  INFO(setup.output);
  REQUIRE(setup.ok());
  const std::string out = (pk.dir() / "ledger.json").string();
  RunResult load;
  std::thread writer([&] {
    load = run({ledger, "run", "--conninfo", pk.conninfo(), "--clients", "2", "--duration", "14", "--out", out}, {}, 120s);
  });
  const auto rows = [&] { return std::stol(cluster.psql_as_postgres("db1", "SELECT count(*) FROM pgkeel_ledger", "app")); };
  const bool loaded = eventually(20s, [&] { return rows() > 300; });
  // Quorum lost: no renewal can succeed, no record can change.
  etcd.kill(1);
  etcd.kill(2);
  PqResult refused;
  const bool cut = eventually(20s, [&] {
    refused = pq_exec(pk.conninfo(), "SELECT 1", 5s);
    return !refused.ok;
  }, 100ms);
  // While it lasts the primary takes no write through pgkeel (the README's rule).
  long during = 0;
  HttpResponse ready;
  if (cut) {
    // A load balancer's (or keepalived's) check sends clients elsewhere.
    ready = http(pk.status_port(), "GET", "/ready");
    std::this_thread::sleep_for(1s);
    during = rows();
    std::this_thread::sleep_for(3s);
    during = rows() - during;
  }
  etcd.start(1);
  etcd.start(2);
  writer.join();
  REQUIRE(loaded);
  REQUIRE(cut);
  CHECK(refused.sqlstate == "57P03");
  CHECK(refused.error.find("cannot renew its lease in etcd") != std::string::npos);
  CHECK(during == 0);
  CHECK(ready.code == 503);
  CHECK(ready.body.find("cannot renew its lease in etcd") != std::string::npos);
  REQUIRE(eventually(40s, [&] { return writer_port(pk) == db1; }, 200ms));
  CHECK(http(pk.status_port(), "GET", "/ready").code == 200);
  // No failover was recorded, and the writer went on once etcd was back, losing nothing.
  CHECK(promotions(pk) == 0);
  CHECK(etcd.ctl({"get", "/pgkeel/it2/record", "--print-value-only"}) == record_before);
  INFO(load.output);
  CHECK(load.ok());
  const RunResult verify = run({ledger, "verify", "--conninfo", pk.conninfo(), "--in", out});
  INFO(verify.output);
  CHECK(verify.output.find("lost (acknowledged, missing): 0") != std::string::npos);
  std::printf("store: quorum lost under the ledger writer: %ld rows written in 3 s of it; %s\n", during,
              verify.ok() ? "verified" : "NOT verified");
  // The session from before goes on, with its settings, on a new server connection.
  const PqResult again = idle.exec("SELECT current_setting('application_name'), current_setting('port')");
  INFO(again.error);
  REQUIRE(again.ok);
  CHECK(again.value(0, 0) == "from before the outage");
  CHECK(again.value(0, 1) == db1);
}

TEST_CASE("etcd members going and coming one at a time (quorum kept) cost clients nothing", "[store][etcd][blip][release-only]") {
  EtcdCluster etcd;
  Cluster cluster(ClusterOptions{.standbys = 1});
  // The default TTL: an etcd leader election (about a second) fits in it many times over.
  Pgkeel pk(cluster, instance(etcd, "pk1", "/pgkeel/it6", {}, "10s"));
  const std::string db1 = std::to_string(cluster.port("db1"));
  REQUIRE(eventually(30s, [&] { return writer_port(pk) == db1; }, 100ms));
  PqSession session(pk.conninfo());
  REQUIRE(session.connected());
  // The server backend under the session (session pooling: one for as long as nothing cuts it).
  const std::string pid = session.exec("SELECT pg_backend_pid()").value(0, 0);
  REQUIRE_FALSE(pid.empty());
  for (int member = 1; member <= 3; ++member) {
    etcd.kill(member);
    // The other two serve: a write to etcd goes through (a new leader elected if need be).
    REQUIRE(eventually(20s, [&] {
      try {
        etcd.ctl({"put", "/pgkeel/it6/probe", std::to_string(member)});
        return true;
      } catch (const std::exception&) {
        return false;
      }
    }, 200ms));
    const PqResult r = session.exec("SELECT 1");
    INFO(r.error);
    CHECK(r.ok);
    etcd.start(member);
    // Back in the cluster before the next one goes, so two always serve.
    REQUIRE(eventually(30s, [&] {
      return run({"etcdctl", "--endpoints", etcd.urls()[static_cast<std::size_t>(member - 1)], "--command-timeout", "2s",
                  "endpoint", "health"},
                 {{"ETCDCTL_API", "3"}}, 10s)
          .ok();
    }, 200ms));
  }
  // Same server backend all along: nothing was cut, and the instance never stopped serving.
  CHECK(session.exec("SELECT pg_backend_pid()").value(0, 0) == pid);
  CHECK_FALSE(has_event(pk, "store_lost"));
  CHECK(writer_port(pk) == db1);
}

TEST_CASE("the leader instance is killed (kill -9) during a failover: the other finishes it once the lease is gone",
          "[store][etcd][leader-kill][release-only]") {
  EtcdCluster etcd;
  Cluster cluster(ClusterOptions{.standbys = 1, .sync = true});
  // A fence command that takes a while holds the leader inside the failover, before anything is
  // cut or recorded, long enough to kill it there.
  const std::string slow_fence = "fence_command = \"sleep 3\"";
  Pgkeel pk1(cluster, instance(etcd, "pk1", "/pgkeel/it3", slow_fence));
  Pgkeel pk2(cluster, instance(etcd, "pk2", "/pgkeel/it3", slow_fence));
  const std::string db1 = std::to_string(cluster.port("db1"));
  const std::string db2 = std::to_string(cluster.port("db2"));
  REQUIRE(eventually(30s, [&] { return writer_port(pk1) == db1 && writer_port(pk2) == db1; }, 100ms));
  REQUIRE(eventually(15s, [&] { return (role_of(pk1) == "leader") != (role_of(pk2) == "leader"); }, 100ms));
  Pgkeel& leader = role_of(pk1) == "leader" ? pk1 : pk2;
  Pgkeel& other = role_of(pk1) == "leader" ? pk2 : pk1;

  REQUIRE(::kill(cluster.pid("db1"), SIGKILL) == 0);
  REQUIRE(eventually(20s, [&] { return has_event(leader, "failover_started"); }, 50ms));
  leader.signal(SIGKILL);
  // The other instance waits for the dead leader's lease, takes the lead, and fails over itself.
  REQUIRE(eventually(60s, [&] { return writer_port(other) == db2; }, 200ms));
  CHECK(role_of(other) == "leader");
  CHECK(promotions(other) == 1);
  const std::string record = etcd.ctl({"get", "/pgkeel/it3/record", "--print-value-only"});
  INFO(record);
  CHECK(record.find("node=db2") != std::string::npos);
  CHECK(record.find("how=failover") != std::string::npos);
  const PqResult w = pq_exec(other.conninfo(), "CREATE TABLE IF NOT EXISTS store_it (n int); INSERT INTO store_it VALUES (2)");
  INFO(w.error);
  CHECK(w.ok);
}

TEST_CASE("a clean stop hands leadership and the lease over at once", "[store][etcd][stop]") {
  EtcdCluster etcd;
  Cluster cluster(ClusterOptions{.standbys = 1});
  Pgkeel pk1(cluster, instance(etcd, "pk1", "/pgkeel/it4"));
  Pgkeel pk2(cluster, instance(etcd, "pk2", "/pgkeel/it4"));
  const std::string db1 = std::to_string(cluster.port("db1"));
  REQUIRE(eventually(30s, [&] { return writer_port(pk1) == db1 && writer_port(pk2) == db1; }, 100ms));
  REQUIRE(eventually(15s, [&] { return (role_of(pk1) == "leader") != (role_of(pk2) == "leader"); }, 100ms));
  Pgkeel& leader = role_of(pk1) == "leader" ? pk1 : pk2;
  Pgkeel& other = role_of(pk1) == "leader" ? pk2 : pk1;
  const std::string gone = role_of(pk1) == "leader" ? "pk1" : "pk2";
  leader.stop();  // SIGTERM: a clean stop
  // Its instance key and its leader key went with its lease as it exited, not a TTL later.
  const std::string keys = etcd.ctl({"get", "--prefix", "--keys-only", "/pgkeel/it4/"});
  INFO(keys);
  CHECK(keys.find("/instances/" + gone) == std::string::npos);
  CHECK(etcd.ctl({"get", "/pgkeel/it4/leader", "--print-value-only"}).find(gone) == std::string::npos);
  REQUIRE(eventually(15s, [&] { return role_of(other) == "leader"; }, 100ms));
  CHECK(writer_port(other) == db1);  // nothing else changed
}

TEST_CASE("two instances, a ledger writer through each: kill -9 of the primary loses no acknowledged row",
          "[store][etcd][ledger][release-only]") {
  EtcdCluster etcd;
  Cluster cluster(ClusterOptions{.standbys = 1, .sync = true});
  Pgkeel pk1(cluster, instance(etcd, "pk1", "/pgkeel/it5"));
  Pgkeel pk2(cluster, instance(etcd, "pk2", "/pgkeel/it5"));
  const std::string db1 = std::to_string(cluster.port("db1"));
  const std::string db2 = std::to_string(cluster.port("db2"));
  REQUIRE(eventually(30s, [&] { return writer_port(pk1) == db1 && writer_port(pk2) == db1; }, 100ms));
  const std::string ledger = (fs::path(PGKEEL_BINARY_DIR) / "pgkeel-ledger").string();
  REQUIRE(fs::exists(ledger));
  const RunResult setup = run({ledger, "setup", "--conninfo", pk1.conninfo()});
  INFO(setup.output);
  REQUIRE(setup.ok());
  // Each run takes its own run number, so the two writers' ids never meet.
  const std::string out1 = (pk1.dir() / "ledger.json").string();
  const std::string out2 = (pk2.dir() / "ledger.json").string();
  RunResult load1;
  RunResult load2;
  std::thread w1([&] { load1 = run({ledger, "run", "--conninfo", pk1.conninfo(), "--clients", "2", "--duration", "8", "--out", out1}, {}, 120s); });
  std::thread w2([&] { load2 = run({ledger, "run", "--conninfo", pk2.conninfo(), "--clients", "2", "--duration", "8", "--out", out2}, {}, 120s); });
  const bool loaded = eventually(20s, [&] {
    return std::stol(cluster.psql_as_postgres("db1", "SELECT count(*) FROM pgkeel_ledger", "app")) > 1000;
  });
  if (loaded) REQUIRE(::kill(cluster.pid("db1"), SIGKILL) == 0);
  w1.join();
  w2.join();
  REQUIRE(loaded);
  INFO(load1.output);
  INFO(load2.output);
  CHECK(load1.ok());
  CHECK(load2.ok());
  REQUIRE(eventually(40s, [&] { return writer_port(pk1) == db2 && writer_port(pk2) == db2; }, 100ms));
  CHECK(promotions(pk1) + promotions(pk2) == 1);
  for (const auto& [pk, out] : {std::pair<const Pgkeel*, std::string>{&pk1, out1}, {&pk2, out2}}) {
    const RunResult verify = run({ledger, "verify", "--conninfo", pk->conninfo(), "--in", out});
    INFO(verify.output);
    CHECK(verify.ok());
    CHECK(verify.output.find("lost (acknowledged, missing): 0") != std::string::npos);
    CHECK(verify.output.find("duplicated ids:               0") != std::string::npos);
    const auto lost = verify.output.find("lost (acknowledged, missing):");
    std::printf("store: ledger through %s: %s\n", pk == &pk1 ? "pk1" : "pk2",
                lost == std::string::npos ? "(no verdict)"
                                          : verify.output.substr(lost, verify.output.find('\n', lost) - lost).c_str());
  }
}

namespace {

std::vector<long> acknowledged_ids(const fs::path& file) {
  std::vector<long> out;
  std::ifstream in(file);
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty()) out.push_back(std::stol(line));
  }
  return out;
}

}  // namespace

TEST_CASE("pgJDBC's multi-host URL: a writer loop goes on across pgkeel instances killed and restarted",
          "[store][etcd][jdbc][release-only]") {
  EtcdCluster etcd;
  Cluster cluster(ClusterOptions{.standbys = 1});
  Pgkeel pk1(cluster, instance(etcd, "pk1", "/pgkeel/it7"));
  Pgkeel pk2(cluster, instance(etcd, "pk2", "/pgkeel/it7"));
  const std::string db1 = std::to_string(cluster.port("db1"));
  REQUIRE(eventually(30s, [&] { return writer_port(pk1) == db1 && writer_port(pk2) == db1; }, 100ms));
  const PqResult table = pq_exec(pk1.conninfo(), "CREATE TABLE jdbc_multihost (id bigint PRIMARY KEY)");
  INFO(table.error);
  REQUIRE(table.ok);

  const char* jar_env = std::getenv("PGJDBC_JAR");
  const std::string jar = jar_env != nullptr ? jar_env : "/usr/share/java/postgresql.jar";  // Debian's, as jdbc_tls_test
  const fs::path classes = pk2.dir() / "classes";
  fs::create_directories(classes);
  const RunResult javac = run({"javac", "-cp", jar, "-d", classes.string(),
                               (fs::path(PGKEEL_SOURCE_DIR) / "tests" / "jdbc" / "MultiHostWriter.java").string()},
                              {}, 180s);
  INFO(javac.output);
  REQUIRE(javac.ok());
  const std::string url = "jdbc:postgresql://127.0.0.1:" + std::to_string(pk1.port()) + ",127.0.0.1:" +
                          std::to_string(pk2.port()) + "/app?targetServerType=primary";
  const fs::path acks = pk2.dir() / "acks.txt";
  RunResult writer;
  std::thread loop([&] {
    writer = run({"java", "-cp", classes.string() + ":" + jar, "MultiHostWriter", url, std::string(kAppUser),
                  std::string(kAppPassword), "25", acks.string()},
                 {}, 120s);
  });
  auto grows_by = [&](std::size_t n) {
    const std::size_t from = acknowledged_ids(acks).size();
    return eventually(20s, [&] { return acknowledged_ids(acks).size() >= from + n; }, 50ms);
  };
  const bool started = eventually(30s, [&] { return acknowledged_ids(acks).size() >= 20; }, 50ms);
  bool through_pk2 = false;
  bool through_pk1 = false;
  if (started) {
    // The first host of the URL dies: the driver moves on to the second.
    pk1.signal(SIGKILL);
    REQUIRE(eventually(10s, [&] { return !pk1.running(); }));
    through_pk2 = grows_by(20);
    // It comes back, and the second dies: back to the first.
    pk1.start();
    REQUIRE(eventually(30s, [&] { return writer_port(pk1) == db1; }, 100ms));
    pk2.signal(SIGKILL);
    REQUIRE(eventually(10s, [&] { return !pk2.running(); }));
    through_pk1 = grows_by(20);
  }
  loop.join();
  REQUIRE(started);
  INFO(writer.output);
  CHECK(writer.ok());
  CHECK(through_pk2);
  CHECK(through_pk1);
  // Every acknowledged row is there (ids are a primary key: once).
  const std::vector<long> ids = acknowledged_ids(acks);
  std::string list;
  for (long id : ids) list += (list.empty() ? "" : ",") + std::to_string(id);
  const PqResult present = pq_exec(pk1.conninfo(), "SELECT count(*) FROM jdbc_multihost WHERE id = ANY('{" + list + "}'::bigint[])");
  INFO(present.error);
  CHECK(present.scalar() == std::to_string(ids.size()));
  std::printf("store: pgJDBC multi-host writer: %s", writer.output.c_str());
}
