#include "health/facts.h"

#include <charconv>
#include <cstdio>
#include <cstdlib>

namespace pgkeel::health {

// Timeline: a primary's from its current WAL segment name (its first 8 hex digits), which is
// right immediately after a promotion; pg_control_checkpoint() lags until the next checkpoint.
// A standby's from the WAL receiver, or the last checkpoint when it is not streaming.
const char* const kProbeQuery =
    "SELECT pg_is_in_recovery(),"
    " (SELECT system_identifier::text FROM pg_control_system()),"
    " CASE WHEN pg_is_in_recovery()"
    "   THEN coalesce((SELECT received_tli FROM pg_stat_wal_receiver),"
    "                 (SELECT timeline_id FROM pg_control_checkpoint()))::text"
    "   ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int::text END,"
    " CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END,"
    " pg_last_wal_receive_lsn()::text,"
    " pg_last_wal_replay_lsn()::text,"
    " extract(epoch FROM now() - pg_last_xact_replay_timestamp())::text,"
    " (SELECT status FROM pg_stat_wal_receiver),"
    " (SELECT sender_host FROM pg_stat_wal_receiver),"
    " (SELECT sender_port::text FROM pg_stat_wal_receiver),"
    " (SELECT extract(epoch FROM now() - last_msg_receipt_time)::text FROM pg_stat_wal_receiver),"
    " (SELECT string_agg(concat_ws(chr(31), coalesce(application_name, ''), coalesce(state, ''), coalesce(sync_state, ''),"
    "                              coalesce(flush_lsn::text, '0/0'), coalesce(host(client_addr), '')),"
    "                    chr(30) ORDER BY application_name, client_addr, client_port)"
    "    FROM pg_stat_replication),"
    " current_setting('synchronous_standby_names'),"
    " CASE WHEN to_regclass('pgkeel.primary_history') IS NULL THEN NULL ELSE"
    "   query_to_xml('SELECT epoch, node, system_identifier, timeline, lsn FROM pgkeel.primary_history"
    "                 ORDER BY epoch DESC, recorded_at DESC LIMIT 1', false, true, '')::text END";

std::optional<Lsn> parse_lsn(std::string_view text) {
  const std::size_t slash = text.find('/');
  if (slash == std::string_view::npos || slash == 0 || slash + 1 >= text.size()) return std::nullopt;
  std::uint32_t hi = 0;
  std::uint32_t lo = 0;
  auto r1 = std::from_chars(text.data(), text.data() + slash, hi, 16);
  auto r2 = std::from_chars(text.data() + slash + 1, text.data() + text.size(), lo, 16);
  if (r1.ec != std::errc{} || r1.ptr != text.data() + slash || r2.ec != std::errc{} ||
      r2.ptr != text.data() + text.size()) {
    return std::nullopt;
  }
  return (static_cast<Lsn>(hi) << 32) | lo;
}

std::string format_lsn(Lsn lsn) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%X/%X", static_cast<unsigned>(lsn >> 32), static_cast<unsigned>(lsn & 0xffffffffu));
  return buf;
}

namespace {

std::vector<std::string_view> split(std::string_view s, char sep) {
  std::vector<std::string_view> out;
  std::size_t start = 0;
  while (true) {
    const std::size_t pos = s.find(sep, start);
    out.push_back(s.substr(start, pos == std::string_view::npos ? std::string_view::npos : pos - start));
    if (pos == std::string_view::npos) break;
    start = pos + 1;
  }
  return out;
}

std::optional<double> to_double(const std::optional<std::string>& v) {
  if (!v || v->empty()) return std::nullopt;
  char* end = nullptr;
  const double d = std::strtod(v->c_str(), &end);
  if (end == v->c_str()) return std::nullopt;
  return d;
}

}  // namespace

std::optional<ProbeFacts> parse_probe_row(const std::vector<std::optional<std::string>>& row,
                                          std::string& error) {
  if (row.size() != kProbeColumns) {
    error = "probe returned " + std::to_string(row.size()) + " columns";
    return std::nullopt;
  }
  ProbeFacts f;
  if (!row[0] || (*row[0] != "t" && *row[0] != "f")) {
    error = "probe: bad pg_is_in_recovery value";
    return std::nullopt;
  }
  f.in_recovery = *row[0] == "t";
  f.system_identifier = row[1].value_or("");
  if (row[2]) {
    unsigned long tli = std::strtoul(row[2]->c_str(), nullptr, 10);
    f.timeline = static_cast<std::uint32_t>(tli);
  }
  auto lsn = [&](int i) -> Lsn {
    if (!row[i]) return 0;
    return parse_lsn(*row[i]).value_or(0);
  };
  f.current_lsn = lsn(3);
  f.receive_lsn = lsn(4);
  f.replay_lsn = lsn(5);
  f.replay_age_s = to_double(row[6]);
  f.receiver_streaming = row[7] && *row[7] == "streaming";
  f.upstream_host = row[8].value_or("");
  f.upstream_port = row[9] ? std::atoi(row[9]->c_str()) : 0;
  f.receipt_age_s = to_double(row[10]);
  if (row[11] && !row[11]->empty()) {
    for (std::string_view rep : split(*row[11], '\x1e')) {
      auto parts = split(rep, '\x1f');
      if (parts.size() != 5) continue;
      ReplicaInfo ri;
      ri.application_name = std::string(parts[0]);
      ri.state = std::string(parts[1]);
      ri.sync_state = std::string(parts[2]);
      ri.flush_lsn = parse_lsn(parts[3]).value_or(0);
      ri.client_addr = std::string(parts[4]);
      f.replicas.push_back(std::move(ri));
    }
  }
  f.synchronous_standby_names = row[12].value_or("");
  if (row[13] && !row[13]->empty()) {
    const std::string& xml = *row[13];
    auto tag = [&](const std::string& name) -> std::string {
      const std::string open = "<" + name + ">";
      const std::size_t a = xml.find(open);
      if (a == std::string::npos) return "";
      const std::size_t b = xml.find("</" + name + ">", a);
      if (b == std::string::npos) return "";
      return xml.substr(a + open.size(), b - a - open.size());
    };
    RecordFields r;
    r.epoch = std::strtoull(tag("epoch").c_str(), nullptr, 10);
    r.node = tag("node");
    r.system_identifier = tag("system_identifier");
    r.timeline = static_cast<std::uint32_t>(std::strtoul(tag("timeline").c_str(), nullptr, 10));
    r.lsn = parse_lsn(tag("lsn")).value_or(0);
    if (r.epoch > 0 && !r.node.empty()) f.record = std::move(r);
  }
  return f;
}

// A SQL string literal that means the same whatever standard_conforming_strings says: an escape
// string (E'...') when it holds a backslash.
std::string quote_literal(const std::string& s) {
  const bool backslash = s.find('\\') != std::string::npos;
  std::string out = backslash ? "E'" : "'";
  for (char c : s) {
    if (c == '\'') out += '\'';
    if (c == '\\') out += '\\';
    out += c;
  }
  return out + "'";
}

}  // namespace pgkeel::health
