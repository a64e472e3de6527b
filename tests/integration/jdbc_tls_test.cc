// tests/integration/jdbc_tls_test.cc — pgJDBC over TLS to pgkeel: the whole JdbcSuite (prepared
// statements, batches, COPY, cancel, large values, ...) with ssl=true&sslmode=require against a
// pgkeel holding a certificate from a test CA made here with the openssl command; the console
// shows every suite connection as TLS. Without [tls], sslmode=require fails cleanly.
#include <stdlib.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <set>
#include <string>
#include <thread>

#include "tests/integration/fixture.h"

namespace pgkeel::test {
namespace {

bool contains(const std::string& hay, std::string_view needle) {
  return hay.find(needle) != std::string::npos;
}

// A CA and a certificate for 127.0.0.1 signed by it, in a temporary folder.
struct JdbcTestPki {
  fs::path dir;
  fs::path ca;
  fs::path cert;
  fs::path key;

  JdbcTestPki() {
    std::string pattern = (fs::temp_directory_path() / "pgkeel-jdbc-tls.XXXXXX").string();
    REQUIRE(::mkdtemp(pattern.data()) != nullptr);
    dir = pattern;
    const RunResult r = run_shell(
        "set -e; cd '" + dir.string() +
        "'\n"
        "ec='-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes'\n"
        "openssl req -x509 $ec -keyout ca.key -out ca.crt -days 2 -subj '/CN=pgkeel jdbc test CA' "
        "2>/dev/null\n"
        "openssl req $ec -keyout server.key -out server.csr -subj '/CN=127.0.0.1' 2>/dev/null\n"
        "printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\n' > ext.cnf\n"
        "openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt "
        "-days 2 "
        "-extfile ext.cnf 2>/dev/null\n"
        "chmod 600 server.key; chmod 644 *.crt\n");
    INFO(r.output);
    REQUIRE(r.ok());
    ca = dir / "ca.crt";
    cert = dir / "server.crt";
    key = dir / "server.key";
  }
  ~JdbcTestPki() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
};

// Compiles tests/jdbc/JdbcSuite.java into `classes`; returns the classpath to run it with.
std::string compile_suite(const fs::path& classes) {
  const std::string jar = "/usr/share/java/postgresql.jar";
  fs::create_directories(classes);
  const RunResult c =
      run({"javac", "-cp", jar, "-d", classes.string(),
           (fs::path(PGKEEL_SOURCE_DIR) / "tests" / "jdbc" / "JdbcSuite.java").string()},
          {}, 180s);
  INFO(c.output);
  REQUIRE(c.ok());
  return classes.string() + ":" + jar;
}

}  // namespace

TEST_CASE("pgJDBC with sslmode=require runs the whole suite over TLS through pgkeel",
          "[tls][jdbc]") {
  JdbcTestPki pki;
  auto& cluster = Cluster::shared();
  PgkeelOptions o;
  o.console = true;
  o.extra_toml =
      "[tls]\ncert_file = \"" + pki.cert.string() + "\"\nkey_file = \"" + pki.key.string() + "\"\n";
  Pgkeel pk(cluster, o);
  const std::string classpath = compile_suite(pk.dir() / "classes");
  const std::string base = "jdbc:postgresql://127.0.0.1:" + std::to_string(pk.port()) + "/app";

  SECTION("sslmode=require: every check passes, and every suite connection is TLS") {
    // pgJDBC's require does not verify the certificate (unless a root.crt is in ~/.postgresql):
    // point HOME elsewhere so the run is the same on every machine.
    RunResult r;
    std::atomic<bool> finished{false};
    std::thread suite([&] {
      r = run(
          {"java", "-Duser.home=" + pki.dir.string(), "-cp", classpath, "JdbcSuite",
           base + "?ssl=true&sslmode=require", std::string(kAppUser), std::string(kAppPassword)},
          {{"HOME", pki.dir.string()}}, 300s);
      finished = true;
    });
    // While it runs, the console reports how each of its connections arrived.
    int tls_seen = 0;
    int plain_seen = 0;
    std::string console_error;
    std::set<std::string> apps;  // listener/state/application_name/tls, for the failure message
    while (!finished) {
      const PqResult clients = pq_exec(pk.console_conninfo(), "SHOW CLIENTS", 5s);
      if (!clients.ok) console_error = clients.error;
      for (std::size_t i = 0; i < clients.rows.size(); ++i) {
        apps.insert(clients.value(i, 2) + "/" + clients.value(i, 6) + "/" + clients.value(i, 5) +
                    "/tls=" + clients.value(i, 12));
        // Only the suite uses the rw listener now. pgJDBC sets application_name with SET after
        // login, so the console (startup parameters) shows none: tell suite rows by listener.
        // A client still in startup may not have sent its SSLRequest yet.
        if (clients.value(i, 2) != "rw" || clients.value(i, 6) == "startup") continue;
        (clients.value(i, 12) == "yes" ? tls_seen : plain_seen) += 1;
      }
      eventually(200ms, [&] { return finished.load(); });  // poll pace; returns early at the end
    }
    suite.join();
    INFO(r.output);
    INFO("console: " << console_error);
    std::string shown;
    for (const auto& a : apps) shown += a + "; ";
    INFO("the console showed (listener/state/application_name/tls): " << shown);
    WARN("JdbcSuite over TLS: " << r.output.substr(r.output.rfind('\n', r.output.size() - 2) + 1)
                                << "console saw " << tls_seen << " TLS and " << plain_seen
                                << " plaintext suite connections past startup (polls)");
    CHECK(r.ok());
    CHECK(contains(r.output, " 0 failed"));
    CHECK(contains(r.output, "ok prepared"));
    CHECK(tls_seen > 0);
    CHECK(plain_seen == 0);
  }
  SECTION("sslmode=verify-full against the test CA: the certificate pgkeel serves checks out") {
    const RunResult r = run(
        {"java", "-Duser.home=" + pki.dir.string(), "-Djdbcsuite.watchdog=120", "-cp", classpath,
         "JdbcSuite", base + "?ssl=true&sslmode=verify-full&sslrootcert=" + pki.ca.string(),
         std::string(kAppUser), std::string(kAppPassword)},
        {{"HOME", pki.dir.string()}}, 300s);
    INFO(r.output);
    CHECK(r.ok());
    CHECK(contains(r.output, " 0 failed"));
  }
}

TEST_CASE("pgJDBC with sslmode=require is refused cleanly by a pgkeel without [tls]",
          "[tls][jdbc]") {
  auto& cluster = Cluster::shared();
  Pgkeel pk(cluster);
  const fs::path home = pk.dir() / "home";
  fs::create_directories(home);
  const std::string classpath = compile_suite(pk.dir() / "classes");
  const std::string url =
      "jdbc:postgresql://127.0.0.1:" + std::to_string(pk.port()) + "/app?ssl=true&sslmode=require";
  const RunResult r = run({"java", "-Duser.home=" + home.string(), "-cp", classpath, "JdbcSuite",
                           url, std::string(kAppUser), std::string(kAppPassword)},
                          {{"HOME", home.string()}}, 120s);
  INFO(r.output);
  CHECK_FALSE(r.ok());
  CHECK(contains(r.output, "FAIL setup"));
  CHECK(contains(r.output, "does not support SSL"));
  CHECK(pq_exec(pk.conninfo(), "SELECT 1").scalar() == "1");
}

}  // namespace pgkeel::test
