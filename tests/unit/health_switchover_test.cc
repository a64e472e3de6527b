#include <catch2/catch.hpp>

#include "health/switchover.h"

using namespace pgkeel::health;
using pgkeel::routing::NodeId;

namespace {

NodeObservation primary(NodeId id, const std::string& name, Lsn lsn, const std::vector<std::string>& streaming) {
  NodeObservation n;
  n.id = id;
  n.name = name;
  n.health = NodeHealth::kUp;
  ProbeFacts f;
  f.in_recovery = false;
  f.system_identifier = "7300";
  f.timeline = 1;
  f.current_lsn = lsn;
  for (const std::string& s : streaming) f.replicas.push_back(ReplicaInfo{s, "streaming", "async", lsn});
  n.facts = f;
  return n;
}

NodeObservation standby(NodeId id, const std::string& name, Lsn lsn, int prio = 100) {
  NodeObservation n;
  n.id = id;
  n.name = name;
  n.priority = prio;
  n.health = NodeHealth::kUp;
  ProbeFacts f;
  f.in_recovery = true;
  f.system_identifier = "7300";
  f.timeline = 1;
  f.receive_lsn = lsn;
  f.replay_lsn = lsn;
  f.receiver_streaming = true;
  n.facts = f;
  return n;
}

SwitchoverInput three_nodes() {
  SwitchoverInput in;
  in.nodes = {primary(0, "db1", 5000, {"db2", "db3"}), standby(1, "db2", 4000), standby(2, "db3", 4500)};
  in.writer = 0;
  in.system_identifier = "7300";
  in.stop_command_configured = true;
  return in;
}

}  // namespace

TEST_CASE("a switchover without a target picks the streaming standby furthest ahead", "[health][switchover]") {
  SwitchoverInput in = three_nodes();
  SwitchoverChoice c = choose_switchover_target(in);
  REQUIRE(c.target);
  CHECK(*c.target == 2);
  SECTION("a disabled standby is never the choice") {
    in.nodes[2].enabled = false;
    c = choose_switchover_target(in);
    REQUIRE(c.target);
    CHECK(*c.target == 1);
  }
  SECTION("lag does not matter: the target catches up before it is promoted") {
    in.nodes[2].facts->receive_lsn = in.nodes[2].facts->replay_lsn = 1;
    in.nodes[1].facts->receive_lsn = in.nodes[1].facts->replay_lsn = 2;
    c = choose_switchover_target(in);
    REQUIRE(c.target);
    CHECK(*c.target == 1);
  }
}

TEST_CASE("a switchover is refused with the reason", "[health][switchover]") {
  SwitchoverInput in = three_nodes();
  in.target = "db2";
  SECTION("no stop_command") {
    in.stop_command_configured = false;
    CHECK(choose_switchover_target(in).why.find("no stop_command") != std::string::npos);
  }
  SECTION("a failover is running") {
    in.busy = "a failover";
    CHECK(choose_switchover_target(in).why == "a failover is running");
  }
  SECTION("the writer is not known") {
    in.writer.reset();
    CHECK(choose_switchover_target(in).why.find("the writer is not known") != std::string::npos);
  }
  SECTION("an unknown target, names being case-sensitive") {
    in.target = "DB2";
    CHECK(choose_switchover_target(in).why == "no node named DB2");
  }
  SECTION("the target is the writer") {
    in.target = "db1";
    CHECK(choose_switchover_target(in).why == "db1 is the writer already");
  }
  SECTION("the target is fenced") {
    in.nodes[1].fenced = true;
    CHECK(choose_switchover_target(in).why == "cannot switch over to db2: fenced");
  }
  SECTION("the target is disabled") {
    in.nodes[1].enabled = false;
    CHECK(choose_switchover_target(in).why == "cannot switch over to db2: disabled for maintenance");
  }
  SECTION("the target is down") {
    in.nodes[1].health = NodeHealth::kDown;
    CHECK(choose_switchover_target(in).why == "cannot switch over to db2: not reachable");
  }
  SECTION("the target does not stream from the writer") {
    in.nodes[0].facts->replicas.erase(in.nodes[0].facts->replicas.begin());
    CHECK(choose_switchover_target(in).why == "cannot switch over to db2: not streaming from db1");
  }
  SECTION("the target's receiver is not streaming") {
    in.nodes[1].facts->receiver_streaming = false;
    CHECK(choose_switchover_target(in).why == "cannot switch over to db2: not streaming from db1");
  }
  SECTION("the target belongs to another cluster") {
    in.nodes[1].facts->system_identifier = "9999";
    CHECK(choose_switchover_target(in).why == "cannot switch over to db2: different system identifier 9999");
  }
  CHECK_FALSE(choose_switchover_target(in).target);
}

TEST_CASE("no standby can take over: every refusal is named", "[health][switchover]") {
  SwitchoverInput in = three_nodes();
  in.nodes[1].fenced = true;
  in.nodes[2].health = NodeHealth::kDown;
  const SwitchoverChoice c = choose_switchover_target(in);
  CHECK_FALSE(c.target);
  CHECK(c.why == "no standby can take over; db2: fenced; db3: not reachable");
}

TEST_CASE("the stop command's checkpoint_lsn line is found among its output", "[health][switchover]") {
  CHECK(parse_checkpoint_lsn("stop-node.sh: stopping db1\ncheckpoint_lsn=0/3000028\n") == Lsn{0x3000028});
  CHECK(parse_checkpoint_lsn("checkpoint_lsn=16/B374D848") == Lsn{0x16B374D848});
  CHECK(parse_checkpoint_lsn("checkpoint_lsn=0/1\r\nlater\ncheckpoint_lsn=0/2\n") == Lsn{2});
  CHECK_FALSE(parse_checkpoint_lsn("waiting for server to shut down.... done\n"));
  CHECK_FALSE(parse_checkpoint_lsn("checkpoint_lsn=garbage\n"));
  CHECK_FALSE(parse_checkpoint_lsn("  checkpoint_lsn=0/2\n"));
}

