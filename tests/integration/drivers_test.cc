// tests/integration/drivers_test.cc — the driver matrix (issue 14): each driver suite in
// tests/drivers/ (psycopg 3, asyncpg, pgJDBC, node-postgres, psql and pgbench, and the cases
// between clients that no single driver makes) through pgkeel in session and in transaction
// pooling, each with and without TLS. One section per driver × pool mode × TLS, so a failure
// names its cell; every FAIL line of a suite is a failure of its own. The matrix takes about 2.5
// minutes on 2 cores, so it runs on the release build only ([release-only]), except node-postgres
// and psql/pgbench (about 15 s for their 8 cells under ASan): real drivers in both pool modes and
// over TLS under the sanitizers too.
#include <stdlib.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cstdio>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "tests/integration/fixture.h"

namespace pgkeel::test {
namespace {

const fs::path kDrivers = fs::path(PGKEEL_SOURCE_DIR) / "tests" / "drivers";
const std::string kPgjdbcJar = "/usr/share/java/postgresql.jar";

// A CA and a certificate for 127.0.0.1 signed by it, in a temporary folder.
struct DriverPki {
  fs::path dir;

  DriverPki() {
    std::string pattern = (fs::temp_directory_path() / "pgkeel-drivers-tls.XXXXXX").string();
    if (::mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    dir = pattern;
    const RunResult r = run_shell(
        "set -e; cd '" + dir.string() + "'\n" +
        "ec='-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes'\n"
        "openssl req -x509 $ec -keyout ca.key -out ca.crt -days 2 -subj '/CN=drivers CA' "
        "2>/dev/null\n"
        "openssl req $ec -keyout server.key -out server.csr -subj '/CN=127.0.0.1' 2>/dev/null\n"
        "printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\n' > ext.cnf\n"
        "openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial "
        "-out server.crt -days 2 -extfile ext.cnf 2>/dev/null\n"
        "chmod 600 server.key\n");
    if (!r.ok()) throw std::runtime_error("openssl: " + r.output);
  }
  ~DriverPki() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
  std::string tls_toml() const {
    return "[tls]\ncert_file = \"" + (dir / "server.crt").string() + "\"\nkey_file = \"" +
           (dir / "server.key").string() + "\"\n";
  }
};

// Made once per process: the certificate pgkeel serves, and where Drivers.java is compiled to.
struct Shared {
  DriverPki pki;
  fs::path java_classes = pki.dir / "classes";

  static Shared& get() {
    static Shared s;
    return s;
  }
};

// A pgkeel for one cell, on the shared cluster, with [tls] and listeners "session" and
// "transaction" (named after their pool_mode). Each cell has its own, so what one suite leaves in
// pgkeel's pools (a server statement pgkeel wrongly believes in, a pinned connection) cannot fail
// another cell. With `one_server`: one worker and max_server_conn_per_node = 1, so every client of
// its transaction listener runs on one and the same server connection (the cases between two
// clients on one server connection). wait_timeout is short, so a server connection that stays
// pinned is a 53300 within seconds, not a hang.
PgkeelOptions cell_options(bool one_server) {
  PgkeelOptions o;
  o.log_level = "info";
  o.listeners = {ListenerSpec{.name = "session", .pool_mode = "session"},
                 ListenerSpec{.name = "transaction", .pool_mode = "transaction"}};
  o.pool_extra = "wait_timeout = \"10s\"";
  o.extra_toml = Shared::get().pki.tls_toml();
  if (one_server) {
    o.workers = 1;
    o.pool_size = 1;
    o.pool_extra = "max_server_conn_per_node = 1\nwait_timeout = \"5s\"";
  }
  return o;
}

struct Cell {
  std::string mode;  // "session" or "transaction": the listener's pool_mode
  bool tls = false;
};

const std::vector<Cell> kCells = {
    {"session", false}, {"session", true}, {"transaction", false}, {"transaction", true}};

std::string cell_name(const std::string& driver, const Cell& c) {
  return driver + " / " + c.mode + " pooling / " + (c.tls ? "TLS" : "plaintext");
}

// The PG* variables every suite reads, for the cell's listener.
Env suite_env(const Pgkeel& pk, const Cell& c) {
  Env env = {{"PGHOST", "127.0.0.1"},
             {"PGPORT", std::to_string(pk.port(c.mode))},
             {"PGUSER", std::string(kAppUser)},
             {"PGPASSWORD", std::string(kAppPassword)},
             {"PGDATABASE", std::string(kAppDatabase)},
             {"PGSSLMODE", c.tls ? "require" : "disable"},
             {"PGAPPNAME", "drivers"}};
  // Debian's node-pg lives in /usr/share/nodejs, where Debian's node looks but another node
  // (NodeSource's) does not; tools/install-deps.sh unpacks it into .cache/node-pg where apt cannot
  // install it beside such a node.
  const char* node_path = ::getenv("NODE_PATH");
  env["NODE_PATH"] =
      (node_path != nullptr && *node_path != '\0' ? std::string(node_path) + ":" : std::string()) +
      "/usr/share/nodejs:" +
      (fs::path(PGKEEL_SOURCE_DIR) / ".cache" / "node-pg" / "usr" / "share" / "nodejs").string();
  return env;
}

// Runs one suite in one cell: it must exit 0 with a summary line and no FAIL line. Each FAIL line
// is reported as a failure of its own; the output goes to stdout so the CI log shows the matrix.
// `one_server`: in transaction pooling, a second pgkeel whose transaction listener has one server
// connection, given to the suite as DRIVERS_ONE_SERVER_PORT (in session pooling clients never
// share a server connection, and the cell's own listener serves those cases too).
void run_suite(const std::string& driver, const Cell& c, const std::vector<std::string>& argv,
               bool one_server = false) {
  Pgkeel pk(Cluster::shared(), cell_options(false));
  std::unique_ptr<Pgkeel> single;
  Env env = suite_env(pk, c);
  if (one_server && c.mode == "transaction") {
    single = std::make_unique<Pgkeel>(Cluster::shared(), cell_options(true));
    env["DRIVERS_ONE_SERVER_PORT"] = std::to_string(single->port("transaction"));
  }
  const auto started = std::chrono::steady_clock::now();
  const RunResult r = run(argv, env, 200s);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  const std::string name = cell_name(driver, c);
  std::istringstream lines(r.output);
  int passed = 0;
  std::vector<std::string> failed;
  bool summary = false;
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind("PASS ", 0) == 0) ++passed;
    if (line.rfind("FAIL ", 0) == 0) failed.push_back(line);
    if (line.rfind("summary: ", 0) == 0) summary = true;
  }
  std::printf("drivers: %s: %d passed, %zu failed in %.1f s%s\n", name.c_str(), passed,
              failed.size(), seconds, r.timed_out ? " (timed out)" : "");
  for (const auto& f : failed) std::printf("drivers:   %s\n", f.c_str());
  std::fflush(stdout);
  for (const auto& f : failed) {
    FAIL_CHECK(name << ": " << f);
  }
  // The whole output once, with the checks that the run itself went right: it ended by itself,
  // it ran cases, and its exit status agrees with its lines.
  INFO(name << ": the suite's output:\n" << r.output);
  CHECK_FALSE(r.timed_out);
  CHECK(summary);
  CHECK(passed > 0);
  CHECK(r.exit_code == (failed.empty() ? 0 : 1));
}

// The system's python3 (Debian's python3-psycopg and python3-asyncpg), found on the POSIX default
// PATH whatever python3 comes first on ours.
std::vector<std::string> python(const std::string& script) {
  return {"sh", "-c", "command -p python3 \"$@\"", "sh", (kDrivers / script).string()};
}

}  // namespace

