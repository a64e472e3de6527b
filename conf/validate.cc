// conf/validate.cc — what a config means, once config_toml.cc has mapped each key onto its field
// (shape, types, ranges): the checks that span fields, sections or the filesystem, the defaults
// that depend on other settings, and the users file.

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "conf/cidr.h"
#include "conf/endpoint.h"
#include "conf/internal.h"
#include "conf/load.h"


namespace pgkeel::conf::internal {

namespace {

namespace fs = std::filesystem;

// pg_authid of a large cluster is a few MiB at most.
constexpr std::uintmax_t kMaxUsersFileBytes = std::uintmax_t{16} * 1024 * 1024;
// sockaddr_un::sun_path on Linux is 108 bytes, including the terminating NUL.
constexpr std::size_t kMaxUnixSocketPath = 107;

class Checker {
 public:
  Checker(Config& config, const std::map<std::string, int>& lines, std::vector<ConfigError>& errors)
      : config_(config), lines_(lines), errors_(errors) {
    for (const ConfigError& e : errors_) {
      failed_.insert(e.key);
    }
  }

  // The line of `key`, or of the nearest enclosing table present in the file ("node[1].port" ->
  // "node[1]" -> "node"), so a missing key points at the table that should hold it.
  int line_of(std::string key) const {
    while (!key.empty()) {
      if (auto it = lines_.find(key); it != lines_.end()) {
        return it->second;
      }
      const std::size_t cut = key.find_last_of(".[");
      if (cut == std::string::npos) {
        break;
      }
      key.resize(cut);
    }
    return 0;
  }

  void add(const std::string& key, std::string message) {
    errors_.push_back({config_.source_file, line_of(key), key, std::move(message)});
  }

  // A key whose value was already refused holds its default; checks on it would only echo that.
  bool failed(const std::string& key) const { return failed_.count(key) != 0; }
  bool present(const std::string& key) const { return lines_.count(key) != 0; }

  // For a required setting left empty: absent, or written as "".
  void missing(const std::string& key, const std::string& what) {
    if (failed(key)) {
      return;
    }
    add(key, present(key) ? "must not be empty: " + what : "is required: " + what);
  }

  // `path` as written (relative to the config file's folder) -> absolute, normalized, so the
  // proxy can reopen it later whatever its working directory.
  std::string resolve(const std::string& path) const {
    fs::path p(path);
    if (p.is_relative()) {
      p = fs::path(config_.source_file).parent_path() / p;
    }
    std::error_code ec;
    if (fs::path abs = fs::absolute(p, ec); !ec) {
      p = std::move(abs);
    }
    return p.lexically_normal().string();
  }

  void run() {
    users_file();
    state_file();
    takeover_socket();
    listeners();
    service_ports();
    nodes();
    tls();
    hba();
    limits();
    auth();
    initial_primary();
    pool();
    store();
  }

 private:
  void users_file() {
    std::string& file = config_.general.users_file;
    if (file.empty()) {
      missing("general.users_file", "the users file, relative to this file's folder");
      return;
    }
    file = resolve(file);
    std::string text;
    if (std::string why = read_file(file, kMaxUsersFileBytes, text); !why.empty()) {
      add("general.users_file", printable(file) + ": " + why);
      return;
    }
    const std::size_t before = errors_.size();
    config_.users = parse_users(text, file, errors_);
    if (config_.users.empty() && errors_.size() == before) {
      add("general.users_file", printable(file) + " holds no users, so no client could log in");
    }
  }

  void state_file() {
    std::string& file = config_.general.state_file;
    if (file.empty()) {
      return;
    }
    file = resolve(file);
    std::error_code ec;
    if (fs::is_directory(file, ec)) {
      add("general.state_file", printable(file) + " is a directory; name a file in it");
      return;
    }
    const fs::path dir = fs::path(file).parent_path();
    if (!fs::is_directory(dir, ec)) {
      add("general.state_file", "its folder " + printable(dir.string()) + " does not exist");
    }
  }

  void takeover_socket() {
    std::string& path = config_.general.takeover_socket;
    if (path.empty() && !config_.general.state_file.empty() && !failed("general.state_file")) {
      path = config_.general.state_file + ".takeover";
    }
    if (path.empty()) return;
    path = resolve(path);
    if (path.size() >= 108) {  // sockaddr_un's sun_path
      add("general.takeover_socket", printable(path) + " is too long for a Unix socket path (107 bytes at most)");
      return;
    }
    std::error_code ec;
    const fs::path dir = fs::path(path).parent_path();
    if (!fs::is_directory(dir, ec)) add("general.takeover_socket", "its folder " + printable(dir.string()) + " does not exist");
  }

