// health/rejoin.h — what becomes of a node that is not the recorded primary and does not follow
// it: an old primary that came back after a failover (still a primary, or a standby on the old
// timeline), and the steps that make it a standby of the new primary again. Pure: facts, the
// record and the time are arguments; the keeper runs the command and feeds the outcome back.
//
// The promise: a node that returned is named on every surface at once ("db1 returned as a primary
// on timeline 1; fenced; rejoining"), stays fenced (routing follows the record's epoch, never the
// node's own claim), and is named synchronous again only once it streams from the recorded
// primary on the recorded timeline.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>

#include "health/facts.h"

namespace pgkeel::health {

enum class RejoinMode : std::uint8_t {
  kManual,  // say so on every surface and keep it fenced; a DBA rejoins it (tools/rejoin.sh)
  kAuto,    // also run rejoin_command, verify, retry with backoff
};

// Where a reachable node stands toward the recorded primary, from one probe.
enum class Standing : std::uint8_t {
  kUnknown,          // not reachable, no facts, or no recorded primary to compare with
  kWriter,           // it is the recorded primary
  kFollows,          // a standby streaming from the recorded primary on its timeline (or later)
  kCatchingUp,       // a standby not (yet) streaming from the recorded primary, on its timeline
  kOldTimeline,      // a standby on an older timeline than the record's: it must be rewound
  kReturnedPrimary,  // not in recovery, and not the recorded primary: an old primary came back
  kForeign,          // another system identifier: never touched
};
std::string_view to_string(Standing s);

struct StandingInput {
  bool is_writer = false;              // this node is the recorded primary
  const ProbeFacts* facts = nullptr;   // its last probe's; null when unreachable
  std::string system_identifier;       // the cluster's
  std::uint32_t record_timeline = 0;   // the recorded primary's timeline (0: unknown)
  // The recorded primary's pg_stat_replication has a streaming row matched to this node (the
  // keeper's match_replication): it streams from the primary, as the primary itself says.
  bool streams_from_writer = false;
};
Standing assess(const StandingInput& in);

// One line for events and surfaces: "db1 returned as a primary on timeline 1 (the record says
// db2, timeline 2); fenced".
std::string describe_standing(Standing s, const std::string& node, const ProbeFacts* facts,
                              const std::string& writer, std::uint32_t record_timeline);

// A node's rejoin, step by step. kFollowing is the resting state of a healthy standby.
enum class RejoinPhase : std::uint8_t {
  kFollowing,  // nothing to do
  kNeeded,     // it must rejoin; manual mode stays here (reported), auto mode runs the command
  kRunning,    // rejoin_command runs
  kVerifying,  // the command succeeded: waiting to see it stream from the primary on its timeline
  kBackoff,    // the command or the verification failed: the next try waits
};
std::string_view to_string(RejoinPhase p);

struct RejoinPolicy {
  RejoinMode mode = RejoinMode::kManual;
  bool has_command = false;
  // A standing must last this long before it counts (a standby pointed at the new primary a
  // moment ago is still on the old timeline until it receives the new one).
  std::chrono::milliseconds settle{5000};
  std::chrono::milliseconds verify_timeout{60000};
  std::chrono::milliseconds backoff_first{5000};
  std::chrono::milliseconds backoff_max{300000};
};

struct RejoinState {
  using Clock = std::chrono::steady_clock;
  RejoinPhase phase = RejoinPhase::kFollowing;
  Standing standing = Standing::kUnknown;
  Clock::time_point standing_since{};
  int attempts = 0;               // commands run since it last followed
  Clock::time_point next_try{};   // kBackoff: not before
  Clock::time_point verify_until{};
  std::string why;                // why it must rejoin, for the surfaces
  std::string last_error;         // the last failure: the command's status and output, or the verification's
  bool reported = false;          // the "returned"/"must rejoin" event was emitted for this episode
};

enum class RejoinAction : std::uint8_t {
  kNone,
  kReportNeeded,  // emit the "returned ... fenced; rejoining|rejoin by hand" event (once per episode)
  kRun,           // run rejoin_command now (phase is kRunning)
  kVerified,      // it follows: emit "rejoined" (phase back to kFollowing)
  kVerifyFailed,  // the verification timed out (phase kBackoff; last_error says why)
};

// Feeds one probe's standing (or kUnknown for an unreachable node). `busy`: a failover or
// switchover runs, or the keeper has no settled writer: nothing starts then.
RejoinAction observe(RejoinState& st, Standing standing, std::string why, const RejoinPolicy& policy,
                     RejoinState::Clock::time_point now, bool busy);

// The command exited: status 0 goes on to verification; anything else to the backoff.
void command_finished(RejoinState& st, int status, const std::string& output, const RejoinPolicy& policy,
                      RejoinState::Clock::time_point now);

// The wait before try n+1 after n failures: first, doubled each time, at most max.
std::chrono::milliseconds backoff_after(int failures, const RejoinPolicy& policy);

}  // namespace pgkeel::health
