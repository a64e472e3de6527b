// proxy/auth_query.h — secrets for users who are not in the users file, looked up with [auth]
// query on the cluster: the writer first, then any standby, so logins keep working while the
// primary is down. Every login asks afresh (a password changed on the server counts at once);
// the last answer per user is kept for `cache_lifetime` and used only when no node answers.
// Also the throttle that slows down an address that keeps failing to log in.
#pragma once

#include <chrono>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "conf/config.h"
#include "routing/node.h"

namespace pgkeel::health {
class PgAsync;
}  // namespace pgkeel::health

namespace pgkeel::proxy {

struct UserAuth;
class Worker;

// Shared by the workers.
class SecretCache {
 public:
  struct Entry {
    std::shared_ptr<const UserAuth> auth;  // nullptr: the cluster has no such user
    std::chrono::steady_clock::time_point fetched;
  };
  std::optional<Entry> get(const std::string& user) const;
  void put(const std::string& user, Entry entry);

 private:
  mutable std::mutex mu_;
  std::unordered_map<std::string, Entry> map_;
};

// One per worker, on its loop: one connection, one query at a time, a queue for the rest.
class SecretLookup {
 public:
  struct Result {
    enum class Status : std::uint8_t { kFound, kNotFound, kFailed } status = Status::kFailed;
    std::shared_ptr<const UserAuth> auth;
    std::string node;        // where it was answered
    bool from_cache = false;  // no node answered; the cached answer was used
    std::string error;       // kFailed: why
  };
  using Done = std::function<void(Result)>;

  explicit SecretLookup(Worker& w);
  ~SecretLookup();
  SecretLookup(const SecretLookup&) = delete;
  SecretLookup& operator=(const SecretLookup&) = delete;

  void fetch(const std::string& user, Done done);

 private:
  void next();
  void attempt();
  void finish(Result r);

  Worker& w_;
  std::deque<std::pair<std::string, Done>> queue_;
  bool busy_ = false;
  std::unique_ptr<health::PgAsync> conn_;
  std::optional<routing::NodeId> conn_node_;
  std::vector<routing::NodeId> candidates_;  // for the lookup in progress
  std::size_t tried_ = 0;
  std::string errors_;
};

// $1 in `query` replaced by `user` as a quoted SQL literal (standard_conforming_strings).
std::string bind_user(const std::string& query, const std::string& user);

// Failed logins per client address (shared by the workers).
class AuthThrottle {
 public:
  // A failure from `address`: how long to wait before answering it (zero while under the limit).
  std::chrono::milliseconds failed(const std::string& address, const conf::AuthConfig& cfg,
                                   std::chrono::steady_clock::time_point now);
  void succeeded(const std::string& address);

 private:
  struct Record {
    int failures = 0;
    std::chrono::steady_clock::time_point first;
  };
  std::mutex mu_;
  std::unordered_map<std::string, Record> map_;
};

}  // namespace pgkeel::proxy
