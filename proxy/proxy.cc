#include "proxy/proxy.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <sys/eventfd.h>

#include <cerrno>
#include <functional>
#include <mutex>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "health/keeper.h"
#include "proxy/auth/md5.h"
#include "proxy/console.h"
#include "proxy/handles.h"
#include "proxy/log.h"
#include "proxy/shared.h"
#include "proxy/status_http.h"
#include "proxy/worker.h"

namespace pgkeel::proxy {
namespace {

bool resolve(const std::string& host, std::uint16_t port, NodeAddress& out, std::string& err) {
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_family = AF_UNSPEC;
  addrinfo* res = nullptr;
  const std::string port_s = std::to_string(port);
  const int rc = getaddrinfo(host.c_str(), port_s.c_str(), &hints, &res);
  if (rc != 0 || res == nullptr) {
    err = gai_strerror(rc);
    return false;
  }
  std::memcpy(&out.addr, res->ai_addr, res->ai_addrlen);
  out.len = res->ai_addrlen;
  out.text = (host.find(':') != std::string::npos ? "[" + host + "]" : host) + ":" + port_s;
  freeaddrinfo(res);
  return true;
}

int bind_tcp(const std::string& host, std::uint16_t port, std::string& err) {
  NodeAddress a;
  if (!resolve(host, port, a, err)) return -1;
  const int fd = ::socket(a.addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    err = std::strerror(errno);
    return -1;
  }
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  // One socket per worker on the same port: the kernel spreads new connections over workers,
  // so accepting never wakes another thread.
  setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
  if (::bind(fd, reinterpret_cast<const sockaddr*>(&a.addr), a.len) != 0 || ::listen(fd, 1024) != 0) {
    err = std::strerror(errno);
    ::close(fd);
    return -1;
  }
  return fd;
}

int bind_unix(const std::string& path, std::string& err) {
  sockaddr_un sun{};
  if (path.size() >= sizeof sun.sun_path) {
    err = "socket path too long";
    return -1;
  }
  sun.sun_family = AF_UNIX;
  std::memcpy(sun.sun_path, path.c_str(), path.size() + 1);
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    err = std::strerror(errno);
    return -1;
  }
  ::unlink(path.c_str());  // a stale socket from a previous run
  if (::bind(fd, reinterpret_cast<const sockaddr*>(&sun), sizeof sun) != 0 || ::listen(fd, 1024) != 0) {
    err = std::strerror(errno);
    ::close(fd);
    return -1;
  }
  ::chmod(path.c_str(), 0777);
  return fd;
}

bool build_users(const conf::Config& cfg, Shared& sh) {
  bool ok = true;
  for (const conf::UserEntry& u : cfg.users) {
    UserAuth a;
    a.name = u.name;
    if (u.secret.rfind("SCRAM-SHA-256$", 0) == 0) {
      auto v = auth::parse_scram_verifier(u.secret);
      if (!v) {
        log::error("config").kv("event", "bad_secret").kv("user", u.name).kv("line", u.line).kv("reason", "malformed SCRAM verifier").emit();
        ok = false;
        continue;
      }
      a.kind = UserAuth::Kind::kScramVerifier;
      a.verifier = std::move(*v);
    } else if (auth::is_md5_hash(u.secret)) {
      a.kind = UserAuth::Kind::kMd5Hash;
      a.md5_hash = u.secret;
    } else {
      a.kind = UserAuth::Kind::kPassword;
      a.password = u.secret;
      auto v = auth::make_scram_verifier(u.secret);
      auto h = auth::md5_password_hash(u.name, u.secret);
      if (!v || !h) {
        log::error("config").kv("event", "bad_secret").kv("user", u.name).kv("reason", "could not derive keys").emit();
        ok = false;
        continue;
      }
      a.verifier = std::move(*v);
      a.md5_hash = std::move(*h);
    }
    sh.users.emplace(a.name, std::move(a));
  }
  return ok;
}

// The main thread's mailbox: workers post completions (barrier acknowledgements) here.
class MainMailbox {
 public:
  explicit MainMailbox(event_base* base) {
    fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    ev_.reset(event_new(base, fd_, EV_READ | EV_PERSIST, &MainMailbox::on_ready, this));
    event_add(ev_.get(), nullptr);
  }
  ~MainMailbox() {
    ev_.reset();
    ::close(fd_);
  }
  MainMailbox(const MainMailbox&) = delete;
  MainMailbox& operator=(const MainMailbox&) = delete;

