// proxy/route.h — the routing decision for a client of a listener, with what the proxy knows
// beyond the snapshot: the replicas' positions (the keeper's probes) and the server connections
// open to each node. Used by the pools (new sessions) and the status views (where each listener
// routes now).
#pragma once

#include <cstdint>

#include "conf/config.h"
#include "proxy/shared.h"
#include "routing/router.h"

namespace pgkeel::proxy {

// `spread` spreads equal choices (a per-worker counter); `min_replay_lsn` is read-your-writes
// (0: none).
routing::Decision route_for(const Shared& sh, const routing::Snapshot& snap, const conf::ListenerConfig& listener,
                            std::uint32_t spread = 0, std::uint64_t min_replay_lsn = 0);

}  // namespace pgkeel::proxy
