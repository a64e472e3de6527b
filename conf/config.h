// conf/config.h — pgkeel's configuration as plain, validated structs. Loading (TOML, users file)
// lives in conf/load.h; nothing here knows about files or parsing.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "routing/node.h"

namespace pgkeel::conf {

using Millis = std::chrono::milliseconds;

enum class LogLevel : std::uint8_t { kDebug, kInfo, kWarning, kError };
enum class LogFormat : std::uint8_t { kText, kJson };
enum class PoolMode : std::uint8_t { kSession, kTransaction };

struct GeneralConfig {
  int workers = 0;                 // 0: one per online core
  int max_client_conn = 1000;      // all listeners together (53300 beyond)
  LogLevel log_level = LogLevel::kInfo;
  LogFormat log_format = LogFormat::kText;  // key=value lines, or one JSON object a line
  std::string users_file;          // resolved relative to the config file's folder
  std::string state_file;          // where pgkeel records the primary's identity (failover issue)
  // Where a new pgkeel process asks this one to hand over (pgkeel --takeover, RESTART, SIGUSR2):
  // a Unix socket. Default: beside state_file (its name + ".takeover"); none without either.
  std::string takeover_socket;
  Millis shutdown_timeout{30000};  // SIGTERM: how long running transactions may finish
  Millis login_timeout{10000};     // client must finish authentication within this
  // Both sides (clients and servers): a peer that vanished is noticed in seconds, not hours.
  Millis tcp_keepalive_idle{30000};      // idle time before the first probe
  Millis tcp_keepalive_interval{10000};  // between probes
  int tcp_keepalive_count = 3;           // unanswered probes before the connection is dead
  Millis tcp_user_timeout{30000};        // unacknowledged data this long: dead (0: kernel default)
  bool application_name_add_host = false;  // append " - ip:port" of the client to application_name
};

// TLS toward clients (SSLRequest answered 'S' when cert_file and key_file are set).
struct TlsConfig {
  std::string cert_file;
  std::string key_file;
  std::string min_version = "TLSv1.2";  // "TLSv1.2" | "TLSv1.3"
  bool enabled() const { return !cert_file.empty() && !key_file.empty(); }
};

// TLS toward PostgreSQL nodes, as libpq's sslmode.
enum class SslMode : std::uint8_t { kDisable, kPrefer, kRequire, kVerifyCa, kVerifyFull };

struct ServerTlsConfig {
  SslMode sslmode = SslMode::kPrefer;
  std::string ca_file;    // verify-ca / verify-full: trusted roots (PEM)
  std::string cert_file;  // optional client certificate for the servers
  std::string key_file;
};

// One host-based authentication rule, as a line of pg_hba.conf reads; the first match wins.
enum class HbaType : std::uint8_t { kHost, kHostSsl, kHostNoSsl, kLocal };
enum class HbaMethod : std::uint8_t { kScram, kMd5, kPassword, kTrust, kReject };

struct HbaRule {
  HbaType type = HbaType::kHost;
  std::vector<std::string> databases;  // "all" matches any
  std::vector<std::string> users;      // "all" matches any
  std::string address = "all";         // "all", or an IPv4/IPv6 CIDR (host types only)
  HbaMethod method = HbaMethod::kScram;
  int line = 0;                        // in the config file, for logs
};

struct ListenerConfig {
  std::string name;               // e.g. "rw"
  std::string host = "127.0.0.1";
  std::uint16_t port = 0;
  std::string unix_socket_dir;    // empty: no Unix socket; else .s.PGSQL.<port> in this folder
  routing::Intent intent = routing::Intent::kReadWrite;
  PoolMode pool_mode = PoolMode::kSession;
  // Read-only listeners: a standby serves only while it is this close to the primary (0: no
  // limit), least busy first; with none fit, the primary serves (or the client is refused).
  std::uint64_t max_replica_lag_bytes = 16 * 1024 * 1024;
  Millis max_replica_lag{10000};
  bool read_fallback_primary = true;  // read_fallback = "primary" | "refuse"
  // Transaction pooling: a session that does what cannot move between server connections
  // (LISTEN, temporary tables, ...) keeps its connection ("pin"), or the statement fails ("refuse").
  bool refuse_pinning = false;  // pinning = "pin" | "refuse"
  // Transaction pooling on a read-write listener: transactions that declare themselves read-only
  // (BEGIN READ ONLY, default_transaction_read_only) go to a fit standby, as a read-only listener
  // picks one; with read_your_writes, only to one that has replayed the session's last write.
  bool read_write_split = false;
  bool read_your_writes = false;
  // Set only in the running configuration: the listener was removed by a reload, but its index
  // stays taken while clients that came through it remain (see conf/reload.h).
  bool retired = false;
};

struct NodeConfig {
  std::string name;
  std::string host;               // numeric address or a name resolved once at start
  std::uint16_t port = 5432;
  int priority = 100;             // higher wins ties among failover candidates
  bool sslmode_set = false;       // sslmode below overrides [server_tls] sslmode
  SslMode sslmode = SslMode::kPrefer;
  // Set only in the running configuration: removed (or moved to a new address) by a reload; its
  // index is never reused while the process runs (see conf/reload.h).
  bool retired = false;
};

// A client-facing database name and where it lives on the cluster.
struct DatabaseConfig {
  std::string name;               // what clients ask for; "*" matches any name
  std::string dbname;             // name on the server; empty: same as the client's
};

struct PoolConfig {
  int pool_size = 20;                    // warm server connections kept per pool key
  int max_server_conn_per_node = 100;    // across all workers
  Millis server_idle_timeout{600000};    // close a warm connection unused this long
  Millis server_lifetime{3600000};       // close a connection this old when it is released
  Millis connect_timeout{5000};          // TCP connect + server login
  Millis wait_timeout{30000};            // how long a client may wait for a server connection
  std::string reset_query = "DISCARD ALL";
  // Fairness: so the web shop cannot starve the ERP. 0: no limit. Client limits count
  // authenticated clients of pgkeel; server limits count connections per node.
  int max_user_client_conn = 0;          // per user, all databases and listeners
  int max_db_client_conn = 0;            // per client-facing database
  int max_user_server_conn = 0;          // per user, per node
  int max_db_server_conn = 0;            // per server database, per node
  int reserve_pool_size = 0;             // extra server connections past those limits ...
  Millis reserve_pool_timeout{5000};     // ... for a client that has waited this long
  Millis idle_transaction_timeout{0};    // idle inside a transaction this long: 25P03 (0: off)
};

// [auth]: secrets of users not in the users file, looked up on the cluster, and the slowing
// down of clients that keep failing to authenticate.
struct AuthConfig {
  // Empty: off. One statement; $1 is the user name (a bound parameter, never spliced in); the
  // last column of the first row is the secret as pg_authid stores it (SCRAM verifier or md5
  // hash); no row or NULL: no such user.
  std::string query;
  std::string user;       // who runs the query (default: [health] user)
  std::string password;   // (default: [health] password)
  std::string dbname;     // (default: [health] dbname)
  Millis query_timeout{2000};
  // A looked-up secret is used again, without a query, only when no node answers (a failover):
  // for at most this long after it was fetched.
  Millis cache_lifetime{300000};
  // A "no such user" answer is used again, without a query, for this long (0: never), so a flood
  // of logins of one invented name costs one query, not one each.
  Millis negative_cache_lifetime{5000};
  // Per worker: user names whose lookup may wait or run at once (logins of one name share one
  // lookup). Beyond it a login is refused at once with 53300.
  int max_queued_lookups = 100;
  // Throttle: after max_failures failed logins from one address within failure_window, each
  // further failure is answered failure_delay later (doubling, at most 5 s). 0: off.
  int max_failures = 5;
  Millis failure_window{60000};
  Millis failure_delay{500};
};

// [[limit]]: the limits above, for one user or one database.
struct LimitConfig {
  std::string user;      // exactly one of user / database
  std::string database;
  int max_client_conn = -1;  // -1: the [pool] default
  int max_server_conn = -1;
};

struct ClusterConfig {
  std::string initial_primary;     // only bootstraps the very first start
};

// Probing every node (health/).
struct HealthConfig {
  Millis probe_interval{500};
  Millis probe_timeout{1000};
  int timeouts_to_down = 3;        // consecutive probe timeouts before a node is down
  int oks_to_up = 2;               // consecutive answers before a down node is up again
  std::string user = "postgres";   // probes and admin actions (ALTER SYSTEM, pg_promote)
  std::string password;
  std::string dbname = "postgres";
  Millis witness_receipt_age{2000};  // a standby that heard its upstream this recently vetoes
};

enum class SyncMode : std::uint8_t { kOff, kOn, kStrict };

struct FailoverConfig {
  bool automatic = true;                        // mode = "automatic" | "manual"
  SyncMode synchronous_mode = SyncMode::kOn;
  std::uint64_t max_lag_on_failover = 16u << 20;  // bytes
  Millis hold_timeout{30000};                   // clients wait this long for a writer
  Millis promote_timeout{30000};
  std::string fence_command;
  bool fence_required = true;
  std::string on_promote;
  std::string on_degraded;
  std::string replication_user = "replicator";  // how standbys stream from a new primary
  std::string replication_password;
  // Planned switchover (console SWITCHOVER): how the old primary is stopped cleanly and how it
  // rejoins as a standby. Run through /bin/sh with PGKEEL_NODE_NAME/HOST/PORT (and for rejoin
  // PGKEEL_PRIMARY_NAME/HOST/PORT) in the environment.
  std::string stop_command;
  std::string rejoin_command;
  // After a failover: a node that comes back claiming to be primary, or as a standby on an older
  // timeline, is fenced and reported; "auto" also runs rejoin_command for it (with
  // PGKEEL_REJOIN_REASON=returned-primary|old-timeline), verifies that it streams from the primary
  // on the new timeline, and retries with backoff. "manual": reported, rejoined by a DBA.
  bool rejoin_auto = false;                // rejoin = "manual" | "auto"
  Millis switchover_drain_timeout{10000};  // running transactions may finish this long
  Millis switchover_timeout{60000};        // the whole switchover, or it aborts
};

// The DBA console (a PostgreSQL-protocol listener on the main thread).
struct ConsoleConfig {
  std::string host = "127.0.0.1";
  std::uint16_t port = 0;                 // 0: no console
  std::vector<std::string> admin_users;   // may act (FAILOVER ...)
  std::vector<std::string> monitor_users; // SHOW only
  // Console connections at once, logged in or not (a login beyond it gets 53300). Each one lives
  // on the main thread, beside the keeper.
  int max_connections = 32;
};

// The HTTP status port (/live, /health, /ready, /metrics, /api/status, /).
struct StatusConfig {
  std::string host = "127.0.0.1";
  std::uint16_t port = 0;  // 0: no status port
  // HTTP connections at once that have sent a request (503 beyond it). The port shares the main
  // thread with the keeper.
  int max_connections = 64;
};

// [store]: several pgkeel instances act as one through etcd (v3 API). Without it (no endpoints),
// pgkeel runs alone and the primary record lives in state_file and in the cluster.
struct StoreConfig {
  // "http://host:port" or "https://host:port", all with the same scheme; tried in turn.
  std::vector<std::string> endpoints;
  std::string ca_file;    // https: the roots that sign the etcd members' certificates (PEM)
  std::string cert_file;  // https: optional client certificate (etcd --client-cert-auth)
  std::string key_file;
  std::string username;   // etcd authentication (both or neither)
  std::string password;
  std::string prefix;     // this cluster's keys live under it, e.g. "/pgkeel/erp" (required)
  std::string name;       // this instance, unique within the prefix (required)
  // Where peers and SHOW PEERS reach this instance: a host name or an address. Default: the
  // first listener's host (a wildcard address is not accepted there: set it).
  std::string advertise_host;
  // Each instance's key lives on a lease of this TTL (whole seconds, as etcd counts them). An
  // instance that could not renew it for lease_ttl minus two request timeouts stops routing
  // writes, before the lease can expire in etcd.
  Millis lease_ttl{10000};
  Millis request_timeout{1000};  // one etcd request, per endpoint tried
  // With the whole store unavailable: false (default) writes stop once the lease can no longer be
  // renewed; true keeps writes on the recorded primary while every peer instance confirms, over
  // its status port, that it cannot reach the store either (no one can publish a new primary).
  bool failsafe = false;
  bool enabled() const { return !endpoints.empty(); }
  bool tls() const { return !endpoints.empty() && endpoints.front().rfind("https://", 0) == 0; }
};

// One line of the users file: a client-facing user and its secret, as PostgreSQL stores it in
// pg_authid (SCRAM verifier or md5 hash) or a plaintext password (service accounts).
struct UserEntry {
  std::string name;
  std::string secret;
  int line = 0;
};

struct Config {
  std::string source_file;
  GeneralConfig general;
  ClusterConfig cluster;
  PoolConfig pool;
  HealthConfig health;
  FailoverConfig failover;
  ConsoleConfig console;
  StatusConfig status;
  TlsConfig tls;
  ServerTlsConfig server_tls;
  StoreConfig store;
  std::vector<HbaRule> hba;  // empty: every user authenticates by the kind of secret stored
  std::vector<LimitConfig> limits;
  AuthConfig auth;
  std::vector<ListenerConfig> listeners;
  std::vector<NodeConfig> nodes;
  std::vector<DatabaseConfig> databases;
  std::vector<UserEntry> users;

  // Index into `nodes` of the named node, or -1 (a retired node is not found by its name).
  int node_index(const std::string& name) const {
    for (std::size_t i = 0; i < nodes.size(); ++i) {
      if (nodes[i].name == name && !nodes[i].retired) return static_cast<int>(i);
    }
    return -1;
  }
  // Same for listeners.
  int listener_index(const std::string& name) const {
    for (std::size_t i = 0; i < listeners.size(); ++i) {
      if (listeners[i].name == name && !listeners[i].retired) return static_cast<int>(i);
    }
    return -1;
  }
};

}  // namespace pgkeel::conf
