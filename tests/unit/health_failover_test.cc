#include <catch2/catch.hpp>

#include "health/failover.h"

using namespace pgkeel::health;

namespace {

NodeObservation standby(pgkeel::routing::NodeId id, const std::string& name, Lsn lsn, int prio = 100) {
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
  n.facts = f;
  return n;
}

NodeObservation dead_primary() {
  NodeObservation n;
  n.id = 0;
  n.name = "db1";
  n.health = NodeHealth::kDown;
  return n;
}

PlanInput base() {
  PlanInput in;
  in.nodes = {dead_primary(), standby(1, "db2", 1000), standby(2, "db3", 2000)};
  in.failed_primary = 0;
  in.system_identifier = "7300";
  in.primary_last_lsn = 2000;
  in.max_lag_bytes = 16 * 1024 * 1024;
  return in;
}

}  // namespace

TEST_CASE("in synchronous mode only a known synchronous standby is promoted", "[health][failover]") {
  PlanInput in = base();
  in.sync_mode = SyncMode::kOn;
  in.known_sync = {"db2"};
  Plan p = plan_failover(in);
  REQUIRE(p.chosen);
  CHECK(*p.chosen == 1u);  // db3 is further ahead but was never synchronous
  CHECK(p.candidates[1].why.find("not a synchronous standby") != std::string::npos);
}

TEST_CASE("the standby with the most WAL wins, then priority, then name", "[health][failover]") {
  PlanInput in = base();
  in.sync_mode = SyncMode::kOn;
  in.known_sync = {"db2", "db3"};
  CHECK(*plan_failover(in).chosen == 2u);
  in.nodes[1] = standby(1, "db2", 2000, 200);
  CHECK(*plan_failover(in).chosen == 1u);  // same LSN, higher priority
  in.nodes[1] = standby(1, "db2", 2000, 100);
  CHECK(*plan_failover(in).chosen == 1u);  // same LSN and priority: name order
}

TEST_CASE("asynchronous mode refuses a standby that lags beyond max_lag_on_failover", "[health][failover]") {
  PlanInput in = base();
  in.sync_mode = SyncMode::kOff;
  in.nodes = {dead_primary(), standby(1, "db2", 1000)};
  in.primary_last_lsn = 1000 + 64 * 1024 * 1024;
  Plan p = plan_failover(in);
  CHECK_FALSE(p.chosen);
  CHECK(p.summary.find("max_lag_on_failover") != std::string::npos);
  SECTION("FORCE skips the lag check and says what may be lost") {
    in.force = true;
    p = plan_failover(in);
    REQUIRE(p.chosen);
    CHECK(p.max_loss_bytes == 64u * 1024 * 1024);
    CHECK(p.summary.find("may be lost") != std::string::npos);
  }
}

TEST_CASE("degraded synchronous mode falls back to the asynchronous rules", "[health][failover]") {
  PlanInput in = base();
  in.sync_mode = SyncMode::kOn;
  in.known_sync = {"db2"};
  in.degraded = true;
  Plan p = plan_failover(in);
  REQUIRE(p.chosen);
  CHECK(*p.chosen == 2u);
  CHECK(p.summary.find("degraded") != std::string::npos);
}

TEST_CASE("unreachable, fenced, disabled, foreign and primary-claiming nodes are never promoted", "[health][failover]") {
  PlanInput in = base();
  in.sync_mode = SyncMode::kOff;
  in.nodes[1].health = NodeHealth::kDown;
  SECTION("fenced") { in.nodes[2].fenced = true; }
  SECTION("disabled") { in.nodes[2].enabled = false; }
  SECTION("another cluster") { in.nodes[2].facts->system_identifier = "9999"; }
  SECTION("claims to be primary") { in.nodes[2].facts->in_recovery = false; }
  Plan p = plan_failover(in);
  CHECK_FALSE(p.chosen);
  CHECK(p.summary.rfind("no standby can be promoted", 0) == 0);
}

TEST_CASE("FAILOVER TO names the only node that may be chosen", "[health][failover]") {
  PlanInput in = base();
  in.sync_mode = SyncMode::kOff;
  in.target = 1;
  CHECK(*plan_failover(in).chosen == 1u);
}

