// proxy/shared.h — state every worker reads: the configuration, the routing table, user
// secrets, and the global limits (atomics). Built once by main; workers never lock it on the
// data path.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <array>
#include <atomic>
#include <chrono>
#include <functional>
#include <cstdint>
#include <event2/event.h>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "conf/config.h"
#include "proxy/auth/scram.h"
#include "proxy/auth_query.h"
#include "proxy/limits.h"
#include "proxy/stats.h"
#include "routing/replicas.h"
#include "routing/snapshot.h"

typedef struct ssl_ctx_st SSL_CTX;

namespace pgkeel::proxy {

class Worker;
}  // namespace pgkeel::proxy

namespace pgkeel::health {
class Keeper;
}  // namespace pgkeel::health

namespace pgkeel::proxy {

// A client-facing user as pgkeel knows it from the users file.
struct UserAuth {
  enum class Kind : std::uint8_t { kScramVerifier, kMd5Hash, kPassword };
  std::string name;
  Kind kind = Kind::kPassword;
  auth::ScramVerifier verifier;  // kScramVerifier, and derived once for kPassword
  std::string md5_hash;          // kMd5Hash, and derived for kPassword
  std::string password;          // kPassword only
};

// What a server connection uses to log in on a client's behalf.
struct ServerCredential {
  std::string user;
  std::optional<auth::ScramSecret> scram;  // password or pass-through keys
  std::string md5_hash;                    // answers AuthenticationMD5Password
  std::string password;                    // answers AuthenticationCleartextPassword

  bool operator==(const ServerCredential&) const = default;  // clients of one user share one copy
};

struct NodeAddress {
  sockaddr_storage addr{};
  socklen_t len = 0;
  std::string text;  // "host:port" for logs and errors
};

using UserMap = std::unordered_map<std::string, UserAuth>;

struct Shared {
  // Main thread only (workers keep their own copy: Worker::config()).
  std::shared_ptr<const conf::Config> config;
  routing::Table table{routing::Snapshot{}};
  // TLS contexts (nullptr: no TLS that way); replaced whole by a reload, read by any thread.
  std::shared_ptr<SSL_CTX> client_tls() const { return std::atomic_load(&client_tls_); }
  std::shared_ptr<SSL_CTX> server_tls() const { return std::atomic_load(&server_tls_); }
  void set_tls(std::shared_ptr<SSL_CTX> toward_clients, std::shared_ptr<SSL_CTX> toward_servers) {
    std::atomic_store(&client_tls_, std::move(toward_clients));
    std::atomic_store(&server_tls_, std::move(toward_servers));
  }
  // Client-facing users; replaced whole by a reload, read by any thread.
  std::shared_ptr<const UserMap> users() const { return std::atomic_load(&users_); }
  void set_users(std::shared_ptr<const UserMap> u) { std::atomic_store(&users_, std::move(u)); }
  // By NodeId. An entry is written once, by the main thread, before any snapshot names its node
  // (a reload adds nodes at new indices and never rewrites one), so workers read it unlocked.
  std::array<NodeAddress, kMaxNodes> node_addrs;

  std::atomic<int> clients{0};  // all workers; checked against max_client_conn
  Limits limits;                // per user and per database
  SecretCache secrets;          // [auth] query answers
  AuthThrottle auth_throttle;   // failed logins per address
  static_assert(kMaxNodes <= routing::kMaxNodeIndices);
  // Each node's position after the keeper's last probe (read routing).
  routing::ReplicaBoard replicas;
  std::array<std::atomic<int>, kMaxNodes> server_conns{};  // by NodeId; per-node cap
  std::array<std::atomic<int>, kMaxNodes> node_waiters{};  // by NodeId; clients waiting for a slot

  std::string mock_secret;  // salts the fake SCRAM exchange for unknown users
  std::vector<Worker*> workers;
  health::Keeper* keeper = nullptr;
  // Thread-safe: a data-path connect to the node failed at the transport level.
  std::function<void(routing::NodeId)> report_transport_failure;  // lives on the main thread; the console reaches it there
  std::atomic<int> workers_running{0};
  std::atomic<bool> draining{false};

  // Runs `fn` on the main thread (the console, the keeper and the status port live there).
  std::function<void(std::function<void()>)> post_main;
  event_base* main_base = nullptr;
  // Set by run(): RELOAD / SIGHUP (returns what happened, in one line) and SHUTDOWN.
  std::function<std::string(const std::string& who, bool& ok)> reload;
  std::function<void(bool graceful)> shutdown;
  // RESTART and SIGUSR2: starts `pgkeel --takeover` with this process's command line; the text
  // says what happened (ok false: why nothing did).
  std::function<std::string(const std::string& who, bool& ok)> restart;
  // A takeover's drain, on the main thread: a session's socket and its transfer to the new
  // process (set once the new process accepts; empty otherwise).
  std::function<void(std::vector<int> fds, std::string transfer)> hand_session;  // client, [server]
  std::chrono::steady_clock::time_point started = std::chrono::steady_clock::now();
  // PAUSE [listener] from the console, and a switchover's pause: new transactions wait.
  std::array<std::atomic<bool>, kMaxListeners> listener_paused{};
  std::atomic<bool> writes_paused{false};
  // Main thread only: samples of the summed worker stats, for "the last minute".
  StatsHistory history;
  std::atomic<std::uint64_t> reloads{0};
  std::atomic<std::uint64_t> reload_failures{0};

 private:
  std::shared_ptr<const UserMap> users_ = std::make_shared<const UserMap>();
  std::shared_ptr<SSL_CTX> client_tls_;
  std::shared_ptr<SSL_CTX> server_tls_;
};

}  // namespace pgkeel::proxy
