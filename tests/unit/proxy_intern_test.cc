// Unit tests for what idle connections share or keep compactly: interned values, session and
// pool keys, peer addresses, and a server's ParameterStatus set (pure, no sockets).
#include <arpa/inet.h>
#include <netinet/in.h>

#include <catch2/catch.hpp>

#include "proxy/conn.h"
#include "proxy/pool.h"
#include "proxy/protocol/message.h"
#include "proxy/server.h"

namespace pgkeel::proxy {
namespace {

SessionKey session(std::string user, std::string database, std::string server_database,
                   StartupParams params = {}) {
  return SessionKey{std::move(user), std::move(database), std::move(server_database), std::move(params)};
}

PeerAddress peer(int family, const char* ip, std::uint16_t port) {
  sockaddr_storage ss{};
  if (family == AF_INET) {
    auto* in = reinterpret_cast<sockaddr_in*>(&ss);
    in->sin_family = AF_INET;
    in->sin_port = htons(port);
    inet_pton(AF_INET, ip, &in->sin_addr);
  } else {
    auto* in6 = reinterpret_cast<sockaddr_in6*>(&ss);
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons(port);
    inet_pton(AF_INET6, ip, &in6->sin6_addr);
  }
  return PeerAddress::from(reinterpret_cast<const sockaddr*>(&ss));
}

std::string status_messages(const StartupParams& params) {
  std::string out;
  for (const auto& [k, v] : params) protocol::append_parameter_status(out, k, v);
  return out;
}

}  // namespace

TEST_CASE("clients with the same session key share one copy", "[proxy][intern]") {
  Interner<SessionKey> sessions;
  const SessionKey a = session("app", "app", "app", {{"application_name", "web"}});
  auto first = sessions.intern(make_session_text(a), SessionKey(a));
  auto second = sessions.intern(make_session_text(a), SessionKey(a));
  CHECK(first == second);
  CHECK(first.use_count() == 2);  // the table itself holds no reference

  SECTION("another application name is another session") {
    const SessionKey b = session("app", "app", "app", {{"application_name", "batch"}});
    auto other = sessions.intern(make_session_text(b), SessionKey(b));
    CHECK(other != first);
    CHECK(other->params.front().second == "batch");
  }
}

TEST_CASE("a different value under the same key takes the slot; holders of the old one keep it", "[proxy][intern]") {
  Interner<ServerCredential> credentials;
  ServerCredential old_pw;
  old_pw.user = "app";
  old_pw.password = "old";
  ServerCredential new_pw = old_pw;
  new_pw.password = "new";

  auto before = credentials.intern("app", ServerCredential(old_pw));
  auto after = credentials.intern("app", ServerCredential(new_pw));
  CHECK(before != after);
  CHECK(before->password == "old");
  CHECK(after->password == "new");
  CHECK(credentials.intern("app", ServerCredential(new_pw)) == after);
}

TEST_CASE("slots nobody holds any more are swept as the table grows", "[proxy][intern]") {
  Interner<std::string> table;
  int wrong = 0;
  for (int i = 0; i < 10000; ++i) {
    auto held = table.intern(std::to_string(i), "value " + std::to_string(i));
    if (*held != "value " + std::to_string(i)) ++wrong;
  }  // each value is dropped at once
  CHECK(wrong == 0);
  CHECK(table.size() <= 128);
}

TEST_CASE("a client-facing database alias shares the pool but not the session key", "[proxy][intern]") {
  const SessionKey via_alias = session("app", "reports", "app");
  const SessionKey direct = session("app", "app", "app");
  CHECK(make_pool_key(0, via_alias) == make_pool_key(0, direct));
  CHECK(make_pool_key(0, direct) != make_pool_key(1, direct));
  CHECK(make_session_text(via_alias) != make_session_text(direct));
}

TEST_CASE("a peer address is kept in 20 bytes and printed as before", "[proxy][intern]") {
  STATIC_REQUIRE(sizeof(PeerAddress) <= 20);

  const PeerAddress v4 = peer(AF_INET, "10.1.2.3", 5432);
  CHECK(v4.text() == "10.1.2.3:5432");
  CHECK(v4.host() == "10.1.2.3");
  const PeerAddress v6 = peer(AF_INET6, "2001:db8::1", 6432);
  CHECK(v6.text() == "[2001:db8::1]:6432");
  CHECK(v6.host() == "[2001:db8::1]");

  sockaddr un{};
  un.sa_family = AF_UNIX;
  CHECK(PeerAddress::from(&un).text() == "unix");
  CHECK(PeerAddress::from(nullptr).text() == "unknown");
}

TEST_CASE("a ParameterStatus set changes one setting in place or adds it", "[proxy][intern]") {
  const std::string set = status_messages({{"DateStyle", "ISO, MDY"}, {"TimeZone", "UTC"}, {"application_name", "web"}});
  CHECK(with_parameter_status(set, "TimeZone", "Europe/Berlin") ==
        status_messages({{"DateStyle", "ISO, MDY"}, {"TimeZone", "Europe/Berlin"}, {"application_name", "web"}}));
  CHECK(with_parameter_status(set, "is_superuser", "off") ==
        status_messages({{"DateStyle", "ISO, MDY"}, {"TimeZone", "UTC"}, {"application_name", "web"}, {"is_superuser", "off"}}));
  CHECK(with_parameter_status("", "TimeZone", "UTC") == status_messages({{"TimeZone", "UTC"}}));
  SECTION("a name that is a prefix of another is not confused with it") {
    CHECK(with_parameter_status(set, "Time", "x") ==
          status_messages({{"DateStyle", "ISO, MDY"}, {"TimeZone", "UTC"}, {"application_name", "web"}, {"Time", "x"}}));
  }
}

}  // namespace pgkeel::proxy
