// conf/config_toml.cc — pgkeel.toml text -> Config, key by key: every key must be known, of the
// right type and within its field's range. The only file that includes toml11 (it is slow to
// compile); checks that span fields or touch the filesystem are in validate.cc.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <initializer_list>
#include <limits>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <toml.hpp>
#include <tuple>
#include <utility>
#include <vector>

#include "conf/internal.h"
#include "conf/load.h"


namespace pgkeel::conf {

namespace {

using internal::printable;

// ---- Limits checked before toml11 sees the text --------------------------------------------
//
// toml11 3.7 recurses once per level of nested arrays and inline tables, so `a = [[[[...` a few
// ten thousand deep overflows the stack; and a dotted key of a few thousand parts takes it
// minutes. pgkeel.toml needs three levels and two dots, so refuse far less than that early.

constexpr std::size_t kMaxNesting = 32;
constexpr int kMaxKeyDots = 16;

struct Refusal {
  int line = 0;
  std::string message;
};

// Length of the valid UTF-8 sequence at the front of `s` (RFC 3629: no overlong forms, no
// surrogates, nothing past U+10FFFF), or 0 if it is not one.
std::size_t utf8_sequence(std::string_view s) {
  const auto byte = [&](std::size_t i) { return static_cast<unsigned char>(s[i]); };
  const auto cont = [&](std::size_t i, unsigned lo = 0x80, unsigned hi = 0xBF) {
    return i < s.size() && byte(i) >= lo && byte(i) <= hi;
  };
  const unsigned b = byte(0);
  if (b <= 0x7F) {
    return 1;
  }
  if (b >= 0xC2 && b <= 0xDF) {
    return cont(1) ? 2 : 0;
  }
  if (b >= 0xE0 && b <= 0xEF) {
    const unsigned lo = b == 0xE0 ? 0xA0 : 0x80;
    const unsigned hi = b == 0xED ? 0x9F : 0xBF;
    return cont(1, lo, hi) && cont(2) ? 3 : 0;
  }
  if (b >= 0xF0 && b <= 0xF4) {
    const unsigned lo = b == 0xF0 ? 0x90 : 0x80;
    const unsigned hi = b == 0xF4 ? 0x8F : 0xBF;
    return cont(1, lo, hi) && cont(2) && cont(3) ? 4 : 0;
  }
  return 0;
}

// TOML files are UTF-8, and toml11 3.7 reads out of bounds while reporting invalid UTF-8 inside
// a string (it rewinds one buffer with an iterator into another); so check it first, as strictly
// as toml11 does, which leaves that path unreachable.
std::optional<Refusal> check_utf8(std::string_view text) {
  int line = 1;
  for (std::size_t i = 0; i < text.size();) {
    const std::size_t n = utf8_sequence(text.substr(i));
    if (n == 0) {
      char hex[8];
      std::snprintf(hex, sizeof hex, "0x%02x", static_cast<unsigned char>(text[i]));
      return Refusal{line, std::string("not valid UTF-8 (byte ") + hex + "); TOML files are UTF-8"};
    }
    if (text[i] == '\n') {
      ++line;
    }
    i += n;
  }
  return std::nullopt;
}

// A small TOML lexer: strings, comments, brackets, and whether a key or a value is being read.
std::optional<Refusal> check_limits(std::string_view text) {
  enum class In { kCode, kComment, kBasic, kLiteral, kMultiBasic, kMultiLiteral };
  In in = In::kCode;
  std::vector<char> open;  // '[' and '{' not yet closed
  bool in_key = true;      // at the start of a line or after '{' / ',' in an inline table
  int dots = 0;
  int line = 1;
  const auto starts = [&](std::size_t i, std::string_view s) {
    return text.substr(i, s.size()) == s;
  };
  // Closes a multi-line string at i ("""), taking up to two more quotes that belong to it.
  const auto close_multi = [&](std::size_t& i, char q) {
    i += 2;
    for (int extra = 0; extra < 2 && i + 1 < text.size() && text[i + 1] == q; ++extra) {
      ++i;
    }
  };
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (c == '\n') {
      ++line;
      // An unterminated one-line string is toml11's to report; the lexer just resynchronizes.
      if (in == In::kComment || in == In::kBasic || in == In::kLiteral) {
        in = In::kCode;
      }
      if (in == In::kCode && open.empty()) {
        in_key = true;
        dots = 0;
      }
      continue;
    }
    const bool escape = c == '\\' && i + 1 < text.size() && text[i + 1] != '\n';
    switch (in) {
      case In::kComment:
        break;
      case In::kBasic:
        if (escape) {
          ++i;
        } else if (c == '"') {
          in = In::kCode;
        }
        break;
      case In::kLiteral:
        if (c == '\'') {
          in = In::kCode;
        }
        break;
      case In::kMultiBasic:
        if (escape) {
          ++i;
        } else if (starts(i, "\"\"\"")) {
          close_multi(i, '"');
          in = In::kCode;
        }
        break;
      case In::kMultiLiteral:
        if (starts(i, "'''")) {
          close_multi(i, '\'');
          in = In::kCode;
        }
        break;
      case In::kCode:
        if (c == '#') {
          in = In::kComment;
        } else if (c == '"') {
          in = starts(i, "\"\"\"") ? In::kMultiBasic : In::kBasic;
          if (in == In::kMultiBasic) {
            i += 2;
          }
        } else if (c == '\'') {
          in = starts(i, "'''") ? In::kMultiLiteral : In::kLiteral;
          if (in == In::kMultiLiteral) {
            i += 2;
          }
        } else if (c == '[' || c == '{') {
          open.push_back(c);
          if (open.size() > kMaxNesting) {
            return Refusal{line, "arrays and tables nested more than " +
                                     std::to_string(kMaxNesting) + " deep"};
          }
          if (c == '{') {
            in_key = true;
            dots = 0;
          }
        } else if (c == ']' || c == '}') {
          if (!open.empty()) {
            open.pop_back();
          }
          if (c == '}') {
            in_key = false;
          }
        } else if (c == '=') {
          in_key = false;
        } else if (c == ',' && !open.empty() && open.back() == '{') {
          in_key = true;
          dots = 0;
        } else if (c == '.' && in_key && ++dots > kMaxKeyDots) {
          return Refusal{line, "a key with more than " + std::to_string(kMaxKeyDots) + " dots"};
        }
        break;
    }
  }
  return std::nullopt;
}

// ---- toml11's syntax errors ----------------------------------------------------------------

// toml11 explains a syntax error in several lines:
//   [error] toml::parse_key_value_pair: missing value after key-value separator '='
//    --> pgkeel.toml
//      |
//    4 | x =
//      |     ^--- expected value, but got nothing
// This keeps the first sentence and the last note, and takes the line from the last quoted
// source line (the one the note points at).
ConfigError syntax_error(const toml::syntax_error& e, const std::string& filename) {
  ConfigError out{filename, static_cast<int>(e.location().line()), "", "TOML syntax error"};
  std::istringstream what(e.what());
  std::string row;
  std::string headline;
  std::string note;
  while (std::getline(what, row)) {
    if (headline.empty()) {
      headline = row;
      continue;
    }
    const std::size_t bar = row.find(" | ");
    if (bar == std::string::npos) {
      continue;
    }
    const std::string_view left = std::string_view(row).substr(0, bar);
    const std::size_t digit = left.find_first_not_of(' ');
    if (digit != std::string_view::npos &&
        left.find_first_not_of("0123456789", digit) == std::string::npos) {
      out.line = std::stoi(std::string(left.substr(digit)));
      continue;
    }
    if (left.find_first_not_of(' ') == std::string_view::npos) {
      std::string_view mark = std::string_view(row).substr(bar + 3);
      const std::size_t text = mark.find_first_not_of(" ^~-");
      note = text == std::string_view::npos ? "" : std::string(mark.substr(text));
    }
  }
  std::string_view head = headline;
  if (head.substr(0, 8) == "[error] ") {
    head.remove_prefix(8);
  }
  if (head.substr(0, 6) == "toml::") {
    const std::size_t colon = head.find(": ");
    if (colon != std::string_view::npos) {
      head.remove_prefix(colon + 2);
    }
  }
  if (!head.empty() && head.back() == '.') {
    head.remove_suffix(1);
  }
  if (!head.empty()) {
    out.message = "TOML syntax error: " + std::string(head);
  }
  if (!note.empty() && note != "here") {
    out.message += " (" + note + ")";
  }
  return out;
}

// ---- Mapping -------------------------------------------------------------------------------

bool is_bare_key(std::string_view key) {
  if (key.empty()) {
    return false;
  }
  return std::all_of(key.begin(), key.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-';
  });
}

