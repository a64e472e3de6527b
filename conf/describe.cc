#include "conf/describe.h"

namespace pgkeel::conf {
namespace {

std::string ms(Millis d) {
  const auto v = d.count();
  if (v != 0 && v % 1000 == 0) return std::to_string(v / 1000) + "s";
  return std::to_string(v) + "ms";
}

std::string list(const std::vector<std::string>& v) {
  std::string out;
  for (const std::string& s : v) out += (out.empty() ? "" : ", ") + s;
  return out;
}

std::string secret(const std::string& s) { return s.empty() ? "" : "(set)"; }

const char* level(LogLevel l) {
  switch (l) {
    case LogLevel::kDebug: return "debug";
    case LogLevel::kInfo: return "info";
    case LogLevel::kWarning: return "warning";
    case LogLevel::kError: return "error";
  }
  return "info";
}

const char* sync(SyncMode m) {
  switch (m) {
    case SyncMode::kOff: return "off";
    case SyncMode::kOn: return "on";
    case SyncMode::kStrict: return "strict";
  }
  return "on";
}

const char* sslmode(SslMode m) {
  switch (m) {
    case SslMode::kDisable: return "disable";
    case SslMode::kPrefer: return "prefer";
    case SslMode::kRequire: return "require";
    case SslMode::kVerifyCa: return "verify-ca";
    case SslMode::kVerifyFull: return "verify-full";
  }
  return "prefer";
}

}  // namespace

std::vector<std::pair<std::string, std::string>> describe(const Config& c) {
  std::vector<std::pair<std::string, std::string>> out;
  auto add = [&](std::string k, std::string v) { out.emplace_back(std::move(k), std::move(v)); };
  add("config_file", c.source_file);
  add("general.workers", std::to_string(c.general.workers));
  add("general.max_client_conn", std::to_string(c.general.max_client_conn));
  add("general.log_level", level(c.general.log_level));
  add("general.log_format", c.general.log_format == LogFormat::kJson ? "json" : "text");
  add("general.users_file", c.general.users_file);
  add("general.state_file", c.general.state_file);
  add("general.takeover_socket", c.general.takeover_socket);
  add("general.shutdown_timeout", ms(c.general.shutdown_timeout));
  add("general.login_timeout", ms(c.general.login_timeout));
  add("general.tcp_keepalive_idle", ms(c.general.tcp_keepalive_idle));
  add("general.tcp_keepalive_interval", ms(c.general.tcp_keepalive_interval));
  add("general.tcp_keepalive_count", std::to_string(c.general.tcp_keepalive_count));
  add("general.tcp_user_timeout", ms(c.general.tcp_user_timeout));
  add("general.application_name_add_host", c.general.application_name_add_host ? "true" : "false");
  add("tls.cert_file", c.tls.cert_file);
  add("tls.key_file", c.tls.key_file);
  add("tls.min_version", c.tls.min_version);
  add("server_tls.sslmode", sslmode(c.server_tls.sslmode));
  add("server_tls.ca_file", c.server_tls.ca_file);
  add("server_tls.cert_file", c.server_tls.cert_file);
  add("store.endpoints", list(c.store.endpoints));
  if (c.store.enabled()) {
    add("store.ca_file", c.store.ca_file);
    add("store.cert_file", c.store.cert_file);
    add("store.username", c.store.username);
    add("store.password", secret(c.store.password));
    add("store.prefix", c.store.prefix);
    add("store.name", c.store.name);
    add("store.advertise_host", c.store.advertise_host);
    add("store.lease_ttl", ms(c.store.lease_ttl));
    add("store.request_timeout", ms(c.store.request_timeout));
    add("store.failsafe", c.store.failsafe ? "true" : "false");
  }
  add("hba", std::to_string(c.hba.size()) + " rules");
  add("auth.query", c.auth.query);
  add("auth.user", c.auth.user);
  add("auth.password", secret(c.auth.password));
  add("auth.dbname", c.auth.dbname);
  add("auth.query_timeout", ms(c.auth.query_timeout));
  add("auth.cache_lifetime", ms(c.auth.cache_lifetime));
  add("auth.negative_cache_lifetime", ms(c.auth.negative_cache_lifetime));
  add("auth.max_queued_lookups", std::to_string(c.auth.max_queued_lookups));
  add("auth.max_failures", std::to_string(c.auth.max_failures));
  add("auth.failure_window", ms(c.auth.failure_window));
  add("auth.failure_delay", ms(c.auth.failure_delay));
  add("cluster.initial_primary", c.cluster.initial_primary);
  add("pool.pool_size", std::to_string(c.pool.pool_size));
  add("pool.max_server_conn_per_node", std::to_string(c.pool.max_server_conn_per_node));
  add("pool.server_idle_timeout", ms(c.pool.server_idle_timeout));
  add("pool.server_lifetime", ms(c.pool.server_lifetime));
  add("pool.connect_timeout", ms(c.pool.connect_timeout));
  add("pool.wait_timeout", ms(c.pool.wait_timeout));
  add("pool.reset_query", c.pool.reset_query);
  add("pool.max_user_client_conn", std::to_string(c.pool.max_user_client_conn));
  add("pool.max_db_client_conn", std::to_string(c.pool.max_db_client_conn));
  add("pool.max_user_server_conn", std::to_string(c.pool.max_user_server_conn));
  add("pool.max_db_server_conn", std::to_string(c.pool.max_db_server_conn));
  add("pool.reserve_pool_size", std::to_string(c.pool.reserve_pool_size));
  add("pool.reserve_pool_timeout", ms(c.pool.reserve_pool_timeout));
  add("pool.idle_transaction_timeout", ms(c.pool.idle_transaction_timeout));
  for (const LimitConfig& l : c.limits) {
    const std::string p = l.user.empty() ? "limit.database." + l.database + "." : "limit.user." + l.user + ".";
    if (l.max_client_conn >= 0) add(p + "max_client_conn", std::to_string(l.max_client_conn));
    if (l.max_server_conn >= 0) add(p + "max_server_conn", std::to_string(l.max_server_conn));
  }
  add("health.probe_interval", ms(c.health.probe_interval));
  add("health.probe_timeout", ms(c.health.probe_timeout));
  add("health.timeouts_to_down", std::to_string(c.health.timeouts_to_down));
  add("health.oks_to_up", std::to_string(c.health.oks_to_up));
  add("health.user", c.health.user);
  add("health.password", secret(c.health.password));
  add("health.dbname", c.health.dbname);
  add("health.witness_receipt_age", ms(c.health.witness_receipt_age));
  add("failover.mode", c.failover.automatic ? "automatic" : "manual");
  add("failover.synchronous_mode", sync(c.failover.synchronous_mode));
  add("failover.max_lag_on_failover", std::to_string(c.failover.max_lag_on_failover));
  add("failover.hold_timeout", ms(c.failover.hold_timeout));
  add("failover.promote_timeout", ms(c.failover.promote_timeout));
  add("failover.fence_command", c.failover.fence_command);
  add("failover.fence_required", c.failover.fence_required ? "true" : "false");
  add("failover.on_promote", c.failover.on_promote);
  add("failover.on_degraded", c.failover.on_degraded);
  add("failover.replication_user", c.failover.replication_user);
  add("failover.replication_password", secret(c.failover.replication_password));
  add("failover.stop_command", c.failover.stop_command);
  add("failover.rejoin_command", c.failover.rejoin_command);
  add("failover.rejoin", c.failover.rejoin_auto ? "auto" : "manual");
  add("failover.switchover_drain_timeout", ms(c.failover.switchover_drain_timeout));
  add("failover.switchover_timeout", ms(c.failover.switchover_timeout));
  add("console.host", c.console.host);
  add("console.port", std::to_string(c.console.port));
  add("console.admin_users", list(c.console.admin_users));
  add("console.monitor_users", list(c.console.monitor_users));
  add("console.max_connections", std::to_string(c.console.max_connections));
  add("status.host", c.status.host);
  add("status.port", std::to_string(c.status.port));
  add("status.max_connections", std::to_string(c.status.max_connections));
  for (const ListenerConfig& l : c.listeners) {
    if (l.retired) continue;  // removed by a reload
    const std::string p = "listener." + l.name + ".";
    add(p + "address", l.host + ":" + std::to_string(l.port));
    add(p + "unix_socket_dir", l.unix_socket_dir);
    add(p + "intent", l.intent == routing::Intent::kReadWrite ? "read-write" : "read-only");
    add(p + "pool_mode", l.pool_mode == PoolMode::kTransaction ? "transaction" : "session");
    if (l.pool_mode == PoolMode::kTransaction) {
      add(p + "pinning", l.refuse_pinning ? "refuse" : "pin");
      add(p + "read_write_split", l.read_write_split ? "true" : "false");
      add(p + "read_your_writes", l.read_your_writes ? "true" : "false");
    }
    if (l.intent == routing::Intent::kReadOnly) {
      add(p + "max_replica_lag_bytes", std::to_string(l.max_replica_lag_bytes));
      add(p + "max_replica_lag", std::to_string(l.max_replica_lag.count()) + "ms");
      add(p + "read_fallback", l.read_fallback_primary ? "primary" : "refuse");
    }
  }
  for (const NodeConfig& n : c.nodes) {
    if (n.retired) continue;
    const std::string p = "node." + n.name + ".";
    add(p + "address", n.host + ":" + std::to_string(n.port));
    add(p + "priority", std::to_string(n.priority));
    if (n.sslmode_set) add(p + "sslmode", sslmode(n.sslmode));
  }
  for (const DatabaseConfig& d : c.databases) add("databases." + d.name, d.dbname.empty() ? "(same name)" : d.dbname);
  add("users", std::to_string(c.users.size()) + " in the users file");
  return out;
}

}  // namespace pgkeel::conf