  static bool valid_name(std::string_view name) {
    for (const char c : name) {
      const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                      c == '_' || c == '-';
      if (!ok) {
        return false;
      }
    }
    return !name.empty();
  }

  // Checks a required, unique [A-Za-z0-9_-]+ name. `seen` maps names to the first index.
  void name(const std::string& prefix, std::size_t index, const std::string& value,
            std::unordered_map<std::string, std::size_t>& seen, const char* section) {
    const std::string key = prefix + ".name";
    if (value.empty()) {
      missing(key, std::string("every ") + section + " needs a name");
      return;
    }
    if (!valid_name(value)) {
      add(key, printable(value) + " may use only letters, digits, '_' and '-'");
      return;
    }
    const auto [it, inserted] = seen.emplace(value, index);
    if (!inserted) {
      const std::string first = entry(section, it->second);
      add(key, printable(value) + " is already the name of " + first + " (line " +
                   std::to_string(line_of(first)) + ")");
    }
  }

  // A host is one token: an address or a name. Returns whether it is usable for further checks.
  bool host(const std::string& key, const std::string& value, const std::string& what) {
    if (failed(key)) {
      return false;
    }
    if (value.empty()) {
      missing(key, what);
      return false;
    }
    for (const char c : value) {
      const auto u = static_cast<unsigned char>(c);
      if (u <= 0x20 || u == 0x7f) {
        add(key, printable(value) + " is not a host: it contains a blank or a control character");
        return false;
      }
    }
    return true;
  }

  static std::string entry(std::string_view section, std::size_t index) {
    // section is "[[listener]]" or "[[node]]"; the key prefix is the bare name.
    std::string bare(section.substr(2, section.size() - 4));
    return bare + "[" + std::to_string(index) + "]";
  }

  // Whether binding both addresses on one port would collide. Host names are not resolved here,
  // so "localhost" and "127.0.0.1" are not caught; the bind at start is.
  static bool hosts_overlap(const std::string& a, const std::string& b) {
    if (a == b || a == "::" || b == "::") {
      return true;  // "::" also takes IPv4 (Linux default)
    }
    const bool a_v6 = a.find(':') != std::string::npos;
    const bool b_v6 = b.find(':') != std::string::npos;
    return (a == "0.0.0.0" && !b_v6) || (b == "0.0.0.0" && !a_v6);
  }

  void listeners() {
    if (config_.listeners.size() > 32) {
      add("listener", "at most 32 [[listener]] entries");
    }
    if (config_.listeners.empty()) {
      errors_.push_back({config_.source_file, 0, "listener",
                         "at least one [[listener]] is required; clients have nowhere to connect"});
      return;
    }
    std::unordered_map<std::string, std::size_t> names;
    for (std::size_t i = 0; i < config_.listeners.size(); ++i) {
      ListenerConfig& l = config_.listeners[i];
      const std::string k = entry("[[listener]]", i);
      name(k, i, l.name, names, "[[listener]]");
      const bool host_ok = host(k + ".host", l.host, "\"0.0.0.0\" listens on every address");
      if (l.port == 0) {
        missing(k + ".port", "the TCP port clients connect to");
        continue;
      }
      if (host_ok) {
        for (std::size_t j = 0; j < i; ++j) {
          const ListenerConfig& o = config_.listeners[j];
          const std::string other = entry("[[listener]]", j);
          if (o.port == l.port && !failed(other + ".host") && hosts_overlap(l.host, o.host)) {
            add(k + ".port", l.host + ":" + std::to_string(l.port) + " collides with " + other +
                                 " (line " + std::to_string(line_of(other)) + ", " + o.host + ":" +
                                 std::to_string(o.port) + ")");
            break;
          }
        }
      }
      if (!l.unix_socket_dir.empty()) {
        unix_socket(k, i);
      }
      if (l.read_write_split && (l.pool_mode != PoolMode::kTransaction || l.intent != routing::Intent::kReadWrite)) {
        add(k + ".read_write_split",
            "needs pool_mode = \"transaction\" and intent = \"read-write\" (each transaction is routed on its own)");
      }
      if (l.read_your_writes && !l.read_write_split) {
        add(k + ".read_your_writes", "needs read_write_split = true");
      }
    }
  }

