// proxy/txpool/session_state.h — a client's session state as pgkeel can replay it on another server
// connection, tracked from what the client sends (PostgreSQL does not report search_path or
// statement_timeout in ParameterStatus). Pure: text and protocol events in, state out.
//
// The rules, as PostgreSQL applies them:
// - SET / SET SESSION / RESET / SET x TO DEFAULT change the session, but only once the transaction
//   that ran them commits; a transaction that rolls back (or an implicit one that fails) leaves
//   the session as it was. SET LOCAL lasts until the end of the transaction: nothing to replay.
// - DISCARD ALL forgets settings and prepared statements; DISCARD PLANS / SEQUENCES / TEMP keep
//   the settings.
// - Named prepared statements: Parse / Close in the extended protocol, PREPARE / DEALLOCATE in SQL.
// - What cannot be replayed on another server marks the session non-replayable, for good:
//   set_config(), LISTEN, temporary tables, session advisory locks, WITH HOLD cursors, PREPARE
//   TRANSACTION.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace pgkeel::proxy {

// ASCII classes without the C locale's function calls (SQL keywords and blanks are ASCII): these
// run over every statement text on the data path.
namespace ascii {
constexpr char lower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c + ('a' - 'A')) : c; }
constexpr bool alpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
constexpr bool space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }
}  // namespace ascii

// The plain word a statement text begins with (after blanks), lower-cased into `buf`, with `end`
// set just past it; "" when the text begins with anything else. A longer word is cut at 16 letters.
std::string_view leading_word(std::string_view sql, char (&buf)[16], std::size_t& end);

// One top-level statement of a simple Query string, comments and literals understood.
struct SqlStatement {
  std::string_view text;            // trimmed, without the terminating ';'
  std::vector<std::string> words;   // the first few keywords / identifiers, lower-cased
};

// Splits at top-level semicolons: not inside quotes, dollar quotes, comments or parentheses.
std::vector<SqlStatement> split_sql(std::string_view sql);

// Whether `sql` may change what a session carries: it contains, anywhere and in any case, one of
// set_config, DISCARD, PREPARE, DEALLOCATE, LISTEN, TEMP, an advisory lock or HOLD, or a SET or
// RESET that may begin a statement (not UPDATE ... SET). Only such statements are parsed. A false
// positive costs a parse; it runs for every query, over all of it (a padded statement must not
// hide a LISTEN), so it copies nothing.
bool session_relevant(std::string_view sql);
// session_relevant(), and whether a SAVEPOINT appears, in one pass (SessionState::on_query()).
struct SessionWords {
  bool relevant = false;
  bool savepoint = false;
};
SessionWords session_words(std::string_view sql);

class SessionState {
 public:
  // A Query message was sent with this text (`words`: session_words() of it, when known).
  void on_query(std::string_view sql) { on_query(sql, session_words(sql)); }
  void on_query(std::string_view sql, SessionWords words);
  // Extended protocol, client side: Parse (named or unnamed), Bind (portal <- statement), Execute
  // (runs the portal's statement: a SET sent this way counts), Close of a statement.
  void on_parse(std::string_view name, std::string_view query);
  void on_bind(std::string_view portal, std::string_view statement);
  void on_execute(std::string_view portal);
  void on_close_statement(std::string_view name);
  // A Parse taken as confirmed at once (on_parse() then on_parse_complete()), without a copy.
  void on_parsed(std::string_view name, std::string_view query);
  // Server side: ParseComplete / CloseComplete confirm the oldest Parse / Close in flight.
  void on_parse_complete();
  void on_close_complete();
  // An ErrorResponse came back in the current query cycle.
  void on_error() { cycle_failed_ = true; }
  // ReadyForQuery with the transaction status ('I', 'T', 'E'): pending changes are kept or
  // dropped as PostgreSQL keeps or drops them.
  void on_ready(char tx_status);

