// Tests for proxy/txpool/lost_transaction.h: what a client hears after its server died under it — 08007
// for what may have committed, 40001 then 25P02 for a lost transaction until it ends it — in the
// simple and the extended protocol.

#include <catch2/catch.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "proxy/txpool/lost_transaction.h"
#include "proxy/protocol/message.h"

namespace {

using pgkeel::proxy::LostTransaction;

struct Answer {
  char type;
  std::string body;
};

std::vector<Answer> answers(const std::string& s) {
  std::vector<Answer> out;
  std::size_t i = 0;
  while (i + 5 <= s.size()) {
    const std::uint32_t len = pgkeel::protocol::read_u32(reinterpret_cast<const unsigned char*>(s.data() + i + 1));
    out.push_back({s[i], s.substr(i + 5, len - 4)});
    i += 1 + len;
  }
  return out;
}

std::string types(const std::string& s) {
  std::string t;
  for (const Answer& a : answers(s)) t += a.type;
  return t;
}

std::string sqlstate(const std::string& s) {
  for (const Answer& a : answers(s)) {
    if (a.type != 'E') continue;
    for (std::size_t i = 0; i < a.body.size();) {
      const char f = a.body[i];
      const std::size_t end = a.body.find('\0', i + 1);
      if (f == 'C') return a.body.substr(i + 1, end - i - 1);
      i = end + 1;
    }
  }
  return "";
}

std::string query(std::string_view sql) { return std::string(sql) + '\0'; }
std::string parse(std::string_view name, std::string_view sql) {
  return std::string(name) + '\0' + std::string(sql) + '\0' + std::string("\0\0", 2);
}
std::string bind(std::string_view statement) { return std::string("\0", 1) + std::string(statement) + '\0' + std::string(6, '\0'); }
const std::string kExecute = std::string(5, '\0');

const LostTransaction::StatementText kNoStatements = [](std::string_view) { return std::string(); };

}  // namespace

TEST_CASE("what ends a transaction, and what may commit", "[proxy][lost]") {
  using pgkeel::proxy::ends_transaction;
  using pgkeel::proxy::may_commit;
  for (const char* sql : {"COMMIT", "commit work", "END", "ROLLBACK", " /* c */ abort;", "rollback transaction"}) {
    INFO(sql);
    CHECK(ends_transaction(sql));
  }
  for (const char* sql : {"ROLLBACK TO SAVEPOINT a", "COMMIT PREPARED 'x'", "ROLLBACK PREPARED 'x'", "SELECT 1", "BEGIN"}) {
    INFO(sql);
    CHECK_FALSE(ends_transaction(sql));
  }
  CHECK(may_commit("COMMIT"));
  CHECK(may_commit("end"));
  CHECK(may_commit("PREPARE TRANSACTION 'x'"));
  CHECK_FALSE(may_commit("ROLLBACK"));
}

TEST_CASE("a lost autocommit statement or COMMIT gets 08007 and the session is at rest again", "[proxy][lost]") {
  LostTransaction lost;
  std::string out;
  CHECK(lost.begin(1, false, false, true, out));
  CHECK(types(out) == "EZ");
  CHECK(sqlstate(out) == "08007");
  CHECK(answers(out).back().body == "I");
  LostTransaction commit;
  std::string out2;
  CHECK(commit.begin(1, false, true, true, out2));  // COMMIT in flight inside a transaction block
  CHECK(sqlstate(out2) == "08007");
  CHECK(answers(out2).back().body == "I");
}

TEST_CASE("a lost idle transaction: 40001 once, 25P02 after, ROLLBACK or COMMIT end it", "[proxy][lost]") {
  LostTransaction lost;
  std::string out;
  CHECK_FALSE(lost.begin(0, false, true, false, out));
  CHECK(out.empty());  // nothing owed until the client speaks
  lost.on_client_message('Q', query("INSERT INTO t VALUES (1)"), kNoStatements, out);
  CHECK(types(out) == "EZ");
  CHECK(sqlstate(out) == "40001");
  CHECK(answers(out).back().body == "E");
  out.clear();
  CHECK_FALSE(lost.on_client_message('Q', query("SELECT 1"), kNoStatements, out));
  CHECK(sqlstate(out) == "25P02");
  out.clear();
  SECTION("COMMIT, once the client heard of the failure, answers ROLLBACK") {
    CHECK(lost.on_client_message('Q', query("COMMIT"), kNoStatements, out));
    CHECK(types(out) == "CZ");
    CHECK(answers(out)[0].body == std::string("ROLLBACK\0", 9));
    CHECK(answers(out)[1].body == "I");
  }
  SECTION("ROLLBACK TO a savepoint cannot bring it back") {
    CHECK_FALSE(lost.on_client_message('Q', query("ROLLBACK TO SAVEPOINT a"), kNoStatements, out));
    CHECK(sqlstate(out) == "25P02");
  }
}

TEST_CASE("a lost transaction in the extended protocol, as pgJDBC drives it", "[proxy][lost]") {
  LostTransaction lost;
  std::string out;
  CHECK_FALSE(lost.begin(1, false, true, false, out));  // an UPDATE was running
  CHECK(sqlstate(out) == "40001");
  CHECK(answers(out).back().body == "E");
  out.clear();
  // The next statement: Parse, Bind, Execute, Sync -> one 25P02, the rest ignored, then 'E'.
  lost.on_client_message('P', parse("", "UPDATE t SET x = 1"), kNoStatements, out);
  lost.on_client_message('B', bind(""), kNoStatements, out);
  lost.on_client_message('E', kExecute, kNoStatements, out);
  CHECK_FALSE(lost.on_client_message('S', "", kNoStatements, out));
  CHECK(types(out) == "EZ");
  CHECK(sqlstate(out) == "25P02");
  out.clear();
  // rollback() through a server-prepared statement S_3 = "ROLLBACK".
  const LostTransaction::StatementText text = [](std::string_view name) {
    return name == "S_3" ? std::string("ROLLBACK") : std::string();
  };
  lost.on_client_message('B', bind("S_3"), text, out);
  lost.on_client_message('E', kExecute, text, out);
  CHECK(lost.on_client_message('S', "", text, out));
  CHECK(types(out) == "2CZ");
  CHECK(answers(out).back().body == "I");
}

