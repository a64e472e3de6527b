// routing/replicas.h — the replicas' last observed positions, between routing snapshots. The
// snapshot says which nodes are standbys; how far behind each one is changes with every probe,
// too often to version. One writer (the health side, after each probe), any number of readers
// (workers choosing a standby); each field is its own relaxed atomic, so a reader may see one
// probe's lag with the next probe's health, which routing tolerates.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>

#include "routing/node.h"
#include "routing/router.h"

namespace pgkeel::routing {

inline constexpr std::size_t kMaxNodeIndices = 32;

class ReplicaBoard {
 public:
  void set(NodeId id, const NodeLoad& l) {
    if (id >= slots_.size()) return;
    Slot& s = slots_[id];
    s.up.store(l.up, std::memory_order_relaxed);
    s.replay_lsn.store(l.replay_lsn, std::memory_order_relaxed);
    s.lag_bytes.store(l.lag_bytes, std::memory_order_relaxed);
    s.lag_ms.store(static_cast<std::uint64_t>(l.lag_seconds * 1000.0), std::memory_order_relaxed);
  }
  // `busy` is left to the caller.
  NodeLoad get(NodeId id) const {
    NodeLoad l;
    if (id >= slots_.size()) return l;
    const Slot& s = slots_[id];
    l.up = s.up.load(std::memory_order_relaxed);
    l.replay_lsn = s.replay_lsn.load(std::memory_order_relaxed);
    l.lag_bytes = s.lag_bytes.load(std::memory_order_relaxed);
    l.lag_seconds = static_cast<double>(s.lag_ms.load(std::memory_order_relaxed)) / 1000.0;
    return l;
  }

 private:
  struct Slot {
    std::atomic<bool> up{false};
    std::atomic<std::uint64_t> replay_lsn{0};
    std::atomic<std::uint64_t> lag_bytes{0};
    std::atomic<std::uint64_t> lag_ms{0};
  };
  std::array<Slot, kMaxNodeIndices> slots_{};
};

}  // namespace pgkeel::routing
