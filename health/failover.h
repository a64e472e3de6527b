// health/failover.h — failover decisions as pure functions over observed facts: which standby
// may be promoted and why (or why none), whether the standbys confirm the primary is gone, what
// synchronous_standby_names should be, and which node the record says may take writes.
// No sockets, no clock reads: time and facts are arguments.
#pragma once

#include <algorithm>
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

// synchronous_standby_names as PostgreSQL reads it (§20.6.2 of the server docs): `FIRST k (…)`,
// `ANY k (…)`, `k (…)` (FIRST), or a bare list (FIRST 1). Names may be double-quoted; `*` is any.
struct SyncSpec {
  enum class Method : std::uint8_t { kNone, kFirst, kAny } method = Method::kNone;
  int k = 0;
  std::vector<std::string> names;  // as written, unquoted; "*" for any standby
  bool any_name() const { return std::find(names.begin(), names.end(), "*") != names.end(); }
  bool lists(const std::string& name) const {
    return any_name() || std::find(names.begin(), names.end(), name) != names.end();
  }
};
SyncSpec parse_sync_names(std::string_view text);
std::string describe(const SyncSpec& spec);  // "ANY 1 of (db2, db3)"
struct NodeObservation {
  routing::NodeId id = 0;
  std::string name;
  int priority = 100;
  NodeHealth health = NodeHealth::kUnknown;
  bool enabled = true;
  bool fenced = false;
  std::string fence_why;  // why it is held out when no DBA fenced it ("fenced until it rejoins ...")
  std::optional<ProbeFacts> facts;  // the last successful probe's
  // The application_name its replication connection has on the primary (its own name once pgkeel
  // adopted it); empty when unknown. synchronous_standby_names and the sync states speak of it.
  std::string replication_name;
  // Its facts were observed after the primary was seen failing (the quorum rule counts only those).
  bool heard_since_failure = true;
  const std::string& sync_name() const { return replication_name.empty() ? name : replication_name; }
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
  // synchronous_standby_names on the primary at that probe: with ANY k of N, the quorum rule.
  SyncSpec sync_spec;
  Lsn primary_last_lsn = 0;        // the failed primary's last known WAL position
  std::uint64_t max_lag_bytes = 0; // async: a candidate further behind than this is refused
  bool force = false;              // skip the lag and completeness checks (FAILOVER ... FORCE)
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
// asynchronous, so commits keep flowing); with `strict`, every standby, healthy or not. Names are
// the ones the standbys' replication connections use (NodeObservation::sync_name()).
std::string desired_sync_names(SyncMode mode, const std::vector<std::string>& healthy_standbys,
                               const std::vector<std::string>& all_standbys);

// Which row of the primary's pg_stat_replication is which configured standby: by application_name
// first, then by client address when only one standby lives there, then by elimination (one row
// and one standby left). Standbys that stream under their own [[node]] name need nothing; the
// others are named by pgkeel (Keeper adopts them), and until then these matches stand in.
struct StandbyRef {
  std::string name;
  std::string host;               // numeric, as pgkeel reaches it
  bool streams_from_primary = false;  // its WAL receiver streams from the primary's port
};
struct ReplicationMatch {
  std::string node;
  std::optional<std::size_t> row;  // index into the replicas
  std::string how;                 // "name", "address", "elimination"; empty when unmatched
};
std::vector<ReplicationMatch> match_replication(const std::vector<StandbyRef>& standbys,
                                                const std::vector<ReplicaInfo>& replicas);

// Whether synchronous replication keeps its promise now, and why not, in one line for every
// surface (event, SHOW NODES, /health, the status page, on_degraded).
enum class SyncHealth : std::uint8_t {
  kUnknown,     // no primary evaluated yet (start-up, no writer)
  kOff,         // synchronous_mode = off: nothing promised
  kHonoured,    // enough listed standbys acknowledge commits
  kDegraded,    // commits are acknowledged without a standby (on: pgkeel chose availability)
  kWaiting,     // commits wait for a standby that does not acknowledge (strict)
};
std::string_view to_string(SyncHealth h);
struct SyncStandby {
  std::string name;              // [[node]] name
  std::string replication_name;  // what it streams as; empty when it does not stream from the primary
  std::string sync_state;        // from pg_stat_replication: sync, quorum, potential, async
  std::string state;             // streaming, catchup, ...
  bool reachable = true;         // pgkeel's probes answer
  bool excluded = false;         // fenced or disabled: pgkeel will not name it
};
struct SyncStatus {
  SyncHealth health = SyncHealth::kOff;
  std::string why;
};
SyncStatus sync_status(SyncMode mode, const std::string& primary, const std::string& names_set,
                       const std::vector<SyncStandby>& standbys);

// libpq conninfo `conninfo` with the keywords in `set` set (replaced or added) and those in `drop`
// removed, every other keyword kept as it was (values quoted); nullopt with `error` when libpq
// cannot parse it. A standby keeps its own user, password, passfile and TLS settings this way
// when pgkeel names it or points it at a new primary.
std::optional<std::string> rewrite_conninfo(const std::string& conninfo,
                                            const std::vector<std::pair<std::string, std::string>>& set,
                                            const std::vector<std::string>& drop, std::string& error);
inline std::optional<std::string> with_application_name(const std::string& conninfo, const std::string& name,
                                                        std::string& error) {
  return rewrite_conninfo(conninfo, {{"application_name", name}}, {}, error);
}

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

// At start: the newest of the records pgkeel can find (its state file, each node's
// pgkeel.primary_history). The highest epoch wins; between equal epochs (written by versions whose
// epochs restarted at every start) the higher timeline, then the state file. Epochs never go
// backwards: the routing table starts above the highest one seen anywhere.
struct FoundRecord {
  PrimaryRecord record;
  std::string source;  // "state file", "cluster record on db2"
};
std::optional<FoundRecord> newest_record(const std::vector<FoundRecord>& found);

}  // namespace pgkeel::health
