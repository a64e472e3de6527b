#include "proxy/status.h"

#include <atomic>
#include <cstdio>
#include <ctime>
#include <variant>

#include "conf/describe.h"
#include "proxy/route.h"
#include "proxy/shared.h"
#include "proxy/worker.h"
#include "routing/router.h"

namespace pgkeel::proxy {
namespace {

using Cell = std::optional<std::string>;

std::string fixed(double v, int digits) {
  char b[48];
  std::snprintf(b, sizeof b, "%.*f", digits, v);
  return b;
}

Cell opt(const std::string& s) {
  if (s.empty()) return std::nullopt;
  return s;
}

std::string yes_no(bool b) { return b ? "yes" : "no"; }

std::vector<const WorkerStats*> worker_stats(const Shared& sh) {
  std::vector<const WorkerStats*> out;
  for (const Worker* w : sh.workers) out.push_back(&w->stats());
  return out;
}

void fill_listeners(const Shared& sh, StatusSnapshot& s) {
  const routing::Snapshot& snap = *s.routes;
  for (std::size_t i = 0; i < s.config->listeners.size(); ++i) {
    const conf::ListenerConfig& l = s.config->listeners[i];
    if (l.retired) continue;
    ListenerRow r;
    r.name = l.name;
    r.address = l.host + ":" + std::to_string(l.port);
    if (!l.unix_socket_dir.empty()) r.unix_socket = l.unix_socket_dir + "/.s.PGSQL." + std::to_string(l.port);
    r.intent = std::string(routing::to_string(l.intent));
    r.pool_mode = l.pool_mode == conf::PoolMode::kTransaction ? "transaction" : "session";
    r.paused = i < kMaxListeners && sh.listener_paused[i].load(std::memory_order_relaxed);
    if (l.intent == routing::Intent::kReadWrite && sh.writes_paused.load(std::memory_order_relaxed)) r.paused = true;
    const routing::Decision d = route_for(sh, snap, l);
    if (const auto* route = std::get_if<routing::Route>(&d)) {
      r.routes_to = snap.nodes[route->node].name;
      r.why = l.intent == routing::Intent::kReadWrite ? snap.why : std::string(route->why);
    } else {
      r.why = std::string(std::get<routing::NoRoute>(d).why);
      if (snap.hold) r.why += "; clients wait: " + snap.why;
    }
    s.listeners.push_back(std::move(r));
  }
}

}  // namespace

std::string iso_time(std::chrono::system_clock::time_point t) {
  const std::time_t tt = std::chrono::system_clock::to_time_t(t);
  std::tm tm{};
  gmtime_r(&tt, &tm);
  char buf[40];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count() % 1000;
  char out[56];
  std::snprintf(out, sizeof out, "%s.%03dZ", buf, static_cast<int>(ms));
  return out;
}

void gather_status(Shared& sh, bool with_connections, std::function<void(std::shared_ptr<const StatusSnapshot>)> done) {
  auto s = std::make_shared<StatusSnapshot>();
  s->taken = std::chrono::system_clock::now();
  s->version = PGKEEL_VERSION;
  s->uptime_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - sh.started).count();
  s->config = sh.config;
  s->routes = sh.table.current();
  if (sh.keeper != nullptr) {
    s->keeper_running = true;
    s->nodes = sh.keeper->nodes();
    s->events = sh.keeper->events();
    s->peers = sh.keeper->peers();
    s->plan = sh.keeper->plan();
    s->keeper = sh.keeper->counters();
    s->failover_running = sh.keeper->failover_running();
  }
  fill_listeners(sh, *s);
  const std::size_t nl = s->config->listeners.size();
  const std::size_t nn = s->config->nodes.size();
  s->total = sum_stats(worker_stats(sh), nl, nn);
  if (const StatsSample* old = sh.history.at_least(std::chrono::seconds(60), s->total.at)) {
    s->last_minute_s = std::chrono::duration<double>(s->total.at - old->at).count();
    s->last_minute.at = s->total.at;
    s->last_minute.by_listener.resize(nl);
    s->last_minute.by_node.resize(nn);
    for (std::size_t i = 0; i < nl && i < old->by_listener.size(); ++i) {
      s->last_minute.by_listener[i] = s->total.by_listener[i].minus(old->by_listener[i]);
    }
    for (std::size_t i = 0; i < nn && i < old->by_node.size(); ++i) {
      s->last_minute.by_node[i] = s->total.by_node[i].minus(old->by_node[i]);
    }
  } else {
    s->last_minute = s->total;
    s->last_minute_s = s->uptime_s;
  }
  s->reloads = sh.reloads.load();
  s->reload_failures = sh.reload_failures.load();
  if (!with_connections || sh.workers.empty()) {
    done(s);
    return;
  }
  s->with_connections = true;
  // Each worker fills its own report; the last one to finish hands the snapshot back to main.
  auto reports = std::make_shared<std::vector<WorkerReport>>(sh.workers.size());
  auto remaining = std::make_shared<std::atomic<int>>(static_cast<int>(sh.workers.size()));
  auto finish = std::make_shared<std::function<void(std::shared_ptr<const StatusSnapshot>)>>(std::move(done));
  for (std::size_t i = 0; i < sh.workers.size(); ++i) {
    sh.workers[i]->post([&sh, s, reports, remaining, finish, i](Worker& w) {
      w.report((*reports)[i]);
      if (remaining->fetch_sub(1) != 1) return;
      sh.post_main([s, reports, finish] {
        for (WorkerReport& r : *reports) {
          for (auto& c : r.clients) s->clients.push_back(std::move(c));
          for (auto& v : r.servers) s->servers.push_back(std::move(v));
          for (auto& p : r.pools) s->pools.push_back(std::move(p));
        }
        (*finish)(s);
      });
    });
  }
}

