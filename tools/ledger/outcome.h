// tools/ledger/outcome.h — the pure half of the ledger: what the end of one write attempt means
// (acknowledged, failed, unknown), the per-client timeline of outcomes, write downtime, and the
// verdict arithmetic. Standard library only and header-only, so unit tests reach it without libpq.
#pragma once

#include <algorithm>
#include <cstdint>
#include <iterator>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace pgkeel::ledger {

// Ids are id_base + client * kClientStride + seq, seq counting from 1 per client; id_base is
// run * kRunStride, the run number coming from a sequence, so ids never repeat across runs.
inline constexpr std::int64_t kClientStride = 1'000'000'000;
inline constexpr std::int64_t kRunStride = 1'000'000'000'000;
inline constexpr int kMaxClients = 1000;  // kRunStride / kClientStride

inline constexpr std::int64_t ledger_id(std::int64_t id_base, int client, std::int64_t seq) {
  return id_base + client * kClientStride + seq;
}

// Where an attempt stood when it ended. kStatement cannot commit by itself (BEGIN, or the INSERT
// inside BEGIN); kCommit is the statement that commits (COMMIT, or an autocommit INSERT).
enum class Phase : std::uint8_t { kConnect, kStatement, kCommit };

enum class Outcome : std::uint8_t {
  kAcknowledged,  // the server said the commit succeeded
  kFailed,        // definitely not committed
  kUnknown,       // may or may not have committed: only the surviving primary can tell
};

// What one timeline entry counts: attempt outcomes, or failed connection attempts (no id used).
enum class EventKind : std::uint8_t { kAcknowledged, kFailed, kUnknown, kConnectFailed };

inline constexpr std::string_view to_string(Phase p) {
  switch (p) {
    case Phase::kConnect:
      return "connect";
    case Phase::kStatement:
      return "statement";
    case Phase::kCommit:
      return "commit";
  }
  return "?";
}

inline constexpr std::string_view to_string(EventKind k) {
  switch (k) {
    case EventKind::kAcknowledged:
      return "acknowledged";
    case EventKind::kFailed:
      return "failed";
    case EventKind::kUnknown:
      return "unknown";
    case EventKind::kConnectFailed:
      return "connect_failed";
  }
  return "?";
}

inline constexpr std::string_view to_string(Outcome o) {
  switch (o) {
    case Outcome::kAcknowledged:
      return "acknowledged";
    case Outcome::kFailed:
      return "failed";
    case Outcome::kUnknown:
      return "unknown";
  }
  return "?";
}

inline std::optional<Phase> parse_phase(std::string_view s) {
  for (auto p : {Phase::kConnect, Phase::kStatement, Phase::kCommit}) {
    if (to_string(p) == s) {
      return p;
    }
  }
  return std::nullopt;
}

inline std::optional<EventKind> parse_event_kind(std::string_view s) {
  for (auto k : {EventKind::kAcknowledged, EventKind::kFailed, EventKind::kUnknown,
                 EventKind::kConnectFailed}) {
    if (to_string(k) == s) {
      return k;
    }
  }
  return std::nullopt;
}

inline constexpr EventKind event_kind(Outcome o) {
  switch (o) {
    case Outcome::kAcknowledged:
      return EventKind::kAcknowledged;
    case Outcome::kFailed:
      return EventKind::kFailed;
    case Outcome::kUnknown:
      break;
  }
  return EventKind::kUnknown;
}

// The outcome of an attempt that ended in an error (success is simply kAcknowledged).
//
// Definitely not committed (kFailed):
//  - any error before the committing statement was sent: a transaction whose COMMIT never
//    reached the server is rolled back by it, whatever then happens to the connection;
//  - an ErrorResponse for the committing statement itself, with the session still up and a
//    SQLSTATE outside class 08 and 57P0x (25006 read-only, 40001, 23xxx, 53xxx, 57014 ...):
//    PostgreSQL raises ERROR only before the commit record; a failure after it is a PANIC.
// Maybe committed (kUnknown), when the committing statement was in flight and:
//  - the connection was lost: EOF, reset, or a FATAL (which always ends the session): the
//    commit record may be written and only its acknowledgement lost;
//  - the server answered with class 08, or 57P01/57P02/57P03: a backend told to terminate while
//    it waits for synchronous replication ends the session *after* committing locally;
//  - the error carried no SQLSTATE (libpq's own "server closed the connection unexpectedly").
// When a connection is lost right after an ERROR, the attempt is kUnknown: being conservative
// costs a lookup in the verifier, being wrong would hide a lost commit.
inline constexpr Outcome classify_error(Phase phase, std::string_view sqlstate,
                                        bool connection_lost) {
  if (phase != Phase::kCommit) {
    return Outcome::kFailed;
  }
  if (connection_lost || sqlstate.size() != 5) {
    return Outcome::kUnknown;
  }
  if (sqlstate.substr(0, 2) == "08" || sqlstate.substr(0, 4) == "57P0") {
    return Outcome::kUnknown;
  }
  return Outcome::kFailed;
}

