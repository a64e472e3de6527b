#include "health/failover.h"

#include <algorithm>
#include <cstdlib>

namespace pgkeel::health {

std::string_view to_string(SyncMode m) {
  switch (m) {
    case SyncMode::kOff: return "off";
    case SyncMode::kOn: return "on";
    case SyncMode::kStrict: return "strict";
  }
  return "on";
}

Plan plan_failover(const PlanInput& in) {
  Plan plan;
  const bool sync_guarantee = in.sync_mode != SyncMode::kOff && !in.degraded && !in.known_sync.empty();
  const Verdict* best = nullptr;
  int best_priority = 0;
  for (const NodeObservation& n : in.nodes) {
    if (n.id == in.failed_primary) continue;
    Verdict v;
    v.id = n.id;
    v.name = n.name;
    if (n.facts) v.lsn = n.facts->wal_position();
    if (in.target && *in.target != n.id) {
      v.why = "not the requested target";
    } else if (!n.enabled) {
      v.why = "disabled for maintenance";
    } else if (n.fenced) {
      v.why = "fenced";
    } else if (n.health != NodeHealth::kUp || !n.facts) {
      v.why = "not reachable";
    } else if (!n.facts->in_recovery) {
      v.why = "not a standby (claims to be primary)";
    } else if (!in.system_identifier.empty() && n.facts->system_identifier != in.system_identifier) {
      v.why = "different system identifier " + n.facts->system_identifier;
    } else if (sync_guarantee &&
               std::find(in.known_sync.begin(), in.known_sync.end(), n.name) == in.known_sync.end()) {
      v.why = "not a synchronous standby: promoting it could lose acknowledged commits";
    } else if (!sync_guarantee && !in.force && in.primary_last_lsn > v.lsn &&
               in.primary_last_lsn - v.lsn > in.max_lag_bytes) {
      v.why = "lags " + std::to_string(in.primary_last_lsn - v.lsn) + " bytes, more than max_lag_on_failover (" +
              std::to_string(in.max_lag_bytes) + ")";
    } else {
      v.eligible = true;
      v.why = sync_guarantee ? "synchronous standby at " + format_lsn(v.lsn)
                             : "standby at " + format_lsn(v.lsn);
    }
    plan.candidates.push_back(v);
  }
  for (const Verdict& v : plan.candidates) {
    if (!v.eligible) continue;
    int prio = 0;
    for (const NodeObservation& n : in.nodes) {
      if (n.id == v.id) prio = n.priority;
    }
    // Highest WAL position wins (it holds every commit any other candidate holds); then
    // priority; then the name, so the choice is deterministic.
    if (best == nullptr || v.lsn > best->lsn || (v.lsn == best->lsn && prio > best_priority) ||
        (v.lsn == best->lsn && prio == best_priority && v.name < best->name)) {
      best = &v;
      best_priority = prio;
    }
  }
  if (best == nullptr) {
    plan.summary = "no standby can be promoted";
    for (const Verdict& v : plan.candidates) plan.summary += "; " + v.name + ": " + v.why;
    if (plan.candidates.empty()) plan.summary += ": there are no standbys";
    return plan;
  }
  plan.chosen = best->id;
  plan.max_loss_bytes = in.primary_last_lsn > best->lsn ? in.primary_last_lsn - best->lsn : 0;
  plan.summary = "promote " + best->name + " (" + best->why + ")";
  if (!sync_guarantee) {
    plan.summary += in.sync_mode == SyncMode::kOff ? "; asynchronous mode" : "; degraded to asynchronous";
    plan.summary += ": up to " + std::to_string(plan.max_loss_bytes) + " bytes of WAL known to the old primary may be lost";
  }
  return plan;
}

WitnessResult witness(const std::vector<NodeObservation>& standbys, double max_receipt_age_s) {
  WitnessResult r;
  int reachable = 0;
  for (const NodeObservation& n : standbys) {
    if (n.health != NodeHealth::kUp || !n.facts || !n.facts->in_recovery) continue;
    ++reachable;
    const ProbeFacts& f = *n.facts;
    if (f.receiver_streaming && f.receipt_age_s && *f.receipt_age_s < max_receipt_age_s) {
      r.confirmed = false;
      r.why = "standby " + n.name + " still receives WAL from its upstream (last message " +
              std::to_string(*f.receipt_age_s).substr(0, 5) + " s ago): pgkeel's own view of the primary is cut off";
      return r;
    }
  }
  r.confirmed = true;
  r.why = reachable == 0 ? "no standby reachable to ask" : "no standby receives WAL from the primary";
  return r;
}

std::string desired_sync_names(SyncMode mode, const std::vector<std::string>& healthy_standbys,
                               const std::vector<std::string>& all_standbys) {
  const std::vector<std::string>* names = nullptr;
  switch (mode) {
    case SyncMode::kOff: return "";
    case SyncMode::kOn: names = &healthy_standbys; break;
    case SyncMode::kStrict: names = &all_standbys; break;
  }
  if (names->empty()) return "";
  std::vector<std::string> sorted = *names;
  std::sort(sorted.begin(), sorted.end());
  std::string out = "ANY 1 (";
  for (std::size_t i = 0; i < sorted.size(); ++i) {
    if (i) out += ", ";
    out += '"' + sorted[i] + '"';
  }
  out += ')';
  return out;
}

std::string PrimaryRecord::serialize() const {
  return "epoch=" + std::to_string(epoch) + " node=" + node + " system_identifier=" + system_identifier +
         " timeline=" + std::to_string(timeline) + " lsn=" + format_lsn(lsn) +
         (how.empty() ? "" : " how=" + how);
}

std::optional<PrimaryRecord> PrimaryRecord::parse(std::string_view text) {
  PrimaryRecord r;
  bool have_epoch = false, have_node = false;
  std::size_t pos = 0;
  while (pos < text.size()) {
    while (pos < text.size() && (text[pos] == ' ' || text[pos] == '\n')) ++pos;
    const std::size_t end = text.find_first_of(" \n", pos);
    std::string_view kv = text.substr(pos, end == std::string_view::npos ? std::string_view::npos : end - pos);
    pos = end == std::string_view::npos ? text.size() : end;
    const std::size_t eq = kv.find('=');
    if (eq == std::string_view::npos) continue;
    std::string_view k = kv.substr(0, eq);
    std::string v(kv.substr(eq + 1));
    if (k == "epoch") {
      r.epoch = std::strtoull(v.c_str(), nullptr, 10);
      have_epoch = true;
    } else if (k == "node") {
      r.node = v;
      have_node = !v.empty();
    } else if (k == "system_identifier") {
      r.system_identifier = v;
    } else if (k == "timeline") {
      r.timeline = static_cast<std::uint32_t>(std::strtoul(v.c_str(), nullptr, 10));
    } else if (k == "lsn") {
      r.lsn = parse_lsn(v).value_or(0);
    } else if (k == "how") {
      r.how = v;
    }
  }
  if (!have_epoch || !have_node) return std::nullopt;
  return r;
}

WriterChoice choose_writer(const PrimaryRecord& record, const std::vector<NodeObservation>& nodes) {
  WriterChoice c;
  const NodeObservation* rec = nullptr;
  for (const NodeObservation& n : nodes) {
    if (n.name == record.node) rec = &n;
  }
  if (rec == nullptr) {
    c.why = "the recorded primary " + record.node + " is not a configured node";
    return c;
  }
  if (rec->health != NodeHealth::kUp || !rec->facts) {
    c.why = "the recorded primary " + record.node + " is not reachable";
    return c;
  }
  const ProbeFacts& f = *rec->facts;
  if (f.in_recovery) {
    c.why = "the recorded primary " + record.node + " is in recovery";
    return c;
  }
  if (!record.system_identifier.empty() && f.system_identifier != record.system_identifier) {
    c.why = "the recorded primary " + record.node + " has system identifier " + f.system_identifier +
            ", recorded " + record.system_identifier;
    return c;
  }
  if (record.timeline != 0 && f.timeline != record.timeline) {
    c.why = "the recorded primary " + record.node + " is on timeline " + std::to_string(f.timeline) +
            ", recorded " + std::to_string(record.timeline);
    return c;
  }
  if (!rec->enabled || rec->fenced) {
    c.why = "the recorded primary " + record.node + (rec->fenced ? " is fenced" : " is disabled");
    return c;
  }
  c.writer = rec->id;
  c.why = "primary since epoch " + std::to_string(record.epoch) + ": recorded" +
          (record.how.empty() ? "" : " (" + record.how + ")");
  for (const NodeObservation& n : nodes) {
    if (n.id != rec->id && n.health == NodeHealth::kUp && n.facts && !n.facts->in_recovery) {
      c.why += "; " + n.name + " also claims to be primary and gets no writes";
    }
  }
  return c;
}

}  // namespace pgkeel::health
