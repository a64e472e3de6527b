// tests/integration/tls_test.cc — TLS both ways against a test CA made here with the openssl
// command: psql with sslmode=verify-full to pgkeel, pgkeel with sslmode=verify-full to the nodes,
// refusals for the wrong CA and for bytes smuggled after an SSLRequest, a cancel request sent
// over TLS (asyncpg does that), and a certificate replaced by RELOAD.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <string>
#include <thread>

#include <catch2/catch.hpp>

#include "tests/integration/fixture.h"

namespace pgkeel::test {
namespace {

bool contains(const std::string& hay, std::string_view needle) { return hay.find(needle) != std::string::npos; }

// A CA and a certificate for 127.0.0.1 signed by it, plus a second, unrelated CA. The folder is
// readable by the postgres user (the nodes use the same certificate).
struct TestPki {
  fs::path dir;
  fs::path ca;          // ca.crt
  fs::path other_ca;    // other-ca.crt: signs nothing we use
  fs::path cert;        // server.crt, SAN IP:127.0.0.1
  fs::path key;         // server.key (root, 0600)
  fs::path pg_key;      // pg.key: the same key owned by postgres, 0600

  TestPki() {
    std::string pattern = (fs::temp_directory_path() / "pgkeel-tls.XXXXXX").string();
    REQUIRE(::mkdtemp(pattern.data()) != nullptr);
    dir = pattern;
    const RunResult r = run_shell(
        "set -e; cd '" + dir.string() + "'\n"
        "ec='-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes'\n"
        "openssl req -x509 $ec -keyout ca.key -out ca.crt -days 2 -subj '/CN=pgkeel test CA' 2>/dev/null\n"
        "openssl req -x509 $ec -keyout other-ca.key -out other-ca.crt -days 2 -subj '/CN=someone else' 2>/dev/null\n"
        "openssl req $ec -keyout server.key -out server.csr -subj '/CN=127.0.0.1' 2>/dev/null\n"
        "printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\n' > ext.cnf\n"
        "openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 2 "
        "-extfile ext.cnf 2>/dev/null\n"
        "cp server.key pg.key; chown postgres pg.key; chmod 600 pg.key server.key; chmod 644 *.crt\n"
        "chmod 755 .\n");
    INFO(r.output);
    REQUIRE(r.ok());
    ca = dir / "ca.crt";
    other_ca = dir / "other-ca.crt";
    cert = dir / "server.crt";
    key = dir / "server.key";
    pg_key = dir / "pg.key";
  }
  ~TestPki() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
};

std::string client_tls_toml(const TestPki& pki) {
  return "[tls]\ncert_file = \"" + pki.cert.string() + "\"\nkey_file = \"" + pki.key.string() + "\"\n";
}

PgkeelOptions tls_options(const TestPki& pki) {
  PgkeelOptions o;
  o.console = true;
  o.extra_toml = client_tls_toml(pki);
  return o;
}

// Raw bytes to pgkeel: what comes back before it closes (or `timeout`).
std::string exchange(int port, const std::string& bytes, std::chrono::milliseconds timeout = 3s) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in sin{};
  sin.sin_family = AF_INET;
  sin.sin_port = htons(static_cast<std::uint16_t>(port));
  inet_pton(AF_INET, "127.0.0.1", &sin.sin_addr);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&sin), sizeof sin) != 0) {
    ::close(fd);
    return "";
  }
  ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
  timeval tv{static_cast<time_t>(timeout.count() / 1000), static_cast<suseconds_t>((timeout.count() % 1000) * 1000)};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  std::string out;
  char buf[4096];
  while (true) {
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;
    out.append(buf, static_cast<std::size_t>(n));
  }
  ::close(fd);
  return out;
}

std::string ssl_request() {
  const unsigned char b[8] = {0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f};  // 80877103
  return std::string(reinterpret_cast<const char*>(b), 8);
}

}  // namespace