ConsoleTable nodes_table(const StatusSnapshot& s) {
  ConsoleTable t;
  t.columns = {"name", "address", "role", "state", "fenced", "enabled", "system_identifier", "timeline", "lsn",
               "lag_bytes", "lag_seconds", "sync_state", "application_name", "last_probe", "probe_ms", "last_error",
               "probes", "probe_failures", "timeouts_excused", "standing", "rejoin", "rejoin_attempts", "rejoin_why",
               "rejoin_error"};
  for (const health::NodeStatus& n : s.nodes) {
    // The writer's sync_state is synchronous replication's as a whole (honoured, degraded,
    // waiting, off); a standby's is its own, as the primary reports it.
    const bool writer = n.role == "primary (writer)";
    const Cell sync = writer ? Cell(std::string(health::to_string(s.keeper.sync_health))) : opt(n.sync_state);
    t.rows.push_back({n.name, n.address, n.role, n.health, yes_no(n.fenced), yes_no(n.enabled), opt(n.system_identifier),
                      n.timeline ? Cell(std::to_string(n.timeline)) : std::nullopt, opt(n.lsn),
                      n.lag_bytes ? Cell(std::to_string(*n.lag_bytes)) : std::nullopt,
                      n.lag_seconds ? Cell(fixed(*n.lag_seconds, 3)) : std::nullopt, sync, opt(n.application_name),
                      opt(n.last_probe), fixed(n.probe_ms, 1), opt(n.last_error), std::to_string(n.probes),
                      std::to_string(n.probe_failures), std::to_string(n.timeouts_excused), opt(n.standing),
                      opt(n.rejoin), std::to_string(n.rejoin_attempts), opt(n.rejoin_why), opt(n.rejoin_error)});
  }
  return t;
}

ConsoleTable routes_table(const StatusSnapshot& s) {
  ConsoleTable t;
  t.columns = {"listener", "address", "intent", "pool_mode", "node", "epoch", "paused", "why"};
  for (const ListenerRow& l : s.listeners) {
    t.rows.push_back({l.name, l.address, l.intent, l.pool_mode, opt(l.routes_to), std::to_string(s.routes->epoch),
                      yes_no(l.paused), l.why});
  }
  return t;
}

ConsoleTable plan_table(const StatusSnapshot& s) {
  ConsoleTable t;
  t.columns = {"node", "eligible", "lsn", "chosen", "verdict"};
  for (const health::Verdict& v : s.plan.candidates) {
    const bool chosen = s.plan.chosen && *s.plan.chosen == v.id;
    t.rows.push_back({v.name, yes_no(v.eligible), health::format_lsn(v.lsn), yes_no(chosen), v.why});
  }
  return t;
}

ConsoleTable events_table(const StatusSnapshot& s) {
  ConsoleTable t;
  t.columns = {"id", "time", "epoch", "kind", "node", "detail"};
  for (const health::Event& e : s.events) {
    t.rows.push_back({std::to_string(e.id), iso_time(e.at), std::to_string(e.epoch), e.kind, opt(e.node), e.text});
  }
  return t;
}

ConsoleTable peers_table(const StatusSnapshot& s) {
  ConsoleTable t;
  t.columns = {"instance", "address", "role", "applied_epoch", "lease_age_seconds", "store_reachable"};
  for (const health::PeerStatus& p : s.peers) {
    char age[32] = "";
    if (p.lease_age_s) std::snprintf(age, sizeof age, "%.1f", *p.lease_age_s);
    t.rows.push_back({p.instance, p.address, p.role, std::to_string(p.applied_epoch),
                      p.lease_age_s ? std::optional<std::string>(age) : std::nullopt, p.store_reachable ? "yes" : "no"});
  }
  return t;
}

