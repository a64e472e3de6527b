// proxy/status.h — one picture of pgkeel at a moment: the keeper's view of the nodes, the
// routing table, what every worker holds (clients, servers, pools) and the traffic counters.
// The console (SHOW …) and the status port (/api/status, /metrics, the page) both render this
// picture, so they never disagree. Gathered on the main thread; workers answer through their
// mailboxes.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "conf/config.h"
#include "health/failover.h"
#include "health/keeper.h"
#include "proxy/stats.h"
#include "routing/snapshot.h"

namespace pgkeel::proxy {

struct Shared;

// A result set: column names and text rows (NULL as nullopt).
struct ConsoleTable {
  std::vector<std::string> columns;
  std::vector<std::vector<std::optional<std::string>>> rows;
};

struct ClientRow {
  std::string id;           // what KILL takes, e.g. "c0-17"
  std::string address;      // "ip:port" or "unix"
  std::string listener;
  std::string user;
  std::string database;
  std::string application_name;
  std::string state;        // startup / auth / waiting / held / paused / active / idle / idle in transaction
  std::string server;       // server connection id, empty when none
  std::int32_t backend_pid = 0;
  std::string node;         // where its server connection is
  double connected_s = 0;   // seconds since accept
  double state_s = 0;       // seconds in this state (held, paused or waiting), else 0
  bool tls = false;
};

struct ServerRow {
  std::string id;           // e.g. "s1-4"
  std::string node;
  std::string address;
  std::string user;
  std::string database;
  std::string state;        // connecting / login / idle / active / idle in transaction / resetting
  std::string client;       // client id when linked
  std::int32_t backend_pid = 0;
  std::uint64_t epoch = 0;
  double age_s = 0;
  double idle_s = 0;
};

struct PoolRow {
  unsigned worker = 0;
  std::string node;
  std::string user;
  std::string database;
  int idle = 0;
  int active = 0;
  int connecting = 0;
  int waiting_clients = 0;
};

// What one worker reports; Worker::report() fills it on the worker's thread.
struct WorkerReport {
  unsigned worker = 0;
  std::vector<ClientRow> clients;
  std::vector<ServerRow> servers;
  std::vector<PoolRow> pools;
};

struct ListenerRow {
  std::string name;
  std::string address;        // host:port
  std::string unix_socket;    // path or empty
  std::string intent;         // read-write / read-only
  std::string pool_mode;      // session / transaction
  bool paused = false;
  std::string routes_to;      // node name, empty when none
  std::string why;            // why there (or why nowhere)
  int clients = 0;            // connected through this listener now
};

struct StatusSnapshot {
  std::chrono::system_clock::time_point taken;
  std::string version;
  double uptime_s = 0;
  std::shared_ptr<const conf::Config> config;
  std::shared_ptr<const routing::Snapshot> routes;
  bool keeper_running = false;
  std::vector<health::NodeStatus> nodes;
  std::vector<health::Event> events;
  std::vector<health::PeerStatus> peers;  // [store]: every instance with a live lease
  health::Plan plan;
  health::KeeperCounters keeper;
  bool failover_running = false;
  std::vector<ListenerRow> listeners;
  bool with_connections = false;  // the three vectors below were gathered
  std::vector<ClientRow> clients;
  std::vector<ServerRow> servers;
  std::vector<PoolRow> pools;
  StatsSample total;              // since start
  StatsSample last_minute;        // difference over (about) the last 60 s
  double last_minute_s = 0;       // the actual span of last_minute
  std::uint64_t reloads = 0;
  std::uint64_t reload_failures = 0;
};

// Gathers a snapshot; `done` runs on the main thread. With `with_connections`, every worker is
// asked for its clients, servers and pools (a mailbox round trip); without, only shared state is
// read and `done` may run before gather_status() returns.
void gather_status(Shared& shared, bool with_connections, std::function<void(std::shared_ptr<const StatusSnapshot>)> done);

// The console's result sets, one per SHOW command; /api/status uses the same tables.
ConsoleTable nodes_table(const StatusSnapshot& s);
ConsoleTable routes_table(const StatusSnapshot& s);
ConsoleTable plan_table(const StatusSnapshot& s);
ConsoleTable events_table(const StatusSnapshot& s);
ConsoleTable peers_table(const StatusSnapshot& s);
ConsoleTable listeners_table(const StatusSnapshot& s);
ConsoleTable clients_table(const StatusSnapshot& s);
ConsoleTable servers_table(const StatusSnapshot& s);
ConsoleTable pools_table(const StatusSnapshot& s);
ConsoleTable stats_table(const StatusSnapshot& s);
ConsoleTable config_table(const StatusSnapshot& s);

// ISO-8601 UTC with milliseconds, as every table and the JSON use.
std::string iso_time(std::chrono::system_clock::time_point t);

}  // namespace pgkeel::proxy
