// proxy/limits.h — per-user and per-database connection limits, shared by every worker. Counted
// at login and logout, and when a server connection opens and goes: never on the data path, so
// one mutex is enough.
#pragma once

#include <mutex>
#include <string>
#include <unordered_map>

#include "conf/config.h"
#include "routing/node.h"

namespace pgkeel::proxy {

class Limits {
 public:
  // Empty when admitted (and counted); otherwise the refusal, worded as PostgreSQL words it
  // ("too many connections for role \"web\"").
  std::string client_enter(const conf::Config& cfg, const std::string& user, const std::string& database);
  void client_leave(const std::string& user, const std::string& database);

  // A server connection for `user` on `database` (the server's name) at `node`. `reserve`: the
  // client has waited reserve_pool_timeout, so reserve_pool_size more are allowed. Empty when
  // admitted (and counted); otherwise which limit is full, for logs and the wait-timeout error.
  std::string server_enter(const conf::Config& cfg, routing::NodeId node, const std::string& user,
                           const std::string& database, bool reserve);
  void server_leave(routing::NodeId node, const std::string& user, const std::string& database);

  // The limits that apply, after [[limit]] overrides (0: none).
  static int user_client_limit(const conf::Config& cfg, const std::string& user);
  static int db_client_limit(const conf::Config& cfg, const std::string& database);
  static int user_server_limit(const conf::Config& cfg, const std::string& user);
  static int db_server_limit(const conf::Config& cfg, const std::string& database);

 private:
  std::mutex mu_;
  std::unordered_map<std::string, int> clients_by_user_;
  std::unordered_map<std::string, int> clients_by_db_;
  std::unordered_map<std::string, int> servers_by_user_;  // "node\0user"
  std::unordered_map<std::string, int> servers_by_db_;    // "node\0database"
};

}  // namespace pgkeel::proxy
