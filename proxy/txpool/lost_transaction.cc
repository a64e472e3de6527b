#include "proxy/txpool/lost_transaction.h"

#include <algorithm>
#include <cctype>
#include <iterator>

#include "proxy/protocol/message.h"
#include "proxy/txpool/session_state.h"

namespace pgkeel::proxy {
namespace {

namespace fe = protocol::fe;

void append_empty(std::string& out, char type) { protocol::Writer(out).begin(type).end(); }

void append_rollback_done(std::string& out) { protocol::Writer(out).begin('C').str("ROLLBACK").end(); }

std::string first_words(std::string_view sql, std::size_t n) {
  const std::vector<SqlStatement> st = split_sql(sql);
  std::string out;
  if (st.empty()) return out;
  for (std::size_t i = 0; i < st[0].words.size() && i < n; ++i) out += (i ? " " : "") + st[0].words[i];
  return out;
}

bool one_statement(std::string_view sql) { return split_sql(sql).size() == 1; }

}  // namespace

bool ends_transaction(std::string_view sql) {
  const std::string w = first_words(sql, 2);
  const std::string first = w.substr(0, w.find(' '));
  if (first == "end" || first == "abort") return true;
  if (first == "commit") return w != "commit prepared";
  if (first == "rollback") return w != "rollback to" && w != "rollback prepared";
  return false;
}

bool may_commit(std::string_view sql) {
  const std::string w = first_words(sql, 2);
  const std::string first = w.substr(0, w.find(' '));
  return first == "commit" || first == "end" || w == "prepare transaction";
}

// The first keyword of a one-statement query with no comment, lower-cased, without allocating;
// "" when the query needs the full splitter (several statements, comments, or no plain word).
std::string_view simple_first_word(std::string_view sql, char (&buf)[16]) {
  std::size_t i = 0;
  const std::string_view word = leading_word(sql, buf, i);
  if (word.empty() || word.size() == sizeof buf) return {};
  // The rest in one pass: no comment, and a ';' only at the end (followed by blanks and ';').
  bool ended = false;
  for (; i < sql.size(); ++i) {
    const char c = sql[i];
    if (c == ';') {
      ended = true;
    } else if (ended && !ascii::space(c)) {
      return {};
    } else if ((c == '-' || c == '/') && i + 1 < sql.size() && sql[i + 1] == (c == '-' ? '-' : '*')) {
      return {};
    }
  }
  return word;
}

TransactionEffect transaction_effect(std::string_view sql) {
  TransactionEffect e;
  // The common case, a single plain read or write, is decided from its first word alone.
  char buf[16];
  const std::string_view first = simple_first_word(sql, buf);
  if (first == "select" || first == "insert" || first == "update" || first == "delete" || first == "values") {
    e.writes = first != "select" && first != "values";
    return e;
  }
  const std::vector<SqlStatement> st = split_sql(sql);
  for (std::size_t i = 0; i < st.size(); ++i) {
    const auto& w = st[i].words;
    if (w.empty()) continue;
    // BEGIN READ ONLY, or a BEGIN followed in the same request by SET TRANSACTION READ ONLY.
    const bool begin = i == 0 && (w[0] == "begin" || (w[0] == "start" && w.size() > 1 && w[1] == "transaction"));
    const bool set_transaction = i == 1 && e.begins && w[0] == "set" && w.size() > 1 && w[1] == "transaction";
    if (begin || set_transaction) {
      e.begins = true;
      std::string text(st[i].text);
      for (char& ch : text) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
      const bool read_write = text.find("read write") != std::string::npos;
      const bool read_only = text.find("read only") != std::string::npos && !read_write;
      if (begin || read_only || read_write) e.read_only = read_only;
    }
    static constexpr std::string_view kReads[] = {"select", "show", "begin", "start", "commit", "end", "rollback", "abort",
                                                  "savepoint", "release", "set", "reset", "fetch", "close", "explain",
                                                  "values", "table", "listen", "unlisten"};
    if (std::find(std::begin(kReads), std::end(kReads), w[0]) == std::end(kReads)) e.writes = true;
    if (w[0] == "commit" || w[0] == "end" || (w[0] == "prepare" && w.size() > 1 && w[1] == "transaction")) {
      e.may_commit = true;  // COMMIT PREPARED commits too
    }
  }
  return e;
}

void LostTransaction::fail(std::string& out) {
  if (!first_sent_) {
    protocol::append_error(out, {"ERROR", first_sqlstate_,
                                 "the transaction was lost with its server (the primary failed); it was rolled back",
                                 "The session continues: end this transaction (ROLLBACK) and retry it.", {}});
    first_sent_ = true;
    return;
  }
  protocol::append_error(out, {"ERROR", "25P02", "current transaction is aborted, commands ignored until end of transaction block",
                               {}, {}});
}

bool LostTransaction::begin(int cycles_in_flight, bool unsynced, bool in_transaction, bool may_have_committed,
                            std::string& out) {
  in_transaction_ = in_transaction && !may_have_committed;
  const bool owed = cycles_in_flight > 0 || unsynced;
  if (owed) {
    if (may_have_committed || !in_transaction) {
      protocol::append_error(out, {"ERROR", "08007",
                                   "transaction resolution unknown: the server connection was lost while this was running",
                                   "It may or may not have committed; pgkeel does not retry it. The session continues.", {}});
      first_sent_ = true;
    } else {
      fail(out);
    }
    for (int i = 0; i < cycles_in_flight; ++i) protocol::append_ready_for_query(out, in_transaction_ ? 'E' : 'I');
    skipping_ = unsynced;
  }
  return !in_transaction_ && !skipping_;
}

bool LostTransaction::on_client_message(char type, std::string_view body, const StatementText& text, std::string& out) {
  protocol::Reader r(body);
  // After an error in the extended protocol everything up to the Sync is ignored, as PostgreSQL does.
  if (skipping_ && type != fe::kSync) return false;
  switch (type) {
    case fe::kQuery: {
      const std::string_view sql = r.str();
      if (!in_transaction_) {
        // Only an unsynced cycle was owed; a Query ends it too.
        protocol::append_ready_for_query(out, 'I');
        return true;
      }
      if (split_sql(sql).empty()) {
        // An empty query is answered in a failed transaction too (drivers' validity checks).
        append_empty(out, 'I');
        protocol::append_ready_for_query(out, 'E');
        return false;
      }
      if (ends_transaction(sql) && one_statement(sql)) {
        if (may_commit(sql) && !first_sent_) {
          fail(out);
        } else {
          append_rollback_done(out);
        }
        protocol::append_ready_for_query(out, 'I');
        return true;
      }
      fail(out);
      protocol::append_ready_for_query(out, 'E');
      return false;
    }
    case fe::kSync:
      protocol::append_ready_for_query(out, in_transaction_ && !ending_ ? 'E' : 'I');
      skipping_ = false;
      if (!in_transaction_ || ending_) return true;
      return false;
    case fe::kFlush:
    case fe::kCopyData:
    case fe::kCopyDone:
    case fe::kCopyFail:
      return false;
    default:
      break;
  }
  if (!in_transaction_) return false;
  switch (type) {
    case fe::kParse: {
      const std::string_view name = r.str();
      const std::string_view sql = r.str();
      if (!r.failed() && ends_transaction(sql)) {
        if (name.empty()) {
          unnamed_ = std::string(sql);
        } else {
          named_[std::string(name)] = std::string(sql);
        }
        append_empty(out, '1');
        return false;
      }
      break;
    }
    case fe::kBind: {
      r.str();  // portal
      const std::string_view name = r.str();
      const auto here = named_.find(name);
      const std::string sql = name.empty() ? unnamed_ : here != named_.end() ? here->second : text(name);
      if (!r.failed() && ends_transaction(sql)) {
        ending_ = true;
        ending_commit_ = may_commit(sql) && !first_sent_;
        append_empty(out, '2');
        return false;
      }
      break;
    }
    case fe::kDescribe:
      if (ending_) {
        if (r.i8() == 'S') protocol::Writer(out).begin('t').i16(0).end();
        append_empty(out, 'n');
        return false;
      }
      break;
    case fe::kExecute:
      if (ending_commit_) {
        fail(out);  // the transaction ends all the same: ReadyForQuery 'I' at the Sync
        skipping_ = true;
        return false;
      }
      if (ending_) {
        append_rollback_done(out);
        return false;
      }
      break;
    case fe::kClose:
      append_empty(out, '3');
      return false;
    default:
      break;
  }
  fail(out);
  skipping_ = true;
  return false;
}

}  // namespace pgkeel::proxy
