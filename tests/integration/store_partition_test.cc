// One pgkeel instance cut off from etcd while it still reaches the primary, the other seeing the
// primary die (issue 15): network namespaces and firewall rules on the netns cluster's bridge, an
// asynchronous standby, a pgkeel-ledger writer through each instance. The ledger must show no
// write acknowledged by the old primary after the new primary's first write.

#include <signal.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <limits>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/integration/etcd_fixture.h"
#include "tests/integration/fixture.h"
#include "tools/ledger/report.h"

using namespace pgkeel::test;

namespace {

std::int64_t unix_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string writer_port(const Pgkeel& pk) {
  return pq_exec(pk.conninfo(), "SELECT current_setting('port')", 5s).scalar();
}

// As store_pgkeel_test's instances: fast probes, a 3 s lease (so the cut comes 1 s after the last
// renewal began, and the lease ends in etcd 2 s after that). synchronous_mode off: pgkeel must not
// make the standby synchronous, or the old primary could acknowledge nothing once cut off from it.
PgkeelOptions instance(const EtcdCluster& etcd, const std::string& name) {
  PgkeelOptions o;
  o.console = true;
  o.health_extra = "probe_interval = \"250ms\"\nprobe_timeout = \"500ms\"";
  o.failover_extra = "hold_timeout = \"30s\"\nsynchronous_mode = \"off\"\n";
  std::string endpoints;
  // On the bridge's address: pk2's namespace reaches it there, not on loopback.
  for (const std::string& u : etcd.host_urls())
    endpoints += (endpoints.empty() ? "\"" : ", \"") + u + "\"";
  o.extra_toml = "[store]\nendpoints = [" + endpoints + "]\nprefix = \"/pgkeel/part\"\nname = \"" +
                 name + "\"\nlease_ttl = \"3s\"\nrequest_timeout = \"1s\"\n";
  return o;
}

std::string role_of(const Pgkeel& pk) {
  return pq_exec(pk.console_conninfo(), "SHOW PEERS", 5s).value(0, 2);
}

std::vector<std::string> event_kinds(const Pgkeel& pk) {
  const PqResult r = pq_exec(pk.console_conninfo(), "SHOW EVENTS", 5s);
  std::vector<std::string> out;
  for (std::size_t i = 0; i < r.rows.size(); ++i) out.push_back(r.value(i, 3));
  return out;
}

int promotions(const Pgkeel& pk) {
  const std::vector<std::string> kinds = event_kinds(pk);
  return static_cast<int>(std::count(kinds.begin(), kinds.end(), "promotion"));
}

// iptables inside a namespace of the cluster (nf_tables: rules live and die with the namespace).
void iptables(const std::string& netns, const std::vector<std::string>& args) {
  std::vector<std::string> argv = {"ip", "netns", "exec", netns, "iptables", "-w"};
  argv.insert(argv.end(), args.begin(), args.end());
  const RunResult r = run(argv, {}, 20s);
  INFO("iptables in " << netns << ": " << r.output);
  REQUIRE(r.ok());
}

// A pgkeel-ledger writer that runs until stop() (SIGTERM: the clients finish their attempt in
// flight and the run file is written), its live lines in a log the test can read meanwhile.
class LedgerWriter {
 public:
  LedgerWriter(const std::string& conninfo, const fs::path& dir) : dir_(dir) {
    const std::string ledger = (fs::path(PGKEEL_BINARY_DIR) / "pgkeel-ledger").string();
    thread_ = std::thread([this, ledger, conninfo] {
      result_ = run_shell(
          "echo $$ > \"$LEDGER_DIR/ledger.pid\"; exec \"$LEDGER\" run --conninfo "
          "\"$LEDGER_CONNINFO\" --clients 2 "
          "--duration 300 --split-gap-ms 1 --out \"$LEDGER_DIR/ledger.json\" 2> "
          "\"$LEDGER_DIR/ledger.log\"",
          {{"LEDGER", ledger}, {"LEDGER_CONNINFO", conninfo}, {"LEDGER_DIR", dir_.string()}}, 400s);
    });
  }
  ~LedgerWriter() { stop(); }
  LedgerWriter(const LedgerWriter&) = delete;
  LedgerWriter& operator=(const LedgerWriter&) = delete;

