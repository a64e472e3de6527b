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