TEST_CASE("psql reaches pgkeel over TLS with sslmode=verify-full against the test CA", "[tls]") {
  TestPki pki;
  auto& cluster = Cluster::shared();
  Pgkeel pk(cluster, tls_options(pki));
  const std::string base = pk.conninfo();

  SECTION("verify-full with the right CA: encrypted, and pgkeel says so") {
    const RunResult r = run({"psql", "-X", "-A", "-t", "-c", "SELECT 'over tls'",
                             base + " sslmode=verify-full sslrootcert=" + pki.ca.string() + " application_name=tls-psql"});
    INFO(r.output);
    REQUIRE(r.ok());
    CHECK(contains(r.output, "over tls"));
    PqSession s(base + " sslmode=verify-full sslrootcert=" + pki.ca.string() + " application_name=tls-session");
    REQUIRE(s.connected());
    CHECK(PQsslInUse(s.get()) == 1);
    REQUIRE(s.exec("SELECT 1").ok);
    const PqResult clients = pq_exec(pk.console_conninfo(), "SHOW CLIENTS");
    bool seen = false;
    for (std::size_t i = 0; i < clients.rows.size(); ++i) {
      if (clients.value(i, 5) == "tls-session") {
        seen = true;
        CHECK(clients.value(i, 12) == "yes");
      }
    }
    CHECK(seen);
  }

  SECTION("the console speaks TLS with the same certificate") {
    const RunResult r = run({"psql", "-X", "-A", "-t", "-c", "SHOW VERSION",
                             pk.console_conninfo() + " sslmode=verify-full sslrootcert=" + pki.ca.string()});
    INFO(r.output);
    REQUIRE(r.ok());
    CHECK(contains(r.output, "pgkeel"));
  }

  SECTION("another CA: the client refuses the certificate") {
    const PqResult r = pq_exec(base + " sslmode=verify-full sslrootcert=" + pki.other_ca.string(), "SELECT 1");
    CHECK_FALSE(r.ok);
    CHECK(contains(r.error, "certificate verify failed"));
    CHECK(pq_exec(base, "SELECT 1").ok);  // pgkeel is unharmed
  }

  SECTION("plaintext still works where the rules allow it") {
    PqSession s(base + " sslmode=disable");
    REQUIRE(s.connected());
    CHECK(PQsslInUse(s.get()) == 0);
  }

  SECTION("bytes sent after an SSLRequest, before the answer, are refused (CVE-2021-23214 class)") {
    const std::string reply = exchange(pk.port(), ssl_request() + "smuggled bytes");
    REQUIRE_FALSE(reply.empty());
    CHECK(reply[0] == 'E');
    CHECK(contains(reply, "08P01"));
    CHECK(pq_exec(base + " sslmode=require", "SELECT 1").ok);
  }
}

TEST_CASE("a cancel request sent over TLS cancels the query (asyncpg)", "[tls][asyncpg]") {
  TestPki pki;
  auto& cluster = Cluster::shared();
  Pgkeel pk(cluster, tls_options(pki));
  const std::string script =
      "import asyncio, ssl, sys, time, asyncpg\n"
      "async def main():\n"
      "    ctx = ssl.create_default_context(cafile=sys.argv[2])\n"
      "    c = await asyncpg.connect(host='127.0.0.1', port=int(sys.argv[1]), user='app', password='app-pass',\n"
      "                              database='app', ssl=ctx)\n"
      "    t0 = time.monotonic()\n"
      "    try:\n"
      "        await c.execute('SELECT pg_sleep(20)', timeout=0.5)\n"
      "        print('not cancelled'); sys.exit(1)\n"
      "    except asyncio.TimeoutError:\n"
      "        pass\n"
      "    took = time.monotonic() - t0\n"
      "    print('cancelled after %.2fs' % took)\n"
      "    assert await c.fetchval('SELECT 42') == 42\n"
      "    assert took < 5, took\n"
      "    await c.close()\n"
      "asyncio.run(main())\n";
  // `command -p`: the system's python3 (with Debian's python3-asyncpg), found on the POSIX default
  // PATH, whatever python3 comes first on ours.
  const RunResult r = run({"sh", "-c", "command -p python3 \"$@\"", "sh", "-c", script, std::to_string(pk.port()),
                           pki.ca.string()},
                          {}, 60s);
  INFO(r.output);
  REQUIRE(r.ok());
  CHECK(contains(r.output, "cancelled after"));
}

