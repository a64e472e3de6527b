// The drill in multi-instance mode ([drill][store]): two pgkeel instances sharing a real 3-member
// etcd in front of a synchronous primary and standby (each node in a network namespace, the
// second instance in one of its own on the same bridge). The ledger writer names both instances;
// kill-proxy kills the store leader and starts it again, partition-proxy cuts the second instance
// off etcd inside its namespace and heals it. Nothing acknowledged is lost and the primary stays;
// and a promotion during a kill-proxy fails the run.
#include <signal.h>
#include <sys/stat.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <thread>

#include "tests/integration/etcd_fixture.h"
#include "tests/integration/fixture.h"
#include "tools/ledger/json.h"

using namespace pgkeel::test;
namespace json = pgkeel::ledger::json;

namespace {

std::string env_value(const fs::path& file, const std::string& key) {
  std::ifstream in(file);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(key + "=", 0) == 0) {
      std::string v = line.substr(key.size() + 1);
      if (v.size() >= 2 && (v.front() == '"' || v.front() == '\'')) v = v.substr(1, v.size() - 2);
      return v;
    }
  }
  return "";
}

// A network namespace of our own for one pgkeel instance, plugged into the cluster's bridge
// (tools/cluster.sh up --netns) at .200 of its /24: it reaches the nodes and, at the bridge's
// address, etcd; the drill reaches it there. Removed in the destructor.
class InstanceNetns {
 public:
  explicit InstanceNetns(const Cluster& cluster) {
    const std::string gateway = env_value(cluster.env_file(), "NETNS_GATEWAY");
    const std::string bridge = env_value(cluster.env_file(), "NETNS_BRIDGE");
    if (gateway.empty() || bridge.empty())
      throw std::runtime_error("the cluster runs in no namespaces");
    gateway_ = gateway;
    address_ = gateway.substr(0, gateway.rfind('.')) + ".200";
    name_ = "pgkeel-dr" + std::to_string(::getpid());
    link_ = "pkdr" + std::to_string(::getpid() % 100000) + "a";
    const std::string peer = "pkdr" + std::to_string(::getpid() % 100000) + "b";
    const RunResult r = run_shell(
        "set -e; ip netns add " + name_ + "; ip link add " + link_ + " type veth peer name " +
        peer + "; ip link set " + peer + " netns " + name_ + "; ip -n " + name_ + " link set " +
        peer + " name eth0; ip -n " + name_ + " addr add " + address_ + "/24 dev eth0; ip -n " +
        name_ + " link set lo up; ip -n " + name_ + " link set eth0 up; ip link set " + link_ +
        " master " + bridge + " up");
    if (!r.ok()) {
      cleanup();
      throw std::runtime_error("instance namespace: " + r.output);
    }
  }
  ~InstanceNetns() { cleanup(); }
  InstanceNetns(const InstanceNetns&) = delete;
  InstanceNetns& operator=(const InstanceNetns&) = delete;
  const std::string& name() const { return name_; }
  const std::string& address() const { return address_; }
  const std::string& gateway() const { return gateway_; }

 private:
  void cleanup() {
    run_shell("ip netns del " + name_ + " 2>/dev/null; ip link del " + link_ +
              " 2>/dev/null; true");
  }
  std::string name_, link_, address_, gateway_;
};

PgkeelOptions instance(const std::vector<std::string>& urls, const std::string& name,
                       const std::string& prefix) {
  PgkeelOptions o;
  o.console = true;
  o.log_level = "info";
  o.health_extra = "probe_interval = \"250ms\"\nprobe_timeout = \"500ms\"";
  o.failover_extra = "hold_timeout = \"15s\"";
  std::string endpoints;
  for (const std::string& u : urls) endpoints += (endpoints.empty() ? "\"" : ", \"") + u + "\"";
  o.extra_toml = "[store]\nendpoints = [" + endpoints + "]\nprefix = \"" + prefix +
                 "\"\nname = \"" + name + "\"\nlease_ttl = \"3s\"\nrequest_timeout = \"1s\"\n";
  return o;
}

std::string writer_port(const Pgkeel& pk) {
  return pq_exec(pk.conninfo(), "SELECT current_setting('port')", 5s).scalar();
}

