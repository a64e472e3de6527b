// Tests for proxy/txpool/response_plan.h and proxy/txpool/prepared.h: statement names mapped per client onto
// shared server statements, prepared on demand, and the server's answers to an edited request
// stream sorted into what the client gets, in PostgreSQL's order.

#include <catch2/catch.hpp>
#include <string>
#include <random>
#include <string_view>
#include <vector>

#include "proxy/txpool/prepared.h"
#include "proxy/protocol/message.h"
#include "proxy/txpool/replay.h"
#include "proxy/txpool/response_plan.h"

namespace {

using pgkeel::proxy::ClientStatements;
using pgkeel::proxy::ResponsePlan;
using pgkeel::proxy::ServerStatements;
using Request = ResponsePlan::Request;
using Origin = ResponsePlan::Origin;
namespace protocol = pgkeel::protocol;

struct Msg {
  char type;
  std::string body;
};

// Splits a stream of whole messages.
std::vector<Msg> split(const std::string& s) {
  std::vector<Msg> out;
  std::size_t i = 0;
  while (i + 5 <= s.size()) {
    const std::uint32_t len = protocol::read_u32(reinterpret_cast<const unsigned char*>(s.data() + i + 1));
    out.push_back({s[i], s.substr(i + 5, len - 4)});
    i += 1 + len;
  }
  REQUIRE(i == s.size());
  return out;
}

std::string types(const std::vector<Msg>& ms) {
  std::string t;
  for (const Msg& m : ms) t += m.type;
  return t;
}

std::string parse_body(std::string_view name, std::string_view query) {
  std::string b;
  b += name;
  b += '\0';
  b += query;
  b += '\0';
  b += std::string("\0\0", 2);  // no parameter types
  return b;
}

std::string bind_body(std::string_view statement) {
  std::string b;
  b += '\0';  // unnamed portal
  b += statement;
  b += '\0';
  b += std::string("\0\0\0\0\0\0", 6);  // no formats, no parameters, no result formats
  return b;
}

std::string first_string(const std::string& body) { return body.substr(0, body.find('\0')); }

// Feeds server messages (by type) through the plan; returns what the client receives.
std::string client_sees(ResponsePlan& plan, std::string_view server_types) {
  std::string seen;
  for (char t : server_types) {
    const ResponsePlan::Verdict v = plan.on_server_message(t);
    for (const Msg& m : split(v.before)) seen += m.type;
    if (v.forward) seen += t;
    for (const Msg& m : split(v.after)) seen += m.type;
  }
  return seen;
}

}  // namespace

TEST_CASE("two clients' S_1 map to different server statements; the same text to the same one", "[proxy][prepared]") {
  ClientStatements a;
  ClientStatements b;
  const auto& a1 = a.define("S_1", parse_body("", "SELECT 1").substr(1));
  const auto& b1 = b.define("S_1", parse_body("", "SELECT 2").substr(1));
  const auto& b2 = b.define("S_2", parse_body("", "SELECT 1").substr(1));
  CHECK(a1.server_name != b1.server_name);
  CHECK(a1.server_name == b2.server_name);
  CHECK(a1.server_name.rfind("pgk_", 0) == 0);
  CHECK(a1.server_name.size() == 36);
}