// Every node of `cluster` serves TLS with the test PKI's certificate.
void enable_node_tls(Cluster& cluster, const TestPki& pki) {
  for (const auto& n : cluster.nodes()) {
    cluster.psql_as_postgres(n.name, "ALTER SYSTEM SET ssl_cert_file = '" + pki.cert.string() + "'");
    cluster.psql_as_postgres(n.name, "ALTER SYSTEM SET ssl_key_file = '" + pki.pg_key.string() + "'");
    cluster.psql_as_postgres(n.name, "ALTER SYSTEM SET ssl = on");
    cluster.psql_as_postgres(n.name, "SELECT pg_reload_conf()");
  }
  REQUIRE(eventually(5s, [&] { return cluster.psql_as_postgres("db1", "SHOW ssl") == "on"; }));
}

TEST_CASE("pgkeel speaks TLS to the nodes with sslmode=verify-full", "[tls][server-tls]") {
  TestPki pki;
  Cluster cluster;  // its own: the nodes get ssl = on
  enable_node_tls(cluster, pki);

  SECTION("the right CA: every server connection is encrypted") {
    PgkeelOptions o;
    o.extra_toml = "[server_tls]\nsslmode = \"verify-full\"\nca_file = \"" + pki.ca.string() + "\"\n";
    Pgkeel pk(cluster, o);
    const PqResult r = pq_exec(pk.conninfo(), "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()");
    INFO(r.error);
    REQUIRE(r.ok);
    CHECK(r.value(0, 0) == "t");
    CHECK(contains(r.value(0, 1), "TLSv1."));
  }

  SECTION("the wrong CA: the login fails and says why") {
    // The keeper's probes verify too: the nodes never come up, and the client hears why.
    PgkeelOptions o;
    o.extra_toml = "[server_tls]\nsslmode = \"verify-full\"\nca_file = \"" + pki.other_ca.string() + "\"\n";
    o.failover_extra = "hold_timeout = \"2s\"";
    Pgkeel pk(cluster, o);
    const PqResult r = pq_exec(pk.conninfo(), "SELECT 1");
    CHECK_FALSE(r.ok);
    CHECK(r.sqlstate == "57P03");
    CHECK(contains(r.error, "certificate verify failed"));
  }

  SECTION("sslmode=require to a node without TLS is refused; prefer falls back") {
    cluster.psql_as_postgres("db1", "ALTER SYSTEM SET ssl = off");
    cluster.psql_as_postgres("db1", "SELECT pg_reload_conf()");
    REQUIRE(eventually(5s, [&] { return cluster.psql_as_postgres("db1", "SHOW ssl") == "off"; }));
    {
      PgkeelOptions o;
      o.extra_toml = "[server_tls]\nsslmode = \"require\"\n";
      o.failover_extra = "hold_timeout = \"2s\"";
      Pgkeel pk(cluster, o);
      const PqResult r = pq_exec(pk.conninfo(), "SELECT 1");
      CHECK_FALSE(r.ok);
      CHECK(contains(r.error, "does not support SSL"));  // the keeper's probe, in libpq's words
    }
    PgkeelOptions o;
    o.extra_toml = "[server_tls]\nsslmode = \"prefer\"\n";
    Pgkeel pk(cluster, o);
    CHECK(pq_exec(pk.conninfo(), "SELECT 1").ok);
  }
}

