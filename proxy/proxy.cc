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

#include <fcntl.h>
#include <sys/eventfd.h>

#include <cerrno>
#include <functional>
#include <mutex>
#include <optional>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "conf/endpoint.h"
#include "health/keeper.h"
#include "health/record_store_etcd.h"
#include "proxy/auth/md5.h"
#include "proxy/console.h"
#include "proxy/control.h"
#include "proxy/fd_limit.h"
#include "conf/load.h"
#include "conf/reload.h"
#include "proxy/handles.h"
#include "proxy/log.h"
#include "proxy/shared.h"
#include "proxy/status_http.h"
#include "proxy/session_transfer.h"
#include "proxy/takeover.h"
#include "proxy/tls.h"
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

// Accept queue per listening socket. A pool reconnecting after a failover, or a flood, arrives in
// a burst; a full queue drops SYNs and the client's retry waits a whole second. The kernel caps
// this at net.core.somaxconn (4096 on current kernels).
constexpr int kListenBacklog = 4096;

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
  if (::bind(fd, reinterpret_cast<const sockaddr*>(&a.addr), a.len) != 0 || ::listen(fd, kListenBacklog) != 0) {
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
  if (::bind(fd, reinterpret_cast<const sockaddr*>(&sun), sizeof sun) != 0 || ::listen(fd, kListenBacklog) != 0) {
    err = std::strerror(errno);
    ::close(fd);
    return -1;
  }
  ::chmod(path.c_str(), 0777);
  return fd;
}

bool build_users(const conf::Config& cfg, UserMap& users) {
  bool ok = true;
  for (const conf::UserEntry& u : cfg.users) {
    std::string error;
    std::optional<UserAuth> a = make_user_auth(u.name, u.secret, error);
    if (!a) {
      log::error("config").kv("event", "bad_secret").kv("user", u.name).kv("line", u.line).kv("reason", error).emit();
      ok = false;
      continue;
    }
    users.emplace(u.name, std::move(*a));
  }
  return ok;
}

// TLS contexts for both directions, from [tls] and [server_tls]; false with `error` when a
// certificate or key cannot be used.
bool build_tls(const conf::Config& cfg, Shared& sh, std::string& error) {
  tls::Context toward_clients = tls::make_server_context(cfg.tls, error);
  if (!error.empty()) return false;
  tls::Context toward_servers = tls::make_client_context(cfg.server_tls, error);
  if (!error.empty()) return false;
  sh.set_tls(std::move(toward_clients), std::move(toward_servers));
  return true;
}

// Listening sockets by listener index, kept by the main thread. TCP: one socket per worker
// (SO_REUSEPORT), owned and closed by that worker. Unix: one socket shared by every worker, closed
// and unlinked here once no worker accepts on it any more.
struct ListenerSockets {
  struct Unix {
    int fd = -1;
    std::string path;
  };
  unsigned workers = 0;
  std::vector<Unix> unix_by_listener;
  bool handed_over = false;  // a takeover: the paths now belong to the new process, never unlinked here

  Unix& at(std::size_t li) {
    if (unix_by_listener.size() <= li) unix_by_listener.resize(li + 1);
    return unix_by_listener[li];
  }
  void close_unix(std::size_t li) {
    Unix& u = at(li);
    if (u.fd < 0) return;
    ::close(u.fd);
    // Another listener may have taken over the path since (bind_unix replaces a stale socket).
    bool taken = false;
    for (std::size_t i = 0; i < unix_by_listener.size(); ++i) taken |= i != li && unix_by_listener[i].path == u.path;
    if (!taken && !handed_over) ::unlink(u.path.c_str());
    u = Unix{};
  }
};

std::string unix_path_of(const conf::ListenerConfig& l) {
  return l.unix_socket_dir.empty() ? std::string() : l.unix_socket_dir + "/.s.PGSQL." + std::to_string(l.port);
}

// One listener's new sockets: a TCP socket per worker, and its Unix socket when asked for.
struct BoundListener {
  std::vector<int> tcp;  // by worker
  ListenerSockets::Unix unix_socket;
};

// On failure nothing stays open and `err` names the address.
bool bind_listener(const conf::ListenerConfig& l, unsigned workers, bool with_unix, BoundListener& out, std::string& err) {
  auto fail = [&](const std::string& addr, const std::string& why) {
    for (int fd : out.tcp) ::close(fd);
    out.tcp.clear();
    err = "listener " + l.name + ": cannot listen on " + addr + ": " + why;
    return false;
  };
  for (unsigned w = 0; w < workers; ++w) {
    std::string why;
    const int fd = bind_tcp(l.host, l.port, why);
    if (fd < 0) return fail(l.host + ":" + std::to_string(l.port), why);
    out.tcp.push_back(fd);
  }
  const std::string path = unix_path_of(l);
  if (with_unix && !path.empty()) {
    std::string why;
    out.unix_socket.fd = bind_unix(path, why);
    if (out.unix_socket.fd < 0) return fail(path, why);
    out.unix_socket.path = path;
  }
  log::info("main").kv("event", "listening").kv("listener", l.name).kv("addr", l.host + ":" + std::to_string(l.port))
      .kv("unix", path).kv("intent", routing::to_string(l.intent)).emit();
  return true;
}

// Hands listener `li`'s sockets to the workers: its own TCP socket to each, the shared Unix one
// (`unix_fd`, -1: none) to all.
void hand_out(std::size_t li, const BoundListener& b, int unix_fd, std::vector<std::vector<ListenSocket>>& per_worker) {
  for (std::size_t w = 0; w < per_worker.size(); ++w) {
    per_worker[w].push_back({b.tcp[w], li, false});
    if (unix_fd >= 0) per_worker[w].push_back({unix_fd, li, true});
  }
}

