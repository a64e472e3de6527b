#include <catch2/catch.hpp>

#include "health/rejoin.h"

using namespace pgkeel::health;
using namespace std::chrono_literals;
using Clock = RejoinState::Clock;

namespace {

ProbeFacts standby_facts(std::uint32_t timeline) {
  ProbeFacts f;
  f.in_recovery = true;
  f.system_identifier = "7300";
  f.timeline = timeline;
  return f;
}

ProbeFacts primary_facts(std::uint32_t timeline) {
  ProbeFacts f = standby_facts(timeline);
  f.in_recovery = false;
  return f;
}

StandingInput input(const ProbeFacts* f, bool streams = false) {
  StandingInput in;
  in.facts = f;
  in.system_identifier = "7300";
  in.record_timeline = 2;
  in.streams_from_writer = streams;
  return in;
}

RejoinPolicy auto_policy() {
  RejoinPolicy p;
  p.mode = RejoinMode::kAuto;
  p.has_command = true;
  p.settle = 2s;
  p.verify_timeout = 30s;
  p.backoff_first = 5s;
  p.backoff_max = 40s;
  return p;
}

}  // namespace

TEST_CASE("assess: where a node stands toward the recorded primary", "[rejoin]") {
  const ProbeFacts old_primary = primary_facts(1);
  const ProbeFacts old_standby = standby_facts(1);
  const ProbeFacts new_standby = standby_facts(2);
  ProbeFacts other = standby_facts(2);
  other.system_identifier = "9999";

  CHECK(assess(input(nullptr)) == Standing::kUnknown);
  CHECK(assess(input(&old_primary)) == Standing::kReturnedPrimary);
  CHECK(assess(input(&old_standby)) == Standing::kOldTimeline);
  // On the old timeline, even if the primary lists it (a standby that has not yet received the
  // promotion's history file): it does not follow until it is on the record's timeline.
  CHECK(assess(input(&old_standby, true)) == Standing::kOldTimeline);
  CHECK(assess(input(&new_standby, true)) == Standing::kFollows);
  CHECK(assess(input(&new_standby, false)) == Standing::kCatchingUp);
  CHECK(assess(input(&other, true)) == Standing::kForeign);

  StandingInput writer = input(&old_primary);
  writer.is_writer = true;
  CHECK(assess(writer) == Standing::kWriter);
  // A node of another cluster is foreign even when it claims the writer's slot.
  StandingInput foreign_writer = input(&other);
  foreign_writer.is_writer = true;
  CHECK(assess(foreign_writer) == Standing::kForeign);
}

TEST_CASE("describe_standing names the node, its timeline and the record", "[rejoin]") {
  const ProbeFacts old_primary = primary_facts(1);
  CHECK(describe_standing(Standing::kReturnedPrimary, "db1", &old_primary, "db2", 2) ==
        "db1 returned as a primary on timeline 1 (the record says db2, timeline 2); fenced");
  const ProbeFacts old_standby = standby_facts(1);
  CHECK_THAT(describe_standing(Standing::kOldTimeline, "db3", &old_standby, "db2", 2),
             Catch::Contains("timeline 1") && Catch::Contains("until rewound"));
}

TEST_CASE("rejoin: a returned primary is reported once, then the command runs and is verified", "[rejoin]") {
  const RejoinPolicy policy = auto_policy();
  RejoinState st;
  const Clock::time_point t0{};

  // Not before it has stood so for `settle`.
  CHECK(observe(st, Standing::kReturnedPrimary, "db1 returned", policy, t0, false) == RejoinAction::kNone);
  CHECK(st.phase == RejoinPhase::kFollowing);
  CHECK(observe(st, Standing::kReturnedPrimary, "db1 returned", policy, t0 + 2s, false) ==
        RejoinAction::kReportNeeded);
  CHECK(st.phase == RejoinPhase::kNeeded);
  CHECK(st.why == "db1 returned");

  // Nothing starts while a failover runs.
  CHECK(observe(st, Standing::kReturnedPrimary, "", policy, t0 + 3s, true) == RejoinAction::kNone);
  CHECK(observe(st, Standing::kReturnedPrimary, "", policy, t0 + 4s, false) == RejoinAction::kRun);
  CHECK(st.phase == RejoinPhase::kRunning);
  CHECK(st.attempts == 1);
  // While the command runs, probes change nothing (it is stopped and restarted by the command).
  CHECK(observe(st, Standing::kUnknown, "", policy, t0 + 5s, false) == RejoinAction::kNone);

  command_finished(st, 0, "", policy, t0 + 10s);
  CHECK(st.phase == RejoinPhase::kVerifying);
  // Streaming, but still on the old timeline: not yet.
  CHECK(observe(st, Standing::kOldTimeline, "", policy, t0 + 11s, false) == RejoinAction::kNone);
  CHECK(observe(st, Standing::kCatchingUp, "", policy, t0 + 12s, false) == RejoinAction::kNone);
  CHECK(observe(st, Standing::kFollows, "", policy, t0 + 13s, false) == RejoinAction::kVerified);
  CHECK(st.phase == RejoinPhase::kFollowing);
  CHECK(st.attempts == 0);
}

