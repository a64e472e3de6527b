#include "proxy/status_http.h"

#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstring>
#include <map>

#include <unistd.h>
#include <optional>
#include <string_view>
#include <tuple>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "health/failover.h"
#include "proxy/auth/base64.h"
#include "proxy/auth/crypto.h"
#include "proxy/auth/md5.h"
#include "proxy/auth/scram.h"
#include "proxy/handles.h"
#include "proxy/log.h"
#include "proxy/shared.h"
#include "proxy/stats.h"
#include "proxy/status.h"

namespace pgkeel::proxy {

// The status page, embedded at build time from proxy/status_page.html (see proxy/CMakeLists.txt).
extern const char kStatusPage[];
extern const std::size_t kStatusPageSize;

namespace {

// evhttp is used only here, so its owner lives here rather than in proxy/handles.h.
struct EvhttpDeleter {
  void operator()(evhttp* h) const { evhttp_free(h); }
};
using EvhttpPtr = std::unique_ptr<evhttp, EvhttpDeleter>;

constexpr int kRequestTimeoutS = 10;                       // idle keep-alive and slow senders
constexpr std::chrono::milliseconds kGatherTimeout{5000};  // a snapshot that never comes
constexpr std::chrono::milliseconds kWatchInterval{200};   // notices the first writer
// /metrics and /api/status answers are reused this long: one gather (every worker's report) and
// one rendering per kind per second, however many scrapers ask.
constexpr std::chrono::milliseconds kReuse{1000};
constexpr std::chrono::seconds kProvedFor{60};  // a checked Basic credential is trusted this long
constexpr std::size_t kMaxProved = 64;          // distinct credentials remembered
constexpr int kMaxChecksPerSecond = 16;         // password checks (PBKDF2) per second, all addresses
constexpr std::string_view kMetricsType = "text/plain; version=0.0.4; charset=utf-8";
constexpr std::string_view kJsonType = "application/json; charset=utf-8";
constexpr std::string_view kTextType = "text/plain; charset=utf-8";
constexpr std::string_view kHtmlType = "text/html; charset=utf-8";
// The page needs nothing but itself and /api/status.
constexpr std::string_view kPagePolicy =
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; "
    "img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

// ---- number formatting ------------------------------------------------------------------------

std::string fmt(std::uint64_t v) { return std::to_string(v); }

std::string fmt(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  if (ec != std::errc()) return "NaN";
  return std::string(buf, end);
}

// Microseconds as exact decimal seconds: 10 -> "0.00001", 2500000 -> "2.5".
std::string seconds_text(std::uint64_t us) {
  std::string whole = std::to_string(us / 1000000);
  std::string frac = std::to_string(us % 1000000);
  frac.insert(0, 6 - frac.size(), '0');
  while (!frac.empty() && frac.back() == '0') frac.pop_back();
  return frac.empty() ? whole : whole + "." + frac;
}

double us_to_s(std::uint64_t us) { return static_cast<double>(us) / 1e6; }

// ---- Prometheus text exposition format 0.0.4 --------------------------------------------------

using Labels = std::vector<std::pair<std::string_view, std::string>>;

class Exposition {
 public:
  // Starts a metric family: HELP and TYPE, once, before its samples.
  void family(std::string_view name, std::string_view type, std::string_view help) {
    out_ += "# HELP ";
    out_ += name;
    out_ += ' ';
    for (char c : help) {
      if (c == '\\') {
        out_ += "\\\\";
      } else if (c == '\n') {
        out_ += "\\n";
      } else {
        out_ += c;
      }
    }
    out_ += "\n# TYPE ";
    out_ += name;
    out_ += ' ';
    out_ += type;
    out_ += '\n';
  }

  void sample(std::string_view name, const Labels& labels, const std::string& value) {
    out_ += name;
    if (!labels.empty()) {
      out_ += '{';
      bool first = true;
      for (const auto& [k, v] : labels) {
        if (!first) out_ += ',';
        first = false;
        out_ += k;
        out_ += "=\"";
        for (char c : v) {
          if (c == '\\') {
            out_ += "\\\\";
          } else if (c == '"') {
            out_ += "\\\"";
          } else if (c == '\n') {
            out_ += "\\n";
          } else {
            out_ += c;
          }
        }
        out_ += '"';
      }
      out_ += '}';
    }
    out_ += ' ';
    out_ += value;
    out_ += '\n';
  }
  void sample(std::string_view name, const Labels& labels, std::uint64_t v) { sample(name, labels, fmt(v)); }
  void sample(std::string_view name, const Labels& labels, double v) { sample(name, labels, fmt(v)); }
  void sample(std::string_view name, const Labels& labels, bool v) { sample(name, labels, std::string(v ? "1" : "0")); }

  // A latency histogram: the exposed 1-2-5 bounds (cumulative counts stay exact there), +Inf,
  // _sum and _count, all in seconds.
  void histogram(std::string_view name, const Labels& labels,
                 const std::array<std::uint64_t, LatencyBuckets::kCount>& buckets, std::uint64_t sum_us) {
    const std::string bucket = std::string(name) + "_bucket";
    std::uint64_t cumulative = 0;
    for (std::size_t i = 0; i + 1 < LatencyBuckets::kCount; ++i) {
      cumulative += buckets[i];
      if (!LatencyBuckets::exposed(i)) continue;
      Labels l = labels;
      l.emplace_back("le", seconds_text(LatencyBuckets::upper_us(i)));
      sample(bucket, l, cumulative);
    }
    cumulative += buckets[LatencyBuckets::kCount - 1];
    Labels l = labels;
    l.emplace_back("le", "+Inf");
    sample(bucket, l, cumulative);
    sample(std::string(name) + "_sum", labels, us_to_s(sum_us));
    sample(std::string(name) + "_count", labels, cumulative);
  }

  std::string take() { return std::move(out_); }

