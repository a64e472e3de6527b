#include <catch2/catch.hpp>

#include "routing/router.h"

using namespace pgkeel::routing;

namespace {
Snapshot two_nodes() {
  Snapshot s;
  s.epoch = 7;
  s.nodes.push_back({0, "db1", "127.0.0.1", 5433, Role::kPrimary, false, true});
  s.nodes.push_back({1, "db2", "127.0.0.1", 5434, Role::kStandby, false, true});
  s.writer = 0;
  return s;
}
}  // namespace

TEST_CASE("writes go to the snapshot's writer", "[routing]") {
  const Snapshot s = two_nodes();
  auto d = choose_node(s, {Intent::kReadWrite});
  REQUIRE(std::holds_alternative<Route>(d));
  CHECK(std::get<Route>(d).node == 0);
}

TEST_CASE("writes are refused when there is no writer, or it is fenced or disabled", "[routing]") {
  Snapshot s = two_nodes();
  SECTION("no writer") {
    s.writer.reset();
    CHECK(std::get<NoRoute>(choose_node(s, {Intent::kReadWrite})).why == "no writable primary in the routing table");
  }
  SECTION("fenced") {
    s.nodes[0].fenced = true;
    CHECK(std::get<NoRoute>(choose_node(s, {Intent::kReadWrite})).why == "the primary is fenced");
  }
  SECTION("disabled") {
    s.nodes[0].enabled = false;
    CHECK(std::holds_alternative<NoRoute>(choose_node(s, {Intent::kReadWrite})));
  }
  SECTION("writer index out of range") {
    s.writer = 9;
    CHECK(std::holds_alternative<NoRoute>(choose_node(s, {Intent::kReadWrite})));
  }
}

TEST_CASE("reads prefer a standby and fall back to the primary", "[routing]") {
  Snapshot s = two_nodes();
  CHECK(std::get<Route>(choose_node(s, {Intent::kReadOnly})).node == 1);
  s.nodes[1].fenced = true;
  CHECK(std::get<Route>(choose_node(s, {Intent::kReadOnly})).node == 0);
}

TEST_CASE("publishing a snapshot advances the epoch by one", "[routing]") {
  Table t(two_nodes());
  CHECK(t.epoch() == 7);
  Snapshot next = two_nodes();
  next.writer = 1;
  CHECK(t.publish(next) == 8);
  CHECK(t.epoch() == 8);
  CHECK(t.current()->writer == 1u);
}

namespace {
// db1 primary, db2 and db3 standbys, every one up and caught up.
Snapshot three_nodes() {
  Snapshot s = two_nodes();
  s.nodes.push_back({2, "db3", "127.0.0.1", 5435, Role::kStandby, false, true});
  return s;
}

std::vector<NodeLoad> caught_up(std::size_t n) {
  std::vector<NodeLoad> loads(n);
  for (NodeLoad& l : loads) {
    l.up = true;
    l.replay_lsn = 1000;
  }
  return loads;
}

RouteRequest read_request(const std::vector<NodeLoad>& loads, std::uint32_t spread = 0) {
  RouteRequest r;
  r.intent = Intent::kReadOnly;
  r.loads = loads;
  r.read.max_lag_bytes = 100;
  r.read.max_lag_seconds = 5;
  r.spread = spread;
  return r;
}

NodeId routed(const Snapshot& s, const RouteRequest& r) {
  const Decision d = choose_node(s, r);
  REQUIRE(std::holds_alternative<Route>(d));
  return std::get<Route>(d).node;
}
}  // namespace

TEST_CASE("reads go to the least busy standby and spread over equally busy ones", "[routing][reads]") {
  const Snapshot s = three_nodes();
  std::vector<NodeLoad> loads = caught_up(3);
  loads[1].busy = 4;
  loads[2].busy = 1;
  CHECK(routed(s, read_request(loads)) == 2);
  loads[1].busy = 1;
  int to_db2 = 0;
  int to_db3 = 0;
  for (std::uint32_t spread = 0; spread < 100; ++spread) {
    const NodeId n = routed(s, read_request(loads, spread));
    CHECK(n != 0);
    (n == 1 ? to_db2 : to_db3) += 1;
  }
  CHECK(to_db2 == 50);
  CHECK(to_db3 == 50);
}