// What the keeper needs of a node: its numeric address (resolved once, on the main thread).
// `server_sslmode`: [server_tls] sslmode, for nodes without their own.
health::NodeTarget node_target(const conf::NodeConfig& n, const NodeAddress& a, conf::SslMode server_sslmode) {
  char host[INET6_ADDRSTRLEN] = {0};
  if (a.addr.ss_family == AF_INET) {
    inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(&a.addr)->sin_addr, host, sizeof host);
  } else {
    inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6*>(&a.addr)->sin6_addr, host, sizeof host);
  }
  health::NodeTarget t;
  t.name = n.name;
  t.host = host;
  t.host_name = n.host;
  t.port = n.port;
  t.priority = n.priority;
  t.sslmode = n.sslmode_set ? n.sslmode : server_sslmode;
  t.retired = n.retired;
  return t;
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

  health::NodeActivity activity(routing::NodeId node) override {
    health::NodeActivity a;
    if (node >= kMaxNodes) return a;
    for (const Worker* w : sh_.workers) {
      const WorkerStats& st = w->stats();
      const Traffic& t = st.by_node[node];
      a.answers += t.queries.get() + t.bytes_out.get() + st.node_answers[node].get();
      a.transactions += t.transactions.get();
    }
    return a;
  }

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

  void pause_writes(routing::NodeId node, health::Millis drain_timeout, std::function<void(int)> done) override {
    sh_.writes_paused.store(true);
    log::info("routing").kv("event", "writes_paused").kv("node", sh_.config->nodes[node].name).emit();
    drain(sh_, [node](Worker& w) { return w.running_on(node); }, drain_timeout, std::move(done));
  }

  void resume_writes() override {
    sh_.writes_paused.store(false);
    log::info("routing").kv("event", "writes_resumed").emit();
    resume_workers(sh_);
  }

 private:
  Shared& sh_;
  MainMailbox& mailbox_;
};

struct MainLoop {
  Shared* shared = nullptr;
  std::vector<std::unique_ptr<Worker>>* workers = nullptr;
  event_base* base = nullptr;
  int terms = 0;
  ListenerSockets* sockets = nullptr;
};

// The running process's side of a takeover (proxy/takeover.h): a Unix socket on the main loop.
// One takeover at a time; the keeper halts before the listeners go, and resumes if the new
// process does not say "ready".
class TakeoverHost {
 public:
  TakeoverHost(MainLoop& m, std::string path) : m_(m), path_(std::move(path)) {}
  ~TakeoverHost() {
    close_conn();
    listener_.reset();
    if (bound_ && !done_) ::unlink(path_.c_str());
  }
  TakeoverHost(const TakeoverHost&) = delete;
  TakeoverHost& operator=(const TakeoverHost&) = delete;

  void set_services(Console* console, StatusServer* status) {
    console_ = console;
    status_ = status;
  }

  // Binds the socket (owner only), replacing a stale one. False, logged, when it cannot.
  bool listen() {
    std::string err;
    const int fd = bind_unix(path_, err);
    if (fd < 0) {
      log::warning("main").kv("event", "takeover_socket_failed").kv("path", path_).kv("reason", err).emit();
      return false;
    }
    ::chmod(path_.c_str(), 0600);
    listener_.reset(evconnlistener_new(m_.base, &TakeoverHost::on_accept, this, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, 0, fd));
    if (!listener_) {
      ::close(fd);
      return false;
    }
    bound_ = true;
    return true;
  }

 private:
  static void on_accept(evconnlistener*, evutil_socket_t fd, sockaddr*, int, void* arg) {
    static_cast<TakeoverHost*>(arg)->begin(fd);
  }

