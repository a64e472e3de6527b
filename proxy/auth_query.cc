#include "proxy/auth_query.h"

#include <arpa/inet.h>

#include <algorithm>
#include <iterator>

#include "health/pg_async.h"
#include "proxy/auth_session.h"
#include "proxy/log.h"
#include "proxy/worker.h"

namespace pgkeel::proxy {
namespace {

using health::conninfo_value;

std::string numeric_host(const NodeAddress& a) {
  char host[INET6_ADDRSTRLEN] = {0};
  if (a.addr.ss_family == AF_INET) {
    inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(&a.addr)->sin_addr, host, sizeof host);
  } else if (a.addr.ss_family == AF_INET6) {
    inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6*>(&a.addr)->sin6_addr, host, sizeof host);
  }
  return host;
}

}  // namespace

bool SecretCache::fresh(const Entry& e, const conf::AuthConfig& cfg, TimePoint now) {
  return now - e.fetched <= (e.auth ? cfg.cache_lifetime : cfg.negative_cache_lifetime);
}

std::optional<SecretCache::Entry> SecretCache::get(const std::string& user, const conf::AuthConfig& cfg,
                                                   TimePoint now) const {
  std::lock_guard lock(mu_);
  auto it = map_.find(user);
  if (it == map_.end() || !fresh(it->second, cfg, now)) return std::nullopt;
  return it->second;
}

void SecretCache::put(const std::string& user, Entry entry, const conf::AuthConfig& cfg, TimePoint now) {
  std::lock_guard lock(mu_);
  if (map_.size() >= max_entries_ && map_.find(user) == map_.end()) {
    // Full: what may no longer be used goes first. If that frees nothing, invented names are
    // flooding in: every "no such user" goes (they cost one query each to learn again). Only if
    // the cluster really has that many users does everything go.
    std::erase_if(map_, [&](const auto& kv) { return !fresh(kv.second, cfg, now); });
    if (map_.size() >= max_entries_) std::erase_if(map_, [](const auto& kv) { return !kv.second.auth; });
    if (map_.size() >= max_entries_) map_.clear();
  }
  map_[user] = std::move(entry);
}

std::size_t SecretCache::size() const {
  std::lock_guard lock(mu_);
  return map_.size();
}

SecretLookup::SecretLookup(Worker& w) : w_(w) {
  ready_event_.reset(event_new(w_.base(), -1, 0, &SecretLookup::on_ready, this));
}

SecretLookup::~SecretLookup() = default;

void SecretLookup::on_ready(evutil_socket_t, short, void* arg) {
  auto* self = static_cast<SecretLookup*>(arg);
  std::vector<std::pair<Result, Done>> ready;
  ready.swap(self->ready_);
  for (auto& [r, done] : ready) done(std::move(r));
}

void SecretLookup::answer_later(Result r, Done done) {
  ready_.emplace_back(std::move(r), std::move(done));
  event_active(ready_event_.get(), EV_TIMEOUT, 0);
}

void SecretLookup::fetch(const std::string& user, Done done) {
  const conf::AuthConfig& cfg = w_.config().auth;
  // The same name already waits or runs: this login shares its answer.
  if (auto it = by_user_.find(user); it != by_user_.end()) {
    it->second->done.push_back(std::move(done));
    return;
  }
  // The cluster said a moment ago that there is no such user: say it again without asking.
  if (std::optional<SecretCache::Entry> e = w_.shared().secrets.get(user, cfg, std::chrono::steady_clock::now());
      e && !e->auth) {
    Result r;
    r.status = Result::Status::kNotFound;
    r.negative_cached = true;
    answer_later(std::move(r), std::move(done));
    return;
  }
  // Each lookup waits for the one before it: a queue without a bound is a queue an unauthenticated
  // flood of invented names fills. Beyond it, refuse at once rather than let every login time out.
  if (queue_.size() >= static_cast<std::size_t>(std::max(1, cfg.max_queued_lookups))) {
    Result r;
    r.status = Result::Status::kBusy;
    r.error = std::to_string(queue_.size()) + " user names already wait for the auth query on this worker (max_queued_lookups)";
    answer_later(std::move(r), std::move(done));
    return;
  }
  queue_.push_back(Waiting{user, {}});
  queue_.back().done.push_back(std::move(done));
  by_user_.emplace(user, std::prev(queue_.end()));
  if (!busy_) next();
}

void SecretLookup::next() {
  if (queue_.empty()) {
    busy_ = false;
    return;
  }
  busy_ = true;
  // Where to ask: the writer, then standbys, then any other enabled node.
  const routing::Snapshot& snap = w_.snapshot();
  candidates_.clear();
  if (snap.writer) candidates_.push_back(*snap.writer);
  for (int pass = 0; pass < 2; ++pass) {
    for (const routing::NodeView& n : snap.nodes) {
      if (n.fenced || !n.enabled || n.retired) continue;
      if (pass == 0 && n.role != routing::Role::kStandby) continue;
      if (std::find(candidates_.begin(), candidates_.end(), n.id) == candidates_.end()) candidates_.push_back(n.id);
    }
  }
  // A connection already open to a candidate goes first.
  if (conn_node_) {
    auto it = std::find(candidates_.begin(), candidates_.end(), *conn_node_);
    if (it != candidates_.end()) std::rotate(candidates_.begin(), it, it + 1);
  }
  tried_ = 0;
  errors_.clear();
  attempt();
}