ConsoleTable listeners_table(const StatusSnapshot& s) {
  ConsoleTable t;
  t.columns = {"name", "address", "unix_socket", "intent", "pool_mode", "paused", "clients"};
  std::vector<int> counts(s.listeners.size(), 0);
  for (const ClientRow& c : s.clients) {
    for (std::size_t i = 0; i < s.listeners.size(); ++i) {
      if (s.listeners[i].name == c.listener) ++counts[i];
    }
  }
  for (std::size_t i = 0; i < s.listeners.size(); ++i) {
    const ListenerRow& l = s.listeners[i];
    t.rows.push_back({l.name, l.address, opt(l.unix_socket), l.intent, l.pool_mode, yes_no(l.paused),
                      s.with_connections ? Cell(std::to_string(counts[i])) : std::nullopt});
  }
  return t;
}

ConsoleTable clients_table(const StatusSnapshot& s) {
  ConsoleTable t;
  t.columns = {"id", "address", "listener", "user", "database", "application_name", "state", "state_seconds",
               "connected_seconds", "server", "node", "backend_pid", "tls"};
  for (const ClientRow& c : s.clients) {
    t.rows.push_back({c.id, c.address, c.listener, opt(c.user), opt(c.database), opt(c.application_name), c.state,
                      c.state_s > 0 ? Cell(fixed(c.state_s, 3)) : std::nullopt, fixed(c.connected_s, 3), opt(c.server),
                      opt(c.node), c.backend_pid ? Cell(std::to_string(c.backend_pid)) : std::nullopt, yes_no(c.tls)});
  }
  return t;
}

ConsoleTable servers_table(const StatusSnapshot& s) {
  ConsoleTable t;
  t.columns = {"id", "node", "address", "user", "database", "state", "client", "backend_pid", "epoch", "age_seconds",
               "idle_seconds"};
  for (const ServerRow& v : s.servers) {
    t.rows.push_back({v.id, v.node, v.address, v.user, v.database, v.state, opt(v.client),
                      v.backend_pid ? Cell(std::to_string(v.backend_pid)) : std::nullopt, std::to_string(v.epoch),
                      fixed(v.age_s, 3), fixed(v.idle_s, 3)});
  }
  return t;
}

ConsoleTable pools_table(const StatusSnapshot& s) {
  ConsoleTable t;
  t.columns = {"worker", "node", "user", "database", "idle", "active", "connecting", "waiting_clients"};
  for (const PoolRow& p : s.pools) {
    t.rows.push_back({std::to_string(p.worker), p.node, p.user, p.database, std::to_string(p.idle),
                      std::to_string(p.active), std::to_string(p.connecting), std::to_string(p.waiting_clients)});
  }
  return t;
}

ConsoleTable stats_table(const StatusSnapshot& s) {
  ConsoleTable t;
  t.columns = {"scope", "name", "transactions", "queries", "bytes_in", "bytes_out", "avg_xact_ms", "p99_xact_ms",
               "avg_query_ms", "p99_query_ms", "last_minute_transactions", "last_minute_queries",
               "last_minute_avg_query_ms", "last_minute_p99_query_ms", "last_minute_p99_xact_ms"};
  auto row = [&](const char* scope, const std::string& name, const TrafficTotals& a, const TrafficTotals& m) {
    t.rows.push_back({scope, name, std::to_string(a.transactions), std::to_string(a.queries), std::to_string(a.bytes_in),
                      std::to_string(a.bytes_out), fixed(a.avg_xact_ms(), 3),
                      fixed(TrafficTotals::quantile_ms(a.xact_buckets, 0.99), 3), fixed(a.avg_query_ms(), 3),
                      fixed(TrafficTotals::quantile_ms(a.query_buckets, 0.99), 3), std::to_string(m.transactions),
                      std::to_string(m.queries), fixed(m.avg_query_ms(), 3),
                      fixed(TrafficTotals::quantile_ms(m.query_buckets, 0.99), 3),
                      fixed(TrafficTotals::quantile_ms(m.xact_buckets, 0.99), 3)});
  };
  for (std::size_t i = 0; i < s.total.by_listener.size() && i < s.config->listeners.size(); ++i) {
    if (!s.config->listeners[i].retired) row("listener", s.config->listeners[i].name, s.total.by_listener[i], s.last_minute.by_listener[i]);
  }
  for (std::size_t i = 0; i < s.total.by_node.size() && i < s.config->nodes.size(); ++i) {
    if (!s.config->nodes[i].retired) row("node", s.config->nodes[i].name, s.total.by_node[i], s.last_minute.by_node[i]);
  }
  return t;
}

ConsoleTable config_table(const StatusSnapshot& s) {
  ConsoleTable t;
  t.columns = {"key", "value"};
  for (auto& [k, v] : conf::describe(*s.config)) t.rows.push_back({k, v});
  return t;
}

}  // namespace pgkeel::proxy