  // The last live line's acknowledged count (0 before the first line).
  long acknowledged() const {
    std::ifstream in(dir_ / "ledger.log");
    long ack = 0;
    for (std::string line; std::getline(in, line);) {
      const auto at = line.find(" ack=");
      if (at != std::string::npos) ack = std::stol(line.substr(at + 5));
    }
    return ack;
  }
  // True once `n` more writes were acknowledged than when it was called.
  bool acknowledges(long n, std::chrono::milliseconds within) const {
    const long from = acknowledged();
    return eventually(
        within, [&] { return acknowledged() >= from + n; }, 100ms);
  }

  void stop() {
    if (!thread_.joinable()) return;
    std::ifstream pid_file(dir_ / "ledger.pid");
    pid_t pid = 0;
    if (pid_file >> pid; pid > 0) ::kill(pid, SIGTERM);  // our own child: run_shell's process
    thread_.join();
  }
  const RunResult& result() const { return result_; }
  std::string log() const { return tail_file(dir_ / "ledger.log", 60); }
  fs::path run_file() const { return dir_ / "ledger.json"; }

 private:
  fs::path dir_;
  std::thread thread_;
  RunResult result_;
};

// The ids in the ledger table of `node` (those of the given runs; all without any), with written_at
// (ms since the epoch, rounded down: the transaction's start, so never after its commit).
std::map<std::int64_t, std::int64_t> ledger_rows(
    const Cluster& cluster, const std::string& node,
    const std::vector<pgkeel::ledger::IdRange>& ranges) {
  std::string where = ranges.empty() ? "true" : "";
  for (const auto& r : ranges) {
    where += (where.empty() ? "" : " OR ") +
             ("id BETWEEN " + std::to_string(r.first) + " AND " + std::to_string(r.last));
  }
  const std::string out = cluster.psql_as_postgres(
      node,
      "SELECT id, floor(extract(epoch FROM written_at) * 1000)::bigint FROM pgkeel_ledger WHERE " +
          where,
      "app");
  std::map<std::int64_t, std::int64_t> rows;
  std::istringstream in(out);
  for (std::string line; std::getline(in, line);) {
    const auto bar = line.find('|');
    if (bar == std::string::npos) continue;
    rows[std::stoll(line.substr(0, bar))] = std::stoll(line.substr(bar + 1));
  }
  return rows;
}

struct Run {
  pgkeel::ledger::LoadedRun loaded;
  std::map<std::int64_t, std::int64_t>
      ack_by;  // acknowledged id -> latest the client can have heard it (unix ms)
};

Run load_run(const fs::path& file) {
  const std::string text = read_file(file);
  std::string error;
  auto loaded = pgkeel::ledger::parse_run(text, error);
  INFO(file.string() << ": " << error);
  REQUIRE(loaded);
  Run r{*loaded, {}};
  const auto& rep = r.loaded.report;
  for (const pgkeel::ledger::Segment& s : rep.timeline) {
    if (s.kind != pgkeel::ledger::EventKind::kAcknowledged) continue;
    // Every ack of a segment came at or before its last one; +2 ms for the two clocks' rounding.
    for (std::int64_t seq = s.first_seq; seq <= s.last_seq(); ++seq) {
      r.ack_by[pgkeel::ledger::ledger_id(rep.id_base, s.client, seq)] =
          rep.started_at_unix_ms + s.t_last_ms + 2;
    }
  }
  return r;
}

std::string verify_line(const std::string& output, const std::string& label) {
  const auto at = output.find(label);
  return at == std::string::npos ? std::string("(none)")
                                 : output.substr(at, output.find('\n', at) - at);
}

}  // namespace