// As the data path meets the node: its own sslmode, else [server_tls]'s, with the same files; and
// `host` as configured, so verify-full checks the certificate against the name the node has in the
// config while libpq connects to the address resolved at start (hostaddr, never a lookup here).
std::string SecretLookup::conninfo(routing::NodeId node) const {
  const conf::Config& cfg = w_.config();
  const NodeAddress& a = w_.shared().node_addrs[node];
  const std::string port = a.text.substr(a.text.rfind(':') + 1);
  std::string ci = "hostaddr=" + numeric_host(a) + " port=" + port + " user=" + conninfo_value(cfg.auth.user) +
                   " dbname=" + conninfo_value(cfg.auth.dbname) + " application_name=pgkeel-auth connect_timeout=" +
                   std::to_string(std::max<long>(1, (cfg.auth.query_timeout.count() + 999) / 1000));
  if (!cfg.auth.password.empty()) ci += " password=" + conninfo_value(cfg.auth.password);
  if (node < cfg.nodes.size()) {
    const conf::NodeConfig& nc = cfg.nodes[node];
    if (!nc.host.empty() && nc.host[0] != '/') ci += " host=" + conninfo_value(nc.host);
    ci += health::tls_conninfo(nc.sslmode_set ? nc.sslmode : cfg.server_tls.sslmode, cfg.server_tls);
  } else {
    ci += health::tls_conninfo(cfg.server_tls.sslmode, cfg.server_tls);
  }
  return ci;
}

void SecretLookup::attempt() {
  const std::string user = queue_.front().user;
  const conf::Config& cfg = w_.config();
  if (tried_ >= candidates_.size()) {
    Result r;
    r.error = errors_.empty() ? "no node to ask" : errors_;
    // No node answered: the last answer, if fresh enough, keeps logins working.
    if (std::optional<SecretCache::Entry> e = w_.shared().secrets.get(user, cfg.auth, std::chrono::steady_clock::now())) {
      r.status = e->auth ? Result::Status::kFound : Result::Status::kNotFound;
      r.auth = e->auth;
      r.from_cache = true;
    }
    finish(std::move(r));
    return;
  }
  const routing::NodeId node = candidates_[tried_++];
  const std::string ci = conninfo(node);
  if (!conn_ || !conn_node_ || *conn_node_ != node || conn_info_ != ci) {
    conn_ = std::make_unique<health::PgAsync>(w_.base(), ci);
    conn_node_ = node;
    conn_info_ = ci;
  }
  // A bound parameter ($1, sent apart from the SQL in Bind): no quoting to get wrong, whatever
  // standard_conforming_strings the lookup's session has.
  conn_->run_params(cfg.auth.query, {user}, cfg.auth.query_timeout, [this, node, user](const health::PgResult& res) {
    const std::string name = node < w_.snapshot().nodes.size() ? w_.snapshot().nodes[node].name : std::to_string(node);
    if (!res.ok) {
      errors_ += (errors_.empty() ? "" : "; ") + name + ": " + res.error;
      log::warning("auth").kv("event", "auth_query_failed").kv("node", name).kv("user", user).kv("reason", res.error).emit();
      conn_.reset();  // from the loop: PgAsync calls back after its own work is done
      conn_node_.reset();
      conn_info_.clear();
      attempt();
      return;
    }
    Result r;
    r.node = name;
    const bool has_secret = !res.rows.empty() && !res.rows[0].empty() && res.rows[0].back().has_value();
    if (has_secret) {
      std::string error;
      std::optional<UserAuth> a = make_user_auth(user, *res.rows[0].back(), error);
      if (!a) {
        log::warning("auth").kv("event", "auth_query_bad_secret").kv("user", user).kv("reason", error).emit();
        r.status = Result::Status::kNotFound;
      } else {
        r.status = Result::Status::kFound;
        r.auth = std::make_shared<const UserAuth>(std::move(*a));
      }
    } else {
      r.status = Result::Status::kNotFound;
    }
    const auto now = std::chrono::steady_clock::now();
    w_.shared().secrets.put(user, {r.auth, now}, w_.config().auth, now);
    finish(std::move(r));
  });
}

void SecretLookup::finish(Result r) {
  Waiting done = std::move(queue_.front());
  by_user_.erase(done.user);
  queue_.pop_front();
  for (std::size_t i = 0; i < done.done.size(); ++i) {
    done.done[i](i + 1 == done.done.size() ? std::move(r) : r);
  }
  next();
}

std::chrono::milliseconds AuthThrottle::failed(const std::string& address, const conf::AuthConfig& cfg,
                                               std::chrono::steady_clock::time_point now) {
  if (cfg.max_failures <= 0) return std::chrono::milliseconds(0);
  std::lock_guard lock(mu_);
  if (map_.size() > 100000) map_.clear();  // bounded, whatever an attacker's address space
  Record& r = map_[address];
  if (r.failures == 0 || now - r.first > cfg.failure_window) {
    r.failures = 0;
    r.first = now;
  }
  ++r.failures;
  const int over = r.failures - cfg.max_failures;
  if (over <= 0) return std::chrono::milliseconds(0);
  const auto delay = cfg.failure_delay * (1LL << std::min(over - 1, 10));
  return std::min<std::chrono::milliseconds>(delay, std::chrono::seconds(5));
}

void AuthThrottle::succeeded(const std::string& address) {
  std::lock_guard lock(mu_);
  map_.erase(address);
}

bool AuthThrottle::throttled(const std::string& address, const conf::AuthConfig& cfg,
                             std::chrono::steady_clock::time_point now) {
  if (cfg.max_failures <= 0) return false;
  std::lock_guard lock(mu_);
  auto it = map_.find(address);
  return it != map_.end() && now - it->second.first <= cfg.failure_window && it->second.failures >= cfg.max_failures;
}

}  // namespace pgkeel::proxy
