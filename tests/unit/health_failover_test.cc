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
  SECTION("a fenced record ([store], before a promotion): nobody, though the node is fine") {
    rec.epoch = 6;
    rec.how = "fenced";
    c = choose_writer(rec, {old_primary, new_primary});
    CHECK_FALSE(c.writer);
    CHECK(c.why == "failover in progress: the record fences db2 at epoch 6");
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
  const std::string us = "\x1f";  // fields
  const std::string rs = "\x1e";  // rows
  row[11] = "db2" + us + "streaming" + us + "sync" + us + "0/3000148" + us + "10.0.0.2" + rs + "walreceiver" + us +
            "streaming" + us + "async" + us + "0/3000000" + us;
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
  CHECK(f->replicas[0].client_addr == "10.0.0.2");
  CHECK(f->replicas[1].application_name == "walreceiver");
  CHECK(f->replicas[1].flush_lsn == 0x3000000);
  CHECK(f->replicas[1].client_addr.empty());
  CHECK(f->wal_position() == 0x3000148);
  row.pop_back();
  CHECK_FALSE(parse_probe_row(row, err));
}

TEST_CASE("synchronous_standby_names parses as PostgreSQL reads it", "[health][sync]") {
  SyncSpec a = parse_sync_names("ANY 1 (\"db2\", db3)");
  CHECK(a.method == SyncSpec::Method::kAny);
  CHECK(a.k == 1);
  CHECK(a.names == std::vector<std::string>{"db2", "db3"});
  SyncSpec f = parse_sync_names("2 (a, \"B c\", D)");
  CHECK(f.method == SyncSpec::Method::kFirst);
  CHECK(f.k == 2);
  CHECK(f.names == std::vector<std::string>{"a", "B c", "d"});  // unquoted names fold to lower case
  SyncSpec bare = parse_sync_names("walreceiver, db2");
  CHECK(bare.method == SyncSpec::Method::kFirst);
  CHECK(bare.k == 1);
  CHECK(bare.names.size() == 2);
  CHECK(parse_sync_names("first 1 (*)").any_name());
  CHECK(parse_sync_names("").method == SyncSpec::Method::kNone);
  CHECK(parse_sync_names("  ").method == SyncSpec::Method::kNone);
  CHECK(parse_sync_names("ANY 2 (\"x\"\"y\", z)").names[0] == "x\"y");
}

TEST_CASE("with ANY k of N, a standby is promoted only when N - k + 1 were heard from since the failure",
          "[health][failover][quorum]") {
  PlanInput in = base();
  in.sync_mode = SyncMode::kOn;
  in.known_sync = {"db2", "db3"};
  in.sync_spec = parse_sync_names("ANY 1 (\"db2\", \"db3\")");
  SECTION("both heard from: the furthest ahead wins") {
    Plan p = plan_failover(in);
    REQUIRE(p.chosen);
    CHECK(*p.chosen == 2u);
    CHECK(p.candidates[0].why.find("behind another standby") != std::string::npos);
    CHECK(p.summary.find("no acknowledged commit is lost") != std::string::npos);
  }
  SECTION("the standby ahead was lost with the primary: the lagging one is not promoted") {
    in.nodes[2].health = NodeHealth::kDown;  // db3, ahead, gone too
    Plan p = plan_failover(in);
    CHECK_FALSE(p.chosen);
    CHECK(p.candidates[0].why.find("not provably complete") != std::string::npos);
    CHECK(p.candidates[0].why.find("2 of them must be heard from") != std::string::npos);
    CHECK(p.summary.find("db2") != std::string::npos);
    SECTION("FORCE promotes it anyway, and says what it may lack") {
      in.force = true;
      Plan forced = plan_failover(in);
      REQUIRE(forced.chosen);
      CHECK(*forced.chosen == 1u);
      CHECK(forced.candidates[0].why.find("FORCE") != std::string::npos);
    }
  }
  SECTION("a standby heard from only before the failure does not count") {
    in.nodes[2].heard_since_failure = false;
    CHECK_FALSE(plan_failover(in).chosen);
  }
  SECTION("FIRST k: any synchronous standby holds every acknowledged commit") {
    in.sync_spec = parse_sync_names("FIRST 1 (db2, db3)");
    in.known_sync = {"db2"};
    in.nodes[2].health = NodeHealth::kDown;
    Plan p = plan_failover(in);
    REQUIRE(p.chosen);
    CHECK(*p.chosen == 1u);
  }
  SECTION("ANY 2 of 3: two heard from are enough") {
    in.nodes.push_back(standby(3, "db4", 1500));
    in.known_sync = {"db2", "db3", "db4"};
    in.sync_spec = parse_sync_names("ANY 2 (db2, db3, db4)");
    in.nodes[2].health = NodeHealth::kDown;
    Plan p = plan_failover(in);
    REQUIRE(p.chosen);
    CHECK(*p.chosen == 3u);  // db4 is ahead of db2
  }
}

