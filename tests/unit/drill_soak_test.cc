#include <catch2/catch.hpp>

#include <map>

#include "tools/drill/plan.h"
#include "tools/drill/report.h"

using namespace pgkeel::drill;

TEST_CASE("soak kinds: parsed, unknown ones refused", "[drill][soak]") {
  std::string error;
  CHECK(parse_soak_kinds("kill,hang,sync-loss", error) == std::vector<std::string>{"kill", "hang", "sync-loss"});
  CHECK(error.empty());
  CHECK(parse_soak_kinds("kill,explode", error).empty());
  CHECK_THAT(error, Catch::Contains("explode"));
  error.clear();
  CHECK(parse_soak_kinds(",", error).empty());
  CHECK_FALSE(error.empty());
}

TEST_CASE("soak draw: the seed names the sequence; every kind comes up; holds are set", "[drill][soak]") {
  const std::vector<std::string> kinds(std::begin(kSoakKinds), std::end(kSoakKinds));
  std::uint64_t a = 42, b = 42, c = 43;
  std::vector<Fault> first, again, other;
  for (int i = 0; i < 200; ++i) {
    first.push_back(draw_soak_fault(a, kinds, i * 1000, 3000));
    again.push_back(draw_soak_fault(b, kinds, i * 1000, 3000));
    other.push_back(draw_soak_fault(c, kinds, i * 1000, 3000));
  }
  CHECK(first == again);
  CHECK(first != other);
  std::map<std::string, int> seen;
  for (const Fault& f : first) {
    seen[std::string(to_string(f.kind)) + (f.all_processes ? "-all" : "")]++;
    const bool held = f.kind == FaultKind::kHang || f.kind == FaultKind::kPartition || f.kind == FaultKind::kLag;
    CHECK(f.for_ms.has_value() == held);
    if (held) CHECK(*f.for_ms == 3000);
    CHECK(f.node.empty());
  }
  CHECK(seen.size() == kinds.size());  // kill and kill-all apart
  // A restricted list draws only from itself.
  std::uint64_t d = 1;
  for (int i = 0; i < 50; ++i) {
    const Fault f = draw_soak_fault(d, {"kill-all"}, 0, 1000);
    CHECK(f.kind == FaultKind::kKill);
    CHECK(f.all_processes);
  }
}

namespace {

// A soak of three faults with measured outcomes, as summarize() would give them.
std::pair<Recording, Summary> three_faults() {
  Recording r;
  r.soak = true;
  r.soak_planned = 3;
  r.soak_seed = 9;
  auto fault = [](FaultKind k, std::int64_t t, bool writer, bool all = false) {
    FaultRecord f;
    f.fault.kind = k;
    f.fault.all_processes = all;
    f.t_ms = t;
    f.injected = true;
    f.effect_seen = true;
    f.hit_writer = writer;
    f.target = "db1";
    return f;
  };
  r.faults = {fault(FaultKind::kKill, 1000, true), fault(FaultKind::kKill, 20000, true), fault(FaultKind::kLag, 40000, false)};
  r.whole_after_ms = {12000, std::nullopt, 3000};
  Summary s;
  FaultOutcome k1;
  k1.detected_ms = 1100;
  k1.promoted_ms = 1400;
  k1.downtime_ms = 450;
  k1.recovered = true;
  k1.expected = expected_effects(FaultKind::kKill, true);
  FaultOutcome k2 = k1;
  k2.detected_ms = 20200;
  k2.promoted_ms = 20900;
  k2.downtime_ms = 1200;
  FaultOutcome lag;
  lag.recovered = true;
  s.faults = {k1, k2, lag};
  return {r, s};
}

}  // namespace

TEST_CASE("soak table: per kind, counts, spreads and the time until whole again", "[drill][soak]") {
  auto [r, s] = three_faults();
  const auto rows = soak_table(r, s);
  REQUIRE(rows.size() == 2);
  CHECK(rows[0].kind == "kill");
  CHECK(rows[0].count == 2);
  CHECK(rows[0].passed == 2);
  CHECK(rows[0].detected.n == 2);
  CHECK(rows[0].detected.p50 == 100);
  CHECK(rows[0].detected.max == 200);
  CHECK(rows[0].promoted.max == 900);
  CHECK(rows[0].downtime.p50 == 450);
  CHECK(rows[0].downtime.max == 1200);
  CHECK(rows[0].whole.n == 1);  // the second kill never made the cluster whole again
  CHECK(rows[0].whole.max == 12000);
  CHECK(rows[1].kind == "lag");
  CHECK(rows[1].downtime.n == 0);

  const auto h = downtime_histogram(s);
  REQUIRE(h.size() == std::size(kDowntimeBucketNames));
  CHECK(h[0] == 1);      // 450 ms
  CHECK(h[2] == 1);      // 1200 ms
  CHECK(h.back() == 1);  // the lag never stopped writes
}

TEST_CASE("soak verdict: a soak that stopped early, or ran fewer faults than planned, fails", "[drill][soak]") {
  auto [r, s] = three_faults();
  r.soak_stopped = "after fault 2: the cluster was not whole again within 180 s: node db1 is down";
  r.elapsed_ms = 60000;
  const Summary sum = summarize(r, Gates{});
  bool named = false;
  for (const auto& f : sum.failures) named = named || f.find("the soak ran 3 of 3 faults: after fault 2") != std::string::npos;
  CHECK(named);

  auto [r2, s2] = three_faults();
  r2.soak_planned = 5;
  r2.elapsed_ms = 60000;
  const Summary sum2 = summarize(r2, Gates{});
  bool short_run = false;
  for (const auto& f : sum2.failures) short_run = short_run || f.find("the soak ran 3 of 5 faults") != std::string::npos;
  CHECK(short_run);
}