TEST_CASE("rejoin: failures retry with a doubling backoff and keep the command's output", "[rejoin]") {
  const RejoinPolicy policy = auto_policy();
  CHECK(backoff_after(1, policy) == 5s);
  CHECK(backoff_after(2, policy) == 10s);
  CHECK(backoff_after(3, policy) == 20s);
  CHECK(backoff_after(4, policy) == 40s);
  CHECK(backoff_after(9, policy) == 40s);

  RejoinState st;
  const Clock::time_point t0{};
  observe(st, Standing::kOldTimeline, "db3 on timeline 1", policy, t0, false);
  REQUIRE(observe(st, Standing::kOldTimeline, "db3 on timeline 1", policy, t0 + 2s, false) ==
          RejoinAction::kReportNeeded);
  REQUIRE(observe(st, Standing::kOldTimeline, "", policy, t0 + 2s, false) == RejoinAction::kRun);
  command_finished(st, 1, "pg_rewind: could not connect", policy, t0 + 3s);
  CHECK(st.phase == RejoinPhase::kBackoff);
  CHECK_THAT(st.last_error, Catch::Contains("status 1") && Catch::Contains("pg_rewind: could not connect"));
  CHECK(observe(st, Standing::kOldTimeline, "", policy, t0 + 7s, false) == RejoinAction::kNone);
  CHECK(observe(st, Standing::kOldTimeline, "", policy, t0 + 8s, false) == RejoinAction::kRun);
  CHECK(st.attempts == 2);

  // The second try succeeds but the node never follows: the verification fails into the backoff.
  command_finished(st, 0, "", policy, t0 + 9s);
  CHECK(observe(st, Standing::kCatchingUp, "", policy, t0 + 30s, false) == RejoinAction::kNone);
  CHECK(observe(st, Standing::kCatchingUp, "", policy, t0 + 39s, false) == RejoinAction::kVerifyFailed);
  CHECK(st.phase == RejoinPhase::kBackoff);
  CHECK_THAT(st.last_error, Catch::Contains("does not stream"));
  CHECK(st.next_try == t0 + 39s + 10s);
  // Still catching up (not in need of a rewind any more): no new command.
  CHECK(observe(st, Standing::kCatchingUp, "", policy, t0 + 60s, false) == RejoinAction::kNone);
  // It follows after all (late streaming): done.
  CHECK(observe(st, Standing::kFollows, "", policy, t0 + 61s, false) == RejoinAction::kNone);
  CHECK(observe(st, Standing::kFollows, "", policy, t0 + 63s, false) == RejoinAction::kVerified);
  CHECK(st.phase == RejoinPhase::kFollowing);
}

TEST_CASE("rejoin: manual mode reports and waits; a rejoin by hand is seen", "[rejoin]") {
  RejoinPolicy policy = auto_policy();
  policy.mode = RejoinMode::kManual;
  RejoinState st;
  const Clock::time_point t0{};
  observe(st, Standing::kReturnedPrimary, "db1 returned", policy, t0, false);
  CHECK(observe(st, Standing::kReturnedPrimary, "db1 returned", policy, t0 + 2s, false) ==
        RejoinAction::kReportNeeded);
  for (int i = 3; i < 20; ++i) {
    CHECK(observe(st, Standing::kReturnedPrimary, "", policy, t0 + std::chrono::seconds(i), false) ==
          RejoinAction::kNone);
  }
  CHECK(st.phase == RejoinPhase::kNeeded);
  // A DBA ran tools/rejoin.sh: once it follows for `settle`, the episode ends.
  CHECK(observe(st, Standing::kFollows, "", policy, t0 + 30s, false) == RejoinAction::kNone);
  CHECK(observe(st, Standing::kFollows, "", policy, t0 + 32s, false) == RejoinAction::kVerified);
  CHECK(st.phase == RejoinPhase::kFollowing);

  // Auto mode without a command behaves as manual.
  RejoinPolicy no_command = auto_policy();
  no_command.has_command = false;
  RejoinState st2;
  observe(st2, Standing::kReturnedPrimary, "x", no_command, t0, false);
  CHECK(observe(st2, Standing::kReturnedPrimary, "x", no_command, t0 + 2s, false) == RejoinAction::kReportNeeded);
  CHECK(observe(st2, Standing::kReturnedPrimary, "x", no_command, t0 + 3s, false) == RejoinAction::kNone);
}

TEST_CASE("rejoin: a standby briefly on the old timeline after being re-pointed is left alone", "[rejoin]") {
  const RejoinPolicy policy = auto_policy();
  RejoinState st;
  const Clock::time_point t0{};
  CHECK(observe(st, Standing::kOldTimeline, "", policy, t0, false) == RejoinAction::kNone);
  CHECK(observe(st, Standing::kOldTimeline, "", policy, t0 + 1s, false) == RejoinAction::kNone);
  CHECK(observe(st, Standing::kFollows, "", policy, t0 + 1500ms, false) == RejoinAction::kNone);
  CHECK(observe(st, Standing::kFollows, "", policy, t0 + 10s, false) == RejoinAction::kNone);
  CHECK(st.phase == RejoinPhase::kFollowing);
  // Unreachable or foreign nodes never start a rejoin.
  CHECK(observe(st, Standing::kUnknown, "", policy, t0 + 20s, false) == RejoinAction::kNone);
  CHECK(observe(st, Standing::kForeign, "", policy, t0 + 40s, false) == RejoinAction::kNone);
  CHECK(st.phase == RejoinPhase::kFollowing);
}
