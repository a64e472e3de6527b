// health/rejoin.cc — see rejoin.h.
#include "health/rejoin.h"

#include <algorithm>

namespace pgkeel::health {

std::string_view to_string(Standing s) {
  switch (s) {
    case Standing::kUnknown: return "unknown";
    case Standing::kWriter: return "writer";
    case Standing::kFollows: return "follows";
    case Standing::kCatchingUp: return "catching up";
    case Standing::kOldTimeline: return "old timeline";
    case Standing::kReturnedPrimary: return "returned primary";
    case Standing::kForeign: return "foreign";
  }
  return "unknown";
}

std::string_view to_string(RejoinPhase p) {
  switch (p) {
    case RejoinPhase::kFollowing: return "";
    case RejoinPhase::kNeeded: return "needed";
    case RejoinPhase::kRunning: return "running";
    case RejoinPhase::kVerifying: return "verifying";
    case RejoinPhase::kBackoff: return "backoff";
  }
  return "";
}

Standing assess(const StandingInput& in) {
  if (in.facts == nullptr) return Standing::kUnknown;
  const ProbeFacts& f = *in.facts;
  if (!in.system_identifier.empty() && !f.system_identifier.empty() && f.system_identifier != in.system_identifier) {
    return Standing::kForeign;
  }
  if (in.is_writer) return Standing::kWriter;
  if (!f.in_recovery) return Standing::kReturnedPrimary;
  if (in.record_timeline == 0) return Standing::kUnknown;
  // A standby's timeline is what its WAL receiver last received (or its last checkpoint's): it
  // reaches the record's once it streams past the promotion.
  if (f.timeline != 0 && f.timeline < in.record_timeline) return Standing::kOldTimeline;
  if (in.streams_from_writer) return Standing::kFollows;
  return Standing::kCatchingUp;
}

std::string describe_standing(Standing s, const std::string& node, const ProbeFacts* facts, const std::string& writer,
                              std::uint32_t record_timeline) {
  const std::string tl = facts != nullptr && facts->timeline != 0 ? std::to_string(facts->timeline) : "?";
  const std::string record = "the record says " + (writer.empty() ? std::string("no primary") : writer) +
                             ", timeline " + std::to_string(record_timeline);
  switch (s) {
    case Standing::kReturnedPrimary:
      return node + " returned as a primary on timeline " + tl + " (" + record + "); fenced";
    case Standing::kOldTimeline:
      return node + " is a standby on timeline " + tl + ", behind the record's (" + record +
             "): it cannot stream from " + (writer.empty() ? std::string("the primary") : writer) + " until rewound";
    case Standing::kForeign:
      return node + " belongs to another cluster (system identifier " +
             (facts != nullptr ? facts->system_identifier : std::string("?")) + "); never routed or rejoined";
    case Standing::kCatchingUp:
      return node + " is a standby on timeline " + tl + " not (yet) streaming from " +
             (writer.empty() ? std::string("the primary") : writer);
    case Standing::kFollows:
      return node + " streams from " + writer + " on timeline " + tl;
    case Standing::kWriter:
      return node + " is the recorded primary";
    case Standing::kUnknown:
      break;
  }
  return node + ": standing unknown";
}

std::chrono::milliseconds backoff_after(int failures, const RejoinPolicy& policy) {
  auto wait = policy.backoff_first;
  for (int i = 1; i < failures && wait < policy.backoff_max; ++i) wait *= 2;
  return std::min(wait, policy.backoff_max);
}

namespace {

bool must_rejoin(Standing s) { return s == Standing::kReturnedPrimary || s == Standing::kOldTimeline; }

}  // namespace

RejoinAction observe(RejoinState& st, Standing standing, std::string why, const RejoinPolicy& policy,
                     RejoinState::Clock::time_point now, bool busy) {
  if (standing != st.standing) {
    st.standing = standing;
    st.standing_since = now;
  }
  const bool settled = now - st.standing_since >= policy.settle;

  switch (st.phase) {
    case RejoinPhase::kFollowing:
      if (!must_rejoin(standing) || !settled) return RejoinAction::kNone;
      st.phase = RejoinPhase::kNeeded;
      st.why = std::move(why);
      st.attempts = 0;
      st.last_error.clear();
      st.reported = false;
      [[fallthrough]];

    case RejoinPhase::kNeeded:
      if (standing == Standing::kFollows && settled) {
        // Rejoined by hand (tools/rejoin.sh) or by itself: nothing left to do.
        st = RejoinState{RejoinPhase::kFollowing, standing, st.standing_since};
        return RejoinAction::kVerified;
      }
      if (!st.reported) {
        st.reported = true;
        return RejoinAction::kReportNeeded;
      }
      if (policy.mode != RejoinMode::kAuto || !policy.has_command || busy) return RejoinAction::kNone;
      // Only a node that answers and is still in need: a node that went away waits.
      if (!must_rejoin(standing)) return RejoinAction::kNone;
      st.phase = RejoinPhase::kRunning;
      ++st.attempts;
      return RejoinAction::kRun;

    case RejoinPhase::kRunning:
      return RejoinAction::kNone;  // command_finished() moves on

    case RejoinPhase::kVerifying:
      if (standing == Standing::kFollows) {
        st = RejoinState{RejoinPhase::kFollowing, standing, st.standing_since};
        return RejoinAction::kVerified;
      }
      if (now >= st.verify_until) {
        st.phase = RejoinPhase::kBackoff;
        st.last_error = "rejoin_command succeeded, but " + std::to_string(policy.verify_timeout.count() / 1000) +
                        " s later the node does not stream from the primary on its timeline (" +
                        std::string(to_string(standing)) + ")";
        st.next_try = now + backoff_after(st.attempts, policy);
        return RejoinAction::kVerifyFailed;
      }
      return RejoinAction::kNone;

    case RejoinPhase::kBackoff:
      if (standing == Standing::kFollows && settled) {
        st = RejoinState{RejoinPhase::kFollowing, standing, st.standing_since};
        return RejoinAction::kVerified;
      }
      if (now < st.next_try || busy || !must_rejoin(standing) || policy.mode != RejoinMode::kAuto ||
          !policy.has_command) {
        return RejoinAction::kNone;
      }
      st.phase = RejoinPhase::kRunning;
      ++st.attempts;
      return RejoinAction::kRun;
  }
  return RejoinAction::kNone;
}

void command_finished(RejoinState& st, int status, const std::string& output, const RejoinPolicy& policy,
                      RejoinState::Clock::time_point now) {
  if (st.phase != RejoinPhase::kRunning) return;
  if (status == 0) {
    st.phase = RejoinPhase::kVerifying;
    st.verify_until = now + policy.verify_timeout;
    return;
  }
  st.phase = RejoinPhase::kBackoff;
  st.last_error = "rejoin_command failed (status " + std::to_string(status) + ")" +
                  (output.empty() ? std::string() : ": " + output);
  st.next_try = now + backoff_after(st.attempts, policy);
}

}  // namespace pgkeel::health
