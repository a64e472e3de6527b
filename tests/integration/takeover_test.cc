// A new pgkeel process takes over from the running one (pgkeel --takeover, console RESTART): the
// listening sockets move over a Unix socket, so no connection is refused; the keeper stops in the
// old process before it starts in the new; a takeover that does not complete leaves the old
// process serving and deciding.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <fstream>
#include <regex>
#include <string>
#include <thread>

#include "proxy/takeover.h"
#include "tests/integration/fixture.h"
#include "tests/integration/http_client.h"
#include "tests/integration/load.h"

using namespace pgkeel::test;
namespace takeover = pgkeel::proxy::takeover;

namespace {

PgkeelOptions with_services() {
  PgkeelOptions o;
  o.console = true;
  o.status = true;
  o.log_level = "info";
  o.health_extra = "probe_interval = \"250ms\"\nprobe_timeout = \"500ms\"";
  return o;
}

std::string takeover_socket(const Pgkeel& pk) { return (pk.dir() / "pgkeel.state.takeover").string(); }

bool has_event(const std::string& console, const std::string& kind) {
  const PqResult r = pq_exec(console, "SHOW EVENTS", 5s);
  for (std::size_t i = 0; i < r.rows.size(); ++i) {
    if (r.value(i, 3) == kind) return true;
  }
  return false;
}

// pid=N of the "started" line of a pgkeel log.
pid_t started_pid(const std::string& log) {
  std::smatch m;
  if (std::regex_search(log, m, std::regex("event=started [^\n]*pid=([0-9]+)"))) return static_cast<pid_t>(std::stol(m[1]));
  return -1;
}

// Running, not a zombie (a process whose parent exited is reaped by whoever adopts it).
bool alive(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string stat;
  if (!std::getline(in, stat)) return false;
  const std::size_t paren = stat.rfind(')');
  return paren != std::string::npos && paren + 2 < stat.size() && stat[paren + 2] != 'Z';
}

}  // namespace

TEST_CASE("pgkeel --takeover under connect-per-transaction pgbench: no connection refused, the old process exits",
          "[takeover]") {
  auto& cluster = Cluster::shared();
  Pgkeel pk(cluster, with_services());
  const std::string db1 = std::to_string(cluster.port("db1"));
  REQUIRE(eventually(20s, [&] { return pq_exec(pk.conninfo(), "SELECT current_setting('port')").scalar() == db1; }));
  REQUIRE(fs::exists(takeover_socket(pk)));
  auto init = run({"pgbench", "-i", "-s", "1", "-q", "-h", "127.0.0.1", "-p", std::to_string(pk.port()), "-U", "app", "app"},
                  {{"PGPASSWORD", "app-pass"}});
  INFO(init.output);
  REQUIRE(init.ok());
  const std::uint64_t epoch_before = std::stoull(pq_exec(pk.console_conninfo(), "SHOW ROUTES").value(0, 5));
  setenv("PGPASSWORD", "app-pass", 1);
  Background load({"pgbench", "-n", "-C", "-S", "-c", "4", "-T", "8", "-h", "127.0.0.1", "-p", std::to_string(pk.port()), "-U",
                   "app", "app"},
                  pk.dir() / "pgbench.log");
  std::this_thread::sleep_for(2s);
  Background next({Pgkeel::binary().string(), "--takeover", "-c", pk.config_path().string()}, pk.dir() / "next.log");
  // The old process hands over, drains and exits by itself, cleanly.
  REQUIRE(eventually(30s, [&] { return !pk.running(); }, 100ms));
  REQUIRE(pk.exit_status());
  CHECK(WIFEXITED(*pk.exit_status()));
  CHECK(WEXITSTATUS(*pk.exit_status()) == 0);
  const int rc = load.wait(60s);
  const std::string out = read_file(pk.dir() / "pgbench.log");
  INFO(out);
  CHECK(rc == 0);
  CHECK(out.find("number of failed transactions: 0 ") != std::string::npos);
  CHECK(out.find("error") == std::string::npos);
  // The new process serves every port: clients, console, status; writes go where they went.
  const std::string next_log = read_file(pk.dir() / "next.log");
  INFO(next_log.substr(0, 3000));
  CHECK(next_log.find("event=takeover ") != std::string::npos);
  CHECK(pq_exec(pk.conninfo(), "SELECT current_setting('port')").scalar() == db1);
  const PqResult w = pq_exec(pk.conninfo(), "CREATE TABLE IF NOT EXISTS takeover_it (n int); INSERT INTO takeover_it VALUES (1)");
  INFO(w.error);
  CHECK(w.ok);
  CHECK(pq_exec(pk.console_conninfo(), "SHOW VERSION").ok);
  CHECK(http(pk.status_port(), "GET", "/health").code == 200);
  // Epochs go on from the old process's, never back.
  const std::uint64_t epoch_after = std::stoull(pq_exec(pk.console_conninfo(), "SHOW ROUTES").value(0, 5));
  CHECK(epoch_after > epoch_before);
  const std::string old_log = read_file(pk.log_path());
  CHECK(old_log.find("event=taken_over") != std::string::npos);
  std::printf("takeover: %s\n", out.substr(out.find("number of transactions actually processed")).substr(0, 60).c_str());
}