// How a key is written in error messages: the dotted path of load.h, quoted where TOML would be.
std::string key_path(const std::string& parent, const std::string& key) {
  std::string k = is_bare_key(key) ? key : printable(key);
  return parent.empty() ? k : parent + "." + k;
}

std::string shown(const std::string& key) {
  return is_bare_key(key) ? "'" + key + "'" : printable(key);
}

const char* type_name(const toml::value& v) {
  switch (v.type()) {
    case toml::value_t::boolean:
      return "a boolean";
    case toml::value_t::integer:
      return "an integer";
    case toml::value_t::floating:
      return "a float";
    case toml::value_t::string:
      return "a string";
    case toml::value_t::offset_datetime:
    case toml::value_t::local_datetime:
    case toml::value_t::local_date:
    case toml::value_t::local_time:
      return "a date or time";
    case toml::value_t::array:
      return "an array";
    case toml::value_t::table:
      return "a table";
    case toml::value_t::empty:
      break;
  }
  return "empty";
}

constexpr std::initializer_list<const char*> kGeneralKeys = {
    "workers",    "max_client_conn",  "log_level",    "users_file",
    "state_file", "takeover_socket", "shutdown_timeout", "login_timeout", "log_format",
    "tcp_keepalive_idle", "tcp_keepalive_interval", "tcp_keepalive_count", "tcp_user_timeout",
    "application_name_add_host"};
constexpr std::initializer_list<const char*> kClusterKeys = {"initial_primary"};
constexpr std::initializer_list<const char*> kPoolKeys = {
    "pool_size",       "max_server_conn_per_node", "server_idle_timeout",
    "server_lifetime", "connect_timeout",          "wait_timeout",
    "reset_query", "max_user_client_conn", "max_db_client_conn", "max_user_server_conn",
    "max_db_server_conn", "reserve_pool_size", "reserve_pool_timeout", "idle_transaction_timeout"};
constexpr std::initializer_list<const char*> kAuthKeys = {
    "query", "user", "password", "dbname", "query_timeout", "cache_lifetime", "negative_cache_lifetime",
    "max_queued_lookups", "max_failures", "failure_window", "failure_delay"};