  // The console and the status port must not take a listener's port (or each other's).
  void service_ports() {
    struct Service {
      const char* key;
      const std::string& host;
      std::uint16_t port;
    };
    const Service services[] = {{"console.port", config_.console.host, config_.console.port},
                                {"status.port", config_.status.host, config_.status.port}};
    for (std::size_t s = 0; s < std::size(services); ++s) {
      const Service& svc = services[s];
      if (svc.port == 0) {
        continue;
      }
      for (std::size_t i = 0; i < config_.listeners.size(); ++i) {
        const ListenerConfig& l = config_.listeners[i];
        if (l.port == svc.port && hosts_overlap(l.host, svc.host)) {
          add(svc.key, svc.host + ":" + std::to_string(svc.port) + " collides with " +
                           entry("[[listener]]", i) + " (" + l.host + ":" + std::to_string(l.port) + ")");
        }
      }
      if (s == 1 && services[0].port == svc.port && hosts_overlap(services[0].host, svc.host)) {
        add(svc.key, "the status port collides with console.port " + std::to_string(svc.port));
      }
    }
  }

  void unix_socket(const std::string& k, std::size_t i) {
    ListenerConfig& l = config_.listeners[i];
    const std::string key = k + ".unix_socket_dir";
    std::error_code ec;
    if (!fs::is_directory(l.unix_socket_dir, ec)) {
      add(key, printable(l.unix_socket_dir) + " is not an existing directory");
      return;
    }
    const std::string path = l.unix_socket_dir + "/.s.PGSQL." + std::to_string(l.port);
    if (path.size() > kMaxUnixSocketPath) {
      add(key, "the socket path " + printable(path) + " is longer than the " +
                   std::to_string(kMaxUnixSocketPath) + " bytes a Unix socket address holds");
    }
    for (std::size_t j = 0; j < i; ++j) {
      const ListenerConfig& o = config_.listeners[j];
      if (o.port == l.port && !o.unix_socket_dir.empty() &&
          fs::path(o.unix_socket_dir).lexically_normal() ==
              fs::path(l.unix_socket_dir).lexically_normal()) {
        add(key, "the socket " + printable(path) + " is also " + entry("[[listener]]", j) + "'s");
        break;
      }
    }
  }

  void nodes() {
    if (config_.nodes.size() > 32) {
      add("node", "at most 32 [[node]] entries");
    }
    if (config_.nodes.empty()) {
      errors_.push_back({config_.source_file, 0, "node",
                         "at least one [[node]] is required: the PostgreSQL servers to route to"});
      return;
    }
    std::unordered_map<std::string, std::size_t> names;
    for (std::size_t i = 0; i < config_.nodes.size(); ++i) {
      const NodeConfig& n = config_.nodes[i];
      const std::string k = entry("[[node]]", i);
      name(k, i, n.name, names, "[[node]]");
      if (!host(k + ".host", n.host, "the node's address") || failed(k + ".port")) {
        continue;
      }
      // One server listed twice would look like two primaries, and fencing would stop writes.
      for (std::size_t j = 0; j < i; ++j) {
        const NodeConfig& o = config_.nodes[j];
        if (o.host == n.host && o.port == n.port) {
          add(k + ".port", n.host + ":" + std::to_string(n.port) + " is also " +
                               entry("[[node]]", j) + " (" + o.name + "); list each server once");
          break;
        }
      }
    }
  }

  // A file pgkeel must read (certificates, keys): resolved and readable now.
  void readable_file(const std::string& key, std::string& path) {
    if (path.empty() || failed(key)) {
      return;
    }
    path = resolve(path);
    std::error_code ec;
    if (!fs::is_regular_file(path, ec)) {
      add(key, "\"" + path + "\" is not a readable file");
    }
  }

