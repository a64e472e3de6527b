// tools/drill/report.h — a drill run as data (Recording), the arithmetic that turns it into a
// verdict (Summary: downtime, detection and promotion times, latency by phase, gates), and the
// JSON summary. Pure and header-only: the unit tests build a report from a recorded timeline.
//
// JSON summary ("format": "pgkeel-drill/1"); times are ms since the load started unless the
// name says unix_ms; latencies are ms; a value that could not be measured is null:
//   format, started_at_unix_ms, elapsed_ms, clients, sync (bool), mode ("autocommit"|"tx"),
//   write_ratio, rate (0 = max), prepared, run, id_base
//   counts       {write_attempts, acknowledged, failed, unknown, reads_ok, reads_failed,
//                 connect_failures}
//   errors_total client errors of every kind (failed and unknown writes, failed reads, failed
//                connects)
//   errors       [{class, phase, sqlstate, count, first_t_ms, last_t_ms, example}], class the
//                SQLSTATE's first two characters, phase connect|statement|commit|read
//   faults       [{kind, at_ms, target, injected, detail, hit_writer, effect_seen, effect,
//                 hit_leader, back_seen, back,
//                 expected {detection, promotion, write_gap, no_promotion, back}, detected_ms, promoted_ms,
//                 recovered_ms, time_to_detect_ms, time_to_promote_ms, write_downtime_ms,
//                 recovered}]  (detected/promoted from SHOW EVENTS; effect = what the drill saw
//                 of the fault itself, e.g. the postmaster gone; expected = what the fault must
//                 show for the run to pass, see expected_effects; recovered_ms = the first
//                 acknowledged write that ends the fault's write downtime; recovered = a write
//                 was acknowledged after the fault; kill-proxy and partition-proxy: target is the
//                 instance, hit_leader whether it held the store lead, back what the drill saw of
//                 it serving again)
//   write_downtime_ms  the longest of the faults' (null without faults)
//   verification {ok, error, rows_read, acknowledged, found_acknowledged, lost, lost_ids,
//                 duplicates, duplicate_ids, failed_present, failed_present_ids, unknown,
//                 unknown_committed, unknown_not_committed, unexpected}
//   latency_ms   {before, during, after, all}: each {count, p50, p90, p99, max}; before = up to
//                the first fault, during = to the last fault's recovery, after = the rest
//   events       [{t_ms, epoch, kind, node, detail, instance}] from the console's SHOW EVENTS
//                (instance: whose console, in multi-instance mode; "" otherwise)
//   series_fields, series  one row per second: [t_s, writes, reads, errors, p50_ms, p99_ms,
//                primary, epoch]
//   gates        [{name, limit, value, passed}]
//   passed, failures  the verdict, and every reason it failed
//   report_html  where the HTML report was written
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "tools/drill/plan.h"
#include "tools/ledger/json.h"
#include "tools/ledger/outcome.h"