  void begin(int conn) {
    auto refuse = [&](const std::string& why) {
      std::string e;
      takeover::send_parcel(conn, takeover::Parcel{"refused " + why, {}}, std::chrono::seconds(2), e);
      log::warning("main").kv("event", "takeover_refused").kv("reason", why).emit();
      ::close(conn);
    };
    ucred cred{};
    socklen_t len = sizeof cred;
    if (::getsockopt(conn, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 || (cred.uid != ::geteuid() && cred.uid != 0)) {
      return refuse("only the user pgkeel runs as (or root) may take over");
    }
    std::string err;
    std::optional<takeover::Parcel> hello = takeover::recv_parcel(conn, std::chrono::seconds(5), err);
    if (!hello || hello->text.rfind("hello", 0) != 0) {
      if (hello) for (int fd : hello->fds) ::close(fd);
      return refuse("no hello" + (err.empty() ? std::string() : ": " + err));
    }
    for (int fd : hello->fds) ::close(fd);
    if (conn_ >= 0 || done_) return refuse("a takeover is already under way");
    if (m_.shared->draining.load()) return refuse("this pgkeel is shutting down");
    health::Keeper* k = m_.shared->keeper;
    std::string why;
    if (k != nullptr && !k->halt(why)) return refuse(why);
    conn_ = conn;
    peer_ = takeover::field(hello->text, "pid");
    log::info("main").kv("event", "takeover_begins").kv("new_pid", peer_).kv("new_version", takeover::field(hello->text, "version")).emit();
    // The workers stop accepting now: what arrives meanwhile waits in the sockets' queues for
    // the new process, and never lands in a process about to drain.
    released_.assign(m_.workers->size(), {});
    auto mu = std::make_shared<std::mutex>();
    count_on_workers(
        *m_.shared,
        [this, mu](Worker& w) {
          std::vector<ListenSocket> mine = w.release_listeners();
          std::lock_guard lock(*mu);
          released_[w.index()] = std::move(mine);
          return 0;
        },
        [this](int) { send_listeners(); });
  }

  void send_listeners() {
    const conf::Config& c = *m_.shared->config;
    std::vector<takeover::Handed> handed;
    auto dup = [](int fd) { return fd < 0 ? -1 : ::fcntl(fd, F_DUPFD_CLOEXEC, 0); };
    for (const std::vector<ListenSocket>& mine : released_) {
      for (const ListenSocket& ls : mine) {
        if (ls.shared || ls.listener_index >= c.listeners.size() || c.listeners[ls.listener_index].retired) continue;
        const conf::ListenerConfig& l = c.listeners[ls.listener_index];
        if (const int fd = dup(ls.fd); fd >= 0) handed.push_back({takeover::Handed::Kind::kTcp, l.name, l.host, l.port, {}, fd});
      }
    }
    for (std::size_t li = 0; li < m_.sockets->unix_by_listener.size() && li < c.listeners.size(); ++li) {
      const ListenerSockets::Unix& u = m_.sockets->unix_by_listener[li];
      if (u.fd < 0 || c.listeners[li].retired) continue;
      if (const int fd = dup(u.fd); fd >= 0) handed.push_back({takeover::Handed::Kind::kUnix, c.listeners[li].name, {}, 0, u.path, fd});
    }
    if (console_ != nullptr) {
      if (const int fd = dup(console_->listener_fd()); fd >= 0) {
        handed.push_back({takeover::Handed::Kind::kConsole, {}, c.console.host, c.console.port, {}, fd});
      }
    }
    if (status_ != nullptr) {
      if (const int fd = dup(status_->listener_fd()); fd >= 0) {
        handed.push_back({takeover::Handed::Kind::kStatus, {}, c.status.host, c.status.port, {}, fd});
      }
    }
    std::string err;
    const bool sent = takeover::send_parcel(conn_, takeover::listeners_parcel(handed), std::chrono::seconds(5), err);
    for (const takeover::Handed& h : handed) ::close(h.fd);  // the new process holds its own now
    if (!sent) return fail("sending the listeners: " + err);
    // The keeper has stopped: where writes go now is what the new keeper starts from.
    const std::shared_ptr<const routing::Snapshot> snap = m_.shared->table.current();
    takeover::KeeperHandover kh;
    kh.epoch = m_.shared->table.epoch();
    if (snap->writer && *snap->writer < snap->nodes.size()) kh.writer = snap->nodes[*snap->writer].name;
    if (!takeover::send_parcel(conn_, takeover::Parcel{takeover::keeper_text(kh), {}}, std::chrono::seconds(5), err)) {
      return fail("sending the keeper's state: " + err);
    }
    ready_.reset(event_new(m_.base, conn_, EV_READ, &TakeoverHost::on_ready, this));
    const timeval within{60, 0};
    event_add(ready_.get(), &within);
  }

  static void on_ready(evutil_socket_t, short what, void* arg) {
    auto* self = static_cast<TakeoverHost*>(arg);
    if ((what & EV_TIMEOUT) != 0) return self->fail("the new process did not say ready within 60 s");
    std::string err;
    std::optional<takeover::Parcel> p = takeover::recv_parcel(self->conn_, std::chrono::seconds(2), err);
    if (!p || p->text != "ready") {
      if (p) for (int fd : p->fds) ::close(fd);
      return self->fail(p ? "the new process said \"" + p->text.substr(0, 80) + "\"" : "the new process went away (" + err + ")");
    }
    self->handed_over();
  }

  // The new process accepts on every socket: this one stops, and drains: each session moves to
  // the new process at its next idle point (over this connection, its socket alongside).
  void handed_over() {
    done_ = true;
    ready_.reset();
    for (std::vector<ListenSocket>& mine : released_) {
      for (const ListenSocket& ls : mine) {
        if (!ls.shared) ::close(ls.fd);
      }
    }
    released_.clear();
    listener_.reset();
    m_.sockets->handed_over = true;
    if (console_ != nullptr) console_->close_listener();
    if (status_ != nullptr) status_->close_listener();
    log::info("main").kv("event", "taken_over").kv("new_pid", peer_)
        .kv("detail", "the new process accepts; sessions here finish and close").emit();
    if (m_.shared->keeper != nullptr) m_.shared->keeper->note_event("taken_over", "", "pgkeel process " + peer_ + " took over the listeners");
    m_.shared->draining.store(true);
    m_.shared->hand_session = [this](std::vector<int> fds, std::string transfer) { send_session(std::move(fds), std::move(transfer)); };
    for (auto& w : *m_.workers) w->post([](Worker& wk) { wk.begin_shutdown(true, true); });
  }

  void send_session(std::vector<int> fds, std::string transfer) {
    std::string err;
    if (conn_ < 0 || !takeover::send_parcel(conn_, takeover::Parcel{"session\n" + transfer, fds}, std::chrono::seconds(5), err)) {
      log::error("main").kv("event", "session_not_handed_over").kv("reason", conn_ < 0 ? "the new process went away" : err).emit();
      if (conn_ >= 0 && !err.empty()) close_conn();
    }
    for (int fd : fds) ::close(fd);  // the new process holds the sockets now (or nobody does: the client sees it close)
  }

  void fail(const std::string& why) {
    log::error("main").kv("event", "takeover_failed").kv("new_pid", peer_).kv("reason", why)
        .kv("detail", "this process carries on: it still accepts, and its keeper runs again").emit();
    close_conn();
    // Accepting again, on the very sockets.
    for (std::size_t w = 0; w < released_.size() && w < m_.workers->size(); ++w) {
      (*m_.workers)[w]->post([mine = std::move(released_[w])](Worker& wk) { wk.change_listeners(mine, {}); });
    }
    released_.clear();
    if (m_.shared->keeper != nullptr) m_.shared->keeper->resume();
  }

  void close_conn() {
    ready_.reset();
    if (conn_ >= 0) ::close(conn_);
    conn_ = -1;
  }

  MainLoop& m_;
  std::string path_;
  Console* console_ = nullptr;
  StatusServer* status_ = nullptr;
  ListenerPtr listener_;
  EventPtr ready_;
  int conn_ = -1;
  std::vector<std::vector<ListenSocket>> released_;  // by worker: what they accepted on
  std::string peer_;
  bool bound_ = false;
  bool done_ = false;
};

// The new process's side of the drain: sessions arrive with their sockets until the previous
// process closes the connection; each joins a worker (the one its cancel key names, if any).
class SessionReceiver {
 public:
  SessionReceiver(MainLoop& m, int sock) : m_(m), sock_(sock) {
    ev_.reset(event_new(m_.base, sock_, EV_READ | EV_PERSIST, &SessionReceiver::on_read, this));
    event_add(ev_.get(), nullptr);
  }
  ~SessionReceiver() {
    ev_.reset();
    if (sock_ >= 0) ::close(sock_);
  }
  SessionReceiver(const SessionReceiver&) = delete;
  SessionReceiver& operator=(const SessionReceiver&) = delete;