TEST_CASE("a statement is prepared on a server connection once, on demand, under its shared name", "[proxy][prepared]") {
  ClientStatements client;
  ServerStatements server;
  ResponsePlan plan;
  std::string out;
  REQUIRE(rewrite_for_shared('P', parse_body("S_1", "SELECT $1"), client, server, plan, out));
  REQUIRE(rewrite_for_shared('B', bind_body("S_1"), client, server, plan, out));
  REQUIRE(rewrite_for_shared('E', std::string("\0\0\0\0\0", 5), client, server, plan, out));
  REQUIRE(rewrite_for_shared('S', "", client, server, plan, out));
  const std::vector<Msg> sent = split(out);
  const std::string name = client.find("S_1")->server_name;
  CHECK(types(sent) == "CPBES");  // a Close first, so the Parse cannot collide
  CHECK(first_string(sent[1].body) == name);
  CHECK(sent[2].body.substr(1, name.size()) == name);
  CHECK(server.has(name));
  // Close answered (swallowed), Parse, Bind, Execute's rows and completion, Sync.
  CHECK(client_sees(plan, "312DCZ") == "12DCZ");
  CHECK(plan.idle());

  SECTION("the next transaction on the same connection sends no Parse again") {
    std::string again;
    REQUIRE(rewrite_for_shared('B', bind_body("S_1"), client, server, plan, again));
    REQUIRE(rewrite_for_shared('S', "", client, server, plan, again));
    CHECK(types(split(again)) == "BS");
  }
  SECTION("on another connection, a Bind alone brings its Parse, answered by nobody") {
    ServerStatements other;
    ResponsePlan plan2;
    std::string there;
    REQUIRE(rewrite_for_shared('B', bind_body("S_1"), client, other, plan2, there));
    REQUIRE(rewrite_for_shared('S', "", client, other, plan2, there));
    CHECK(types(split(there)) == "CPBS");
    CHECK(client_sees(plan2, "312Z") == "2Z");
  }
  SECTION("a second Parse of a statement the connection has is answered by pgkeel, in its place") {
    ClientStatements other_client;
    ResponsePlan plan2;
    std::string there;
    REQUIRE(rewrite_for_shared('B', bind_body("S_1"), client, server, plan2, there));  // goes first
    REQUIRE(rewrite_for_shared('P', parse_body("S_9", "SELECT $1"), other_client, server, plan2, there));
    REQUIRE(rewrite_for_shared('S', "", other_client, server, plan2, there));
    CHECK(types(split(there)) == "BS");
    CHECK(client_sees(plan2, "2Z") == "21Z");  // ParseComplete right after BindComplete
  }
  SECTION("a client's Close keeps the shared statement on the server") {
    ResponsePlan plan2;
    std::string there;
    REQUIRE(rewrite_for_shared('C', std::string("S") + "S_1" + '\0', client, server, plan2, there));
    CHECK(there.empty());
    CHECK(plan2.take_due() == std::string("3\0\0\0\4", 5));
    CHECK(client.find("S_1") == nullptr);
    CHECK(server.has(name));
  }
}

TEST_CASE("after an error nothing is answered until Sync, pgkeel's own answers included", "[proxy][prepared]") {
  ResponsePlan plan;
  plan.add(Request::kBind, Origin::kClient);
  plan.add(Request::kParse, Origin::kAnswered);
  plan.add(Request::kParse, Origin::kInjected, "pgk_x");
  plan.add(Request::kExecute, Origin::kClient);
  plan.add(Request::kSync, Origin::kClient);
  CHECK(client_sees(plan, "EZ") == "EZ");
  CHECK(plan.idle());
  CHECK(plan.take_dropped() == std::vector<std::string>{"pgk_x"});

  SECTION("when the Sync has not come yet, requests until it are not expected to answer") {
    ResponsePlan p;
    p.add(Request::kBind, Origin::kClient);
    CHECK(client_sees(p, "E") == "E");
    CHECK(p.skipping());
    p.add(Request::kParse, Origin::kClient, "pgk_y");
    p.add(Request::kSync, Origin::kClient);
    CHECK_FALSE(p.skipping());
    CHECK(client_sees(p, "Z") == "Z");
    CHECK(p.take_dropped() == std::vector<std::string>{"pgk_y"});
  }
}

TEST_CASE("pgkeel's own requests are swallowed whole; their failure is passed on and noted", "[proxy][prepared]") {
  ResponsePlan plan;
  plan.add(Request::kQuery, Origin::kInjected);  // e.g. restoring SETs
  plan.add(Request::kQuery, Origin::kClient);
  CHECK(client_sees(plan, "CCSZ") == "S");  // ParameterStatus always reaches the client
  CHECK(client_sees(plan, "TDCZ") == "TDCZ");
  CHECK_FALSE(plan.injected_failed());
  ResponsePlan failing;
  failing.add(Request::kQuery, Origin::kInjected);
  CHECK(client_sees(failing, "EZ") == "E");
  CHECK(failing.injected_failed());
}