constexpr std::initializer_list<const char*> kLimitKeys = {"user", "database", "max_client_conn", "max_server_conn"};
constexpr std::initializer_list<const char*> kListenerKeys = {
    "name", "host", "port", "unix_socket_dir", "intent", "pool_mode", "max_replica_lag_bytes", "max_replica_lag",
    "read_fallback", "pinning", "read_write_split", "read_your_writes"};
constexpr std::initializer_list<const char*> kNodeKeys = {"name", "host", "port", "priority", "sslmode"};
constexpr std::initializer_list<const char*> kTlsKeys = {"cert_file", "key_file", "min_version"};
constexpr std::initializer_list<const char*> kServerTlsKeys = {"sslmode", "ca_file", "cert_file", "key_file"};
constexpr std::initializer_list<const char*> kStoreKeys = {
    "endpoints", "ca_file", "cert_file", "key_file", "username", "password", "prefix", "name",
    "advertise_host", "lease_ttl", "request_timeout", "failsafe"};
constexpr std::initializer_list<const char*> kHbaKeys = {"type", "database", "user", "address", "method"};
constexpr std::initializer_list<const char*> kDatabaseKeys = {"dbname"};
constexpr std::initializer_list<const char*> kHealthKeys = {
    "probe_interval", "probe_timeout", "timeouts_to_down", "oks_to_up",
    "user",           "password",      "dbname",           "witness_receipt_age"};
constexpr std::initializer_list<const char*> kFailoverKeys = {"mode",
                                                              "synchronous_mode",
                                                              "max_lag_on_failover",
                                                              "hold_timeout",
                                                              "promote_timeout",
                                                              "fence_command",
                                                              "fence_required",
                                                              "on_promote",
                                                              "on_degraded",
                                                              "replication_user",
                                                              "replication_password",
                                                              "stop_command",
                                                              "rejoin_command",
                                                              "rejoin",
                                                              "switchover_drain_timeout",
                                                              "switchover_timeout"};
constexpr std::initializer_list<const char*> kConsoleKeys = {"host", "port", "admin_users",
                                                             "monitor_users", "max_connections"};
constexpr std::initializer_list<const char*> kStatusKeys = {"host", "port", "max_connections"};
constexpr std::initializer_list<const char*> kSections = {
    "general", "cluster", "pool", "health", "failover", "console", "status", "tls", "server_tls", "auth",
    "store", "listener", "node", "hba", "limit", "databases"};

std::size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) {
    row[j] = j;
  }
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diagonal = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = up;
    }
  }
  return row[b.size()];
}

// The known name within two edits of a typo ("pol_size" -> "pool_size"), or nullptr.
const char* closest(const std::string& key, std::initializer_list<const char*> known) {
  if (key.size() > 64) {
    return nullptr;
  }
  const char* best = nullptr;
  std::size_t best_distance = 3;
  for (const char* k : known) {
    const std::size_t d = edit_distance(key, k);
    if (d < best_distance) {
      best = k;
      best_distance = d;
    }
  }
  return best;
}

std::string suggestion(const std::string& key, std::initializer_list<const char*> known) {
  const char* best = closest(key, known);
  return best == nullptr ? "" : std::string("; did you mean '") + best + "'?";
}

// Sections are suggested as they are written: [general], [[listener]].
std::string section_suggestion(const std::string& key) {
  const char* best = closest(key, kSections);
  if (best == nullptr) {
    return "";
  }
  const bool array = std::string_view(best) == "listener" || std::string_view(best) == "node";
  return std::string("; did you mean ") + (array ? "[[" : "[") + best + (array ? "]]" : "]") + "?";
}

constexpr std::int64_t kIntMax = std::numeric_limits<int>::max();
constexpr std::int64_t kIntMin = std::numeric_limits<int>::min();

class Mapper {
 public:
  Mapper(const std::string& file, Config& config, std::map<std::string, int>& lines,
         std::vector<ConfigError>& errors)
      : file_(file), config_(config), lines_(lines), errors_(errors) {}

  void root(const toml::value& doc) {
    for (const auto& [name, v] : doc.as_table()) {
      const std::string k = key_path("", name);
      if (name == "general" || name == "cluster" || name == "pool" || name == "databases" ||
          name == "health" || name == "failover" || name == "console" || name == "status" ||
          name == "tls" || name == "server_tls" || name == "auth" || name == "store") {
        if (!section(v, k)) {
          continue;
        }
        note(k, v);
        if (name == "general") {
          general(v);
        } else if (name == "cluster") {
          cluster(v);
        } else if (name == "pool") {
          pool(v);
        } else if (name == "health") {
          health(v);
        } else if (name == "failover") {
          failover(v);
        } else if (name == "console") {
          console(v);
        } else if (name == "status") {
          status(v);
        } else if (name == "tls") {
          tls(v);
        } else if (name == "server_tls") {
          server_tls(v);
        } else if (name == "auth") {
          auth(v);
        } else if (name == "store") {
          store(v);
        } else {
          databases(v);
        }
      } else if (name == "listener" || name == "node" || name == "hba" || name == "limit") {
        if (!array_of_tables(v, k)) {
          continue;
        }
        note(k, v);
        const auto& entries = v.as_array();
        for (std::size_t i = 0; i < entries.size(); ++i) {
          const std::string ik = k + "[" + std::to_string(i) + "]";
          note(ik, entries[i]);
          if (name == "listener") {
            config_.listeners.emplace_back();
            listener(entries[i], ik, config_.listeners.back());
          } else if (name == "limit") {
            config_.limits.emplace_back();
            limit(entries[i], ik, config_.limits.back());
          } else if (name == "hba") {
            config_.hba.emplace_back();
            config_.hba.back().line = line(entries[i]);
            hba(entries[i], ik, config_.hba.back());
          } else {
            config_.nodes.emplace_back();
            node(entries[i], ik, config_.nodes.back());
          }
        }
      } else {
        unknown_top(v, name);
      }
    }
  }

