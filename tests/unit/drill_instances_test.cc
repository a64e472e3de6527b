// The drill's multi-instance mode: --instance specs, the load's multi-host conninfo, etcd ports,
// the kill-proxy and partition-proxy faults, and what their verdict asks of them (no promotion,
// the instance back afterwards).
#include <catch2/catch.hpp>

#include "tools/drill/html.h"
#include "tools/drill/plan.h"
#include "tools/drill/report.h"
#include "tools/ledger/json.h"

using namespace pgkeel::drill;
using pgkeel::ledger::EventKind;
using pgkeel::ledger::Phase;

namespace {

// Two instances, writes every 10 ms for 10 s through pk1 and then pk2: the leader pk1 is killed
// at 4000 ms, the clients move to pk2 within 30 ms; pk1 is started again and serves at 5200 ms.
Recording kill_proxy_at_4s() {
  Recording r;
  r.started_at_unix_ms = 1'700'000'000'000;
  r.elapsed_ms = 10'000;
  r.clients = 1;
  r.sync = true;
  r.id_base = 3 * pgkeel::ledger::kRunStride;
  r.run = 3;
  std::int64_t seq = 0;
  for (std::int64_t t = 10; t < 10'000; t += 10) {
    if (t > 4000 && t <= 4030) continue;
    ++seq;
    r.ops.push_back({t, 800, OpKind::kWriteAck});
    pgkeel::ledger::append_event(r.writes,
                                 {0, EventKind::kAcknowledged, Phase::kCommit, "", seq, t}, 10);
  }
  Fault f;
  f.kind = FaultKind::kKillProxy;
  f.at_ms = 4000;
  r.faults.push_back({.fault = f,
                      .t_ms = 4000,
                      .target = "pk1",
                      .injected = true,
                      .detail = "kill -9 of pgkeel instance pk1 (the store leader) (pid 4242)",
                      .hit_writer = false,
                      .effect_seen = true,
                      .effect = "pgkeel pk1 (pid 4242) is gone 2 ms after the kill",
                      .hit_leader = true,
                      .back_seen = true,
                      .back = "pk1 serves again 1200 ms after the kill (pid 4300)"});
  r.events = {{1000, 1, "store", "", "leader pk1", "pk1"},
              {7100, 1, "store", "", "leader pk2", "pk2"}};
  pgkeel::ledger::Verdict v;
  v.acknowledged = seq;
  v.rows_read = seq;
  r.verdict = v;
  return r;
}

std::string failures_of(const Summary& s) {
  std::string out;
  for (const auto& f : s.failures) out += f + "\n";
  return out;
}

}  // namespace

TEST_CASE(
    "kill-proxy and partition-proxy are parsed like the other faults, node= naming the instance",
    "[drill]") {
  std::string error;
  auto k = parse_fault("kill-proxy@5s", error);
  REQUIRE(k);
  CHECK(k->kind == FaultKind::kKillProxy);
  CHECK(k->at_ms == 5000);
  CHECK(k->node.empty());  // the store leader
  k = parse_fault("kill-proxy@2.5s:node=pk2", error);
  REQUIRE(k);
  CHECK(k->node == "pk2");
  auto p = parse_fault("partition-proxy@10s:for=6s", error);
  REQUIRE(p);
  CHECK(p->kind == FaultKind::kPartitionProxy);
  CHECK(p->for_ms == 6000);
  p = parse_fault("partition-proxy@10s:node=pk1,for=4s", error);
  REQUIRE(p);
  CHECK(p->node == "pk1");
  CHECK(is_proxy_fault(FaultKind::kKillProxy));
  CHECK(is_proxy_fault(FaultKind::kPartitionProxy));
  CHECK_FALSE(is_proxy_fault(FaultKind::kRestartProxy));
  CHECK(to_string(FaultKind::kPartitionProxy) == "partition-proxy");

  SECTION("a kill-proxy is started again at once: it takes no for=") {
    CHECK_FALSE(parse_fault("kill-proxy@5s:for=3s", error));
    CHECK(error.find("takes no for=") != std::string::npos);
  }
  SECTION("an unknown kind lists the new ones") {
    CHECK_FALSE(parse_fault("kill-proxies@5s", error));
    CHECK(error.find("kill-proxy, partition-proxy") != std::string::npos);
  }
}

TEST_CASE("--instance specs: the listener, then the console, pid file and namespace", "[drill]") {
  std::string error;
  auto i = parse_instance("pk1=127.0.0.1:6432", error);
  REQUIRE(i);
  CHECK(i->name == "pk1");
  CHECK(i->host == "127.0.0.1");
  CHECK(i->port == 6432);
  CHECK(i->console_port == 0);
  i = parse_instance("pk2=10.231.4.200:7001,console=7002,pidfile=/srv/pk2.pid,netns=pk-ns2", error);
  REQUIRE(i);
  CHECK(i->console_host.empty());  // the listener's host
  CHECK(i->console_port == 7002);
  CHECK(i->pidfile == "/srv/pk2.pid");
  CHECK(i->netns == "pk-ns2");
  i = parse_instance("pk3=127.0.0.1:7001,console=127.0.0.2:7003", error);
  REQUIRE(i);
  CHECK(i->console_host == "127.0.0.2");
  CHECK(i->console_port == 7003);

  for (const char* bad :
       {"pk1", "=127.0.0.1:1", "pk1=127.0.0.1", "pk1=127.0.0.1:x", "pk1=:5", "pk1=h:70000",
        "pk1=h:1,console=", "pk1=h:1,console=h:0", "pk1=h:1,color=red"}) {
    INFO(bad);
    error.clear();
    CHECK_FALSE(parse_instance(bad, error));
    CHECK_FALSE(error.empty());
  }
}

