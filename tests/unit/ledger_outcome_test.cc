#include <catch2/catch.hpp>

#include "tools/ledger/outcome.h"
#include "tools/ledger/report.h"

using namespace pgkeel::ledger;

namespace {

Event ack(int client, std::int64_t seq, std::int64_t t) {
  return {client, EventKind::kAcknowledged, Phase::kCommit, "", seq, t};
}
Event err(int client, EventKind kind, Phase phase, std::string sqlstate, std::int64_t seq,
          std::int64_t t) {
  return {client, kind, phase, std::move(sqlstate), seq, t};
}

}  // namespace

TEST_CASE("an error before COMMIT was sent is a definite failure, whatever it was", "[ledger]") {
  SECTION("a server error") {
    CHECK(classify_error(Phase::kStatement, "25006", false) == Outcome::kFailed);
    CHECK(classify_error(Phase::kStatement, "40001", false) == Outcome::kFailed);
  }
  SECTION("the session terminated under BEGIN or the INSERT inside it") {
    CHECK(classify_error(Phase::kStatement, "57P01", true) == Outcome::kFailed);
  }
  SECTION("the connection lost with no error from the server") {
    CHECK(classify_error(Phase::kStatement, "", true) == Outcome::kFailed);
  }
  SECTION("a connection that never opened") {
    CHECK(classify_error(Phase::kConnect, "08001", true) == Outcome::kFailed);
  }
}

TEST_CASE("an ERROR for the committing statement itself means it did not commit", "[ledger]") {
  for (const char* code : {"25006", "40001", "40P01", "23505", "53100", "57014", "XX000"}) {
    INFO(code);
    CHECK(classify_error(Phase::kCommit, code, false) == Outcome::kFailed);
  }
}

TEST_CASE("a commit in flight when the connection breaks may have committed", "[ledger]") {
  SECTION("the connection was lost, with or without a server message") {
    CHECK(classify_error(Phase::kCommit, "", true) == Outcome::kUnknown);
    CHECK(classify_error(Phase::kCommit, "57P01", true) == Outcome::kUnknown);
    // Conservative: an ERROR followed by a lost connection is not trusted as definite.
    CHECK(classify_error(Phase::kCommit, "25006", true) == Outcome::kUnknown);
  }
  SECTION("class 08 or a terminated backend, even if the session seems up") {
    for (const char* code : {"08006", "08007", "08000", "57P01", "57P02", "57P03"}) {
      INFO(code);
      CHECK(classify_error(Phase::kCommit, code, false) == Outcome::kUnknown);
    }
  }
  SECTION("an error without a SQLSTATE") {
    CHECK(classify_error(Phase::kCommit, "", false) == Outcome::kUnknown);
  }
}

TEST_CASE("connect failures get a SQLSTATE from the server's known refusals", "[ledger]") {
  CHECK(connect_failure_sqlstate("FATAL:  the database system is starting up") == "57P03");
  CHECK(connect_failure_sqlstate("FATAL:  sorry, too many clients already") == "53300");
  CHECK(connect_failure_sqlstate(
            "connection to server at \"127.0.0.1\", port 1 failed: Connection refused") == "08001");
}

TEST_CASE("the timeline folds consecutive events and splits at stalls", "[ledger]") {
  std::vector<Segment> t;
  for (std::int64_t seq = 1; seq <= 5; ++seq) {
    append_event(t, ack(0, seq, seq * 2), 10);
  }
  REQUIRE(t.size() == 1);
  CHECK(t[0].count == 5);
  CHECK(t[0].t_first_ms == 2);
  CHECK(t[0].t_last_ms == 10);

  SECTION("a pause longer than the split gap starts a new segment") {
    append_event(t, ack(0, 6, 21), 10);
    CHECK(t.size() == 2);
  }
  SECTION("a different outcome or SQLSTATE starts a new segment") {
    append_event(t, err(0, EventKind::kUnknown, Phase::kCommit, "08006", 6, 11), 10);
    append_event(t, err(0, EventKind::kConnectFailed, Phase::kConnect, "08001", 0, 12), 10);
    append_event(t, err(0, EventKind::kConnectFailed, Phase::kConnect, "08001", 0, 13), 10);
    append_event(t, err(0, EventKind::kConnectFailed, Phase::kConnect, "57P03", 0, 14), 10);
    REQUIRE(t.size() == 4);
    CHECK(t[2].count == 2);
    CHECK(t[2].first_seq == 0);
    const Counts c = count_outcomes(t);
    CHECK(c.attempts == 6);
    CHECK(c.acknowledged == 5);
    CHECK(c.unknown == 1);
    CHECK(c.connect_failures == 3);
  }
}