 private:
  static int line(const toml::value& v) { return static_cast<int>(v.location().line()); }

  void error(const toml::value& v, const std::string& key, std::string message) {
    errors_.push_back({file_, line(v), key, std::move(message)});
  }
  // Records where a key (or a table's header) is, for validate.cc's messages.
  void note(const std::string& key, const toml::value& v) { lines_[key] = line(v); }

  void unknown(const toml::value& v, const std::string& parent, const std::string& name,
               const std::string& where, std::initializer_list<const char*> known) {
    error(v, key_path(parent, name),
          "unknown key " + shown(name) + " in " + where + suggestion(name, known));
  }

  void unknown_top(const toml::value& v, const std::string& name) {
    const std::string k = key_path("", name);
    if (v.is_table()) {
      error(v, k, "unknown section [" + k + "]" + section_suggestion(name));
      return;
    }
    if (v.is_array() && !v.as_array().empty() && v.as_array().front().is_table()) {
      error(v, k, "unknown section [[" + k + "]]" + section_suggestion(name));
      return;
    }
    // A key written above the first section header lands at the top level.
    for (const auto& [table, keys] :
         {std::pair{"general", kGeneralKeys}, std::pair{"cluster", kClusterKeys},
          std::pair{"pool", kPoolKeys}}) {
      if (std::find(keys.begin(), keys.end(), std::string_view(name)) != keys.end()) {
        error(v, k,
              "unknown key " + shown(name) + " outside any section; it belongs under [" + table +
                  "]");
        return;
      }
    }
    error(v, k, "unknown key " + shown(name) + " outside any section" + section_suggestion(name));
  }

  bool section(const toml::value& v, const std::string& k) {
    if (v.is_table()) {
      return true;
    }
    if (v.is_array()) {
      error(v, k, "must be a table, written [" + k + "], not [[" + k + "]]");
    } else {
      error(v, k, std::string("must be a table ([" + k + "]), not ") + type_name(v));
    }
    return false;
  }

  bool array_of_tables(const toml::value& v, const std::string& k) {
    if (v.is_table()) {
      error(v, k, "must be written [[" + k + "]] (one per " + k + "), not [" + k + "]");
      return false;
    }
    if (!v.is_array()) {
      error(v, k, std::string("must be an array of tables ([[" + k + "]]), not ") + type_name(v));
      return false;
    }
    bool ok = true;
    for (std::size_t i = 0; i < v.as_array().size(); ++i) {
      const toml::value& e = v.as_array()[i];
      if (!e.is_table()) {
        error(e, k + "[" + std::to_string(i) + "]",
              std::string("must be a table, not ") + type_name(e));
        ok = false;
      }
    }
    return ok;
  }

  bool expect(const toml::value& v, const std::string& k, toml::value_t type, const char* what) {
    if (v.type() == type) {
      return true;
    }
    error(v, k, std::string("must be ") + what + ", not " + type_name(v));
    return false;
  }

  template <typename T>
  void read_int(const toml::value& v, const std::string& k, std::int64_t lo, std::int64_t hi,
                T& out) {
    if (!expect(v, k, toml::value_t::integer, "an integer")) {
      return;
    }
    const std::int64_t n = v.as_integer();
    if (n < lo || n > hi) {
      const std::string range = hi == kIntMax && lo != kIntMin ? "at least " + std::to_string(lo)
                                                               : "between " + std::to_string(lo) +
                                                                     " and " + std::to_string(hi);
      error(v, k, std::to_string(n) + " is out of range: must be " + range);
      return;
    }
    out = static_cast<T>(n);
  }

  void read_string(const toml::value& v, const std::string& k, std::string& out) {
    if (!expect(v, k, toml::value_t::string, "a string")) {
      return;
    }
    const std::string& s = v.as_string().str;
    if (s.find('\0') != std::string::npos) {
      error(v, k, "must not contain a NUL character");
      return;
    }
    out = s;
  }

  void read_duration(const toml::value& v, const std::string& k, bool zero_ok, Millis& out) {
    std::string text;
    if (v.is_integer()) {
      text = std::to_string(v.as_integer());
      if (v.as_integer() < 0) {
        error(v, k, text + ": a duration cannot be negative");
        return;
      }
      text += "ms";
    } else if (v.is_string()) {
      text = v.as_string().str;
    } else {
      error(v, k,
            std::string("must be a duration: a string with a unit (\"30s\") or an integer number "
                        "of milliseconds, not ") +
                type_name(v));
      return;
    }
    Millis ms{};
    if (std::string why = internal::parse_duration(text, ms); !why.empty()) {
      error(v, k, (v.is_string() ? printable(text) : text) + ": " + why);
      return;
    }
    if (!zero_ok && ms.count() == 0) {
      error(v, k, "must be longer than zero");
      return;
    }
    out = ms;
  }

