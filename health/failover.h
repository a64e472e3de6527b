// health/failover.h — failover decisions as pure functions over observed facts: which standby
// may be promoted and why (or why none), whether the standbys confirm the primary is gone, what
// synchronous_standby_names should be, and which node the record says may take writes.
// No sockets, no clock reads: time and facts are arguments.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "health/detector.h"
#include "health/facts.h"
#include "routing/node.h"

namespace pgkeel::health {

enum class SyncMode : std::uint8_t { kOff, kOn, kStrict };
std::string_view to_string(SyncMode m);

struct NodeObservation {
  routing::NodeId id = 0;
  std::string name;
  int priority = 100;
  NodeHealth health = NodeHealth::kUnknown;
  bool enabled = true;
  bool fenced = false;
  std::optional<ProbeFacts> facts;  // the last successful probe's
};

struct PlanInput {
  std::vector<NodeObservation> nodes;
  routing::NodeId failed_primary = 0;
  std::string system_identifier;  // the cluster's; a node with another one is never promoted
  SyncMode sync_mode = SyncMode::kOn;
  // Standbys the primary reported as sync/quorum while synchronous_standby_names was set, at its
  // last good probe. Empty, or `degraded`, means commits were not waiting for any standby.
  std::vector<std::string> known_sync;
  bool degraded = false;
  Lsn primary_last_lsn = 0;        // the failed primary's last known WAL position
  std::uint64_t max_lag_bytes = 0; // async: a candidate further behind than this is refused
  bool force = false;              // skip the lag check (FAILOVER ... FORCE)
  std::optional<routing::NodeId> target;  // FAILOVER TO node
};

struct Verdict {
  routing::NodeId id = 0;
  std::string name;
  bool eligible = false;
  std::string why;  // why chosen-able or why refused, for logs and SHOW FAILOVER PLAN
  Lsn lsn = 0;
};

struct Plan {
  std::optional<routing::NodeId> chosen;
  std::string summary;               // one line: what would happen and why
  std::vector<Verdict> candidates;   // every other node, with its verdict
  std::uint64_t max_loss_bytes = 0;  // async: the chosen node's distance behind the old primary
};

Plan plan_failover(const PlanInput& in);

// Do the standbys confirm the primary is gone? A standby whose WAL receiver still streams and
// heard from its upstream within `max_receipt_age_s` says the primary is alive and it is only
// our view that is cut off.
struct WitnessResult {
  bool confirmed = false;
  std::string why;
};
WitnessResult witness(const std::vector<NodeObservation>& standbys, double max_receipt_age_s);

// synchronous_standby_names the primary should carry: with `on`, the healthy standbys (none:
// asynchronous, so commits keep flowing); with `strict`, every standby, healthy or not.
std::string desired_sync_names(SyncMode mode, const std::vector<std::string>& healthy_standbys,
                               const std::vector<std::string>& all_standbys);

// What pgkeel recorded about the primary it promoted (or bootstrapped).
struct PrimaryRecord {
  std::uint64_t epoch = 0;
  std::string node;
  std::string system_identifier;
  std::uint32_t timeline = 0;
  Lsn lsn = 0;  // promotion LSN (0 for the bootstrap record)
  std::string how;  // bootstrap, failover or switchover; empty in records of older versions

  std::string serialize() const;  // one line, key=value
  static std::optional<PrimaryRecord> parse(std::string_view text);
};

// Which node may take writes: only the recorded primary, and only while it is up, out of
// recovery, and on the recorded identity and timeline. Anything else: nobody, with the reason.
struct WriterChoice {
  std::optional<routing::NodeId> writer;
  std::string why;
};
WriterChoice choose_writer(const PrimaryRecord& record, const std::vector<NodeObservation>& nodes);

}  // namespace pgkeel::health