TEST_CASE("the target has caught up only once it is past the shutdown checkpoint", "[health][switchover]") {
  CatchupInput in;
  in.checkpoint_lsn = 0x3000028;
  in.lsn_before_stop = 0x3000000;
  in.received = 0x3000028;  // at the start of the checkpoint record: not all of it yet
  CHECK(check_catchup(in).state == CatchupState::kWait);
  in.received = 0x30000A0;
  CHECK(check_catchup(in).state == CatchupState::kCaughtUp);
  SECTION("behind when the time runs out: failed, with the positions") {
    in.received = 0x2000000;
    in.past_deadline = true;
    const CatchupVerdict v = check_catchup(in);
    CHECK(v.state == CatchupState::kFailed);
    CHECK(v.why == "the target did not catch up in time: received 0/2000000, not yet past the shutdown checkpoint at 0/3000028");
  }
}

TEST_CASE("without a checkpoint LSN the target must reach the noted position and stop moving", "[health][switchover]") {
  CatchupInput in;
  in.lsn_before_stop = 0x5000;
  in.received = 0x4000;
  in.unchanged_checks = 10;
  CHECK(check_catchup(in).state == CatchupState::kWait);
  in.received = 0x5100;
  in.unchanged_checks = 1;
  CHECK(check_catchup(in).state == CatchupState::kWait);
  in.unchanged_checks = 3;
  CHECK(check_catchup(in).state == CatchupState::kCaughtUp);
}

TEST_CASE("FENCE, UNFENCE, DISABLE and ENABLE decide from the node's last probe", "[health][console-verbs]") {
  NodeVerbInput in;
  in.writer = 0;
  in.recorded_primary = "db1";
  SECTION("fencing the writer leaves no writer, and says so") {
    in.verb = NodeVerb::kFence;
    in.node = primary(0, "db1", 10, {});
    const NodeVerbDecision d = decide_node_verb(in);
    CHECK(d.ok);
    CHECK(d.changes);
    CHECK(d.drops_writer);
    CHECK(d.text.find("no node takes writes now") != std::string::npos);
  }
  SECTION("fencing a standby keeps the writer") {
    in.verb = NodeVerb::kFence;
    in.node = standby(1, "db2", 10);
    const NodeVerbDecision d = decide_node_verb(in);
    CHECK(d.ok);
    CHECK_FALSE(d.drops_writer);
  }
  SECTION("a fenced old primary that still runs as a primary is never unfenced") {
    in.verb = NodeVerb::kUnfence;
    in.writer = 1;
    in.recorded_primary = "db2";
    in.node = primary(0, "db1", 10, {});
    in.node.fenced = true;
    const NodeVerbDecision d = decide_node_verb(in);
    CHECK_FALSE(d.ok);
    CHECK(d.text.find("is not in recovery") != std::string::npos);
  }
  SECTION("a fenced standby is unfenced") {
    in.verb = NodeVerb::kUnfence;
    in.node = standby(1, "db2", 10);
    in.node.fenced = true;
    in.node.health = NodeHealth::kDown;  // the last successful probe decides
    CHECK(decide_node_verb(in).ok);
  }
  SECTION("the fenced recorded primary may be unfenced: it is the legitimate writer") {
    in.verb = NodeVerb::kUnfence;
    in.writer.reset();
    in.node = primary(0, "db1", 10, {});
    in.node.fenced = true;
    CHECK(decide_node_verb(in).ok);
  }
  SECTION("a node never probed is not unfenced") {
    in.verb = NodeVerb::kUnfence;
    in.node.id = 2;
    in.node.name = "db3";
    in.node.fenced = true;
    CHECK_FALSE(decide_node_verb(in).ok);
  }
  SECTION("disabling the writer is refused: SWITCHOVER first") {
    in.verb = NodeVerb::kDisable;
    in.node = primary(0, "db1", 10, {});
    const NodeVerbDecision d = decide_node_verb(in);
    CHECK_FALSE(d.ok);
    CHECK(d.text == "DISABLE refused: db1 is the writer; use SWITCHOVER first");
  }
  SECTION("disabling and enabling a standby change routing; repeating them does not") {
    in.node = standby(1, "db2", 10);
    in.verb = NodeVerb::kDisable;
    CHECK(decide_node_verb(in).changes);
    in.node.enabled = false;
    CHECK_FALSE(decide_node_verb(in).changes);
    in.verb = NodeVerb::kEnable;
    CHECK(decide_node_verb(in).changes);
  }
  SECTION("nothing changes while a failover runs") {
    in.busy = "a failover";
    in.verb = NodeVerb::kFence;
    in.node = standby(1, "db2", 10);
    const NodeVerbDecision d = decide_node_verb(in);
    CHECK_FALSE(d.ok);
    CHECK(d.text == "FENCE refused: a failover is running; try again when it finished");
  }
}

TEST_CASE("the primary record says how the primary came to be", "[health][switchover]") {
  PrimaryRecord r{9, "db2", "7300", 2, 0x3000100, "switchover"};
  const auto back = PrimaryRecord::parse(r.serialize());
  REQUIRE(back);
  CHECK(back->how == "switchover");
  CHECK(r.serialize().find(" how=switchover") != std::string::npos);
  CHECK(PrimaryRecord::parse("epoch=3 node=db1 system_identifier=7300 timeline=1 lsn=0/0")->how.empty());
}
