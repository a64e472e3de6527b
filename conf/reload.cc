#include "conf/reload.h"

#include <string>

namespace pgkeel::conf {
namespace {

bool same_address(const ListenerConfig& a, const ListenerConfig& b) {
  return a.host == b.host && a.port == b.port && a.unix_socket_dir == b.unix_socket_dir;
}

bool same_address(const NodeConfig& a, const NodeConfig& b) { return a.host == b.host && a.port == b.port; }

// The shared walk for listeners and nodes. An entry whose address changed either keeps its index
// (`moved`, listeners: only the socket changes) or is retired and appended anew (nodes: what
// pgkeel learned about the old address says nothing about the new one).
template <typename Entry>
std::vector<Entry> align(const std::vector<Entry>& running, std::vector<Entry>& next, bool move_in_place,
                         std::vector<std::size_t>& added, std::vector<std::size_t>* moved,
                         std::vector<std::size_t>& removed) {
  std::vector<Entry> out;
  std::vector<bool> matched(next.size(), false);
  std::vector<Entry> appended;
  for (std::size_t i = 0; i < running.size(); ++i) {
    const Entry& r = running[i];
    if (r.retired) {
      out.push_back(r);
      continue;
    }
    std::size_t j = 0;
    while (j < next.size() && (matched[j] || next[j].name != r.name)) ++j;
    if (j == next.size()) {
      out.push_back(r);
      out.back().retired = true;
      removed.push_back(i);
      continue;
    }
    matched[j] = true;
    if (same_address(r, next[j]) || move_in_place) {
      if (!same_address(r, next[j]) && moved != nullptr) moved->push_back(i);
      out.push_back(std::move(next[j]));
    } else {
      out.push_back(r);
      out.back().retired = true;
      removed.push_back(i);
      appended.push_back(std::move(next[j]));
    }
  }
  for (Entry& e : appended) {
    added.push_back(out.size());
    out.push_back(std::move(e));
  }
  for (std::size_t j = 0; j < next.size(); ++j) {
    if (matched[j]) continue;
    added.push_back(out.size());
    out.push_back(std::move(next[j]));
  }
  return out;
}

}  // namespace

std::vector<ConfigError> align_slots(const Config& running, Config& next, std::size_t max_listeners,
                                     std::size_t max_nodes, SlotPlan& plan) {
  plan = SlotPlan{};
  std::vector<ConfigError> errors;
  std::vector<ListenerConfig> listeners =
      align(running.listeners, next.listeners, true, plan.listeners_added, &plan.listeners_moved, plan.listeners_removed);
  std::vector<NodeConfig> nodes = align(running.nodes, next.nodes, false, plan.nodes_added, nullptr, plan.nodes_removed);
  if (listeners.size() > max_listeners) {
    errors.push_back({next.source_file, 0, "listener",
                      "this reload needs " + std::to_string(listeners.size()) + " listener slots (removed listeners keep theirs until a restart); a running pgkeel has " +
                          std::to_string(max_listeners) + ": restart to apply"});
  }
  if (nodes.size() > max_nodes) {
    errors.push_back({next.source_file, 0, "node",
                      "this reload needs " + std::to_string(nodes.size()) + " node slots (removed or moved nodes keep theirs until a restart); a running pgkeel has " +
                          std::to_string(max_nodes) + ": restart to apply"});
  }
  next.listeners = std::move(listeners);
  next.nodes = std::move(nodes);
  return errors;
}

}  // namespace pgkeel::conf