  template <typename E>
  void read_choice(const toml::value& v, const std::string& k,
                   std::initializer_list<std::pair<const char*, E>> choices, E& out) {
    if (!expect(v, k, toml::value_t::string, "a string")) {
      return;
    }
    const std::string& s = v.as_string().str;
    std::string names;
    for (const auto& [name, value] : choices) {
      if (s == name) {
        out = value;
        return;
      }
      names += names.empty() ? "" : ", ";
      names += name;
    }
    error(v, k, printable(s) + " is not one of: " + names);
  }

  void general(const toml::value& t) {
    GeneralConfig& g = config_.general;
    for (const auto& [name, v] : t.as_table()) {
      const std::string k = key_path("general", name);
      if (name == "workers") {
        read_int(v, k, 0, 256, g.workers);
      } else if (name == "max_client_conn") {
        read_int(v, k, 1, kIntMax, g.max_client_conn);
      } else if (name == "log_level") {
        read_choice(v, k,
                    {{"debug", LogLevel::kDebug},
                     {"info", LogLevel::kInfo},
                     {"warning", LogLevel::kWarning},
                     {"error", LogLevel::kError}},
                    g.log_level);
      } else if (name == "users_file") {
        read_string(v, k, g.users_file);
      } else if (name == "state_file") {
        read_string(v, k, g.state_file);
      } else if (name == "takeover_socket") {
        read_string(v, k, g.takeover_socket);
      } else if (name == "shutdown_timeout") {
        read_duration(v, k, /*zero_ok=*/true, g.shutdown_timeout);  // 0: close sessions at once
      } else if (name == "login_timeout") {
        read_duration(v, k, false, g.login_timeout);
      } else if (name == "tcp_keepalive_idle") {
        read_duration(v, k, false, g.tcp_keepalive_idle);
      } else if (name == "tcp_keepalive_interval") {
        read_duration(v, k, false, g.tcp_keepalive_interval);
      } else if (name == "tcp_keepalive_count") {
        read_int(v, k, 1, 100, g.tcp_keepalive_count);
      } else if (name == "tcp_user_timeout") {
        read_duration(v, k, true, g.tcp_user_timeout);
      } else if (name == "application_name_add_host") {
        read_bool(v, k, g.application_name_add_host);
      } else if (name == "log_format") {
        read_choice(v, k, {{"text", LogFormat::kText}, {"json", LogFormat::kJson}}, g.log_format);
      } else {
        unknown(v, "general", name, "[general]", kGeneralKeys);
        continue;
      }
      note(k, v);
    }
  }

  void cluster(const toml::value& t) {
    for (const auto& [name, v] : t.as_table()) {
      const std::string k = key_path("cluster", name);
      if (name == "initial_primary") {
        read_string(v, k, config_.cluster.initial_primary);
      } else {
        unknown(v, "cluster", name, "[cluster]", kClusterKeys);
        continue;
      }
      note(k, v);
    }
  }

  void pool(const toml::value& t) {
    PoolConfig& p = config_.pool;
    for (const auto& [name, v] : t.as_table()) {
      const std::string k = key_path("pool", name);
      if (name == "pool_size") {
        read_int(v, k, 1, kIntMax, p.pool_size);
      } else if (name == "max_server_conn_per_node") {
        read_int(v, k, 1, kIntMax, p.max_server_conn_per_node);
      } else if (name == "server_idle_timeout") {
        read_duration(v, k, false, p.server_idle_timeout);
      } else if (name == "server_lifetime") {
        read_duration(v, k, false, p.server_lifetime);
      } else if (name == "connect_timeout") {
        read_duration(v, k, false, p.connect_timeout);
      } else if (name == "wait_timeout") {
        read_duration(v, k, false, p.wait_timeout);
      } else if (name == "reset_query") {
        read_string(v, k, p.reset_query);
      } else if (name == "max_user_client_conn") {
        read_int(v, k, 0, kIntMax, p.max_user_client_conn);
      } else if (name == "max_db_client_conn") {
        read_int(v, k, 0, kIntMax, p.max_db_client_conn);
      } else if (name == "max_user_server_conn") {
        read_int(v, k, 0, kIntMax, p.max_user_server_conn);
      } else if (name == "max_db_server_conn") {
        read_int(v, k, 0, kIntMax, p.max_db_server_conn);
      } else if (name == "reserve_pool_size") {
        read_int(v, k, 0, kIntMax, p.reserve_pool_size);
      } else if (name == "reserve_pool_timeout") {
        read_duration(v, k, true, p.reserve_pool_timeout);
      } else if (name == "idle_transaction_timeout") {
        read_duration(v, k, true, p.idle_transaction_timeout);
      } else {
        unknown(v, "pool", name, "[pool]", kPoolKeys);
        continue;
      }
      note(k, v);
    }
  }

  void read_bool(const toml::value& v, const std::string& k, bool& out) {
    if (expect(v, k, toml::value_t::boolean, "true or false")) out = v.as_boolean();
  }

  void read_string_list(const toml::value& v, const std::string& k, std::vector<std::string>& out) {
    if (!expect(v, k, toml::value_t::array, "an array of strings")) {
      return;
    }
    out.clear();
    for (std::size_t i = 0; i < v.as_array().size(); ++i) {
      std::string s;
      read_string(v.as_array()[i], k + "[" + std::to_string(i) + "]", s);
      out.push_back(std::move(s));
    }
  }

