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
  next.epoch = current_->epoch + 1;
  const std::uint64_t epoch = next.epoch;
  current_ = std::make_shared<const Snapshot>(std::move(next));
  epoch_.store(epoch, std::memory_order_release);
  return epoch;
}

std::shared_ptr<const Snapshot> Table::current() const {
  std::lock_guard lock(mu_);
  return current_;
}

Decision choose_node(const Snapshot& snap, const RouteRequest& req) {
  if (req.intent == Intent::kReadWrite) {
    if (!snap.writer) return NoRoute{"no writable primary in the routing table"};
    const NodeView* n = snap.node(*snap.writer);
    if (n == nullptr) return NoRoute{"writer is not a known node"};
    if (n->fenced) return NoRoute{"the primary is fenced"};
    if (!n->enabled) return NoRoute{"the primary is disabled for maintenance"};
    return Route{n->id, "current primary"};
  }
  // Read-only: any enabled, unfenced standby; the primary as the fallback.
  for (const NodeView& n : snap.nodes) {
    if (n.role == Role::kStandby && n.enabled && !n.fenced) return Route{n.id, "standby"};
  }
  if (snap.writer) {
    const NodeView* n = snap.node(*snap.writer);
    if (n != nullptr && n->enabled && !n->fenced) return Route{n->id, "no standby; primary serves reads"};
  }
  return NoRoute{"no node can serve reads"};
}

}  // namespace pgkeel::routing
