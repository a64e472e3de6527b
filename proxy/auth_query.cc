#include "proxy/auth_query.h"

#include <arpa/inet.h>

#include <algorithm>

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

std::optional<SecretCache::Entry> SecretCache::get(const std::string& user) const {
  std::lock_guard lock(mu_);
  auto it = map_.find(user);
  if (it == map_.end()) return std::nullopt;
  return it->second;
}

void SecretCache::put(const std::string& user, Entry entry) {
  std::lock_guard lock(mu_);
  map_[user] = std::move(entry);
}

std::string bind_user(const std::string& query, const std::string& user) {
  std::string literal = "'";
  for (char c : user) {
    if (c == '\'') literal += '\'';
    literal += c;
  }
  literal += '\'';
  std::string out;
  for (std::size_t i = 0; i < query.size(); ++i) {
    if (query[i] == '$' && i + 1 < query.size() && query[i + 1] == '1' &&
        (i + 2 == query.size() || !std::isdigit(static_cast<unsigned char>(query[i + 2])))) {
      out += literal;
      ++i;
    } else {
      out += query[i];
    }
  }
  return out;
}

SecretLookup::SecretLookup(Worker& w) : w_(w) {}
SecretLookup::~SecretLookup() = default;

void SecretLookup::fetch(const std::string& user, Done done) {
  queue_.emplace_back(user, std::move(done));
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
      if (n.fenced || !n.enabled) continue;
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

void SecretLookup::attempt() {
  const std::string user = queue_.front().first;
  const conf::Config& cfg = w_.config();
  if (tried_ >= candidates_.size()) {
    Result r;
    r.error = errors_.empty() ? "no node to ask" : errors_;
    // No node answered: the last answer, if fresh enough, keeps logins working.
    if (std::optional<SecretCache::Entry> e = w_.shared().secrets.get(user);
        e && std::chrono::steady_clock::now() - e->fetched <= cfg.auth.cache_lifetime) {
      r.status = e->auth ? Result::Status::kFound : Result::Status::kNotFound;
      r.auth = e->auth;
      r.from_cache = true;
    }
    finish(std::move(r));
    return;
  }
  const routing::NodeId node = candidates_[tried_++];
  if (!conn_ || !conn_node_ || *conn_node_ != node) {
    const NodeAddress& a = w_.shared().node_addrs[node];
    const std::string port = a.text.substr(a.text.rfind(':') + 1);
    std::string ci = "hostaddr=" + numeric_host(a) + " port=" + port + " user=" + conninfo_value(cfg.auth.user) +
                     " dbname=" + conninfo_value(cfg.auth.dbname) + " application_name=pgkeel-auth connect_timeout=" +
                     std::to_string(std::max<long>(1, (cfg.auth.query_timeout.count() + 999) / 1000));
    if (!cfg.auth.password.empty()) ci += " password=" + conninfo_value(cfg.auth.password);
    conn_ = std::make_unique<health::PgAsync>(w_.base(), ci);
    conn_node_ = node;
  }
  conn_->run(bind_user(cfg.auth.query, user), cfg.auth.query_timeout, [this, node, user](const health::PgResult& res) {
    const std::string name = node < w_.snapshot().nodes.size() ? w_.snapshot().nodes[node].name : std::to_string(node);
    if (!res.ok) {
      errors_ += (errors_.empty() ? "" : "; ") + name + ": " + res.error;
      log::warning("auth").kv("event", "auth_query_failed").kv("node", name).kv("user", user).kv("reason", res.error).emit();
      conn_.reset();  // from the loop: PgAsync calls back after its own work is done
      conn_node_.reset();
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
    w_.shared().secrets.put(user, {r.auth, std::chrono::steady_clock::now()});
    finish(std::move(r));
  });
}

void SecretLookup::finish(Result r) {
  Done done = std::move(queue_.front().second);
  queue_.pop_front();
  done(std::move(r));
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

}  // namespace pgkeel::proxy
