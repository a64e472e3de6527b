// routing/snapshot.h — the immutable, versioned routing table: which node serves which role,
// under which epoch. Published whole; readers keep a shared_ptr and compare epochs cheaply.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "routing/node.h"

namespace pgkeel::routing {

struct NodeView {
  NodeId id = 0;
  std::string name;
  std::string host;
  std::uint16_t port = 0;
  Role role = Role::kUnknown;
  bool fenced = false;   // must receive no traffic at all
  bool enabled = true;   // false while a DBA has it in maintenance (and for a retired node)
  bool retired = false;  // removed by a reload; the index stays taken, nothing routes there
};

// One version of the routing table. Never mutated after publication.
struct Snapshot {
  std::uint64_t epoch = 0;
  std::vector<NodeView> nodes;
  std::optional<NodeId> writer;  // the one node that may take writes under this epoch
  std::string why;               // human reason for the current writer (or for none)
  bool hold = false;             // no writer yet, but one is expected: new clients wait

  const NodeView* node(NodeId id) const { return id < nodes.size() ? &nodes[id] : nullptr; }
};

// Holds the current snapshot. Writers (the health side) publish; workers poll epoch() on their
// hot path with one relaxed atomic load and take current() only when it changed.
class Table {
 public:
  explicit Table(Snapshot initial);

  // Publishes `next` with epoch = previous epoch + 1 (or above the floor) and returns that epoch.
  std::uint64_t publish(Snapshot next);
  // The next publication gets an epoch above `epoch`: epochs recorded by an earlier run of
  // pgkeel (its state file, the cluster's primary history) are never handed out again.
  void raise_floor(std::uint64_t epoch);
  // The epoch the next publish() hands out (publications come from one thread).
  std::uint64_t next_epoch() const;
  std::shared_ptr<const Snapshot> current() const;
  std::uint64_t epoch() const { return epoch_.load(std::memory_order_acquire); }

 private:
  mutable std::mutex mu_;
  std::shared_ptr<const Snapshot> current_;
  std::uint64_t floor_ = 0;  // under mu_
  std::atomic<std::uint64_t> epoch_{0};
};

}  // namespace pgkeel::routing