  void post(std::function<void()> fn) {
    {
      std::lock_guard lock(mu_);
      items_.push_back(std::move(fn));
    }
    const std::uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(fd_, &one, sizeof one);
  }

 private:
  static void on_ready(evutil_socket_t fd, short, void* arg) {
    auto* m = static_cast<MainMailbox*>(arg);
    std::uint64_t v = 0;
    [[maybe_unused]] ssize_t n = ::read(fd, &v, sizeof v);
    std::vector<std::function<void()>> items;
    {
      std::lock_guard lock(m->mu_);
      items.swap(m->items_);
    }
    for (auto& fn : items) fn();
  }

  int fd_ = -1;
  EventPtr ev_;
  std::mutex mu_;
  std::vector<std::function<void()>> items_;
};

// Publishing a snapshot is a barrier: every worker applies it (closes what lost the right to
// serve) and acknowledges; only then does the keeper move on.
class ProxyEffects final : public health::Effects {
 public:
  ProxyEffects(Shared& sh, MainMailbox& mailbox) : sh_(sh), mailbox_(mailbox) {}

  void publish(routing::Snapshot snap, std::function<void(std::uint64_t)> done) override {
    const std::string why = snap.why;
    const bool has_writer = snap.writer.has_value();
    const std::string writer = has_writer ? snap.nodes[*snap.writer].name : "none";
    const std::uint64_t epoch = sh_.table.publish(std::move(snap));
    log::info("routing").kv("event", "epoch").kv("epoch", epoch).kv("writer", writer).kv("why", why).emit();
    auto remaining = std::make_shared<std::atomic<int>>(static_cast<int>(sh_.workers.size()));
    auto finish = std::make_shared<std::function<void(std::uint64_t)>>(std::move(done));
    if (sh_.workers.empty()) {
      mailbox_.post([finish, epoch] { (*finish)(epoch); });
      return;
    }
    for (Worker* w : sh_.workers) {
      w->post([this, remaining, finish, epoch](Worker& wk) {
        wk.apply_epoch();
        if (remaining->fetch_sub(1) == 1) mailbox_.post([finish, epoch] { (*finish)(epoch); });
      });
    }
  }

  void pause_writes(routing::NodeId, health::Millis, std::function<void(int)> done) override {
    sh_.writes_paused.store(true);
    mailbox_.post([done = std::move(done)] { done(0); });
  }

  void resume_writes() override { sh_.writes_paused.store(false); }

 private:
  Shared& sh_;
  MainMailbox& mailbox_;
};

struct MainLoop {
  Shared* shared = nullptr;
  std::vector<std::unique_ptr<Worker>>* workers = nullptr;
  event_base* base = nullptr;
  int terms = 0;
};

void on_signal(evutil_socket_t sig, short, void* arg) {
  auto* m = static_cast<MainLoop*>(arg);
  if (sig == SIGHUP) {
    log::warning("main").kv("event", "sighup").kv("detail", "configuration reload is not implemented yet; restart to apply changes").emit();
    return;
  }
  const bool graceful = sig == SIGTERM && m->terms == 0;
  ++m->terms;
  log::info("main").kv("event", graceful ? "shutdown_graceful" : "shutdown_fast").kv("signal", sig == SIGTERM ? "SIGTERM" : "SIGINT").emit();
  m->shared->draining.store(true);
  for (auto& w : *m->workers) w->post([graceful](Worker& wk) { wk.begin_shutdown(graceful); });
}

void on_watch(evutil_socket_t, short, void* arg) {
  auto* m = static_cast<MainLoop*>(arg);
  if (m->shared->workers_running.load() == 0) event_base_loopexit(m->base, nullptr);
}

}  // namespace