TEST_CASE("a takeover that does not complete leaves the old process accepting, and its keeper deciding again",
          "[takeover]") {
  auto& cluster = Cluster::shared();
  Pgkeel pk(cluster, with_services());
  REQUIRE(eventually(20s, [&] { return pq_exec(pk.conninfo(), "SELECT 1").ok; }));
  std::string err;
  // A "new process" that takes the sockets and the keeper's last word, then goes away.
  std::optional<takeover::Received> r = takeover::request(takeover_socket(pk), 10s, err);
  INFO(err);
  REQUIRE(r);
  CHECK_FALSE(r->handed.empty());
  CHECK(r->keeper.writer == "db1");
  for (const takeover::Handed& h : r->handed) ::close(h.fd);
  // Meanwhile the old process stopped accepting: a login waits in the socket's queue.
  ::close(r->sock);
  REQUIRE(eventually(10s, [&] { return has_event(pk.console_conninfo(), "resumed"); }, 100ms));
  CHECK(has_event(pk.console_conninfo(), "halted"));
  CHECK(pk.running());
  CHECK(pq_exec(pk.conninfo(), "SELECT 1", 5s).ok);
  // Its keeper probes again (SHOW NODES' probe count moves on).
  auto probes = [&] { return std::stol(pq_exec(pk.console_conninfo(), "SHOW NODES").value(0, 16)); };
  const long before = probes();
  CHECK(eventually(10s, [&] { return probes() > before + 2; }, 200ms));
}

TEST_CASE("RESTART on the console: a new process from the binary on disk takes over; the old one exits",
          "[takeover][console]") {
  auto& cluster = Cluster::shared();
  Pgkeel pk(cluster, with_services());
  REQUIRE(eventually(20s, [&] { return pq_exec(pk.conninfo(), "SELECT 1").ok; }));
  const PqResult r = pq_exec(pk.console_conninfo(), "RESTART", 10s);
  INFO(r.error);
  REQUIRE(r.ok);
  REQUIRE(eventually(30s, [&] { return !pk.running(); }, 100ms));
  // The new process writes to the same log (it inherited the old one's output).
  std::string log;
  pid_t next = -1;
  REQUIRE(eventually(10s, [&] {
    log = read_file(pk.log_path());
    const std::size_t at = log.find("taken_over=yes");
    if (at == std::string::npos) return false;
    next = started_pid(log.substr(log.rfind('\n', at) == std::string::npos ? 0 : log.rfind('\n', at)));
    return next > 0;
  }, 100ms));
  CHECK(pq_exec(pk.conninfo(), "SELECT 1").ok);
  CHECK(pq_exec(pk.console_conninfo(), "SHOW VERSION").ok);
  CHECK(::kill(next, SIGTERM) == 0);
  CHECK(eventually(20s, [&] { return !alive(next); }, 100ms));
}