 private:
  std::string out_;
};

// A listener or node removed by a reload keeps its counters until a restart, under a name of its
// own (a node moved to a new address has a new entry under its old name).
std::string removed_name(const std::string& name, std::size_t i) {
  return name + " (removed, index " + std::to_string(i) + ")";
}

std::string listener_name(const StatusSnapshot& s, std::size_t i) {
  if (s.config && i < s.config->listeners.size()) {
    const conf::ListenerConfig& l = s.config->listeners[i];
    return l.retired ? removed_name(l.name, i) : l.name;
  }
  return "listener" + std::to_string(i);
}

std::string node_name(const StatusSnapshot& s, std::size_t i) {
  if (s.routes && i < s.routes->nodes.size()) {
    const routing::NodeView& n = s.routes->nodes[i];
    return n.retired ? removed_name(n.name, i) : n.name;
  }
  if (s.config && i < s.config->nodes.size()) {
    const conf::NodeConfig& n = s.config->nodes[i];
    return n.retired ? removed_name(n.name, i) : n.name;
  }
  return "node" + std::to_string(i);
}

const routing::NodeView* route_node(const StatusSnapshot& s, const std::string& name) {
  if (!s.routes) return nullptr;
  for (const routing::NodeView& n : s.routes->nodes) {
    if (n.name == name && !n.retired) return &n;
  }
  return nullptr;
}

std::string writer_name(const StatusSnapshot& s) {
  if (!s.routes || !s.routes->writer) return {};
  const routing::NodeView* n = s.routes->node(*s.routes->writer);
  return n ? n->name : std::string();
}

// Known states, so a series exists (at 0) before its first connection.
constexpr std::string_view kClientStates[] = {"startup", "auth",   "waiting", "held",
                                              "paused",  "active", "idle",    "idle in transaction"};
constexpr std::string_view kServerStates[] = {"connecting", "login", "idle", "active", "idle in transaction", "resetting"};
constexpr std::string_view kRoles[] = {"primary", "standby", "unknown"};
constexpr health::SyncMode kSyncModes[] = {health::SyncMode::kOff, health::SyncMode::kOn, health::SyncMode::kStrict};

// ---- JSON -------------------------------------------------------------------------------------

// Length of the valid UTF-8 sequence at s[i], or 0 (RFC 3629: no overlongs, no surrogates, ≤ U+10FFFF).
std::size_t utf8_sequence(std::string_view s, std::size_t i) {
  const auto b = [&](std::size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char c = b(i);
  std::size_t n = 0;
  unsigned char lo = 0x80;
  unsigned char hi = 0xBF;
  if (c >= 0xC2 && c <= 0xDF) {
    n = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    n = 3;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    n = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  if (i + n > s.size()) return 0;
  if (b(i + 1) < lo || b(i + 1) > hi) return 0;
  for (std::size_t k = 2; k < n; ++k) {
    if (b(i + k) < 0x80 || b(i + k) > 0xBF) return 0;
  }
  return n;
}

void append_json_string(std::string& out, std::string_view s) {
  static constexpr char kHex[] = "0123456789abcdef";
  out += '"';
  for (std::size_t i = 0; i < s.size();) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      switch (c) {
        case '"': out += "\\\""; break;
        case '\\': out += "\\\\"; break;
        case '\b': out += "\\b"; break;
        case '\f': out += "\\f"; break;
        case '\n': out += "\\n"; break;
        case '\r': out += "\\r"; break;
        case '\t': out += "\\t"; break;
        default:
          if (c < 0x20) {
            out += "\\u00";
            out += kHex[c >> 4];
            out += kHex[c & 0xF];
          } else {
            out += static_cast<char>(c);
          }
      }
      ++i;
      continue;
    }
    const std::size_t n = utf8_sequence(s, i);
    if (n == 0) {
      out += "\\ufffd";
      ++i;
    } else {
      out.append(s.substr(i, n));
      i += n;
    }
  }
  out += '"';
}

class Json {
 public:
  Json& key(std::string_view k) {
    comma();
    append_json_string(out_, k);
    out_ += ':';
    fresh_ = true;
    return *this;
  }
  Json& str(std::string_view v) {
    comma();
    append_json_string(out_, v);
    return *this;
  }
  Json& null() { return raw("null"); }
  Json& boolean(bool v) { return raw(v ? "true" : "false"); }
  Json& num(std::uint64_t v) { return raw(fmt(v)); }
  Json& num(double v) { return std::isfinite(v) ? raw(fmt(v)) : null(); }
  Json& begin_object() { return open('{'); }
  Json& end_object() { return close('}'); }
  Json& begin_array() { return open('['); }
  Json& end_array() { return close(']'); }
  Json& table(const ConsoleTable& t) {
    begin_array();
    for (const auto& row : t.rows) {
      begin_object();
      for (std::size_t c = 0; c < t.columns.size(); ++c) {
        key(t.columns[c]);
        if (c < row.size() && row[c]) {
          str(*row[c]);
        } else {
          null();
        }
      }
      end_object();
    }
    return end_array();
  }
  std::string take() { return std::move(out_); }

 private:
  void comma() {
    if (!fresh_) out_ += ',';
    fresh_ = false;
  }
  Json& raw(std::string_view v) {
    comma();
    out_ += v;
    return *this;
  }
  Json& open(char c) {
    comma();
    out_ += c;
    fresh_ = true;
    return *this;
  }
  Json& close(char c) {
    out_ += c;
    fresh_ = false;
    return *this;
  }

