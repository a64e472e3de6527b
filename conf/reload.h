// conf/reload.h — lines a reloaded configuration up with the running one. Listeners and nodes are
// known by index everywhere (stats, routing snapshots, pools, clients), so an index keeps its
// meaning for the life of the process: a listener or node keeps its index across reloads, a new
// one gets the next free index, and a removed one stays in the list, marked retired, so that
// clients still connected through it (or connections still open to it) keep a valid index. A
// node whose address changed is a removed node plus a new one under the same name. Indices are
// never reused; when a reload would need more than a running pgkeel has, it takes a restart.
#pragma once

#include <cstddef>
#include <vector>

#include "conf/config.h"
#include "conf/load.h"

namespace pgkeel::conf {

struct SlotPlan {
  std::vector<std::size_t> listeners_added;    // new indices: bind and accept
  std::vector<std::size_t> listeners_moved;    // same index, new address or socket folder: rebind
  std::vector<std::size_t> listeners_removed;  // retired now: stop accepting
  std::vector<std::size_t> nodes_added;        // new indices: resolve, probe, route
  std::vector<std::size_t> nodes_removed;      // retired now: no probes, no traffic

  bool listeners_changed() const {
    return !listeners_added.empty() || !listeners_moved.empty() || !listeners_removed.empty();
  }
  bool nodes_changed() const { return !nodes_added.empty() || !nodes_removed.empty(); }
};

// Rewrites next.listeners and next.nodes into the running configuration's index order (retired
// entries carried over) and says what changed. Errors when more than `max_listeners` or
// `max_nodes` indices would be needed.
std::vector<ConfigError> align_slots(const Config& running, Config& next, std::size_t max_listeners,
                                     std::size_t max_nodes, SlotPlan& plan);

}  // namespace pgkeel::conf
