// proxy/txpool/lost_transaction.h — what a client hears when its server connection died under it (the
// primary failed) while it had a transaction open or a request in flight, so that it keeps its
// connection and learns exactly what PostgreSQL would have told it had the transaction failed:
//
// - a request in flight that may have committed (an autocommit statement, a COMMIT) gets 08007,
//   transaction resolution unknown: pgkeel never retries what it cannot know the outcome of;
// - a transaction that was open is gone: its next request gets 40001, then every request gets
//   25P02 ("commands ignored until end of transaction block") until the client ends it; COMMIT,
//   END, ROLLBACK and ABORT then answer ROLLBACK, as PostgreSQL does for a failed transaction. A
//   COMMIT that comes first, before the client heard of the failure, gets 40001 instead (a silent
//   ROLLBACK tag would read as success to drivers that do not check it, pgJDBC among them), and
//   ends the transaction.
//
// After that, the session goes on, on a new server connection. Pure: messages in, answers out.
#pragma once

#include <functional>
#include <map>
#include <string>
#include <string_view>

namespace pgkeel::proxy {

// Whether `sql` (one statement) ends a transaction: COMMIT, END, ROLLBACK, ABORT (not ROLLBACK TO,
// and not the two-phase COMMIT / ROLLBACK PREPARED).
bool ends_transaction(std::string_view sql);
// Whether `sql` may commit: it ends a transaction (COMMIT, END; PREPARE TRANSACTION and COMMIT
// PREPARED too), as opposed to ROLLBACK or ABORT.
bool may_commit(std::string_view sql);

// What a query string does to the transaction around it: opens one (BEGIN or START TRANSACTION
// first), and whether any statement may commit.
struct TransactionEffect {
  bool begins = false;
  bool may_commit = false;
  bool read_only = false;  // it begins a transaction declared READ ONLY
  bool writes = false;     // a statement other than a read (SELECT, SHOW, transaction control, SET, ...)
};
TransactionEffect transaction_effect(std::string_view sql);

class LostTransaction {
 public:
  // The query text of a named prepared statement ("" when unknown).
  using StatementText = std::function<std::string(std::string_view name)>;

  // The server died. `cycles_in_flight`: Query or Sync sent, their ReadyForQuery not back;
  // `unsynced`: extended-protocol requests sent without a Sync yet; `in_transaction`: a transaction
  // block was open ('T' or 'E'); `may_have_committed`: what is in flight may have committed.
  // Appends the answers owed now. Returns true when the session is already back at rest (idle,
  // nothing owed): the next request goes to a new server connection.
  bool begin(int cycles_in_flight, bool unsynced, bool in_transaction, bool may_have_committed, std::string& out);

  // A complete client message while the transaction is lost. Returns true once the client ended
  // it (ReadyForQuery 'I' appended): the messages after this one go to a new server connection.
  bool on_client_message(char type, std::string_view body, const StatementText& text, std::string& out);

 private:
  void fail(std::string& out);

  bool in_transaction_ = false;
  bool first_sent_ = false;  // 40001 said; from now on 25P02
  bool skipping_ = false;    // an error was answered in this extended-protocol cycle
  bool ending_ = false;      // this cycle ends the transaction
  bool ending_commit_ = false;  // ... with a COMMIT the client cannot know failed: it must hear so
  std::string unnamed_;      // the unnamed statement's text, parsed in this state
  std::map<std::string, std::string, std::less<>> named_;  // statements parsed in this state
  std::string first_sqlstate_ = "40001";
};

}  // namespace pgkeel::proxy
