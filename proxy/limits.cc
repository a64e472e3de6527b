#include "proxy/limits.h"

namespace pgkeel::proxy {
namespace {

const conf::LimitConfig* find(const conf::Config& cfg, const std::string& user, const std::string& database) {
  for (const conf::LimitConfig& l : cfg.limits) {
    if ((!user.empty() && l.user == user) || (!database.empty() && l.database == database)) return &l;
  }
  return nullptr;
}

std::string node_key(routing::NodeId node, const std::string& name) {
  std::string k = std::to_string(node);
  k += '\0';
  k += name;
  return k;
}

void drop(std::unordered_map<std::string, int>& m, const std::string& key) {
  auto it = m.find(key);
  if (it == m.end()) return;
  if (--it->second <= 0) m.erase(it);
}

}  // namespace

int Limits::user_client_limit(const conf::Config& cfg, const std::string& user) {
  const conf::LimitConfig* l = find(cfg, user, "");
  return l != nullptr && l->max_client_conn >= 0 ? l->max_client_conn : cfg.pool.max_user_client_conn;
}

int Limits::db_client_limit(const conf::Config& cfg, const std::string& database) {
  const conf::LimitConfig* l = find(cfg, "", database);
  return l != nullptr && l->max_client_conn >= 0 ? l->max_client_conn : cfg.pool.max_db_client_conn;
}

int Limits::user_server_limit(const conf::Config& cfg, const std::string& user) {
  const conf::LimitConfig* l = find(cfg, user, "");
  return l != nullptr && l->max_server_conn >= 0 ? l->max_server_conn : cfg.pool.max_user_server_conn;
}

int Limits::db_server_limit(const conf::Config& cfg, const std::string& database) {
  const conf::LimitConfig* l = find(cfg, "", database);
  return l != nullptr && l->max_server_conn >= 0 ? l->max_server_conn : cfg.pool.max_db_server_conn;
}

std::string Limits::client_enter(const conf::Config& cfg, const std::string& user, const std::string& database) {
  const int by_user = user_client_limit(cfg, user);
  const int by_db = db_client_limit(cfg, database);
  std::lock_guard lock(mu_);
  if (by_user > 0 && clients_by_user_[user] >= by_user) return "too many connections for role \"" + user + "\"";
  if (by_db > 0 && clients_by_db_[database] >= by_db) return "too many connections for database \"" + database + "\"";
  ++clients_by_user_[user];
  ++clients_by_db_[database];
  return {};
}

void Limits::client_leave(const std::string& user, const std::string& database) {
  std::lock_guard lock(mu_);
  drop(clients_by_user_, user);
  drop(clients_by_db_, database);
}

std::string Limits::server_enter(const conf::Config& cfg, routing::NodeId node, const std::string& user,
                                 const std::string& database, bool reserve) {
  const int extra = reserve ? cfg.pool.reserve_pool_size : 0;
  const int by_user = user_server_limit(cfg, user);
  const int by_db = db_server_limit(cfg, database);
  const std::string uk = node_key(node, user);
  const std::string dk = node_key(node, database);
  std::lock_guard lock(mu_);
  if (by_user > 0 && servers_by_user_[uk] >= by_user + extra) {
    return "max_server_conn for user \"" + user + "\" (" + std::to_string(by_user) + (extra ? " + reserve " + std::to_string(extra) : "") + ")";
  }
  if (by_db > 0 && servers_by_db_[dk] >= by_db + extra) {
    return "max_server_conn for database \"" + database + "\" (" + std::to_string(by_db) + (extra ? " + reserve " + std::to_string(extra) : "") + ")";
  }
  ++servers_by_user_[uk];
  ++servers_by_db_[dk];
  return {};
}

void Limits::server_leave(routing::NodeId node, const std::string& user, const std::string& database) {
  std::lock_guard lock(mu_);
  drop(servers_by_user_, node_key(node, user));
  drop(servers_by_db_, node_key(node, database));
}

}  // namespace pgkeel::proxy