  std::string out_;
  bool fresh_ = true;  // no comma before the next value
};

}  // namespace

std::string json_string(std::string_view s) {
  std::string out;
  out.reserve(s.size() + 2);
  append_json_string(out, s);
  return out;
}

std::string render_metrics(const StatusSnapshot& s, const Readiness& r) {
  Exposition e;
  const std::string writer = writer_name(s);

  e.family("pgkeel_build_info", "gauge", "Always 1; the version label says which pgkeel runs.");
  e.sample("pgkeel_build_info", {{"version", s.version}}, true);
  e.family("pgkeel_uptime_seconds", "gauge", "Seconds since pgkeel started.");
  e.sample("pgkeel_uptime_seconds", {}, s.uptime_s);
  e.family("pgkeel_epoch", "gauge", "The routing epoch now in force (grows at every published routing change).");
  e.sample("pgkeel_epoch", {}, s.routes ? s.routes->epoch : std::uint64_t{0});
  if (!s.peers.empty()) {
    e.family("pgkeel_store_leader", "gauge", "[store]: 1 while this instance holds the leader lease.");
    e.sample("pgkeel_store_leader", {}, s.peers.front().role == "leader");
    e.family("pgkeel_store_reachable", "gauge", "[store]: 1 while this instance's lease is renewed in time.");
    e.sample("pgkeel_store_reachable", {}, s.peers.front().store_reachable);
    e.family("pgkeel_store_peers", "gauge", "[store]: instances with a live lease, this one included.");
    e.sample("pgkeel_store_peers", {}, static_cast<std::uint64_t>(s.peers.size()));
  }
  e.family("pgkeel_writer_routable", "gauge", "1 while a writable primary is routable (what /health says).");
  e.sample("pgkeel_writer_routable", {}, r.healthy);
  e.family("pgkeel_ready", "gauge", "1 while pgkeel can take clients (what /ready says).");
  e.sample("pgkeel_ready", {}, r.ready);
  e.family("pgkeel_draining", "gauge", "1 while pgkeel shuts down gracefully.");
  e.sample("pgkeel_draining", {}, r.draining);
  e.family("pgkeel_failover_in_progress", "gauge", "1 while a failover or switchover sequence runs.");
  e.sample("pgkeel_failover_in_progress", {}, s.failover_running);

  // ---- connections ----
  {
    std::map<std::pair<std::string, std::string>, std::uint64_t> clients;
    for (std::size_t i = 0; i < s.total.by_listener.size(); ++i) {
      for (std::string_view st : kClientStates) clients[{listener_name(s, i), std::string(st)}] = 0;
    }
    for (const ClientRow& c : s.clients) ++clients[{c.listener, c.state}];
    e.family("pgkeel_client_connections", "gauge", "Client connections now, by listener and state.");
    for (const auto& [k, n] : clients) e.sample("pgkeel_client_connections", {{"listener", k.first}, {"state", k.second}}, n);

    std::map<std::pair<std::string, std::string>, std::uint64_t> servers;
    for (std::size_t i = 0; i < s.total.by_node.size(); ++i) {
      for (std::string_view st : kServerStates) servers[{node_name(s, i), std::string(st)}] = 0;
    }
    for (const ServerRow& c : s.servers) ++servers[{c.node, c.state}];
    e.family("pgkeel_server_connections", "gauge", "Server connections now, by node and state.");
    for (const auto& [k, n] : servers) e.sample("pgkeel_server_connections", {{"node", k.first}, {"state", k.second}}, n);

    struct PoolSum {
      std::uint64_t idle = 0, active = 0, connecting = 0, waiting = 0;
    };
    std::map<std::tuple<std::string, std::string, std::string>, PoolSum> pools;
    for (const PoolRow& p : s.pools) {
      PoolSum& sum = pools[{p.node, p.user, p.database}];
      sum.idle += static_cast<std::uint64_t>(std::max(p.idle, 0));
      sum.active += static_cast<std::uint64_t>(std::max(p.active, 0));
      sum.connecting += static_cast<std::uint64_t>(std::max(p.connecting, 0));
      sum.waiting += static_cast<std::uint64_t>(std::max(p.waiting_clients, 0));
    }
    e.family("pgkeel_pool_server_connections", "gauge", "Server connections in pools, summed over workers, by node, user, database and state.");
    for (const auto& [k, p] : pools) {
      const auto& [node, user, db] = k;
      e.sample("pgkeel_pool_server_connections", {{"node", node}, {"user", user}, {"database", db}, {"state", "idle"}}, p.idle);
      e.sample("pgkeel_pool_server_connections", {{"node", node}, {"user", user}, {"database", db}, {"state", "active"}}, p.active);
      e.sample("pgkeel_pool_server_connections", {{"node", node}, {"user", user}, {"database", db}, {"state", "connecting"}}, p.connecting);
    }
    e.family("pgkeel_pool_waiting_clients", "gauge", "Clients waiting for a server connection, by node, user and database.");
    for (const auto& [k, p] : pools) {
      const auto& [node, user, db] = k;
      e.sample("pgkeel_pool_waiting_clients", {{"node", node}, {"user", user}, {"database", db}}, p.waiting);
    }
  }

  // ---- client and server events ----
  const EventTotals& ev = s.total.events;
  e.family("pgkeel_clients_accepted_total", "counter", "Client connections accepted.");
  e.sample("pgkeel_clients_accepted_total", {}, ev.clients_accepted);
  e.family("pgkeel_clients_refused_total", "counter", "Client connections refused (limits, bad startup, failed authentication).");
  e.sample("pgkeel_clients_refused_total", {}, ev.clients_refused);
  e.family("pgkeel_auth_failures_total", "counter", "Client authentication failures.");
  e.sample("pgkeel_auth_failures_total", {}, ev.auth_failures);
  e.family("pgkeel_server_connects_total", "counter", "Server connections opened.");
  e.sample("pgkeel_server_connects_total", {}, ev.server_connects);
  e.family("pgkeel_server_connect_failures_total", "counter", "Server connections that failed to open or log in.");
  e.sample("pgkeel_server_connect_failures_total", {}, ev.server_connect_failures);
  e.family("pgkeel_clients_held_total", "counter", "Clients that waited for a writer (failover hold or PAUSE).");
  e.sample("pgkeel_clients_held_total", {}, ev.held_clients);
  e.family("pgkeel_client_hold_seconds_total", "counter", "Total time clients waited for a writer.");
  e.sample("pgkeel_client_hold_seconds_total", {}, us_to_s(ev.held_us));

  // ---- traffic, per listener and per node ----
  struct Side {
    std::string_view prefix;  // pgkeel_listener / pgkeel_node
    std::string_view label;
    const std::vector<TrafficTotals>* totals;
    std::string (*name)(const StatusSnapshot&, std::size_t);
    std::string_view received_help;
    std::string_view sent_help;
  };
  const Side sides[] = {
      {"pgkeel_listener", "listener", &s.total.by_listener, &listener_name,
       "Bytes received from clients through this listener.", "Bytes sent to clients through this listener."},
      {"pgkeel_node", "node", &s.total.by_node, &node_name, "Bytes received from this node's servers.",
       "Bytes sent to this node's servers."},
  };
  for (const Side& side : sides) {
    const std::string p(side.prefix);
    const auto labels = [&](std::size_t i) { return Labels{{side.label, side.name(s, i)}}; };
    const auto& t = *side.totals;
    e.family(p + "_transactions_total", "counter", "Transactions completed (an autocommit statement is one).");
    for (std::size_t i = 0; i < t.size(); ++i) e.sample(p + "_transactions_total", labels(i), t[i].transactions);
    e.family(p + "_queries_total", "counter", "Query cycles completed (a Query, or extended-protocol messages up to Sync).");
    for (std::size_t i = 0; i < t.size(); ++i) e.sample(p + "_queries_total", labels(i), t[i].queries);
    // pgkeel's own view of the socket: a listener receives what clients send (bytes_in), a node
    // receives what servers send (bytes_out).
    const bool listener = side.label == "listener";
    e.family(p + "_received_bytes_total", "counter", side.received_help);
    for (std::size_t i = 0; i < t.size(); ++i) e.sample(p + "_received_bytes_total", labels(i), listener ? t[i].bytes_in : t[i].bytes_out);
    e.family(p + "_sent_bytes_total", "counter", side.sent_help);
    for (std::size_t i = 0; i < t.size(); ++i) e.sample(p + "_sent_bytes_total", labels(i), listener ? t[i].bytes_out : t[i].bytes_in);
    e.family(p + "_query_duration_seconds", "histogram", "Query cycle latency: first byte forwarded to ReadyForQuery.");
    for (std::size_t i = 0; i < t.size(); ++i) e.histogram(p + "_query_duration_seconds", labels(i), t[i].query_buckets, t[i].query_sum_us);
    e.family(p + "_transaction_duration_seconds", "histogram", "Transaction latency: first query to ReadyForQuery idle.");
    for (std::size_t i = 0; i < t.size(); ++i) e.histogram(p + "_transaction_duration_seconds", labels(i), t[i].xact_buckets, t[i].xact_sum_us);
  }
  e.family("pgkeel_listener_paused", "gauge", "1 while the listener is paused (PAUSE, or a switchover).");
  for (const ListenerRow& l : s.listeners) e.sample("pgkeel_listener_paused", {{"listener", l.name}}, l.paused);

  // ---- nodes, as the keeper sees them ----
  e.family("pgkeel_node_up", "gauge", "1 while the node answers probes.");
  for (const auto& n : s.nodes) e.sample("pgkeel_node_up", {{"node", n.name}}, n.health == "up");
  e.family("pgkeel_node_role", "gauge", "1 for the role the node reported at its last probe.");
  for (const auto& n : s.nodes) {
    // The keeper says "primary (writer)" for the writer; the writer is pgkeel_node_writer here.
    const std::string role = n.role.substr(0, n.role.find(' '));
    bool known = false;
    for (std::string_view known_role : kRoles) {
      known = known || role == known_role;
      e.sample("pgkeel_node_role", {{"node", n.name}, {"role", std::string(known_role)}}, role == known_role);
    }
    if (!known && !role.empty()) e.sample("pgkeel_node_role", {{"node", n.name}, {"role", role}}, true);
  }
  e.family("pgkeel_node_writer", "gauge", "1 for the node that takes writes under the current epoch.");
  for (const auto& n : s.nodes) e.sample("pgkeel_node_writer", {{"node", n.name}}, !writer.empty() && n.name == writer);
  e.family("pgkeel_node_rejoin_pending", "gauge",
           "1 while the node must rejoin or is rejoining (a returned old primary, a standby on an old timeline).");
  for (const auto& n : s.nodes) e.sample("pgkeel_node_rejoin_pending", {{"node", n.name}}, !n.rejoin.empty());
  e.family("pgkeel_rejoins_total", "counter", "Rejoins verified: the node streams from the primary on its timeline.");
  e.sample("pgkeel_rejoins_total", {}, s.keeper.rejoins);
  e.family("pgkeel_rejoin_failures_total", "counter", "rejoin_command failures and rejoins that did not verify.");
  e.sample("pgkeel_rejoin_failures_total", {}, s.keeper.rejoin_failures);
  e.family("pgkeel_node_fenced", "gauge", "1 while the node is fenced (receives no traffic).");
  for (const auto& n : s.nodes) {
    const routing::NodeView* v = route_node(s, n.name);
    e.sample("pgkeel_node_fenced", {{"node", n.name}}, v ? v->fenced : n.fenced);
  }
  e.family("pgkeel_node_enabled", "gauge", "0 while the node is disabled for maintenance.");
  for (const auto& n : s.nodes) {
    const routing::NodeView* v = route_node(s, n.name);
    e.sample("pgkeel_node_enabled", {{"node", n.name}}, v ? v->enabled : n.enabled);
  }
  e.family("pgkeel_node_timeline", "gauge", "The node's timeline at its last successful probe.");
  for (const auto& n : s.nodes) e.sample("pgkeel_node_timeline", {{"node", n.name}}, static_cast<std::uint64_t>(n.timeline));
  e.family("pgkeel_node_replication_lag_bytes", "gauge", "How far the standby's replay is behind the primary, in bytes (standbys only).");
  for (const auto& n : s.nodes) {
    if (n.lag_bytes) e.sample("pgkeel_node_replication_lag_bytes", {{"node", n.name}}, *n.lag_bytes);
  }
  e.family("pgkeel_node_replication_lag_seconds", "gauge", "How far the standby's replay is behind, in seconds (standbys only).");
  for (const auto& n : s.nodes) {
    if (n.lag_seconds) e.sample("pgkeel_node_replication_lag_seconds", {{"node", n.name}}, *n.lag_seconds);
  }
  e.family("pgkeel_node_probe_duration_seconds", "gauge", "Latency of the node's last probe (connect plus query).");
  for (const auto& n : s.nodes) e.sample("pgkeel_node_probe_duration_seconds", {{"node", n.name}}, n.probe_ms / 1000.0);
  e.family("pgkeel_node_probes_total", "counter", "Probes sent to the node.");
  for (const auto& n : s.nodes) e.sample("pgkeel_node_probes_total", {{"node", n.name}}, n.probes);
  e.family("pgkeel_node_probe_failures_total", "counter", "Probes that were refused, timed out or answered with an error.");
  for (const auto& n : s.nodes) e.sample("pgkeel_node_probe_failures_total", {{"node", n.name}}, n.probe_failures);
  e.family("pgkeel_node_probe_timeouts_excused_total", "counter",
           "Probe timeouts not counted toward a failure: pgkeel's own connections to the node answered meanwhile.");
  for (const auto& n : s.nodes) e.sample("pgkeel_node_probe_timeouts_excused_total", {{"node", n.name}}, n.timeouts_excused);

  // ---- synchronous replication and the keeper's sequences ----
  e.family("pgkeel_sync_mode", "gauge", "1 for the configured synchronous_mode.");
  for (health::SyncMode m : kSyncModes) {
    e.sample("pgkeel_sync_mode", {{"mode", std::string(health::to_string(m))}}, s.keeper.sync_mode == m);
  }
  e.family("pgkeel_sync_degraded", "gauge", "1 while commits are acknowledged without a standby (synchronous_mode is not off).");
  e.sample("pgkeel_sync_degraded", {}, s.keeper.degraded);
  e.family("pgkeel_sync_waiting", "gauge", "1 while commits wait for a standby that does not acknowledge (strict).");
  e.sample("pgkeel_sync_waiting", {}, s.keeper.sync_health == health::SyncHealth::kWaiting);
  e.family("pgkeel_sync_degradations_total", "counter", "Times synchronous replication was lost (on -> degraded).");
  e.sample("pgkeel_sync_degradations_total", {}, s.keeper.degradations);
  e.family("pgkeel_failovers_total", "counter", "Failovers completed (a standby was promoted).");
  e.sample("pgkeel_failovers_total", {}, s.keeper.failovers);
  e.family("pgkeel_failovers_refused_total", "counter", "Failovers needed or asked for that were refused or aborted.");
  e.sample("pgkeel_failovers_refused_total", {}, s.keeper.failovers_refused);
  e.family("pgkeel_switchovers_total", "counter", "Planned switchovers completed.");
  e.sample("pgkeel_switchovers_total", {}, s.keeper.switchovers);
  e.family("pgkeel_switchovers_aborted_total", "counter", "Planned switchovers aborted.");
  e.sample("pgkeel_switchovers_aborted_total", {}, s.keeper.switchovers_aborted);
  e.family("pgkeel_reloads_total", "counter", "Configuration reloads applied.");
  e.sample("pgkeel_reloads_total", {}, s.reloads);
  e.family("pgkeel_reload_failures_total", "counter", "Configuration reloads refused (the running configuration was kept).");
  e.sample("pgkeel_reload_failures_total", {}, s.reload_failures);
  return e.take();
}

std::string render_status_json(const StatusSnapshot& s, const Readiness& r, bool connections) {
  Json j;
  j.begin_object();
  j.key("version").str(s.version);
  j.key("taken").str(iso_time(s.taken));
  j.key("uptime_seconds").num(s.uptime_s);
  j.key("epoch").num(s.routes ? s.routes->epoch : std::uint64_t{0});
  const std::string writer = writer_name(s);
  j.key("writer");
  if (writer.empty()) {
    j.null();
  } else {
    j.str(writer);
  }
  j.key("writer_why").str(s.routes ? s.routes->why : std::string());
  j.key("hold").boolean(s.routes && s.routes->hold);
  j.key("healthy").boolean(r.healthy);
  j.key("health_why").str(r.health_why);
  j.key("ready").boolean(r.ready);
  j.key("ready_why").str(r.ready_why);
  j.key("draining").boolean(r.draining);
  j.key("keeper_running").boolean(s.keeper_running);
  j.key("failover_running").boolean(s.failover_running);
  j.key("sync_mode").str(health::to_string(s.keeper.sync_mode));
  j.key("degraded").boolean(s.keeper.degraded);
  j.key("sync_health").str(health::to_string(s.keeper.sync_health));
  j.key("sync_why").str(s.keeper.sync_why);
  j.key("record_error").str(s.keeper.record_error);
  j.key("rejoin_why").str(s.keeper.rejoin_why);
  j.key("store_why").str(s.keeper.store_cut_why);
  j.key("plan_summary").str(s.plan.summary);
  j.key("counters").begin_object();
  j.key("failovers").num(s.keeper.failovers);
  j.key("failovers_refused").num(s.keeper.failovers_refused);
  j.key("switchovers").num(s.keeper.switchovers);
  j.key("switchovers_aborted").num(s.keeper.switchovers_aborted);
  j.key("degradations").num(s.keeper.degradations);
  j.key("probe_timeouts_excused").num(s.keeper.timeouts_excused);
  j.key("rejoins").num(s.keeper.rejoins);
  j.key("rejoin_failures").num(s.keeper.rejoin_failures);
  j.key("reloads").num(s.reloads);
  j.key("reload_failures").num(s.reload_failures);
  j.key("clients_accepted").num(s.total.events.clients_accepted);
  j.key("clients_held").num(s.total.events.held_clients);
  j.end_object();
  j.key("connections").begin_object();
  j.key("clients").num(static_cast<std::uint64_t>(s.clients.size()));
  j.key("servers").num(static_cast<std::uint64_t>(s.servers.size()));
  j.end_object();
  j.key("nodes").table(nodes_table(s));
  j.key("routes").table(routes_table(s));
  j.key("failover_plan").table(plan_table(s));
  j.key("events").table(events_table(s));
  j.key("peers").table(peers_table(s));
  j.key("listeners").table(listeners_table(s));
  j.key("pools").table(pools_table(s));
  j.key("stats").table(stats_table(s));
  if (connections) {
    j.key("clients").table(clients_table(s));
    j.key("servers").table(servers_table(s));
  }
  j.end_object();
  std::string out = j.take();
  out += '\n';
  return out;
}

// ---- the server -------------------------------------------------------------------------------

std::optional<BasicCredentials> parse_basic_auth(std::string_view header) {
  // RFC 7617: "Basic" (any case), one or more spaces, base64 of "user-id:password".
  constexpr std::string_view kScheme = "basic";
  if (header.size() <= kScheme.size()) return std::nullopt;
  for (std::size_t i = 0; i < kScheme.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(header[i])) != kScheme[i]) return std::nullopt;
  }
  std::string_view rest = header.substr(kScheme.size());
  if (rest.empty() || rest[0] != ' ') return std::nullopt;
  while (!rest.empty() && rest[0] == ' ') rest.remove_prefix(1);
  while (!rest.empty() && rest.back() == ' ') rest.remove_suffix(1);
  const std::optional<std::string> decoded = auth::base64_decode(rest);
  if (!decoded) return std::nullopt;
  const std::size_t colon = decoded->find(':');
  if (colon == std::string::npos || colon == 0) return std::nullopt;
  return BasicCredentials{decoded->substr(0, colon), decoded->substr(colon + 1)};
}