  void health(const toml::value& t) {
    HealthConfig& h = config_.health;
    for (const auto& [name, v] : t.as_table()) {
      const std::string k = key_path("health", name);
      if (name == "probe_interval") {
        read_duration(v, k, false, h.probe_interval);
      } else if (name == "probe_timeout") {
        read_duration(v, k, false, h.probe_timeout);
      } else if (name == "timeouts_to_down") {
        read_int(v, k, 1, 100, h.timeouts_to_down);
      } else if (name == "oks_to_up") {
        read_int(v, k, 1, 100, h.oks_to_up);
      } else if (name == "user") {
        read_string(v, k, h.user);
      } else if (name == "password") {
        read_string(v, k, h.password);
      } else if (name == "dbname") {
        read_string(v, k, h.dbname);
      } else if (name == "witness_receipt_age") {
        read_duration(v, k, false, h.witness_receipt_age);
      } else {
        unknown(v, "health", name, "[health]", kHealthKeys);
        continue;
      }
      note(k, v);
    }
  }

  void failover(const toml::value& t) {
    FailoverConfig& f = config_.failover;
    for (const auto& [name, v] : t.as_table()) {
      const std::string k = key_path("failover", name);
      if (name == "mode") {
        read_choice(v, k, {{"automatic", true}, {"manual", false}}, f.automatic);
      } else if (name == "synchronous_mode") {
        read_choice(v, k,
                    {{"off", SyncMode::kOff}, {"on", SyncMode::kOn}, {"strict", SyncMode::kStrict}},
                    f.synchronous_mode);
      } else if (name == "max_lag_on_failover") {
        read_int(v, k, 0, kIntMax, f.max_lag_on_failover);
      } else if (name == "hold_timeout") {
        read_duration(v, k, true, f.hold_timeout);
      } else if (name == "promote_timeout") {
        read_duration(v, k, false, f.promote_timeout);
      } else if (name == "fence_command") {
        read_string(v, k, f.fence_command);
      } else if (name == "fence_required") {
        read_bool(v, k, f.fence_required);
      } else if (name == "on_promote") {
        read_string(v, k, f.on_promote);
      } else if (name == "on_degraded") {
        read_string(v, k, f.on_degraded);
      } else if (name == "replication_user") {
        read_string(v, k, f.replication_user);
      } else if (name == "replication_password") {
        read_string(v, k, f.replication_password);
      } else if (name == "stop_command") {
        read_string(v, k, f.stop_command);
      } else if (name == "rejoin_command") {
        read_string(v, k, f.rejoin_command);
      } else if (name == "rejoin") {
        read_choice(v, k, {{"manual", false}, {"auto", true}}, f.rejoin_auto);
      } else if (name == "switchover_drain_timeout") {
        read_duration(v, k, true, f.switchover_drain_timeout);
      } else if (name == "switchover_timeout") {
        read_duration(v, k, false, f.switchover_timeout);
      } else {
        unknown(v, "failover", name, "[failover]", kFailoverKeys);
        continue;
      }
      note(k, v);
    }
  }

  void console(const toml::value& t) {
    ConsoleConfig& c = config_.console;
    for (const auto& [name, v] : t.as_table()) {
      const std::string k = key_path("console", name);
      if (name == "host") {
        read_string(v, k, c.host);
      } else if (name == "port") {
        read_int(v, k, 1, 65535, c.port);
      } else if (name == "admin_users") {
        read_string_list(v, k, c.admin_users);
      } else if (name == "monitor_users") {
        read_string_list(v, k, c.monitor_users);
      } else if (name == "max_connections") {
        read_int(v, k, 1, 100000, c.max_connections);
      } else {
        unknown(v, "console", name, "[console]", kConsoleKeys);
        continue;
      }
      note(k, v);
    }
  }

  void read_sslmode(const toml::value& v, const std::string& k, SslMode& out) {
    read_choice(v, k,
                {{"disable", SslMode::kDisable},
                 {"prefer", SslMode::kPrefer},
                 {"require", SslMode::kRequire},
                 {"verify-ca", SslMode::kVerifyCa},
                 {"verify-full", SslMode::kVerifyFull}},
                out);
  }

  void tls(const toml::value& t) {
    TlsConfig& c = config_.tls;
    for (const auto& [name, v] : t.as_table()) {
      const std::string k = key_path("tls", name);
      if (name == "cert_file") {
        read_string(v, k, c.cert_file);
      } else if (name == "key_file") {
        read_string(v, k, c.key_file);
      } else if (name == "min_version") {
        read_choice(v, k, {{"TLSv1.2", std::string("TLSv1.2")}, {"TLSv1.3", std::string("TLSv1.3")}}, c.min_version);
      } else {
        unknown(v, "tls", name, "[tls]", kTlsKeys);
        continue;
      }
      note(k, v);
    }
  }

  void server_tls(const toml::value& t) {
    ServerTlsConfig& c = config_.server_tls;
    for (const auto& [name, v] : t.as_table()) {
      const std::string k = key_path("server_tls", name);
      if (name == "sslmode") {
        read_sslmode(v, k, c.sslmode);
      } else if (name == "ca_file") {
        read_string(v, k, c.ca_file);
      } else if (name == "cert_file") {
        read_string(v, k, c.cert_file);
      } else if (name == "key_file") {
        read_string(v, k, c.key_file);
      } else {
        unknown(v, "server_tls", name, "[server_tls]", kServerTlsKeys);
        continue;
      }
      note(k, v);
    }
  }

