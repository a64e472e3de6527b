// tools/ledger/report.h — a writer run as data (RunReport), and its JSON file both ways. The
// format is documented in ledger.h. Header-only and pure, so unit tests check the round trip.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "tools/ledger/json.h"
#include "tools/ledger/outcome.h"

namespace pgkeel::ledger {

inline constexpr std::string_view kRunFormat = "pgkeel-ledger-run/1";

// Errors of one phase and SQLSTATE, over all clients.
struct ErrorCount {
  Phase phase = Phase::kCommit;
  std::string sqlstate;
  std::int64_t count = 0;
  std::int64_t first_t_ms = 0;
  std::int64_t last_t_ms = 0;
  std::string example;  // the first message seen, one line
};

// Adds one error to a table kept in first-seen order (a handful of rows: a linear scan is fine).
inline void add_error(std::vector<ErrorCount>& table, Phase phase, const std::string& sqlstate,
                      std::int64_t t_ms, std::int64_t count, std::string_view example) {
  for (auto& e : table) {
    if (e.phase == phase && e.sqlstate == sqlstate) {
      e.count += count;
      e.first_t_ms = std::min(e.first_t_ms, t_ms);
      e.last_t_ms = std::max(e.last_t_ms, t_ms);
      return;
    }
  }
  table.push_back({phase, sqlstate, count, t_ms, t_ms, std::string(example)});
}

struct RunReport {
  std::int64_t run = 0;
  std::int64_t id_base = 0;
  int clients = 0;
  bool explicit_tx = false;
  double rate = 0;  // attempts per second over all clients; 0: as fast as they go
  std::int64_t split_gap_ms = 10;
  std::int64_t started_at_unix_ms = 0;  // wall clock at t_ms = 0
  std::int64_t elapsed_ms = 0;
  std::vector<Segment> timeline;  // by client, then time
  std::vector<ErrorCount> errors;

