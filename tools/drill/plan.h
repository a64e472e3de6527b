// tools/drill/plan.h — what a drill is asked to do: the load, and the faults at their moments.
// Parsing of durations and of `--fault KIND@TIME[:key=value,...]` lives here, pure and
// header-only (unit-tested); the TOML scenario file is read by scenario.cc alone.
#pragma once

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace pgkeel::drill {

enum class FaultKind : std::uint8_t {
  kKill,          // kill -9 of the primary's postmaster (mode=all: every process of it)
  kHang,          // SIGSTOP of the primary's postmaster and children; SIGCONT after `for`
  kSwitchover,    // SWITCHOVER [TO node] on pgkeel's console
  kFailover,      // FAILOVER [TO node] on pgkeel's console
  kRestartProxy,  // the restart command: rehearsal.sh restart-proxy has a new pgkeel take over
  kLag,           // pg_wal_replay_pause() on a standby; resumed after `for` when given
  kSyncLoss,      // kill -9 of the synchronous standby's postmaster
  kPartition,     // the node's link down (cluster.sh up --netns): silent both ways; up after `for`
  // Multi-instance mode (--instance): faults of one pgkeel instance, the store leader unless
  // node=INSTANCE names another. Neither may move the primary.
  kKillProxy,       // kill -9 of the instance, then its start command; it must serve again
  kPartitionProxy,  // the instance's traffic to etcd dropped in its namespace; healed after `for`
};

inline constexpr std::string_view kFaultNames[] = {"kill",      "hang",      "switchover", "failover",
                                                   "restart-proxy", "lag",   "sync-loss",  "partition",
                                                   "kill-proxy", "partition-proxy"};

// Faults of a pgkeel instance rather than of a node (they need --instance).
inline constexpr bool is_proxy_fault(FaultKind k) {
  return k == FaultKind::kKillProxy || k == FaultKind::kPartitionProxy;
}

inline constexpr std::string_view to_string(FaultKind k) {
  return kFaultNames[static_cast<std::size_t>(k)];
}

inline std::optional<FaultKind> parse_fault_kind(std::string_view s) {
  for (std::size_t i = 0; i < std::size(kFaultNames); ++i) {
    if (kFaultNames[i] == s) {
      return static_cast<FaultKind>(i);
    }
  }
  return std::nullopt;
}

struct Fault {
  FaultKind kind = FaultKind::kKill;
  std::int64_t at_ms = 0;                  // since the load started
  std::optional<std::int64_t> for_ms;      // hang, lag, partition(-proxy): how long before it is undone
  std::string node;                        // target node; empty: the current primary (lag: a standby);
                                           // kill-proxy, partition-proxy: the instance; empty: the leader
  bool all_processes = false;              // kill: mode=all
  friend bool operator==(const Fault&, const Fault&) = default;
};

// "5s", "500ms", "2min", "1.5s", "1h"; a bare number is seconds. nullopt when malformed.
inline std::optional<std::int64_t> parse_duration_ms(std::string_view s) {
  std::size_t unit_at = 0;
  while (unit_at < s.size() && (std::isdigit(static_cast<unsigned char>(s[unit_at])) != 0 || s[unit_at] == '.')) {
    ++unit_at;
  }
  if (unit_at == 0) {
    return std::nullopt;
  }
  double value = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + unit_at, value);
  if (ec != std::errc() || end != s.data() + unit_at || value < 0) {
    return std::nullopt;
  }
  const std::string_view unit = s.substr(unit_at);
  double scale = 0;
  if (unit.empty() || unit == "s") {
    scale = 1000;
  } else if (unit == "ms") {
    scale = 1;
  } else if (unit == "min" || unit == "m") {
    scale = 60'000;
  } else if (unit == "h") {
    scale = 3'600'000;
  } else {
    return std::nullopt;
  }
  return static_cast<std::int64_t>(value * scale + 0.5);
}