std::string leader_of(const Pgkeel& pk) {
  const PqResult r = pq_exec(pk.console_conninfo(), "SHOW PEERS", 5s);
  for (std::size_t i = 0; i < r.rows.size(); ++i) {
    if (r.value(i, 2) == "leader") return r.value(i, 0);
  }
  return "";
}

std::optional<pid_t> pid_in(const fs::path& file) {
  std::ifstream in(file);
  long pid = 0;
  if (!(in >> pid) || pid <= 1) return std::nullopt;
  return static_cast<pid_t>(pid);
}

// Two instances, pk1 out here and pk2 in its own namespace, each with a pid file the drill reads
// and a start script that starts it again (its pid written anew). Whatever the drill started is
// stopped in the destructor (the fixture stops only the processes it started itself).
struct TwoInstances {
  EtcdCluster& etcd;
  InstanceNetns& ns;
  Pgkeel pk1;
  Pgkeel pk2;
  fs::path start_script;

  TwoInstances(const Cluster& cluster, EtcdCluster& e, InstanceNetns& n, const std::string& prefix)
      : etcd(e), ns(n), pk1(cluster, instance(e.urls(), "pk1", prefix)), pk2(cluster, [&] {
          PgkeelOptions o = instance(e.host_urls(), "pk2", prefix);
          o.netns = n.name();
          o.listen_host = n.address();
          return o;
        }()) {
    std::ofstream(pidfile(pk1)) << pk1.pid() << "\n";
    std::ofstream(pidfile(pk2)) << pk2.pid() << "\n";
    start_script = pk1.dir() / "start-proxy.sh";
    const std::string bin = Pgkeel::binary().string();
    std::ofstream s(start_script);
    s << "#!/bin/sh\n# Starts a pgkeel instance of this test again; its name is the last "
         "argument.\n"
      << "case \"$1\" in\n"
      << "  pk1) set -- " << bin << " -c " << pk1.config_path().string()
      << "; pidfile=" << pidfile(pk1).string() << "; log=" << pk1.log_path().string() << " ;;\n"
      << "  pk2) set -- ip netns exec " << ns.name() << " " << bin << " -c "
      << pk2.config_path().string() << "; pidfile=" << pidfile(pk2).string()
      << "; log=" << pk2.log_path().string() << " ;;\n"
      << "  *) echo \"no instance $1\" >&2; exit 1 ;;\n"
      << "esac\n"
      << "setsid \"$@\" >>\"$log\" 2>&1 </dev/null &\n"
      << "echo $! >\"$pidfile\"\n";
    s.close();
    ::chmod(start_script.c_str(), 0755);
  }
  ~TwoInstances() {
    for (Pgkeel* pk : {&pk1, &pk2}) {
      const auto pid = pid_in(pidfile(*pk));
      if (!pid || *pid == pk->pid()) continue;
      // Ours only: the process the start script started from this instance's config.
      const std::string cmdline = read_file("/proc/" + std::to_string(*pid) + "/cmdline");
      if (cmdline.find(pk->config_path().string()) == std::string::npos) continue;
      ::kill(*pid, SIGTERM);
      if (!eventually(10s, [&] {
            return ::kill(*pid, 0) != 0 ||
                   read_file("/proc/" + std::to_string(*pid) + "/stat").find(") Z") !=
                       std::string::npos;
          })) {
        ::kill(*pid, SIGKILL);
      }
    }
  }
  static fs::path pidfile(const Pgkeel& pk) { return pk.dir() / "pgkeel.pid"; }