  IdRange id_range() const { return {id_base, id_base + kRunStride - 1}; }
};

namespace detail {

inline void append_int(std::string& out, std::int64_t v) { out += std::to_string(v); }

inline void append_ranges(std::string& out, const std::vector<IdRange>& ranges) {
  out += '[';
  for (std::size_t i = 0; i < ranges.size(); ++i) {
    out += i ? ",[" : "[";
    append_int(out, ranges[i].first);
    out += ',';
    append_int(out, ranges[i].last);
    out += ']';
  }
  out += ']';
}

}  // namespace detail

inline std::string to_json(const RunReport& r) {
  using detail::append_int;
  const Counts c = count_outcomes(r.timeline);
  const AttemptIds ids = attempt_ids(r.timeline, r.id_base);
  std::string o;
  o.reserve(4096 + r.timeline.size() * 64);
  o += "{\n\"format\": ";
  json::append_string(o, kRunFormat);
  o += ",\n\"run\": ";
  append_int(o, r.run);
  o += ",\n\"id_base\": ";
  append_int(o, r.id_base);
  o += ",\n\"id_range\": [";
  append_int(o, r.id_range().first);
  o += ", ";
  append_int(o, r.id_range().last);
  o += "],\n\"clients\": ";
  append_int(o, r.clients);
  o += ",\n\"mode\": ";
  json::append_string(o, r.explicit_tx ? "tx" : "autocommit");
  char rate[32];
  std::snprintf(rate, sizeof rate, "%.3f", r.rate);
  o += ",\n\"rate\": ";
  o += rate;
  o += ",\n\"split_gap_ms\": ";
  append_int(o, r.split_gap_ms);
  o += ",\n\"started_at_unix_ms\": ";
  append_int(o, r.started_at_unix_ms);
  o += ",\n\"elapsed_ms\": ";
  append_int(o, r.elapsed_ms);
  o += ",\n\"counts\": {\"attempts\": ";
  append_int(o, c.attempts);
  o += ", \"acknowledged\": ";
  append_int(o, c.acknowledged);
  o += ", \"failed\": ";
  append_int(o, c.failed);
  o += ", \"unknown\": ";
  append_int(o, c.unknown);
  o += ", \"connect_failures\": ";
  append_int(o, c.connect_failures);
  o += "},\n\"errors\": [";
  for (std::size_t i = 0; i < r.errors.size(); ++i) {
    const auto& e = r.errors[i];
    o += i ? ",\n  {\"phase\": " : "\n  {\"phase\": ";
    json::append_string(o, to_string(e.phase));
    o += ", \"sqlstate\": ";
    json::append_string(o, e.sqlstate);
    o += ", \"count\": ";
    append_int(o, e.count);
    o += ", \"first_t_ms\": ";
    append_int(o, e.first_t_ms);
    o += ", \"last_t_ms\": ";
    append_int(o, e.last_t_ms);
    o += ", \"example\": ";
    json::append_string(o, e.example);
    o += '}';
  }
  o += r.errors.empty() ? "],\n" : "\n],\n";
  o += "\"ids\": {\n  \"acknowledged\": ";
  detail::append_ranges(o, ids.acknowledged);
  o += ",\n  \"failed\": ";
  detail::append_ranges(o, ids.failed);
  o += ",\n  \"unknown\": ";
  detail::append_ranges(o, ids.unknown);
  o += "\n},\n\"timeline_fields\": [\"t_first_ms\", \"t_last_ms\", \"client\", \"outcome\", "
       "\"phase\", \"sqlstate\", \"first_seq\", \"count\"],\n\"timeline\": [";
  for (std::size_t i = 0; i < r.timeline.size(); ++i) {
    const auto& s = r.timeline[i];
    o += i ? ",\n  [" : "\n  [";
    append_int(o, s.t_first_ms);
    o += ',';
    append_int(o, s.t_last_ms);
    o += ',';
    append_int(o, s.client);
    o += ',';
    json::append_string(o, to_string(s.kind));
    o += ',';
    json::append_string(o, to_string(s.phase));
    o += ',';
    json::append_string(o, s.sqlstate);
    o += ',';
    append_int(o, s.first_seq);
    o += ',';
    append_int(o, s.count);
    o += ']';
  }
  o += r.timeline.empty() ? "]\n}\n" : "\n]\n}\n";
  return o;
}

// A run file as read back: the report (timeline and errors when present) and the ids by
// outcome, which are what verification uses.
struct LoadedRun {
  RunReport report;
  AttemptIds ids;
  IdRange id_range;
};

namespace detail {

inline bool read_int(const json::Value* v, std::int64_t& out) {
  if (v == nullptr || !v->is_int()) {
    return false;
  }
  out = v->integer;
  return true;
}

inline bool read_ranges(const json::Value* v, std::vector<IdRange>& out) {
  if (v == nullptr || !v->is_array()) {
    return false;
  }
  for (const auto& item : v->items) {
    if (!item.is_array() || item.items.size() != 2 || !item.items[0].is_int() ||
        !item.items[1].is_int() || item.items[1].integer < item.items[0].integer) {
      return false;
    }
    out.push_back({item.items[0].integer, item.items[1].integer});
  }
  return true;
}

}  // namespace detail

// Reads a run file. Required: "id_range" and "ids" (so any tool can hand the verifier its own
// outcomes); the rest is read when present. Returns nullopt and says why on malformed input.
inline std::optional<LoadedRun> parse_run(std::string_view text, std::string& error) {
  json::Reader reader(text);
  auto doc = reader.parse();
  if (!doc) {
    error = "not JSON: " + reader.error();
    return std::nullopt;
  }
  if (!doc->is_object()) {
    error = "not a JSON object";
    return std::nullopt;
  }
  LoadedRun out;
  const json::Value* range = doc->find("id_range");
  if (range == nullptr || !range->is_array() || range->items.size() != 2 ||
      !range->items[0].is_int() || !range->items[1].is_int() ||
      range->items[1].integer < range->items[0].integer) {
    error = "\"id_range\" must be [first, last]";
    return std::nullopt;
  }
  out.id_range = {range->items[0].integer, range->items[1].integer};
  const json::Value* ids = doc->find("ids");
  if (ids == nullptr || !ids->is_object() ||
      !detail::read_ranges(ids->find("acknowledged"), out.ids.acknowledged) ||
      !detail::read_ranges(ids->find("failed"), out.ids.failed) ||
      !detail::read_ranges(ids->find("unknown"), out.ids.unknown)) {
    error =
        "\"ids\" must hold \"acknowledged\", \"failed\" and \"unknown\" as [[first, last], ...]";
    return std::nullopt;
  }
  out.ids.acknowledged = normalize(std::move(out.ids.acknowledged));
  out.ids.failed = normalize(std::move(out.ids.failed));
  out.ids.unknown = normalize(std::move(out.ids.unknown));

  RunReport& r = out.report;
  std::int64_t v = 0;
  if (detail::read_int(doc->find("run"), v)) {
    r.run = v;
  }
  r.id_base = out.id_range.first;
  if (detail::read_int(doc->find("id_base"), v)) {
    r.id_base = v;
  }
  if (detail::read_int(doc->find("clients"), v) && v >= 0 && v <= kMaxClients) {
    r.clients = static_cast<int>(v);
  }
  if (const auto* mode = doc->find("mode"); mode != nullptr && mode->is_string()) {
    r.explicit_tx = mode->string == "tx";
  }
  if (const auto* rate = doc->find("rate"); rate != nullptr && rate->is_number()) {
    r.rate = rate->number;
  }
  if (detail::read_int(doc->find("split_gap_ms"), v)) {
    r.split_gap_ms = v;
  }
  if (detail::read_int(doc->find("started_at_unix_ms"), v)) {
    r.started_at_unix_ms = v;
  }
  if (detail::read_int(doc->find("elapsed_ms"), v)) {
    r.elapsed_ms = v;
  }
  if (const auto* errors = doc->find("errors"); errors != nullptr && errors->is_array()) {
    for (const auto& e : errors->items) {
      const auto* phase = e.find("phase");
      const auto* sqlstate = e.find("sqlstate");
      std::optional<Phase> p;
      if (phase != nullptr && phase->is_string()) {
        p = parse_phase(phase->string);
      }
      ErrorCount ec;
      if (!p || sqlstate == nullptr || !sqlstate->is_string() ||
          !detail::read_int(e.find("count"), ec.count)) {
        error = "malformed entry in \"errors\"";
        return std::nullopt;
      }
      ec.phase = *p;
      ec.sqlstate = sqlstate->string;
      detail::read_int(e.find("first_t_ms"), ec.first_t_ms);
      detail::read_int(e.find("last_t_ms"), ec.last_t_ms);
      if (const auto* ex = e.find("example"); ex != nullptr && ex->is_string()) {
        ec.example = ex->string;
      }
      r.errors.push_back(std::move(ec));
    }
  }
  if (const auto* timeline = doc->find("timeline"); timeline != nullptr && timeline->is_array()) {
    for (const auto& row : timeline->items) {
      const bool shaped = row.is_array() && row.items.size() == 8 && row.items[0].is_int() &&
                          row.items[1].is_int() && row.items[2].is_int() &&
                          row.items[3].is_string() && row.items[4].is_string() &&
                          row.items[5].is_string() && row.items[6].is_int() &&
                          row.items[7].is_int();
      std::optional<EventKind> kind;
      std::optional<Phase> phase;
      if (shaped) {
        kind = parse_event_kind(row.items[3].string);
        phase = parse_phase(row.items[4].string);
      }
      if (!kind || !phase || row.items[2].integer < 0 || row.items[2].integer >= kMaxClients) {
        error = "malformed entry in \"timeline\"";
        return std::nullopt;
      }
      r.timeline.push_back(Segment{.client = static_cast<int>(row.items[2].integer),
                                   .kind = *kind,
                                   .phase = *phase,
                                   .sqlstate = row.items[5].string,
                                   .first_seq = row.items[6].integer,
                                   .count = row.items[7].integer,
                                   .t_first_ms = row.items[0].integer,
                                   .t_last_ms = row.items[1].integer});
    }
  }
  return out;
}

}  // namespace pgkeel::ledger