  void tls() {
    TlsConfig& t = config_.tls;
    if (t.cert_file.empty() != t.key_file.empty()) {
      add(t.cert_file.empty() ? "tls.cert_file" : "tls.key_file",
          "[tls] needs both cert_file and key_file (or neither, for no TLS toward clients)");
    }
    readable_file("tls.cert_file", t.cert_file);
    readable_file("tls.key_file", t.key_file);
    ServerTlsConfig& s = config_.server_tls;
    readable_file("server_tls.ca_file", s.ca_file);
    readable_file("server_tls.cert_file", s.cert_file);
    readable_file("server_tls.key_file", s.key_file);
    if (s.cert_file.empty() != s.key_file.empty()) {
      add("server_tls.cert_file", "[server_tls] needs both cert_file and key_file for a client certificate, or neither");
    }
    auto needs_ca = [&](SslMode m) { return m == SslMode::kVerifyCa || m == SslMode::kVerifyFull; };
    if (s.ca_file.empty()) {
      if (needs_ca(s.sslmode)) {
        add("server_tls.sslmode", "verify-ca and verify-full need server_tls.ca_file (the roots to trust)");
      }
      for (std::size_t i = 0; i < config_.nodes.size(); ++i) {
        if (config_.nodes[i].sslmode_set && needs_ca(config_.nodes[i].sslmode)) {
          add(entry("[[node]]", i) + ".sslmode", "verify-ca and verify-full need server_tls.ca_file (the roots to trust)");
        }
      }
    }
  }

  void hba() {
    for (std::size_t i = 0; i < config_.hba.size(); ++i) {
      HbaRule& r = config_.hba[i];
      const std::string k = entry("[[hba]]", i);
      if (r.databases.empty()) {
        missing(k + ".database", "the databases this rule covers, or \"all\"");
      }
      if (r.users.empty()) {
        missing(k + ".user", "the users this rule covers, or \"all\"");
      }
      if (!present(k + ".method")) {
        missing(k + ".method", "scram-sha-256, md5, password, trust or reject");
      }
      if (r.type == HbaType::kLocal) {
        if (present(k + ".address")) {
          add(k + ".address", "a \"local\" rule (Unix socket) takes no address");
        }
      } else if (r.address != "all" && !parse_cidr(r.address)) {
        add(k + ".address", "\"" + r.address + "\" is not \"all\" or an address in CIDR form (e.g. 10.0.0.0/8, ::1/128)");
      }
      if (r.type == HbaType::kHostSsl && !config_.tls.enabled()) {
        add(k + ".type", "hostssl needs TLS toward clients: set [tls] cert_file and key_file");
      }
    }
  }

  void auth() {
    AuthConfig& a = config_.auth;
    if (a.user.empty()) a.user = config_.health.user;
    if (a.password.empty()) a.password = config_.health.password;
    if (a.dbname.empty()) a.dbname = config_.health.dbname;
    if (!a.query.empty() && a.query.find("$1") == std::string::npos) {
      add("auth.query", "must use $1 for the user name, e.g. SELECT usename, passwd FROM pg_shadow WHERE usename = $1");
    }
  }

  void limits() {
    std::unordered_set<std::string> seen;
    for (std::size_t i = 0; i < config_.limits.size(); ++i) {
      const LimitConfig& l = config_.limits[i];
      const std::string k = entry("[[limit]]", i);
      if (l.user.empty() == l.database.empty()) {
        add(k, "a [[limit]] names exactly one of user or database");
        continue;
      }
      if (l.max_client_conn < 0 && l.max_server_conn < 0) {
        add(k, "a [[limit]] sets max_client_conn, max_server_conn or both");
      }
      const std::string id = l.user.empty() ? "database " + l.database : "user " + l.user;
      if (!seen.insert(id).second) {
        add(k, "a second [[limit]] for " + id);
      }
    }
  }

  void initial_primary() {
    std::string& primary = config_.cluster.initial_primary;
    if (config_.nodes.empty() || failed("cluster.initial_primary")) {
      return;
    }
    if (primary.empty()) {
      primary = config_.nodes.front().name;
      return;
    }
    if (config_.node_index(primary) >= 0) {
      return;
    }
    std::string known;
    for (const NodeConfig& n : config_.nodes) {
      if (!known.empty()) {
        known += ", ";
      }
      known += n.name;
    }
    add("cluster.initial_primary",
        printable(primary) + " names no [[node]]; the nodes are " + known);
  }

  void pool() {
    const PoolConfig& p = config_.pool;
    if (failed("pool.pool_size") || failed("pool.max_server_conn_per_node")) {
      return;
    }
    if (p.pool_size > p.max_server_conn_per_node) {
      add("pool.pool_size",
          std::to_string(p.pool_size) + " is more than max_server_conn_per_node (" +
              std::to_string(p.max_server_conn_per_node) + "), so a pool could never fill");
    }
  }