// libpq reports a failed connection attempt without a SQLSTATE. For the server's own refusals
// the code is recovered from the (untranslated) message; anything else is 08001.
inline std::string connect_failure_sqlstate(std::string_view message) {
  struct Known {
    std::string_view text;
    std::string_view sqlstate;
  };
  static constexpr Known kKnown[] = {
      {"the database system is starting up", "57P03"},
      {"the database system is shutting down", "57P03"},
      {"the database system is in recovery mode", "57P03"},
      {"the database system is not yet accepting connections", "57P03"},
      {"the database system is not accepting connections", "57P03"},
      {"sorry, too many clients already", "53300"},
      {"remaining connection slots are reserved", "53300"},
      {"password authentication failed", "28P01"},
      {"no pg_hba.conf entry", "28000"},
      {"terminating connection due to administrator command", "57P01"},
  };
  for (const auto& k : kKnown) {
    if (message.find(k.text) != std::string_view::npos) {
      return std::string(k.sqlstate);
    }
  }
  return "08001";
}

// ---- the timeline ------------------------------------------------------------------------------

// One client's consecutive events of the same kind, phase and SQLSTATE, each at most
// split_gap_ms after the previous one (and, for attempts, with consecutive seq numbers).
// Times are the moments the outcome became known, in steady-clock ms since the run started.
struct Segment {
  int client = 0;
  EventKind kind = EventKind::kAcknowledged;
  Phase phase = Phase::kCommit;
  std::string sqlstate;        // empty for acknowledged
  std::int64_t first_seq = 0;  // 0 for connect failures (they use no id)
  std::int64_t count = 0;
  std::int64_t t_first_ms = 0;
  std::int64_t t_last_ms = 0;

  bool is_attempt() const { return kind != EventKind::kConnectFailed; }
  std::int64_t last_seq() const { return first_seq + count - 1; }
  friend bool operator==(const Segment&, const Segment&) = default;
};

struct Event {
  int client = 0;
  EventKind kind = EventKind::kAcknowledged;
  Phase phase = Phase::kCommit;
  std::string sqlstate;
  std::int64_t seq = 0;
  std::int64_t t_ms = 0;
};

// Appends an event to its client's timeline, extending the last segment when it continues it.
// A stall longer than split_gap_ms therefore always shows as a boundary between segments, and
// downtime computed from segments is exact to within split_gap_ms.
inline void append_event(std::vector<Segment>& timeline, const Event& e,
                         std::int64_t split_gap_ms) {
  if (!timeline.empty()) {
    Segment& last = timeline.back();
    const bool attempt = e.kind != EventKind::kConnectFailed;
    if (last.client == e.client && last.kind == e.kind && last.phase == e.phase &&
        last.sqlstate == e.sqlstate && e.t_ms - last.t_last_ms <= split_gap_ms &&
        (!attempt || e.seq == last.first_seq + last.count)) {
      ++last.count;
      last.t_last_ms = e.t_ms;
      return;
    }
  }
  timeline.push_back(Segment{.client = e.client,
                             .kind = e.kind,
                             .phase = e.phase,
                             .sqlstate = e.sqlstate,
                             .first_seq = e.kind == EventKind::kConnectFailed ? 0 : e.seq,
                             .count = 1,
                             .t_first_ms = e.t_ms,
                             .t_last_ms = e.t_ms});
}

struct Counts {
  std::int64_t attempts = 0;
  std::int64_t acknowledged = 0;
  std::int64_t failed = 0;
  std::int64_t unknown = 0;
  std::int64_t connect_failures = 0;
};

inline Counts count_outcomes(const std::vector<Segment>& timeline) {
  Counts c;
  for (const auto& s : timeline) {
    switch (s.kind) {
      case EventKind::kAcknowledged:
        c.acknowledged += s.count;
        break;
      case EventKind::kFailed:
        c.failed += s.count;
        break;
      case EventKind::kUnknown:
        c.unknown += s.count;
        break;
      case EventKind::kConnectFailed:
        c.connect_failures += s.count;
        break;
    }
  }
  c.attempts = c.acknowledged + c.failed + c.unknown;
  return c;
}