  std::vector<std::string> drill_args(const fs::path& out, const std::string& duration) const {
    std::string urls;
    for (const auto& u : etcd.urls()) urls += (urls.empty() ? "" : ",") + u;
    return {(fs::path(PGKEEL_BINARY_DIR) / "pgkeel-drill").string(),
            "--instance",
            "pk1=127.0.0.1:" + std::to_string(pk1.port()) + ",console=" +
                std::to_string(pk1.console_port()) + ",pidfile=" + pidfile(pk1).string(),
            "--instance",
            "pk2=" + ns.address() + ":" + std::to_string(pk2.port()) +
                ",console=" + std::to_string(pk2.console_port()) +
                ",pidfile=" + pidfile(pk2).string() + ",netns=" + ns.name(),
            "--proxy-start-command",
            start_script.string(),
            "--etcd-endpoints",
            urls,
            "--conninfo",
            "user=" + std::string(kAppUser) + " password=" + std::string(kAppPassword) +
                " dbname=" + std::string(kAppDatabase),
            "--sync",
            "--clients",
            "4",
            "--write-ratio",
            "0.8",
            "--duration",
            duration,
            "--out",
            out.string()};
  }
};

std::int64_t int_at(const json::Value& v, std::string_view a, std::string_view b = {}) {
  const json::Value* x = v.find(a);
  if (x != nullptr && !b.empty()) x = x->find(b);
  return x != nullptr && x->is_int() ? x->integer : -1;
}

int promotions(const json::Value& s) {
  int n = 0;
  for (const auto& e : s.find("events")->items) n += e.find("kind")->string == "promotion" ? 1 : 0;
  return n;
}

}  // namespace

TEST_CASE(
    "drill, two pgkeel instances: the leader killed and started again, the other cut off etcd and "
    "healed; "
    "writes go on through the other, no acknowledged commit lost, no promotion",
    "[drill][store][release-only]") {
  Cluster cluster(ClusterOptions{.standbys = 1, .sync = true, .netns = true});
  InstanceNetns ns(cluster);
  EtcdCluster etcd(3, ns.gateway());
  TwoInstances pks(cluster, etcd, ns, "/pgkeel/drill1");
  const std::string db1 = std::to_string(cluster.port("db1"));
  REQUIRE(eventually(
      30s, [&] { return writer_port(pks.pk1) == db1 && writer_port(pks.pk2) == db1; }, 100ms));
  REQUIRE(eventually(
      15s, [&] { return !leader_of(pks.pk1).empty() && leader_of(pks.pk1) == leader_of(pks.pk2); },
      100ms));
  const std::string leader = leader_of(pks.pk1);

  const fs::path out = pks.pk1.dir() / "drill";
  std::vector<std::string> argv = pks.drill_args(out, "20s");
  argv.insert(argv.end(),
              {"--fault", "kill-proxy@3s", "--fault", "partition-proxy@9s:node=pk2,for=6s"});
  const auto t0 = std::chrono::steady_clock::now();
  const RunResult r = run(argv, {}, 150s);
  const auto took =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0);
  std::printf("pgkeel-drill (two instances, %lld ms):\n%s\n", static_cast<long long>(took.count()),
              r.output.c_str());
  CHECK(r.exit_code == 0);
  const std::string text = read_file(out / "drill.json");
  json::Reader reader(text);
  const auto s = reader.parse();
  REQUIRE(s);
  CHECK(s->find("passed")->boolean);
  CHECK(int_at(*s, "verification", "lost") == 0);
  CHECK(int_at(*s, "verification", "duplicates") == 0);
  CHECK(int_at(*s, "verification", "failed_present") == 0);
  CHECK(int_at(*s, "counts", "acknowledged") > 0);
  CHECK(int_at(*s, "verification", "found_acknowledged") == int_at(*s, "counts", "acknowledged"));
  REQUIRE(s->find("faults")->items.size() == 2);
  const json::Value& kill = s->find("faults")->items[0];
  const json::Value& cut = s->find("faults")->items[1];
  INFO("kill-proxy: " << kill.find("detail")->string << "; " << kill.find("effect")->string << "; "
                      << kill.find("back")->string);
  INFO("partition-proxy: " << cut.find("detail")->string << "; " << cut.find("effect")->string
                           << "; " << cut.find("back")->string);
  CHECK(kill.find("kind")->string == "kill-proxy");
  CHECK(kill.find("target")->string == leader);  // the store leader by default
  CHECK(kill.find("hit_leader")->boolean);
  CHECK(kill.find("effect_seen")->boolean);
  CHECK(kill.find("back_seen")->boolean);
  CHECK(kill.find("recovered")->boolean);
  CHECK(cut.find("kind")->string == "partition-proxy");
  CHECK(cut.find("target")->string == "pk2");
  CHECK(cut.find("effect_seen")->boolean);  // pk2 refused logins with 57P03
  CHECK(cut.find("effect")->string.find("57P03") != std::string::npos);
  CHECK(cut.find("back_seen")->boolean);
  CHECK(cut.find("recovered")->boolean);
  CHECK(promotions(*s) == 0);
  // Every event says whose console reported it.
  for (const auto& e : s->find("events")->items) CHECK_FALSE(e.find("instance")->string.empty());
  CHECK(read_file(out / "drill.html").find("<th>instance</th>") != std::string::npos);
  // The primary never moved; both instances route writes to it again.
  CHECK(etcd.ctl({"get", "/pgkeel/drill1/record", "--print-value-only"}).find("node=db1") !=
        std::string::npos);
  CHECK(eventually(
      20s,
      [&] {
        return pq_exec(pks.pk1.conninfo(), "SELECT current_setting('port')", 5s).scalar() == db1 &&
               pq_exec(pks.pk2.conninfo(), "SELECT current_setting('port')", 5s).scalar() == db1;
      },
      200ms));
  std::printf(
      "drill two instances: kill-proxy of %s: write downtime %lld ms (%s); partition-proxy of pk2: "
      "write "
      "downtime %lld ms (%s); acknowledged %lld, errors %lld\n",
      leader.c_str(), static_cast<long long>(int_at(kill, "write_downtime_ms")),
      kill.find("back")->string.c_str(), static_cast<long long>(int_at(cut, "write_downtime_ms")),
      cut.find("effect")->string.c_str(),
      static_cast<long long>(int_at(*s, "counts", "acknowledged")),
      static_cast<long long>(int_at(*s, "errors_total")));
}

