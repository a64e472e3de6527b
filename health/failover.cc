#include "health/failover.h"

#include <libpq-fe.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <memory>

namespace pgkeel::health {

std::string_view to_string(SyncMode m) {
  switch (m) {
    case SyncMode::kOff: return "off";
    case SyncMode::kOn: return "on";
    case SyncMode::kStrict: return "strict";
  }
  return "on";
}

namespace {

std::string_view trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(a[i])) != std::tolower(static_cast<unsigned char>(b[i]))) return false;
  }
  return true;
}

// "a, \"b c\", *" -> {a, b c, *}; unquoted names fold to lower case, as PostgreSQL's parser does.
std::vector<std::string> parse_name_list(std::string_view s) {
  std::vector<std::string> out;
  std::size_t i = 0;
  while (i < s.size()) {
    while (i < s.size() && (std::isspace(static_cast<unsigned char>(s[i])) || s[i] == ',')) ++i;
    if (i >= s.size()) break;
    std::string name;
    if (s[i] == '"') {
      ++i;
      while (i < s.size()) {
        if (s[i] == '"') {
          if (i + 1 < s.size() && s[i + 1] == '"') {
            name += '"';
            i += 2;
            continue;
          }
          ++i;
          break;
        }
        name += s[i++];
      }
    } else {
      while (i < s.size() && s[i] != ',' && !std::isspace(static_cast<unsigned char>(s[i]))) {
        name += static_cast<char>(std::tolower(static_cast<unsigned char>(s[i++])));
      }
    }
    out.push_back(std::move(name));
  }
  return out;
}

}  // namespace

SyncSpec parse_sync_names(std::string_view text) {
  SyncSpec spec;
  std::string_view s = trim(text);
  if (s.empty()) return spec;
  spec.method = SyncSpec::Method::kFirst;
  spec.k = 1;
  const std::size_t open = s.find('(');
  if (open == std::string_view::npos || s.back() != ')') {
    spec.names = parse_name_list(s);
    return spec;
  }
  std::string_view head = trim(s.substr(0, open));
  const std::string_view list = s.substr(open + 1, s.size() - open - 2);
  const std::size_t space = head.find_first_of(" \t");
  if (space != std::string_view::npos) {
    const std::string_view word = head.substr(0, space);
    if (iequals(word, "ANY")) spec.method = SyncSpec::Method::kAny;
    head = trim(head.substr(space));
  }
  spec.k = std::max(1, std::atoi(std::string(head).c_str()));
  spec.names = parse_name_list(list);
  return spec;
}

std::string describe(const SyncSpec& spec) {
  if (spec.method == SyncSpec::Method::kNone) return "none";
  std::string out = spec.method == SyncSpec::Method::kAny ? "ANY " : "FIRST ";
  out += std::to_string(spec.k) + " of (";
  for (std::size_t i = 0; i < spec.names.size(); ++i) out += (i ? ", " : "") + spec.names[i];
  return out + ")";
}