namespace pgkeel::drill {

inline constexpr std::string_view kSummaryFormat = "pgkeel-drill/1";

enum class OpKind : std::uint8_t { kWriteAck, kWriteFailed, kWriteUnknown, kReadOk, kReadFailed, kConnectFailed };

// One finished operation: when it ended and how long it took. 16 bytes, kept for the whole run.
struct Op {
  std::int64_t t_ms = 0;
  std::int32_t latency_us = 0;
  OpKind kind = OpKind::kWriteAck;
  bool ok() const { return kind == OpKind::kWriteAck || kind == OpKind::kReadOk; }
  bool error() const { return !ok(); }
};

struct ErrorRow {
  std::string phase;  // connect | statement | commit | read
  std::string sqlstate;
  std::int64_t count = 0;
  std::int64_t first_t_ms = 0;
  std::int64_t last_t_ms = 0;
  std::string example;
};

inline void add_error(std::vector<ErrorRow>& table, std::string_view phase, std::string_view sqlstate,
                      std::int64_t t_ms, std::int64_t count, std::string_view example) {
  for (auto& e : table) {
    if (e.phase == phase && e.sqlstate == sqlstate) {
      e.count += count;
      if (t_ms < e.first_t_ms) {
        e.first_t_ms = t_ms;
        e.example = std::string(example);
      }
      e.last_t_ms = std::max(e.last_t_ms, t_ms);
      return;
    }
  }
  table.push_back({std::string(phase), std::string(sqlstate), count, t_ms, t_ms, std::string(example)});
}

struct ConsoleEvent {
  std::int64_t t_ms = 0;  // pgkeel's wall clock mapped onto the drill's timeline
  std::int64_t epoch = 0;
  std::string kind;  // detection, failover_started, promotion, switchover, ...
  std::string node;
  std::string detail;
  std::string instance;  // multi-instance mode: the pgkeel instance whose console reported it
};

// Adds `more` to `events`, skipping those already there (the same moment, kind, node and text):
// a soak reads SHOW EVENTS many times, across pgkeel restarts (which empty its list) and past
// its cap of 1,000 events. Kept in time order.
inline void merge_events(std::vector<ConsoleEvent>& events, const std::vector<ConsoleEvent>& more) {
  for (const auto& e : more) {
    const bool known = std::any_of(events.begin(), events.end(), [&](const ConsoleEvent& x) {
      return x.t_ms == e.t_ms && x.kind == e.kind && x.node == e.node && x.detail == e.detail &&
             x.instance == e.instance;
    });
    if (!known) events.push_back(e);
  }
  std::stable_sort(events.begin(), events.end(), [](const ConsoleEvent& a, const ConsoleEvent& b) { return a.t_ms < b.t_ms; });
}

// "2026-11-25T23:10:01.123Z" (SHOW EVENTS' time) -> unix ms; nullopt when malformed.
inline std::optional<std::int64_t> parse_iso_utc_ms(std::string_view s) {
  if (s.size() < 20 || s[4] != '-' || s[7] != '-' || s[10] != 'T' || s[13] != ':' || s[16] != ':') {
    return std::nullopt;
  }
  auto num = [&](std::size_t at, std::size_t len) -> std::optional<int> {
    int v = 0;
    for (std::size_t i = at; i < at + len; ++i) {
      if (i >= s.size() || s[i] < '0' || s[i] > '9') {
        return std::nullopt;
      }
      v = v * 10 + (s[i] - '0');
    }
    return v;
  };
  const auto y = num(0, 4), mo = num(5, 2), d = num(8, 2), h = num(11, 2), mi = num(14, 2), sec = num(17, 2);
  if (!y || !mo || !d || !h || !mi || !sec || *mo < 1 || *mo > 12 || *d < 1 || *d > 31) {
    return std::nullopt;
  }
  int ms = 0;
  if (s.size() >= 24 && s[19] == '.') {
    const auto frac = num(20, 3);
    if (!frac) {
      return std::nullopt;
    }
    ms = *frac;
  }
  // days from civil (Howard Hinnant's algorithm)
  const int yy = *y - (*mo <= 2 ? 1 : 0);
  const int era = (yy >= 0 ? yy : yy - 399) / 400;
  const int yoe = yy - era * 400;
  const int doy = (153 * (*mo + (*mo > 2 ? -3 : 9)) + 2) / 5 + *d - 1;
  const int doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  const std::int64_t days = static_cast<std::int64_t>(era) * 146097 + doe - 719468;
  return ((days * 24 + *h) * 60 + *mi) * 60'000 + static_cast<std::int64_t>(*sec) * 1000 + ms;
}

struct FaultRecord {
  Fault fault;
  std::int64_t t_ms = 0;  // when it was injected (the moment just before the action)
  std::string target;     // the node (or "pgkeel") it hit
  bool injected = false;
  std::string detail;       // what was done, or why it could not be
  bool hit_writer = false;  // the target took writes when the fault was injected
  // What the drill itself saw of the fault's effect, apart from pgkeel's and the clients' view:
  // the process gone or stopped, the link down, replay paused, the command's answer. A command
  // that "succeeds" without its effect (a kill -9 that a PID 1 ignores) leaves this false.
  bool effect_seen = false;
  std::string effect;
  // kill-proxy, partition-proxy: whether the instance hit held the store lead, and whether it
  // served again afterwards (started again, or healed), with what the drill saw of it.
  bool hit_leader = false;
  bool back_seen = false;
  std::string back;
};

// What a fault must visibly do for the run to pass, beyond losing nothing: a detection (for a
// planned change: its start) on pgkeel's console, a promotion, and a stop of writes that the
// load measures as write downtime. A fault that shows less did not happen as planned, or pgkeel
// did not handle it; either way the drill must not pass.
struct Expectation {
  bool detection = false;
  bool promotion = false;
  bool write_gap = false;
  // A fault of a pgkeel instance must leave the primary where it is (a promotion fails the run)
  // and the instance must serve again afterwards.
  bool no_promotion = false;
  bool back = false;
};

inline constexpr Expectation expected_effects(FaultKind kind, bool hit_writer) {
  switch (kind) {
    case FaultKind::kKill:
    case FaultKind::kHang:
    case FaultKind::kPartition:
      // the writer lost: found, replaced, and writes stop meanwhile; a standby lost: found
      return hit_writer ? Expectation{true, true, true} : Expectation{true, false, false};
    case FaultKind::kSwitchover:
    case FaultKind::kFailover:
      return {true, true, true};
    case FaultKind::kRestartProxy:
      // A takeover (pgkeel --takeover) may leave no measurable gap; the primary must stay.
      return {false, false, false, true, false};
    case FaultKind::kSyncLoss:
      return {true, false, false};  // the synchronous standby is found down
    case FaultKind::kLag:
      return {false, false, false};
    case FaultKind::kKillProxy:
    case FaultKind::kPartitionProxy:
      // Writes move to another instance, perhaps without a visible gap: none is required.
      return {false, false, false, true, true};
  }
  return {};
}

struct RouteSample {
  std::int64_t t_ms = 0;
  std::string primary;  // empty: no writer
  std::int64_t epoch = -1;
};

// Everything a run saw: the input of the report.
struct Recording {
  std::int64_t started_at_unix_ms = 0;
  std::int64_t elapsed_ms = 0;
  int clients = 0;
  bool sync = true;
  bool explicit_tx = false;
  bool prepared = false;
  double write_ratio = 1.0;
  double rate = 0;
  std::int64_t run = 0;
  std::int64_t id_base = 0;
  std::vector<Op> ops;                     // any order
  std::vector<ledger::Segment> writes;     // the ledger timeline of write attempts
  std::vector<ErrorRow> errors;
  std::vector<FaultRecord> faults;         // by time
  std::vector<ConsoleEvent> events;        // by time
  std::vector<RouteSample> routes;         // by time
  std::string events_error;                // SHOW EVENTS could not be read: why
  std::optional<ledger::Verdict> verdict;  // none: verification did not run
  std::string report_html;
  // A soak (--soak N): its seed, and why it ended early ("" when every fault ran).
  bool soak = false;
  std::uint64_t soak_seed = 0;
  int soak_planned = 0;
  std::string soak_stopped;
  // Per fault, how long the cluster took to be whole again after it (every node up and
  // following, none fenced or rejoining; parallel to faults; none: it was not).
  std::vector<std::optional<std::int64_t>> whole_after_ms;
};

struct Gates {
  std::optional<std::int64_t> max_downtime_ms;
  std::optional<std::int64_t> max_lost;
  std::optional<std::int64_t> max_errors;
};

struct LatencySummary {
  std::int64_t count = 0;
  double p50 = 0, p90 = 0, p99 = 0, max = 0;  // ms
};

// Nearest-rank percentiles of latencies in microseconds (sorted in place).
inline LatencySummary summarize_latency(std::vector<std::int32_t>& us) {
  LatencySummary s;
  s.count = static_cast<std::int64_t>(us.size());
  if (us.empty()) {
    return s;
  }
  std::sort(us.begin(), us.end());
  auto rank = [&](double p) {
    auto i = static_cast<std::size_t>(std::ceil(p * static_cast<double>(us.size())));
    return static_cast<double>(us[std::clamp<std::size_t>(i, 1, us.size()) - 1]) / 1000.0;
  };
  s.p50 = rank(0.50);
  s.p90 = rank(0.90);
  s.p99 = rank(0.99);
  s.max = static_cast<double>(us.back()) / 1000.0;
  return s;
}

struct SecondRow {
  std::int64_t t_s = 0;
  std::int64_t writes = 0;  // acknowledged
  std::int64_t reads = 0;   // answered
  std::int64_t errors = 0;
  double p50_ms = 0;
  double p99_ms = 0;
  std::string primary;
  std::int64_t epoch = -1;
};

struct FaultOutcome {
  std::optional<std::int64_t> detected_ms;
  std::optional<std::int64_t> promoted_ms;
  std::optional<std::int64_t> recovered_ms;  // the acknowledgement that ended the downtime
  std::optional<std::int64_t> downtime_ms;   // none: writes never stopped (no gap was measured)
  bool recovered = false;                    // a write was acknowledged after the fault
  Expectation expected;
};

struct GateResult {
  std::string name;
  std::int64_t limit = 0;
  std::int64_t value = 0;
  bool passed = true;
};

struct Summary {
  std::int64_t write_attempts = 0, acknowledged = 0, failed = 0, unknown = 0;
  std::int64_t reads_ok = 0, reads_failed = 0, connect_failures = 0;
  std::int64_t errors_total = 0;
  std::vector<FaultOutcome> faults;  // parallel to Recording::faults
  std::optional<std::int64_t> write_downtime_ms;
  LatencySummary before, during, after, all;
  std::vector<SecondRow> series;
  std::vector<GateResult> gates;
  std::vector<std::string> failures;
  bool passed() const { return failures.empty(); }
};

// The write downtime around a fault at `from` (until `until`, the next fault or the end): the
// longest stretch between consecutive acknowledgements (of any client) that ends after the fault
// and starts before `until`. The fault is recovered when any write is acknowledged after it; when
// none is, the stretch runs from the last acknowledgement to `end_ms`. Writes that never stopped
// leave the downtime unmeasured (none), which is not the same as zero.
inline FaultOutcome write_downtime(const std::vector<ledger::Segment>& writes, std::int64_t from,
                                   std::int64_t until, std::int64_t end_ms) {
  std::vector<std::pair<std::int64_t, std::int64_t>> spans;
  for (const auto& s : writes) {
    if (s.kind == ledger::EventKind::kAcknowledged) {
      spans.emplace_back(s.t_first_ms, s.t_last_ms);
    }
  }
  std::sort(spans.begin(), spans.end());
  FaultOutcome out;
  std::optional<std::int64_t> reach;  // the latest acknowledgement so far
  for (const auto& [first, last] : spans) {
    if (reach && first > *reach && first > from && *reach < until) {
      const std::int64_t gap = first - *reach;
      if (!out.downtime_ms || gap > *out.downtime_ms) {
        out.downtime_ms = gap;
        out.recovered_ms = first;
      }
    }
    if (!reach && first > from) {
      // the very first acknowledgement came after the fault: downtime from the fault itself
      out.downtime_ms = first - from;
      out.recovered_ms = first;
    }
    reach = reach ? std::max(*reach, last) : last;
  }
  out.recovered = reach && *reach > from;
  if (!out.recovered) {
    // nothing acknowledged after the fault: down until the end
    const std::int64_t start = reach ? *reach : from;
    out.downtime_ms = end_ms - start;
    out.recovered_ms.reset();
  }
  return out;
}

// Why one fault makes the run fail: it was not injected; the drill could not see its effect; it
// did not show what its kind must show (expected_effects); or no write was acknowledged after it.
// Empty: the fault happened and was handled.
inline std::vector<std::string> fault_failures(const FaultRecord& f, const FaultOutcome& o) {
  std::vector<std::string> out;
  const std::string name = "fault " + std::string(to_string(f.fault.kind)) + " at " + std::to_string(f.t_ms) + " ms" +
                           (f.target.empty() ? "" : " on " + f.target);
  if (!f.injected) {
    out.push_back(name + " was not injected: " + f.detail);
    return out;
  }
  if (!f.effect_seen) {
    out.push_back(name + " did not take effect: " + (f.effect.empty() ? "the drill could not check it" : f.effect));
  }
  if (o.expected.detection && !o.detected_ms) {
    out.push_back(name + ": pgkeel reported no detection after it (SHOW EVENTS)");
  }
  if (o.expected.promotion && !o.promoted_ms) {
    out.push_back(name + ": pgkeel reported no promotion after it (SHOW EVENTS)");
  }
  if (o.expected.no_promotion && o.promoted_ms) {
    out.push_back(name + ": pgkeel promoted a standby " + std::to_string(*o.promoted_ms - f.t_ms) +
                  " ms after it (SHOW EVENTS); a fault of a pgkeel instance must not move the primary");
  }
  if (o.expected.back && !f.back_seen) {
    out.push_back(name + ": the instance did not serve again: " +
                  (f.back.empty() ? "the drill could not check it" : f.back));
  }
  if (!o.recovered) {
    out.push_back(name + ": no write was acknowledged after it (" + std::to_string(o.downtime_ms.value_or(0)) +
                  " ms without writes to the end of the run)");
  } else if (o.expected.write_gap && !o.downtime_ms) {
    out.push_back(name + ": writes never stopped, so no write downtime was measured; a fault on the writer must "
                         "stop them");
  }
  return out;
}

inline Summary summarize(const Recording& r, const Gates& gates) {
  Summary s;
  for (const auto& op : r.ops) {
    switch (op.kind) {
      case OpKind::kWriteAck:
        ++s.acknowledged;
        break;
      case OpKind::kWriteFailed:
        ++s.failed;
        break;
      case OpKind::kWriteUnknown:
        ++s.unknown;
        break;
      case OpKind::kReadOk:
        ++s.reads_ok;
        break;
      case OpKind::kReadFailed:
        ++s.reads_failed;
        break;
      case OpKind::kConnectFailed:
        ++s.connect_failures;
        break;
    }
  }
  s.write_attempts = s.acknowledged + s.failed + s.unknown;
  s.errors_total = s.failed + s.unknown + s.reads_failed + s.connect_failures;

  // Faults: detection and promotion from the console's events, downtime from the acks.
  for (std::size_t i = 0; i < r.faults.size(); ++i) {
    const auto& f = r.faults[i];
    const std::int64_t until = i + 1 < r.faults.size() ? r.faults[i + 1].t_ms : r.elapsed_ms;
    FaultOutcome o = write_downtime(r.writes, f.t_ms, until, r.elapsed_ms);
    o.expected = expected_effects(f.fault.kind, f.hit_writer);
    const bool planned = f.fault.kind == FaultKind::kSwitchover || f.fault.kind == FaultKind::kFailover;
    for (const auto& e : r.events) {
      if (e.t_ms < f.t_ms || e.t_ms >= until) {
        continue;
      }
      const bool detects = planned ? (e.kind == "switchover" || e.kind == "failover_started" || e.kind == "console")
                                   : (e.kind == "detection" && (f.target.empty() || e.node == f.target)) ||
                                         e.kind == "failover_started";
      if (!o.detected_ms && detects) {
        o.detected_ms = e.t_ms;
      }
      if (!o.promoted_ms && e.kind == "promotion") {
        o.promoted_ms = e.t_ms;
      }
    }
    if (o.downtime_ms && (!s.write_downtime_ms || *o.downtime_ms > *s.write_downtime_ms)) {
      s.write_downtime_ms = o.downtime_ms;
    }
    s.faults.push_back(o);
  }

  // Latency by phase, and the per-second series.
  const std::int64_t first_fault = r.faults.empty() ? r.elapsed_ms + 1 : r.faults.front().t_ms;
  std::int64_t recovered = first_fault;
  for (std::size_t i = 0; i < s.faults.size(); ++i) {
    const auto& o = s.faults[i];
    // writes that never stopped recovered at once; writes that never came back, never
    recovered = std::max(recovered, !o.recovered ? r.elapsed_ms + 1 : o.recovered_ms.value_or(r.faults[i].t_ms));
    recovered = std::max(recovered, r.faults[i].t_ms);
  }
  std::vector<std::int32_t> before, during, after, all;
  const std::int64_t seconds = std::max<std::int64_t>(1, (r.elapsed_ms + 999) / 1000);
  std::vector<std::vector<std::int32_t>> per_second(static_cast<std::size_t>(seconds));
  s.series.resize(static_cast<std::size_t>(seconds));
  for (std::int64_t t = 0; t < seconds; ++t) {
    s.series[static_cast<std::size_t>(t)].t_s = t;
  }
  for (const auto& op : r.ops) {
    const auto sec = static_cast<std::size_t>(std::clamp<std::int64_t>(op.t_ms / 1000, 0, seconds - 1));
    SecondRow& row = s.series[sec];
    if (!op.ok()) {
      ++row.errors;
      continue;
    }
    (op.kind == OpKind::kWriteAck ? row.writes : row.reads) += 1;
    per_second[sec].push_back(op.latency_us);
    all.push_back(op.latency_us);
    (op.t_ms < first_fault ? before : op.t_ms < recovered ? during : after).push_back(op.latency_us);
  }
  for (std::size_t i = 0; i < s.series.size(); ++i) {
    const LatencySummary l = summarize_latency(per_second[i]);
    s.series[i].p50_ms = l.p50;
    s.series[i].p99_ms = l.p99;
    // the route in force at the end of that second
    for (const auto& rs : r.routes) {
      if (rs.t_ms < static_cast<std::int64_t>(i + 1) * 1000) {
        s.series[i].primary = rs.primary;
        s.series[i].epoch = rs.epoch;
      }
    }
  }
  s.before = summarize_latency(before);
  s.during = summarize_latency(during);
  s.after = summarize_latency(after);
  s.all = summarize_latency(all);

  // The verdict. First: did each fault happen, and did it show what it must (fault_failures)?
  for (std::size_t i = 0; i < r.faults.size(); ++i) {
    for (auto& why : fault_failures(r.faults[i], s.faults[i])) {
      s.failures.push_back(std::move(why));
    }
  }
  if (!r.events_error.empty()) {
    s.failures.push_back("pgkeel's events could not be read (SHOW EVENTS: " + r.events_error + ")");
  }
  // A soak that could not run all its faults did not prove what it was asked to.
  if (r.soak && (!r.soak_stopped.empty() || static_cast<int>(r.faults.size()) < r.soak_planned)) {
    s.failures.push_back("the soak ran " + std::to_string(r.faults.size()) + " of " + std::to_string(r.soak_planned) +
                         " faults" + (r.soak_stopped.empty() ? std::string() : ": " + r.soak_stopped));
  }
  if (!r.verdict) {
    s.failures.push_back("verification did not run");
  } else if (!r.verdict->error.empty()) {
    s.failures.push_back("verification failed: " + r.verdict->error);
  } else {
    const auto& v = *r.verdict;
    const auto lost = static_cast<std::int64_t>(v.lost.size());
    if (r.sync && lost > 0) {
      s.failures.push_back(std::to_string(lost) + " acknowledged commit(s) lost in synchronous mode");
    }
    if (r.sync && !v.duplicates.empty()) {
      s.failures.push_back(std::to_string(v.duplicates.size()) + " id(s) committed more than once");
    }
    if (!v.failed_present.empty()) {
      s.failures.push_back(std::to_string(v.failed_present.size()) + " definitely failed write(s) found committed");
    }
    if (!v.unexpected.empty()) {
      s.failures.push_back(std::to_string(v.unexpected.size()) + " row(s) with ids never attempted");
    }
    if (v.acknowledged != s.acknowledged) {
      s.failures.push_back("the ledger counts " + std::to_string(v.acknowledged) + " acknowledged writes, the load " +
                           std::to_string(s.acknowledged));
    }
    if (gates.max_lost) {
      GateResult g{"max_lost", *gates.max_lost, lost, lost <= *gates.max_lost};
      s.gates.push_back(g);
    }
  }
  if (gates.max_downtime_ms) {
    // Writes that had not come back by the end exceed any limit: their downtime is only a floor.
    const std::int64_t d = s.write_downtime_ms.value_or(0);
    const bool all_recovered =
        std::all_of(s.faults.begin(), s.faults.end(), [](const FaultOutcome& o) { return o.recovered; });
    s.gates.push_back({"max_downtime_ms", *gates.max_downtime_ms, d, all_recovered && d <= *gates.max_downtime_ms});
  }
  if (gates.max_errors) {
    s.gates.push_back({"max_errors", *gates.max_errors, s.errors_total, s.errors_total <= *gates.max_errors});
  }
  for (const auto& g : s.gates) {
    if (!g.passed) {
      s.failures.push_back(g.value <= g.limit ? g.name + " exceeded: writes had not recovered by the end (" +
                                                    std::to_string(g.value) + " ms without writes so far, limit " +
                                                    std::to_string(g.limit) + ")"
                                              : g.name + " exceeded: " + std::to_string(g.value) + " > " +
                                                    std::to_string(g.limit));
    }
  }
  return s;
}

// ---- JSON --------------------------------------------------------------------------------------

namespace detail {

inline void put_num(std::string& o, double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3f", v);
  o += buf;
}
inline void put_opt(std::string& o, const std::optional<std::int64_t>& v) {
  o += v ? std::to_string(*v) : std::string("null");
}
inline void put_str(std::string& o, std::string_view s) { ledger::json::append_string(o, s); }
inline void put_ids(std::string& o, const std::vector<std::int64_t>& ids, std::size_t cap = 1000) {
  o += '[';
  for (std::size_t i = 0; i < ids.size() && i < cap; ++i) {
    o += i ? ", " : "";
    o += std::to_string(ids[i]);
  }
  o += ']';
}
inline void put_latency(std::string& o, const LatencySummary& l) {
  o += "{\"count\": " + std::to_string(l.count) + ", \"p50\": ";
  put_num(o, l.p50);
  o += ", \"p90\": ";
  put_num(o, l.p90);
  o += ", \"p99\": ";
  put_num(o, l.p99);
  o += ", \"max\": ";
  put_num(o, l.max);
  o += '}';
}
inline std::optional<std::int64_t> minus(const std::optional<std::int64_t>& a, std::int64_t b) {
  return a ? std::optional<std::int64_t>(*a - b) : std::nullopt;
}

}  // namespace detail

// A soak's table: per fault kind (kill, kill mode=all, hang, ...; a fault on a standby apart),
// how many ran and passed, and the spread of detection, promotion, write downtime and the time
// until the cluster was whole again.
struct Spread {
  std::size_t n = 0;
  std::int64_t p50 = 0, p90 = 0, max = 0;
};
inline Spread spread(std::vector<std::int64_t> v) {
  Spread s;
  s.n = v.size();
  if (v.empty()) return s;
  std::sort(v.begin(), v.end());
  auto at = [&](double q) { return v[std::min(v.size() - 1, static_cast<std::size_t>(q * static_cast<double>(v.size() - 1)))]; };
  s.p50 = at(0.5);
  s.p90 = at(0.9);
  s.max = v.back();
  return s;
}

struct SoakRow {
  std::string kind;
  int count = 0;
  int passed = 0;
  Spread detected, promoted, downtime, whole;
};

inline std::string fault_label(const FaultRecord& f) {
  std::string k(to_string(f.fault.kind));
  if (f.fault.all_processes) k += " mode=all";
  const bool on_standby_kind = f.fault.kind == FaultKind::kLag || f.fault.kind == FaultKind::kSyncLoss ||
                               f.fault.kind == FaultKind::kRestartProxy || is_proxy_fault(f.fault.kind);
  if (!f.hit_writer && !on_standby_kind) k += " (standby)";
  return k;
}

inline std::vector<SoakRow> soak_table(const Recording& r, const Summary& s) {
  std::vector<SoakRow> rows;
  std::vector<std::vector<std::int64_t>> det, pro, down, whole;
  for (std::size_t i = 0; i < r.faults.size() && i < s.faults.size(); ++i) {
    const FaultRecord& f = r.faults[i];
    const FaultOutcome& o = s.faults[i];
    const std::string label = fault_label(f);
    auto it = std::find_if(rows.begin(), rows.end(), [&](const SoakRow& row) { return row.kind == label; });
    if (it == rows.end()) {
      rows.push_back({label});
      det.emplace_back();
      pro.emplace_back();
      down.emplace_back();
      whole.emplace_back();
      it = rows.end() - 1;
    }
    const auto k = static_cast<std::size_t>(it - rows.begin());
    ++it->count;
    if (fault_failures(f, o).empty()) ++it->passed;
    if (o.detected_ms) det[k].push_back(*o.detected_ms - f.t_ms);
    if (o.promoted_ms) pro[k].push_back(*o.promoted_ms - f.t_ms);
    if (o.downtime_ms) down[k].push_back(*o.downtime_ms);
    if (i < r.whole_after_ms.size() && r.whole_after_ms[i]) whole[k].push_back(*r.whole_after_ms[i]);
  }
  for (std::size_t k = 0; k < rows.size(); ++k) {
    rows[k].detected = spread(det[k]);
    rows[k].promoted = spread(pro[k]);
    rows[k].downtime = spread(down[k]);
    rows[k].whole = spread(whole[k]);
  }
  return rows;
}

// Write downtimes of every fault, counted in buckets: [0, 0.5 s), [0.5, 1), [1, 2), [2, 5),
// [5, 10), [10, 30), 30 s and more; faults whose writes never stopped are counted apart.
inline constexpr std::int64_t kDowntimeBuckets[] = {500, 1000, 2000, 5000, 10000, 30000};
inline constexpr std::string_view kDowntimeBucketNames[] = {"< 0.5 s", "0.5–1 s", "1–2 s",  "2–5 s",
                                                            "5–10 s",  "10–30 s", "≥ 30 s", "no stop"};
inline std::vector<int> downtime_histogram(const Summary& s) {
  std::vector<int> h(std::size(kDowntimeBucketNames), 0);
  for (const auto& o : s.faults) {
    if (!o.downtime_ms) {
      ++h.back();
      continue;
    }
    std::size_t b = 0;
    while (b < std::size(kDowntimeBuckets) && *o.downtime_ms >= kDowntimeBuckets[b]) ++b;
    ++h[b];
  }
  return h;
}

inline std::string to_json(const Recording& r, const Summary& s) {
  using namespace detail;
  std::string o;
  o.reserve(8192 + s.series.size() * 80);
  o += "{\n\"format\": ";
  put_str(o, kSummaryFormat);
  o += ",\n\"started_at_unix_ms\": " + std::to_string(r.started_at_unix_ms);
  o += ",\n\"elapsed_ms\": " + std::to_string(r.elapsed_ms);
  o += ",\n\"clients\": " + std::to_string(r.clients);
  o += ",\n\"sync\": ";
  o += r.sync ? "true" : "false";
  o += ",\n\"mode\": ";
  put_str(o, r.explicit_tx ? "tx" : "autocommit");
  o += ",\n\"write_ratio\": ";
  put_num(o, r.write_ratio);
  o += ",\n\"rate\": ";
  put_num(o, r.rate);
  o += ",\n\"prepared\": ";
  o += r.prepared ? "true" : "false";
  o += ",\n\"run\": " + std::to_string(r.run);
  o += ",\n\"id_base\": " + std::to_string(r.id_base);
  o += ",\n\"counts\": {\"write_attempts\": " + std::to_string(s.write_attempts) +
       ", \"acknowledged\": " + std::to_string(s.acknowledged) + ", \"failed\": " + std::to_string(s.failed) +
       ", \"unknown\": " + std::to_string(s.unknown) + ", \"reads_ok\": " + std::to_string(s.reads_ok) +
       ", \"reads_failed\": " + std::to_string(s.reads_failed) +
       ", \"connect_failures\": " + std::to_string(s.connect_failures) + "}";
  o += ",\n\"errors_total\": " + std::to_string(s.errors_total);
  o += ",\n\"errors\": [";
  for (std::size_t i = 0; i < r.errors.size(); ++i) {
    const auto& e = r.errors[i];
    o += i ? ",\n  {\"class\": " : "\n  {\"class\": ";
    put_str(o, e.sqlstate.substr(0, 2));
    o += ", \"phase\": ";
    put_str(o, e.phase);
    o += ", \"sqlstate\": ";
    put_str(o, e.sqlstate);
    o += ", \"count\": " + std::to_string(e.count) + ", \"first_t_ms\": " + std::to_string(e.first_t_ms) +
         ", \"last_t_ms\": " + std::to_string(e.last_t_ms) + ", \"example\": ";
    put_str(o, e.example);
    o += '}';
  }
  o += "],\n\"faults\": [";
  for (std::size_t i = 0; i < r.faults.size(); ++i) {
    const auto& f = r.faults[i];
    const auto& fo = s.faults[i];
    o += i ? ",\n  {\"kind\": " : "\n  {\"kind\": ";
    put_str(o, to_string(f.fault.kind));
    o += ", \"at_ms\": " + std::to_string(f.t_ms) + ", \"target\": ";
    put_str(o, f.target);
    o += ", \"injected\": ";
    o += f.injected ? "true" : "false";
    o += ", \"detail\": ";
    put_str(o, f.detail);
    o += ", \"hit_writer\": ";
    o += f.hit_writer ? "true" : "false";
    o += ", \"effect_seen\": ";
    o += f.effect_seen ? "true" : "false";
    o += ", \"effect\": ";
    put_str(o, f.effect);
    o += ", \"hit_leader\": ";
    o += f.hit_leader ? "true" : "false";
    o += ", \"back_seen\": ";
    o += f.back_seen ? "true" : "false";
    o += ", \"back\": ";
    put_str(o, f.back);
    o += ", \"expected\": {\"detection\": ";
    o += fo.expected.detection ? "true" : "false";
    o += ", \"promotion\": ";
    o += fo.expected.promotion ? "true" : "false";
    o += ", \"write_gap\": ";
    o += fo.expected.write_gap ? "true" : "false";
    o += ", \"no_promotion\": ";
    o += fo.expected.no_promotion ? "true" : "false";
    o += ", \"back\": ";
    o += fo.expected.back ? "true" : "false";
    o += "}, \"detected_ms\": ";
    put_opt(o, fo.detected_ms);
    o += ", \"promoted_ms\": ";
    put_opt(o, fo.promoted_ms);
    o += ", \"recovered_ms\": ";
    put_opt(o, fo.recovered_ms);
    o += ", \"time_to_detect_ms\": ";
    put_opt(o, minus(fo.detected_ms, f.t_ms));
    o += ", \"time_to_promote_ms\": ";
    put_opt(o, minus(fo.promoted_ms, f.t_ms));
    o += ", \"write_downtime_ms\": ";
    put_opt(o, fo.downtime_ms);
    o += ", \"recovered\": ";
    o += fo.recovered ? "true" : "false";
    o += '}';
  }
  o += "],\n\"write_downtime_ms\": ";
  put_opt(o, s.write_downtime_ms);
  o += ",\n\"verification\": ";
  if (!r.verdict) {
    o += "null";
  } else {
    const auto& v = *r.verdict;
    o += "{\"ok\": ";
    o += v.ok() ? "true" : "false";
    o += ", \"error\": ";
    put_str(o, v.error);
    std::vector<std::int64_t> dup_ids;
    for (const auto& d : v.duplicates) {
      dup_ids.push_back(d.id);
    }
    o += ", \"rows_read\": " + std::to_string(v.rows_read) + ", \"acknowledged\": " + std::to_string(v.acknowledged) +
         ", \"found_acknowledged\": " + std::to_string(v.acknowledged - static_cast<std::int64_t>(v.lost.size())) +
         ", \"lost\": " + std::to_string(v.lost.size()) + ", \"lost_ids\": ";
    put_ids(o, v.lost);
    o += ", \"duplicates\": " + std::to_string(v.duplicates.size()) + ", \"duplicate_ids\": ";
    put_ids(o, dup_ids);
    o += ", \"failed_present\": " + std::to_string(v.failed_present.size()) + ", \"failed_present_ids\": ";
    put_ids(o, v.failed_present);
    o += ", \"unknown\": " + std::to_string(v.unknown) +
         ", \"unknown_committed\": " + std::to_string(v.unknown_found.size()) +
         ", \"unknown_not_committed\": " + std::to_string(v.unknown_missing) +
         ", \"unexpected\": " + std::to_string(v.unexpected.size()) + "}";
  }
  o += ",\n\"latency_ms\": {\"before\": ";
  put_latency(o, s.before);
  o += ", \"during\": ";
  put_latency(o, s.during);
  o += ", \"after\": ";
  put_latency(o, s.after);
  o += ", \"all\": ";
  put_latency(o, s.all);
  o += "},\n\"events\": [";
  for (std::size_t i = 0; i < r.events.size(); ++i) {
    const auto& e = r.events[i];
    o += i ? ",\n  {\"t_ms\": " : "\n  {\"t_ms\": ";
    o += std::to_string(e.t_ms) + ", \"epoch\": " + std::to_string(e.epoch) + ", \"kind\": ";
    put_str(o, e.kind);
    o += ", \"node\": ";
    put_str(o, e.node);
    o += ", \"detail\": ";
    put_str(o, e.detail);
    o += ", \"instance\": ";
    put_str(o, e.instance);
    o += '}';
  }
  o += "],\n\"series_fields\": [\"t_s\", \"writes\", \"reads\", \"errors\", \"p50_ms\", \"p99_ms\", \"primary\", "
       "\"epoch\"],\n\"series\": [";
  for (std::size_t i = 0; i < s.series.size(); ++i) {
    const auto& row = s.series[i];
    o += i ? ",\n  [" : "\n  [";
    o += std::to_string(row.t_s) + ", " + std::to_string(row.writes) + ", " + std::to_string(row.reads) + ", " +
         std::to_string(row.errors) + ", ";
    put_num(o, row.p50_ms);
    o += ", ";
    put_num(o, row.p99_ms);
    o += ", ";
    put_str(o, row.primary);
    o += ", " + std::to_string(row.epoch) + "]";
  }
  o += "],\n\"gates\": [";
  for (std::size_t i = 0; i < s.gates.size(); ++i) {
    const auto& g = s.gates[i];
    o += i ? ", {\"name\": " : "{\"name\": ";
    put_str(o, g.name);
    o += ", \"limit\": " + std::to_string(g.limit) + ", \"value\": " + std::to_string(g.value) + ", \"passed\": ";
    o += g.passed ? "true}" : "false}";
  }
  o += "],\n\"passed\": ";
  o += s.passed() ? "true" : "false";
  o += ",\n\"failures\": [";
  for (std::size_t i = 0; i < s.failures.size(); ++i) {
    o += i ? ", " : "";
    put_str(o, s.failures[i]);
  }
  o += "]";
  if (r.soak) {
    o += ",\n\"soak\": {\"seed\": " + std::to_string(r.soak_seed) + ", \"planned\": " + std::to_string(r.soak_planned) +
         ", \"ran\": " + std::to_string(r.faults.size()) + ", \"stopped\": ";
    put_str(o, r.soak_stopped);
    o += ", \"table\": [";
    const auto rows = soak_table(r, s);
    auto put_spread = [&](const char* name, const Spread& sp) {
      o += std::string(", \"") + name + "\": {\"n\": " + std::to_string(sp.n) + ", \"p50\": " + std::to_string(sp.p50) +
           ", \"p90\": " + std::to_string(sp.p90) + ", \"max\": " + std::to_string(sp.max) + "}";
    };
    for (std::size_t i = 0; i < rows.size(); ++i) {
      o += i ? ", {\"kind\": " : "{\"kind\": ";
      put_str(o, rows[i].kind);
      o += ", \"count\": " + std::to_string(rows[i].count) + ", \"passed\": " + std::to_string(rows[i].passed);
      put_spread("detected_ms", rows[i].detected);
      put_spread("promoted_ms", rows[i].promoted);
      put_spread("downtime_ms", rows[i].downtime);
      put_spread("whole_again_ms", rows[i].whole);
      o += "}";
    }
    o += "], \"downtime_histogram\": [";
    const auto h = downtime_histogram(s);
    for (std::size_t i = 0; i < h.size(); ++i) {
      o += i ? ", {\"bucket\": " : "{\"bucket\": ";
      put_str(o, kDowntimeBucketNames[i]);
      o += ", \"faults\": " + std::to_string(h[i]) + "}";
    }
    o += "]}";
  }
  o += ",\n\"report_html\": ";
  put_str(o, r.report_html);
  o += "\n}\n";
  return o;
}

}  // namespace pgkeel::drill