TEST_CASE("driver matrix: psycopg 3 (prepare_threshold 5, 0, None; pipeline; COPY; 100 MB bytea)",
          "[drivers][psycopg][release-only]") {
  for (const Cell& c : kCells) {
    DYNAMIC_SECTION(cell_name("psycopg", c)) {
      run_suite("psycopg", c, python("psycopg_suite.py"));
    }
  }
}

TEST_CASE("driver matrix: asyncpg (statement cache on and off)",
          "[drivers][asyncpg][release-only]") {
  for (const Cell& c : kCells) {
    DYNAMIC_SECTION(cell_name("asyncpg", c)) {
      run_suite("asyncpg", c, python("asyncpg_suite.py"));
    }
  }
}

TEST_CASE("driver matrix: pgJDBC (prepareThreshold 5, 0, 1; LISTEN/NOTIFY; CopyManager)",
          "[drivers][jdbc][release-only]") {
  Shared& shared = Shared::get();
  if (!fs::exists(shared.java_classes / "Drivers.class")) {
    fs::create_directories(shared.java_classes);
    const RunResult javac = run({"javac", "-cp", kPgjdbcJar, "-d", shared.java_classes.string(),
                                 (kDrivers / "Drivers.java").string()},
                                {}, 180s);
    INFO(javac.output);
    REQUIRE(javac.ok());
  }
  for (const Cell& c : kCells) {
    DYNAMIC_SECTION(cell_name("pgJDBC", c)) {
      run_suite("pgJDBC", c,
                {"java", "-Duser.home=" + shared.pki.dir.string(), "-cp",
                 shared.java_classes.string() + ":" + kPgjdbcJar, "Drivers"});
    }
  }
}

TEST_CASE("driver matrix: node-postgres (named and unnamed statements)", "[drivers][node][release-only]") {
  for (const Cell& c : kCells) {
    DYNAMIC_SECTION(cell_name("node-postgres", c)) {
      run_suite("node-postgres", c, {"node", (kDrivers / "node_suite.js").string()});
    }
  }
}

TEST_CASE("driver matrix: psql and pgbench (-M simple, extended, prepared)", "[drivers][psql][release-only]") {
  for (const Cell& c : kCells) {
    DYNAMIC_SECTION(cell_name("psql/pgbench", c)) {
      run_suite("psql/pgbench", c, {"bash", (kDrivers / "psql_pgbench.sh").string()});
    }
  }
}

TEST_CASE(
    "driver matrix: between clients (statement names, DEALLOCATE/DISCARD ALL, COPY and "
    "LISTEN by the extended protocol, late cancels)",
    "[drivers][cross][release-only]") {
  for (const Cell& c : kCells) {
    DYNAMIC_SECTION(cell_name("between clients", c)) {
      run_suite("between clients", c, python("cross_suite.py"), /*one_server=*/true);
    }
  }
}

}  // namespace pgkeel::test