namespace {

// Whether `password` is the one `u`'s secret stands for; `why` says so when the secret could
// not be checked at all (a verifier with more iterations than pgkeel computes).
bool password_matches(const UserAuth& u, std::string_view password, std::string& why) {
  switch (u.kind) {
    case UserAuth::Kind::kPassword:
      return auth::equal_constant_time(password, u.password);
    case UserAuth::Kind::kMd5Hash: {
      const auto h = auth::md5_password_hash(u.name, password);
      return h && auth::equal_constant_time(*h, u.md5_hash);
    }
    case UserAuth::Kind::kScramVerifier:
      return auth::check_scram_password(u.verifier, password, &why).has_value();
  }
  return false;
}

}  // namespace

struct StatusServer::Impl {
  enum class Kind : std::uint8_t { kMetrics, kApiStatus, kApiStatusConnections };

  // A request answered once the snapshot in flight arrives (or its deadline passes).
  struct Waiter {
    evhttp_request* req = nullptr;
    Kind kind = Kind::kMetrics;
  };
  // A credential proved recently, so a scraper that sends it every few seconds costs one PBKDF2
  // a minute, not one a request. Tied to the users map it was checked against: a reload that
  // changes users or secrets starts afresh.
  struct Proved {
    std::weak_ptr<const UserMap> users;
    std::chrono::steady_clock::time_point until;
  };

