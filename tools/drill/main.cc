// tools/drill/main.cc — the pgkeel-drill command: load through pgkeel, faults at their moments, a
// live line per second, then verification on the surviving primary, a JSON summary and an HTML
// report. Exit codes: 0 passed, 1 the verdict failed (loss, duplicates, a gate), 2 usage or setup.
#include <unistd.h>

#include <charconv>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "tools/drill/actions.h"
#include "tools/drill/html.h"
#include "tools/drill/load.h"
#include "tools/drill/plan.h"
#include "tools/drill/report.h"
#include "tools/drill/soak.h"

namespace {

using namespace pgkeel::drill;
using std::chrono::milliseconds;

constexpr const char* kUsage =
    "usage: pgkeel-drill [--env FILE] [--conninfo C] [--console C] [--cluster-env FILE]\n"
    "         [--node NAME=HOST:PORT]... [--node-conninfo C] [--restart-command CMD]\n"
    "         [--scenario FILE.toml]\n"
    "         [--duration D] [--clients N] [--rate R] [--write-ratio F] [--tx] [--prepared]\n"
    "         [--sync | --async] [--fault KIND@TIME[:key=value,...]]...\n"
    "         [--max-downtime D] [--max-lost N] [--max-errors N]\n"
    "         [--out DIR | --json FILE --html FILE] [--statement-timeout D] [--wait-ready D]\n"
    "         [--soak N [--seed S] [--soak-kinds K,...] [--soak-gap D] [--soak-hold D]\n"
    "          [--whole-timeout D] [--start-command CMD]]\n"
    "         [--instance NAME=HOST:PORT[,console=[HOST:]PORT][,pidfile=FILE][,netns=NS]]...\n"
    "         [--proxy-start-command CMD] [--etcd-endpoints URL,...]\n"
    "\n"
    "Drives N clients through pgkeel (--conninfo), a mix of ledger writes and reads, injects the\n"
    "faults (kill, hang, switchover, failover, restart-proxy, lag, sync-loss, partition; e.g.\n"
    "kill@5s, kill@5s:mode=all, hang@5s:for=3s, lag@4s:node=db2,for=5s, switchover@5s:node=db2,\n"
    "partition@5s:for=8s, which needs nodes in network namespaces: tools/rehearsal.sh up --netns), then\n"
    "verifies every write on the surviving primary and writes a JSON summary and an HTML report.\n"
    "--env reads a tools/rehearsal.sh env file (PGKEEL_CONNINFO, PGKEEL_CONSOLE_CONNINFO,\n"
    "PGKEEL_CLUSTER_ENV, PGKEEL_NODE_CONNINFO, PGKEEL_RESTART_COMMAND, PGKEEL_SYNC). --node names\n"
    "a node on another host (Docker): kill then goes through SQL (COPY TO PROGRAM).\n"
    "--wait-ready D waits up to D for pgkeel to take the load (a login, a writer, every node up,\n"
    "with --sync a synchronous standby) before starting, for a cluster that is still coming up.\n"
    "Durations: 5s, 500ms, 2min. Defaults: 20s, 4 clients, max rate, write ratio 0.8, sync.\n"
    "Exit 1 when, in synchronous mode, an acknowledged commit was lost or duplicated, a failed\n"
    "write is present, a --max-* gate is exceeded, or a fault did not show its effect (the process\n"
    "still alive, no detection or promotion when one was due, writes that never stopped or never\n"
    "came back); 2 on usage or setup errors.\n"
    "--soak N: N faults drawn at random from --seed (default: the clock; printed), each once the\n"
    "cluster is whole again (every node up and following, none fenced or rejoining, a writer and\n"
    "with --sync a synchronous standby) and writes flowed for --soak-gap (3s); a killed node is\n"
    "started again with --start-command (PGKEEL_START_COMMAND; the node's name is appended), so\n"
    "that\n"
    "pgkeel rejoins it. Kinds (--soak-kinds): kill, kill-all, hang, partition, switchover,\n"
    "failover, restart-proxy, lag, sync-loss (default: all this cluster allows); hang, partition\n"
    "and lag last --soak-hold (3s). The run fails when the cluster is not whole again within\n"
    "--whole-timeout (180s). The report adds a table per kind and the distribution of downtimes.\n"
    "Multi-instance mode (--instance, once per pgkeel instance sharing one etcd store): the load\n"
    "connects with every instance as a host (libpq multi-host, target_session_attrs=read-write),\n"
    "--conninfo giving only the user, password and database; --console likewise gives the\n"
    "console's credentials (default user=pgkeel password=pgkeel-pass dbname=pgkeel). Faults:\n"
    "kill-proxy@T[:node=INSTANCE] kills -9 an instance (default: the store leader, from SHOW PEERS;\n"
    "its pid from pidfile=) and starts it again with --proxy-start-command (the instance's name\n"
    "appended, PGKEEL_INSTANCE set; it must write the new pid to the pid file and send pgkeel's\n"
    "output elsewhere); partition-proxy@T[:node=INSTANCE,for=D] drops the instance's tcp to and\n"
    "from etcd's client ports (--etcd-endpoints) with iptables inside its network namespace\n"
    "(netns=), and removes the rules after D (10s). Each must show its effect (the process gone;\n"
    "logins refused with 57P03), the instance must serve again afterwards, and a promotion after\n"
    "either fails the run. --env also reads PGKEEL_INSTANCES (the --instance specs, space-separated),\n"
    "PGKEEL_PROXY_START_COMMAND and ETCD_ENDPOINTS.\n";

[[noreturn]] void usage_error(const std::string& message) {
  std::fprintf(stderr, "pgkeel-drill: %s\n%s", message.c_str(), kUsage);
  std::exit(2);
}

volatile std::sig_atomic_t g_signalled = 0;
extern "C" void on_signal(int /*sig*/) { g_signalled = 1; }

struct Args {
  std::optional<std::string> env, conninfo, console, cluster_env, node_conninfo, restart_command, scenario;
  std::optional<std::int64_t> duration_ms, statement_timeout_ms, wait_ready_ms;
  std::optional<int> clients;
  std::optional<double> rate, write_ratio;
  std::optional<bool> tx, prepared, sync;
  std::vector<Fault> faults;
  std::vector<NodeRef> nodes;
  std::optional<std::int64_t> max_downtime_ms, max_lost, max_errors;
  std::string out_dir, json, html;
  std::optional<std::string> start_command;
  std::optional<int> soak;
  std::optional<std::uint64_t> seed;
  std::vector<std::string> soak_kinds;
  std::optional<std::int64_t> soak_gap_ms, soak_hold_ms, whole_timeout_ms;
  std::vector<InstanceRef> instances;
  std::optional<std::string> proxy_start_command, etcd_endpoints;
};

template <typename T>
T number(std::string_view flag, const std::string& text) {
  T v{};
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc() || end != text.data() + text.size()) {
    usage_error(std::string(flag) + " wants a number, got '" + text + "'");
  }
  return v;
}