int run(const conf::Config& config) {
  log::set_level(config.general.log_level);
  signal(SIGPIPE, SIG_IGN);

  Shared sh;
  sh.config = std::make_shared<const conf::Config>(config);
  if (!build_users(config, sh)) return 2;
  {
    // The mock exchange's salts must be stable across restarts (or a restart would reveal which
    // users exist) and unknowable without the users file: derive them from its secrets.
    std::string all;
    for (const conf::UserEntry& u : config.users) all += u.name + '\0' + u.secret + '\0';
    auto digest = auth::sha256("pgkeel mock SCRAM\0" + all);
    if (!digest) return 2;
    sh.mock_secret = std::string(auth::key_bytes(*digest));
  }

  // Nodes: addresses resolved once here, never on a worker.
  routing::Snapshot snap;
  snap.epoch = 1;
  int primary = config.node_index(config.cluster.initial_primary);
  if (primary < 0) primary = 0;
  for (std::size_t i = 0; i < config.nodes.size(); ++i) {
    const conf::NodeConfig& n = config.nodes[i];
    NodeAddress a;
    std::string err;
    if (!resolve(n.host, n.port, a, err)) {
      log::error("main").kv("event", "resolve_failed").kv("node", n.name).kv("host", n.host).kv("reason", err).emit();
      return 2;
    }
    sh.node_addrs.push_back(a);
    routing::NodeView v;
    v.id = static_cast<routing::NodeId>(i);
    v.name = n.name;
    v.host = n.host;
    v.port = n.port;
    v.role = static_cast<int>(i) == primary ? routing::Role::kPrimary : routing::Role::kStandby;
    snap.nodes.push_back(v);
  }
  // No writer until the keeper's first probes confirm one; clients that arrive meanwhile wait.
  snap.hold = true;
  snap.why = "waiting for the first probes of every node";
  sh.table.publish(std::move(snap));
  sh.hold_timeout = config.failover.hold_timeout;
  sh.server_conns = std::make_unique<std::atomic<int>[]>(config.nodes.size());
  sh.node_waiters = std::make_unique<std::atomic<int>[]>(config.nodes.size());

  unsigned nworkers = config.general.workers > 0 ? static_cast<unsigned>(config.general.workers)
                                                 : std::max(1u, std::thread::hardware_concurrency());
  nworkers = std::min(nworkers, 255u);

  // Listening sockets: TCP one per worker (SO_REUSEPORT); Unix sockets shared.
  std::vector<std::vector<ListenSocket>> per_worker(nworkers);
  std::vector<int> shared_fds;
  std::vector<std::string> unix_paths;
  for (std::size_t li = 0; li < config.listeners.size(); ++li) {
    const conf::ListenerConfig& l = config.listeners[li];
    for (unsigned w = 0; w < nworkers; ++w) {
      std::string err;
      const int fd = bind_tcp(l.host, l.port, err);
      if (fd < 0) {
        log::error("main").kv("event", "listen_failed").kv("listener", l.name).kv("addr", l.host + ":" + std::to_string(l.port)).kv("reason", err).emit();
        return 2;
      }
      per_worker[w].push_back({fd, li, false});
    }
    if (!l.unix_socket_dir.empty()) {
      const std::string path = l.unix_socket_dir + "/.s.PGSQL." + std::to_string(l.port);
      std::string err;
      const int fd = bind_unix(path, err);
      if (fd < 0) {
        log::error("main").kv("event", "listen_failed").kv("listener", l.name).kv("addr", path).kv("reason", err).emit();
        return 2;
      }
      shared_fds.push_back(fd);
      unix_paths.push_back(path);
      for (unsigned w = 0; w < nworkers; ++w) per_worker[w].push_back({fd, li, true});
    }
    log::info("main").kv("event", "listening").kv("listener", l.name).kv("addr", l.host + ":" + std::to_string(l.port))
        .kv("intent", routing::to_string(l.intent)).emit();
  }

  // Workers get no signals: main handles them.
  sigset_t block;
  sigemptyset(&block);
  sigaddset(&block, SIGTERM);
  sigaddset(&block, SIGINT);
  sigaddset(&block, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &block, nullptr);
  std::vector<std::unique_ptr<Worker>> workers;
  for (unsigned w = 0; w < nworkers; ++w) {
    workers.push_back(std::make_unique<Worker>(sh, w, std::move(per_worker[w])));
    sh.workers.push_back(workers.back().get());
  }
  sh.workers_running.store(static_cast<int>(nworkers));
  for (auto& w : workers) w->start();

  EventBasePtr base(event_base_new());
  MainLoop m{&sh, &workers, base.get(), 0};
  EventPtr sigterm(evsignal_new(base.get(), SIGTERM, &on_signal, &m));
  EventPtr sigint(evsignal_new(base.get(), SIGINT, &on_signal, &m));
  EventPtr sighup(evsignal_new(base.get(), SIGHUP, &on_signal, &m));
  event_add(sigterm.get(), nullptr);
  event_add(sigint.get(), nullptr);
  event_add(sighup.get(), nullptr);
  pthread_sigmask(SIG_UNBLOCK, &block, nullptr);
  EventPtr watch(event_new(base.get(), -1, EV_PERSIST, &on_watch, &m));
  const timeval tv{0, 100 * 1000};
  event_add(watch.get(), &tv);
  MainMailbox mailbox(base.get());
  sh.post_main = [&mailbox](std::function<void()> fn) { mailbox.post(std::move(fn)); };
  ProxyEffects effects(sh, mailbox);
  health::KeeperConfig kc;
  kc.probe_interval = config.health.probe_interval;
  kc.probe_timeout = config.health.probe_timeout;
  kc.timeouts_to_down = config.health.timeouts_to_down;
  kc.oks_to_up = config.health.oks_to_up;
  kc.admin_user = config.health.user;
  kc.admin_password = config.health.password;
  kc.admin_dbname = config.health.dbname;
  kc.witness_max_receipt_age_s = static_cast<double>(config.health.witness_receipt_age.count()) / 1000.0;
  kc.automatic = config.failover.automatic;
  kc.sync_mode = config.failover.synchronous_mode == conf::SyncMode::kOff      ? health::SyncMode::kOff
                 : config.failover.synchronous_mode == conf::SyncMode::kStrict ? health::SyncMode::kStrict
                                                                               : health::SyncMode::kOn;
  kc.max_lag_on_failover = config.failover.max_lag_on_failover;
  kc.fence_command = config.failover.fence_command;
  kc.fence_required = config.failover.fence_required;
  kc.on_promote = config.failover.on_promote;
  kc.on_degraded = config.failover.on_degraded;
  kc.replication_user = config.failover.replication_user;
  kc.replication_password = config.failover.replication_password;
  kc.promote_timeout = config.failover.promote_timeout;
  kc.state_file = config.general.state_file;
  kc.initial_primary = config.nodes[primary].name;
  std::vector<health::NodeTarget> targets;
  for (std::size_t i = 0; i < config.nodes.size(); ++i) {
    const conf::NodeConfig& n = config.nodes[i];
    char host[INET6_ADDRSTRLEN] = {0};
    const sockaddr_storage& ss = sh.node_addrs[i].addr;
    if (ss.ss_family == AF_INET) {
      inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(&ss)->sin_addr, host, sizeof host);
    } else {
      inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6*>(&ss)->sin6_addr, host, sizeof host);
    }
    targets.push_back({n.name, host, n.port, n.priority});
  }
  health::Keeper keeper(base.get(), kc, targets, sh.table, effects);
  keeper.on_event = [](const health::Event& e) {
    log::info("health").kv("event", e.kind).kv("id", e.id).kv("epoch", e.epoch).kv("node", e.node).kv("detail", e.text).emit();
  };
  sh.keeper = &keeper;
  sh.report_transport_failure = [&mailbox, &keeper](routing::NodeId node) {
    mailbox.post([&keeper, node] { keeper.suspect(node); });
  };
  keeper.start();
  std::unique_ptr<Console> console;
  if (config.console.port != 0) {
    console = std::make_unique<Console>(sh, base.get());
    if (!console->listen(config.console.host, config.console.port)) {
      for (auto& w : workers) w->post([](Worker& wk) { wk.begin_shutdown(false); });
      for (auto& w : workers) w->join();
      return 2;
    }
  }

  std::unique_ptr<StatusServer> status;
  if (config.status.port != 0) {
    status = std::make_unique<StatusServer>(sh, base.get());
    if (!status->listen(config.status.host, config.status.port)) {
      for (auto& w : workers) w->post([](Worker& wk) { wk.begin_shutdown(false); });
      for (auto& w : workers) w->join();
      return 2;
    }
  }

  log::info("main").kv("event", "started").kv("workers", nworkers).kv("nodes", static_cast<unsigned>(config.nodes.size()))
      .kv("primary", config.nodes[primary].name).kv("version", PGKEEL_VERSION).emit();

  event_base_dispatch(base.get());

  for (auto& w : workers) w->join();
  workers.clear();
  for (int fd : shared_fds) ::close(fd);
  for (const std::string& p : unix_paths) ::unlink(p.c_str());
  log::info("main").kv("event", "exited").emit();
  return 0;
}

}  // namespace pgkeel::proxy