// ---- write downtime ----------------------------------------------------------------------------

// The acknowledged writes around a moment: the last at or before it, the first after it.
// A moment inside a segment of acknowledgements gives both as the moment itself (acks there are
// at most split_gap_ms apart).
struct AckWindow {
  std::optional<std::int64_t> last_before_ms;
  std::optional<std::int64_t> first_after_ms;
  std::optional<std::int64_t> gap_ms() const {
    if (!last_before_ms || !first_after_ms) {
      return std::nullopt;
    }
    return *first_after_ms - *last_before_ms;
  }
};

// client: one client's window, or all clients together when empty.
inline AckWindow ack_window(const std::vector<Segment>& timeline, std::int64_t moment_ms,
                            std::optional<int> client = std::nullopt) {
  AckWindow w;
  for (const auto& s : timeline) {
    if (s.kind != EventKind::kAcknowledged || (client && s.client != *client)) {
      continue;
    }
    std::optional<std::int64_t> before;
    std::optional<std::int64_t> after;
    if (s.t_last_ms <= moment_ms) {
      before = s.t_last_ms;
    } else if (s.t_first_ms > moment_ms) {
      after = s.t_first_ms;
    } else {
      before = moment_ms;
      after = moment_ms;
    }
    if (before && (!w.last_before_ms || *before > *w.last_before_ms)) {
      w.last_before_ms = before;
    }
    if (after && (!w.first_after_ms || *after < *w.first_after_ms)) {
      w.first_after_ms = after;
    }
  }
  return w;
}

struct Gap {
  std::int64_t from_ms = 0;  // an acknowledgement
  std::int64_t to_ms = 0;    // the next one
  std::int64_t length_ms() const { return to_ms - from_ms; }
  friend bool operator==(const Gap&, const Gap&) = default;
};

// The longest stretch between two consecutive acknowledgements, of one client or of any client
// (client empty): a failover's write downtime. Stretches shorter than split_gap_ms inside a
// segment are not seen. Empty when acknowledgements never paused for longer than that.
inline std::optional<Gap> longest_ack_gap(const std::vector<Segment>& timeline,
                                          std::optional<int> client = std::nullopt) {
  std::vector<std::pair<std::int64_t, std::int64_t>> spans;
  for (const auto& s : timeline) {
    if (s.kind == EventKind::kAcknowledged && (!client || s.client == *client)) {
      spans.emplace_back(s.t_first_ms, s.t_last_ms);
    }
  }
  std::sort(spans.begin(), spans.end());
  std::optional<Gap> best;
  if (spans.empty()) {
    return best;
  }
  std::int64_t reach = spans.front().second;  // the latest acknowledgement seen so far
  for (std::size_t i = 1; i < spans.size(); ++i) {
    if (spans[i].first > reach && (!best || spans[i].first - reach > best->length_ms())) {
      best = Gap{reach, spans[i].first};
    }
    reach = std::max(reach, spans[i].second);
  }
  return best;
}

// The last acknowledgement, of one client or of any: with the run's end, the stall that
// longest_ack_gap cannot see because no acknowledgement closes it.
inline std::optional<std::int64_t> last_ack_ms(const std::vector<Segment>& timeline,
                                               std::optional<int> client = std::nullopt) {
  std::optional<std::int64_t> last;
  for (const auto& s : timeline) {
    if (s.kind == EventKind::kAcknowledged && (!client || s.client == *client) &&
        (!last || s.t_last_ms > *last)) {
      last = s.t_last_ms;
    }
  }
  return last;
}

// ---- verification ------------------------------------------------------------------------------

struct IdRange {
  std::int64_t first = 0;  // inclusive
  std::int64_t last = 0;   // inclusive
  std::int64_t size() const { return last - first + 1; }
  friend bool operator==(const IdRange&, const IdRange&) = default;
};

// Sorted, merged (touching ranges joined), empty ranges dropped.
inline std::vector<IdRange> normalize(std::vector<IdRange> ranges) {
  std::erase_if(ranges, [](const IdRange& r) { return r.last < r.first; });
  std::sort(ranges.begin(), ranges.end(),
            [](const IdRange& a, const IdRange& b) { return a.first < b.first; });
  std::vector<IdRange> out;
  for (const auto& r : ranges) {
    if (!out.empty() && r.first <= out.back().last + 1) {
      out.back().last = std::max(out.back().last, r.last);
    } else {
      out.push_back(r);
    }
  }
  return out;
}

