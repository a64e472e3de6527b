// Unit tests for session-state tracking: the SQL splitter, and SET / RESET / DISCARD / prepared
// statements kept or dropped as PostgreSQL keeps or drops them.
#include <catch2/catch.hpp>

#include "proxy/txpool/session_state.h"

namespace pgkeel {

using proxy::SessionState;
using proxy::split_sql;

namespace {

// One simple-protocol cycle: the Query, an optional error, then ReadyForQuery.
void cycle(SessionState& s, std::string_view sql, char status, bool error = false) {
  s.on_query(sql);
  if (error) s.on_error();
  s.on_ready(status);
}

}  // namespace

TEST_CASE("the splitter cuts at top-level semicolons only", "[unit][session]") {
  const auto st = split_sql(
      "SET search_path = 'a;b'; SELECT $$;$$, \"x;y\", E'\\';' /* ; /* nested ; */ */ ; "
      "-- a comment; still a comment\n  CREATE FUNCTION f() RETURNS int AS $body$ SELECT 1; $body$ LANGUAGE sql;"
      "SELECT (1;2)");
  REQUIRE(st.size() == 4);
  CHECK(st[0].text == "SET search_path = 'a;b'");
  CHECK(st[0].words == std::vector<std::string>{"set", "search_path"});
  CHECK(st[1].words.front() == "select");
  CHECK(st[2].words.front() == "create");
  CHECK(st[3].text == "SELECT (1;2)");
  CHECK(split_sql("  ;; ").empty());
}

TEST_CASE("SET in autocommit sticks; SET LOCAL and SET TRANSACTION do not", "[unit][session]") {
  SessionState s;
  cycle(s, "SET search_path TO shop, public", 'I');
  cycle(s, "set SESSION statement_timeout = '5s'", 'I');
  cycle(s, "SET LOCAL work_mem = '64MB'", 'I');
  cycle(s, "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", 'I');
  CHECK(s.settings().size() == 2);
  CHECK(s.settings().at("search_path") == "shop, public");
  CHECK(s.settings().at("statement_timeout") == "'5s'");
  CHECK(s.replay_sql() == "SET search_path = shop, public;SET statement_timeout = '5s';");
  cycle(s, "RESET statement_timeout", 'I');
  cycle(s, "SET search_path TO DEFAULT", 'I');
  CHECK(s.settings().empty());
  CHECK(s.replayable());
}

TEST_CASE("a SET inside a transaction counts only if the transaction commits", "[unit][session]") {
  SessionState s;
  cycle(s, "BEGIN", 'T');
  cycle(s, "SET search_path = a", 'T');
  CHECK(s.settings().empty());  // not yet
  cycle(s, "COMMIT", 'I');
  CHECK(s.settings().at("search_path") == "a");

  cycle(s, "BEGIN", 'T');
  cycle(s, "SET search_path = b", 'T');
  cycle(s, "ROLLBACK", 'I');
  CHECK(s.settings().at("search_path") == "a");

  cycle(s, "BEGIN", 'T');
  cycle(s, "SET search_path = c", 'T');
  cycle(s, "SELECT 1/0", 'E', true);
  cycle(s, "COMMIT", 'I');  // COMMIT of a failed transaction rolls back
  CHECK(s.settings().at("search_path") == "a");
}

TEST_CASE("savepoints undo the SETs after them", "[unit][session]") {
  SessionState s;
  cycle(s, "BEGIN; SET a.x = 1; SAVEPOINT sp; SET a.y = 2", 'T');
  cycle(s, "SELECT 1/0", 'E', true);
  cycle(s, "ROLLBACK TO SAVEPOINT sp", 'T');
  cycle(s, "SET a.z = 3; COMMIT", 'I');
  CHECK(s.settings().count("a.x") == 1);
  CHECK(s.settings().count("a.y") == 0);
  CHECK(s.settings().count("a.z") == 1);
}

TEST_CASE("a savepoint taken before any SET still bounds the SETs after it", "[unit][session]") {
  // The fast path skips statements that name nothing a session carries while nothing is
  // pending; a SAVEPOINT is never skipped, or the ROLLBACK TO below would find nothing to undo.
  SessionState s;
  cycle(s, "BEGIN", 'T');
  cycle(s, "savepoint first", 'T');
  cycle(s, "SET a.y = 2", 'T');
  cycle(s, "ROLLBACK TO first", 'T');
  cycle(s, "COMMIT", 'I');
  CHECK(s.settings().count("a.y") == 0);

  cycle(s, "BEGIN; SAVEPOINT sp", 'T');
  cycle(s, "SET a.y = 3", 'T');
  cycle(s, "ROLLBACK TO SAVEPOINT sp", 'T');
  cycle(s, "END", 'I');
  CHECK(s.settings().count("a.y") == 0);
}

TEST_CASE("a COMMIT that fails with nothing pending leaves the session replayable", "[unit][session]") {
  SessionState s;
  cycle(s, "SET a.x = 1", 'I');
  cycle(s, "INSERT INTO t VALUES (1); COMMIT", 'I', true);  // nothing of the session was pending
  CHECK(s.replayable());
  CHECK(s.settings().at("a.x") == "1");
}

TEST_CASE("the words that make a statement matter to a session, in any case, anywhere", "[unit][session]") {
  using proxy::session_relevant;
  using proxy::session_words;
  CHECK_FALSE(session_relevant("SELECT abalance FROM pgbench_accounts WHERE aid = 42;"));
  CHECK_FALSE(session_relevant("COMMIT"));
  CHECK_FALSE(session_relevant("INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 2, 3, 4, now())"));
  // SET and RESET count where a statement may begin, not inside another one.
  CHECK_FALSE(session_relevant("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 7;"));
  CHECK_FALSE(session_relevant("UPDATE \"T\" SET a = 1"));
  CHECK_FALSE(session_relevant("SELECT name FROM pg_settings OFFSET 2"));
  CHECK_FALSE(session_relevant("ALTER TABLE t ALTER COLUMN c SET DEFAULT 1"));
  CHECK(session_relevant("BEGIN;SET a.x = 1"));
  CHECK(session_relevant("  set search_path = x"));
  CHECK(session_relevant("/* c */ SET a.x = 1"));
  CHECK(session_relevant("-- a comment\nSET a.x = 1"));
  CHECK(session_relevant("SELECT 1; -- c\n UPDATE t SET a = 1"));  // with a line comment, every SET counts
  CHECK(session_relevant("select pg_catalog.set_config('a.x', '1', false)"));
  CHECK(session_relevant("SELECT 1; reset all"));
  CHECK(session_relevant("select 1; LiStEn chan"));
  CHECK(session_relevant("RESET ALL"));
  CHECK(session_relevant("SELECT pg_advisory_lock(1)"));
  CHECK(session_relevant("create TEMPORARY table x ()"));
  CHECK(session_relevant("DECLARE c CURSOR WITH HOLD FOR SELECT 1"));
  CHECK(session_relevant("DEALLOCATE ALL"));
  CHECK(session_relevant("discard all"));
  CHECK(session_relevant("PREPARE p AS SELECT 1"));
  CHECK(session_relevant("set"));
  CHECK_FALSE(session_relevant("se"));
  CHECK_FALSE(session_relevant(""));
  CHECK(session_words("SAVEPOINT a").savepoint);
  CHECK_FALSE(session_words("SAVEPOINT a").relevant);
  CHECK_FALSE(session_words("ROLLBACK TO a").savepoint);
}

TEST_CASE("a multi-statement string is one implicit transaction", "[unit][session]") {
  SessionState s;
  cycle(s, "SET a.x = 1; SELECT 1/0", 'I', true);
  CHECK(s.settings().empty());
  cycle(s, "SET a.x = 1; SELECT 1", 'I');
  CHECK(s.settings().at("a.x") == "1");
  cycle(s, "BEGIN; SET a.y = 2; COMMIT; SELECT 1/0", 'I', true);  // did the COMMIT run? unknown
  CHECK_FALSE(s.replayable());
}

TEST_CASE("DISCARD ALL forgets settings and prepared statements", "[unit][session]") {
  SessionState s;
  cycle(s, "SET a.x = 1; PREPARE q AS SELECT 1", 'I');
  CHECK(s.prepared().count("q") == 1);
  cycle(s, "DISCARD ALL", 'I');
  CHECK(s.settings().empty());
  CHECK(s.prepared().empty());
}

TEST_CASE("prepared statements follow Parse/ParseComplete and Close/CloseComplete, not transactions", "[unit][session]") {
  SessionState s;
  s.on_parse("S_1", "SELECT $1");
  s.on_parse("S_2", "SELEC oops");
  s.on_parse_complete();  // S_1 confirmed; S_2 failed: no ParseComplete before ReadyForQuery
  s.on_error();
  s.on_ready('I');
  CHECK(s.prepared().count("S_1") == 1);
  CHECK(s.prepared().count("S_2") == 0);
  cycle(s, "BEGIN; PREPARE p AS SELECT 2", 'T');
  cycle(s, "ROLLBACK", 'I');
  CHECK(s.prepared().count("p") == 1);  // PREPARE is not undone by ROLLBACK
  s.on_close_statement("S_1");
  s.on_close_complete();
  s.on_ready('I');
  CHECK(s.prepared().count("S_1") == 0);
  cycle(s, "DEALLOCATE ALL", 'I');
  CHECK(s.prepared().empty());
}

TEST_CASE("a SET sent through the extended protocol counts when executed", "[unit][session]") {
  SessionState s;
  s.on_parse("", "SET search_path = shop");
  s.on_parse_complete();
  s.on_bind("", "");
  s.on_execute("");
  s.on_ready('I');
  CHECK(s.settings().at("search_path") == "shop");
}

TEST_CASE("COMMIT and ROLLBACK through the extended protocol settle pending SETs", "[unit][session]") {
  // As pgJDBC runs a transaction: every statement an unnamed Parse, Bind, Execute, Sync.
  const auto run = [](SessionState& s, std::string_view sql, char status) {
    s.on_parsed("", sql);
    s.on_bind("", "");
    s.on_execute("");
    s.on_ready(status);
  };
  SessionState s;
  run(s, "BEGIN", 'T');
  run(s, "SET search_path = shop", 'T');
  run(s, "SELECT 1", 'T');  // inert: no portal kept, nothing done at Execute
  CHECK(s.settings().empty());
  run(s, "COMMIT", 'I');
  CHECK(s.settings().at("search_path") == "shop");
  run(s, "BEGIN", 'T');
  run(s, "SET search_path = other", 'T');
  run(s, "UPDATE t SET x = 1", 'T');
  run(s, "  rollback", 'I');
  CHECK(s.settings().at("search_path") == "shop");
  CHECK(s.at_rest());
}

TEST_CASE("what cannot be replayed elsewhere marks the session for good", "[unit][session]") {
  for (const char* sql : {"SELECT set_config('search_path', 'x', false)", "LISTEN orders",
                          "CREATE TEMP TABLE t (x int)", "create local temporary table t (x int)",
                          "SELECT pg_advisory_lock(42)", "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
                          "PREPARE TRANSACTION 'x'", "SET ROLE web", "SET SESSION AUTHORIZATION web"}) {
    SessionState s;
    cycle(s, sql, 'I');
    INFO(sql);
    CHECK_FALSE(s.replayable());
    CHECK_FALSE(s.why_not_replayable().empty());
  }
  SessionState fine;
  cycle(fine, "SELECT pg_advisory_xact_lock(1); SELECT 'LISTEN is just text'", 'I');
  CHECK(fine.replayable());
}

TEST_CASE("a long statement's text past its head is watched for words that could pin, outside literals and comments",
          "[proxy][session][pinning]") {
  const auto hit = [](std::string_view head, std::vector<std::string_view> pieces) {
    proxy::PinWordScan scan;
    scan.feed(head);
    scan.clear_hit();
    for (std::string_view p : pieces) scan.feed(p);
    return scan.hit();
  };
  CHECK(hit("SELECT 1; /* padding", {" more */ LIS", "TEN ch"}) == "listen");
  CHECK(hit("INSERT INTO t VALUES ('", {"a set of temp values, listen", "', 'x')"}).empty());
  CHECK(hit("SELECT 1; ", {"create temporary table t (i int)"}) == "temporary");
  CHECK(hit("SELECT 1; ", {"select pg_advisory_lock(1)"}) == "pg_advisory_lock");
  CHECK(hit("SELECT E'it\\'s ", {"set' AS x"}).empty());          // E'...' with an escaped quote
  CHECK(hit("SELECT 'it''s ", {"set' AS x"}).empty());              // '' inside a literal
  CHECK(hit("SELECT \"set", {"\" FROM t"}).empty());                // a quoted identifier
  CHECK(hit("SELECT 1 -- set", {" listen\n SELECT 2"}).empty());     // a line comment
  CHECK(hit("SELECT /* a /* nested */ set", {" */ 1; SET x = 1"}) == "set");
  CHECK(hit("SELECT offset_", {"value, asset FROM t"}).empty());    // words, not substrings
  CHECK(hit("SELECT 1", {std::string_view("\0\0\1set", 5)}).empty());  // after the text's NUL
  // Dollar quotes: their body is a literal (an apostrophe in it opens nothing); $1 is a parameter.
  CHECK(hit("CREATE FUNCTION f() RETURNS int AS $body$ SELECT 'set'; -- don't", {" $bo", "dy$ LANGUAGE sql; LISTEN x"}) ==
        "listen");
  CHECK(hit("SELECT $$ it's a set $", {"$, $1; LISTEN y"}) == "listen");
  CHECK(hit("SELECT $1, $2", {" FROM t; CREATE TEMP TABLE x (i int)"}) == "temp");
}

}  // namespace pgkeel