std::int64_t duration(std::string_view flag, const std::string& text) {
  auto d = parse_duration_ms(text);
  if (!d) {
    usage_error(std::string(flag) + " wants a duration such as 5s or 500ms, got '" + text + "'");
  }
  return *d;
}

Args parse_args(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        usage_error(flag + " needs a value");
      }
      return argv[++i];
    };
    if (flag == "-h" || flag == "--help") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    } else if (flag == "--env") {
      a.env = value();
    } else if (flag == "--conninfo") {
      a.conninfo = value();
    } else if (flag == "--console") {
      a.console = value();
    } else if (flag == "--cluster-env") {
      a.cluster_env = value();
    } else if (flag == "--node-conninfo") {
      a.node_conninfo = value();
    } else if (flag == "--restart-command") {
      a.restart_command = value();
    } else if (flag == "--scenario") {
      a.scenario = value();
    } else if (flag == "--duration") {
      a.duration_ms = duration(flag, value());
    } else if (flag == "--wait-ready") {
      a.wait_ready_ms = duration(flag, value());
    } else if (flag == "--statement-timeout") {
      a.statement_timeout_ms = duration(flag, value());
    } else if (flag == "--clients") {
      a.clients = number<int>(flag, value());
    } else if (flag == "--rate") {
      a.rate = number<double>(flag, value());
    } else if (flag == "--write-ratio") {
      a.write_ratio = number<double>(flag, value());
    } else if (flag == "--tx") {
      a.tx = true;
    } else if (flag == "--prepared") {
      a.prepared = true;
    } else if (flag == "--sync") {
      a.sync = true;
    } else if (flag == "--async") {
      a.sync = false;
    } else if (flag == "--fault") {
      std::string error;
      auto f = parse_fault(value(), error);
      if (!f) {
        usage_error(error);
      }
      a.faults.push_back(*f);
    } else if (flag == "--node") {
      auto n = parse_node(value());
      if (!n) {
        usage_error("--node wants NAME=HOST:PORT");
      }
      a.nodes.push_back(*n);
    } else if (flag == "--max-downtime") {
      a.max_downtime_ms = duration(flag, value());
    } else if (flag == "--max-lost") {
      a.max_lost = number<std::int64_t>(flag, value());
    } else if (flag == "--max-errors") {
      a.max_errors = number<std::int64_t>(flag, value());
    } else if (flag == "--out") {
      a.out_dir = value();
    } else if (flag == "--json") {
      a.json = value();
    } else if (flag == "--html") {
      a.html = value();
    } else if (flag == "--start-command") {
      a.start_command = value();
    } else if (flag == "--soak") {
      a.soak = number<int>(flag, value());
      if (*a.soak < 1) usage_error("--soak wants a number of faults, 1 or more");
    } else if (flag == "--seed") {
      a.seed = number<std::uint64_t>(flag, value());
    } else if (flag == "--soak-kinds") {
      std::string error;
      a.soak_kinds = parse_soak_kinds(value(), error);
      if (!error.empty()) usage_error(error);
    } else if (flag == "--soak-gap") {
      a.soak_gap_ms = duration(flag, value());
    } else if (flag == "--soak-hold") {
      a.soak_hold_ms = duration(flag, value());
    } else if (flag == "--whole-timeout") {
      a.whole_timeout_ms = duration(flag, value());
    } else if (flag == "--instance") {
      std::string error;
      auto in = parse_instance(value(), error);
      if (!in) usage_error(error);
      a.instances.push_back(*in);
    } else if (flag == "--proxy-start-command") {
      a.proxy_start_command = value();
    } else if (flag == "--etcd-endpoints") {
      a.etcd_endpoints = value();
    } else {
      usage_error("unknown argument " + flag);
    }
  }
  return a;
}

