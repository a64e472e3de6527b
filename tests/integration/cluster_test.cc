// tests/integration/cluster_test.cc — proves the fixture itself: the cluster it starts is a real
// primary with a streaming standby, and its roles log in over TCP the way pgkeel will need.
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdlib>
#include <fstream>
#include <map>
#include <string>

#include "tests/integration/fixture.h"

namespace pgkeel::test {
namespace {

std::map<std::string, std::string> read_users_file(const fs::path& file) {
  std::map<std::string, std::string> users;
  std::ifstream in(file);
  for (std::string line; std::getline(in, line);) {
    if (line.empty() || line[0] == '#') {
      continue;
    }
    // "name" "secret" — names and secrets written by cluster.sh contain no quotes.
    auto q1 = line.find('"');
    auto q2 = line.find('"', q1 + 1);
    auto q3 = line.find('"', q2 + 1);
    auto q4 = line.find('"', q3 + 1);
    REQUIRE(q4 != std::string::npos);
    users[line.substr(q1 + 1, q2 - q1 - 1)] = line.substr(q3 + 1, q4 - q3 - 1);
  }
  return users;
}

TEST_CASE("the cluster has one primary and a standby streaming from it", "[fixture][cluster]") {
  auto& cluster = Cluster::shared();
  REQUIRE(cluster.nodes().size() == 2);

  CHECK(cluster.psql_as_postgres("db1", "SELECT pg_is_in_recovery()") == "f");
  CHECK(cluster.psql_as_postgres("db2", "SELECT pg_is_in_recovery()") == "t");
  CHECK(cluster.psql_as_postgres(
            "db1", "SELECT application_name || ' ' || state FROM pg_stat_replication") ==
        "db2 streaming");
  CHECK(cluster.psql_as_postgres("db1", "SELECT system_identifier FROM pg_control_system()") ==
        cluster.psql_as_postgres("db2", "SELECT system_identifier FROM pg_control_system()"));
  CHECK(cluster.psql_as_postgres("db1", "SHOW data_checksums") == "on");
  for (const auto& node : cluster.nodes()) {
    CHECK(node.pid > 0);
    CHECK(fs::exists(node.log_file));
  }
}

TEST_CASE("a row committed on the primary shows up on the standby", "[fixture][cluster]") {
  auto& cluster = Cluster::shared();
  const std::string token = std::to_string(::getpid()) + "-" + std::to_string(std::rand());

  auto created = pq_exec(cluster.conninfo("db1"),
                         "CREATE TABLE IF NOT EXISTS fixture_rows (token text PRIMARY KEY);"
                         "INSERT INTO fixture_rows VALUES ('" +
                             token + "')");
  INFO(created.error);
  REQUIRE(created.ok);
  CHECK(created.command_status == "INSERT 0 1");

  const std::string query = "SELECT count(*) FROM fixture_rows WHERE token = '" + token + "'";
  CHECK(eventually(5s, [&] { return pq_exec(cluster.conninfo("db2"), query).scalar() == "1"; }));

  auto refused = pq_exec(cluster.conninfo("db2"), "INSERT INTO fixture_rows VALUES ('x')");
  CHECK_FALSE(refused.ok);
  CHECK(refused.sqlstate == "25006");  // read_only_sql_transaction
}

TEST_CASE("each role logs in over TCP with its own password method", "[fixture][auth]") {
  auto& cluster = Cluster::shared();
  std::string user;
  std::string password;
  SECTION("app: SCRAM-SHA-256") {
    user = kAppUser;
    password = kAppPassword;
  }
  SECTION("md5user: md5") {
    user = kMd5User;
    password = kMd5Password;
  }
  SECTION("clearuser: cleartext password") {
    user = kClearUser;
    password = kClearPassword;
  }
  for (const auto& node : cluster.nodes()) {
    auto res = pq_exec(cluster.conninfo(node.name, user, password), "SELECT current_user");
    INFO(node.name << ": " << res.error);
    CHECK(res.ok);
    CHECK(res.scalar() == user);
  }

  auto wrong = pq_exec(cluster.conninfo("db1", user, "not-the-password"), "SELECT 1");
  CHECK_FALSE(wrong.ok);
  CHECK(wrong.sqlstate == "28P01");  // invalid_password
}

TEST_CASE("app may create tables in database app", "[fixture][cluster]") {
  auto& cluster = Cluster::shared();
  auto res = pq_exec(cluster.conninfo("db1"),
                     "CREATE TABLE fixture_owned (i int); DROP TABLE fixture_owned");
  INFO(res.error);
  CHECK(res.ok);
}

TEST_CASE("the users file holds what pgkeel needs to log in as each role", "[fixture][auth]") {
  auto users = read_users_file(Cluster::shared().users_file());
  CHECK(users["app"].rfind("SCRAM-SHA-256$4096:", 0) == 0);
  CHECK(users["replicator"].rfind("SCRAM-SHA-256$", 0) == 0);
  CHECK(users["md5user"].rfind("md5", 0) == 0);
  CHECK(users["md5user"].size() == 35);
  CHECK(users["clearuser"] == "clear-pass");  // plaintext: the server asks for it in clear
  CHECK(users.count("postgres") == 0);        // no password: socket trust only
}

TEST_CASE("a synchronous cluster waits for any one of its two standbys", "[fixture][cluster]") {
  auto& cluster = Cluster::shared({.standbys = 2, .sync = true});
  REQUIRE(cluster.nodes().size() == 3);
  CHECK(cluster.psql_as_postgres("db1", "SHOW synchronous_standby_names") == "ANY 1 (db2, db3)");
  CHECK(
      cluster.psql_as_postgres(
          "db1",
          "SELECT string_agg(application_name || ' ' || sync_state, ',' ORDER BY application_name) "
          "FROM pg_stat_replication") == "db2 quorum,db3 quorum");
}

TEST_CASE("a session keeps its state and a slow statement is cancelled at its deadline",
          "[fixture][libpq]") {
  auto& cluster = Cluster::shared();
  PqSession session(cluster.conninfo("db1"));
  REQUIRE(session.connected());
  CHECK(session.backend_pid() > 0);
  REQUIRE(session.exec("SET application_name = 'fixture'").ok);
  CHECK(session.exec("SHOW application_name").scalar() == "fixture");

  auto slow = session.exec("SELECT pg_sleep(10)", 200ms);
  CHECK_FALSE(slow.ok);
  CHECK(slow.sqlstate == "57014");  // query_canceled
  CHECK(session.exec("SELECT 1").scalar() == "1");
}

TEST_CASE("run reports exit codes and output, and kills what outlives its timeout", "[fixture]") {
  auto done = run_shell("echo out; echo err >&2; exit 3", {{"FIXTURE_VAR", "x"}});
  CHECK(done.exit_code == 3);
  CHECK(done.output == "out\nerr\n");
  CHECK(run_shell("printf %s \"$FIXTURE_VAR\"", {{"FIXTURE_VAR", "seen"}}).output == "seen");

  auto slow = run_shell("sleep 30", {}, 200ms);
  CHECK(slow.timed_out);
  CHECK_FALSE(slow.ok());
}

}  // namespace
}  // namespace pgkeel::test
