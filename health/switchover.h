// health/switchover.h — the decisions behind the console's acting verbs, as pure functions: whether
// a planned switchover may start and to which standby, whether the target has caught up with the
// old primary's shutdown checkpoint, and what FENCE/UNFENCE/DISABLE/ENABLE may do to a node.
// No sockets, no clock reads: facts and elapsed time are arguments.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "health/failover.h"

namespace pgkeel::health {

struct SwitchoverInput {
  std::vector<NodeObservation> nodes;
  std::optional<routing::NodeId> writer;  // the current writer: the node that will be stopped
  std::string system_identifier;          // the cluster's
  std::optional<std::string> target;      // SWITCHOVER TO name (case-sensitive); none: the best
  bool stop_command_configured = false;
  std::string busy;  // non-empty: what is running now ("a failover", "a switchover")
};

struct SwitchoverChoice {
  std::optional<routing::NodeId> target;
  std::string why;  // the refusal, or why this target
};

// A switchover stops the writer cleanly and promotes a standby once it holds every byte of the
// writer's WAL, so lag and synchronous state do not matter; what matters is that the target is a
// healthy standby of this cluster streaming from the writer now. Without a named target, the
// failover planner ranks the streaming standbys (highest WAL position, then priority, then name).
SwitchoverChoice choose_switchover_target(const SwitchoverInput& in);

// The stop command may print `checkpoint_lsn=X/Y` (the old primary's shutdown checkpoint, from
// pg_controldata). The last such line counts; nullopt when there is none or it is malformed.
std::optional<Lsn> parse_checkpoint_lsn(std::string_view output);

struct CatchupInput {
  std::optional<Lsn> checkpoint_lsn;  // from the stop command, if it printed one
  Lsn lsn_before_stop = 0;            // the old primary's pg_current_wal_lsn() just before the stop
  Lsn received = 0;                   // the target's furthest received/replayed position now
  int unchanged_checks = 0;           // consecutive checks in a row at this same `received`
  int checks_to_settle = 3;           // without a checkpoint LSN: unchanged checks that mean "settled"
  bool past_deadline = false;         // switchover_timeout ran out
};

enum class CatchupState : std::uint8_t { kWait, kCaughtUp, kFailed };

struct CatchupVerdict {
  CatchupState state = CatchupState::kWait;
  std::string why;
};

// Has the target received everything the old primary wrote, up to and including its shutdown
// checkpoint record? With the checkpoint's location known, the target must be past it (the
// location is where the record starts). Without it, the target must be at or past the position
// noted before the stop and have stopped moving.
CatchupVerdict check_catchup(const CatchupInput& in);

// The maintenance verbs of the console.
enum class NodeVerb : std::uint8_t { kFence, kUnfence, kDisable, kEnable };
std::string_view to_string(NodeVerb v);

struct NodeVerbInput {
  NodeVerb verb = NodeVerb::kFence;
  NodeObservation node;                   // as last observed (facts: the last successful probe's)
  std::optional<routing::NodeId> writer;  // the current writer
  std::optional<std::string> recorded_primary;  // the primary record's node name
  std::string busy;                       // non-empty: a failover or switchover runs
};

struct NodeVerbDecision {
  bool ok = false;
  bool changes = false;         // the node's flags change (publish a new snapshot)
  bool drops_writer = false;    // FENCE of the writer: nobody takes writes now
  std::string text;             // the answer to the console
};

// FENCE: no traffic at all (fencing the writer leaves no writer; clients are held).
// UNFENCE: only a node in recovery as of its last probe, or the recorded primary itself: a fenced
// old primary still running as a primary must never get traffic again.
// DISABLE: maintenance, no traffic and never a failover candidate; refused for the writer.
// ENABLE: back in service.
NodeVerbDecision decide_node_verb(const NodeVerbInput& in);

}  // namespace pgkeel::health