TEST_CASE("Describe of a statement answers twice; COPY inside an Execute is followed through", "[proxy][prepared]") {
  ResponsePlan plan;
  plan.add(Request::kDescribeStatement, Origin::kClient);
  plan.add(Request::kExecute, Origin::kClient);
  plan.add(Request::kSync, Origin::kClient);
  CHECK(client_sees(plan, "tTHddcCZ") == "tTHddcCZ");
  CHECK(plan.idle());
  CHECK_FALSE(plan.lost());
  ResponsePlan odd;
  odd.add(Request::kParse, Origin::kClient);
  CHECK(client_sees(odd, "2") == "2");
  CHECK(odd.lost());
}

TEST_CASE("COPY in the extended protocol: the Sync PostgreSQL ignores in copy-in mode gets no answer", "[proxy][prepared][copy]") {
  // libpq: Parse, Bind, Execute, Sync; then CopyData, CopyDone, Sync. One ReadyForQuery.
  ResponsePlan plan;
  plan.add(Request::kParse, Origin::kClient);
  plan.add(Request::kBind, Origin::kClient);
  plan.add(Request::kExecute, Origin::kClient);
  plan.add(Request::kSync, Origin::kClient);
  CHECK(client_sees(plan, "12G") == "12G");
  plan.ignore_syncs(1);  // at CopyDone: the Sync sent after the Execute reached a COPY
  plan.add(Request::kSync, Origin::kClient);
  CHECK(client_sees(plan, "CZ") == "CZ");
  CHECK(plan.idle());
  CHECK_FALSE(plan.lost());
}

TEST_CASE("a long Bind is rewritten from its head: only the statement name changes, the length follows", "[proxy][prepared]") {
  ClientStatements client;
  ServerStatements server;
  ResponsePlan plan;
  std::string out;
  REQUIRE(pgkeel::proxy::rewrite_for_shared('P', parse_body("S_1", "INSERT INTO t VALUES ($1)"), client, server, plan, out));
  const std::string shared = client.find("S_1")->server_name;
  out.clear();
  const std::string body = bind_body("S_1") + std::string(100000, 'b');
  const std::string head = body.substr(0, 4096);
  const std::size_t replaced = pgkeel::proxy::rewrite_head_for_shared('B', head, body.size(), client, server, plan, out);
  REQUIRE(replaced == 1 + 3 + 1);
  out += body.substr(replaced);
  const std::vector<Msg> ms = split(out);
  REQUIRE(types(ms) == "B");
  CHECK(ms[0].body == std::string(1, '\0') + shared + std::string(1, '\0') + body.substr(replaced));
  SECTION("a statement the connection lacks is prepared first") {
    ServerStatements fresh;
    std::string out2;
    REQUIRE(pgkeel::proxy::rewrite_head_for_shared('B', head, body.size(), client, fresh, plan, out2) == replaced);
    out2 += body.substr(replaced);
    CHECK(types(split(out2)) == "CPB");
  }
  SECTION("an unknown name goes as it is") {
    std::string out3;
    const std::string other = bind_body("nope") + std::string(100000, 'b');
    REQUIRE(pgkeel::proxy::rewrite_head_for_shared('B', other.substr(0, 4096), other.size(), client, server, plan, out3) == 0);
    out3 += other;
    CHECK(split(out3)[0].body == other);
  }
}

