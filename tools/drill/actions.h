// tools/drill/actions.h — what the drill does to the world besides the load: asks pgkeel's console
// (SHOW ROUTES, SHOW EVENTS, SHOW NODES, SWITCHOVER, FAILOVER) and injects faults into the
// rehearsal cluster (signals to a node's processes, replay pause, a node's link down, a pgkeel
// restart command) and, in multi-instance mode, into one pgkeel instance (kill -9 and its start
// command; its traffic to etcd dropped inside its network namespace).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "tools/drill/plan.h"
#include "tools/drill/report.h"

namespace pgkeel::drill {

// KEY=VALUE lines (shell-sourceable files such as cluster.env); quotes around values dropped,
// comments and other lines ignored.
std::map<std::string, std::string> read_env_file(const std::string& path, std::string& error);

struct NodeRef {
  std::string name;  // db1, db2, ...
  int port = 0;
  std::string data_dir;  // empty: not on this machine; kill goes through SQL (COPY TO PROGRAM)
  std::string host;      // empty: World::node_host
  std::string link;      // its bridge port when it runs in a network namespace (cluster.sh --netns)
};

// "NAME=HOST:PORT" (--node), for nodes the drill reaches only over the network (Docker).
std::optional<NodeRef> parse_node(const std::string& spec);

// The nodes of a tools/cluster.sh cluster.env (DB<n>_PORT, _DATA, _HOST, _LINK).
std::vector<NodeRef> nodes_from_env(const std::map<std::string, std::string>& env);

struct ConsoleTable {
  std::vector<std::string> columns;
  std::vector<std::vector<std::string>> rows;
  std::string error;  // non-empty: the query failed
  std::string cell(std::size_t row, const std::string& column) const;
};

// One console statement on a fresh connection, bounded by timeout_s.
ConsoleTable console_query(const std::string& conninfo, const std::string& sql, int timeout_s = 3);

struct RouteNow {
  std::string primary;  // the read-write listener's node; empty: no writer now
  std::int64_t epoch = -1;
  bool ok = false;
};
RouteNow current_route(const std::string& console_conninfo);

// SHOW EVENTS mapped onto the drill's timeline (t = event unix ms - started_at_unix_ms).
std::vector<ConsoleEvent> console_events(const std::string& console_conninfo, std::int64_t started_at_unix_ms,
                                         std::string& error);

// Why pgkeel cannot take the drill's load yet, "" when it can: a login through `conninfo`
// answers and, with a console, writes are routed, every node is up and (when `sync`) a standby
// is synchronous. For --wait-ready, when the drill starts beside a cluster that is still coming up.
struct World;
std::string not_ready_because(const World& world, const std::string& conninfo, bool sync);

struct World {
  std::string console_conninfo;
  std::string node_conninfo;  // without host/port... appended: "user=pgkeel password=... dbname=postgres"
  std::string node_host = "127.0.0.1";
  std::vector<NodeRef> nodes;
  std::string restart_command;  // for restart-proxy, run with /bin/sh -c
  // Starts a stopped node again (the soak, after a kill), run with /bin/sh -c, the node's name
  // appended as its last argument and PGKEEL_NODE_NAME set: `tools/cluster.sh start DIR` for a
  // local cluster.
  std::string start_command;
  // Multi-instance mode: every pgkeel instance, how to reach its console (a conninfo without
  // host and port: "user=pgkeel password=... dbname=pgkeel") and its read-write listener (the
  // load's conninfo, its host and port replaced), how kill-proxy starts an instance again (run
  // with /bin/sh -c, the instance's name appended and PGKEEL_INSTANCE set), and the client ports
  // of etcd (partition-proxy drops the instance's traffic to them).
  std::vector<InstanceRef> instances;
  std::string instance_console_conninfo;
  std::string instance_conninfo;
  std::string proxy_start_command;
  std::vector<int> etcd_ports;
};

// An instance's console and read-write listener as conninfo strings.
std::string console_of(const World& world, const InstanceRef& instance);
std::string listener_of(const World& world, const InstanceRef& instance);

// SHOW ROUTES on the first console that answers: world.console_conninfo, else each instance's.
RouteNow current_route_any(const World& world);

// The instance holding the store lead (SHOW PEERS on the first instance console that answers);
// "" with `why` set when none can tell.
std::string store_leader(const World& world, std::string& why);

// SHOW EVENTS of every instance console that answers, each event tagged with its instance.
std::vector<ConsoleEvent> instance_events(const World& world, std::int64_t started_at_unix_ms);

// Why the cluster is not whole, "" when it is: not_ready_because(), and besides every node up,
// none fenced, rejoining or on another standing than writer/follows (SHOW NODES).
std::string not_whole_because(const World& world, const std::string& conninfo, bool sync);

// Runs world.start_command for `node` (retried for up to `patience_ms`: a killed postmaster's
// orphaned backends may hold its shared memory a moment longer); "" when it started.
std::string start_node(const World& world, const std::string& node, std::int64_t patience_ms);

// Whether the node's postmaster runs (its postmaster.pid names a live process); nullopt when the
// drill cannot tell (the node is not on this machine).
std::optional<bool> node_running(const World& world, const std::string& node);

// What injecting a fault did; `undo` is set for faults that are undone later (hang, lag, partition).
// `ok` says the action was carried out (the signal sent, the command answered); `effect_seen`
// says the drill then saw its effect for itself (see FaultRecord).
struct Injection {
  bool ok = false;
  std::string target;
  std::string detail;
  std::optional<std::int64_t> undo_after_ms;
  std::vector<pid_t> stopped;  // hang: the processes to SIGCONT
  bool hit_writer = false;
  bool effect_seen = false;
  std::string effect;
  bool hit_leader = false;  // kill-proxy, partition-proxy: the instance held the store lead
  bool back_seen = false;   // kill-proxy: started again and serving (partition-proxy: see undo)
  std::string back;
};

// How long the drill looks for a kill's effect (the postmaster gone, the node refusing
// connections) before it says the kill did nothing.
inline constexpr std::int64_t kEffectTimeoutMs = 5000;

// Injects the fault, then looks for its effect (up to kEffectTimeoutMs).
Injection inject(const World& world, const Fault& fault);

// inject() at `t_ms` on the drill's timeline, with the record the report keeps of it.
struct Injected {
  Injection injection;
  FaultRecord record;
};
Injected inject_and_record(const World& world, const Fault& fault, std::int64_t t_ms);
// Undoes a hang (SIGCONT), a lag (pg_wal_replay_resume), a partition (link up) or a
// partition-proxy (its rules removed); returns what it did.
std::string undo(const World& world, const Fault& fault, const Injection& injection);

// undo(), and for partition-proxy whether the instance then served again (`back_seen`, `back`).
struct Undone {
  std::string detail;
  bool checked = false;  // the fault's kind has a "back" to see
  bool back_seen = false;
  std::string back;
};
Undone undo_and_check(const World& world, const Fault& fault, const Injection& injection);

// How long an instance has to serve again after its start command or its heal, and to refuse
// logins after its cut from etcd (a lease's TTL and a renewal or two).
inline constexpr std::int64_t kProxyBackTimeoutMs = 30'000;
inline constexpr std::int64_t kProxyCutTimeoutMs = 20'000;

}  // namespace pgkeel::drill
