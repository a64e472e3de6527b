// A session as it moves to another pgkeel process (proxy/session_transfer.h): every field
// survives the trip, bytes of any value included; anything else is refused.
#include <catch2/catch.hpp>

#include "proxy/session_transfer.h"
#include "proxy/txpool/session_state.h"

using namespace pgkeel::proxy;
namespace auth = pgkeel::auth;

namespace {

SessionTransfer sample() {
  SessionTransfer t;
  t.listener = "rw";
  t.key = {"app", "erp", "erp_prod", {{"application_name", "shop"}, {"client_encoding", "UTF8"}}};
  t.credential.user = "app";
  auth::ScramKeys k;
  for (std::size_t i = 0; i < k.client_key.size(); ++i) {
    k.client_key[i] = static_cast<unsigned char>(i);
    k.server_key[i] = static_cast<unsigned char>(255 - i);
  }
  k.salt = std::string("s\0a\nlt", 6);
  k.iterations = 4096;
  t.credential.scram = auth::ScramSecret{std::nullopt, k};
  t.cancel_pid = (1 << 22) | 17;
  t.cancel_key = -123456789;
  t.settings = {{"search_path", "shop, public"}, {"statement_timeout", "'5s'"}};
  t.sql_prepared = {{"q1", "SELECT 1"}};
  t.unnamed = "SELECT $1::int";
  static constexpr char kParse[] = "SELECT * FROM t WHERE id = $1\0\0\1\0\0\0\x17";  // text, 1 parameter type
  t.statements = {{"S_1", std::string(kParse, sizeof kParse - 1)}, {"", "ignored"}};
  t.application_name = "shop - 10.0.0.5";
  t.write_lsn = 0x1234ABCDULL;
  t.connected_unix_ms = 1796620800000;
  static constexpr char kStatus[] = "S\0\0\0\x11TimeZone\0UTC";  // a ParameterStatus message
  t.server = MovedServer{"db2", 4242, -77, std::string(kStatus, sizeof kStatus), {"P_1", "P_2"}, "SET a = 1"};
  t.unreplayable = "LISTEN";
  return t;
}

}  // namespace

TEST_CASE("a session's transfer reads back as it was written", "[takeover][session]") {
  const SessionTransfer t = sample();
  std::string err;
  const auto back = decode_session(encode(t), err);
  INFO(err);
  REQUIRE(back);
  CHECK(*back == t);

  SessionTransfer no_server = sample();
  no_server.server.reset();
  no_server.unreplayable.clear();
  CHECK(*decode_session(encode(no_server), err) == no_server);
  CHECK_FALSE(decode_session(encode(no_server) + "server_backend 3\n1 2", err));  // a server without its node
  SessionTransfer md5 = sample();
  md5.credential.scram.reset();
  md5.credential.md5_hash = "md5abc";
  md5.credential.password = "plain";
  CHECK(*decode_session(encode(md5), err) == md5);
  SessionTransfer empty_scram = sample();
  empty_scram.credential.scram = auth::ScramSecret{};
  CHECK(*decode_session(encode(empty_scram), err) == empty_scram);
}

TEST_CASE("a session's transfer refuses what encode() does not write", "[takeover][session]") {
  const std::string good = encode(sample());
  std::string err;
  CHECK_FALSE(decode_session("", err));
  CHECK_FALSE(decode_session("pgkeel-session 2\n", err));
  CHECK_FALSE(decode_session(good.substr(0, good.size() - 3), err));  // cut short
  CHECK_FALSE(decode_session(good + "mystery 1\nx", err));
  CHECK(err.find("unknown field mystery") != std::string::npos);
  CHECK_FALSE(decode_session(good + "cancel 3\n1 x", err));
  CHECK_FALSE(decode_session(good + "setting 3\nabc", err));  // a pair without its NUL
  CHECK_FALSE(decode_session(good + "write_lsn 99999999999999999999\n", err));
  SessionTransfer no_cancel = sample();
  std::string text = encode(no_cancel);
  const std::size_t at = text.find("cancel ");
  text.erase(at, text.find('\n', text.find('\n', at) + 1) - at);
  CHECK_FALSE(decode_session(text, err));
  // Every prefix is refused or read, never a crash.
  for (std::size_t n = 0; n < good.size(); n += 7) (void)decode_session(good.substr(0, n), err);
}

TEST_CASE("a session state restored at rest replays as the original would", "[takeover][session]") {
  SessionState a;
  a.on_query("SET search_path = shop, public");
  a.on_ready('I');
  a.on_query("PREPARE q1 AS SELECT 1");
  a.on_ready('I');
  REQUIRE(a.at_rest());
  SessionState b;
  b.restore(a.settings(), a.prepared(), a.unnamed());
  CHECK(b.settings() == a.settings());
  CHECK(b.prepared() == a.prepared());
  CHECK(b.replay_sql() == a.replay_sql());
  CHECK(b.at_rest());
  CHECK(b.replayable());
  SessionState busy;
  busy.on_query("BEGIN");
  busy.on_ready('T');
  CHECK_FALSE(busy.at_rest());
}