 private:
  static void on_read(evutil_socket_t, short, void* arg) {
    auto* self = static_cast<SessionReceiver*>(arg);
    std::string err;
    std::optional<takeover::Parcel> p = takeover::recv_parcel(self->sock_, std::chrono::seconds(5), err);
    if (!p) {
      log::info("main").kv("event", "takeover_done").kv("sessions", self->count_).kv("detail", err).emit();
      self->ev_.reset();
      ::close(self->sock_);
      self->sock_ = -1;
      return;
    }
    if (p->text.rfind("session\n", 0) != 0 || p->fds.empty() || p->fds.size() > 2) {
      for (int fd : p->fds) ::close(fd);
      log::warning("main").kv("event", "takeover_parcel_ignored").kv("text", p->text.substr(0, 40)).emit();
      return;
    }
    std::optional<SessionTransfer> t = decode_session(std::string_view(p->text).substr(8), err);
    if (!t) {
      for (int fd : p->fds) ::close(fd);
      log::warning("main").kv("event", "session_not_adopted").kv("reason", err).emit();
      return;
    }
    ++self->count_;
    std::vector<std::unique_ptr<Worker>>& ws = *self->m_.workers;
    const std::uint32_t named = static_cast<std::uint32_t>(t->cancel_pid) >> 22;
    Worker& w = named < ws.size() ? *ws[named] : *ws[self->count_ % ws.size()];
    const int server_fd = p->fds.size() == 2 ? p->fds[1] : -1;
    w.post([fd = p->fds[0], server_fd, t = std::move(*t)](Worker& wk) { wk.adopt_client(fd, server_fd, t); });
  }

