// proxy/auth_query.h — secrets for users who are not in the users file, looked up with [auth]
// query on the cluster: the writer first, then any standby, so logins keep working while the
// primary is down. Every login asks afresh (a password changed on the server counts at once); the
// user name is sent as a bound parameter, never spliced into the SQL. The last answer per user is
// kept for `cache_lifetime` and used only when no node answers; a "no such user" answer is reused
// for `negative_cache_lifetime`, so a flood of one unknown name costs one query. Also the throttle
// that slows down an address that keeps failing to log in.
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "conf/config.h"
#include "proxy/handles.h"
#include "routing/node.h"

namespace pgkeel::health {
class PgAsync;
}  // namespace pgkeel::health

namespace pgkeel::proxy {

struct UserAuth;
class Worker;

// The answers of [auth] query, shared by the workers. Bounded: an attacker who invents user names
// fills it with "no such user" answers, which are dropped first.
class SecretCache {
 public:
  using TimePoint = std::chrono::steady_clock::time_point;
  struct Entry {
    std::shared_ptr<const UserAuth> auth;  // nullptr: the cluster has no such user
    TimePoint fetched;
  };
  static constexpr std::size_t kMaxEntries = 10000;

  explicit SecretCache(std::size_t max_entries = kMaxEntries) : max_entries_(max_entries) {}

  // Whether an answer may still be used at `now`: one that found the user for cache_lifetime,
  // one that did not for negative_cache_lifetime.
  static bool fresh(const Entry& e, const conf::AuthConfig& cfg, TimePoint now);
  // The answer for `user`, if there is one and it is still fresh.
  std::optional<Entry> get(const std::string& user, const conf::AuthConfig& cfg, TimePoint now) const;
  // Full: answers past their lifetime go first, then every "no such user", then everything.
  void put(const std::string& user, Entry entry, const conf::AuthConfig& cfg, TimePoint now);
  std::size_t size() const;

 private:
  const std::size_t max_entries_;
  mutable std::mutex mu_;
  std::unordered_map<std::string, Entry> map_;
};

// One per worker, on its loop: one connection, one query at a time, a bounded queue for the rest.
// Logins of the same name while its lookup waits or runs share that lookup.
class SecretLookup {
 public:
  struct Result {
    enum class Status : std::uint8_t {
      kFound,
      kNotFound,
      kFailed,  // no node answered, nothing fresh cached
      kBusy,    // max_queued_lookups names already wait on this worker: refused without a query
    } status = Status::kFailed;
    std::shared_ptr<const UserAuth> auth;
    std::string node;          // where it was answered
    bool from_cache = false;   // no node answered; the cached answer was used
    bool negative_cached = false;  // a fresh "no such user" answered without a query
    std::string error;         // kFailed, kBusy: why
  };
  using Done = std::function<void(Result)>;

  explicit SecretLookup(Worker& w);
  ~SecretLookup();
  SecretLookup(const SecretLookup&) = delete;
  SecretLookup& operator=(const SecretLookup&) = delete;

  // `done` runs exactly once, from the worker's loop, never from inside fetch().
  void fetch(const std::string& user, Done done);

  // Names waiting or being looked up now (for tests and SHOW-like reports).
  std::size_t pending() const { return queue_.size(); }

 private:
  struct Waiting {
    std::string user;
    std::vector<Done> done;  // every login of this name that waits for this lookup
  };
  static void on_ready(evutil_socket_t fd, short what, void* arg);
  void answer_later(Result r, Done done);
  void next();
  void attempt();
  void finish(Result r);
  std::string conninfo(routing::NodeId node) const;

  Worker& w_;
  std::list<Waiting> queue_;  // front: the lookup in flight while busy_
  std::unordered_map<std::string, std::list<Waiting>::iterator> by_user_;
  bool busy_ = false;
  std::unique_ptr<health::PgAsync> conn_;
  std::optional<routing::NodeId> conn_node_;
  std::string conn_info_;  // what conn_ was opened with: a reload that changes it reconnects
  std::vector<routing::NodeId> candidates_;  // for the lookup in progress
  std::size_t tried_ = 0;
  std::string errors_;
  // Answers known without a query, delivered from the loop.
  std::vector<std::pair<Result, Done>> ready_;
  EventPtr ready_event_;
};

// Failed logins per client address (shared by the workers, the console and the status port).
class AuthThrottle {
 public:
  // A failure from `address`: how long to wait before answering it (zero while under the limit).
  std::chrono::milliseconds failed(const std::string& address, const conf::AuthConfig& cfg,
                                   std::chrono::steady_clock::time_point now);
  void succeeded(const std::string& address);
  // Whether `address` is past max_failures within the window now (without counting anything).
  bool throttled(const std::string& address, const conf::AuthConfig& cfg,
                 std::chrono::steady_clock::time_point now);

 private:
  struct Record {
    int failures = 0;
    std::chrono::steady_clock::time_point first;
  };
  std::mutex mu_;
  std::unordered_map<std::string, Record> map_;
};

}  // namespace pgkeel::proxy
