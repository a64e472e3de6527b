// Unit tests for the status port's HTTP Basic parsing (RFC 7617): what /api/status?connections=1
// takes as a console user's credentials.
#include <catch2/catch.hpp>

#include "proxy/auth/base64.h"
#include "proxy/status_http.h"

namespace pgkeel {

TEST_CASE("HTTP Basic credentials: scheme in any case, the password split at the first colon", "[unit][status]") {
  const auto basic = [](std::string_view userpass) { return "Basic " + auth::base64_encode(std::string(userpass)); };
  auto c = proxy::parse_basic_auth(basic("app:app-pass"));
  REQUIRE(c);
  CHECK(c->user == "app");
  CHECK(c->password == "app-pass");
  c = proxy::parse_basic_auth("bAsIc   " + auth::base64_encode("pgkeel:a:b:c") + "  ");
  REQUIRE(c);
  CHECK(c->user == "pgkeel");
  CHECK(c->password == "a:b:c");
  c = proxy::parse_basic_auth(basic("monitor:"));  // an empty password is a password
  REQUIRE(c);
  CHECK(c->password.empty());
}

TEST_CASE("anything that is not HTTP Basic with a user name is no credential", "[unit][status]") {
  for (const std::string& bad : {std::string(""), std::string("Basic"), std::string("Basic "),
                                std::string("Bearer ") + auth::base64_encode("app:app-pass"),
                                std::string("Basicx ") + auth::base64_encode("app:app-pass"),
                                "Basic " + auth::base64_encode("no-colon"), "Basic " + auth::base64_encode(":no-user"),
                                std::string("Basic !!!not base64!!!")}) {
    INFO(bad);
    CHECK_FALSE(proxy::parse_basic_auth(bad));
  }
}

}  // namespace pgkeel
