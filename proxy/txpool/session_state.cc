#include "proxy/txpool/session_state.h"

#include <algorithm>
#include <array>
#include <cstdint>
#include <cctype>

namespace pgkeel::proxy {
namespace {

constexpr std::size_t kWordsKept = 6;

bool ident_char(char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '$' || static_cast<unsigned char>(c) >= 0x80; }

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

// Skips a quoted or commented run starting at i; returns the index after it, or i if none starts.
std::size_t skip_special(std::string_view sql, std::size_t i) {
  const std::size_t n = sql.size();
  const char c = sql[i];
  if (c == '-' && i + 1 < n && sql[i + 1] == '-') {
    while (i < n && sql[i] != '\n') ++i;
    return i;
  }
  if (c == '/' && i + 1 < n && sql[i + 1] == '*') {
    int depth = 0;  // block comments nest in PostgreSQL
    while (i < n) {
      if (sql[i] == '/' && i + 1 < n && sql[i + 1] == '*') {
        ++depth;
        i += 2;
      } else if (sql[i] == '*' && i + 1 < n && sql[i + 1] == '/') {
        i += 2;
        if (--depth == 0) return i;
      } else {
        ++i;
      }
    }
    return n;
  }
  if (c == '\'' ) {
    // E'...' allows backslash escapes; with standard_conforming_strings a plain '...' does not.
    const bool escapes = i > 0 && (sql[i - 1] == 'E' || sql[i - 1] == 'e') && (i < 2 || !ident_char(sql[i - 2]));
    ++i;
    while (i < n) {
      if (escapes && sql[i] == '\\') {
        i += 2;
        continue;
      }
      if (sql[i] == '\'') {
        if (i + 1 < n && sql[i + 1] == '\'') {
          i += 2;
          continue;
        }
        return i + 1;
      }
      ++i;
    }
    return n;
  }
  if (c == '"') {
    ++i;
    while (i < n) {
      if (sql[i] == '"') {
        if (i + 1 < n && sql[i + 1] == '"') {
          i += 2;
          continue;
        }
        return i + 1;
      }
      ++i;
    }
    return n;
  }
  if (c == '$' && (i == 0 || !ident_char(sql[i - 1]))) {
    // $tag$ ... $tag$
    std::size_t j = i + 1;
    while (j < n && (std::isalnum(static_cast<unsigned char>(sql[j])) || sql[j] == '_')) ++j;
    if (j < n && sql[j] == '$' && !(j > i + 1 && std::isdigit(static_cast<unsigned char>(sql[i + 1])))) {
      const std::string_view tag = sql.substr(i, j - i + 1);
      const std::size_t end = sql.find(tag, j + 1);
      return end == std::string_view::npos ? n : end + tag.size();
    }
  }
  return i;
}

// The value of SET name {TO|=} value, as written (several comma-separated items kept whole).
std::string set_value(std::string_view text) {
  // After the name: find TO or '=' at top level.
  std::size_t i = 0;
  const std::size_t n = text.size();
  // Skip "set", optional "session", the name.
  int words = 0;
  while (i < n && words < 4) {
    while (i < n && std::isspace(static_cast<unsigned char>(text[i]))) ++i;
    if (i < n && text[i] == '=') return std::string(trim(text.substr(i + 1)));
    std::size_t start = i;
    if (i < n && text[i] == '"') {
      i = skip_special(text, i);
    } else {
      while (i < n && (ident_char(text[i]) || text[i] == '.')) ++i;
    }
    if (i == start) break;
    const std::string w = lower(text.substr(start, i - start));
    if (w == "to") return std::string(trim(text.substr(i)));
    ++words;
  }
  return std::string(trim(text.substr(std::min(i, n))));
}

// The parameter name after the first `skip` words of `text` (SET [SESSION] name, RESET name), as
// written and lower-cased unless quoted; qualified names ("myapp.tenant") kept whole.
std::string param_name(std::string_view text, int skip) {
  std::size_t i = 0;
  const std::size_t n = text.size();
  for (int w = 0; w < skip; ++w) {
    while (i < n && std::isspace(static_cast<unsigned char>(text[i]))) ++i;
    while (i < n && ident_char(text[i])) ++i;
  }
  while (i < n && std::isspace(static_cast<unsigned char>(text[i]))) ++i;
  std::string name;
  while (i < n) {
    if (text[i] == '"') {
      const std::size_t end = skip_special(text, i);
      name += std::string(text.substr(i, end - i));
      i = end;
    } else if (ident_char(text[i]) || text[i] == '.') {
      name += static_cast<char>(std::tolower(static_cast<unsigned char>(text[i])));
      ++i;
    } else {
      break;
    }
  }
  return name;
}

}  // namespace

std::vector<SqlStatement> split_sql(std::string_view sql) {
  std::vector<SqlStatement> out;
  std::size_t start = 0;
  int parens = 0;
  SqlStatement cur;
  auto finish = [&](std::size_t end) {
    cur.text = trim(sql.substr(start, end - start));
    if (!cur.text.empty()) out.push_back(std::move(cur));
    cur = SqlStatement{};
  };
  std::size_t i = 0;
  while (i < sql.size()) {
    const std::size_t after = skip_special(sql, i);
    if (after != i) {
      i = after;
      continue;
    }
    const char c = sql[i];
    if (c == '(') {
      ++parens;
    } else if (c == ')') {
      if (parens > 0) --parens;
    } else if (c == ';' && parens == 0) {
      finish(i);
      start = i + 1;
    } else if (ident_char(c) && cur.words.size() < kWordsKept && (i == 0 || !ident_char(sql[i - 1]))) {
      std::size_t j = i;
      while (j < sql.size() && ident_char(sql[j])) ++j;
      cur.words.push_back(lower(sql.substr(i, j - i)));
      i = j;
      continue;
    }
    ++i;
  }
  finish(sql.size());
  return out;
}

namespace {

// Whether `sql` at `i` starts with `word` (lower case), ignoring case.
bool word_at(std::string_view sql, std::size_t i, std::string_view word) {
  if (sql.size() - i < word.size()) return false;
  for (std::size_t k = 1; k < word.size(); ++k) {
    if (ascii::lower(sql[i + k]) != word[k]) return false;
  }
  return true;
}

// For each byte, in either case, the group of session words it may start: 1 "set", "set_config"
// or "savepoint", 2 "discard" or "deallocate", 3 "prepare", 4 "listen", 5 "temp", 6 "advisory",
// 7 "hold", 8 "reset"; 0 none. With each group's possible second letters, most bytes of a
// statement cost one table look-up.
constexpr std::array<std::uint8_t, 256> kWordGroup = [] {
  std::array<std::uint8_t, 256> t{};
  const char* firsts = "sdpltahr";
  for (std::uint8_t g = 0; firsts[g] != '\0'; ++g) {
    t[static_cast<unsigned char>(firsts[g])] = static_cast<std::uint8_t>(g + 1);
    t[static_cast<unsigned char>(firsts[g] - ('a' - 'A'))] = static_cast<std::uint8_t>(g + 1);
  }
  return t;
}();

// Whether a SET or RESET at `i` may begin a statement: nothing but blanks before it since the
// text's start, a ';' or a block comment. After a word, a quoted name or a ')' it is part of
// another statement (UPDATE t SET ..., ALTER ... SET, OFFSET, pg_settings), which changes nothing
// a session carries. A line comment could hide what comes before: with one, every SET counts.
bool may_start_statement(std::string_view sql, std::size_t i, bool line_comment) {
  if (line_comment) return true;
  while (i > 0 && ascii::space(sql[i - 1])) --i;
  if (i == 0) return true;
  const char prev = sql[i - 1];
  return !(ident_char(prev) || prev == '"' || prev == ')' || prev == ']' || prev == '\'');
}

}  // namespace

std::string_view leading_word(std::string_view sql, char (&buf)[16], std::size_t& end) {
  std::size_t i = 0;
  while (i < sql.size() && ascii::space(sql[i])) ++i;
  std::size_t n = 0;
  while (i < sql.size() && n < sizeof buf && ascii::alpha(sql[i])) buf[n++] = ascii::lower(sql[i++]);
  end = i;
  return {buf, n};
}

SessionWords session_words(std::string_view sql) {
  SessionWords found;
  const std::size_t n = sql.size();
  const bool line_comment = sql.find("--") != std::string_view::npos;
  for (std::size_t i = 0; i + 1 < n; ++i) {
    const std::uint8_t group = kWordGroup[static_cast<unsigned char>(sql[i])];
    if (group == 0) continue;
    const char second = ascii::lower(sql[i + 1]);
    bool hit = false;
    switch (group) {
      case 1:
        if (second == 'e') {
          hit = word_at(sql, i, "set_config") || (word_at(sql, i, "set") && may_start_statement(sql, i, line_comment));
        } else if (second == 'a' && !found.savepoint) {
          found.savepoint = word_at(sql, i, "savepoint");
        }
        break;
      case 2:
        hit = (second == 'i' && word_at(sql, i, "discard")) || (second == 'e' && word_at(sql, i, "deallocate"));
        break;
      case 3:
        hit = second == 'r' && word_at(sql, i, "prepare");
        break;
      case 4:
        hit = second == 'i' && word_at(sql, i, "listen");
        break;
      case 5:
        hit = second == 'e' && word_at(sql, i, "temp");
        break;
      case 6:
        hit = second == 'd' && word_at(sql, i, "advisory");
        break;
      case 7:
        hit = second == 'o' && word_at(sql, i, "hold");
        break;
      default:
        hit = second == 'e' && word_at(sql, i, "reset") && may_start_statement(sql, i, line_comment);
        break;
    }
    if (hit) {
      found.relevant = true;
      return found;  // parsed whole: whether a SAVEPOINT follows no longer matters
    }
  }
  return found;
}

bool session_relevant(std::string_view sql) { return session_words(sql).relevant; }

void SessionState::not_replayable(std::string why) {
  if (why_not_.empty()) why_not_ = std::move(why);
}

void SessionState::on_query(std::string_view sql, SessionWords words) {
  // The common case: nothing awaits a transaction's end, and the statement names nothing a
  // session carries. (COMMIT, ROLLBACK and RELEASE act only on what is pending; a SAVEPOINT may
  // matter to what comes later in its transaction, so it is parsed.)
  if (pending_.empty() && cycle_.empty() && !words.relevant && !words.savepoint) return;
  const std::string lowered = lower(sql);
  if (lowered.find("set_config") != std::string::npos) not_replayable("set_config() was called");
  if (lowered.find("pg_advisory_lock") != std::string::npos || lowered.find("pg_try_advisory_lock") != std::string::npos) {
    not_replayable("a session advisory lock was taken");
  }
  for (const SqlStatement& s : split_sql(sql)) statement(s);
}

void SessionState::statement(const SqlStatement& s) {
  const std::vector<std::string>& w = s.words;
  if (w.empty()) return;
  const std::string& verb = w[0];
  auto word = [&](std::size_t i) -> std::string { return i < w.size() ? w[i] : std::string(); };
  if (verb == "set") {
    std::size_t k = 1;
    if (word(1) == "local") return;  // ends with the transaction
    if (word(1) == "session") {
      k = 2;
      if (word(2) == "authorization" || word(2) == "characteristics") {
        not_replayable("SET SESSION " + word(2));
        return;
      }
    }
    if (word(k) == "transaction" || word(k) == "constraints") return;  // this transaction only
    if (word(k) == "role") {
      not_replayable("SET ROLE");
      return;
    }
    if (word(k).empty()) return;
    // The name as written, lower-cased (it may be qualified: "myapp.tenant").
    const std::string name = param_name(s.text, static_cast<int>(k));
    const std::string value = set_value(s.text);
    if (lower(value) == "default") {
      cycle_.push_back({Change::Kind::kReset, name, {}});
    } else {
      cycle_.push_back({Change::Kind::kSet, name, value});
    }
    return;
  }
  if (verb == "reset") {
    if (word(1) == "all") {
      cycle_.push_back({Change::Kind::kResetAll, {}, {}});
    } else if (word(1) == "session" && word(2) == "authorization") {
      return;
    } else if (!word(1).empty()) {
      cycle_.push_back({Change::Kind::kReset, param_name(s.text, 1), {}});
    }
    return;
  }
  if (verb == "discard") {
    if (word(1) == "all") {
      cycle_.push_back({Change::Kind::kDiscardAll, {}, {}});
    } else if (word(1) == "temp" || word(1) == "temporary") {
      return;  // temp tables were already non-replayable
    }
    return;
  }
  if (verb == "prepare") {
    if (word(1) == "transaction") {
      not_replayable("PREPARE TRANSACTION");
      return;
    }
    cycle_.push_back({Change::Kind::kPrepare, word(1), std::string(s.text)});
    return;
  }
  if (verb == "deallocate") {
    const std::string target = word(1) == "prepare" ? word(2) : word(1);
    cycle_.push_back({target == "all" ? Change::Kind::kDeallocateAll : Change::Kind::kDeallocate, target, {}});
    return;
  }
  if (verb == "listen") {
    not_replayable("LISTEN");
    return;
  }
  if (verb == "create" && (word(1) == "temp" || word(1) == "temporary" ||
                           (word(1) == "local" && (word(2) == "temp" || word(2) == "temporary")) ||
                           (word(1) == "global" && (word(2) == "temp" || word(2) == "temporary")))) {
    not_replayable("a temporary table");
    return;
  }
  if (verb == "declare") {
    for (std::size_t i = 1; i + 1 < w.size(); ++i) {
      if (w[i] == "with" && w[i + 1] == "hold") not_replayable("a WITH HOLD cursor");
    }
    return;
  }
  if (verb == "savepoint") {
    cycle_.push_back({Change::Kind::kSavepoint, word(1), {}});
    return;
  }
  if ((verb == "rollback" || verb == "abort") && word(1) == "to") {
    cycle_.push_back({Change::Kind::kRollbackTo, word(2) == "savepoint" ? word(3) : word(2), {}});
    return;
  }
  if (verb == "release") return;  // the savepoint's changes stay in the transaction
  if (verb == "commit" || verb == "end") {
    if (word(1) == "prepared") return;
    cycle_.push_back({Change::Kind::kCommit, {}, {}});
    return;
  }
  if (verb == "rollback" || verb == "abort") {
    if (word(1) == "prepared") return;
    cycle_.push_back({Change::Kind::kRollback, {}, {}});
    return;
  }
}

void SessionState::on_parse(std::string_view name, std::string_view query) {
  parses_.emplace_back(std::string(name), std::string(query));
}

namespace {

// Whether running `text` can change nothing a session carries, whatever is pending: it names none
// of session_words()' words and is no transaction control (COMMIT, END, ROLLBACK, ABORT and
// RELEASE act on pending SETs). A text that does not start with a plain word is not called inert.
bool inert_statement(std::string_view text) {
  const SessionWords w = session_words(text);
  if (w.relevant || w.savepoint) return false;
  char buf[16];
  std::size_t end = 0;
  const std::string_view first = leading_word(text, buf, end);
  if (first.empty()) return false;
  return first != "commit" && first != "end" && first != "rollback" && first != "abort" && first != "release";
}

}  // namespace

void SessionState::on_bind(std::string_view portal, std::string_view statement) {
  const std::string* text = nullptr;
  if (statement.empty()) {
    text = &unnamed_;
  } else if (auto it = prepared_.find(std::string(statement)); it != prepared_.end()) {
    text = &it->second;
  } else {
    for (const auto& [n, q] : parses_) {
      if (n == statement) text = &q;
    }
  }
  if (text == nullptr || inert_statement(*text)) {
    // Nothing for Execute to look at (most statements; an unknown one fails on the server). No
    // copy is kept: transaction pooling binds at every transaction.
    if (!portals_.empty()) portals_.erase(std::string(portal));
    return;
  }
  portals_[std::string(portal)] = *text;
}

void SessionState::on_execute(std::string_view portal) {
  auto it = portals_.find(std::string(portal));
  if (it == portals_.end() || it->second.empty()) return;
  on_query(it->second);
}

void SessionState::on_close_statement(std::string_view name) { closes_.emplace_back(name); }

void SessionState::on_parsed(std::string_view name, std::string_view query) {
  if (!parses_.empty()) {  // older Parses await their answer: this one is confirmed after them
    on_parse(name, query);
    on_parse_complete();
    return;
  }
  if (name.empty()) {
    unnamed_.assign(query);  // reuses the last one's room
  } else {
    prepared_[std::string(name)].assign(query);
  }
}

void SessionState::on_parse_complete() {
  if (parses_.empty()) return;
  auto [name, query] = std::move(parses_.front());
  parses_.erase(parses_.begin());
  if (name.empty()) {
    unnamed_ = std::move(query);
  } else {
    prepared_[name] = std::move(query);  // prepared statements are not transactional
  }
}

void SessionState::on_close_complete() {
  if (closes_.empty()) return;
  prepared_.erase(closes_.front());
  closes_.erase(closes_.begin());
}

void SessionState::apply(const Change& c) {
  switch (c.kind) {
    case Change::Kind::kSet:
      settings_[c.name] = c.value;
      replay_stale_ = true;
      break;
    case Change::Kind::kReset:
      settings_.erase(c.name);
      replay_stale_ = true;
      break;
    case Change::Kind::kResetAll:
      settings_.clear();
      replay_stale_ = true;
      break;
    case Change::Kind::kDiscardAll:
      settings_.clear();
      replay_stale_ = true;
      prepared_.clear();
      break;
    case Change::Kind::kDeallocate:
      prepared_.erase(c.name);
      break;
    case Change::Kind::kDeallocateAll:
      prepared_.clear();
      break;
    case Change::Kind::kPrepare:
      prepared_[c.name] = c.value;
      break;
    case Change::Kind::kSavepoint:
    case Change::Kind::kRollbackTo:
    case Change::Kind::kCommit:
    case Change::Kind::kRollback:
      break;
  }
}

void SessionState::on_ready(char tx_status) {
  if (cycle_.empty() && pending_.empty() && !cycle_failed_ && !failed_transaction_ && tx_status != 'E' &&
      parses_.empty() && closes_.empty() && portals_.empty()) {
    in_transaction_ = tx_status != 'I';  // nothing to keep or drop: every transaction without a SET
    return;
  }
  parses_.clear();  // not confirmed by now: they failed
  closes_.clear();
  portals_.clear();
  if (cycle_failed_) {
    // An error stops a query string where it happens, and which of its statements ran before it
    // is not known here. Changes that could have taken effect anyway (a COMMIT or a prepared
    // statement before the error) make the outcome unknown; the rest rolled back with the error.
    for (const Change& c : cycle_) {
      switch (c.kind) {
        case Change::Kind::kCommit:
        case Change::Kind::kPrepare:
        case Change::Kind::kDeallocate:
        case Change::Kind::kDeallocateAll:
          not_replayable("a query string that failed may have committed settings or changed prepared statements");
          break;
        default:
          break;
      }
    }
    cycle_.clear();
    failed_transaction_ = true;  // the transaction it ran in (explicit or implicit) is aborted
  }
  for (const Change& c : cycle_) {
    switch (c.kind) {
      case Change::Kind::kPrepare:
      case Change::Kind::kDeallocate:
      case Change::Kind::kDeallocateAll:
        apply(c);  // prepared statements are not transactional
        break;
      case Change::Kind::kSavepoint:
        pending_.push_back(c);
        break;
      case Change::Kind::kRollbackTo:
        for (std::size_t i = pending_.size(); i-- > 0;) {
          if (pending_[i].kind == Change::Kind::kSavepoint && pending_[i].name == c.name) {
            pending_.resize(i + 1);  // later changes undone; the savepoint stays
            failed_transaction_ = false;
            break;
          }
        }
        break;
      case Change::Kind::kCommit:
        if (!failed_transaction_) {
          for (const Change& p : pending_) apply(p);
        }
        pending_.clear();
        failed_transaction_ = false;
        break;
      case Change::Kind::kRollback:
        pending_.clear();
        failed_transaction_ = false;
        break;
      default:
        pending_.push_back(c);
        break;
    }
  }
  cycle_.clear();
  if (tx_status == 'E') failed_transaction_ = true;
  if (tx_status == 'I') {
    // Autocommit, or an implicit transaction of several statements: committed unless it failed.
    if (!failed_transaction_) {
      for (const Change& p : pending_) apply(p);
    }
    pending_.clear();
    failed_transaction_ = false;
  }
  in_transaction_ = tx_status != 'I';
  cycle_failed_ = false;
}

const std::string& SessionState::replay_sql() const {
  if (replay_stale_) {
    replay_.clear();
    for (const auto& [name, value] : settings_) {
      replay_ += "SET ";
      replay_ += name;
      replay_ += " = ";
      replay_ += value;
      replay_ += ';';
    }
    replay_stale_ = false;
  }
  return replay_;
}

void PinWordScan::end_word() {
  if (word_.empty()) return;
  if (hit_.empty()) {
    static constexpr std::string_view kWords[] = {"listen", "temp", "temporary", "set", "prepare", "discard",
                                                  "deallocate", "hold"};
    bool pin = std::find(std::begin(kWords), std::end(kWords), word_) != std::end(kWords);
    pin = pin || word_.find("advisory") != std::string::npos || word_.find("set_config") != std::string::npos;
    if (pin) hit_ = word_;
  }
  word_.clear();
}

void PinWordScan::feed(std::string_view piece) {
  constexpr std::size_t kMaxWord = 64;  // longer words cannot be one of ours ("advisory" is found below that)
  for (const char c : piece) {
    if (c == '\0') {
      end_word();
      in_ = In::kEnd;
    }
    switch (in_) {
      case In::kEnd:
        return;
      case In::kQuote:
        if (c == '\'') in_ = In::kCode;  // '' inside a literal leaves and enters again: the same
        continue;
      case In::kEscapeQuote:
        if (backslash_) {
          backslash_ = false;
        } else if (c == '\\') {
          backslash_ = true;
        } else if (c == '\'') {
          in_ = In::kCode;
        }
        continue;
      case In::kIdentifier:
        if (c == '"') in_ = In::kCode;
        continue;
      case In::kLineComment:
        if (c == '\n') in_ = In::kCode;
        continue;
      case In::kDollarTag: {
        // After a '$' that starts a token: $tag$ or $$ opens a dollar quote; $1 is a parameter.
        const auto t = static_cast<unsigned char>(c);
        if (c == '$') {
          tag_ += c;
          in_ = In::kDollarBody;
          matched_ = 0;
          continue;
        }
        if (std::isalpha(t) || c == '_' || t >= 0x80 || (std::isdigit(t) && tag_.size() > 1)) {
          tag_ += c;
          continue;
        }
        in_ = In::kCode;  // not a dollar quote: read this byte as code
        prev_ = '$';
        break;
      }
      case In::kDollarBody:
        if (c == tag_[matched_]) {
          if (++matched_ == tag_.size()) in_ = In::kCode;
        } else {
          matched_ = c == tag_[0] ? 1 : 0;
        }
        continue;
      case In::kBlockComment:
        if (prev_ == '*' && c == '/') {
          prev_ = 0;
          if (--depth_ == 0) in_ = In::kCode;
          continue;
        }
        if (prev_ == '/' && c == '*') {
          prev_ = 0;
          ++depth_;
          continue;
        }
        prev_ = c;
        continue;
      case In::kCode:
        break;
    }
    const auto u = static_cast<unsigned char>(c);
    if (c == '$' && word_.empty()) {
      in_ = In::kDollarTag;
      tag_ = "$";
      continue;
    }
    if (std::isalnum(u) || c == '_' || c == '$' || u >= 0x80) {
      if (word_.size() < kMaxWord) word_ += static_cast<char>(std::tolower(u));
      prev_ = c;
      continue;
    }
    const bool e_string = c == '\'' && word_ == "e";
    end_word();
    if (c == '\'') {
      in_ = e_string ? In::kEscapeQuote : In::kQuote;
    } else if (c == '"') {
      in_ = In::kIdentifier;
    } else if (c == '-' && prev_ == '-') {
      in_ = In::kLineComment;
    } else if (c == '*' && prev_ == '/') {
      in_ = In::kBlockComment;
      depth_ = 1;
      prev_ = 0;
      continue;
    }
    prev_ = c;
  }
}

}  // namespace pgkeel::proxy