TEST_CASE("write downtime is the stretch between acknowledgements around a failure", "[ledger]") {
  // Two clients: acks until ~4000 ms, an outage, acks again from ~5800 ms. Each client keeps
  // its own timeline, as the writer's threads do; the report concatenates them.
  std::vector<Segment> t0;
  std::vector<Segment> t1;
  std::int64_t seq0 = 0;
  std::int64_t seq1 = 0;
  for (std::int64_t ms = 0; ms <= 4000; ms += 5) {
    append_event(t0, ack(0, ++seq0, ms), 10);
    append_event(t1, ack(1, ++seq1, ms + 2), 10);
  }
  append_event(t0, err(0, EventKind::kUnknown, Phase::kCommit, "08006", ++seq0, 4010), 10);
  append_event(t1, err(1, EventKind::kFailed, Phase::kCommit, "25006", ++seq1, 5000), 10);
  for (std::int64_t ms = 5800; ms <= 7000; ms += 5) {
    append_event(t0, ack(0, ++seq0, ms), 10);
  }
  for (std::int64_t ms = 5900; ms <= 7000; ms += 5) {
    append_event(t1, ack(1, ++seq1, ms), 10);
  }
  CHECK(t0.size() == 3);
  std::vector<Segment> t = t0;
  t.insert(t.end(), t1.begin(), t1.end());

  SECTION("any client") {
    auto g = longest_ack_gap(t);
    REQUIRE(g);
    CHECK(*g == Gap{4002, 5800});
    const AckWindow w = ack_window(t, 4500);
    CHECK(w.last_before_ms == 4002);
    CHECK(w.first_after_ms == 5800);
    CHECK(w.gap_ms() == 1798);
  }
  SECTION("one client") {
    auto g = longest_ack_gap(t, 1);
    REQUIRE(g);
    CHECK(*g == Gap{4002, 5900});
    CHECK(ack_window(t, 4500, 0).first_after_ms == 5800);
  }
  SECTION("a moment inside steady acknowledgements has no gap worth the name") {
    const AckWindow w = ack_window(t, 1000);
    CHECK(w.gap_ms() == 0);
  }
  SECTION("a stall that lasts to the end shows in the last acknowledgement") {
    CHECK(last_ack_ms(t) == 7000);
    CHECK(last_ack_ms(t, 0) == 7000);
    CHECK_FALSE(last_ack_ms(t, 2).has_value());
  }
  SECTION("nothing to stand between") {
    CHECK_FALSE(longest_ack_gap({}).has_value());
    CHECK_FALSE(ack_window(t, 8000).first_after_ms.has_value());
  }
}