  void store(const toml::value& t) {
    StoreConfig& s = config_.store;
    for (const auto& [name, v] : t.as_table()) {
      const std::string k = key_path("store", name);
      if (name == "endpoints") {
        read_names(v, k, s.endpoints);
      } else if (name == "ca_file") {
        read_string(v, k, s.ca_file);
      } else if (name == "cert_file") {
        read_string(v, k, s.cert_file);
      } else if (name == "key_file") {
        read_string(v, k, s.key_file);
      } else if (name == "username") {
        read_string(v, k, s.username);
      } else if (name == "password") {
        read_string(v, k, s.password);
      } else if (name == "prefix") {
        read_string(v, k, s.prefix);
      } else if (name == "name") {
        read_string(v, k, s.name);
      } else if (name == "advertise_host") {
        read_string(v, k, s.advertise_host);
      } else if (name == "lease_ttl") {
        read_duration(v, k, false, s.lease_ttl);
      } else if (name == "request_timeout") {
        read_duration(v, k, false, s.request_timeout);
      } else if (name == "failsafe") {
        read_bool(v, k, s.failsafe);
      } else {
        unknown(v, "store", name, "[store]", kStoreKeys);
        continue;
      }
      note(k, v);
    }
  }

  // A string or an array of strings.
  void read_names(const toml::value& v, const std::string& k, std::vector<std::string>& out) {
    if (v.is_string()) {
      out = {v.as_string().str};
      return;
    }
    read_string_list(v, k, out);
  }

  void hba(const toml::value& t, const std::string& prefix, HbaRule& r) {
    for (const auto& [name, v] : t.as_table()) {
      const std::string k = key_path(prefix, name);
      if (name == "type") {
        read_choice(v, k,
                    {{"host", HbaType::kHost},
                     {"hostssl", HbaType::kHostSsl},
                     {"hostnossl", HbaType::kHostNoSsl},
                     {"local", HbaType::kLocal}},
                    r.type);
      } else if (name == "database") {
        read_names(v, k, r.databases);
      } else if (name == "user") {
        read_names(v, k, r.users);
      } else if (name == "address") {
        read_string(v, k, r.address);
      } else if (name == "method") {
        read_choice(v, k,
                    {{"scram-sha-256", HbaMethod::kScram},
                     {"md5", HbaMethod::kMd5},
                     {"password", HbaMethod::kPassword},
                     {"trust", HbaMethod::kTrust},
                     {"reject", HbaMethod::kReject}},
                    r.method);
      } else {
        unknown(v, prefix, name, "[[hba]]", kHbaKeys);
        continue;
      }
      note(k, v);
    }
  }

  void auth(const toml::value& t) {
    AuthConfig& a = config_.auth;
    for (const auto& [name, v] : t.as_table()) {
      const std::string k = key_path("auth", name);
      if (name == "query") {
        read_string(v, k, a.query);
      } else if (name == "user") {
        read_string(v, k, a.user);
      } else if (name == "password") {
        read_string(v, k, a.password);
      } else if (name == "dbname") {
        read_string(v, k, a.dbname);
      } else if (name == "query_timeout") {
        read_duration(v, k, false, a.query_timeout);
      } else if (name == "cache_lifetime") {
        read_duration(v, k, true, a.cache_lifetime);
      } else if (name == "negative_cache_lifetime") {
        read_duration(v, k, true, a.negative_cache_lifetime);
      } else if (name == "max_queued_lookups") {
        read_int(v, k, 1, 100000, a.max_queued_lookups);
      } else if (name == "max_failures") {
        read_int(v, k, 0, kIntMax, a.max_failures);
      } else if (name == "failure_window") {
        read_duration(v, k, false, a.failure_window);
      } else if (name == "failure_delay") {
        read_duration(v, k, true, a.failure_delay);
      } else {
        unknown(v, "auth", name, "[auth]", kAuthKeys);
        continue;
      }
      note(k, v);
    }
  }

  void limit(const toml::value& t, const std::string& prefix, LimitConfig& l) {
    for (const auto& [name, v] : t.as_table()) {
      const std::string k = key_path(prefix, name);
      if (name == "user") {
        read_string(v, k, l.user);
      } else if (name == "database") {
        read_string(v, k, l.database);
      } else if (name == "max_client_conn") {
        read_int(v, k, 0, kIntMax, l.max_client_conn);
      } else if (name == "max_server_conn") {
        read_int(v, k, 0, kIntMax, l.max_server_conn);
      } else {
        unknown(v, prefix, name, "[[limit]]", kLimitKeys);
        continue;
      }
      note(k, v);
    }
  }

  void status(const toml::value& t) {
    StatusConfig& c = config_.status;
    for (const auto& [name, v] : t.as_table()) {
      const std::string k = key_path("status", name);
      if (name == "host") {
        read_string(v, k, c.host);
      } else if (name == "port") {
        read_int(v, k, 1, 65535, c.port);
      } else if (name == "max_connections") {
        read_int(v, k, 1, 100000, c.max_connections);
      } else {
        unknown(v, "status", name, "[status]", kStatusKeys);
        continue;
      }
      note(k, v);
    }
  }