TEST_CASE("a standby is matched to its replication connection by name, address or elimination", "[health][sync]") {
  auto row = [](std::string app, std::string addr) {
    ReplicaInfo r;
    r.application_name = std::move(app);
    r.state = "streaming";
    r.sync_state = "async";
    r.client_addr = std::move(addr);
    return r;
  };
  SECTION("one plain pg_basebackup standby: by address") {
    auto m = match_replication({{"db2", "127.0.0.1", true}}, {row("walreceiver", "127.0.0.1")});
    REQUIRE(m[0].row);
    CHECK(m[0].how == "address");
  }
  SECTION("one standby seen from another address (NAT): by elimination") {
    auto m = match_replication({{"db2", "10.0.0.2", true}}, {row("walreceiver", "172.17.0.5")});
    REQUIRE(m[0].row);
    CHECK(m[0].how == "elimination");
    CHECK_FALSE(match_replication({{"db2", "10.0.0.2", false}}, {row("walreceiver", "172.17.0.5")})[0].row);
  }
  SECTION("two standbys on their own hosts: by address") {
    auto m = match_replication({{"db2", "10.0.0.2", true}, {"db3", "10.0.0.3", true}},
                               {row("walreceiver", "10.0.0.3"), row("walreceiver", "10.0.0.2")});
    REQUIRE(m[0].row);
    REQUIRE(m[1].row);
    CHECK(*m[0].row == 1u);
    CHECK(*m[1].row == 0u);
    CHECK(m[0].how == "address");
  }
  SECTION("two unnamed standbys on one host: no guess") {
    auto m = match_replication({{"db2", "127.0.0.1", true}, {"db3", "127.0.0.1", true}},
                               {row("walreceiver", "127.0.0.1"), row("walreceiver", "127.0.0.1")});
    CHECK_FALSE(m[0].row);
    CHECK_FALSE(m[1].row);
  }
  SECTION("a name wins over everything, and leaves the rest to the other rules") {
    auto m = match_replication({{"db2", "127.0.0.1", true}, {"db3", "127.0.0.1", true}},
                               {row("walreceiver", "127.0.0.1"), row("db2", "127.0.0.1")});
    CHECK(*m[0].row == 1u);
    CHECK(m[0].how == "name");
    REQUIRE(m[1].row);
    CHECK(*m[1].row == 0u);
    CHECK(m[1].how == "address");
  }
}

TEST_CASE("synchronous replication says plainly when it cannot keep its promise", "[health][sync]") {
  SECTION("on, a standby streaming as walreceiver, nothing set") {
    SyncStatus st = sync_status(SyncMode::kOn, "db1", "", {{"db2", "walreceiver", "async", "streaming", true, false}});
    CHECK(st.health == SyncHealth::kDegraded);
    CHECK(st.why.find("db2 streams as 'walreceiver'") != std::string::npos);
  }
  SECTION("honoured") {
    SyncStatus st = sync_status(SyncMode::kOn, "db1", "ANY 1 (\"db2\")", {{"db2", "db2", "quorum", "streaming", true, false}});
    CHECK(st.health == SyncHealth::kHonoured);
    CHECK(st.why.find("db2 acknowledges") != std::string::npos);
  }
  SECTION("strict with its standby down: commits wait, and it says for whom") {
    SyncStatus st = sync_status(SyncMode::kStrict, "db1", "ANY 1 (\"db2\")", {{"db2", "", "", "", false, false}});
    CHECK(st.health == SyncHealth::kWaiting);
    CHECK(st.why.find("wait") != std::string::npos);
    CHECK(st.why.find("db2 is down") != std::string::npos);
  }
  SECTION("off promises nothing") {
    CHECK(sync_status(SyncMode::kOff, "db1", "", {}).health == SyncHealth::kOff);
  }
}

TEST_CASE("a standby's primary_conninfo gets its application_name, every other keyword kept", "[health][sync]") {
  std::string err;
  auto c = with_application_name(
      "user=replicator password='p w\\'d' channel_binding=prefer host=127.0.0.1 port=5433 sslmode=prefer", "db2", err);
  REQUIRE(c);
  CHECK(c->find("application_name='db2'") != std::string::npos);
  CHECK(c->find("password='p w\\'d'") != std::string::npos);
  CHECK(c->find("port='5433'") != std::string::npos);
  auto again = with_application_name(*c + " application_name=walreceiver", "db3", err);
  REQUIRE(again);
  CHECK(again->find("walreceiver") == std::string::npos);
  CHECK(again->find("application_name='db3'") != std::string::npos);
  CHECK_FALSE(with_application_name("host='unterminated", "db2", err));
  CHECK_FALSE(err.empty());
  SECTION("pointed at a new primary, it keeps its own user, password and TLS settings") {
    auto moved = rewrite_conninfo("host=db1.shop hostaddr=10.0.0.1 port=5432 user=repl passfile=/etc/pgpass sslmode=verify-full",
                                  {{"host", "10.0.0.2"}, {"port", "5433"}, {"application_name", "db3"}}, {"hostaddr"}, err);
    REQUIRE(moved);
    CHECK(moved->find("host='10.0.0.2'") != std::string::npos);
    CHECK(moved->find("hostaddr") == std::string::npos);
    CHECK(moved->find("port='5433'") != std::string::npos);
    CHECK(moved->find("user='repl'") != std::string::npos);
    CHECK(moved->find("passfile='/etc/pgpass'") != std::string::npos);
    CHECK(moved->find("sslmode='verify-full'") != std::string::npos);
    CHECK(moved->find("db1.shop") == std::string::npos);
  }
}

TEST_CASE("at start the newest record decides, wherever it was found", "[health][fencing][epoch]") {
  auto rec = [](std::uint64_t epoch, std::string node, std::uint32_t tl) {
    PrimaryRecord r;
    r.epoch = epoch;
    r.node = std::move(node);
    r.timeline = tl;
    return r;
  };
  SECTION("a newer cluster record beats an older state file") {
    auto n = newest_record({{rec(5, "db2", 2), "state file"}, {rec(6, "db1", 3), "cluster record on db1"}});
    REQUIRE(n);
    CHECK(n->record.node == "db1");
  }
  SECTION("equal epochs from before epochs were kept across restarts: the higher timeline") {
    auto n = newest_record({{rec(5, "db2", 2), "cluster record on db2"}, {rec(5, "db1", 3), "cluster record on db1"}});
    REQUIRE(n);
    CHECK(n->record.node == "db1");
  }
  CHECK_FALSE(newest_record({}));
}