  Impl(Shared& sh, event_base* b) : shared(sh), base(b), http(evhttp_new(b)) {
    if (http) {
      evhttp_set_timeout(http.get(), kRequestTimeoutS);
      evhttp_set_max_headers_size(http.get(), 16 * 1024);
      evhttp_set_max_body_size(http.get(), 4 * 1024);
      // Every method libevent knows reaches us, so the answer is 405, not libevent's 501.
      evhttp_set_allowed_methods(http.get(), EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD | EVHTTP_REQ_PUT |
                                                 EVHTTP_REQ_DELETE | EVHTTP_REQ_OPTIONS | EVHTTP_REQ_TRACE |
                                                 EVHTTP_REQ_CONNECT | EVHTTP_REQ_PATCH);
      evhttp_set_gencb(http.get(), &Impl::on_request, this);
    }
    watch.reset(event_new(base, -1, EV_PERSIST, &Impl::on_watch, this));
    const timeval tv{0, static_cast<suseconds_t>(std::chrono::microseconds(kWatchInterval).count())};
    event_add(watch.get(), &tv);
    gather_timer.reset(evtimer_new(base, &Impl::on_gather_timeout, this));
    note_writer();
  }

  ~Impl() {
    // Answer what is still waiting, then let evhttp_free close the connections (without calling
    // back into this half-destroyed object).
    std::vector<Waiter> left;
    left.swap(waiters);
    for (const Waiter& w : left) reply(w.req, 503, kTextType, "pgkeel is stopping\n");
    for (evhttp_connection* c : conns) evhttp_connection_set_closecb(c, nullptr, nullptr);
    conns.clear();
  }
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;

