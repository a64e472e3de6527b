#include <algorithm>
#include <utility>

#include "routing/router.h"
#include "routing/snapshot.h"

namespace pgkeel::routing {

std::string_view to_string(Role role) {
  switch (role) {
    case Role::kPrimary: return "primary";
    case Role::kStandby: return "standby";
    case Role::kUnknown: break;
  }
  return "unknown";
}

std::string_view to_string(Intent intent) {
  return intent == Intent::kReadWrite ? "read-write" : "read-only";
}

Table::Table(Snapshot initial) {
  epoch_.store(initial.epoch, std::memory_order_release);
  current_ = std::make_shared<const Snapshot>(std::move(initial));
}

std::uint64_t Table::publish(Snapshot next) {
  std::lock_guard lock(mu_);
  next.epoch = std::max(current_->epoch, floor_) + 1;
  const std::uint64_t epoch = next.epoch;
  current_ = std::make_shared<const Snapshot>(std::move(next));
  epoch_.store(epoch, std::memory_order_release);
  return epoch;
}

void Table::raise_floor(std::uint64_t epoch) {
  std::lock_guard lock(mu_);
  floor_ = std::max(floor_, epoch);
}

std::uint64_t Table::next_epoch() const {
  std::lock_guard lock(mu_);
  return std::max(current_->epoch, floor_) + 1;
}

std::shared_ptr<const Snapshot> Table::current() const {
  std::lock_guard lock(mu_);
  return current_;
}

bool fit_for_reads(const NodeView& n, const RouteRequest& req, std::string_view& why) {
  if (n.role != Role::kStandby || n.retired) {
    why = "not a standby";
    return false;
  }
  if (!n.enabled || n.fenced) {
    why = n.fenced ? "fenced" : "disabled";
    return false;
  }
  if (req.loads.empty()) return true;
  if (n.id >= req.loads.size()) {
    why = "no position known yet";
    return false;
  }
  const NodeLoad& l = req.loads[n.id];
  if (!l.up) {
    why = "not answering probes";
    return false;
  }
  if (req.read.max_lag_bytes > 0 && l.lag_bytes > req.read.max_lag_bytes) {
    why = "lagging (max_replica_lag_bytes)";
    return false;
  }
  if (req.read.max_lag_seconds > 0 && l.lag_seconds > req.read.max_lag_seconds) {
    why = "lagging (max_replica_lag)";
    return false;
  }
  if (req.min_replay_lsn > 0 && l.replay_lsn < req.min_replay_lsn) {
    why = "has not replayed the session's last commit";
    return false;
  }
  return true;
}

Decision choose_node(const Snapshot& snap, const RouteRequest& req) {
  auto writer = [&snap]() -> const NodeView* {
    if (!snap.writer) return nullptr;
    const NodeView* n = snap.node(*snap.writer);
    return n != nullptr && n->enabled && !n->fenced ? n : nullptr;
  };
  if (req.intent == Intent::kReadWrite) {
    if (!snap.writer) return NoRoute{"no writable primary in the routing table"};
    const NodeView* n = snap.node(*snap.writer);
    if (n == nullptr) return NoRoute{"writer is not a known node"};
    if (n->fenced) return NoRoute{"the primary is fenced"};
    if (!n->enabled) return NoRoute{"the primary is disabled for maintenance"};
    return Route{n->id, "current primary"};
  }
  // Read-only: the least busy fit standby; among equals, `spread` picks.
  const NodeView* best = nullptr;
  std::uint32_t equals = 0;
  for (const NodeView& n : snap.nodes) {
    std::string_view why;
    if (!fit_for_reads(n, req, why)) continue;
    const int busy = req.loads.empty() ? 0 : req.loads[n.id].busy;
    const int best_busy = best == nullptr || req.loads.empty() ? 0 : req.loads[best->id].busy;
    if (best == nullptr || busy < best_busy) {
      best = &n;
      equals = 1;
    } else if (busy == best_busy && (req.spread % ++equals) == 0) {
      best = &n;
    }
  }
  if (best != nullptr) return Route{best->id, "standby"};
  if (const NodeView* w = writer(); w != nullptr && req.read.fallback_to_primary) {
    return Route{w->id, req.min_replay_lsn > 0 ? "the primary: no standby has replayed the session's last commit"
                                              : "no standby fit for reads; the primary serves them"};
  }
  if (!req.read.fallback_to_primary) return NoRoute{"no standby fit for reads (read_fallback = refuse)"};
  return NoRoute{"no node can serve reads"};
}

}  // namespace pgkeel::routing