// Every connection pgkeel opens to a node: the keeper's probes and admin actions (application_name
// "pgkeel"), the auth_query lookups ("pgkeel-auth") and the data path (the client's name).
TEST_CASE("every connection pgkeel opens to the nodes uses sslmode = verify-full from server_tls", "[tls][server-tls][auth-query]") {
  TestPki pki;
  Cluster cluster;  // its own: the nodes get ssl = on
  enable_node_tls(cluster, pki);
  // A user only the cluster knows: its login needs an auth_query lookup.
  cluster.psql_as_postgres("db1", "CREATE ROLE shopper LOGIN PASSWORD 'pw-one'");
  cluster.psql_as_postgres("db1", "GRANT CONNECT ON DATABASE app TO shopper");
  const std::string query = "[auth]\nquery = \"SELECT usename, passwd FROM pg_shadow WHERE usename = $1\"\n";
  const std::string activity =
      "SELECT a.application_name || ':' || s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) "
      "WHERE a.application_name IN ('pgkeel', 'pgkeel-auth', 'tls-data') ORDER BY 1";

  SECTION("the right CA: probes, auth_query and the data path are all encrypted") {
    PgkeelOptions o;
    o.console = true;
    o.extra_toml = "[server_tls]\nsslmode = \"verify-full\"\nca_file = \"" + pki.ca.string() + "\"\n" + query;
    Pgkeel pk(cluster, o);
    PqSession data(pk.conninfo("shopper", "pw-one", "app") + " application_name=tls-data");
    INFO(data.error());
    REQUIRE(data.connected());
    // Probes are short-lived connections: wait until one is caught beside the other two.
    std::string seen;
    CHECK(eventually(10s, [&] {
      seen = cluster.psql_as_postgres("db1", activity);
      return contains(seen, "pgkeel:") && contains(seen, "pgkeel-auth:") && contains(seen, "tls-data:");
    }, 5ms));
    INFO(seen);
    CHECK(contains(seen, "pgkeel:true"));
    CHECK(contains(seen, "pgkeel-auth:true"));
    CHECK(contains(seen, "tls-data:true"));
    CHECK_FALSE(contains(seen, ":false"));
  }

  SECTION("a CA that did not sign the nodes' certificate: the keeper and auth_query connect to nothing") {
    PgkeelOptions o;
    o.console = true;
    o.health_extra = "probe_interval = \"250ms\"\nprobe_timeout = \"500ms\"";
    o.failover_extra = "hold_timeout = \"2s\"";
    o.extra_toml = "[server_tls]\nsslmode = \"verify-full\"\nca_file = \"" + pki.other_ca.string() + "\"\n" + query;
    Pgkeel pk(cluster, o);
    // auth_query: no node can be asked, so a user only the cluster knows is refused, saying why.
    const PqResult login = pq_exec(pk.conninfo("shopper", "pw-one", "app"), "SELECT 1");
    INFO(login.error);
    CHECK(login.sqlstate == "57P03");
    CHECK(contains(login.error, "no node answered the auth query"));
    CHECK(contains(login.error, "certificate verify failed"));
    // The keeper: its probes fail the same way (owned by health/keeper.cc).
    std::string nodes;
    CHECK(eventually(10s, [&] {
      const PqResult r = pq_exec(pk.console_conninfo(), "SHOW NODES");
      nodes.clear();
      std::size_t refused = 0;
      std::size_t col = 0;
      while (col < r.columns.size() && r.columns[col] != "last_error") ++col;
      for (const auto& row : r.rows) {
        const std::string error = col < row.size() ? row[col].value_or("") : "";
        nodes += row.at(0).value_or("") + " state=" + row.at(3).value_or("") + " last_error=" + error + "\n";
        if (contains(error, "certificate verify failed")) ++refused;
      }
      return r.ok && !r.rows.empty() && refused == r.rows.size();
    }, 100ms));
    INFO(nodes);
    const std::string keeper_conns = cluster.psql_as_postgres("db1", activity);
    INFO(keeper_conns);
    CHECK_FALSE(contains(keeper_conns, "pgkeel:"));
    CHECK_FALSE(contains(keeper_conns, "pgkeel-auth:"));
  }
}

TEST_CASE("RELOAD loads a new certificate for new connections", "[tls][reload]") {
  TestPki pki;
  TestPki next;  // another CA and certificate
  auto& cluster = Cluster::shared();
  Pgkeel pk(cluster, tls_options(pki));
  PqSession before(pk.conninfo() + " sslmode=verify-full sslrootcert=" + pki.ca.string());
  REQUIRE(before.connected());
  pk.options().extra_toml = client_tls_toml(next);
  pk.write_config();
  const PqResult r = pq_exec(pk.console_conninfo(), "RELOAD");
  INFO(r.error);
  REQUIRE(r.ok);
  CHECK(pq_exec(pk.conninfo() + " sslmode=verify-full sslrootcert=" + next.ca.string(), "SELECT 1").ok);
  CHECK_FALSE(pq_exec(pk.conninfo() + " sslmode=verify-full sslrootcert=" + pki.ca.string(), "SELECT 1").ok);
  CHECK(before.exec("SELECT 1").ok);  // the running session keeps its TLS session
}

}  // namespace pgkeel::test