TEST_CASE("an unsynced cycle in flight gets its error now and its ReadyForQuery at the client's Sync", "[proxy][lost]") {
  LostTransaction lost;
  std::string out;
  CHECK_FALSE(lost.begin(0, true, false, false, out));
  CHECK(sqlstate(out) == "08007");
  CHECK(types(out) == "E");
  out.clear();
  CHECK_FALSE(lost.on_client_message('Q', query("SELECT 1"), kNoStatements, out));  // ignored until Sync
  CHECK(out.empty());
  CHECK(lost.on_client_message('S', "", kNoStatements, out));
  CHECK(types(out) == "Z");
  CHECK(answers(out)[0].body == "I");
}

TEST_CASE("a ROLLBACK parsed as a named statement while the transaction is lost ends it", "[proxy][lost]") {
  LostTransaction lost;
  std::string out;
  CHECK_FALSE(lost.begin(0, false, true, false, out));
  lost.on_client_message('P', parse("S_7", "ROLLBACK"), kNoStatements, out);
  lost.on_client_message('B', bind("S_7"), kNoStatements, out);
  lost.on_client_message('E', kExecute, kNoStatements, out);
  CHECK(lost.on_client_message('S', "", kNoStatements, out));
  CHECK(types(out) == "12CZ");
}

TEST_CASE("a COMMIT that comes first after the loss gets 40001, not a silent ROLLBACK", "[proxy][lost]") {
  LostTransaction lost;
  std::string out;
  CHECK_FALSE(lost.begin(0, false, true, false, out));
  CHECK(lost.on_client_message('Q', query("COMMIT"), kNoStatements, out));
  CHECK(types(out) == "EZ");
  CHECK(sqlstate(out) == "40001");
  CHECK(answers(out).back().body == "I");
  SECTION("the same through the extended protocol") {
    LostTransaction ext;
    std::string o;
    CHECK_FALSE(ext.begin(0, false, true, false, o));
    ext.on_client_message('P', parse("", "COMMIT"), kNoStatements, o);
    ext.on_client_message('B', bind(""), kNoStatements, o);
    ext.on_client_message('E', kExecute, kNoStatements, o);
    CHECK(ext.on_client_message('S', "", kNoStatements, o));
    CHECK(types(o) == "12EZ");
    CHECK(sqlstate(o) == "40001");
    CHECK(answers(o).back().body == "I");
  }
  SECTION("an empty query (a validity check) is answered without an error") {
    LostTransaction v;
    std::string o;
    CHECK_FALSE(v.begin(0, false, true, false, o));
    CHECK_FALSE(v.on_client_message('Q', query(""), kNoStatements, o));
    CHECK(types(o) == "IZ");
  }
}

TEST_CASE("what a query says about reads and writes, for read_write_split and read_your_writes", "[proxy][lost][split]") {
  using pgkeel::proxy::transaction_effect;
  CHECK(transaction_effect("BEGIN READ ONLY").read_only);
  CHECK(transaction_effect("start transaction isolation level repeatable read, read only").read_only);
  CHECK(transaction_effect("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").read_only);
  CHECK_FALSE(transaction_effect("BEGIN").read_only);
  CHECK_FALSE(transaction_effect("BEGIN READ WRITE").read_only);
  CHECK_FALSE(transaction_effect("SELECT 'read only'").read_only);  // not a BEGIN
  CHECK(transaction_effect("BEGIN; SET TRANSACTION READ ONLY; SELECT 1").read_only);
  CHECK(transaction_effect("begin; set transaction isolation level serializable, read only").read_only);
  CHECK_FALSE(transaction_effect("BEGIN; SET TRANSACTION ISOLATION LEVEL SERIALIZABLE").read_only);
  CHECK_FALSE(transaction_effect("BEGIN READ ONLY; SET TRANSACTION READ WRITE").read_only);
  CHECK_FALSE(transaction_effect("SELECT 1; SET TRANSACTION READ ONLY").read_only);  // no BEGIN first
  CHECK(transaction_effect("INSERT INTO t VALUES (1)").writes);
  CHECK(transaction_effect("WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x").writes);
  CHECK(transaction_effect("SELECT 1; UPDATE t SET a = 1").writes);
  CHECK_FALSE(transaction_effect("SELECT * FROM t").writes);
  CHECK_FALSE(transaction_effect("BEGIN; SELECT 1; COMMIT").writes);
  CHECK_FALSE(transaction_effect("SET search_path = a").writes);
  // The one-word fast path agrees with the splitter.
  CHECK_FALSE(transaction_effect("  select * from t;").writes);
  CHECK(transaction_effect("Update t SET a = 1").writes);
  CHECK(transaction_effect("INSERT INTO t VALUES (';')").writes);
  CHECK(transaction_effect("/* c */ DELETE FROM t").writes);
  CHECK(transaction_effect("SELECT 1; COMMIT").may_commit);
  CHECK_FALSE(transaction_effect("select 1;; \n").writes);
  CHECK(transaction_effect("SELECT 1 /* ; */; DELETE FROM t").writes);
  CHECK(transaction_effect("SELECT 1 -- x\n; DELETE FROM t").writes);
  CHECK(transaction_effect("\tVALUES (1); delete from t").writes);
}
