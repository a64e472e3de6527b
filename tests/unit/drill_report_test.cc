#include <catch2/catch.hpp>

#include <algorithm>

#include "tools/drill/html.h"
#include "tools/drill/plan.h"
#include "tools/drill/report.h"
#include "tools/ledger/json.h"

using namespace pgkeel::drill;
using pgkeel::ledger::EventKind;
using pgkeel::ledger::Phase;

namespace {

constexpr std::int64_t kBase = 7 * pgkeel::ledger::kRunStride;

// A recorded timeline: 2 clients write every 10 ms for 10 s; the primary is killed at 4000 ms,
// both clients see their commit in flight fail (unknown) at 4001 ms, connects fail until 4500,
// and acknowledgements resume at 4650 ms on the new primary.
Recording kill_at_4s() {
  Recording r;
  r.started_at_unix_ms = 1'700'000'000'000;
  r.elapsed_ms = 10'000;
  r.clients = 2;
  r.sync = true;
  r.id_base = kBase;
  r.run = 7;
  for (int c = 0; c < 2; ++c) {
    std::int64_t seq = 0;
    for (std::int64_t t = 10; t < 10'000; t += 10) {
      if (t > 4000 && t < 4650) {
        continue;
      }
      ++seq;
      r.ops.push_back({t, 1000 + static_cast<std::int32_t>(t % 7) * 100, OpKind::kWriteAck});
      pgkeel::ledger::append_event(r.writes, {c, EventKind::kAcknowledged, Phase::kCommit, "", seq, t}, 10);
      if (t == 4000) {
        ++seq;
        r.ops.push_back({4001, 900, OpKind::kWriteUnknown});
        pgkeel::ledger::append_event(r.writes, {c, EventKind::kUnknown, Phase::kCommit, "08006", seq, 4001}, 10);
        add_error(r.errors, "commit", "08006", 4001, 1, "server closed the connection unexpectedly");
        for (std::int64_t ct = 4100; ct <= 4500; ct += 100) {
          r.ops.push_back({ct, 50'000, OpKind::kConnectFailed});
          add_error(r.errors, "connect", "57P03", ct, 1, "no writer");
        }
      }
    }
  }
  r.faults.push_back({.fault = Fault{FaultKind::kKill, 4000, {}, {}, false},
                      .t_ms = 4000,
                      .target = "db1",
                      .injected = true,
                      .detail = "kill -9 of 1 process(es)",
                      .hit_writer = true,
                      .effect_seen = true,
                      .effect = "the postmaster of db1 (pid 4242) is gone 3 ms after the kill"});
  r.events = {{4120, 2, "detection", "db1", "refused"},
              {4125, 2, "failover_started", "db1", ""},
              {4600, 3, "promotion", "db2", "writes go to db2"}};
  r.routes = {{1000, "db1", 2}, {5000, "db2", 3}};
  r.report_html = "drill.html";
  return r;
}

pgkeel::ledger::Verdict verdict_for(const Recording& r, std::int64_t drop = 0) {
  const auto ids = pgkeel::ledger::attempt_ids(r.writes, r.id_base);
  std::vector<pgkeel::ledger::FoundId> found;
  for (const auto& range : ids.acknowledged) {
    for (std::int64_t id = range.first; id <= range.last; ++id) {
      if (id != drop) {
        found.push_back({id, 1});
      }
    }
  }
  return pgkeel::ledger::judge(ids, found);
}

}  // namespace

TEST_CASE("a fault is parsed from KIND@TIME with options", "[drill]") {
  std::string error;
  SECTION("the simple case") {
    auto f = parse_fault("kill@5s", error);
    REQUIRE(f);
    CHECK(f->kind == FaultKind::kKill);
    CHECK(f->at_ms == 5000);
    CHECK_FALSE(f->all_processes);
  }
  SECTION("options") {
    auto f = parse_fault("hang@1.5s:for=3s,node=db2", error);
    REQUIRE(f);
    CHECK(f->kind == FaultKind::kHang);
    CHECK(f->at_ms == 1500);
    CHECK(f->for_ms == 3000);
    CHECK(f->node == "db2");
    CHECK(parse_fault("kill@500ms:mode=all", error)->all_processes);
  }
  SECTION("mistakes are reported") {
    CHECK_FALSE(parse_fault("kill", error));
    CHECK_FALSE(parse_fault("explode@5s", error));
    CHECK_FALSE(parse_fault("kill@soon", error));
    CHECK_FALSE(parse_fault("kill@5s:colour=red", error));
    CHECK(error.find("colour") != std::string::npos);
  }
  SECTION("a partition with its duration; a fault after the end is refused") {
    auto p = parse_fault("partition@2s:for=8s", error);
    REQUIRE(p);
    CHECK(p->kind == FaultKind::kPartition);
    CHECK(p->for_ms == 8000);
    std::vector<Fault> faults{*parse_fault("kill@30s", error), *p};
    const auto errors = check_faults(faults, 20'000);
    REQUIRE(errors.size() == 1);
    CHECK(errors[0].find("'kill' at 30000 ms") != std::string::npos);
    CHECK(faults[0].kind == FaultKind::kPartition);  // sorted by time
  }
}

TEST_CASE("durations read as the command line writes them", "[drill]") {
  CHECK(parse_duration_ms("5s") == 5000);
  CHECK(parse_duration_ms("5") == 5000);
  CHECK(parse_duration_ms("250ms") == 250);
  CHECK(parse_duration_ms("2min") == 120'000);
  CHECK_FALSE(parse_duration_ms("5 s"));
  CHECK_FALSE(parse_duration_ms(""));
}

TEST_CASE("SHOW EVENTS times map onto unix milliseconds", "[drill]") {
  CHECK(parse_iso_utc_ms("1970-01-01T00:00:00.000Z") == 0);
  CHECK(parse_iso_utc_ms("2023-11-14T22:13:20.123Z") == 1'700'000'000'123);
  CHECK_FALSE(parse_iso_utc_ms("yesterday"));
}

TEST_CASE("a kill under load gives downtime, detection and promotion from the recorded timeline", "[drill]") {
  Recording r = kill_at_4s();
  r.verdict = verdict_for(r);
  const Summary s = summarize(r, {});

  REQUIRE(s.faults.size() == 1);
  CHECK(s.faults[0].detected_ms == 4120);
  CHECK(s.faults[0].promoted_ms == 4600);
  CHECK(s.faults[0].recovered_ms == 4650);
  CHECK(s.faults[0].downtime_ms == 650);  // last ack 4000, first after 4650
  CHECK(s.write_downtime_ms == 650);
  CHECK(s.unknown == 2);
  CHECK(s.connect_failures == 10);
  CHECK(s.errors_total == 12);
  CHECK(s.acknowledged == r.verdict->acknowledged);
  CHECK(s.passed());

  SECTION("latency is split before, during and after") {
    CHECK(s.before.count > 0);
    CHECK(s.after.count > 0);
    CHECK(s.before.count + s.during.count + s.after.count == s.all.count);
    CHECK(s.before.p50 >= 1.0);
    CHECK(s.before.p99 <= 1.6);
  }
  SECTION("one row per second with the route in force") {
    REQUIRE(s.series.size() == 10);
    CHECK(s.series[0].primary.empty());
    CHECK(s.series[1].primary == "db1");
    CHECK(s.series[5].primary == "db2");
    CHECK(s.series[4].errors == 12);
    CHECK(s.series[4].writes < s.series[3].writes);
  }
}

TEST_CASE("the verdict fails on a lost commit in synchronous mode and on exceeded gates", "[drill]") {
  Recording r = kill_at_4s();
  const std::int64_t victim = pgkeel::ledger::ledger_id(kBase, 1, 3);
  r.verdict = verdict_for(r, victim);

  SECTION("synchronous: one lost commit fails the drill") {
    const Summary s = summarize(r, {});
    CHECK_FALSE(s.passed());
    REQUIRE(r.verdict->lost.size() == 1);
    CHECK(r.verdict->lost[0] == victim);
  }
  SECTION("asynchronous: only --max-lost decides") {
    r.sync = false;
    CHECK(summarize(r, {}).passed());
    CHECK(summarize(r, Gates{.max_lost = 1}).passed());
    CHECK_FALSE(summarize(r, Gates{.max_lost = 0}).passed());
  }
  SECTION("downtime and error gates") {
    r.verdict = verdict_for(r);
    CHECK(summarize(r, Gates{.max_downtime_ms = 1000}).passed());
    CHECK_FALSE(summarize(r, Gates{.max_downtime_ms = 500}).passed());
    CHECK(summarize(r, Gates{.max_errors = 12}).passed());
    CHECK_FALSE(summarize(r, Gates{.max_errors = 11}).passed());
  }
  SECTION("no verification, no pass") {
    r.verdict.reset();
    CHECK_FALSE(summarize(r, {}).passed());
  }
}

TEST_CASE("writes that never come back leave the fault unrecovered until the end", "[drill]") {
  Recording r = kill_at_4s();
  std::erase_if(r.writes, [](const pgkeel::ledger::Segment& s) { return s.t_first_ms > 4000; });
  const FaultOutcome o = write_downtime(r.writes, 4000, 10'000, 10'000);
  CHECK_FALSE(o.recovered);
  CHECK(o.downtime_ms == 6000);
}

namespace {

// The same two clients, but nothing happened at 4000 ms: writes go on without a pause, and
// pgkeel's console shows nothing. What a kill -9 that the target ignored looks like (in a
// container whose postmaster is PID 1, the kernel drops the signal and the command returns 0).
Recording ignored_kill_at_4s() {
  Recording r = kill_at_4s();
  r.ops.clear();
  r.writes.clear();
  r.errors.clear();
  for (int c = 0; c < 2; ++c) {
    std::int64_t seq = 0;
    for (std::int64_t t = 10; t < 10'000; t += 10) {
      r.ops.push_back({t, 1000, OpKind::kWriteAck});
      pgkeel::ledger::append_event(r.writes, {c, EventKind::kAcknowledged, Phase::kCommit, "", ++seq, t}, 10);
    }
  }
  r.faults[0].detail = "kill -9 of the postmaster of primary (pid 1) through COPY TO PROGRAM, which returned";
  r.faults[0].effect_seen = false;
  r.faults[0].effect = "the postmaster of primary (pid 1) survived kill -9: 5000 ms later it still accepts connections";
  r.events.clear();
  r.routes = {{1000, "db1", 2}, {5000, "db1", 2}};
  r.verdict = verdict_for(r);
  return r;
}

bool has_failure(const Summary& s, std::string_view text) {
  return std::any_of(s.failures.begin(), s.failures.end(),
                     [&](const std::string& f) { return f.find(text) != std::string::npos; });
}

std::string failures_of(const Summary& s) {
  std::string out;
  for (const auto& f : s.failures) out += f + "\n";
  return out;
}

}  // namespace

TEST_CASE("a kill the target ignored fails the drill, with every reason it shows", "[drill][verdict]") {
  const Recording r = ignored_kill_at_4s();
  const Summary s = summarize(r, Gates{.max_downtime_ms = 10'000});
  INFO(failures_of(s));
  CHECK_FALSE(s.passed());
  // the drill's own check of the process
  CHECK(has_failure(s, "fault kill at 4000 ms on db1 did not take effect: the postmaster of primary (pid 1) survived"));
  // pgkeel's view
  CHECK(has_failure(s, "no detection after it"));
  CHECK(has_failure(s, "no promotion after it"));
  // the clients' view: no pause, so no downtime to measure
  CHECK_FALSE(s.faults[0].downtime_ms);
  CHECK(s.faults[0].recovered);
  CHECK(has_failure(s, "writes never stopped, so no write downtime was measured"));
  // the lost/duplicate arithmetic alone would have passed it
  CHECK(r.verdict->ok());
  CHECK(s.failures.size() == 4);
}

TEST_CASE("a fault whose effect the drill could not see fails the run even when pgkeel acted", "[drill][verdict]") {
  Recording r = kill_at_4s();
  r.verdict = verdict_for(r);
  REQUIRE(summarize(r, {}).passed());
  r.faults[0].effect_seen = false;
  r.faults[0].effect = "the postmaster of db1 (pid 4242) is still running 5000 ms after kill -9 (state S)";
  const Summary s = summarize(r, {});
  CHECK_FALSE(s.passed());
  REQUIRE(s.failures.size() == 1);
  CHECK(s.failures[0] == "fault kill at 4000 ms on db1 did not take effect: the postmaster of db1 (pid 4242) is still "
                         "running 5000 ms after kill -9 (state S)");
}

TEST_CASE("a fault on the writer without its detection or promotion on the console fails the run",
          "[drill][verdict]") {
  Recording r = kill_at_4s();
  r.verdict = verdict_for(r);
  SECTION("detected, never promoted (writes came back on the old primary, say)") {
    std::erase_if(r.events, [](const ConsoleEvent& e) { return e.kind == "promotion"; });
    const Summary s = summarize(r, {});
    CHECK_FALSE(s.passed());
    REQUIRE(s.failures.size() == 1);
    CHECK(s.failures[0] == "fault kill at 4000 ms on db1: pgkeel reported no promotion after it (SHOW EVENTS)");
  }
  SECTION("neither") {
    r.events.clear();
    const Summary s = summarize(r, {});
    CHECK(s.failures.size() == 2);
    CHECK(has_failure(s, "no detection after it"));
    CHECK(has_failure(s, "no promotion after it"));
  }
  SECTION("the events could not be read at all") {
    r.events.clear();
    r.events_error = "console: connection refused";
    const Summary s = summarize(r, {});
    CHECK(has_failure(s, "pgkeel's events could not be read (SHOW EVENTS: console: connection refused)"));
  }
  SECTION("a detection of another node is not this fault's") {
    for (auto& e : r.events) {
      if (e.kind == "detection") e.node = "db2";
    }
    std::erase_if(r.events, [](const ConsoleEvent& e) { return e.kind == "failover_started"; });
    CHECK(has_failure(summarize(r, {}), "no detection after it"));
  }
  SECTION("events before the fault do not count") {
    for (auto& e : r.events) e.t_ms -= 2000;
    const Summary s = summarize(r, {});
    CHECK(has_failure(s, "no detection after it"));
    CHECK(has_failure(s, "no promotion after it"));
  }
}

TEST_CASE("writes that never came back fail the run, and always fail --max-downtime", "[drill][verdict]") {
  Recording r = kill_at_4s();
  // pgkeel detected the failure but never promoted; no write was acknowledged after 4000 ms
  std::erase_if(r.writes, [](const pgkeel::ledger::Segment& s) { return s.t_first_ms > 4000; });
  std::erase_if(r.ops, [](const Op& op) { return op.kind == OpKind::kWriteAck && op.t_ms > 4000; });
  std::erase_if(r.events, [](const ConsoleEvent& e) { return e.kind == "promotion"; });
  r.verdict = verdict_for(r);
  SECTION("without any gate") {
    const Summary s = summarize(r, {});
    INFO(failures_of(s));
    CHECK_FALSE(s.passed());
    CHECK_FALSE(s.faults[0].recovered);
    CHECK(has_failure(s, "no write was acknowledged after it (6000 ms without writes to the end of the run)"));
  }
  SECTION("a limit above the time left in the run is still exceeded") {
    const Summary s = summarize(r, Gates{.max_downtime_ms = 10'000});
    REQUIRE(s.gates.size() == 1);
    CHECK(s.gates[0].value == 6000);
    CHECK_FALSE(s.gates[0].passed);
    CHECK(has_failure(s, "max_downtime_ms exceeded: writes had not recovered by the end (6000 ms without writes so "
                         "far, limit 10000)"));
  }
  SECTION("a recovered run under the same limit passes it") {
    Recording ok = kill_at_4s();
    ok.verdict = verdict_for(ok);
    const Summary s = summarize(ok, Gates{.max_downtime_ms = 10'000});
    CHECK(s.gates[0].passed);
    CHECK(s.passed());
  }
}

TEST_CASE("a fault that must stop writes and shows no measured downtime is never PASSED", "[drill][verdict]") {
  // pgkeel's events and the drill's own check say the kill worked, yet writes never paused:
  // the load was not going where the fault struck, so the run measured nothing.
  Recording r = ignored_kill_at_4s();
  r.faults[0].effect_seen = true;
  r.faults[0].effect = "the postmaster of db1 (pid 4242) is gone 3 ms after the kill";
  r.events = kill_at_4s().events;
  const Summary s = summarize(r, Gates{.max_downtime_ms = 5000});
  INFO(failures_of(s));
  CHECK_FALSE(s.write_downtime_ms);
  CHECK_FALSE(s.passed());
  REQUIRE(s.failures.size() == 1);
  CHECK(s.failures[0] == "fault kill at 4000 ms on db1: writes never stopped, so no write downtime was measured; a "
                         "fault on the writer must stop them");
}

TEST_CASE("what each fault must show follows its kind and whether it hit the writer", "[drill][verdict]") {
  auto same = [](Expectation a, Expectation b) {
    return a.detection == b.detection && a.promotion == b.promotion && a.write_gap == b.write_gap;
  };
  for (auto kind : {FaultKind::kKill, FaultKind::kHang, FaultKind::kPartition}) {
    INFO(to_string(kind));
    CHECK(same(expected_effects(kind, true), {true, true, true}));
    CHECK(same(expected_effects(kind, false), {true, false, false}));  // a standby: found, not replaced
  }
  CHECK(same(expected_effects(FaultKind::kSwitchover, true), {true, true, true}));
  CHECK(same(expected_effects(FaultKind::kFailover, true), {true, true, true}));
  CHECK(same(expected_effects(FaultKind::kRestartProxy, false), {false, false, false}));
  CHECK(expected_effects(FaultKind::kRestartProxy, false).no_promotion);
  CHECK(same(expected_effects(FaultKind::kSyncLoss, false), {true, false, false}));
  CHECK(same(expected_effects(FaultKind::kLag, false), {false, false, false}));

  SECTION("a kill of a standby needs its detection, not a promotion or a pause") {
    Recording r = ignored_kill_at_4s();
    r.faults[0].target = "db2";
    r.faults[0].hit_writer = false;
    r.faults[0].effect_seen = true;
    r.events = {{4100, 2, "detection", "db2", "refused"}};
    const Summary s = summarize(r, {});
    INFO(failures_of(s));
    CHECK(s.passed());
    CHECK_FALSE(s.faults[0].downtime_ms);
  }
  SECTION("a replay pause passes with writes that never stopped") {
    Recording r = ignored_kill_at_4s();
    r.faults[0].fault.kind = FaultKind::kLag;
    r.faults[0].target = "db2";
    r.faults[0].hit_writer = false;
    r.faults[0].effect_seen = true;
    const Summary s = summarize(r, {});
    INFO(failures_of(s));
    CHECK(s.passed());
  }
  SECTION("a fault that was not injected fails with why, and nothing more is asked of it") {
    Recording r = kill_at_4s();
    r.verdict = verdict_for(r);
    r.faults[0].injected = false;
    r.faults[0].detail = "pgkeel routes writes nowhere right now";
    const Summary s = summarize(r, {});
    REQUIRE(s.failures.size() == 1);
    CHECK(s.failures[0] == "fault kill at 4000 ms on db1 was not injected: pgkeel routes writes nowhere right now");
  }
}

TEST_CASE("the JSON summary is well-formed with its documented fields", "[drill]") {
  Recording r = kill_at_4s();
  r.verdict = verdict_for(r);
  const Summary s = summarize(r, Gates{.max_downtime_ms = 5000});
  const std::string text = to_json(r, s);
  pgkeel::ledger::json::Reader reader(text);
  auto doc = reader.parse();
  REQUIRE(doc);
  REQUIRE(doc->is_object());
  CHECK(doc->find("format")->string == "pgkeel-drill/1");
  CHECK(doc->find("write_downtime_ms")->integer == 650);
  CHECK(doc->find("verification")->find("lost")->integer == 0);
  CHECK(doc->find("verification")->find("found_acknowledged")->integer ==
        doc->find("counts")->find("acknowledged")->integer);
  CHECK(doc->find("faults")->items.at(0).find("time_to_promote_ms")->integer == 600);
  CHECK(doc->find("faults")->items.at(0).find("time_to_detect_ms")->integer == 120);
  CHECK(doc->find("faults")->items.at(0).find("effect_seen")->boolean);
  CHECK(doc->find("faults")->items.at(0).find("hit_writer")->boolean);
  CHECK(doc->find("faults")->items.at(0).find("effect")->string.find("is gone") != std::string::npos);
  CHECK(doc->find("faults")->items.at(0).find("expected")->find("promotion")->boolean);
  CHECK(doc->find("faults")->items.at(0).find("recovered")->boolean);
  CHECK(doc->find("series")->items.size() == 10);
  CHECK(doc->find("gates")->items.at(0).find("passed")->type == pgkeel::ledger::json::Value::Type::kBool);
  CHECK(doc->find("passed")->boolean);
  for (const char* key : {"errors", "latency_ms", "events", "series_fields", "failures", "report_html"}) {
    CHECK(doc->find(key) != nullptr);
  }
}

TEST_CASE("the HTML report is one self-contained document with charts and markers", "[drill]") {
  Recording r = kill_at_4s();
  r.verdict = verdict_for(r);
  r.errors.push_back({"commit", "XX000", 1, 1, 1, "<script>alert(1)</script>"});
  const std::string html = to_html(r, summarize(r, {}));
  CHECK(html.rfind("<!DOCTYPE html>", 0) == 0);
  CHECK(html.find("</html>") == html.size() - 8);
  CHECK(html.find("<html") == html.rfind("<html"));
  std::size_t charts = 0;
  for (auto at = html.find("<svg"); at != std::string::npos; at = html.find("<svg", at + 1)) {
    ++charts;
  }
  CHECK(charts == 3);
  CHECK(html.find("http") == std::string::npos);
  CHECK(html.find("<script") == std::string::npos);
  CHECK(html.find("&lt;script&gt;") != std::string::npos);
  for (const char* marker : {">kill<", ">detected<", ">promoted<", ">recovered<"}) {
    CHECK(html.find(marker) != std::string::npos);
  }
}