Plan plan_failover(const PlanInput& in) {
  Plan plan;
  const bool sync_guarantee = in.sync_mode != SyncMode::kOff && !in.degraded && !in.known_sync.empty();
  // ANY k of N: each commit was acknowledged by some k of the N listed standbys, so a standby is
  // known to hold every acknowledged commit only when N - k + 1 of them were heard from after the
  // failure (at least one of any k is among them) and it is the furthest ahead of those.
  const bool quorum = sync_guarantee && in.sync_spec.method == SyncSpec::Method::kAny;
  std::string quorum_why;
  Lsn quorum_best = 0;
  if (quorum) {
    const int listed = in.sync_spec.any_name() ? static_cast<int>(in.known_sync.size())
                                               : static_cast<int>(in.sync_spec.names.size());
    const int needed = std::max(1, listed - in.sync_spec.k + 1);
    std::vector<std::string> heard;
    for (const NodeObservation& n : in.nodes) {
      if (n.id == in.failed_primary || !in.sync_spec.lists(n.sync_name())) continue;
      if (n.health != NodeHealth::kUp || !n.facts || !n.facts->in_recovery || !n.heard_since_failure) continue;
      heard.push_back(n.name);
      quorum_best = std::max(quorum_best, n.facts->wal_position());
    }
    if (static_cast<int>(heard.size()) < needed) {
      quorum_why = "not provably complete: " + describe(in.sync_spec) + " acknowledge each commit, so " +
                   std::to_string(needed) + " of them must be heard from since the failure; heard from " +
                   std::to_string(heard.size());
      for (std::size_t i = 0; i < heard.size(); ++i) quorum_why += (i ? ", " : " (") + heard[i] + (i + 1 == heard.size() ? ")" : "");
      quorum_why += ": the others may hold commits it lacks";
    }
  }
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
      v.why = n.fence_why.empty() ? "fenced" : n.fence_why;
    } else if (n.health != NodeHealth::kUp || !n.facts) {
      v.why = "not reachable";
    } else if (!n.facts->in_recovery) {
      v.why = "not a standby (claims to be primary)";
    } else if (!in.system_identifier.empty() && n.facts->system_identifier != in.system_identifier) {
      v.why = "different system identifier " + n.facts->system_identifier;
    } else if (sync_guarantee && !in.force &&
               std::find(in.known_sync.begin(), in.known_sync.end(), n.sync_name()) == in.known_sync.end()) {
      v.why = "not a synchronous standby: promoting it could lose acknowledged commits";
    } else if (quorum && !in.force && !quorum_why.empty()) {
      v.why = quorum_why;
    } else if (quorum && !in.force && v.lsn < quorum_best) {
      v.why = "not provably complete: behind another standby heard from since the failure (" + format_lsn(v.lsn) +
              " < " + format_lsn(quorum_best) + ")";
    } else if (!sync_guarantee && !in.force && in.primary_last_lsn > v.lsn &&
               in.primary_last_lsn - v.lsn > in.max_lag_bytes) {
      v.why = "lags " + std::to_string(in.primary_last_lsn - v.lsn) + " bytes, more than max_lag_on_failover (" +
              std::to_string(in.max_lag_bytes) + ")";
    } else {
      v.eligible = true;
      const bool was_sync = std::find(in.known_sync.begin(), in.known_sync.end(), n.sync_name()) != in.known_sync.end();
      v.why = sync_guarantee && (was_sync || !in.force) ? "synchronous standby at " + format_lsn(v.lsn)
                                                        : "standby at " + format_lsn(v.lsn);
      if (sync_guarantee && in.force && (!was_sync || !quorum_why.empty() || v.lsn < quorum_best)) {
        v.why += " (FORCE: may lack acknowledged commits)";
      }
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
    plan.summary += ": up to " + std::to_string(plan.max_loss_bytes) +
                    " bytes of WAL known to the old primary at its last probe may be lost, and whatever it wrote after that probe";
  } else if (!in.force) {
    plan.summary += quorum ? "; no acknowledged commit is lost: it is the furthest ahead of the standbys that acknowledge commits"
                           : "; no acknowledged commit is lost: it acknowledged every commit";
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

std::vector<ReplicationMatch> match_replication(const std::vector<StandbyRef>& standbys,
                                                const std::vector<ReplicaInfo>& replicas) {
  std::vector<ReplicationMatch> out(standbys.size());
  std::vector<bool> taken(replicas.size(), false);
  for (std::size_t i = 0; i < standbys.size(); ++i) {
    out[i].node = standbys[i].name;
    for (std::size_t r = 0; r < replicas.size(); ++r) {
      if (!taken[r] && replicas[r].application_name == standbys[i].name) {
        out[i].row = r;
        out[i].how = "name";
        taken[r] = true;
        break;
      }
    }
  }
  // By address, where exactly one unmatched standby lives at it and exactly one unmatched row
  // comes from it.
  for (std::size_t i = 0; i < standbys.size(); ++i) {
    if (out[i].row || standbys[i].host.empty()) continue;
    int same_host = 0;
    for (std::size_t j = 0; j < standbys.size(); ++j) same_host += !out[j].row && standbys[j].host == standbys[i].host;
    std::optional<std::size_t> only;
    int rows = 0;
    for (std::size_t r = 0; r < replicas.size(); ++r) {
      if (!taken[r] && replicas[r].client_addr == standbys[i].host) {
        only = r;
        ++rows;
      }
    }
    if (same_host == 1 && rows == 1) {
      out[i].row = only;
      out[i].how = "address";
      taken[*only] = true;
    }
  }
  // By elimination: one standby still streaming from the primary, one row left.
  std::optional<std::size_t> last_standby;
  int streaming_left = 0;
  for (std::size_t i = 0; i < standbys.size(); ++i) {
    if (!out[i].row && standbys[i].streams_from_primary) {
      last_standby = i;
      ++streaming_left;
    }
  }
  std::optional<std::size_t> last_row;
  int rows_left = 0;
  for (std::size_t r = 0; r < replicas.size(); ++r) {
    if (!taken[r]) {
      last_row = r;
      ++rows_left;
    }
  }
  if (streaming_left == 1 && rows_left == 1) {
    out[*last_standby].row = last_row;
    out[*last_standby].how = "elimination";
  }
  return out;
}

std::string_view to_string(SyncHealth h) {
  switch (h) {
    case SyncHealth::kUnknown: return "unknown";
    case SyncHealth::kOff: return "off";
    case SyncHealth::kHonoured: return "honoured";
    case SyncHealth::kDegraded: return "degraded";
    case SyncHealth::kWaiting: return "waiting";
  }
  return "off";
}

SyncStatus sync_status(SyncMode mode, const std::string& primary, const std::string& names_set,
                       const std::vector<SyncStandby>& standbys) {
  SyncStatus st;
  if (mode == SyncMode::kOff) {
    st.health = SyncHealth::kOff;
    st.why = "synchronous_mode = off: commits do not wait for standbys";
    return st;
  }
  const SyncSpec spec = parse_sync_names(names_set);
  // Why each standby does not acknowledge, for the reason text.
  std::string notes;
  auto note = [&](const std::string& s) { notes += (notes.empty() ? "" : "; ") + s; };
  int acknowledging = 0;
  std::vector<std::string> acks;
  for (const SyncStandby& s : standbys) {
    if (s.replication_name.empty()) {
      note(s.name + (s.reachable ? " does not stream from " + primary : " is down"));
      continue;
    }
    if (s.sync_state == "sync" || s.sync_state == "quorum") {
      ++acknowledging;
      acks.push_back(s.name + (s.replication_name != s.name ? " (as '" + s.replication_name + "')" : ""));
      continue;
    }
    if (spec.method == SyncSpec::Method::kNone || !spec.lists(s.replication_name)) {
      note(s.name + " streams as '" + s.replication_name + "', a name synchronous_standby_names does not list" +
           (s.excluded ? " (fenced or disabled)" : ""));
    } else {
      note(s.name + " is " + (s.state == "streaming" ? s.sync_state : s.state));
    }
  }
  if (standbys.empty()) note("no standby is configured");
  if (spec.method != SyncSpec::Method::kNone && acknowledging >= spec.k) {
    st.health = SyncHealth::kHonoured;
    st.why = "commits wait for " + describe(spec) + ": ";
    for (std::size_t i = 0; i < acks.size(); ++i) st.why += (i ? ", " : "") + acks[i];
    st.why += " acknowledge" + std::string(acks.size() == 1 ? "s" : "");
    return st;
  }
  if (spec.method == SyncSpec::Method::kNone) {
    st.health = SyncHealth::kDegraded;
    st.why = "synchronous replication is off on " + primary + " (synchronous_standby_names is empty): commits are " +
             "acknowledged without a standby" + (notes.empty() ? "" : " (" + notes + ")");
    return st;
  }
  st.health = SyncHealth::kWaiting;
  st.why = "commits on " + primary + " wait: synchronous_standby_names = '" + names_set + "' needs " +
           std::to_string(spec.k) + " acknowledging standby" + (spec.k == 1 ? "" : "s") + ", " +
           std::to_string(acknowledging) + " acknowledge" + (notes.empty() ? "" : " (" + notes + ")");
  return st;
}

std::optional<std::string> rewrite_conninfo(const std::string& conninfo,
                                            const std::vector<std::pair<std::string, std::string>>& set,
                                            const std::vector<std::string>& drop, std::string& error) {
  char* err = nullptr;
  PQconninfoOption* opts = PQconninfoParse(conninfo.c_str(), &err);
  if (opts == nullptr) {
    error = err != nullptr ? err : "out of memory";
    while (!error.empty() && (error.back() == '\n' || error.back() == ' ')) error.pop_back();
    PQfreemem(err);
    return std::nullopt;
  }
  std::unique_ptr<PQconninfoOption, void (*)(PQconninfoOption*)> hold(opts, PQconninfoFree);
  auto quote = [](const std::string& v) {
    std::string q = "'";
    for (char c : v) {
      if (c == '\'' || c == '\\') q += '\\';
      q += c;
    }
    return q + "'";
  };
  auto listed = [](const auto& list, std::string_view k, auto key) {
    return std::any_of(list.begin(), list.end(), [&](const auto& e) { return key(e) == k; });
  };
  std::string out;
  for (PQconninfoOption* o = opts; o->keyword != nullptr; ++o) {
    const std::string_view k = o->keyword;
    if (o->val == nullptr || listed(drop, k, [](const std::string& d) { return std::string_view(d); }) ||
        listed(set, k, [](const auto& p) { return std::string_view(p.first); })) {
      continue;
    }
    out += (out.empty() ? "" : " ") + std::string(k) + "=" + quote(o->val);
  }
  for (const auto& [k, v] : set) out += (out.empty() ? "" : " ") + k + "=" + quote(v);
  return out;
}

std::optional<FoundRecord> newest_record(const std::vector<FoundRecord>& found) {
  const FoundRecord* best = nullptr;
  for (const FoundRecord& f : found) {
    if (best == nullptr || f.record.epoch > best->record.epoch ||
        (f.record.epoch == best->record.epoch && f.record.timeline > best->record.timeline)) {
      best = &f;
    }
  }
  if (best == nullptr) return std::nullopt;
  return *best;
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
  if (record.how == "fenced") {
    // [store]: the leader stopped every instance's writes to it before promoting another node.
    c.why = "failover in progress: the record fences " + record.node + " at epoch " + std::to_string(record.epoch);
    return c;
  }
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