  // [store]: several instances through etcd. Every check here is skipped without the section.
  void store() {
    StoreConfig& s = config_.store;
    if (!present("store")) {
      return;
    }
    if (s.endpoints.empty()) {
      missing("store.endpoints", "etcd's client URLs, e.g. [\"http://10.0.0.5:2379\", \"http://10.0.0.6:2379\"]");
      return;
    }
    bool tls = false;
    for (std::size_t i = 0; i < s.endpoints.size(); ++i) {
      std::string why;
      const std::optional<Endpoint> e = parse_endpoint(s.endpoints[i], why);
      if (!e) {
        add("store.endpoints", printable(s.endpoints[i]) + " " + why);
        continue;
      }
      if (i == 0) {
        tls = e->tls;
      } else if (e->tls != tls) {
        add("store.endpoints", "mixes http:// and https://; every member is reached the same way");
      }
      for (std::size_t j = 0; j < i; ++j) {
        if (s.endpoints[j] == s.endpoints[i]) add("store.endpoints", printable(s.endpoints[i]) + " is listed twice");
      }
    }
    readable_file("store.ca_file", s.ca_file);
    readable_file("store.cert_file", s.cert_file);
    readable_file("store.key_file", s.key_file);
    if (!tls) {
      for (const char* k : {"store.ca_file", "store.cert_file", "store.key_file"}) {
        if (present(k)) add(k, "TLS files need https:// endpoints");
      }
    }
    if (s.cert_file.empty() != s.key_file.empty()) {
      add(s.cert_file.empty() ? "store.cert_file" : "store.key_file",
          "[store] needs both cert_file and key_file for a client certificate, or neither");
    }
    if (s.username.empty() != s.password.empty()) {
      add(s.username.empty() ? "store.username" : "store.password",
          "[store] needs both username and password for etcd authentication, or neither");
    }
    store_prefix();
    if (s.name.empty()) {
      missing("store.name", "this instance's name, unique among the instances that share the prefix");
    } else if (!valid_name(s.name)) {
      add("store.name", printable(s.name) + " may use only letters, digits, '_' and '-'");
    }
    if (s.advertise_host.empty()) {
      const std::string first = config_.listeners.empty() ? std::string() : config_.listeners.front().host;
      if (first.empty() || first == "0.0.0.0" || first == "::" || first == "*") {
        missing("store.advertise_host", "where peers and SHOW PEERS reach this instance (the first listener binds " +
                                            (first.empty() ? std::string("no address") : first) + ")");
      } else {
        s.advertise_host = first;
      }
    } else {
      host("store.advertise_host", s.advertise_host, "where peers reach this instance");
    }
    if (!failed("store.lease_ttl")) {
      if (s.lease_ttl.count() % 1000 != 0 || s.lease_ttl < Millis{3000} || s.lease_ttl > Millis{3600000}) {
        add("store.lease_ttl", "must be whole seconds from 3s to 1h (etcd counts lease TTLs in seconds)");
      } else if (!failed("store.request_timeout") && s.request_timeout * 3 > s.lease_ttl) {
        add("store.request_timeout", "must be at most a third of lease_ttl, so a lease is renewed in time after a failed request");
      }
    }
    if (s.failsafe) {
      // Decided for issue 15: with etcd's quorum lost writes stop (README, "Several instances").
      // The key is kept so a configuration written for Patroni's habits is told why, not ignored.
      add("store.failsafe",
          "true is not offered: with etcd's quorum lost no failover can be recorded, and pgkeel stops writes "
          "rather than trust that no other instance is promoting (see the README, \"The whole store unavailable\"); "
          "remove it or set false");
    }
  }

  void store_prefix() {
    const std::string& p = config_.store.prefix;
    if (p.empty()) {
      missing("store.prefix", "this cluster's key prefix in etcd, e.g. \"/pgkeel/erp\"");
      return;
    }
    bool ok = p.size() >= 2 && p.size() <= 200 && p.front() == '/' && p.back() != '/' && p.find("//") == std::string::npos;
    for (const char c : p) {
      ok = ok && ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-' ||
                  c == '.' || c == '/');
    }
    if (!ok) {
      add("store.prefix", printable(p) + " must start with '/', not end with '/', and use letters, digits, '_', '-', '.' between slashes");
    }
  }

  Config& config_;
  const std::map<std::string, int>& lines_;
  std::vector<ConfigError>& errors_;
  std::unordered_set<std::string> failed_;  // keys with an error from the mapping stage
};

}  // namespace

void validate(Config& config, const std::map<std::string, int>& lines,
              std::vector<ConfigError>& errors) {
  Checker(config, lines, errors).run();
}

}  // namespace pgkeel::conf::internal