TEST_CASE("the verdict sorts every id found into its attempt's outcome", "[ledger]") {
  AttemptIds ids;
  ids.acknowledged = {{100, 109}, {200, 204}};
  ids.failed = {{110, 110}, {205, 205}};
  ids.unknown = {{111, 112}, {206, 206}};

  std::vector<FoundId> found;
  for (std::int64_t id = 100; id <= 109; ++id) {
    found.push_back({id, 1});
  }
  found.push_back({200, 1});
  found.push_back({202, 1});
  found.push_back({203, 1});

  SECTION("an intact ledger") {
    found.push_back({201, 1});
    found.push_back({204, 1});
    found.push_back({111, 1});
    const Verdict v = judge(ids, found);
    CHECK(v.ok());
    CHECK(v.rows_read == 16);
    CHECK(v.acknowledged == 15);
    CHECK(v.failed == 2);
    CHECK(v.unknown == 3);
    CHECK(v.unknown_found == std::vector<std::int64_t>{111});
    CHECK(v.unknown_missing == 2);
  }
  SECTION("lost acknowledgements, duplicates, failed rows present, strangers") {
    found.push_back({105, 1});  // a second copy, reported in another row
    found.push_back({110, 1});
    found.push_back({206, 2});
    found.push_back({999, 1});
    const Verdict v = judge(ids, found);
    CHECK_FALSE(v.ok());
    CHECK(v.lost == std::vector<std::int64_t>{201, 204});
    CHECK(v.duplicates == std::vector<FoundId>{{105, 2}, {206, 2}});
    CHECK(v.failed_present == std::vector<std::int64_t>{110});
    CHECK(v.unknown_found == std::vector<std::int64_t>{206});
    CHECK(v.unexpected == std::vector<std::int64_t>{999});
  }
  SECTION("an empty table loses everything acknowledged") {
    const Verdict v = judge(ids, {});
    CHECK(v.lost.size() == 15);
    CHECK(v.unknown_missing == 3);
  }
}

TEST_CASE("a run's ids follow from its timeline and come back from its file", "[ledger]") {
  RunReport r;
  r.run = 3;
  r.id_base = 3 * kRunStride;
  r.clients = 2;
  r.started_at_unix_ms = 1'700'000'000'000;
  r.elapsed_ms = 900;
  append_event(r.timeline, ack(0, 1, 1), 10);
  append_event(r.timeline, ack(0, 2, 2), 10);
  append_event(r.timeline, err(0, EventKind::kUnknown, Phase::kCommit, "08006", 3, 3), 10);
  append_event(r.timeline, err(1, EventKind::kFailed, Phase::kStatement, "57P01", 1, 4), 10);
  append_event(r.timeline, ack(1, 2, 500), 10);
  r.errors.push_back({Phase::kCommit, "08006", 1, 3, 3, "server closed the \"connection\"\n"});

  const AttemptIds ids = attempt_ids(r.timeline, r.id_base);
  CHECK(ids.acknowledged ==
        std::vector<IdRange>{{r.id_base + 1, r.id_base + 2},
                             {r.id_base + kClientStride + 2, r.id_base + kClientStride + 2}});
  CHECK(ids.failed ==
        std::vector<IdRange>{{r.id_base + kClientStride + 1, r.id_base + kClientStride + 1}});
  CHECK(ids.unknown == std::vector<IdRange>{{r.id_base + 3, r.id_base + 3}});

  std::string error;
  auto loaded = parse_run(to_json(r), error);
  REQUIRE(loaded);
  CHECK(loaded->report.timeline == r.timeline);
  CHECK(loaded->report.started_at_unix_ms == r.started_at_unix_ms);
  REQUIRE(loaded->report.errors.size() == 1);
  CHECK(loaded->report.errors[0].example == r.errors[0].example);
  CHECK(loaded->ids.acknowledged == ids.acknowledged);
  CHECK(loaded->id_range == r.id_range());

  SECTION("malformed files are refused with a reason, never thrown") {
    for (const char* bad : {"", "{", "[1,2]", "{\"id_range\": [1, 2]}", "{\"ids\": 1}",
                            "{\"id_range\": [2, 1], \"ids\": {}}", "\"\\ud800\"", "[[[[[[",
                            "{\"id_range\": [1, 99999999999999999999]}"}) {
      INFO(bad);
      std::string why;
      CHECK_FALSE(parse_run(bad, why).has_value());
      CHECK_FALSE(why.empty());
    }
  }
}