TEST_CASE("a standby still receiving WAL vetoes the failover", "[health][failover]") {
  auto s = standby(1, "db2", 100);
  s.facts->receiver_streaming = true;
  s.facts->receipt_age_s = 0.4;
  WitnessResult w = witness({s}, 2.0);
  CHECK_FALSE(w.confirmed);
  CHECK(w.why.find("cut off") != std::string::npos);
  s.facts->receipt_age_s = 5.0;
  CHECK(witness({s}, 2.0).confirmed);
  s.facts->receiver_streaming = false;
  s.facts->receipt_age_s = 0.1;
  CHECK(witness({s}, 2.0).confirmed);
}

TEST_CASE("synchronous_standby_names follows the mode and the healthy standbys", "[health][sync]") {
  CHECK(desired_sync_names(SyncMode::kOff, {"db2"}, {"db2"}) == "");
  CHECK(desired_sync_names(SyncMode::kOn, {"db3", "db2"}, {"db2", "db3"}) == "ANY 1 (\"db2\", \"db3\")");
  CHECK(desired_sync_names(SyncMode::kOn, {}, {"db2"}) == "");  // degrade: commits keep flowing
  CHECK(desired_sync_names(SyncMode::kStrict, {}, {"db2"}) == "ANY 1 (\"db2\")");  // commits wait
}

TEST_CASE("only the recorded primary on its recorded timeline takes writes", "[health][fencing]") {
  PrimaryRecord rec{5, "db2", "7300", 2, 0};
  auto old_primary = standby(0, "db1", 500);
  old_primary.facts->in_recovery = false;  // came back as a primary, on its old timeline
  old_primary.facts->timeline = 1;
  auto new_primary = standby(1, "db2", 900);
  new_primary.facts->in_recovery = false;
  new_primary.facts->timeline = 2;
  WriterChoice c = choose_writer(rec, {old_primary, new_primary});
  REQUIRE(c.writer);
  CHECK(*c.writer == 1u);
  CHECK(c.why.find("db1 also claims to be primary") != std::string::npos);
  SECTION("the recorded primary down: nobody") {
    new_primary.health = NodeHealth::kDown;
    c = choose_writer(rec, {old_primary, new_primary});
    CHECK_FALSE(c.writer);
    CHECK(c.why == "the recorded primary db2 is not reachable");
  }
  SECTION("a timeline other than the recorded one: nobody") {
    new_primary.facts->timeline = 3;
    CHECK_FALSE(choose_writer(rec, {old_primary, new_primary}).writer);
  }
}

TEST_CASE("primary records round trip through their text form", "[health]") {
  PrimaryRecord r{12, "db3", "7301234", 4, 0x16B374D848};
  auto back = PrimaryRecord::parse(r.serialize());
  REQUIRE(back);
  CHECK(back->epoch == 12);
  CHECK(back->node == "db3");
  CHECK(back->timeline == 4);
  CHECK(back->lsn == 0x16B374D848);
  CHECK_FALSE(PrimaryRecord::parse("garbage"));
}

TEST_CASE("LSNs parse and format as PostgreSQL writes them", "[health]") {
  CHECK(parse_lsn("16/B374D848") == 0x16B374D848ull);
  CHECK(parse_lsn("0/0") == 0ull);
  CHECK_FALSE(parse_lsn("16B374D848"));
  CHECK_FALSE(parse_lsn("/1"));
  CHECK_FALSE(parse_lsn("1/"));
  CHECK_FALSE(parse_lsn("x/1"));
  CHECK(format_lsn(0x16B374D848) == "16/B374D848");
}

TEST_CASE("a probe row parses into facts", "[health]") {
  std::vector<std::optional<std::string>> row(kProbeColumns);
  row[0] = "f";
  row[1] = "7300";
  row[2] = "3";
  row[3] = "0/3000148";
  row[11] = "db2,streaming,sync,0/3000148;db3,streaming,async,0/3000000";
  row[12] = "ANY 1 (db2)";
  row[13] = "1";
  std::string err;
  auto f = parse_probe_row(row, err);
  REQUIRE(f);
  CHECK_FALSE(f->in_recovery);
  CHECK(f->timeline == 3);
  CHECK(f->current_lsn == 0x3000148);
  REQUIRE(f->replicas.size() == 2);
  CHECK(f->replicas[0].sync_state == "sync");
  CHECK(f->wal_position() == 0x3000148);
  row.pop_back();
  CHECK_FALSE(parse_probe_row(row, err));
}