  static void on_request(evhttp_request* req, void* arg) { static_cast<Impl*>(arg)->handle(req); }
  static void on_watch(evutil_socket_t, short, void* arg) { static_cast<Impl*>(arg)->note_writer(); }
  static void on_conn_closed(evhttp_connection* c, void* arg) { static_cast<Impl*>(arg)->conns.erase(c); }
  static void on_gather_timeout(evutil_socket_t, short, void* arg) {
    auto* self = static_cast<Impl*>(arg);
    log::warning("status").kv("event", "gather_timeout").kv("waiting", self->waiters.size()).emit();
    self->gathering = false;
    ++self->generation;  // the late snapshot, if it ever comes, answers nobody
    std::vector<Waiter> left;
    left.swap(self->waiters);
    for (const Waiter& w : left) reply(w.req, 503, kTextType, "the status snapshot did not arrive in time\n");
  }

  // Ready needs a writer decided once: remember it from the first snapshot that has one.
  void note_writer() {
    if (writer_seen) {
      if (watch) event_del(watch.get());  // nothing left to notice
      return;
    }
    const std::uint64_t epoch = shared.table.epoch();
    if (epoch == watched_epoch && epoch != 0) return;
    watched_epoch = epoch;
    writer_seen = shared.table.current()->writer.has_value();
  }

  Readiness readiness() {
    note_writer();
    Readiness r;
    const std::shared_ptr<const routing::Snapshot> snap = shared.table.current();
    const routing::NodeView* w = snap->writer ? snap->node(*snap->writer) : nullptr;
    r.healthy = w != nullptr && !w->fenced && w->enabled;
    if (r.healthy) {
      r.health_why = "writer " + w->name + " (epoch " + std::to_string(snap->epoch) + ")";
      // Writes go through, but a promise is not kept: the text says which (the code stays 200, so
      // a load balancer does not drop a primary that takes writes).
      if (shared.keeper != nullptr) {
        const health::KeeperCounters k = shared.keeper->counters();
        if (k.sync_health == health::SyncHealth::kDegraded || k.sync_health == health::SyncHealth::kWaiting) {
          r.health_why += "; synchronous replication " + std::string(health::to_string(k.sync_health)) + ": " + k.sync_why;
        }
        if (!k.record_error.empty()) r.health_why += "; the primary record could not be written: " + k.record_error;
        if (!k.rejoin_why.empty()) r.health_why += "; " + k.rejoin_why;
      }
    } else {
      r.health_why = "no writable primary is routable (epoch " + std::to_string(snap->epoch) + ")" +
                     (snap->why.empty() ? std::string() : ": " + snap->why);
    }
    r.draining = shared.draining.load(std::memory_order_relaxed);
    const int running = shared.workers_running.load(std::memory_order_relaxed);
    // [store]: an instance on a stale lease refuses logins (57P03), so a load balancer or a
    // keepalived check should send clients to another instance.
    const std::string store_cut = shared.keeper != nullptr ? shared.keeper->counters().store_cut_why : std::string();
    if (r.draining) {
      r.ready_why = "draining for shutdown";
    } else if (!store_cut.empty()) {
      r.ready_why = store_cut;
    } else if (running <= 0) {
      r.ready_why = "no worker is running";
    } else if (!writer_seen) {
      r.ready_why = "no writer decided yet";
    } else {
      r.ready = true;
      r.ready_why = snap->writer ? "ready" : "ready (a failover is under way: new clients are held)";
    }
    return r;
  }

  // A connection counts from its first request until it closes. Beyond [status] max_connections a
  // request is answered 503 and its connection closed, before any work is done for it.
  bool admit(evhttp_request* req) {
    evhttp_connection* c = evhttp_request_get_connection(req);
    if (c == nullptr || conns.count(c) != 0) return true;
    const std::size_t max = static_cast<std::size_t>(std::max(1, shared.config->status.max_connections));
    if (conns.size() >= max) {
      if (!refusing_logged) {
        log::warning("status").kv("event", "refused").kv("reason", "status.max_connections").kv("limit", max).emit();
        refusing_logged = true;
      }
      evhttp_add_header(evhttp_request_get_output_headers(req), "Connection", "close");
      evhttp_add_header(evhttp_request_get_output_headers(req), "Retry-After", "1");
      reply(req, 503, kTextType, "too many status connections (status.max_connections)\n");
      return false;
    }
    refusing_logged = false;
    conns.insert(c);
    evhttp_connection_set_closecb(c, &Impl::on_conn_closed, this);
    return true;
  }