  // The settings to restore, name -> value as written (e.g. search_path -> "shop, public").
  const std::map<std::string, std::string>& settings() const { return settings_; }
  // Named prepared statements: name -> query text.
  const std::map<std::string, std::string>& prepared() const { return prepared_; }
  bool replayable() const { return why_not_.empty(); }
  const std::string& why_not_replayable() const { return why_not_; }
  // SQL that puts a fresh server session into this state ("SET a = ...; SET b = ..."). Made
  // again only after the settings changed: transaction pooling asks for it at every transaction.
  const std::string& replay_sql() const;
  // The unnamed statement's text, as last parsed.
  const std::string& unnamed() const { return unnamed_; }
  // Nothing in flight: no transaction, no query cycle, no Parse or Close awaiting its answer,
  // no portal. Only then may the session move to another process.
  bool at_rest() const {
    return !in_transaction_ && cycle_.empty() && pending_.empty() && parses_.empty() && closes_.empty() && portals_.empty();
  }
  // A session that moved here from another pgkeel process at a point at rest.
  void restore(std::map<std::string, std::string> settings, std::map<std::string, std::string> prepared, std::string unnamed) {
    *this = SessionState{};
    settings_ = std::move(settings);
    replay_stale_ = true;
    prepared_ = std::move(prepared);
    unnamed_ = std::move(unnamed);
  }

 private:
  struct Change {
    enum class Kind : std::uint8_t {
      kSet, kReset, kResetAll, kDiscardAll,          // transactional
      kPrepare, kDeallocate, kDeallocateAll,         // not transactional
      kSavepoint, kRollbackTo, kCommit, kRollback,   // transaction control
    };
    Kind kind;
    std::string name;
    std::string value;
  };
  void statement(const SqlStatement& s);
  void apply(const Change& c);
  void not_replayable(std::string why);

  std::map<std::string, std::string> settings_;
  // replay_sql() of settings_ unless stale. Fresh, no settings: "" (so a shared, never changed
  // SessionState is never written to).
  mutable std::string replay_;
  mutable bool replay_stale_ = false;
  std::map<std::string, std::string> prepared_;
  std::vector<Change> cycle_;     // what the current query cycle's statements would do, in order
  std::vector<Change> pending_;   // this transaction's changes, applied at commit
  std::vector<std::pair<std::string, std::string>> parses_;  // Parse sent, ParseComplete not yet
  std::vector<std::string> closes_;                         // Close sent, CloseComplete not yet
  std::map<std::string, std::string> portals_;               // portal -> query text
  std::string unnamed_;                                      // the unnamed statement's text
  bool in_transaction_ = false;   // as of the last ReadyForQuery
  bool failed_transaction_ = false;  // a ReadyForQuery said 'E' in this transaction
  bool cycle_failed_ = false;
  std::string why_not_;
};

// Statement text that pgkeel does not hold whole (past the head of a long Query or Parse), read
// as it passes: it cannot be classified statement by statement, so this looks for the words
// that could tie a session to its connection or change what it carries (LISTEN, TEMP /
// TEMPORARY, SET, PREPARE, DISCARD, DEALLOCATE, HOLD, an advisory lock, set_config), outside
// string literals, quoted identifiers and comments. A hit means "cannot tell": the caller pins.
// Text ends at its NUL (a Parse's parameter types follow it).
class PinWordScan {
 public:
  // Feeds the next piece. The head, fed first, sets where the text stands (inside a literal, a
  // comment, a word): call clear_hit() after it, since the head itself was classified exactly.
  void feed(std::string_view piece);
  void clear_hit() { hit_.clear(); }
  // The first word seen since clear_hit() ("" when none).
  const std::string& hit() const { return hit_; }

 private:
  enum class In : std::uint8_t {
    kCode, kQuote, kEscapeQuote, kIdentifier, kLineComment, kBlockComment, kDollarTag, kDollarBody, kEnd,
  };
  void end_word();

  std::string word_;   // the identifier being read, lower-cased (capped)
  std::string hit_;
  std::string tag_;    // a dollar quote's tag, "$" to "$" ("$$" for the empty tag)
  std::size_t matched_ = 0;  // in a dollar-quoted body: bytes of the closing tag seen so far
  int depth_ = 0;      // nested block comments
  char prev_ = 0;      // the previous byte in code (for --, /*, */ and E'...')
  bool backslash_ = false;  // in an E'...' literal: the next byte is escaped
  In in_ = In::kCode;
};

}  // namespace pgkeel::proxy
