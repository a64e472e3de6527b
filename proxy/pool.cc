#include "proxy/pool.h"

#include <algorithm>

#include "proxy/client.h"
#include "proxy/log.h"
#include "proxy/protocol/message.h"
#include "proxy/route.h"
#include "proxy/server.h"
#include "proxy/worker.h"
#include "routing/router.h"

namespace pgkeel::proxy {
namespace {

// Starts one more server connection for the pool if the per-node cap allows. The new
// connection logs in with `c`'s credential and goes to whichever waiter is first when ready.
bool try_connect(Worker& w, Pool& p, Client& c) {
  Shared& sh = w.shared();
  const conf::Config& cfg = w.config();
  const int cap = cfg.pool.max_server_conn_per_node;
  if (sh.server_conns[p.node].fetch_add(1, std::memory_order_relaxed) >= cap) {
    sh.server_conns[p.node].fetch_sub(1, std::memory_order_relaxed);
    p.blocked_by = "max_server_conn_per_node (" + std::to_string(cap) + ")";
    return false;
  }
  // Per user and per database: the reserve opens only to a client that has waited.
  const bool reserve = cfg.pool.reserve_pool_size > 0 && w.now() - c.wait_started() >= cfg.pool.reserve_pool_timeout;
  std::string full = sh.limits.server_enter(cfg, p.node, c.user(), c.server_database(), reserve);
  if (!full.empty()) {
    sh.server_conns[p.node].fetch_sub(1, std::memory_order_relaxed);
    // A warm connection of another pool key may hold the slot: give it back.
    if (w.close_idle_like(p.node, c.user(), c.server_database())) {
      full = sh.limits.server_enter(cfg, p.node, c.user(), c.server_database(), reserve);
      if (full.empty() && sh.server_conns[p.node].fetch_add(1, std::memory_order_relaxed) >= cap) {
        sh.server_conns[p.node].fetch_sub(1, std::memory_order_relaxed);
        sh.limits.server_leave(p.node, c.user(), c.server_database());
        full = "max_server_conn_per_node (" + std::to_string(cap) + ")";
      }
    }
    if (!full.empty()) {
      p.blocked_by = std::move(full);
      return false;
    }
  }
  ++p.total;
  ++p.connecting;
  w.new_server(p, c.session(), c.credential());
  return true;
}

void leave_slot_queue(Worker& w, Client& c) {
  if (!c.waiting_for_slot || c.waiting_pool == nullptr) return;
  c.waiting_for_slot = false;
  w.shared().node_waiters[c.waiting_pool->node].fetch_sub(1, std::memory_order_relaxed);
}

}  // namespace

StartupParams normalize_params(const StartupParams& client_params) {
  StartupParams out;
  for (const auto& param : client_params) {
    const std::string& k = param.first;
    const std::string& v = param.second;
    if (k == "user" || k == "database" || k == "replication" || k.rfind("_pq_.", 0) == 0) continue;
    auto it = std::find_if(out.begin(), out.end(), [&](const auto& e) { return e.first == k; });
    if (it != out.end()) {
      it->second = v;  // the last one wins, as in PostgreSQL
    } else {
      out.emplace_back(k, v);
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

namespace {

// user, server database and parameters, '\0'-separated after whatever `key` holds.
void append_server_side(std::string& key, const SessionKey& session) {
  key += '\0';
  key += session.user;
  key += '\0';
  key += session.server_database;
  for (const auto& [k, v] : session.params) {
    key += '\0';
    key += k;
    key += '=';
    key += v;
  }
}

}  // namespace

std::string make_pool_key(routing::NodeId node, const SessionKey& session) {
  std::string key = std::to_string(node);
  append_server_side(key, session);
  return key;
}

std::string make_session_text(const SessionKey& session) {
  std::string text = session.database;
  append_server_side(text, session);
  return text;
}

void request_server(Worker& w, Client& c) {
  const routing::Snapshot& snap = w.snapshot();
  const conf::ListenerConfig& listener = w.config().listeners[c.listener_index()];
  routing::Decision d;
  if (c.read_only_transaction() && listener.intent == routing::Intent::kReadWrite) {
    // read_write_split: a read-only transaction goes where a read-only listener would send it,
    // with the primary as the fallback, and with read_your_writes no further behind than the
    // session's last write.
    conf::ListenerConfig reads = listener;
    reads.intent = routing::Intent::kReadOnly;
    reads.read_fallback_primary = true;
    d = route_for(w.shared(), snap, reads, c.id(), c.min_replay_lsn());
  } else {
    d = route_for(w.shared(), snap, listener, c.id());
  }
  if (const auto* no = std::get_if<routing::NoRoute>(&d)) {
    if (snap.hold) {
      // A writer is expected (a failover is running, or pgkeel is starting): wait for it.
      log::info("client").kv("event", "held").kv("conn", c.name()).kv("reason", snap.why).kv("epoch", snap.epoch).emit();
      w.hold(&c);
      return;
    }
    std::string err;
    protocol::append_error(err, {"FATAL", "57P03", "no node can serve this connection now: " + std::string(no->why) +
                                                   (snap.why.empty() ? "" : " (" + snap.why + ")"), {}, {}});
    log::warning("client").kv("event", "no_route").kv("conn", c.name()).kv("reason", no->why).kv("epoch", snap.epoch).emit();
    c.on_server_failed(err);
    return;
  }
  const routing::NodeId node = std::get<routing::Route>(d).node;
  Pool* cached = c.last_pool(node);
  if (cached == nullptr) {
    cached = &w.pool_for(make_pool_key(node, *c.session()), node);
    c.set_last_pool(cached);
  }
  Pool& p = *cached;
  while (!p.idle.empty()) {
    Server* s = p.idle.back();
    p.idle.pop_back();
    if (s->epoch() != snap.epoch) {
      s->close("routing epoch changed");
      continue;
    }
    c.on_server_ready(s);
    return;
  }
  p.waiters.push_back(&c);
  c.waiting_pool = &p;
  feed_waiters(w, p);
}

void feed_waiters(Worker& w, Pool& p) {
  int covered = p.connecting;  // each connection in flight will serve one waiter
  for (Client* c : p.waiters) {
    if (covered > 0) {
      --covered;
      leave_slot_queue(w, *c);
      continue;
    }
    if (try_connect(w, p, *c)) {
      leave_slot_queue(w, *c);
      continue;
    }
    if (!c->waiting_for_slot) {
      c->waiting_for_slot = true;  // the node is at its cap: other workers give back idle slots
      w.shared().node_waiters[p.node].fetch_add(1, std::memory_order_relaxed);
    }
  }
}

void cancel_wait(Worker& w, Client& c) {
  Pool* p = c.waiting_pool;
  if (p == nullptr) return;
  leave_slot_queue(w, c);
  auto it = std::find(p->waiters.begin(), p->waiters.end(), &c);
  if (it != p->waiters.end()) p->waiters.erase(it);
  c.waiting_pool = nullptr;
}

void server_available(Worker& w, Server& s) {
  Pool& p = s.pool();
  if (s.counted_connecting) {
    s.counted_connecting = false;
    --p.connecting;
  }
  if (s.epoch() != w.snapshot().epoch) {
    s.close("routing epoch changed");
    return;
  }
  if (!p.waiters.empty()) {
    Client* c = p.waiters.front();
    p.waiters.pop_front();
    leave_slot_queue(w, *c);
    c->waiting_pool = nullptr;
    c->on_server_ready(&s);
    return;
  }
  // pool_size warm connections per pool key, shared out evenly over the workers.
  const std::size_t workers = std::max<std::size_t>(1, w.shared().workers.size());
  const std::size_t keep = (static_cast<std::size_t>(w.config().pool.pool_size) + workers - 1) / workers;
  if (p.idle.size() >= std::max<std::size_t>(1, keep)) {
    s.close("pool_size reached");
    return;
  }
  p.idle.push_back(&s);
}

void server_login_failed(Worker& w, Server& s, const std::string& error_response, bool transport) {
  Pool& p = s.pool();
  if (s.counted_connecting) {
    s.counted_connecting = false;
    --p.connecting;
  }
  const routing::Snapshot& snap = w.snapshot();
  const bool to_writer = snap.writer && *snap.writer == s.node();
  if (transport && to_writer && w.shared().report_transport_failure) w.shared().report_transport_failure(s.node());
  if (!p.waiters.empty()) {
    Client* c = p.waiters.front();
    p.waiters.pop_front();
    leave_slot_queue(w, *c);
    c->waiting_pool = nullptr;
    if (transport && to_writer && w.config().failover.hold_timeout.count() > 0) {
      log::info("client").kv("event", "held").kv("conn", c->name()).kv("reason", "the primary did not answer; checking it").emit();
      w.hold(c);
    } else {
      c->on_server_failed(error_response);
    }
  }
  server_gone(w, s);
}

void server_gone(Worker& w, Server& s) {
  Pool& p = s.pool();
  if (s.counted_connecting) {
    s.counted_connecting = false;
    --p.connecting;
  }
  auto it = std::find(p.idle.begin(), p.idle.end(), &s);
  if (it != p.idle.end()) p.idle.erase(it);
  --p.total;
  w.shared().server_conns[p.node].fetch_sub(1, std::memory_order_relaxed);
  w.shared().limits.server_leave(p.node, s.user(), s.database());
  w.retire(&s);
  if (!p.waiters.empty()) feed_waiters(w, p);
}

}  // namespace pgkeel::proxy
