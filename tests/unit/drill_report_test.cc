#include <catch2/catch.hpp>

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
  r.faults.push_back({Fault{FaultKind::kKill, 4000, {}, {}, false}, 4000, "db1", true, "kill -9 of 1 process(es)"});
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