TEST_CASE(
    "drill, two pgkeel instances: a promotion during a kill-proxy fails the run (the primary "
    "killed too)",
    "[drill][store][fails][release-only]") {
  Cluster cluster(ClusterOptions{.standbys = 1, .sync = true, .netns = true});
  InstanceNetns ns(cluster);
  EtcdCluster etcd(3, ns.gateway());
  TwoInstances pks(cluster, etcd, ns, "/pgkeel/drill2");
  const std::string db1 = std::to_string(cluster.port("db1"));
  REQUIRE(eventually(
      30s, [&] { return writer_port(pks.pk1) == db1 && writer_port(pks.pk2) == db1; }, 100ms));
  REQUIRE(eventually(
      15s, [&] { return leader_of(pks.pk1) == "pk1" || leader_of(pks.pk1) == "pk2"; }, 100ms));

  const fs::path out = pks.pk1.dir() / "drill";
  std::vector<std::string> argv = pks.drill_args(out, "16s");
  argv.insert(argv.end(), {"--fault", "kill-proxy@3s:node=pk2"});
  RunResult r;
  std::thread drill([&] { r = run(argv, {}, 150s); });
  // Once the drill has started pk2 again, the primary dies as well: pgkeel must fail over, and the
  // drill must not pass a kill-proxy after which the primary moved.
  const pid_t first = pks.pk2.pid();
  const bool restarted = eventually(
      30s,
      [&] {
        const auto p = pid_in(TwoInstances::pidfile(pks.pk2));
        return p && *p != first;
      },
      50ms);
  if (restarted) ::kill(cluster.pid("db1"), SIGKILL);
  drill.join();
  std::printf("pgkeel-drill (kill-proxy, then the primary killed):\n%s\n", r.output.c_str());
  REQUIRE(restarted);
  CHECK(r.exit_code == 1);
  CHECK(r.output.find("FAILED: fault kill-proxy") != std::string::npos);
  CHECK(r.output.find("must not move the primary") != std::string::npos);
  const std::string text = read_file(out / "drill.json");
  json::Reader reader(text);
  const auto s = reader.parse();
  REQUIRE(s);
  CHECK_FALSE(s->find("passed")->boolean);
  CHECK(promotions(*s) >= 1);
  CHECK(int_at(*s, "verification", "lost") ==
        0);  // what failed was the fault's rule, not the ledger
}