inline std::int64_t total_size(const std::vector<IdRange>& ranges) {
  std::int64_t n = 0;
  for (const auto& r : ranges) {
    n += r.size();
  }
  return n;
}

inline bool contains(const std::vector<IdRange>& sorted, std::int64_t id) {
  auto it = std::upper_bound(sorted.begin(), sorted.end(), id,
                             [](std::int64_t v, const IdRange& r) { return v < r.first; });
  return it != sorted.begin() && std::prev(it)->last >= id;
}

// Which ids a run attempted, by outcome. Each list is normalized.
struct AttemptIds {
  std::vector<IdRange> acknowledged;
  std::vector<IdRange> failed;
  std::vector<IdRange> unknown;
};

inline AttemptIds attempt_ids(const std::vector<Segment>& timeline, std::int64_t id_base) {
  AttemptIds ids;
  for (const auto& s : timeline) {
    if (!s.is_attempt() || s.count <= 0) {
      continue;
    }
    IdRange r{ledger_id(id_base, s.client, s.first_seq),
              ledger_id(id_base, s.client, s.last_seq())};
    switch (s.kind) {
      case EventKind::kAcknowledged:
        ids.acknowledged.push_back(r);
        break;
      case EventKind::kFailed:
        ids.failed.push_back(r);
        break;
      default:
        ids.unknown.push_back(r);
        break;
    }
  }
  ids.acknowledged = normalize(std::move(ids.acknowledged));
  ids.failed = normalize(std::move(ids.failed));
  ids.unknown = normalize(std::move(ids.unknown));
  return ids;
}

struct FoundId {
  std::int64_t id = 0;
  std::int64_t copies = 0;  // rows holding this id
  friend bool operator==(const FoundId&, const FoundId&) = default;
};

struct Verdict {
  std::string error;  // the server could not be read: nothing below is meaningful
  std::int64_t rows_read = 0;
  std::int64_t acknowledged = 0;  // attempts of each outcome, for the report
  std::int64_t failed = 0;
  std::int64_t unknown = 0;
  std::vector<std::int64_t> lost;            // acknowledged, not found
  std::vector<FoundId> duplicates;           // any id found more than once
  std::vector<std::int64_t> failed_present;  // definitely failed, yet found
  std::vector<std::int64_t> unknown_found;   // unknown, and it did commit
  std::int64_t unknown_missing = 0;          // unknown, and it did not
  std::vector<std::int64_t> unexpected;      // in the run's id range but never attempted

  bool ok() const {
    return error.empty() && lost.empty() && duplicates.empty() && failed_present.empty() &&
           unexpected.empty();
  }
};

// Compares what a run attempted with the ids found on the server (any order; an id may repeat,
// its copies then add up).
inline Verdict judge(AttemptIds ids, std::vector<FoundId> found) {
  ids.acknowledged = normalize(std::move(ids.acknowledged));
  ids.failed = normalize(std::move(ids.failed));
  ids.unknown = normalize(std::move(ids.unknown));
  std::sort(found.begin(), found.end(),
            [](const FoundId& a, const FoundId& b) { return a.id < b.id; });
  std::vector<FoundId> merged;
  for (const auto& f : found) {
    if (!merged.empty() && merged.back().id == f.id) {
      merged.back().copies += f.copies;
    } else if (f.copies > 0) {
      merged.push_back(f);
    }
  }

  Verdict v;
  v.acknowledged = total_size(ids.acknowledged);
  v.failed = total_size(ids.failed);
  v.unknown = total_size(ids.unknown);
  for (const auto& f : merged) {
    v.rows_read += f.copies;
    if (f.copies > 1) {
      v.duplicates.push_back(f);
    }
    if (contains(ids.acknowledged, f.id)) {
      continue;
    }
    if (contains(ids.failed, f.id)) {
      v.failed_present.push_back(f.id);
    } else if (contains(ids.unknown, f.id)) {
      v.unknown_found.push_back(f.id);
    } else {
      v.unexpected.push_back(f.id);
    }
  }
  // Acknowledged ids missing: walk each range alongside the sorted ids found.
  auto it = merged.begin();
  for (const auto& r : ids.acknowledged) {
    it = std::lower_bound(it, merged.end(), r.first,
                          [](const FoundId& f, std::int64_t id) { return f.id < id; });
    for (std::int64_t id = r.first; id <= r.last; ++id) {
      if (it != merged.end() && it->id == id) {
        ++it;
      } else {
        v.lost.push_back(id);
      }
    }
  }
  v.unknown_missing = v.unknown - static_cast<std::int64_t>(v.unknown_found.size());
  return v;
}

}  // namespace pgkeel::ledger