// KIND@TIME[:key=value,...], keys: for=DURATION, node=NAME, mode=postmaster|all.
// e.g. "kill@5s", "kill@5s:mode=all", "hang@5s:for=3s", "lag@4s:node=db2,for=5s",
// "kill-proxy@5s:node=pk2", "partition-proxy@5s:for=6s" (node= names a pgkeel instance there).
inline std::optional<Fault> parse_fault(std::string_view spec, std::string& error) {
  const auto at = spec.find('@');
  if (at == std::string_view::npos) {
    error = "fault '" + std::string(spec) + "': want KIND@TIME, e.g. kill@5s";
    return std::nullopt;
  }
  Fault f;
  const auto kind = parse_fault_kind(spec.substr(0, at));
  if (!kind) {
    error = "fault '" + std::string(spec) +
            "': unknown kind (kill, hang, switchover, failover, restart-proxy, lag, sync-loss, partition, "
            "kill-proxy, partition-proxy)";
    return std::nullopt;
  }
  f.kind = *kind;
  std::string_view rest = spec.substr(at + 1);
  const auto colon = rest.find(':');
  const auto when = parse_duration_ms(rest.substr(0, colon));
  if (!when) {
    error = "fault '" + std::string(spec) + "': bad time '" + std::string(rest.substr(0, colon)) + "'";
    return std::nullopt;
  }
  f.at_ms = *when;
  std::string_view options = colon == std::string_view::npos ? std::string_view{} : rest.substr(colon + 1);
  while (!options.empty()) {
    const auto comma = options.find(',');
    const std::string_view kv = options.substr(0, comma);
    options = comma == std::string_view::npos ? std::string_view{} : options.substr(comma + 1);
    const auto eq = kv.find('=');
    const std::string_view key = kv.substr(0, eq);
    const std::string_view value = eq == std::string_view::npos ? std::string_view{} : kv.substr(eq + 1);
    if (key == "for") {
      f.for_ms = parse_duration_ms(value);
      if (!f.for_ms) {
        error = "fault '" + std::string(spec) + "': bad duration for=" + std::string(value);
        return std::nullopt;
      }
    } else if (key == "node" && !value.empty()) {
      f.node = std::string(value);
    } else if (key == "mode" && (value == "postmaster" || value == "all")) {
      f.all_processes = value == "all";
    } else {
      error = "fault '" + std::string(spec) + "': unknown option '" + std::string(kv) +
              "' (for=DURATION, node=NAME, mode=postmaster|all)";
      return std::nullopt;
    }
  }
  if (f.for_ms && f.kind == FaultKind::kKillProxy) {
    error = "fault '" + std::string(spec) + "': kill-proxy takes no for= (the instance is started again at once)";
    return std::nullopt;
  }
  return f;
}

// One pgkeel instance of a multi-instance drill (--instance), as the drill reaches it.
struct InstanceRef {
  std::string name;  // its [store] name, as SHOW PEERS shows it
  std::string host;  // its read-write listener
  int port = 0;
  std::string console_host;  // empty: host
  int console_port = 0;      // 0: no console
  std::string pidfile;       // kill-proxy: its pid is read here (the start command writes it anew)
  std::string netns;         // partition-proxy: the network namespace it runs in (/run/netns/NAME)
  friend bool operator==(const InstanceRef&, const InstanceRef&) = default;
};