  static std::string peer_host(evhttp_request* req) {
    evhttp_connection* c = evhttp_request_get_connection(req);
    if (c == nullptr) return "unknown";
    char* host = nullptr;
    ev_uint16_t port = 0;
    evhttp_connection_get_peer(c, &host, &port);
    return host != nullptr ? host : "unknown";
  }

  // The client and server lists name who is connected from where: only a console admin or monitor
  // user (HTTP Basic, the password as in the users file) may read them. Answers false after
  // replying (401, 429 or 503).
  bool authorized(evhttp_request* req) {
    evkeyvalq* out = evhttp_request_get_output_headers(req);
    const char* header = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
    const std::optional<BasicCredentials> cred = header != nullptr ? parse_basic_auth(header) : std::nullopt;
    if (!cred) {
      evhttp_add_header(out, "WWW-Authenticate", "Basic realm=\"pgkeel status\", charset=\"UTF-8\"");
      reply(req, 401, kTextType,
            "the client and server lists need HTTP Basic authentication as a console admin or monitor user\n");
      return false;
    }
    const std::string peer = peer_host(req);
    const auto now = std::chrono::steady_clock::now();
    const conf::Config& cfg = *shared.config;
    const std::shared_ptr<const UserMap> users = shared.users();
    // The cache key is a digest: the password itself is not kept.
    const auto digest = auth::sha256(cred->user + '\0' + cred->password);
    const std::string key = digest ? std::string(auth::key_bytes(*digest)) : std::string();
    if (auto it = proved.find(key); !key.empty() && it != proved.end()) {
      if (it->second.until > now && it->second.users.lock() == users) return true;
      proved.erase(it);
    }
    // An address that keeps failing is not given another PBKDF2 until its window passes.
    if (shared.auth_throttle.throttled(peer, cfg.auth, now)) {
      evhttp_add_header(out, "Retry-After", std::to_string(std::max<long>(1, cfg.auth.failure_window.count() / 1000)).c_str());
      reply(req, 429, kTextType, "too many failed authentications from this address; try again later\n");
      return false;
    }
    // Nor may many addresses together make the main loop (the keeper's) run PBKDF2 all day.
    const auto second = std::chrono::duration_cast<std::chrono::seconds>(now.time_since_epoch()).count();
    if (second != check_second) {
      check_second = second;
      checks_this_second = 0;
    }
    if (++checks_this_second > kMaxChecksPerSecond) {
      evhttp_add_header(out, "Retry-After", "1");
      reply(req, 503, kTextType, "too many authentication attempts at once; try again\n");
      return false;
    }
    const auto& admins = cfg.console.admin_users;
    const auto& monitors = cfg.console.monitor_users;
    const bool console_user = std::find(admins.begin(), admins.end(), cred->user) != admins.end() ||
                              std::find(monitors.begin(), monitors.end(), cred->user) != monitors.end();
    auto u = users->find(cred->user);
    std::string why;
    const bool ok = console_user && u != users->end() && password_matches(u->second, cred->password, why);
    if (!ok) {
      shared.auth_throttle.failed(peer, cfg.auth, now);
      log::info("status").kv("event", "auth_failed").kv("user", cred->user).kv("peer", peer)
          .kv("reason", !console_user ? "not a console user" : u == users->end() ? "unknown user" : why.empty() ? "wrong password" : why)
          .emit();
      evhttp_add_header(out, "WWW-Authenticate", "Basic realm=\"pgkeel status\", charset=\"UTF-8\"");
      reply(req, 401, kTextType, "authentication failed\n");
      return false;
    }
    shared.auth_throttle.succeeded(peer);
    if (proved.size() >= kMaxProved) proved.clear();
    if (!key.empty()) proved[key] = Proved{users, now + kProvedFor};
    return true;
  }