  void listener(const toml::value& t, const std::string& prefix, ListenerConfig& l) {
    for (const auto& [name, v] : t.as_table()) {
      const std::string k = key_path(prefix, name);
      if (name == "name") {
        read_string(v, k, l.name);
      } else if (name == "host") {
        read_string(v, k, l.host);
      } else if (name == "port") {
        read_int(v, k, 1, 65535, l.port);
      } else if (name == "unix_socket_dir") {
        read_string(v, k, l.unix_socket_dir);
      } else if (name == "intent") {
        read_choice(v, k,
                    {{"read-write", routing::Intent::kReadWrite},
                     {"read-only", routing::Intent::kReadOnly}},
                    l.intent);
      } else if (name == "pool_mode") {
        read_choice(v, k,
                    {{"session", PoolMode::kSession}, {"transaction", PoolMode::kTransaction}},
                    l.pool_mode);
      } else if (name == "max_replica_lag_bytes") {
        read_int(v, k, 0, kIntMax, l.max_replica_lag_bytes);
      } else if (name == "max_replica_lag") {
        read_duration(v, k, /*zero_ok=*/true, l.max_replica_lag);
      } else if (name == "read_fallback") {
        read_choice(v, k, {{"primary", true}, {"refuse", false}}, l.read_fallback_primary);
      } else if (name == "read_write_split") {
        read_bool(v, k, l.read_write_split);
      } else if (name == "read_your_writes") {
        read_bool(v, k, l.read_your_writes);
      } else if (name == "pinning") {
        read_choice(v, k, {{"pin", false}, {"refuse", true}}, l.refuse_pinning);
      } else {
        unknown(v, prefix, name, "[[listener]]", kListenerKeys);
        continue;
      }
      note(k, v);
    }
  }

  void node(const toml::value& t, const std::string& prefix, NodeConfig& n) {
    for (const auto& [name, v] : t.as_table()) {
      const std::string k = key_path(prefix, name);
      if (name == "name") {
        read_string(v, k, n.name);
      } else if (name == "host") {
        read_string(v, k, n.host);
      } else if (name == "port") {
        read_int(v, k, 1, 65535, n.port);
      } else if (name == "priority") {
        read_int(v, k, kIntMin, kIntMax, n.priority);
      } else if (name == "sslmode") {
        read_sslmode(v, k, n.sslmode);
        n.sslmode_set = true;
      } else {
        unknown(v, prefix, name, "[[node]]", kNodeKeys);
        continue;
      }
      note(k, v);
    }
  }

  void databases(const toml::value& t) {
    std::vector<std::pair<int, DatabaseConfig>> found;  // kept in file order
    for (const auto& [name, v] : t.as_table()) {
      const std::string k = key_path("databases", name);
      note(k, v);
      if (!v.is_table()) {
        error(v, k,
              std::string("must be a table such as { dbname = \"shop_prod\" }, or {} to keep the "
                          "name; not ") +
                  type_name(v));
        continue;
      }
      if (name.empty() || name.find('\0') != std::string::npos) {
        error(v, k, "a database name must be non-empty and without NUL characters");
        continue;
      }
      DatabaseConfig db;
      db.name = name;
      for (const auto& [field, fv] : v.as_table()) {
        const std::string fk = key_path(k, field);
        if (field == "dbname") {
          read_string(fv, fk, db.dbname);
          note(fk, fv);
        } else {
          unknown(fv, k, field, "[databases] entry " + shown(name), kDatabaseKeys);
        }
      }
      found.emplace_back(line(v), std::move(db));
    }
    std::sort(found.begin(), found.end(), [](const auto& a, const auto& b) {
      return std::tie(a.first, a.second.name) < std::tie(b.first, b.second.name);
    });
    for (auto& [line_no, db] : found) {
      config_.databases.push_back(std::move(db));
    }
  }

  const std::string& file_;
  Config& config_;
  std::map<std::string, int>& lines_;
  std::vector<ConfigError>& errors_;
};

// Config-file errors in line order (errors about the whole file last), then the users file's.
void sort_errors(std::vector<ConfigError>& errors, const std::string& filename) {
  std::stable_sort(errors.begin(), errors.end(), [&](const ConfigError& a, const ConfigError& b) {
    return std::make_tuple(a.file != filename, a.file, a.line == 0, a.line, a.key, a.message) <
           std::make_tuple(b.file != filename, b.file, b.line == 0, b.line, b.key, b.message);
  });
}

}  // namespace

LoadResult parse_config(std::string_view toml_text, const std::string& filename) {
  LoadResult result;
  std::vector<ConfigError>& errors = result.errors;
  try {
    std::optional<Refusal> r = check_utf8(toml_text);
    if (!r) {
      r = check_limits(toml_text);
    }
    if (r) {
      errors.push_back({filename, r->line, "", "refused before parsing: " + r->message});
      return result;
    }
    toml::value doc;
    try {
      std::istringstream in{std::string(toml_text)};
      doc = toml::parse(in, filename);
    } catch (const toml::syntax_error& e) {
      errors.push_back(syntax_error(e, filename));
      return result;
    }
    Config config;
    config.source_file = filename;
    std::map<std::string, int> lines;
    Mapper(filename, config, lines, errors).root(doc);
    internal::validate(config, lines, errors);
    if (errors.empty()) {
      result.config = std::move(config);
    } else {
      sort_errors(errors, filename);
    }
  } catch (const std::exception& e) {
    // toml11 and the standard library may throw on input nobody anticipated; no input may
    // take pgkeel down, so that becomes one more error.
    errors.push_back(
        {filename, 0, "", std::string("could not read the configuration: ") + e.what()});
    result.config.reset();
  } catch (...) {
    errors.push_back({filename, 0, "", "could not read the configuration: unknown error"});
    result.config.reset();
  }
  return result;
}

}  // namespace pgkeel::conf