TEST_CASE("sessions move to a new binary at their idle points: pgbench -M prepared and a ledger writer see no error",
          "[takeover][sessions]") {
  auto& cluster = Cluster::shared();
  PgkeelOptions o = with_services();
  o.listeners = {ListenerSpec{.name = "session", .pool_mode = "session"},
                 ListenerSpec{.name = "transaction", .pool_mode = "transaction"}};
  Pgkeel pk(cluster, o);
  REQUIRE(eventually(20s, [&] { return pq_exec(pk.conninfo(kAppUser, kAppPassword, kAppDatabase, "session"), "SELECT 1").ok; }));
  auto init = run({"pgbench", "-i", "-s", "1", "-q", "-h", "127.0.0.1", "-p", std::to_string(cluster.port("db1")), "-U", "app", "app"},
                  {{"PGPASSWORD", "app-pass"}});
  INFO(init.output);
  REQUIRE(init.ok());
  const std::string ledger = (fs::path(PGKEEL_BINARY_DIR) / "pgkeel-ledger").string();
  const std::string ledger_conn = pk.conninfo(kAppUser, kAppPassword, kAppDatabase, "transaction");
  REQUIRE(run({ledger, "setup", "--conninfo", ledger_conn}).ok());
  // A session that set things before: they must hold after the takeover (session pooling: a
  // SQL PREPARE pins a transaction-pooled session to its server, and a pinned session cannot move).
  PqSession kept(pk.conninfo(kAppUser, kAppPassword, kAppDatabase, "session"));
  REQUIRE(kept.exec("SET application_name = 'kept across'").ok);
  REQUIRE(kept.exec("PREPARE kept_q AS SELECT 41 + 1").ok);
  const std::string kept_backend = kept.exec("SELECT pg_backend_pid()").scalar();
  // A session pinned to its server (LISTEN, through transaction pooling): its server moves too.
  PqSession listening(pk.conninfo(kAppUser, kAppPassword, kAppDatabase, "transaction"));
  REQUIRE(listening.exec("LISTEN takeover_chan").ok);
  const std::string listener_backend = listening.exec("SELECT pg_backend_pid()").scalar();

  setenv("PGPASSWORD", "app-pass", 1);
  auto pgbench = [&](const std::string& listener, const std::string& log) {
    return std::make_unique<Background>(
        std::vector<std::string>{"pgbench", "-n", "-M", "prepared", "-c", "4", "-T", "10", "-h", "127.0.0.1", "-p",
                                 std::to_string(pk.port(listener)), "-U", "app", "app"},
        pk.dir() / log);
  };
  auto in_session = pgbench("session", "pgbench-session.log");
  auto in_transaction = pgbench("transaction", "pgbench-transaction.log");
  const std::string ledger_out = (pk.dir() / "ledger.json").string();
  Background writer({ledger, "run", "--conninfo", ledger_conn, "--clients", "2", "--duration", "10", "--out", ledger_out},
                    pk.dir() / "ledger.log");
  std::this_thread::sleep_for(3s);
  // Another binary (a copy: a new version is installed beside the running one).
  const fs::path other = pk.dir() / "pgkeel-next";
  fs::copy_file(Pgkeel::binary(), other, fs::copy_options::overwrite_existing);
  Background next({other.string(), "--takeover", "-c", pk.config_path().string()}, pk.dir() / "next.log");
  REQUIRE(eventually(30s, [&] { return !pk.running(); }, 100ms));
  CHECK(WEXITSTATUS(*pk.exit_status()) == 0);

  for (auto* load : {in_session.get(), in_transaction.get()}) CHECK(load->wait(60s) == 0);
  CHECK(writer.wait(60s) == 0);
  for (const char* log : {"pgbench-session.log", "pgbench-transaction.log"}) {
    const std::string out = read_file(pk.dir() / log);
    INFO(log << ":\n" << out);
    CHECK(out.find("number of failed transactions: 0 ") != std::string::npos);
    CHECK(out.find("error") == std::string::npos);  // an aborted client, a lost connection
    CHECK(out.find("aborted") == std::string::npos);
    const std::size_t at = out.find("number of transactions actually processed");
    std::printf("takeover: pgbench -M prepared through %s: %s\n", log,
                at == std::string::npos ? "?" : out.substr(at, out.find('\n', at) - at).c_str());
  }
  const std::string run_log = read_file(pk.dir() / "ledger.log");
  INFO(run_log);
  CHECK(run_log.find(" 0 failed, 0 unknown; 0 connect failures") != std::string::npos);
  const RunResult verify = run({ledger, "verify", "--conninfo", ledger_conn, "--in", ledger_out});
  INFO(verify.output);
  CHECK(verify.output.find("lost (acknowledged, missing): 0") != std::string::npos);
  CHECK(verify.output.find("duplicated ids:               0") != std::string::npos);
  // Every session moved; the one that set things finds them.
  const std::string next_log = read_file(pk.dir() / "next.log");
  std::smatch m;
  REQUIRE(std::regex_search(next_log, m, std::regex("event=takeover_done sessions=([0-9]+)")));
  CHECK(std::stoi(m[1]) >= 12);  // 8 pgbench + 2 ledger + 2
  const PqResult after = kept.exec("SELECT current_setting('application_name')");
  INFO(after.error);
  CHECK(after.scalar() == "kept across");
  const PqResult prepared = kept.exec("EXECUTE kept_q");
  INFO(prepared.error);
  CHECK(prepared.scalar() == "42");
  // Its server came along: the same backend.
  CHECK(kept.exec("SELECT pg_backend_pid()").scalar() == kept_backend);
  CHECK(listening.exec("SELECT pg_backend_pid()").scalar() == listener_backend);
  REQUIRE(pq_exec(pk.conninfo(kAppUser, kAppPassword, kAppDatabase, "session"), "NOTIFY takeover_chan, 'after'").ok);
  bool notified = eventually(10s, [&] {
    PQconsumeInput(listening.get());
    PGnotify* n = PQnotifies(listening.get());
    const bool got = n != nullptr && std::string(n->relname) == "takeover_chan" && std::string(n->extra) == "after";
    if (n != nullptr) PQfreemem(n);
    return got;
  }, 100ms);
  CHECK(notified);
  // The cancel key it was given at login still reaches it in the new process.
  std::thread canceller([&] {
    std::this_thread::sleep_for(500ms);
    PGcancel* cancel = PQgetCancel(kept.get());
    char errbuf[256];
    PQcancel(cancel, errbuf, sizeof errbuf);
    PQfreeCancel(cancel);
  });
  const auto t0 = std::chrono::steady_clock::now();
  const PqResult slept = kept.exec("SELECT pg_sleep(20)", 30s);
  canceller.join();
  CHECK(slept.sqlstate == "57014");
  CHECK(std::chrono::steady_clock::now() - t0 < 10s);
  std::printf("takeover: %s sessions handed over\n", m[1].str().c_str());
}
