#include "health/switchover.h"

#include <algorithm>

namespace pgkeel::health {
namespace {

// Why `n` cannot take over from `writer` in a switchover; empty when it can.
std::string switchover_refusal(const NodeObservation& n, const NodeObservation& writer,
                               const std::string& system_identifier) {
  if (!n.enabled) return "disabled for maintenance";
  if (n.fenced) return n.fence_why.empty() ? "fenced" : n.fence_why;
  if (n.health != NodeHealth::kUp || !n.facts) return "not reachable";
  if (!n.facts->in_recovery) return "not a standby (claims to be primary)";
  if (!system_identifier.empty() && n.facts->system_identifier != system_identifier) {
    return "different system identifier " + n.facts->system_identifier;
  }
  bool streams = false;
  if (writer.facts) {
    for (const ReplicaInfo& ri : writer.facts->replicas) {
      if (ri.application_name == n.name && ri.state == "streaming") streams = true;
    }
  }
  if (!streams || !n.facts->receiver_streaming) return "not streaming from " + writer.name;
  return {};
}

}  // namespace

SwitchoverChoice choose_switchover_target(const SwitchoverInput& in) {
  SwitchoverChoice c;
  if (!in.stop_command_configured) {
    c.why = "no stop_command configured: pgkeel cannot stop the primary cleanly (set [failover] stop_command)";
    return c;
  }
  if (!in.busy.empty()) {
    c.why = in.busy + " is running";
    return c;
  }
  const NodeObservation* writer = nullptr;
  for (const NodeObservation& n : in.nodes) {
    if (in.writer && n.id == *in.writer) writer = &n;
  }
  if (writer == nullptr) {
    c.why = "the writer is not known: there is no primary to stop cleanly (FAILOVER promotes a standby)";
    return c;
  }
  if (writer->health != NodeHealth::kUp || !writer->facts || writer->facts->in_recovery) {
    c.why = "the writer " + writer->name + " is not up as a primary: use FAILOVER";
    return c;
  }
  if (in.target) {
    const NodeObservation* t = nullptr;
    for (const NodeObservation& n : in.nodes) {
      if (n.name == *in.target) t = &n;
    }
    if (t == nullptr) {
      c.why = "no node named " + *in.target;
      return c;
    }
    if (t->id == writer->id) {
      c.why = t->name + " is the writer already";
      return c;
    }
    const std::string refusal = switchover_refusal(*t, *writer, in.system_identifier);
    if (!refusal.empty()) {
      c.why = "cannot switch over to " + t->name + ": " + refusal;
      return c;
    }
    c.target = t->id;
    c.why = t->name + " streams from " + writer->name;
    return c;
  }
  // Rank the standbys that may take over as the failover planner would; lag does not matter
  // (the target catches up completely before it is promoted), so the check is off.
  PlanInput plan_in;
  plan_in.failed_primary = writer->id;
  plan_in.system_identifier = in.system_identifier;
  plan_in.sync_mode = SyncMode::kOff;
  plan_in.force = true;
  std::string refusals;
  for (const NodeObservation& n : in.nodes) {
    if (n.id == writer->id) continue;
    const std::string refusal = switchover_refusal(n, *writer, in.system_identifier);
    if (refusal.empty()) {
      plan_in.nodes.push_back(n);
    } else {
      refusals += "; " + n.name + ": " + refusal;
    }
  }
  const Plan plan = plan_failover(plan_in);
  if (!plan.chosen) {
    c.why = "no standby can take over" + (refusals.empty() ? std::string(": there are no standbys") : refusals);
    return c;
  }
  c.target = plan.chosen;
  for (const Verdict& v : plan.candidates) {
    if (v.id == *plan.chosen) c.why = v.name + " streams from " + writer->name + ", " + v.why;
  }
  return c;
}

std::optional<Lsn> parse_checkpoint_lsn(std::string_view output) {
  constexpr std::string_view kKey = "checkpoint_lsn=";
  std::optional<Lsn> found;
  std::size_t pos = 0;
  while (pos < output.size()) {
    std::size_t end = output.find('\n', pos);
    if (end == std::string_view::npos) end = output.size();
    std::string_view line = output.substr(pos, end - pos);
    pos = end + 1;
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.remove_suffix(1);
    if (line.substr(0, kKey.size()) != kKey) continue;
    if (auto lsn = parse_lsn(line.substr(kKey.size()))) found = lsn;
  }
  return found;
}

CatchupVerdict check_catchup(const CatchupInput& in) {
  CatchupVerdict v;
  if (in.checkpoint_lsn) {
    if (in.received > *in.checkpoint_lsn) {
      v.state = CatchupState::kCaughtUp;
      v.why = "received " + format_lsn(in.received) + ", past the old primary's shutdown checkpoint at " +
              format_lsn(*in.checkpoint_lsn);
      return v;
    }
    v.why = "received " + format_lsn(in.received) + ", not yet past the shutdown checkpoint at " +
            format_lsn(*in.checkpoint_lsn);
  } else if (in.received >= in.lsn_before_stop && in.unchanged_checks >= in.checks_to_settle) {
    v.state = CatchupState::kCaughtUp;
    v.why = "received " + format_lsn(in.received) + " (at or past " + format_lsn(in.lsn_before_stop) +
            ", noted before the stop) and no longer moving; the stop command printed no checkpoint_lsn";
    return v;
  } else if (in.received < in.lsn_before_stop) {
    v.why = "received " + format_lsn(in.received) + ", behind " + format_lsn(in.lsn_before_stop) +
            " noted before the stop";
  } else {
    v.why = "received " + format_lsn(in.received) + ", still moving";
  }
  if (in.past_deadline) {
    v.state = CatchupState::kFailed;
    v.why = "the target did not catch up in time: " + v.why;
  }
  return v;
}

std::string_view to_string(NodeVerb v) {
  switch (v) {
    case NodeVerb::kFence: return "FENCE";
    case NodeVerb::kUnfence: return "UNFENCE";
    case NodeVerb::kDisable: return "DISABLE";
    case NodeVerb::kEnable: return "ENABLE";
  }
  return "?";
}

NodeVerbDecision decide_node_verb(const NodeVerbInput& in) {
  NodeVerbDecision d;
  const NodeObservation& n = in.node;
  const bool is_writer = in.writer && *in.writer == n.id;
  if (!in.busy.empty()) {
    d.text = std::string(to_string(in.verb)) + " refused: " + in.busy + " is running; try again when it finished";
    return d;
  }
  switch (in.verb) {
    case NodeVerb::kFence:
      d.ok = true;
      if (n.fenced) {
        d.text = n.name + " is already fenced";
        return d;
      }
      d.changes = true;
      if (is_writer) {
        d.drops_writer = true;
        d.text = n.name + " fenced: it was the writer, so no node takes writes now; clients are held until "
                 "hold_timeout (FAILOVER promotes a standby, UNFENCE " + n.name + " gives it back its writes)";
      } else {
        d.text = n.name + " fenced: no traffic goes to it";
      }
      return d;
    case NodeVerb::kUnfence: {
      if (!n.fenced) {
        d.ok = true;
        d.text = n.name + " is not fenced";
        return d;
      }
      const bool recorded = in.recorded_primary && *in.recorded_primary == n.name;
      if (!n.facts) {
        d.text = "UNFENCE refused: " + n.name + " was never probed successfully: cannot tell whether it is in recovery";
        return d;
      }
      if (!n.facts->in_recovery && !recorded) {
        d.text = "UNFENCE refused: " + n.name +
                 " is not in recovery (its last probe says primary): an old primary must never get traffic "
                 "again; rejoin it as a standby first";
        return d;
      }
      d.ok = true;
      d.changes = true;
      d.text = n.name + " unfenced" +
               (n.facts->in_recovery ? ": a standby again (in recovery as of its last probe)"
                                     : ": it is the recorded primary, and takes writes again if it is up on the "
                                       "recorded timeline");
      return d;
    }
    case NodeVerb::kDisable:
      if (is_writer) {
        d.text = "DISABLE refused: " + n.name + " is the writer; use SWITCHOVER first";
        return d;
      }
      d.ok = true;
      if (!n.enabled) {
        d.text = n.name + " is already disabled";
        return d;
      }
      d.changes = true;
      d.text = n.name + " disabled for maintenance: no traffic, never a failover candidate";
      return d;
    case NodeVerb::kEnable:
      d.ok = true;
      if (n.enabled) {
        d.text = n.name + " is already enabled";
        return d;
      }
      d.changes = true;
      d.text = n.name + " enabled: back in service";
      return d;
  }
  return d;
}

}  // namespace pgkeel::health