  MainLoop& m_;
  int sock_ = -1;
  EventPtr ev_;
  std::uint64_t count_ = 0;
};

// RESTART and SIGUSR2: this process's command line again, with --takeover, in a session of its
// own (it outlives this process).
std::string spawn_takeover(const std::vector<std::string>& command, const std::string& socket_path, bool& ok) {
  ok = false;
  if (socket_path.empty()) return "no takeover socket: set general.takeover_socket (or general.state_file)";
  if (command.empty()) return "this process does not know how it was started";
  std::vector<std::string> args = command;
  args.emplace_back("--takeover");
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid < 0) return std::string("fork failed: ") + std::strerror(errno);
  if (pid == 0) {
    ::setsid();
    sigset_t none;
    sigemptyset(&none);
    pthread_sigmask(SIG_SETMASK, &none, nullptr);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  ok = true;
  log::info("main").kv("event", "takeover_started").kv("new_pid", static_cast<std::int64_t>(pid)).kv("binary", command[0]).emit();
  return "pgkeel process " + std::to_string(pid) + " (" + command[0] + ") is taking over; this one drains once it accepts";
}

// What a reload cannot change in a running process; each entry names the key. Empty: the new
// configuration can be applied live.
std::vector<std::string> restart_only_changes(const conf::Config& a, const conf::Config& b) {
  std::vector<std::string> out;
  auto check = [&](bool same, const char* key) {
    if (!same) out.emplace_back(key);
  };
  check(a.general.workers == b.general.workers, "general.workers");
  check(a.general.state_file == b.general.state_file, "general.state_file");
  check(a.general.takeover_socket == b.general.takeover_socket, "general.takeover_socket");
  {
    const conf::StoreConfig& s = a.store;
    const conf::StoreConfig& r = b.store;
    check(s.endpoints == r.endpoints && s.ca_file == r.ca_file && s.cert_file == r.cert_file && s.key_file == r.key_file &&
              s.username == r.username && s.password == r.password && s.prefix == r.prefix && s.name == r.name &&
              s.advertise_host == r.advertise_host && s.lease_ttl == r.lease_ttl && s.request_timeout == r.request_timeout &&
              s.failsafe == r.failsafe,
          "[store]");
  }
  check(a.console.host == b.console.host && a.console.port == b.console.port, "console.host/port");
  check(a.status.host == b.status.host && a.status.port == b.status.port, "status.host/port");
  const conf::HealthConfig& h = a.health;
  const conf::HealthConfig& g = b.health;
  check(h.probe_interval == g.probe_interval && h.probe_timeout == g.probe_timeout && h.timeouts_to_down == g.timeouts_to_down &&
            h.oks_to_up == g.oks_to_up && h.user == g.user && h.password == g.password && h.dbname == g.dbname &&
            h.witness_receipt_age == g.witness_receipt_age,
        "[health]");
  conf::FailoverConfig f = a.failover;
  f.hold_timeout = b.failover.hold_timeout;  // the one [failover] key a reload applies
  const conf::FailoverConfig& e = b.failover;
  check(f.automatic == e.automatic && f.synchronous_mode == e.synchronous_mode && f.max_lag_on_failover == e.max_lag_on_failover &&
            f.promote_timeout == e.promote_timeout && f.fence_command == e.fence_command && f.fence_required == e.fence_required &&
            f.on_promote == e.on_promote && f.on_degraded == e.on_degraded && f.replication_user == e.replication_user &&
            f.replication_password == e.replication_password && f.stop_command == e.stop_command &&
            f.rejoin_command == e.rejoin_command && f.rejoin_auto == e.rejoin_auto && f.switchover_drain_timeout == e.switchover_drain_timeout &&
            f.switchover_timeout == e.switchover_timeout,
        "[failover] (other than hold_timeout)");
  return out;
}

// RELOAD and SIGHUP: the whole file is read and validated again; if anything is wrong, or
// something changed that only a restart can apply, nothing is applied and every reason is said.
// Listeners and nodes change live: new sockets are bound and new node names resolved before
// anything is applied (a failure rejects the reload whole), then workers take the new
// configuration and sockets, and only once all of them have, the keeper probes new nodes and
// routing drops removed ones.
std::string reload_config(Shared& sh, ListenerSockets& ls, const std::string& who, bool& ok) {
  ok = false;
  const std::string path = sh.config->source_file;
  conf::LoadResult res = conf::load_config(path);
  std::string why;
  conf::SlotPlan plan;
  if (res.errors.empty()) {
    const std::vector<std::string> fixed = restart_only_changes(*sh.config, *res.config);
    for (const std::string& k : fixed) {
      res.errors.push_back({path, 0, k, "changed, and this takes a restart to apply"});
    }
    for (conf::ConfigError& e : conf::align_slots(*sh.config, *res.config, kMaxListeners, kMaxNodes, plan)) {
      res.errors.push_back(std::move(e));
    }
  }
  auto users = std::make_shared<UserMap>();
  if (res.errors.empty() && !build_users(*res.config, *users)) {
    res.errors.push_back({res.config->general.users_file, 0, "users", "a secret in the users file is malformed (see the log)"});
  }
  tls::Context toward_clients;
  tls::Context toward_servers;
  if (res.errors.empty()) {
    // New certificates are loaded now; connections made from here on use them.
    std::string error;
    toward_clients = tls::make_server_context(res.config->tls, error);
    if (error.empty()) toward_servers = tls::make_client_context(res.config->server_tls, error);
    if (!error.empty()) res.errors.push_back({path, 0, "tls", error});
  }
  // New nodes: resolved now, on this thread; then the keeper says whether the change is safe.
  std::vector<NodeAddress> added_addrs;
  std::vector<health::NodeTarget> targets;
  if (res.errors.empty()) {
    for (std::size_t i : plan.nodes_added) {
      const conf::NodeConfig& n = res.config->nodes[i];
      NodeAddress a;
      std::string err;
      if (!resolve(n.host, n.port, a, err)) res.errors.push_back({path, 0, "node " + n.name + ".host", "cannot resolve " + n.host + ": " + err});
      added_addrs.push_back(std::move(a));
    }
  }
  if (res.errors.empty()) {
    std::size_t next_added = 0;
    for (std::size_t i = 0; i < res.config->nodes.size(); ++i) {
      const bool is_new = next_added < plan.nodes_added.size() && plan.nodes_added[next_added] == i;
      targets.push_back(node_target(res.config->nodes[i], is_new ? added_addrs[next_added++] : sh.node_addrs[i],
                                    res.config->server_tls.sslmode));
    }
    if (sh.keeper != nullptr) {
      if (std::string no = sh.keeper->check_nodes(targets); !no.empty()) res.errors.push_back({path, 0, "node", no});
    }
  }
  // New and moved listeners: bound now, so that an address in use rejects the reload whole. A
  // moved listener keeps its Unix socket when the path did not change.
  std::vector<std::vector<ListenSocket>> per_worker(ls.workers);
  std::vector<std::size_t> stop_accepting = plan.listeners_removed;
  std::vector<std::size_t> unix_to_close = plan.listeners_removed;
  std::vector<std::pair<std::size_t, ListenerSockets::Unix>> new_unix;  // installed once workers took them
  if (res.errors.empty()) {
    std::vector<std::size_t> to_bind = plan.listeners_moved;
    to_bind.insert(to_bind.end(), plan.listeners_added.begin(), plan.listeners_added.end());
    for (std::size_t li : to_bind) {
      const conf::ListenerConfig& l = res.config->listeners[li];
      const bool moved = li < sh.config->listeners.size();
      const bool keep_unix = moved && unix_path_of(l) == unix_path_of(sh.config->listeners[li]);
      BoundListener b;
      std::string err;
      if (!bind_listener(l, ls.workers, !keep_unix, b, err)) {
        res.errors.push_back({path, 0, "listener " + l.name, err});
        break;
      }
      if (moved) {
        stop_accepting.push_back(li);
        if (!keep_unix) unix_to_close.push_back(li);
      }
      hand_out(li, b, keep_unix ? ls.at(li).fd : b.unix_socket.fd, per_worker);
      if (b.unix_socket.fd >= 0) new_unix.emplace_back(li, b.unix_socket);
    }
    if (!res.errors.empty()) {
      for (auto& v : per_worker) {
        for (const ListenSocket& s : v) {
          if (!s.shared) ::close(s.fd);
        }
      }
      for (auto& [li, u] : new_unix) {
        ::close(u.fd);
        ::unlink(u.path.c_str());
      }
    }
  }
  if (!res.errors.empty()) {
    for (const conf::ConfigError& e : res.errors) {
      log::error("config").kv("event", "reload_rejected").kv("error", e.to_string()).emit();
      why += (why.empty() ? "" : "; ") + e.to_string();
    }
    sh.reload_failures.fetch_add(1);
    const std::string text = "reload rejected, the running configuration is kept: " + why;
    if (sh.keeper != nullptr) sh.keeper->note_event("reload", "", text + " (by " + who + ")");
    return text;
  }
  for (std::size_t k = 0; k < plan.nodes_added.size(); ++k) sh.node_addrs[plan.nodes_added[k]] = added_addrs[k];
  auto next = std::make_shared<const conf::Config>(std::move(*res.config));
  sh.config = next;
  sh.set_users(std::move(users));
  sh.set_tls(std::move(toward_clients), std::move(toward_servers));
  log::set_level(next->general.log_level);
  log::set_format(next->general.log_format == conf::LogFormat::kJson ? log::Format::kJson : log::Format::kText);
  auto sockets = std::make_shared<std::vector<std::vector<ListenSocket>>>(std::move(per_worker));
  count_on_workers(
      sh,
      [next, sockets, stop_accepting](Worker& wk) {
        wk.set_config(next);
        if (!stop_accepting.empty() || !(*sockets)[wk.index()].empty()) wk.change_listeners((*sockets)[wk.index()], stop_accepting);
        return 0;
      },
      [&sh, &ls, unix_to_close, new_unix, targets, who, nodes_changed = plan.nodes_changed()](int) {
        // No worker accepts on the old Unix sockets now.
        for (std::size_t li : unix_to_close) ls.close_unix(li);
        for (const auto& [li, u] : new_unix) ls.at(li) = u;
        if (nodes_changed && sh.keeper != nullptr) sh.keeper->set_nodes(targets, who);
      });
  sh.reloads.fetch_add(1);
  ok = true;
  std::string changes;
  auto say = [&changes, &next](const char* what, const std::vector<std::size_t>& idx, bool node) {
    if (idx.empty()) return;
    changes += std::string(changes.empty() ? "" : "; ") + what;
    for (std::size_t i : idx) changes += " " + (node ? next->nodes[i].name : next->listeners[i].name);
  };
  say("listeners added:", plan.listeners_added, false);
  say("listeners moved:", plan.listeners_moved, false);
  say("listeners removed:", plan.listeners_removed, false);
  say("nodes added:", plan.nodes_added, true);
  say("nodes removed or moved:", plan.nodes_removed, true);
  const std::string text = "configuration reloaded from " + path + " (" + std::to_string(next->users.size()) + " users" +
                           (changes.empty() ? "" : "; " + changes) + ")";
  log::info("config").kv("event", "reloaded").kv("by", who).kv("file", path).kv("changes", changes).emit();
  if (sh.keeper != nullptr) sh.keeper->note_event("reload", "", text + " by " + who);
  return text;
}

void on_signal(evutil_socket_t sig, short, void* arg) {
  auto* m = static_cast<MainLoop*>(arg);
  if (sig == SIGHUP) {
    bool ok = false;
    reload_config(*m->shared, *m->sockets, "SIGHUP", ok);
    return;
  }
  if (sig == SIGUSR2) {
    bool ok = false;
    if (m->shared->restart) m->shared->restart("SIGUSR2", ok);
    return;
  }
  const bool graceful = sig == SIGTERM && m->terms == 0;
  ++m->terms;
  log::info("main").kv("event", graceful ? "shutdown_graceful" : "shutdown_fast").kv("signal", sig == SIGTERM ? "SIGTERM" : "SIGINT").emit();
  m->shared->draining.store(true);
  if (m->shared->keeper != nullptr) m->shared->keeper->step_down();  // [store]: another instance decides now
  for (auto& w : *m->workers) w->post([graceful](Worker& wk) { wk.begin_shutdown(graceful); });
}

// Every few seconds: a sample of the summed worker counters, for "over the last minute".
void on_sample(evutil_socket_t, short, void* arg) {
  auto* m = static_cast<MainLoop*>(arg);
  std::vector<const WorkerStats*> ws;
  for (const auto& w : *m->workers) ws.push_back(&w->stats());
  m->shared->history.add(sum_stats(ws, m->shared->config->listeners.size(), m->shared->config->nodes.size()));
}

void on_watch(evutil_socket_t, short, void* arg) {
  auto* m = static_cast<MainLoop*>(arg);
  if (m->shared->workers_running.load() == 0) event_base_loopexit(m->base, nullptr);
}

}  // namespace