TEST_CASE("a standby that is down or lagging takes no reads until it is fit again", "[routing][reads]") {
  const Snapshot s = three_nodes();
  std::vector<NodeLoad> loads = caught_up(3);
  std::string_view why;
  SECTION("down") {
    loads[1].up = false;
    CHECK_FALSE(fit_for_reads(s.nodes[1], read_request(loads), why));
    CHECK(why == "not answering probes");
    CHECK(routed(s, read_request(loads)) == 2);
  }
  SECTION("behind in bytes") {
    loads[1].lag_bytes = 101;
    CHECK_FALSE(fit_for_reads(s.nodes[1], read_request(loads), why));
    CHECK(why == "lagging (max_replica_lag_bytes)");
    CHECK(routed(s, read_request(loads)) == 2);
    loads[1].lag_bytes = 100;  // the limit itself is fit
    CHECK(fit_for_reads(s.nodes[1], read_request(loads), why));
  }
  SECTION("behind in time") {
    loads[2].lag_seconds = 5.5;
    CHECK_FALSE(fit_for_reads(s.nodes[2], read_request(loads), why));
    CHECK(routed(s, read_request(loads)) == 1);
  }
  SECTION("no limits set: lag does not matter") {
    loads[1].lag_bytes = 1u << 30;
    loads[1].lag_seconds = 3600;
    RouteRequest r = read_request(loads);
    r.read = ReadPolicy{};
    CHECK(fit_for_reads(s.nodes[1], r, why));
  }
  SECTION("promoted, fenced, disabled or retired nodes are not standbys for reads") {
    Snapshot t = s;
    t.nodes[1].role = Role::kPrimary;
    t.nodes[2].fenced = true;
    CHECK(routed(t, read_request(loads)) == 0);
    t.nodes[2].fenced = false;
    t.nodes[2].enabled = false;
    CHECK(routed(t, read_request(loads)) == 0);
    t.nodes[2].enabled = true;
    t.nodes[2].retired = true;
    CHECK(routed(t, read_request(loads)) == 0);
  }
}

TEST_CASE("with no standby fit, reads fall back to the primary or are refused, by the setting", "[routing][reads]") {
  Snapshot s = three_nodes();
  std::vector<NodeLoad> loads = caught_up(3);
  loads[1].lag_bytes = 1000;
  loads[2].up = false;
  RouteRequest r = read_request(loads);
  CHECK(routed(s, r) == 0);
  r.read.fallback_to_primary = false;
  const Decision d = choose_node(s, r);
  REQUIRE(std::holds_alternative<NoRoute>(d));
  CHECK(std::get<NoRoute>(d).why == "no standby fit for reads (read_fallback = refuse)");
  SECTION("a fenced primary does not take the fallback") {
    r.read.fallback_to_primary = true;
    s.nodes[0].fenced = true;
    CHECK(std::holds_alternative<NoRoute>(choose_node(s, r)));
  }
}

TEST_CASE("read-your-writes: only a standby that replayed the session's commit serves, else the primary", "[routing][reads]") {
  const Snapshot s = three_nodes();
  std::vector<NodeLoad> loads = caught_up(3);
  loads[1].replay_lsn = 2000;
  RouteRequest r = read_request(loads);
  r.min_replay_lsn = 1500;
  CHECK(routed(s, r) == 1);
  r.min_replay_lsn = 2500;
  const Decision d = choose_node(s, r);
  REQUIRE(std::holds_alternative<Route>(d));
  CHECK(std::get<Route>(d).node == 0);
  CHECK(std::get<Route>(d).why == "the primary: no standby has replayed the session's last commit");
}

TEST_CASE("a raised floor keeps epochs from going backwards across restarts", "[routing][epoch]") {
  Table t{Snapshot{}};
  CHECK(t.publish(Snapshot{}) == 1u);
  t.raise_floor(7);
  CHECK(t.epoch() == 1u);  // nothing published yet
  CHECK(t.publish(Snapshot{}) == 8u);
  t.raise_floor(3);  // never lowers it
  CHECK(t.publish(Snapshot{}) == 9u);
}
