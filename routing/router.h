// routing/router.h — where a new client or transaction goes, decided from a snapshot and the
// replicas' last observed positions alone.
#pragma once

#include <cstdint>
#include <span>
#include <string_view>
#include <variant>

#include "routing/snapshot.h"

namespace pgkeel::routing {

// What the proxy knows of a node right now, beyond the snapshot: the health side's last probe
// (routing/replicas.h) and the connections pgkeel has open to it.
struct NodeLoad {
  bool up = false;               // the last probes answered
  std::uint64_t replay_lsn = 0;  // standby: WAL replayed (its reads see everything up to here)
  std::uint64_t lag_bytes = 0;   // behind the primary's last observed position
  double lag_seconds = 0;        // 0 when it has replayed everything it received
  int busy = 0;                  // server connections pgkeel has open to it
};

// How a read-only listener picks a standby.
struct ReadPolicy {
  std::uint64_t max_lag_bytes = 0;  // 0: no limit
  double max_lag_seconds = 0;       // 0: no limit
  bool fallback_to_primary = true;  // no standby fit: the primary serves (false: refused)
};

struct RouteRequest {
  Intent intent = Intent::kReadWrite;
  ReadPolicy read;
  // Read-your-writes: only a standby that has replayed this far may serve (0: any).
  std::uint64_t min_replay_lsn = 0;
  // By NodeId. Empty: no positions known; any standby in the snapshot is taken as fit.
  std::span<const NodeLoad> loads;
  // Spreads reads over equally busy standbys (e.g. a per-worker counter).
  std::uint32_t spread = 0;
};

struct Route {
  NodeId node = 0;
  std::string_view why;
};

// No node can serve now: becomes SQLSTATE 57P03 at the proxy's edge.
struct NoRoute {
  std::string_view why;
};

using Decision = std::variant<Route, NoRoute>;

Decision choose_node(const Snapshot& snap, const RouteRequest& req);

// Whether `n` may serve reads under `req` (a standby in the snapshot, enabled, unfenced, up, and
// within the lag limits); `why` says what keeps it out.
bool fit_for_reads(const NodeView& n, const RouteRequest& req, std::string_view& why);

}  // namespace pgkeel::routing