TEST_CASE("a message rewritten from its head, then its rest, is the message rewritten whole", "[proxy][prepared]") {
  std::mt19937 rng(14);
  for (int round = 0; round < 200; ++round) {
    ClientStatements client;
    ServerStatements server_whole(4);
    ServerStatements server_head(4);
    ResponsePlan setup;
    ResponsePlan plan_whole;
    ResponsePlan plan_head;
    std::string ignored;
    for (const char* name : {"S_1", "S_2"}) {
      REQUIRE(pgkeel::proxy::rewrite_for_shared('P', parse_body(name, std::string("SELECT ") + name), client, server_whole,
                                                setup, ignored));
    }
    if (rng() % 2) server_whole.clear();  // the connection may lack them: prepared first either way
    for (const std::string& n : {std::string("S_1"), std::string("S_2")}) {
      if (server_whole.has(client.find(n)->server_name)) server_head.add(client.find(n)->server_name);
    }
    const char type = "BQPDCE"[rng() % 6];
    const std::string names[] = {"", "S_1", "S_2", "unknown"};
    std::string body;
    if (type == 'B') {
      body = bind_body(names[rng() % 4]);
    } else if (type == 'P') {
      body = parse_body("", "SELECT 1");
    } else if (type == 'D' || type == 'C') {
      body = std::string(1, 'P') + names[rng() % 4] + std::string(1, '\0');
    } else {
      body = std::string("SELECT 'x'") + std::string(1, '\0');
    }
    body += std::string(rng() % 3000, 'z');  // a long tail, as a big parameter makes
    const std::size_t head_len = std::min<std::size_t>(body.size(), 64 + rng() % 200);
    std::string whole;
    REQUIRE(pgkeel::proxy::rewrite_for_shared(type, body, client, server_whole, plan_whole, whole));
    std::string streamed;
    const std::size_t replaced =
        pgkeel::proxy::rewrite_head_for_shared(type, std::string_view(body).substr(0, head_len), body.size(), client,
                                               server_head, plan_head, streamed);
    REQUIRE(replaced != std::string_view::npos);
    streamed += body.substr(replaced);
    INFO("type " << type << " round " << round);
    CHECK(streamed == whole);
    CHECK(plan_head.outstanding() == plan_whole.outstanding());
  }
}

TEST_CASE("a server connection keeps at most its cap of statements, closing the least recently used", "[proxy][prepared]") {
  ServerStatements s(2);
  CHECK(s.add("a").empty());
  CHECK(s.add("b").empty());
  s.touch("a");
  CHECK(s.add("c") == std::vector<std::string>{"b"});
  CHECK(s.has("a"));
  CHECK(s.has("c"));
  CHECK_FALSE(s.has("b"));
  ClientStatements client;
  ResponsePlan plan;
  std::string out;
  ServerStatements one(1);
  REQUIRE(rewrite_for_shared('P', parse_body("S_1", "SELECT 1"), client, one, plan, out));
  REQUIRE(rewrite_for_shared('P', parse_body("S_2", "SELECT 2"), client, one, plan, out));
  CHECK(types(split(out)) == "CPCCP");  // the second Parse closes the first statement first
}

TEST_CASE("malformed Parse, Bind, Describe and Close are refused, nothing sent", "[proxy][prepared]") {
  ClientStatements client;
  ServerStatements server;
  ResponsePlan plan;
  std::string out;
  CHECK_FALSE(rewrite_for_shared('P', "no terminator", client, server, plan, out));
  CHECK_FALSE(rewrite_for_shared('B', std::string("\0x", 2), client, server, plan, out));
  CHECK_FALSE(rewrite_for_shared('D', "X", client, server, plan, out));
  CHECK_FALSE(rewrite_for_shared('C', std::string("Q\0", 2), client, server, plan, out));
  CHECK(out.empty());
}

TEST_CASE("a resumed session gets its settings and statements back; pgkeel's answers stay with pgkeel", "[proxy][prepared][replay]") {
  pgkeel::proxy::SessionState state;
  state.on_query("SET search_path = shop, public");
  state.on_ready('I');
  ClientStatements statements;
  statements.define("S_1", parse_body("", "SELECT 1").substr(1));
  statements.define("S_2", parse_body("", "SELECT 2").substr(1));
  ResponsePlan plan;
  std::string out;
  pgkeel::proxy::append_session_replay(state, statements, plan, out);
  const std::vector<Msg> sent = split(out);
  CHECK(types(sent) == "QPPS");
  CHECK(sent[0].body.find("search_path") != std::string::npos);
  CHECK((first_string(sent[1].body) == "S_1" || first_string(sent[1].body) == "S_2"));
  plan.add(Request::kQuery, Origin::kClient);  // the client's own next query
  CHECK(client_sees(plan, "CZ11ZTDCZ") == "TDCZ");
  CHECK_FALSE(plan.injected_failed());

  SECTION("nothing to restore, nothing sent") {
    ResponsePlan p;
    std::string none;
    pgkeel::proxy::append_session_replay(pgkeel::proxy::SessionState{}, ClientStatements{}, p, none);
    CHECK(none.empty());
    CHECK(p.idle());
  }
}

