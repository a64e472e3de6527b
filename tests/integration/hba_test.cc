// tests/integration/hba_test.cc — [[hba]] rules, first match wins, each outcome against the real
// cluster's roles: scram-sha-256, md5 (and md5 with a SCRAM secret stored, which is SCRAM),
// password, trust (and the trust combination that cannot reach a SCRAM server), reject, no rule,
// address ranges and hostssl.
#include <string>

#include <catch2/catch.hpp>

#include "tests/integration/fixture.h"

namespace pgkeel::test {
namespace {

bool contains(const std::string& hay, std::string_view needle) { return hay.find(needle) != std::string::npos; }

std::string rule(const std::string& type, const std::string& db, const std::string& user, const std::string& address,
                 const std::string& method) {
  std::string out = "[[hba]]\ntype = \"" + type + "\"\ndatabase = \"" + db + "\"\nuser = \"" + user + "\"\n";
  if (!address.empty()) out += "address = \"" + address + "\"\n";
  return out + "method = \"" + method + "\"\n";
}

}  // namespace

TEST_CASE("hba rules decide how each client authenticates, first match wins", "[hba]") {
  auto& cluster = Cluster::shared();
  PgkeelOptions o;
  o.databases = "app = {}\npostgres = {}\ntemplate1 = {}";
  o.extra_toml = rule("host", "app", "app", "10.0.0.0/8", "trust") +           // not our address
                 rule("host", "app", "app", "127.0.0.1/32", "scram-sha-256") +  // app: SCRAM
                 rule("host", "postgres", "app", "all", "md5") +                // md5 rule, SCRAM stored: SCRAM
                 rule("host", "app", "md5user", "127.0.0.0/8", "md5") +
                 rule("host", "postgres", "md5user", "", "scram-sha-256") +     // md5 hash stored: cannot work
                 rule("host", "app", "clearuser", "", "password") +
                 rule("host", "postgres", "clearuser", "", "reject") +
                 rule("host", "template1", "md5user", "::1/128", "trust") +     // IPv6 only: no match for us
                 rule("host", "app", "pgkeel", "", "trust");                    // trust with an md5? no: SCRAM only
  Pgkeel pk(cluster, o);

  SECTION("scram-sha-256 for app from 127.0.0.1") {
    const PqResult r = pq_exec(pk.conninfo(), "SELECT current_user");
    INFO(r.error);
    CHECK(r.scalar() == "app");
    CHECK_FALSE(pq_exec(pk.conninfo("app", "wrong"), "SELECT 1").ok);
  }
  SECTION("md5 rule with a SCRAM secret stored is SCRAM, as in PostgreSQL") {
    const PqResult r = pq_exec(pk.conninfo("app", "app-pass", "postgres"), "SELECT current_user");
    INFO(r.error);
    CHECK(r.scalar() == "app");
  }
  SECTION("md5 for md5user") {
    const PqResult r = pq_exec(pk.conninfo("md5user", "md5-pass", "app"), "SELECT current_user");
    INFO(r.error);
    CHECK(r.scalar() == "md5user");
    CHECK(pq_exec(pk.conninfo("md5user", "nope", "app"), "SELECT 1").sqlstate == "28P01");
  }
  SECTION("scram-sha-256 for a user whose stored secret is an md5 hash fails like a wrong password") {
    const PqResult r = pq_exec(pk.conninfo("md5user", "md5-pass", "postgres"), "SELECT 1");
    CHECK_FALSE(r.ok);
    CHECK(r.sqlstate == "28P01");
    CHECK(contains(tail_file(pk.log_path(), 50), "users file holds an md5 hash"));
  }
  SECTION("password: cleartext checked against the stored SCRAM verifier, then SCRAM to the server") {
    const PqResult r = pq_exec(pk.conninfo("clearuser", "clear-pass", "app"), "SELECT current_user");
    INFO(r.error);
    CHECK(r.scalar() == "clearuser");
    CHECK(pq_exec(pk.conninfo("clearuser", "bad", "app"), "SELECT 1").sqlstate == "28P01");
  }
  SECTION("reject") {
    const PqResult r = pq_exec(pk.conninfo("clearuser", "clear-pass", "postgres"), "SELECT 1");
    CHECK_FALSE(r.ok);
    CHECK(r.sqlstate == "28000");
    CHECK(contains(r.error, "[[hba]] rejects connection for host \"127.0.0.1\", user \"clearuser\", database \"postgres\", no encryption"));
  }
  SECTION("no rule matches: an address range that is not ours, or nothing at all") {
    const PqResult r = pq_exec(pk.conninfo("md5user", "md5-pass", "template1"), "SELECT 1");
    CHECK_FALSE(r.ok);
    CHECK(r.sqlstate == "28000");
    CHECK(contains(r.error, "no [[hba]] rule for host \"127.0.0.1\", user \"md5user\""));
  }
  SECTION("trust lets the client in without a password, but a SCRAM server still needs a secret pgkeel lacks") {
    // pgkeel's users-file secret for role pgkeel is a SCRAM verifier: pass-through needs the
    // client's SCRAM proof, which trust never asks for. The error says what would work.
    const PqResult r = pq_exec(pk.conninfo("pgkeel", "", "app"), "SELECT 1");
    CHECK_FALSE(r.ok);
    CHECK(r.sqlstate == "28000");
    CHECK(contains(r.error, "no SCRAM secret"));
    CHECK(contains(r.error, "plaintext password in the users file"));
  }
}

TEST_CASE("a trust rule reaches an md5 server with the stored md5 hash", "[hba]") {
  auto& cluster = Cluster::shared();
  PgkeelOptions o;
  o.extra_toml = rule("host", "all", "md5user", "127.0.0.1", "trust") + rule("host", "all", "all", "", "scram-sha-256");
  Pgkeel pk(cluster, o);
  const PqResult r = pq_exec(pk.conninfo("md5user", "", "app"), "SELECT current_user");
  INFO(r.error);
  CHECK(r.scalar() == "md5user");
  CHECK(pq_exec(pk.conninfo(), "SELECT 1").ok);  // everyone else: SCRAM
}

TEST_CASE("a configuration with broken hba rules is refused with every error named", "[hba]") {
  auto& cluster = Cluster::shared();
  PgkeelOptions o;
  o.extra_toml = rule("host", "all", "all", "300.1.2.3/8", "trust") + rule("hostssl", "all", "all", "", "md5") +
                 "[[hba]]\ntype = \"local\"\naddress = \"10.0.0.0/8\"\ndatabase = \"all\"\nuser = \"all\"\nmethod = \"ident\"\n";
  o.start_timeout = 3s;
  REQUIRE_THROWS_WITH(Pgkeel(cluster, o), Catch::Contains("hba[0].address") && Catch::Contains("hba[1].type") &&
                                              Catch::Contains("hba[2].address") && Catch::Contains("hba[2].method"));
}

}  // namespace pgkeel::test