template <typename T>
T pick(const std::optional<T>& flag, const std::optional<T>& scenario, T fallback) {
  return flag ? *flag : scenario ? *scenario : fallback;
}

bool write_file(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::trunc);
  out << text;
  return static_cast<bool>(out.flush());
}

std::string fmt_ms(const std::optional<std::int64_t>& v) { return v ? std::to_string(*v) + " ms" : "-"; }

}  // namespace

int main(int argc, char** argv) {
  Args a = parse_args(argc, argv);

  // Settings: defaults < env file < scenario < flags.
  std::map<std::string, std::string> env;
  if (a.env) {
    std::string error;
    env = read_env_file(*a.env, error);
    if (!error.empty()) {
      usage_error(error);
    }
  }
  auto from_env = [&](const char* key) -> std::optional<std::string> {
    auto it = env.find(key);
    return it == env.end() || it->second.empty() ? std::nullopt : std::optional<std::string>(it->second);
  };
  Scenario sc;
  if (a.scenario) {
    const auto errors = load_scenario(*a.scenario, sc);
    for (const auto& e : errors) {
      std::fprintf(stderr, "pgkeel-drill: %s\n", e.c_str());
    }
    if (!errors.empty()) {
      return 2;
    }
  }
  std::string conninfo = a.conninfo ? *a.conninfo : from_env("PGKEEL_CONNINFO").value_or("");
  World world;
  world.instances = a.instances;
  if (world.instances.empty()) {
    if (auto specs = from_env("PGKEEL_INSTANCES")) {
      std::istringstream in(*specs);
      for (std::string spec; in >> spec;) {
        std::string error;
        auto i = parse_instance(spec, error);
        if (!i) usage_error("PGKEEL_INSTANCES: " + error);
        world.instances.push_back(*i);
      }
    }
  }
  if (world.instances.empty() && conninfo.empty()) {
    usage_error("--conninfo (or PGKEEL_CONNINFO in --env) is required");
  }
  world.console_conninfo = a.console ? *a.console : from_env("PGKEEL_CONSOLE_CONNINFO").value_or("");
  if (!world.instances.empty()) {
    // --conninfo and --console give credentials; the instances give the hosts and ports.
    // (a host and port in them are overridden: later keywords win in a conninfo)
    world.instance_conninfo = conninfo.empty() ? std::string("user=app password=app-pass dbname=app") : conninfo;
    world.instance_console_conninfo =
        a.console ? *a.console : std::string("user=pgkeel password=pgkeel-pass dbname=pgkeel");
    conninfo = multi_host_conninfo(world.instance_conninfo, world.instances);
    world.console_conninfo.clear();
    for (const auto& i : world.instances) {
      if (i.console_port != 0) {
        world.console_conninfo = console_of(world, i);
        break;
      }
    }
    world.proxy_start_command =
        a.proxy_start_command ? *a.proxy_start_command : from_env("PGKEEL_PROXY_START_COMMAND").value_or("");
    if (auto urls = a.etcd_endpoints ? a.etcd_endpoints : from_env("ETCD_ENDPOINTS")) {
      std::string error;
      world.etcd_ports = parse_endpoint_ports(*urls, error);
      if (!error.empty()) usage_error("--etcd-endpoints: " + error);
    }
    std::string names;
    for (const auto& i : world.instances) names += (names.empty() ? "" : ", ") + i.name;
    std::fprintf(stderr, "drill: %zu pgkeel instances (%s)\n", world.instances.size(), names.c_str());
  }
  world.node_conninfo = a.node_conninfo ? *a.node_conninfo
                                        : from_env("PGKEEL_NODE_CONNINFO")
                                              .value_or("user=pgkeel password=pgkeel-pass dbname=postgres");
  world.restart_command = a.restart_command ? *a.restart_command : from_env("PGKEEL_RESTART_COMMAND").value_or("");
  world.start_command = a.start_command ? *a.start_command : from_env("PGKEEL_START_COMMAND").value_or("");
  if (auto ce = a.cluster_env ? a.cluster_env : from_env("PGKEEL_CLUSTER_ENV")) {
    std::string error;
    world.nodes = nodes_from_env(read_env_file(*ce, error));
    if (!error.empty()) {
      usage_error(error);
    }
  }
  for (const auto& n : a.nodes) {
    world.nodes.push_back(n);  // nodes on other hosts: kill through SQL
  }
  std::optional<bool> env_sync;
  if (auto s = from_env("PGKEEL_SYNC")) {
    env_sync = *s == "1" || *s == "on" || *s == "true";
  }

  LoadOptions lo;
  lo.conninfo = conninfo;
  lo.duration = milliseconds(pick(a.duration_ms, sc.duration_ms, std::int64_t{20'000}));
  lo.clients = pick(a.clients, sc.clients, 4);
  lo.rate = pick(a.rate, sc.rate, 0.0);
  lo.write_ratio = pick(a.write_ratio, sc.write_ratio, 0.8);
  lo.explicit_tx = pick(a.tx, sc.tx, false);
  lo.prepared = pick(a.prepared, sc.prepared, false);
  lo.statement_timeout = milliseconds(a.statement_timeout_ms.value_or(10'000));
  if (lo.write_ratio < 0 || lo.write_ratio > 1) {
    usage_error("--write-ratio wants a number from 0 to 1");
  }
  const bool sync = a.sync ? *a.sync : sc.sync ? *sc.sync : env_sync.value_or(true);
  Gates gates;
  gates.max_downtime_ms = a.max_downtime_ms ? a.max_downtime_ms : sc.max_downtime_ms;
  gates.max_lost = a.max_lost ? a.max_lost : sc.max_lost;
  gates.max_errors = a.max_errors ? a.max_errors : sc.max_errors;
  std::vector<Fault> faults = a.faults.empty() ? sc.faults : a.faults;
  SoakOptions soak;
  if (a.soak) {
    if (!faults.empty()) usage_error("--soak draws its own faults: give no --fault and no scenario faults");
    if (world.console_conninfo.empty()) usage_error("--soak needs --console");
    soak.faults = *a.soak;
    soak.seed = a.seed ? *a.seed
                       : static_cast<std::uint64_t>(std::chrono::system_clock::now().time_since_epoch().count());
    soak.kinds = a.soak_kinds.empty() ? default_soak_kinds(world, sync) : a.soak_kinds;
    if (soak.kinds.empty()) usage_error("--soak: no fault kind can be injected here (--cluster-env?)");
    soak.gap_ms = a.soak_gap_ms.value_or(soak.gap_ms);
    soak.hold_ms = a.soak_hold_ms.value_or(soak.hold_ms);
    soak.whole_timeout_ms = a.whole_timeout_ms.value_or(soak.whole_timeout_ms);
    // The load runs until the soak ends it.
    lo.duration = milliseconds(a.duration_ms.value_or(std::int64_t{30} * 24 * 3600 * 1000));
    std::string kinds;
    for (const auto& k : soak.kinds) kinds += (kinds.empty() ? "" : ",") + k;
    std::fprintf(stderr, "drill: soak of %d faults, seed %llu, kinds %s\n", soak.faults,
                 static_cast<unsigned long long>(soak.seed), kinds.c_str());
  }
  if (auto errors = check_faults(faults, lo.duration.count()); !errors.empty()) {
    for (const auto& e : errors) {
      std::fprintf(stderr, "pgkeel-drill: %s\n", e.c_str());
    }
    return 2;
  }
  for (const auto& f : faults) {
    const bool needs_console = f.kind == FaultKind::kSwitchover || f.kind == FaultKind::kFailover ||
                               f.kind == FaultKind::kLag || f.kind == FaultKind::kSyncLoss || f.node.empty();
    const bool needs_nodes = f.kind == FaultKind::kKill || f.kind == FaultKind::kHang || f.kind == FaultKind::kLag ||
                             f.kind == FaultKind::kSyncLoss || f.kind == FaultKind::kPartition;
    if (needs_console && f.kind != FaultKind::kRestartProxy && world.console_conninfo.empty()) {
      usage_error(std::string("fault ") + std::string(to_string(f.kind)) + " needs --console");
    }
    if (needs_nodes && world.nodes.empty()) {
      usage_error(std::string("fault ") + std::string(to_string(f.kind)) + " needs --cluster-env or --node");
    }
    if (is_proxy_fault(f.kind) && world.instances.empty()) {
      usage_error(std::string("fault ") + std::string(to_string(f.kind)) + " needs --instance (multi-instance mode)");
    }
    if (f.kind == FaultKind::kKillProxy && world.proxy_start_command.empty()) {
      usage_error("fault kill-proxy needs --proxy-start-command (PGKEEL_PROXY_START_COMMAND)");
    }
    if (f.kind == FaultKind::kPartitionProxy && world.etcd_ports.empty()) {
      usage_error("fault partition-proxy needs --etcd-endpoints (ETCD_ENDPOINTS)");
    }
  }
  std::string json_path = a.json, html_path = a.html;
  if (!a.out_dir.empty()) {
    // Made now, so a run never ends without its report for want of a folder.
    std::error_code ec;
    std::filesystem::create_directories(a.out_dir, ec);
    if (ec) usage_error("--out " + a.out_dir + ": " + ec.message());
    json_path = json_path.empty() ? a.out_dir + "/drill.json" : json_path;
    html_path = html_path.empty() ? a.out_dir + "/drill.html" : html_path;
  }
  json_path = json_path.empty() ? "drill.json" : json_path;
  html_path = html_path.empty() ? "drill.html" : html_path;

  std::signal(SIGINT, on_signal);
  std::signal(SIGTERM, on_signal);

  if (a.wait_ready_ms) {
    const auto deadline = std::chrono::steady_clock::now() + milliseconds(*a.wait_ready_ms);
    std::string said;
    while (true) {
      const std::string why = not_ready_because(world, conninfo, sync);
      if (why.empty()) {
        break;
      }
      if (why != said) {
        std::fprintf(stderr, "drill: waiting for pgkeel: %s\n", why.c_str());
        said = why;
      }
      if (std::chrono::steady_clock::now() > deadline || g_signalled != 0) {
        std::fprintf(stderr, "pgkeel-drill: not ready after %lld ms: %s\n", static_cast<long long>(*a.wait_ready_ms),
                     why.c_str());
        return 2;
      }
      std::this_thread::sleep_for(milliseconds(500));
    }
    std::fprintf(stderr, "drill: pgkeel is ready\n");
  }
  if (auto st = pgkeel::ledger::setup(conninfo, false); !st.ok()) {
    std::fprintf(stderr, "pgkeel-drill: %s\n", st.error.c_str());
    return 2;
  }
  Load load(lo);
  if (auto st = load.start(milliseconds(15'000)); !st.ok()) {
    std::fprintf(stderr, "pgkeel-drill: %s\n", st.error.c_str());
    return 2;
  }

  // Faults, in time order, on their own thread (console commands block until they are done).
  Recording rec;
  rec.sync = sync;
  std::mutex rec_mu;
  std::vector<Injection> injections(faults.size());
  std::vector<bool> undone(faults.size(), true);
  std::thread fault_thread([&] {
    if (soak.faults > 0) {
      SoakRun run{world, conninfo, sync, soak, load, rec_mu, rec, faults, injections, undone, g_signalled};
      run_soak(run);
      load.stop();
      return;
    }
    struct Pending {
      std::int64_t t_ms;
      std::size_t index;
      bool is_undo;
    };
    std::vector<Pending> queue;
    for (std::size_t i = 0; i < faults.size(); ++i) {
      queue.push_back({faults[i].at_ms, i, false});
    }
    while (!queue.empty()) {
      auto next = std::min_element(queue.begin(), queue.end(),
                                   [](const Pending& x, const Pending& y) { return x.t_ms < y.t_ms; });
      const Pending p = *next;
      queue.erase(next);
      while (load.now_ms() < p.t_ms && !load.finished() && g_signalled == 0) {
        std::this_thread::sleep_for(milliseconds(std::min<std::int64_t>(20, p.t_ms - load.now_ms())));
      }
      if (load.finished() || g_signalled != 0) {
        if (!p.is_undo) {
          continue;  // the drill ended first; pending undos below still run
        }
      }
      const Fault& f = faults[p.index];
      if (p.is_undo) {
        const std::int64_t at = load.now_ms();
        const Undone u = undo_and_check(world, f, injections[p.index]);
        std::lock_guard lock(rec_mu);
        undone[p.index] = true;
        rec.faults[p.index].detail += "; " + u.detail + " at " + std::to_string(at) + " ms";
        if (u.checked) {
          rec.faults[p.index].back_seen = u.back_seen;
          rec.faults[p.index].back = u.back;
        }
        continue;
      }
      if (is_proxy_fault(f.kind)) {
        // A killed instance takes its SHOW EVENTS with it: keep what every instance has now.
        const auto before = instance_events(world, load.started_at_unix_ms());
        std::lock_guard lock(rec_mu);
        merge_events(rec.events, before);
      }
      const Injected done = inject_and_record(world, f, load.now_ms());
      const Injection& in = done.injection;
      const FaultRecord& fr = done.record;
      {
        std::lock_guard lock(rec_mu);
        rec.faults.resize(std::max(rec.faults.size(), p.index + 1));
        rec.faults[p.index] = fr;
        injections[p.index] = in;
        if (in.ok && in.undo_after_ms) {
          undone[p.index] = false;
          queue.push_back({fr.t_ms + *in.undo_after_ms, p.index, true});
        }
      }
      std::fprintf(stderr, "drill: t=%.1fs %s: %s%s%s\n", static_cast<double>(fr.t_ms) / 1000.0,
                   std::string(to_string(f.kind)).c_str(), fr.detail.c_str(), fr.effect.empty() ? "" : "; ",
                   fr.effect.c_str());
    }
  });

  // The live view: one line per second; redrawn in place on a terminal.
  const bool tty = isatty(STDOUT_FILENO) != 0;
  auto next_tick = load.t0() + milliseconds(1000);
  while (!load.finished()) {
    if (g_signalled != 0) {
      load.stop();
    }
    std::this_thread::sleep_until(std::min(next_tick, std::chrono::steady_clock::now() + milliseconds(200)));
    if (std::chrono::steady_clock::now() < next_tick) {
      continue;
    }
    next_tick += milliseconds(1000);
    const LiveSecond l = load.live();
    RouteNow route;
    if (!world.console_conninfo.empty()) {
      route = current_route_any(world);
      if (route.ok) {
        std::lock_guard lock(rec_mu);
        rec.routes.push_back({l.t_ms, route.primary, route.epoch});
      }
    }
    char line[256];
    std::snprintf(line, sizeof line, "t=%6.1fs  ops/s %6lld  errors %5lld  p50 %7.2f ms  p99 %7.2f ms  primary %s  epoch %s",
                  static_cast<double>(l.t_ms) / 1000.0, static_cast<long long>(l.ops),
                  static_cast<long long>(l.errors_total), l.p50_ms, l.p99_ms,
                  route.ok ? (route.primary.empty() ? "(none)" : route.primary.c_str()) : "?",
                  route.ok ? std::to_string(route.epoch).c_str() : "?");
    if (tty) {
      std::printf("\r\033[K%s", line);
    } else {
      std::printf("%s\n", line);
    }
    std::fflush(stdout);
  }
  if (tty) {
    std::printf("\n");
  }
  load.finish(rec);
  fault_thread.join();
  // Nothing stays stopped or paused after the drill, whatever happened.
  for (std::size_t i = 0; i < faults.size(); ++i) {
    if (!undone[i]) {
      const Undone u = undo_and_check(world, faults[i], injections[i]);
      rec.faults[i].detail += "; " + u.detail + " at the end";
      if (u.checked) {
        rec.faults[i].back_seen = u.back_seen;
        rec.faults[i].back = u.back;
      }
    }
  }
  rec.faults.resize(std::min(rec.faults.size(), faults.size()));
  // Faults scheduled after an early end were never injected: keep only those that ran.
  std::vector<FaultRecord> ran;
  for (const auto& f : rec.faults) {
    if (!f.detail.empty() || f.injected) {
      ran.push_back(f);
    }
  }
  rec.faults = ran;

  if (!world.instances.empty()) {
    // Every instance's events, each with its instance; those of a killed instance were kept
    // before its kill.
    merge_events(rec.events, instance_events(world, rec.started_at_unix_ms));
    std::erase_if(rec.events, [](const ConsoleEvent& e) { return e.t_ms < -1000; });
  } else if (!world.console_conninfo.empty()) {
    std::string error;
    const std::vector<ConsoleEvent> last = console_events(world.console_conninfo, rec.started_at_unix_ms, error);
    if (rec.soak) {
      merge_events(rec.events, last);  // the soak read them along the way
    } else {
      rec.events = last;
    }
    if (!error.empty()) {
      std::fprintf(stderr, "drill: SHOW EVENTS: %s\n", error.c_str());
      rec.events_error = error;
    }
    // keep the events of this run (and a little before: a detection can precede the fault's mark)
    std::erase_if(rec.events, [](const ConsoleEvent& e) { return e.t_ms < -1000; });
  }

  // Verification on the surviving primary, through pgkeel (it routes to the writer); pgkeel may
  // still be holding writes, so try for a while.
  const auto ids = pgkeel::ledger::attempt_ids(rec.writes, rec.id_base);
  const pgkeel::ledger::IdRange range{rec.id_base, rec.id_base + pgkeel::ledger::kRunStride - 1};
  const auto verify_deadline = std::chrono::steady_clock::now() + milliseconds(30'000);
  while (true) {
    rec.verdict = pgkeel::ledger::verify(conninfo, ids, range);
    if (rec.verdict->error.empty() || std::chrono::steady_clock::now() > verify_deadline) {
      break;
    }
    std::this_thread::sleep_for(milliseconds(500));
  }
  rec.report_html = html_path;

  const Summary s = summarize(rec, gates);
  const bool json_ok = write_file(json_path, to_json(rec, s));
  const bool html_ok = write_file(html_path, to_html(rec, s));

  // The summary, for people.
  std::printf("\n=== drill: %.1f s, %d clients (%s%s), %s, write ratio %.2f\n", static_cast<double>(rec.elapsed_ms) / 1000.0,
              rec.clients, rec.explicit_tx ? "tx" : "autocommit", rec.prepared ? ", prepared" : "",
              sync ? "synchronous" : "asynchronous", rec.write_ratio);
  for (std::size_t i = 0; i < rec.faults.size(); ++i) {
    const auto& f = rec.faults[i];
    const auto& fo = s.faults[i];
    auto after = [&](const std::optional<std::int64_t>& t) {
      return t ? std::optional<std::int64_t>(*t - f.t_ms) : std::nullopt;
    };
    std::printf("fault %s at %.3f s on %s: detected after %s, promoted after %s, write downtime %s%s\n",
                std::string(to_string(f.fault.kind)).c_str(), static_cast<double>(f.t_ms) / 1000.0,
                f.target.empty() ? "?" : f.target.c_str(), fmt_ms(after(fo.detected_ms)).c_str(),
                fmt_ms(after(fo.promoted_ms)).c_str(), fmt_ms(fo.downtime_ms).c_str(),
                !fo.recovered ? " (not recovered)" : fo.downtime_ms ? "" : " (writes never stopped)");
    if (!f.effect.empty()) {
      std::printf("  effect: %s\n", f.effect.c_str());
    }
    if (is_proxy_fault(f.fault.kind)) {
      std::printf("  instance: %s%s; back: %s\n", f.target.c_str(), f.hit_leader ? " (the store leader)" : "",
                  f.back.empty() ? "-" : f.back.c_str());
    }
  }
  if (rec.soak) {
    std::printf("\n--- soak: %zu of %d faults, seed %llu%s%s\n", rec.faults.size(), rec.soak_planned,
                static_cast<unsigned long long>(rec.soak_seed), rec.soak_stopped.empty() ? "" : "; stopped: ",
                rec.soak_stopped.c_str());
    std::printf("%-22s %6s %6s  %-24s %-24s %-24s %-24s\n", "kind", "faults", "passed", "detected p50/p90/max",
                "promoted p50/p90/max", "downtime p50/p90/max", "whole again p50/p90/max");
    auto cell = [](const Spread& sp) {
      return sp.n == 0 ? std::string("-")
                       : std::to_string(sp.p50) + "/" + std::to_string(sp.p90) + "/" + std::to_string(sp.max) + " ms";
    };
    for (const auto& row : soak_table(rec, s)) {
      std::printf("%-22s %6d %6d  %-24s %-24s %-24s %-24s\n", row.kind.c_str(), row.count, row.passed,
                  cell(row.detected).c_str(), cell(row.promoted).c_str(), cell(row.downtime).c_str(),
                  cell(row.whole).c_str());
    }
    const auto hist = downtime_histogram(s);
    std::printf("write downtime per fault:");
    for (std::size_t i = 0; i < hist.size(); ++i) {
      std::printf("%s %s: %d", i ? "," : "", std::string(kDowntimeBucketNames[i]).c_str(), hist[i]);
    }
    std::printf("\n\n");
  }
  std::printf("write downtime: %s\n", fmt_ms(s.write_downtime_ms).c_str());
  std::printf("writes: %lld acknowledged, %lld failed, %lld unknown; reads: %lld answered, %lld failed\n",
              static_cast<long long>(s.acknowledged), static_cast<long long>(s.failed),
              static_cast<long long>(s.unknown), static_cast<long long>(s.reads_ok),
              static_cast<long long>(s.reads_failed));
  std::printf("client errors: %lld", static_cast<long long>(s.errors_total));
  for (const auto& e : rec.errors) {
    std::printf("%s%s %s x%lld", &e == &rec.errors.front() ? " (" : ", ", e.sqlstate.c_str(), e.phase.c_str(),
                static_cast<long long>(e.count));
  }
  std::printf("%s\n", rec.errors.empty() ? "" : ")");
  if (rec.verdict->error.empty()) {
    const auto& v = *rec.verdict;
    std::printf("lost acknowledged commits: %zu", v.lost.size());
    for (std::size_t i = 0; i < v.lost.size() && i < 20; ++i) {
      std::printf("%s%lld", i ? ", " : " (", static_cast<long long>(v.lost[i]));
    }
    std::printf("%s\n", v.lost.empty() ? "" : ")");
    std::printf("acknowledged found: %lld of %lld; duplicates: %zu; failed writes present: %zu; unknown: %lld "
                "(%zu committed, %lld not)\n",
                static_cast<long long>(v.acknowledged - static_cast<std::int64_t>(v.lost.size())),
                static_cast<long long>(v.acknowledged), v.duplicates.size(), v.failed_present.size(),
                static_cast<long long>(v.unknown), v.unknown_found.size(), static_cast<long long>(v.unknown_missing));
  } else {
    std::printf("verification failed: %s\n", rec.verdict->error.c_str());
  }
  std::printf("latency p50/p99 ms: before %.2f/%.2f, during %.2f/%.2f, after %.2f/%.2f\n", s.before.p50,
              s.before.p99, s.during.p50, s.during.p99, s.after.p50, s.after.p99);
  for (const auto& f : s.failures) {
    std::printf("FAILED: %s\n", f.c_str());
  }
  std::printf("%s; summary: %s; report: %s\n", s.passed() ? "PASSED" : "FAILED", json_path.c_str(), html_path.c_str());
  if (!json_ok || !html_ok) {
    std::fprintf(stderr, "pgkeel-drill: could not write %s\n", !json_ok ? json_path.c_str() : html_path.c_str());
    return 2;
  }
  return s.passed() ? 0 : 1;
}