TEST_CASE("transaction pooling resets a connection's settings only when the next client's differ", "[proxy][prepared][replay]") {
  pgkeel::proxy::SessionState a;
  a.on_query("SET statement_timeout = '5s'");
  a.on_ready('I');
  pgkeel::proxy::SessionState b;
  ResponsePlan plan;
  std::string out;
  std::string server;  // as it logged in
  CHECK(pgkeel::proxy::append_settings_restore(a, server, plan, out));
  CHECK(types(split(out)) == "Q");
  CHECK(split(out)[0].body.rfind("RESET ALL;SET statement_timeout", 0) == 0);
  CHECK(server == a.replay_sql());
  out.clear();
  CHECK_FALSE(pgkeel::proxy::append_settings_restore(a, server, plan, out));
  CHECK(out.empty());
  CHECK(server == a.replay_sql());
  CHECK(pgkeel::proxy::append_settings_restore(b, server, plan, out));
  CHECK(server.empty());
  CHECK(split(out)[0].body == std::string("RESET ALL;\0", 11));
}

namespace {
std::string msg(char type, std::string_view body) {
  std::string out;
  pgkeel::proxy::append_message(out, type, body);
  return out;
}

ResponsePlan sample_plan() {
  ResponsePlan plan;
  plan.add(Request::kClose, Origin::kInjected);
  plan.add(Request::kParse, Origin::kClient);
  plan.add(Request::kParse, Origin::kAnswered);
  plan.add(Request::kBind, Origin::kClient);
  plan.add(Request::kExecute, Origin::kClient);
  plan.add(Request::kSync, Origin::kClient);
  return plan;
}
}  // namespace

TEST_CASE("the response filter gives the same bytes however the server's stream is cut", "[proxy][prepared][filter]") {
  const std::string row = msg('D', std::string("\0\1\0\0\0\4abcd", 10));
  const std::string server = msg('3', "") + msg('1', "") + msg('2', "") + row + row + msg('C', std::string("SELECT 2\0", 9)) +
                             msg('Z', "I");
  const std::string expected = msg('1', "") + msg('1', "") + msg('2', "") + row + row + msg('C', std::string("SELECT 2\0", 9)) +
                               msg('Z', "I");
  const auto* bytes = reinterpret_cast<const unsigned char*>(server.data());
  for (std::size_t a = 0; a <= server.size(); ++a) {
    for (std::size_t b = a; b <= server.size(); b += 3) {
      ResponsePlan plan = sample_plan();
      pgkeel::proxy::ResponseFilter filter;
      std::string seen;
      for (auto [from, to] : {std::pair{std::size_t{0}, a}, std::pair{a, b}, std::pair{b, server.size()}}) {
        std::string out;
        const auto r = filter.filter(bytes + from, to - from, plan, out);
        REQUIRE(r != pgkeel::proxy::ResponseFilter::Result::kMalformed);
        if (r == pgkeel::proxy::ResponseFilter::Result::kUnchanged) {
          seen.append(server, from, to - from);
        } else {
          seen += out;
        }
      }
      INFO("cut at " << a << " and " << b);
      REQUIRE(seen == expected);
      CHECK(plan.idle());
      CHECK(filter.at_boundary());
    }
  }
}

TEST_CASE("the response filter leaves a chunk alone when the plan changes nothing in it", "[proxy][prepared][filter]") {
  ResponsePlan plan;
  plan.add(Request::kQuery, Origin::kClient);
  const std::string server = msg('C', std::string("BEGIN\0", 6)) + msg('Z', "T");
  pgkeel::proxy::ResponseFilter filter;
  std::string out;
  CHECK(filter.filter(reinterpret_cast<const unsigned char*>(server.data()), server.size(), plan, out) ==
        pgkeel::proxy::ResponseFilter::Result::kUnchanged);
  CHECK(out.empty());
  const std::string bad = std::string("C\0\0\0\2", 5);
  plan.add(Request::kQuery, Origin::kClient);
  CHECK(filter.filter(reinterpret_cast<const unsigned char*>(bad.data()), bad.size(), plan, out) ==
        pgkeel::proxy::ResponseFilter::Result::kMalformed);
}