int run(const conf::Config& config, const RunOptions& options) {
  log::set_level(config.general.log_level);
  log::set_format(config.general.log_format == conf::LogFormat::kJson ? log::Format::kJson : log::Format::kText);
  signal(SIGPIPE, SIG_IGN);
  // Before any descriptor is opened: enough of them for the configuration, or no start at all.
  const unsigned nworkers = worker_count(config);
  if (!apply_nofile(config, nworkers, true)) return 2;

  Shared sh;
  sh.config = std::make_shared<const conf::Config>(config);
  {
    auto users = std::make_shared<UserMap>();
    if (!build_users(config, *users)) return 2;
    sh.set_users(std::move(users));
    std::string error;
    if (!build_tls(config, sh, error)) {
      log::error("main").kv("event", "tls_failed").kv("reason", error).emit();
      return 2;
    }
  }
  {
    // The mock exchange's salts must be stable across restarts (or a restart would reveal which
    // users exist) and unknowable without the users file: derive them from its secrets.
    std::string all;
    for (const conf::UserEntry& u : config.users) all += u.name + '\0' + u.secret + '\0';
    auto digest = auth::sha256("pgkeel mock SCRAM\0" + all);
    if (!digest) return 2;
    sh.mock_secret = std::string(auth::key_bytes(*digest));
  }

  // --takeover: the running pgkeel hands its listening sockets over and stops its keeper (it
  // carries on as before if this process goes away before it says "ready").
  std::optional<takeover::Received> taken;
  if (options.takeover) {
    if (config.general.takeover_socket.empty()) {
      log::error("main").kv("event", "takeover_failed").kv("reason", "no takeover socket: set general.takeover_socket (or general.state_file)").emit();
      return 2;
    }
    std::string err;
    taken = takeover::request(config.general.takeover_socket, std::chrono::seconds(30), err);
    if (!taken) {
      log::error("main").kv("event", "takeover_failed").kv("socket", config.general.takeover_socket).kv("reason", err).emit();
      return 1;
    }
    log::info("main").kv("event", "takeover").kv("sockets", static_cast<std::uint64_t>(taken->handed.size()))
        .kv("writer", taken->keeper.writer.empty() ? "none" : taken->keeper.writer).kv("epoch", taken->keeper.epoch).emit();
  }
  // The handed-over sockets that match `pred`, taken out of `taken`.
  auto take_handed = [&taken](auto pred) {
    std::vector<int> fds;
    if (!taken) return fds;
    std::vector<takeover::Handed> rest;
    for (takeover::Handed& h : taken->handed) {
      if (pred(h)) {
        fds.push_back(h.fd);
      } else {
        rest.push_back(std::move(h));
      }
    }
    taken->handed = std::move(rest);
    return fds;
  };

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
    sh.node_addrs[i] = a;
    routing::NodeView v;
    v.id = static_cast<routing::NodeId>(i);
    v.name = n.name;
    v.host = n.host;
    v.port = n.port;
    v.role = static_cast<int>(i) == primary ? routing::Role::kPrimary : routing::Role::kStandby;
    snap.nodes.push_back(v);
  }
  // No writer until the keeper's first probes confirm one; clients that arrive meanwhile wait.
  // Taken over: where the previous process's keeper last sent writes, under its epochs.
  snap.hold = true;
  snap.why = "waiting for the first probes of every node";
  std::string taken_writer;
  // Every epoch an earlier run handed out, as its state file says: none is handed out again.
  sh.table.raise_floor(health::LocalRecordStore::epoch_floor(config.general.state_file));
  if (taken) {
    sh.table.raise_floor(taken->keeper.epoch);
    if (const int w = config.node_index(taken->keeper.writer); w >= 0 && !taken->keeper.writer.empty()) {
      snap.writer = static_cast<routing::NodeId>(w);
      snap.hold = false;
      snap.why = "taken over from the previous pgkeel process (its writer " + taken->keeper.writer + ")";
      taken_writer = taken->keeper.writer;
    }
  }
  sh.table.publish(std::move(snap));

  // Listening sockets: TCP one per worker (SO_REUSEPORT); Unix sockets shared.
  ListenerSockets sockets;
  sockets.workers = nworkers;
  std::vector<std::vector<ListenSocket>> per_worker(nworkers);
  for (std::size_t li = 0; li < config.listeners.size(); ++li) {
    const conf::ListenerConfig& l = config.listeners[li];
    std::vector<int> tcp = take_handed([&l](const takeover::Handed& h) {
      return h.kind == takeover::Handed::Kind::kTcp && h.name == l.name && h.host == l.host && h.port == l.port;
    });
    std::vector<int> unix_fd = take_handed([&l](const takeover::Handed& h) {
      return h.kind == takeover::Handed::Kind::kUnix && h.name == l.name && h.path == unix_path_of(l);
    });
    if (tcp.empty()) {
      BoundListener b;
      std::string err;
      if (!bind_listener(l, nworkers, unix_fd.empty(), b, err)) {
        log::error("main").kv("event", "listen_failed").kv("reason", err).emit();
        return 2;
      }
      if (!unix_fd.empty()) b.unix_socket = {unix_fd.front(), unix_path_of(l)};
      sockets.at(li) = b.unix_socket;
      hand_out(li, b, b.unix_socket.fd, per_worker);
      continue;
    }
    // Taken over: the same sockets, so nothing queued in them is lost; spread over this
    // process's workers (a worker may accept on two; one without gets a socket of its own on
    // the same port, SO_REUSEPORT).
    for (std::size_t i = 0; i < tcp.size(); ++i) per_worker[i % nworkers].push_back({tcp[i], li, false});
    for (std::size_t w = tcp.size(); w < nworkers; ++w) {
      std::string err;
      const int fd = bind_tcp(l.host, l.port, err);
      if (fd < 0) {
        log::error("main").kv("event", "listen_failed").kv("listener", l.name).kv("reason", err).emit();
        return 2;
      }
      per_worker[w].push_back({fd, li, false});
    }
    ListenerSockets::Unix u;
    if (!unix_fd.empty()) {
      u = {unix_fd.front(), unix_path_of(l)};
    } else if (!unix_path_of(l).empty()) {
      std::string err;
      u.path = unix_path_of(l);
      u.fd = bind_unix(u.path, err);
      if (u.fd < 0) {
        log::error("main").kv("event", "listen_failed").kv("listener", l.name).kv("reason", err).emit();
        return 2;
      }
    }
    sockets.at(li) = u;
    if (u.fd >= 0) {
      for (unsigned w = 0; w < nworkers; ++w) per_worker[w].push_back({u.fd, li, true});
    }
    log::info("main").kv("event", "listening").kv("listener", l.name).kv("addr", l.host + ":" + std::to_string(l.port))
        .kv("unix", u.path).kv("intent", routing::to_string(l.intent)).kv("taken_over", static_cast<std::uint64_t>(tcp.size())).emit();
  }

  // Workers get no signals: main handles them.
  sigset_t block;
  sigemptyset(&block);
  sigaddset(&block, SIGTERM);
  sigaddset(&block, SIGINT);
  sigaddset(&block, SIGHUP);
  sigaddset(&block, SIGUSR2);
  pthread_sigmask(SIG_BLOCK, &block, nullptr);
  std::vector<std::unique_ptr<Worker>> workers;
  for (unsigned w = 0; w < nworkers; ++w) {
    workers.push_back(std::make_unique<Worker>(sh, w, per_worker[w]));
    sh.workers.push_back(workers.back().get());
  }
  sh.workers_running.store(static_cast<int>(nworkers));
  for (auto& w : workers) w->start();

  EventBasePtr base(event_base_new());
  MainLoop m{&sh, &workers, base.get(), 0, &sockets};
  EventPtr sigterm(evsignal_new(base.get(), SIGTERM, &on_signal, &m));
  EventPtr sigint(evsignal_new(base.get(), SIGINT, &on_signal, &m));
  EventPtr sighup(evsignal_new(base.get(), SIGHUP, &on_signal, &m));
  EventPtr sigusr2(evsignal_new(base.get(), SIGUSR2, &on_signal, &m));
  event_add(sigterm.get(), nullptr);
  event_add(sigint.get(), nullptr);
  event_add(sighup.get(), nullptr);
  event_add(sigusr2.get(), nullptr);
  pthread_sigmask(SIG_UNBLOCK, &block, nullptr);
  sh.main_base = base.get();
  sh.reload = [&sh, &sockets](const std::string& who, bool& ok) { return reload_config(sh, sockets, who, ok); };
  sh.restart = [&options, &config](const std::string& who, bool& ok) {
    std::string text = spawn_takeover(options.command, config.general.takeover_socket, ok);
    log::info("main").kv("event", "restart").kv("by", who).kv("detail", text).emit();
    return text;
  };
  sh.shutdown = [&m](bool graceful) {
    m.shared->draining.store(true);
    log::info("main").kv("event", graceful ? "shutdown_graceful" : "shutdown_fast").kv("signal", "console").emit();
    ++m.terms;
    if (m.shared->keeper != nullptr) m.shared->keeper->step_down();
    for (auto& w : *m.workers) w->post([graceful](Worker& wk) { wk.begin_shutdown(graceful); });
  };
  EventPtr sampler(event_new(base.get(), -1, EV_PERSIST, &on_sample, &m));
  const timeval sample_tv{5, 0};
  event_add(sampler.get(), &sample_tv);
  on_sample(-1, 0, &m);
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
  kc.server_tls = config.server_tls;
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
  kc.stop_command = config.failover.stop_command;
  kc.rejoin_command = config.failover.rejoin_command;
  kc.rejoin_mode = config.failover.rejoin_auto ? health::RejoinMode::kAuto : health::RejoinMode::kManual;
  kc.switchover_drain_timeout = config.failover.switchover_drain_timeout;
  kc.switchover_timeout = config.failover.switchover_timeout;
  kc.initial_primary = config.nodes[primary].name;
  kc.taken_over_writer = taken_writer;
  std::vector<health::NodeTarget> targets;
  for (std::size_t i = 0; i < config.nodes.size(); ++i) targets.push_back(node_target(config.nodes[i], sh.node_addrs[i], config.server_tls.sslmode));
  // [store]: the etcd client lives on this loop and outlives the keeper that uses it.
  std::unique_ptr<store::Client> etcd;
  if (config.store.enabled()) {
    store::ClientOptions co;
    for (const std::string& e : config.store.endpoints) {
      std::string why;
      if (std::optional<conf::Endpoint> ep = conf::parse_endpoint(e, why)) co.endpoints.push_back(*ep);
    }
    co.ca_file = config.store.ca_file;
    co.cert_file = config.store.cert_file;
    co.key_file = config.store.key_file;
    co.username = config.store.username;
    co.password = config.store.password;
    co.request_timeout = config.store.request_timeout;
    etcd = std::make_unique<store::Client>(base.get(), co);
    if (!etcd->setup_error().empty()) {
      log::error("store").kv("event", "store_unusable").kv("detail", etcd->setup_error()).emit();
      for (auto& w : workers) w->post([](Worker& wk) { wk.begin_shutdown(false); });
      for (auto& w : workers) w->join();
      return 2;
    }
  }
  health::Keeper keeper(base.get(), kc, targets, sh.table, effects);
  if (etcd) {
    health::EtcdStoreOptions so;
    so.prefix = config.store.prefix;
    so.name = config.store.name;
    const conf::ListenerConfig& first = config.listeners.front();
    so.address = config.store.advertise_host + ":" + std::to_string(first.port);
    so.lease_ttl = config.store.lease_ttl;
    so.request_timeout = config.store.request_timeout;
    keeper.use_etcd(*etcd, so);
  }
  keeper.on_event = [](const health::Event& e) {
    log::info("health").kv("event", e.kind).kv("id", e.id).kv("epoch", e.epoch).kv("node", e.node).kv("detail", e.text).emit();
  };
  keeper.set_replica_board(&sh.replicas);
  sh.keeper = &keeper;
  sh.report_transport_failure = [&mailbox, &keeper](routing::NodeId node) {
    mailbox.post([&keeper, node] { keeper.suspect(node); });
  };
  keeper.start();
  std::unique_ptr<Console> console;
  if (config.console.port != 0) {
    console = std::make_unique<Console>(sh, base.get());
    const std::vector<int> handed = take_handed([&config](const takeover::Handed& h) {
      return h.kind == takeover::Handed::Kind::kConsole && h.host == config.console.host && h.port == config.console.port;
    });
    if (!(handed.empty() ? console->listen(config.console.host, config.console.port) : console->listen_on(handed.front()))) {
      for (auto& w : workers) w->post([](Worker& wk) { wk.begin_shutdown(false); });
      for (auto& w : workers) w->join();
      return 2;
    }
  }

  std::unique_ptr<StatusServer> status;
  if (config.status.port != 0) {
    status = std::make_unique<StatusServer>(sh, base.get());
    const std::vector<int> handed = take_handed([&config](const takeover::Handed& h) {
      return h.kind == takeover::Handed::Kind::kStatus && h.host == config.status.host && h.port == config.status.port;
    });
    if (!(handed.empty() ? status->listen(config.status.host, config.status.port) : status->listen_on(handed.front()))) {
      for (auto& w : workers) w->post([](Worker& wk) { wk.begin_shutdown(false); });
      for (auto& w : workers) w->join();
      return 2;
    }
  }

  // Sockets handed over that this configuration no longer has.
  if (taken) {
    for (const takeover::Handed& h : taken->handed) ::close(h.fd);
    taken->handed.clear();
  }
  std::unique_ptr<TakeoverHost> takeover_host;
  std::unique_ptr<SessionReceiver> sessions_in;
  if (taken) {
    // Everything accepts here now: the previous process stops accepting and drains, handing each
    // session over at its next idle point.
    std::string err;
    if (!takeover::send_parcel(taken->sock, takeover::Parcel{"ready", {}}, std::chrono::seconds(5), err)) {
      log::warning("main").kv("event", "takeover_ready_unsent").kv("reason", err).emit();
      ::close(taken->sock);
    } else {
      sessions_in = std::make_unique<SessionReceiver>(m, taken->sock);
    }
  }
  if (!config.general.takeover_socket.empty()) {
    takeover_host = std::make_unique<TakeoverHost>(m, config.general.takeover_socket);
    takeover_host->set_services(console.get(), status.get());
    takeover_host->listen();
  }

  log::info("main").kv("event", "started").kv("workers", nworkers).kv("nodes", static_cast<unsigned>(config.nodes.size()))
      .kv("primary", config.nodes[primary].name).kv("version", PGKEEL_VERSION).kv("pid", static_cast<std::int64_t>(::getpid()))
      .kv("taken_over", taken ? "yes" : "no").emit();

  event_base_dispatch(base.get());

  if (etcd) {
    // Every connection is closed: the lease goes now, not after its TTL (bounded: etcd may be away).
    bool released = false;
    keeper.release_store([&released, b = base.get()] {
      released = true;
      event_base_loopbreak(b);
    });
    if (!released) {
      const timeval bound = {static_cast<time_t>(2 * config.store.request_timeout.count() / 1000 + 1), 0};
      event_base_loopexit(base.get(), &bound);
      event_base_dispatch(base.get());
    }
  }
  for (auto& w : workers) w->join();
  workers.clear();
  for (std::size_t li = 0; li < sockets.unix_by_listener.size(); ++li) sockets.close_unix(li);
  log::info("main").kv("event", "exited").emit();
  return 0;
}

}  // namespace pgkeel::proxy