// NAME=HOST:PORT[,console=[HOST:]PORT][,pidfile=FILE][,netns=NAME]; nullopt and `error` when
// malformed. e.g. "pk1=127.0.0.1:6432,console=6433,pidfile=/run/pk1.pid".
inline std::optional<InstanceRef> parse_instance(std::string_view spec, std::string& error) {
  auto fail = [&](const std::string& why) {
    error = "--instance '" + std::string(spec) + "': " + why;
    return std::nullopt;
  };
  auto host_port = [](std::string_view s, std::string& host, int& port) {
    const auto colon = s.rfind(':');
    std::string_view p = colon == std::string_view::npos ? s : s.substr(colon + 1);
    if (colon != std::string_view::npos) host = std::string(s.substr(0, colon));
    auto [end, ec] = std::from_chars(p.data(), p.data() + p.size(), port);
    return ec == std::errc() && end == p.data() + p.size() && port > 0 && port < 65536;
  };
  const auto eq = spec.find('=');
  if (eq == std::string_view::npos || eq == 0) return fail("want NAME=HOST:PORT");
  InstanceRef in;
  in.name = std::string(spec.substr(0, eq));
  std::string_view rest = spec.substr(eq + 1);
  const auto comma = rest.find(',');
  const std::string_view endpoint = rest.substr(0, comma);
  if (endpoint.find(':') == std::string_view::npos || !host_port(endpoint, in.host, in.port) || in.host.empty()) {
    return fail("want NAME=HOST:PORT");
  }
  rest = comma == std::string_view::npos ? std::string_view{} : rest.substr(comma + 1);
  while (!rest.empty()) {
    const auto c = rest.find(',');
    const std::string_view kv = rest.substr(0, c);
    rest = c == std::string_view::npos ? std::string_view{} : rest.substr(c + 1);
    const auto e = kv.find('=');
    const std::string_view key = kv.substr(0, e);
    const std::string_view value = e == std::string_view::npos ? std::string_view{} : kv.substr(e + 1);
    if (value.empty()) return fail("'" + std::string(kv) + "' wants a value");
    if (key == "console") {
      if (!host_port(value, in.console_host, in.console_port)) return fail("bad console '" + std::string(value) + "'");
    } else if (key == "pidfile") {
      in.pidfile = std::string(value);
    } else if (key == "netns") {
      in.netns = std::string(value);
    } else {
      return fail("unknown option '" + std::string(kv) + "' (console=[HOST:]PORT, pidfile=FILE, netns=NAME)");
    }
  }
  return in;
}

// The load's conninfo in multi-instance mode: `base` (user, password, dbname...) with every
// instance as a host, libpq trying them in order for a read-write session, so that writes move
// to another instance when one goes or refuses logins. Later keywords override earlier ones.
inline std::string multi_host_conninfo(const std::string& base, const std::vector<InstanceRef>& instances) {
  std::string hosts, ports;
  for (const auto& i : instances) {
    hosts += (hosts.empty() ? "" : ",") + i.host;
    ports += (ports.empty() ? "" : ",") + std::to_string(i.port);
  }
  return base + (base.empty() ? "" : " ") + "host=" + hosts + " port=" + ports + " target_session_attrs=read-write";
}

// The client ports of etcd endpoints ("http://127.0.0.1:2379,http://10.0.0.1:2381"), for
// partition-proxy's rules; empty with `error` set when one has no port.
inline std::vector<int> parse_endpoint_ports(std::string_view urls, std::string& error) {
  std::vector<int> ports;
  while (!urls.empty()) {
    const auto comma = urls.find(',');
    std::string_view u = urls.substr(0, comma);
    urls = comma == std::string_view::npos ? std::string_view{} : urls.substr(comma + 1);
    if (u.empty()) continue;
    if (const auto scheme = u.find("://"); scheme != std::string_view::npos) u = u.substr(scheme + 3);
    if (const auto slash = u.find('/'); slash != std::string_view::npos) u = u.substr(0, slash);
    const auto colon = u.rfind(':');
    int port = 0;
    const std::string_view p = colon == std::string_view::npos ? std::string_view{} : u.substr(colon + 1);
    auto [end, ec] = std::from_chars(p.data(), p.data() + p.size(), port);
    if (p.empty() || ec != std::errc() || end != p.data() + p.size() || port <= 0 || port > 65535) {
      error = "etcd endpoint '" + std::string(u) + "' names no port";
      return {};
    }
    if (std::find(ports.begin(), ports.end(), port) == ports.end()) ports.push_back(port);
  }
  return ports;
}

// Faults sorted by time; a fault that cannot happen before the end is reported, not skipped.
inline std::vector<std::string> check_faults(std::vector<Fault>& faults, std::int64_t duration_ms) {
  std::vector<std::string> errors;
  std::stable_sort(faults.begin(), faults.end(), [](const Fault& a, const Fault& b) { return a.at_ms < b.at_ms; });
  for (const auto& f : faults) {
    if (f.at_ms >= duration_ms) {
      errors.push_back("fault '" + std::string(to_string(f.kind)) + "' at " + std::to_string(f.at_ms) +
                       " ms is not before the end of the drill (" + std::to_string(duration_ms) + " ms)");
    }
  }
  return errors;
}

}  // namespace pgkeel::drill