  void handle(evhttp_request* req) {
    const evhttp_cmd_type cmd = evhttp_request_get_command(req);
    const evhttp_uri* uri = evhttp_request_get_evhttp_uri(req);
    const char* raw_path = uri ? evhttp_uri_get_path(uri) : nullptr;
    const std::string path = raw_path && *raw_path ? raw_path : "/";
    if (!admit(req)) return;
    const bool known = path == "/" || path == "/live" || path == "/health" || path == "/ready" ||
                       path == "/metrics" || path == "/api/status";
    log::debug("status").kv("event", "request").kv("method", method_name(cmd)).kv("path", path).emit();
    if (!known) {
      reply(req, 404, kTextType, "not found: try /, /live, /health, /ready, /metrics or /api/status\n");
      return;
    }
    if (cmd != EVHTTP_REQ_GET && cmd != EVHTTP_REQ_HEAD) {
      evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "GET, HEAD");
      reply(req, 405, kTextType, "method not allowed: use GET or HEAD\n");
      return;
    }
    if (path == "/live") {
      reply(req, 200, kTextType, "live\n");
    } else if (path == "/health") {
      const Readiness r = readiness();
      reply(req, r.healthy ? 200 : 503, kTextType, r.health_why + "\n");
    } else if (path == "/ready") {
      const Readiness r = readiness();
      reply(req, r.ready ? 200 : 503, kTextType, r.ready_why + "\n");
    } else if (path == "/") {
      evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Security-Policy", std::string(kPagePolicy).c_str());
      evhttp_add_header(evhttp_request_get_output_headers(req), "Referrer-Policy", "no-referrer");
      reply(req, 200, kHtmlType, std::string_view(kStatusPage, kStatusPageSize));
    } else if (path == "/metrics") {
      serve(req, Kind::kMetrics);
    } else if (!wants_connections(evhttp_uri_get_query(uri))) {
      serve(req, Kind::kApiStatus);
    } else if (authorized(req)) {
      serve(req, Kind::kApiStatusConnections);
    }
  }

  static bool wants_connections(const char* query) {
    if (query == nullptr) return false;
    evkeyvalq params{};  // evhttp_parse_query_str initialises it
    if (evhttp_parse_query_str(query, &params) != 0) return false;
    const char* v = evhttp_find_header(&params, "connections");
    const bool yes = v != nullptr && (std::strcmp(v, "1") == 0 || std::strcmp(v, "true") == 0);
    evhttp_clear_headers(&params);
    return yes;
  }

  // The rendered answer of the current snapshot, made on first need.
  const std::string& rendered(Kind kind) {
    std::optional<std::string>& slot = renders[static_cast<std::size_t>(kind)];
    if (!slot) {
      const Readiness r = readiness();
      slot = kind == Kind::kMetrics ? render_metrics(*snapshot, r)
                                    : render_status_json(*snapshot, r, kind == Kind::kApiStatusConnections);
    }
    return *slot;
  }

  void answer(evhttp_request* req, Kind kind) {
    reply(req, 200, kind == Kind::kMetrics ? kMetricsType : kJsonType, rendered(kind));
  }

  // /metrics and /api/status: a snapshot (and each rendering of it) younger than kReuse answers
  // at once; otherwise the request waits for the one gather in flight, started if none is. So a
  // scrape flood costs one gather and one rendering per kReuse, whatever its size.
  void serve(evhttp_request* req, Kind kind) {
    if (snapshot && std::chrono::steady_clock::now() - snapshot_at < kReuse) {
      answer(req, kind);
      return;
    }
    waiters.push_back(Waiter{req, kind});
    if (gathering) return;
    gathering = true;
    const std::uint64_t gen = ++generation;
    const timeval tv{static_cast<time_t>(kGatherTimeout.count() / 1000),
                     static_cast<suseconds_t>((kGatherTimeout.count() % 1000) * 1000)};
    evtimer_add(gather_timer.get(), &tv);
    std::weak_ptr<char> weak = alive;
    gather_status(shared, true, [this, weak, gen](std::shared_ptr<const StatusSnapshot> snap) {
      if (weak.expired()) return;  // the server is gone; evhttp_free closed the connections
      if (gen != generation) return;  // timed out and answered already
      evtimer_del(gather_timer.get());
      gathering = false;
      std::vector<Waiter> ready;
      ready.swap(waiters);
      if (!snap) {
        for (const Waiter& w : ready) reply(w.req, 503, kTextType, "no status snapshot\n");
        return;
      }
      snapshot = std::move(snap);
      snapshot_at = std::chrono::steady_clock::now();
      for (auto& r : renders) r.reset();
      for (const Waiter& w : ready) answer(w.req, w.kind);
    });
  }

  // Answers with `body`; for HEAD, only its length. A request whose client already left is freed
  // by evhttp_send_reply itself.
  static void reply(evhttp_request* req, int code, std::string_view type, std::string_view body) {
    evkeyvalq* h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "Content-Type", std::string(type).c_str());
    evhttp_add_header(h, "Cache-Control", "no-store");
    evhttp_add_header(h, "X-Content-Type-Options", "nosniff");
    if (evhttp_request_get_command(req) == EVHTTP_REQ_HEAD) {
      evhttp_add_header(h, "Content-Length", std::to_string(body.size()).c_str());
    } else {
      evbuffer_add(evhttp_request_get_output_buffer(req), body.data(), body.size());
    }
    evhttp_send_reply(req, code, reason(code), nullptr);
  }

  static const char* reason(int code) {
    switch (code) {
      case 200: return "OK";
      case 401: return "Unauthorized";
      case 404: return "Not Found";
      case 405: return "Method Not Allowed";
      case 429: return "Too Many Requests";
      case 503: return "Service Unavailable";
      default: return "Unknown";
    }
  }

  static const char* method_name(evhttp_cmd_type cmd) {
    switch (cmd) {
      case EVHTTP_REQ_GET: return "GET";
      case EVHTTP_REQ_HEAD: return "HEAD";
      case EVHTTP_REQ_POST: return "POST";
      case EVHTTP_REQ_PUT: return "PUT";
      case EVHTTP_REQ_DELETE: return "DELETE";
      case EVHTTP_REQ_OPTIONS: return "OPTIONS";
      case EVHTTP_REQ_TRACE: return "TRACE";
      case EVHTTP_REQ_CONNECT: return "CONNECT";
      case EVHTTP_REQ_PATCH: return "PATCH";
    }
    return "?";
  }

  Shared& shared;
  event_base* base;
  std::vector<Waiter> waiters;  // for the gather in flight
  bool gathering = false;
  std::uint64_t generation = 0;  // of the gather in flight; a timed-out one's answer is dropped
  EventPtr gather_timer;
  std::shared_ptr<const StatusSnapshot> snapshot;  // the last one gathered
  std::chrono::steady_clock::time_point snapshot_at;
  std::array<std::optional<std::string>, 3> renders;  // of `snapshot`, by Kind
  std::unordered_set<evhttp_connection*> conns;  // connections that sent a request, until they close
  bool refusing_logged = false;
  std::unordered_map<std::string, Proved> proved;  // by SHA-256 of user and password
  std::int64_t check_second = 0;
  int checks_this_second = 0;
  evhttp_bound_socket* bound = nullptr;  // the listening socket (owned by `http`)
  EvhttpPtr http;  // after the members its callbacks touch: freed first
  EventPtr watch;
  std::uint64_t watched_epoch = 0;
  bool writer_seen = false;
  std::shared_ptr<char> alive = std::make_shared<char>(0);  // gather callbacks hold a weak_ptr
};

StatusServer::StatusServer(Shared& shared, event_base* base) : impl_(std::make_unique<Impl>(shared, base)) {}
StatusServer::~StatusServer() = default;

bool StatusServer::listen(const std::string& host, std::uint16_t port) {
  const std::string addr = host + ":" + std::to_string(port);
  if (!impl_->http) {
    log::error("status").kv("event", "listen_failed").kv("addr", addr).kv("reason", "evhttp_new failed").emit();
    return false;
  }
  evhttp_bound_socket* bound = evhttp_bind_socket_with_handle(impl_->http.get(), host.c_str(), port);
  if (bound == nullptr) {
    const int err = errno;
    log::error("status").kv("event", "listen_failed").kv("addr", addr)
        .kv("reason", err != 0 ? std::strerror(err) : "cannot bind").emit();
    return false;
  }
  impl_->bound = bound;
  log::info("status").kv("event", "listening").kv("addr", addr).emit();
  return true;
}

bool StatusServer::listen_on(int fd) {
  evhttp_bound_socket* bound = impl_->http ? evhttp_accept_socket_with_handle(impl_->http.get(), fd) : nullptr;
  if (bound == nullptr) {
    ::close(fd);
    log::error("status").kv("event", "listen_failed").kv("reason", "cannot accept on the socket handed over").emit();
    return false;
  }
  impl_->bound = bound;
  log::info("status").kv("event", "listening").kv("addr", "handed over").emit();
  return true;
}

int StatusServer::listener_fd() const { return impl_->bound != nullptr ? evhttp_bound_socket_get_fd(impl_->bound) : -1; }

void StatusServer::close_listener() {
  if (impl_->bound != nullptr && impl_->http) evhttp_del_accept_socket(impl_->http.get(), impl_->bound);
  impl_->bound = nullptr;
}

}  // namespace pgkeel::proxy