TEST_CASE(
    "an instance cut off from etcd that still reaches the primary stops writes before the other "
    "promotes",
    "[store][etcd][partition]") {
  // Asynchronous: the old primary can go on acknowledging commits alone, so only pgkeel stands
  // between it and a split brain.
  Cluster cluster(ClusterOptions{.standbys = 1, .sync = false, .netns = true});
  const NetHost h2 = cluster.add_host("pk2");
  EtcdCluster etcd(3, cluster.gateway());
  const std::string db1 = std::to_string(cluster.port("db1"));
  const std::string db2 = std::to_string(cluster.port("db2"));
  REQUIRE_FALSE(cluster.node("db1").netns.empty());

  // pk1 here, started first so that it leads; pk2 in a namespace of its own on the bridge.
  Pgkeel pk1(cluster, instance(etcd, "pk1"));
  REQUIRE(eventually(
      30s, [&] { return writer_port(pk1) == db1 && role_of(pk1) == "leader"; }, 100ms));
  PgkeelOptions o2 = instance(etcd, "pk2");
  o2.netns = h2.netns;
  o2.listen_host = h2.address;
  Pgkeel pk2(cluster, o2);
  REQUIRE(eventually(
      30s, [&] { return writer_port(pk2) == db1 && role_of(pk2) == "follower"; }, 100ms));

  const std::string ledger = (fs::path(PGKEEL_BINARY_DIR) / "pgkeel-ledger").string();
  const RunResult setup = run({ledger, "setup", "--conninfo", pk1.conninfo()});
  INFO(setup.output);
  REQUIRE(setup.ok());
  LedgerWriter w1(pk1.conninfo(), pk1.dir());
  LedgerWriter w2(pk2.conninfo(), pk2.dir());
  REQUIRE(w1.acknowledges(300, 20s));
  REQUIRE(w2.acknowledges(300, 20s));

  // The partition: pk2 loses etcd (a silent drop of its packets to etcd's client ports), and db1
  // loses everyone but pk2 (pk1 and the standby hear nothing from it; it hears nothing from them).
  const std::int64_t cut_at = unix_ms();
  // Both ways: with only its own packets dropped, pk2 would still hear etcd's side of a watch.
  for (int port : etcd.client_ports()) {
    iptables(h2.netns, {"-A", "OUTPUT", "-p", "tcp", "-d", cluster.gateway(), "--dport",
                        std::to_string(port), "-j", "DROP"});
    iptables(h2.netns, {"-A", "INPUT", "-p", "tcp", "-s", cluster.gateway(), "--sport",
                        std::to_string(port), "-j", "DROP"});
  }
  const std::string ns1 = cluster.node("db1").netns;
  iptables(ns1, {"-A", "INPUT", "-i", "lo", "-j", "ACCEPT"});
  iptables(ns1, {"-A", "INPUT", "-s", h2.address, "-j", "ACCEPT"});
  iptables(ns1, {"-A", "OUTPUT", "-o", "lo", "-j", "ACCEPT"});
  iptables(ns1, {"-A", "OUTPUT", "-d", h2.address, "-j", "ACCEPT"});
  iptables(ns1, {"-A", "INPUT", "-j", "DROP"});
  iptables(ns1, {"-A", "OUTPUT", "-j", "DROP"});
  const std::int64_t partitioned_at = unix_ms();

  // pk2 refuses logins, naming its lease, while db1 still answers it. (A CHECK: when it does not,
  // the ledger below tells what that cost.)
  PqResult refused;
  CHECK(eventually(
      10s,
      [&] {
        refused = pq_exec(pk2.conninfo(), "SELECT 1", 5s);
        return !refused.ok;
      },
      50ms));
  const std::int64_t refused_at = unix_ms();
  CHECK(refused.sqlstate == "57P03");
  CHECK(refused.error.find("pgkeel instance pk2 cannot renew its lease in etcd") !=
        std::string::npos);

  // pk1 sees db1 die and promotes db2, after pk2's lease has ended.
  REQUIRE(eventually(
      60s, [&] { return writer_port(pk1) == db2; }, 100ms));
  const std::int64_t promoted_seen_at = unix_ms();
  REQUIRE(w1.acknowledges(300, 20s));  // the writer through pk1 goes on, on db2
  // pk2 is still cut off, and still refuses.
  CHECK(pq_exec(pk2.conninfo(), "SELECT 1", 5s).sqlstate == "57P03");
  w1.stop();
  // What db1 holds before the heal (the ledger's two runs are all its table holds).
  const auto db1_before_heal = ledger_rows(cluster, "db1", {});

  // Heal: every rule goes. pk2 renews a lease again and routes as the record says, to db2.
  iptables(h2.netns, {"-F"});
  iptables(ns1, {"-F"});
  const std::int64_t healed_at = unix_ms();
  REQUIRE(eventually(
      40s, [&] { return writer_port(pk2) == db2; }, 100ms));
  CHECK(w2.acknowledges(200, 20s));
  w2.stop();
  INFO("ledger through pk1:\n" << w1.log());
  INFO("ledger through pk2:\n" << w2.log());
  REQUIRE(w1.result().ok());
  REQUIRE(w2.result().ok());
  CHECK(promotions(pk1) + promotions(pk2) == 1);
  CHECK(promotions(pk1) == 1);
  {
    const std::vector<std::string> kinds = event_kinds(pk2);
    CHECK(std::count(kinds.begin(), kinds.end(), "store_lost") == 1);
    CHECK(std::count(kinds.begin(), kinds.end(), "store_back") == 1);
  }
  // The writer through pk2 met the refusal too, with the reason.
  CHECK(w2.log().find("pgkeel instance pk2 cannot renew its lease in etcd") != std::string::npos);

  const Run r1 = load_run(w1.run_file());
  const Run r2 = load_run(w2.run_file());
  const std::vector<pgkeel::ledger::IdRange> ranges = {r1.loaded.id_range, r2.loaded.id_range};
  // Everything db1 ever committed (nothing rewinds it here), the heal included.
  const auto on_db1 = ledger_rows(cluster, "db1", {});
  const auto on_db2 = ledger_rows(cluster, "db2", ranges);

  // The new primary's first write: the earliest row on db2 that db1 never had (asynchronous: a
  // commit db1 streamed was visible on db1 first). Each began after the partition.
  std::int64_t first_db2_write = std::numeric_limits<std::int64_t>::max();
  std::int64_t db2_own_before_partition = 0;
  for (const auto& [id, written] : on_db2) {
    if (on_db1.contains(id)) continue;
    first_db2_write = std::min(first_db2_write, written);
    if (written < partitioned_at) ++db2_own_before_partition;
  }
  CHECK(db2_own_before_partition == 0);
  // The old primary's last acknowledged write, as late as the client can have heard it.
  std::int64_t last_db1_ack = 0;
  std::int64_t lost = 0;
  std::int64_t lost_from = std::numeric_limits<std::int64_t>::max();
  std::int64_t lost_to = 0;
  std::int64_t lost_nowhere = 0;
  std::int64_t after_heal_through_pk2 = 0;
  for (const Run* r : {&r1, &r2}) {
    for (const auto& [id, ack_by] : r->ack_by) {
      if (on_db1.contains(id)) last_db1_ack = std::max(last_db1_ack, ack_by);
      if (!on_db2.contains(id)) {
        ++lost;
        lost_from = std::min(lost_from, ack_by);
        lost_to = std::max(lost_to, ack_by);
        if (!on_db1.contains(id)) ++lost_nowhere;
      }
      if (r == &r2 && ack_by > healed_at && on_db2.contains(id) && !on_db1.contains(id))
        ++after_heal_through_pk2;
    }
  }
  std::printf(
      "store: partition: pk2 refused %lld ms after the cut, db2 writing through pk1 %lld ms after "
      "it; db1's last "
      "acknowledged write %lld ms after the cut, db2's first write %lld ms after it (%lld ms "
      "later); %lld acknowledged "
      "rows lost (the first acknowledged %lld ms after the cut, the last %lld ms); %lld "
      "acknowledged through pk2 on db2 "
      "after the heal\n",
      static_cast<long long>(refused_at - cut_at),
      static_cast<long long>(promoted_seen_at - cut_at),
      static_cast<long long>(last_db1_ack - cut_at),
      static_cast<long long>(first_db2_write - cut_at),
      static_cast<long long>(first_db2_write - last_db1_ack), static_cast<long long>(lost),
      static_cast<long long>(lost == 0 ? 0 : lost_from - cut_at),
      static_cast<long long>(lost == 0 ? 0 : lost_to - cut_at),
      static_cast<long long>(after_heal_through_pk2));
  REQUIRE(first_db2_write != std::numeric_limits<std::int64_t>::max());
  REQUIRE(last_db1_ack > 0);
  // The rule: nothing acknowledged by the old primary after the new one's first write.
  CHECK(last_db1_ack < first_db2_write);
  // Lost, as asynchronous replication allows and no more: every acknowledged row missing on db2
  // is on db1, and was acknowledged by it at most a second before the partition (not yet
  // streamed) or after it (through pk2, before its cut).
  CHECK(lost_nowhere == 0);
  if (lost > 0) CHECK(lost_from >= partitioned_at - 1000);
  CHECK(after_heal_through_pk2 > 0);
  // ledger verify on the new primary agrees: the lost rows are exactly those, nothing else wrong.
  std::int64_t lost_by_verify = 0;
  for (const auto& [w, label] :
       {std::pair<const LedgerWriter*, const char*>{&w1, "pk1"}, {&w2, "pk2"}}) {
    const RunResult verify =
        run({ledger, "verify", "--conninfo", pk1.conninfo(), "--in", w->run_file().string()});
    INFO(label << ": " << verify.output);
    CHECK((verify.exit_code == 0 || verify.exit_code == 1));
    CHECK(verify.output.find("duplicated ids:               0") != std::string::npos);
    CHECK(verify.output.find("failed, yet present:          0") != std::string::npos);
    CHECK(verify.output.find("never attempted, yet present: 0") != std::string::npos);
    const std::string line = verify_line(verify.output, "lost (acknowledged, missing):");
    if (line != "(none)")
      lost_by_verify +=
          std::stoll(line.substr(std::string("lost (acknowledged, missing):").size()));
    std::printf("store: partition: ledger through %s: %s\n", label, line.c_str());
  }
  CHECK(lost_by_verify == lost);
  // db1, back in view, gets no write through pgkeel after the heal. What can still land there is
  // a statement pk1 sent before the partition on a connection it then closed: the kernel
  // retransmits it once the path is back, and db1 runs it. Its client was told the outcome is
  // unknown (08007); it is never an acknowledged write.
  std::int64_t late_on_db1 = 0;
  std::int64_t late_acknowledged = 0;
  for (const auto& [id, written] : on_db1) {
    if (db1_before_heal.contains(id)) continue;
    const bool acked = r1.ack_by.contains(id) || r2.ack_by.contains(id);
    ++late_on_db1;
    late_acknowledged += acked ? 1 : 0;
    if (late_on_db1 > 5) continue;  // the first few tell the story
    std::printf(
        "store: partition: on db1 after the heal: id %lld, begun %lld ms after the heal%s\n",
        static_cast<long long>(id), static_cast<long long>(written - healed_at),
        acked ? " (acknowledged)" : " (its outcome unknown to the client)");
  }
  std::printf("store: partition: %lld rows on db1 after the heal, %lld of them acknowledged\n",
              static_cast<long long>(late_on_db1), static_cast<long long>(late_acknowledged));
  CHECK(late_acknowledged == 0);
  CHECK(late_on_db1 <= 2);  // at most one statement in flight per pk1 client
}
