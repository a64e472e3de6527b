// Tests for conf/reload.h: a reloaded configuration keeps every listener's and node's index, and
// removed entries stay as retired ones so nothing that still refers to them breaks.

#include <catch2/catch.hpp>
#include <cstddef>
#include <string>
#include <vector>

#include "conf/reload.h"

namespace {

using pgkeel::conf::Config;
using pgkeel::conf::ListenerConfig;
using pgkeel::conf::NodeConfig;
using pgkeel::conf::SlotPlan;

ListenerConfig listener(const std::string& name, std::uint16_t port) {
  ListenerConfig l;
  l.name = name;
  l.port = port;
  return l;
}

NodeConfig node(const std::string& name, std::uint16_t port) {
  NodeConfig n;
  n.name = name;
  n.host = "127.0.0.1";
  n.port = port;
  return n;
}

std::vector<std::string> names(const std::vector<ListenerConfig>& ls) {
  std::vector<std::string> out;
  for (const ListenerConfig& l : ls) out.push_back(l.name + (l.retired ? "(retired)" : ""));
  return out;
}

std::vector<std::string> names(const std::vector<NodeConfig>& ns) {
  std::vector<std::string> out;
  for (const NodeConfig& n : ns) out.push_back(n.name + ":" + std::to_string(n.port) + (n.retired ? "(retired)" : ""));
  return out;
}

using Names = std::vector<std::string>;
using Indices = std::vector<std::size_t>;

Config running_config() {
  Config c;
  c.listeners = {listener("rw", 6432), listener("ro", 6433)};
  c.nodes = {node("db1", 5501), node("db2", 5502)};
  return c;
}

}  // namespace

TEST_CASE("an unchanged file keeps every index and changes nothing", "[conf][reload]") {
  const Config running = running_config();
  Config next = running_config();
  std::swap(next.listeners[0], next.listeners[1]);  // order in the file does not matter
  std::swap(next.nodes[0], next.nodes[1]);
  SlotPlan plan;
  CHECK(align_slots(running, next, 32, 32, plan).empty());
  CHECK(names(next.listeners) == Names{"rw", "ro"});
  CHECK(names(next.nodes) == Names{"db1:5501", "db2:5502"});
  CHECK_FALSE(plan.listeners_changed());
  CHECK_FALSE(plan.nodes_changed());
}

TEST_CASE("added listeners and nodes take the next indices", "[conf][reload]") {
  const Config running = running_config();
  Config next = running_config();
  next.listeners.insert(next.listeners.begin(), listener("admin", 6434));
  next.nodes.insert(next.nodes.begin(), node("db3", 5503));
  SlotPlan plan;
  CHECK(align_slots(running, next, 32, 32, plan).empty());
  CHECK(names(next.listeners) == Names{"rw", "ro", "admin"});
  CHECK(names(next.nodes) == Names{"db1:5501", "db2:5502", "db3:5503"});
  CHECK(plan.listeners_added == Indices{2});
  CHECK(plan.nodes_added == Indices{2});
  CHECK(plan.listeners_removed.empty());
  CHECK(plan.nodes_removed.empty());
}

TEST_CASE("removed listeners and nodes stay, retired, and their names are free", "[conf][reload]") {
  const Config running = running_config();
  Config next = running_config();
  next.listeners.erase(next.listeners.begin());
  next.nodes.erase(next.nodes.begin() + 1);
  SlotPlan plan;
  CHECK(align_slots(running, next, 32, 32, plan).empty());
  CHECK(names(next.listeners) == Names{"rw(retired)", "ro"});
  CHECK(names(next.nodes) == Names{"db1:5501", "db2:5502(retired)"});
  CHECK(plan.listeners_removed == Indices{0});
  CHECK(plan.nodes_removed == Indices{1});
  CHECK(next.listener_index("rw") == -1);
  CHECK(next.node_index("db2") == -1);
  CHECK(next.node_index("db1") == 0);

  SECTION("a later reload carries the retired entries and gives a returning name a new index") {
    Config again = running_config();
    SlotPlan plan2;
    CHECK(align_slots(next, again, 32, 32, plan2).empty());
    CHECK(names(again.listeners) == Names{"rw(retired)", "ro", "rw"});
    CHECK(names(again.nodes) == Names{"db1:5501", "db2:5502(retired)", "db2:5502"});
    CHECK(plan2.listeners_added == Indices{2});
    CHECK(plan2.nodes_added == Indices{2});
    CHECK(again.node_index("db2") == 2);
  }
}

TEST_CASE("a node at a new address is a new index; a listener at a new address keeps its own", "[conf][reload]") {
  const Config running = running_config();
  Config next = running_config();
  next.nodes[0].port = 5511;
  next.nodes[1].priority = 50;  // not an address: applied in place
  next.listeners[1].port = 6443;
  next.listeners[0].intent = pgkeel::routing::Intent::kReadOnly;  // in place too
  SlotPlan plan;
  CHECK(align_slots(running, next, 32, 32, plan).empty());
  CHECK(names(next.nodes) == Names{"db1:5501(retired)", "db2:5502", "db1:5511"});
  CHECK(next.nodes[1].priority == 50);
  CHECK(plan.nodes_removed == Indices{0});
  CHECK(plan.nodes_added == Indices{2});
  CHECK(next.node_index("db1") == 2);
  CHECK(names(next.listeners) == Names{"rw", "ro"});
  CHECK(next.listeners[1].port == 6443);
  CHECK(next.listeners[0].intent == pgkeel::routing::Intent::kReadOnly);
  CHECK(plan.listeners_moved == Indices{1});
  CHECK(plan.listeners_added.empty());
}

TEST_CASE("a reload that needs more indices than a running pgkeel has is refused with the reason", "[conf][reload]") {
  const Config running = running_config();
  Config next = running_config();
  next.source_file = "pgkeel.toml";
  next.nodes[0].port = 5511;  // db1 moves: 3 node indices
  next.listeners.push_back(listener("admin", 6434));
  SlotPlan plan;
  const auto errors = align_slots(running, next, 2, 2, plan);
  REQUIRE(errors.size() == 2);
  CHECK(errors[0].key == "listener");
  CHECK(errors[1].key == "node");
  CHECK(errors[1].message.find("restart") != std::string::npos);
}