namespace pgkeel::drill {

// A scenario file's settings; each overrides the command line's default and is overridden by a
// flag given explicitly. Read by load_scenario (scenario.cc, the only file that includes toml11).
struct Scenario {
  std::optional<std::int64_t> duration_ms;
  std::optional<int> clients;
  std::optional<double> rate;
  std::optional<double> write_ratio;
  std::optional<bool> tx;
  std::optional<bool> prepared;
  std::optional<bool> sync;
  std::optional<std::int64_t> max_downtime_ms;
  std::optional<std::int64_t> max_lost;
  std::optional<std::int64_t> max_errors;
  std::vector<Fault> faults;
};

// Every error names the file, the line when known, and the key; empty on success.
std::vector<std::string> load_scenario(const std::string& path, Scenario& out);

}  // namespace pgkeel::drill

namespace pgkeel::drill {

// The soak: faults drawn at random, one at a time, each once the cluster is whole again (every
// node up, none fenced or rejoining, a writer, and in synchronous mode a synchronous standby).
// The draw is splitmix64 from the seed, so a seed names a run on any machine.
inline constexpr std::string_view kSoakKinds[] = {"kill",  "kill-all", "hang",          "partition", "switchover",
                                                  "failover", "restart-proxy", "lag",       "sync-loss"};

struct SoakOptions {
  int faults = 0;                     // 0: no soak (the faults come from --fault or the scenario)
  std::uint64_t seed = 0;
  std::vector<std::string> kinds;     // from kSoakKinds; empty: every kind the world allows
  std::int64_t gap_ms = 3000;         // writes flow this long before each fault
  std::int64_t hold_ms = 3000;        // hang, partition, lag: undone after this
  std::int64_t whole_timeout_ms = 180'000;  // the cluster must be whole again within this
};

inline std::uint64_t splitmix64(std::uint64_t& state) {
  std::uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

inline bool is_soak_kind(std::string_view k) {
  for (auto s : kSoakKinds) {
    if (s == k) return true;
  }
  return false;
}

// "kill,hang,switchover" -> the list; an unknown name sets `error`.
inline std::vector<std::string> parse_soak_kinds(std::string_view s, std::string& error) {
  std::vector<std::string> out;
  while (!s.empty()) {
    const auto comma = s.find(',');
    const std::string_view k = s.substr(0, comma);
    s = comma == std::string_view::npos ? std::string_view{} : s.substr(comma + 1);
    if (k.empty()) continue;
    if (!is_soak_kind(k)) {
      error = "--soak-kinds: unknown kind '" + std::string(k) +
              "' (kill, kill-all, hang, partition, switchover, failover, restart-proxy, lag, sync-loss)";
      return {};
    }
    out.emplace_back(k);
  }
  if (out.empty()) error = "--soak-kinds: no kind given";
  return out;
}

// The next fault of a soak: a kind drawn from `kinds` (never empty), at `at_ms`, on the current
// primary (lag and sync-loss: a standby), hang/partition/lag undone after hold_ms.
inline Fault draw_soak_fault(std::uint64_t& state, const std::vector<std::string>& kinds, std::int64_t at_ms,
                             std::int64_t hold_ms) {
  const std::string& k = kinds[static_cast<std::size_t>(splitmix64(state) % kinds.size())];
  Fault f;
  f.at_ms = at_ms;
  if (k == "kill-all") {
    f.kind = FaultKind::kKill;
    f.all_processes = true;
  } else {
    f.kind = *parse_fault_kind(k);
  }
  if (f.kind == FaultKind::kHang || f.kind == FaultKind::kPartition || f.kind == FaultKind::kLag) {
    f.for_ms = hold_ms;
  }
  return f;
}

}  // namespace pgkeel::drill
