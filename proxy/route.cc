#include "proxy/route.h"

#include <array>
#include <atomic>

namespace pgkeel::proxy {

routing::Decision route_for(const Shared& sh, const routing::Snapshot& snap, const conf::ListenerConfig& listener,
                            std::uint32_t spread, std::uint64_t min_replay_lsn) {
  routing::RouteRequest req;
  req.intent = listener.intent;
  if (req.intent == routing::Intent::kReadWrite) return routing::choose_node(snap, req);
  std::array<routing::NodeLoad, kMaxNodes> loads;
  const std::size_t n = std::min(snap.nodes.size(), loads.size());
  for (std::size_t i = 0; i < n; ++i) {
    loads[i] = sh.replicas.get(static_cast<routing::NodeId>(i));
    loads[i].busy = sh.server_conns[i].load(std::memory_order_relaxed);
  }
  req.loads = std::span<const routing::NodeLoad>(loads.data(), n);
  req.read.max_lag_bytes = listener.max_replica_lag_bytes;
  req.read.max_lag_seconds = static_cast<double>(listener.max_replica_lag.count()) / 1000.0;
  req.read.fallback_to_primary = listener.read_fallback_primary;
  req.min_replay_lsn = min_replay_lsn;
  req.spread = spread;
  return routing::choose_node(snap, req);
}

}  // namespace pgkeel::proxy