TEST_CASE("the load's conninfo names every instance, for a read-write session", "[drill]") {
  const std::vector<InstanceRef> two = {{"pk1", "127.0.0.1", 6432}, {"pk2", "10.0.0.2", 7001}};
  CHECK(multi_host_conninfo("user=app password=p dbname=app", two) ==
        "user=app password=p dbname=app host=127.0.0.1,10.0.0.2 port=6432,7001 "
        "target_session_attrs=read-write");
  CHECK(multi_host_conninfo("", two) ==
        "host=127.0.0.1,10.0.0.2 port=6432,7001 target_session_attrs=read-write");
}

TEST_CASE("etcd's client ports come from its endpoints, each once", "[drill]") {
  std::string error;
  CHECK(parse_endpoint_ports("http://127.0.0.1:2379,http://127.0.0.1:2381,http://10.0.0.1:2379/",
                             error) == std::vector<int>{2379, 2381});
  CHECK(error.empty());
  CHECK(parse_endpoint_ports("http://127.0.0.1", error).empty());
  CHECK(error.find("names no port") != std::string::npos);
}

TEST_CASE(
    "a fault of a pgkeel instance asks for no detection or pause, forbids a promotion, wants it "
    "back",
    "[drill][verdict]") {
  for (auto kind : {FaultKind::kKillProxy, FaultKind::kPartitionProxy}) {
    for (bool writer : {false, true}) {
      const Expectation e = expected_effects(kind, writer);
      CHECK_FALSE(e.detection);
      CHECK_FALSE(e.promotion);
      CHECK_FALSE(e.write_gap);
      CHECK(e.no_promotion);
      CHECK(e.back);
    }
  }
  CHECK_FALSE(expected_effects(FaultKind::kKill, true).no_promotion);
  CHECK_FALSE(expected_effects(FaultKind::kRestartProxy, false).back);
}

TEST_CASE("kill-proxy of the leader: passes when the primary stays, fails on a promotion",
          "[drill][verdict]") {
  Recording r = kill_proxy_at_4s();
  SECTION("nothing promoted, the instance back: PASSED, the brief pause measured") {
    const Summary s = summarize(r, {});
    INFO(failures_of(s));
    CHECK(s.passed());
    REQUIRE(s.faults.size() == 1);
    CHECK(s.faults[0].downtime_ms == 40);
    CHECK_FALSE(s.faults[0].promoted_ms);
  }
  SECTION("a promotion after the kill (on any instance) fails the run") {
    r.events.push_back({6500, 2, "promotion", "db2", "writes go to db2", "pk2"});
    const Summary s = summarize(r, {});
    REQUIRE(s.failures.size() == 1);
    CHECK(s.failures[0] ==
          "fault kill-proxy at 4000 ms on pk1: pgkeel promoted a standby 2500 ms after it (SHOW "
          "EVENTS); a fault of a "
          "pgkeel instance must not move the primary");
  }
  SECTION("a promotion before the kill is not the kill's") {
    r.events.push_back({2500, 2, "promotion", "db2", "writes go to db2", "pk1"});
    CHECK(summarize(r, {}).passed());
  }
  SECTION("an instance that did not come back fails the run with what the drill saw") {
    r.faults[0].back_seen = false;
    r.faults[0].back =
        "pk1 did not serve within 30000 ms of its start command: login: connection refused";
    const Summary s = summarize(r, {});
    REQUIRE(s.failures.size() == 1);
    CHECK(s.failures[0] ==
          "fault kill-proxy at 4000 ms on pk1: the instance did not serve again: pk1 did not serve "
          "within 30000 ms of its start command: login: connection refused");
  }
  SECTION("a process that survived its kill fails the run") {
    r.faults[0].effect_seen = false;
    r.faults[0].effect = "pgkeel pk1 (pid 4242) is still running 5000 ms after kill -9";
    CHECK(failures_of(summarize(r, {})).find("did not take effect") != std::string::npos);
  }
  SECTION("a partition-proxy whose instance never refused logins fails the run") {
    r.faults[0].fault.kind = FaultKind::kPartitionProxy;
    r.faults[0].effect_seen = false;
    r.faults[0].effect =
        "pk1 did not refuse logins with 57P03 within 6000 ms of the cut (it still takes logins)";
    const Summary s = summarize(r, {});
    REQUIRE(s.failures.size() == 1);
    CHECK(s.failures[0].find("fault partition-proxy at 4000 ms on pk1 did not take effect") == 0);
  }
}

TEST_CASE("the report names the instance of each event and of each proxy fault", "[drill]") {
  Recording r = kill_proxy_at_4s();
  const Summary s = summarize(r, {});
  const std::string text = to_json(r, s);
  pgkeel::ledger::json::Reader reader(text);
  const auto v = reader.parse();
  REQUIRE(v);
  const auto& events = v->find("events")->items;
  REQUIRE(events.size() == 2);
  CHECK(events[0].find("instance")->string == "pk1");
  CHECK(events[1].find("instance")->string == "pk2");
  const auto& f = v->find("faults")->items.at(0);
  CHECK(f.find("kind")->string == "kill-proxy");
  CHECK(f.find("target")->string == "pk1");
  CHECK(f.find("hit_leader")->boolean);
  CHECK(f.find("back_seen")->boolean);
  CHECK(f.find("expected")->find("no_promotion")->boolean);
  const std::string html = to_html(r, s);
  CHECK(html.find("<th>instance</th>") != std::string::npos);
  CHECK(html.find("the store leader; pk1 serves again") != std::string::npos);
}
