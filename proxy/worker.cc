#include "proxy/worker.h"

#include <fcntl.h>

#include <signal.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <optional>
#include <utility>

#include "proxy/client.h"
#include "proxy/conn.h"
#include "proxy/log.h"
#include "proxy/pool.h"
#include "proxy/protocol/message.h"
#include "proxy/server.h"
#include "proxy/status.h"

namespace pgkeel::proxy {

// A one-shot connection that delivers a CancelRequest to a server (§55.2.7), as PostgreSQL's
// own clients do: connect, send 16 bytes, then wait for PostgreSQL to close the connection: it
// does so after it signalled the backend, and only then is the cancel over (the server
// connection it aims at is kept from other clients until then).
struct CancelConn {
  int fd = -1;
  EventPtr ev;
  std::string packet;
  Clock::time_point deadline;
  Worker* worker = nullptr;
  std::uint32_t server_id = 0;  // the server connection it aims at (0: none)
  bool done = false;
  ~CancelConn() {
    ev.reset();
    if (fd >= 0) ::close(fd);
  }
};

namespace {

constexpr std::uint32_t kMaxClientId = (1u << 22) - 1;
constexpr timeval kTickInterval{0, 200 * 1000};

void finish_cancel(CancelConn* cc) {
  event_del(cc->ev.get());
  cc->done = true;  // reaped on the next tick
  if (cc->server_id != 0) cc->worker->cancel_done(std::exchange(cc->server_id, 0));
}

void on_cancel_closed(evutil_socket_t fd, short, void* arg) {
  auto* cc = static_cast<CancelConn*>(arg);
  char buf[64];
  const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return;
  if (n > 0) return;  // PostgreSQL answers nothing; read on until it closes
  finish_cancel(cc);
}

void on_cancel_writable(evutil_socket_t fd, short, void* arg) {
  auto* cc = static_cast<CancelConn*>(arg);
  int err = 0;
  socklen_t len = sizeof err;
  getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
  if (err == 0) {
    const ssize_t n = ::send(fd, cc->packet.data(), cc->packet.size(), MSG_NOSIGNAL);
    if (n != static_cast<ssize_t>(cc->packet.size())) err = errno;
  }
  if (err != 0) {
    log::warning("cancel").kv("event", "cancel_failed").kv("reason", std::strerror(err)).emit();
    finish_cancel(cc);
    return;
  }
  // Sent: the cancel is over when PostgreSQL closes its side.
  event_base* base = event_get_base(cc->ev.get());
  cc->ev.reset(event_new(base, fd, EV_READ | EV_PERSIST, &on_cancel_closed, cc));
  event_add(cc->ev.get(), nullptr);
}

}  // namespace

Worker::Worker(Shared& shared, unsigned index, const std::vector<ListenSocket>& sockets)
    : shared_(shared), index_(index), config_(shared.config),
      stats_(std::make_unique<WorkerStats>()) {
  event_config* cfg = event_config_new();
  event_config_set_flag(cfg, EVENT_BASE_FLAG_NOLOCK);  // one thread per base
  base_.reset(event_base_new_with_config(cfg));
  event_config_free(cfg);
  snapshot_ = shared_.table.current();

  mailbox_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  mailbox_event_.reset(event_new(base_.get(), mailbox_fd_, EV_READ | EV_PERSIST, &Worker::on_mailbox, this));
  event_add(mailbox_event_.get(), nullptr);
  tick_event_.reset(event_new(base_.get(), -1, EV_PERSIST, &Worker::on_tick, this));
  event_add(tick_event_.get(), &kTickInterval);
  reap_event_.reset(event_new(base_.get(), -1, 0, &Worker::on_reap, this));
  accept_retry_event_.reset(evtimer_new(base_.get(), &Worker::on_accept_retry, this));
  idle_now_event_.reset(event_new(base_.get(), -1, 0, &Worker::on_idle_now, this));

  for (const ListenSocket& s : sockets) accept_on(s);
}

void Worker::accept_on(const ListenSocket& s) {
  // Backlog 0: the socket already listens with its own backlog (-1 would make libevent listen()
  // again with 128, and a burst of connections would overflow it).
  auto* l = evconnlistener_new(base_.get(), &Worker::on_accept, this,
                               LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_EXEC | (s.shared ? 0 : LEV_OPT_CLOSE_ON_FREE), 0, s.fd);
  if (l == nullptr) {
    log::error("worker").kv("event", "accept_failed").kv("worker", index_).kv("listener", s.listener_index).emit();
    if (!s.shared) ::close(s.fd);
    return;
  }
  // Without an error callback libevent retries a failing accept() at once, forever, logging each
  // failure (4.5 million lines in 8 s at EMFILE).
  evconnlistener_set_error_cb(l, &Worker::on_accept_error);
  if (accept_paused_) evconnlistener_disable(l);
  listeners_.push_back({ListenerPtr(l), s.listener_index, s.shared});
}

void Worker::set_config(std::shared_ptr<const conf::Config> c) {
  config_ = std::move(c);
  // The descriptor limit is per process: one worker checks it against the new configuration.
  if (index_ == 0) apply_nofile(*config_, static_cast<unsigned>(shared_.workers.size()), false);
}

void Worker::on_accept_error(evconnlistener*, void* arg) {
  const int err = EVUTIL_SOCKET_ERROR();  // first: anything else may change errno
  static_cast<Worker*>(arg)->pause_accepting(err);
}

// As PgBouncer does: when accept() fails for want of descriptors (or memory), stop accepting for a
// while. New connections wait in the kernel's listen queue (4,096 deep) instead of the loop
// spinning on a listener that stays readable; a descriptor freed meanwhile serves them in order.
void Worker::pause_accepting(int err) {
  bool started = false;
  const std::chrono::milliseconds delay = accept_backoff_.on_failure(Clock::now(), &started);
  for (Accepting& a : listeners_) evconnlistener_disable(a.listener.get());
  accept_paused_ = true;
  const timeval tv{static_cast<time_t>(delay.count() / 1000), static_cast<suseconds_t>((delay.count() % 1000) * 1000)};
  event_add(accept_retry_event_.get(), &tv);
  if (!started) return;
  rlimit r{};
  getrlimit(RLIMIT_NOFILE, &r);
  log::warning("worker")
      .kv("event", "accept_paused")
      .kv("worker", index_)
      .kv("errno", errno_name(err))
      .kv("reason", std::strerror(err))
      .kv("nofile", r.rlim_cur == RLIM_INFINITY ? std::string("unlimited") : std::to_string(r.rlim_cur))
      .kv("clients", static_cast<std::uint64_t>(clients_.size()))
      .kv("servers", static_cast<std::uint64_t>(servers_.size()))
      .kv("retry_ms", static_cast<std::int64_t>(delay.count()))
      .kv("note", is_local_resource_error(err) ? "pgkeel's own limit, not a node's; new connections wait in the listen queue"
                                               : "new connections wait in the listen queue")
      .unlimited()
      .emit();
}

void Worker::on_accept_retry(evutil_socket_t, short, void* arg) {
  auto* w = static_cast<Worker*>(arg);
  w->accept_paused_ = false;
  for (Accepting& a : w->listeners_) evconnlistener_enable(a.listener.get());
}

void Worker::log_accept_episode_end() {
  std::optional<AcceptBackoff::Episode> e = accept_backoff_.take_ended(now_);
  if (!e) return;
  auto ms = [](auto d) { return static_cast<std::int64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(d).count()); };
  log::info("worker")
      .kv("event", "accept_resumed")
      .kv("worker", index_)
      .kv("failed_accepts", e->failures)
      .kv("accepted", e->accepted)
      .kv("pauses", e->pauses)
      .kv("paused_ms", ms(e->paused))
      .kv("lasted_ms", ms(e->last_failure - e->started))
      .unlimited()
      .emit();
}

void Worker::change_listeners(const std::vector<ListenSocket>& add, const std::vector<std::size_t>& close) {
  std::erase_if(listeners_, [&close](const Accepting& a) {
    return std::find(close.begin(), close.end(), a.listener_index) != close.end();
  });
  for (const ListenSocket& s : add) {
    if (shutting_down()) {
      if (!s.shared) ::close(s.fd);
    } else {
      accept_on(s);
    }
  }
}

Worker::~Worker() {
  secret_lookup_.reset();
  dead_clients_.clear();
  dead_servers_.clear();
  clients_.clear();
  servers_.clear();
  cancels_.clear();
  listeners_.clear();
  accept_retry_event_.reset();
  mailbox_event_.reset();
  tick_event_.reset();
  reap_event_.reset();
  if (mailbox_fd_ >= 0) ::close(mailbox_fd_);
}

void Worker::start() {
  thread_ = std::thread([this] {
    now_ = Clock::now();
    event_base_dispatch(base_.get());
    // Whatever is left goes now, on this thread.
    secret_lookup_.reset();
    clients_.clear();
    servers_.clear();
    dead_clients_.clear();
    dead_servers_.clear();
    log::debug("worker").kv("event", "stopped").kv("worker", index_).unlimited().emit();
    shared_.workers_running.fetch_sub(1);
  });
}

void Worker::join() {
  if (thread_.joinable()) thread_.join();
}

void Worker::post(std::function<void(Worker&)> fn) {
  {
    std::lock_guard lock(mailbox_mu_);
    mailbox_.push_back(std::move(fn));
  }
  const std::uint64_t one = 1;
  [[maybe_unused]] ssize_t n = ::write(mailbox_fd_, &one, sizeof one);
}

void Worker::on_mailbox(evutil_socket_t fd, short, void* arg) {
  auto* w = static_cast<Worker*>(arg);
  w->touch_now();
  std::uint64_t v = 0;
  [[maybe_unused]] ssize_t n = ::read(fd, &v, sizeof v);
  std::vector<std::function<void(Worker&)>> items;
  {
    std::lock_guard lock(w->mailbox_mu_);
    items.swap(w->mailbox_);
  }
  for (auto& fn : items) fn(*w);
}

void Worker::on_accept(evconnlistener* l, evutil_socket_t fd, sockaddr* addr, int, void* arg) {
  auto* w = static_cast<Worker*>(arg);
  w->accept_backoff_.on_success();
  std::size_t listener_index = 0;
  for (const Accepting& a : w->listeners_) {
    if (a.listener.get() == l) listener_index = a.listener_index;
  }
  w->accept_client(fd, listener_index, addr);
}

std::uint32_t Worker::next_client_id() {
  for (std::uint32_t tries = 0; tries <= kMaxClientId; ++tries) {
    last_client_id_ = last_client_id_ >= kMaxClientId ? 1 : last_client_id_ + 1;
    if (clients_.find(last_client_id_) == clients_.end()) return last_client_id_;
  }
  return 0;
}

void Worker::accept_client(int fd, std::size_t listener_index, const sockaddr* addr) {
  evutil_make_socket_nonblocking(fd);
  evutil_make_socket_closeonexec(fd);
  if (shutdown_ != Shutdown::kNone) {
    ::close(fd);
    return;
  }
  const std::uint32_t id = next_client_id();
  if (id == 0) {
    ::close(fd);
    return;
  }
  stats_->clients_accepted.add(1);
  auto c = std::make_unique<Client>(*this, id, fd, listener_index, addr);
  Client* raw = c.get();
  clients_.emplace(id, std::move(c));
  raw->start();
}

const routing::Snapshot& Worker::snapshot() {
  if (shared_.table.epoch() != snapshot_->epoch) snapshot_ = shared_.table.current();
  return *snapshot_;
}

Pool& Worker::pool_for(const std::string& key, routing::NodeId node) {
  auto it = pools_.find(key);
  if (it != pools_.end()) return *it->second;
  auto p = std::make_unique<Pool>();
  p->key = key;
  p->node = node;
  Pool& ref = *p;
  pools_.emplace(key, std::move(p));
  return ref;
}

Server* Worker::new_server(Pool& pool, std::shared_ptr<const SessionKey> session,
                           std::shared_ptr<const ServerCredential> cred) {
  last_server_id_ = last_server_id_ == UINT32_MAX ? 1 : last_server_id_ + 1;
  auto s = std::make_unique<Server>(*this, last_server_id_, pool, std::move(session), std::move(cred));
  Server* raw = s.get();
  servers_.emplace(last_server_id_, std::move(s));
  raw->start();
  return raw;
}

void Worker::retire(Client* c) {
  auto it = clients_.find(c->id());
  if (it == clients_.end()) return;
  dead_clients_.push_back(std::move(it->second));
  clients_.erase(it);
  event_active(reap_event_.get(), EV_TIMEOUT, 0);
}

void Worker::retire(Server* s) {
  auto it = servers_.find(s->id());
  if (it == servers_.end()) return;
  dead_servers_.push_back(std::move(it->second));
  servers_.erase(it);
  event_active(reap_event_.get(), EV_TIMEOUT, 0);
}

void Worker::on_reap(evutil_socket_t, short, void* arg) { static_cast<Worker*>(arg)->reap(); }

void Worker::reap() {
  dead_clients_.clear();
  dead_servers_.clear();
  maybe_exit();
}

Client* Worker::find_client(std::uint32_t id) {
  auto it = clients_.find(id);
  return it == clients_.end() ? nullptr : it->second.get();
}

void Worker::cancel_done(std::uint32_t server_id) {
  auto it = servers_.find(server_id);
  if (it != servers_.end()) it->second->cancel_finished();
}

void Worker::send_cancel(routing::NodeId node, std::int32_t pid, std::int32_t key, std::uint32_t server_id) {
  const NodeAddress& na = shared_.node_addrs[node];
  auto cc = std::make_unique<CancelConn>();
  cc->worker = this;
  cc->fd = ::socket(na.addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (cc->fd < 0) {
    const int err = errno;
    log::warning("cancel").kv("event", "cancel_failed").kv("addr", na.text).kv("reason", std::strerror(err))
        .kv("local", is_local_resource_error(err) ? "yes" : "no").emit();
    return;
  }
  protocol::Writer(cc->packet).begin_untyped().i32(protocol::kCancelRequestCode).i32(pid).i32(key).end();
  cc->deadline = Clock::now() + config().pool.connect_timeout;
  if (::connect(cc->fd, reinterpret_cast<const sockaddr*>(&na.addr), na.len) != 0 && errno != EINPROGRESS) {
    log::warning("cancel").kv("event", "cancel_failed").kv("addr", na.text).kv("reason", std::strerror(errno)).emit();
    return;
  }
  cc->ev.reset(event_new(base_.get(), cc->fd, EV_WRITE, &on_cancel_writable, cc.get()));
  event_add(cc->ev.get(), nullptr);
  if (server_id != 0) {
    auto it = servers_.find(server_id);
    if (it != servers_.end()) {
      it->second->cancel_started();
      cc->server_id = server_id;
    }
  }
  cancels_.push_back(std::move(cc));
}

void Worker::on_tick(evutil_socket_t, short, void* arg) { static_cast<Worker*>(arg)->tick(); }

void Worker::tick() {
  now_ = Clock::now();
  const conf::Config& cfg = config();
  if (accept_backoff_.in_episode()) log_accept_episode_end();
  log::flush_suppressed();
  // Clients: login and wait timeouts. Collect first: ticking may retire.
  std::vector<Client*> cs;
  cs.reserve(clients_.size());
  for (auto& [id, c] : clients_) cs.push_back(c.get());
  for (Client* c : cs) c->tick(now_);
  std::vector<Server*> ss;
  ss.reserve(servers_.size());
  for (auto& [id, s] : servers_) ss.push_back(s.get());
  for (Server* s : ss) s->tick(now_);

  // Pools: idle timeouts, stale epochs, and slots other workers are waiting for.
  const std::uint64_t epoch = snapshot().epoch;
  std::vector<Server*> to_close;
  for (auto& [key, p] : pools_) {
    const bool node_starved = shared_.node_waiters[p->node].load(std::memory_order_relaxed) > 0;
    for (Server* s : p->idle) {
      if (s->epoch() != epoch || now_ - s->last_used() > cfg.pool.server_idle_timeout ||
          (node_starved && p->waiters.empty())) {
        to_close.push_back(s);
      }
    }
    if (!p->waiters.empty()) feed_waiters(*this, *p);
  }
  for (Server* s : to_close) s->close("idle timeout or routing change");

  for (Client* c : std::vector<Client*>(held_)) {
    if (now_ - c->held_since > cfg.failover.hold_timeout) {
      unhold(c);
      c->hold_expired(snapshot().why);
    }
  }
  // Clients held after a failed connect retry while the table still names a writer (the
  // failure may have been brief); during a failover (hold) they wait for the new epoch.
  if (!held_.empty() && snapshot().writer && !snapshot().hold) {
    std::vector<Client*> retry;
    retry.swap(held_);
    for (Client* c : retry) {
      c->held = false;
      request_server(*this, *c);
    }
  }

  if (!parked_.empty()) resume_parked();

  // A cancel past its deadline gives up: the connection it held back serves again.
  for (const auto& cc : cancels_) {
    if (!cc->done && now_ > cc->deadline) finish_cancel(cc.get());
  }
  std::erase_if(cancels_, [&](const std::unique_ptr<CancelConn>& cc) { return cc->done; });

  if (shutdown_ == Shutdown::kGraceful) {
    const bool past_deadline = now_ > shutdown_deadline_;
    cs.clear();
    for (auto& [id, c] : clients_) cs.push_back(c.get());
    for (Client* c : cs) {
      if (past_deadline) {
        c->terminate("57P01", "terminating connection due to pgkeel shutdown");
      } else if (c->idle_for_shutdown() && (!handover_ || c->drain_ready)) {
        if (handover_) {
          hand_over_or_close(c);
        } else {
          c->terminate("57P01", "terminating connection due to pgkeel shutdown");
        }
      }
    }
    if (clients_.empty()) {
      ss.clear();
      for (auto& [id, s] : servers_) ss.push_back(s.get());
      for (Server* s : ss) s->close("shutting down");
    }
    maybe_exit();
  }
}

void Worker::hold(Client* c) {
  if (c->held) return;
  c->held = true;
  // hold_timeout counts from the first hold, however often the client is retried.
  if (!c->ever_held) c->held_since = Clock::now();
  c->ever_held = true;
  held_.push_back(c);
}

void Worker::unhold(Client* c) {
  if (!c->held) return;
  c->held = false;
  std::erase(held_, c);
}

void Worker::apply_epoch() {
  std::shared_ptr<const routing::Snapshot> prev = applied_ ? applied_ : snapshot_;
  const routing::Snapshot& snap = snapshot();
  applied_ = snapshot_;
  // A node that was the writer and is not any more, or that is fenced or disabled, keeps no
  // connection: a session opened under an older epoch must never write to a demoted primary.
  auto doomed_node = [&](routing::NodeId node) {
    const routing::NodeView* v = snap.node(node);
    const bool was_writer = prev && prev->writer && *prev->writer == node;
    const bool is_writer = snap.writer && *snap.writer == node;
    return (was_writer && !is_writer) || v == nullptr || v->fenced || !v->enabled;
  };
  // Clients waiting for a connection to such a node were routed under an older epoch: they are
  // routed again under this one (held, refused with its reason, or sent to the new writer). Left
  // in the queue, the first would get the cut login's error and the rest connections opened to
  // the node now, under this epoch.
  std::vector<Client*> reroute;
  for (auto& [key, p] : pools_) {
    if (doomed_node(p->node)) reroute.insert(reroute.end(), p->waiters.begin(), p->waiters.end());
  }
  for (Client* c : reroute) cancel_wait(*this, *c);
  std::vector<Server*> doomed;
  for (auto& [id, s] : servers_) {
    if (doomed_node(s->node())) doomed.push_back(s.get());
  }
  for (Server* s : doomed) s->close_abortively("pgkeel is failing over: " + snap.why);
  for (Client* c : reroute) request_server(*this, *c);
  if (!doomed.empty()) {
    log::info("worker").kv("event", "epoch_applied").kv("worker", index_).kv("epoch", snap.epoch)
        .kv("closed_servers", static_cast<std::uint64_t>(doomed.size())).unlimited().emit();
  }
  if (snap.hold) return;  // still no writer: held clients keep waiting
  std::vector<Client*> retry;
  retry.swap(held_);
  for (Client* c : retry) {
    c->held = false;
    request_server(*this, *c);
  }
}

void Worker::close_node(routing::NodeId node, std::string_view reason) {
  std::vector<Server*> doomed;
  for (auto& [id, s] : servers_) {
    if (s->node() == node) doomed.push_back(s.get());
  }
  for (Server* s : doomed) s->close(reason);
  log::info("worker").kv("event", "closed_node").kv("worker", index_).kv("node", snapshot().nodes[node].name)
      .kv("servers", static_cast<std::uint64_t>(doomed.size())).kv("reason", reason).unlimited().emit();
}

bool Worker::paused_for(std::size_t listener) const {
  if (listener < kMaxListeners && shared_.listener_paused[listener].load(std::memory_order_relaxed)) return true;
  return shared_.writes_paused.load(std::memory_order_relaxed) && listener < config_->listeners.size() &&
         config_->listeners[listener].intent == routing::Intent::kReadWrite;
}

void Worker::park(Client* c) {
  if (c->parked) return;
  c->parked = true;
  c->parked_since = Clock::now();
  parked_.push_back(c);
}

void Worker::unpark(Client* c) {
  if (!c->parked) return;
  c->parked = false;
  std::erase(parked_, c);
  stats_->held_clients.add(1);
  stats_->held_us.add(static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - c->parked_since).count()));
}

void Worker::resume_parked() {
  std::vector<Client*> ready;
  for (Client* c : parked_) {
    if (!paused_for(c->listener_index())) ready.push_back(c);
  }
  for (Client* c : ready) {
    unpark(c);
    c->unparked();
  }
}

int Worker::running_on(routing::NodeId node) const {
  int n = 0;
  for (const auto& [id, s] : servers_) {
    if (s->node() != node || s->state() != Server::State::kLinked) continue;
    if (s->tx_status() != 'I' || s->query_running() || !s->at_boundary()) ++n;
  }
  return n;
}

SecretLookup& Worker::secret_lookup() {
  if (!secret_lookup_) secret_lookup_ = std::make_unique<SecretLookup>(*this);
  return *secret_lookup_;
}

bool Worker::close_idle_like(routing::NodeId node, const std::string& user, const std::string& database) {
  for (auto& [key, p] : pools_) {
    if (p->node != node) continue;
    for (Server* s : p->idle) {
      if (s->user() == user || s->database() == database) {
        s->close("a per-user or per-database limit needs the slot");
        return true;
      }
    }
  }
  return false;
}

bool Worker::kill_client(std::uint32_t id, const std::string& who) {
  Client* c = find_client(id);
  if (c == nullptr || c->state() == Client::State::kClosed) return false;
  log::info("client").kv("event", "killed").kv("conn", c->name()).kv("by", who).emit();
  // Mid-message, terminate() closes without an ErrorResponse (it could not be placed).
  c->terminate("57P01", "terminating connection due to administrator command (KILL by " + who + ")");
  return true;
}

void Worker::report(WorkerReport& out) const {
  out.worker = index_;
  const auto now = Clock::now();
  auto secs = [&](Clock::time_point t) { return std::chrono::duration<double>(now - t).count(); };
  const routing::Snapshot& snap = *snapshot_;
  auto node_name = [&](routing::NodeId n) { return n < snap.nodes.size() ? snap.nodes[n].name : std::to_string(n); };
  for (const auto& [id, c] : clients_) {
    ClientRow r;
    r.id = c->name();
    r.address = c->peer();
    r.listener = c->listener_index() < config_->listeners.size() ? config_->listeners[c->listener_index()].name : "";
    r.user = c->user();
    r.database = c->database();
    r.application_name = std::string(c->application_name());
    r.state = std::string(c->state_name());
    r.connected_s = secs(c->connected_at());
    r.tls = c->tls();
    if (c->parked) {
      r.state_s = secs(c->parked_since);
    } else if (c->held) {
      r.state_s = secs(c->held_since);
    } else if (c->state() == Client::State::kWaiting) {
      r.state_s = secs(c->wait_started());
    }
    if (const Server* s = c->server()) {
      r.server = s->name();
      r.backend_pid = s->backend_pid();
      r.node = node_name(s->node());
    }
    out.clients.push_back(std::move(r));
  }
  for (const auto& [id, s] : servers_) {
    ServerRow r;
    r.id = s->name();
    r.node = node_name(s->node());
    r.address = s->node() < shared_.node_addrs.size() ? shared_.node_addrs[s->node()].text : "";
    r.user = s->user();
    r.database = s->database();
    switch (s->state()) {
      case Server::State::kConnecting: r.state = "connecting"; break;
      case Server::State::kLogin: r.state = "login"; break;
      case Server::State::kIdle: r.state = "idle"; break;
      case Server::State::kLinked:
        r.state = s->query_running() ? "active" : s->tx_status() == 'I' ? "linked idle" : "idle in transaction";
        break;
      case Server::State::kResetting: r.state = "resetting"; break;
      case Server::State::kAskingLsn: r.state = "asking for the WAL position"; break;
      case Server::State::kClosed: r.state = "closed"; break;
    }
    if (const Client* c = s->client()) r.client = c->name();
    r.backend_pid = s->backend_pid();
    r.epoch = s->epoch();
    r.age_s = secs(s->created());
    r.idle_s = s->state() == Server::State::kIdle ? secs(s->last_used()) : 0;
    out.servers.push_back(std::move(r));
  }
  for (const auto& [key, p] : pools_) {
    PoolRow r;
    r.worker = index_;
    r.node = node_name(p->node);
    // The key starts "node\0user\0database\0..." (make_pool_key); show user and database.
    std::size_t a = key.find('\0');
    std::size_t b = a == std::string::npos ? a : key.find('\0', a + 1);
    std::size_t e = b == std::string::npos ? b : key.find('\0', b + 1);
    if (b != std::string::npos) {
      r.user = key.substr(a + 1, b - a - 1);
      r.database = key.substr(b + 1, e == std::string::npos ? std::string::npos : e - b - 1);
    }
    r.idle = static_cast<int>(p->idle.size());
    r.connecting = p->connecting;
    r.active = p->total - r.idle - p->connecting;
    r.waiting_clients = static_cast<int>(p->waiters.size());
    out.pools.push_back(std::move(r));
  }
}

void Worker::close_listeners() { listeners_.clear(); }

void Worker::note_idle(std::uint32_t id) {
  idle_now_.push_back(id);
  event_active(idle_now_event_.get(), EV_TIMEOUT, 0);
}

void Worker::on_idle_now(evutil_socket_t, short, void* arg) {
  auto* w = static_cast<Worker*>(arg);
  std::vector<std::uint32_t> ids;
  ids.swap(w->idle_now_);
  for (std::uint32_t id : ids) {
    Client* c = w->find_client(id);
    if (c != nullptr && c->drain_ready && c->idle_for_shutdown()) w->hand_over_or_close(c);
  }
  w->maybe_exit();
}

void Worker::hand_over_or_close(Client* c) {
  std::optional<SessionTransfer> t = shared_.hand_session ? c->transfer_out() : std::nullopt;
  std::vector<int> fds;
  if (t) {
    fds.push_back(::fcntl(c->ep().fd, F_DUPFD_CLOEXEC, 0));
    if (t->server && c->server() != nullptr) fds.push_back(::fcntl(c->server()->ep().fd, F_DUPFD_CLOEXEC, 0));
  }
  if (fds.empty() || std::find(fds.begin(), fds.end(), -1) != fds.end() || (t->server && fds.size() != 2)) {
    for (int fd : fds) {
      if (fd >= 0) ::close(fd);
    }
    // TLS, a session pinned to a server connection that cannot move: it ends here.
    c->terminate("57P01", c->tls() ? "terminating connection: pgkeel was restarted, and a TLS session cannot move to the "
                                     "new process; connect again"
                                   : "terminating connection: pgkeel was restarted, and this session cannot move to the "
                                     "new process (it is tied to its server connection); connect again");
    return;
  }
  log::debug("worker").kv("event", "session_handed_over").kv("conn", c->name()).kv("user", c->user())
      .kv("with_server", t->server ? "yes" : "no").emit();
  stats_->sessions_handed_over.add(1);
  c->close_moved(t->server.has_value());  // sends nothing: the client's next bytes go to the new process
  shared_.post_main([&sh = shared_, fds, bytes = encode(*t)]() mutable { sh.hand_session(fds, std::move(bytes)); });
}

void Worker::adopt_client(int fd, int server_fd, const SessionTransfer& t) {
  std::size_t li = config_->listeners.size();
  for (std::size_t i = 0; i < config_->listeners.size(); ++i) {
    if (config_->listeners[i].name == t.listener && !config_->listeners[i].retired) li = i;
  }
  if (li == config_->listeners.size() || shutdown_ != Shutdown::kNone) {
    log::warning("worker").kv("event", "session_not_adopted").kv("user", t.key.user).kv("listener", t.listener)
        .kv("reason", shutdown_ != Shutdown::kNone ? "shutting down" : "no such listener here").emit();
    ::close(fd);
    return;
  }
  // The same client id when it is free, so the cancel key the client holds still reaches it.
  constexpr std::uint32_t kIdBits = 22;
  std::uint32_t id = static_cast<std::uint32_t>(t.cancel_pid) & ((1u << kIdBits) - 1);
  if ((static_cast<std::uint32_t>(t.cancel_pid) >> kIdBits) != index_ || id == 0 || clients_.count(id) != 0) id = next_client_id();
  if (id == 0) {
    ::close(fd);
    return;
  }
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  const bool have = ::getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len) == 0;
  evutil_make_socket_nonblocking(fd);
  auto c = std::make_unique<Client>(*this, id, fd, li, have ? reinterpret_cast<const sockaddr*>(&ss) : nullptr);
  Client* raw = c.get();
  clients_.emplace(id, std::move(c));
  stats_->sessions_adopted.add(1);
  // Its server connection, if it came along: kept only where this process routes the session
  // now (a failover decided meanwhile leaves it behind).
  Server* moved = nullptr;
  if (t.server && server_fd >= 0) {
    const routing::Snapshot& snap = snapshot();
    std::optional<routing::NodeId> node;
    for (const routing::NodeView& v : snap.nodes) {
      if (v.name == t.server->node) node = v.id;
    }
    const bool writes = config_->listeners[li].intent == routing::Intent::kReadWrite;
    const routing::NodeView* v = node ? snap.node(*node) : nullptr;
    const bool routable = v != nullptr && !v->fenced && v->enabled && !snap.hold &&
                          (!writes || (snap.writer && *snap.writer == *node));
    if (routable) {
      Pool& p = pool_for(make_pool_key(*node, t.key), *node);
      // Counted where it was: counted here the same, whatever the caps say now.
      (void)shared_.limits.server_enter(*config_, *node, t.key.user, t.key.server_database, false);
      shared_.server_conns[*node].fetch_add(1, std::memory_order_relaxed);
      ++p.total;
      last_server_id_ = last_server_id_ == UINT32_MAX ? 1 : last_server_id_ + 1;
      SessionKey key = t.key;
      const std::string text = make_session_text(key);
      auto sv = std::make_unique<Server>(*this, last_server_id_, p, interned_.sessions.intern(text, std::move(key)), nullptr);
      moved = sv.get();
      servers_.emplace(last_server_id_, std::move(sv));
      evutil_make_socket_nonblocking(server_fd);
      moved->adopt(server_fd, t.server->backend_pid, t.server->backend_key, t.server->parameter_status);
      if (!t.server->shared_statements.empty() || !t.server->settings.empty()) {
        Server::Edits& e = moved->edits();
        for (const std::string& n : t.server->shared_statements) e.statements.add(n);
        e.settings = t.server->settings;
      }
      server_fd = -1;
    }
  }
  if (server_fd >= 0) ::close(server_fd);
  if (t.server && moved == nullptr && !t.unreplayable.empty()) {
    // Pinned to a server it could not keep: it cannot go on.
    raw->adopt(t);
    raw->terminate("57P01", "terminating connection: pgkeel was restarted while this session's server connection "
                            "stopped being where it routes; connect again");
    return;
  }
  raw->adopt(t, moved);
}

std::vector<ListenSocket> Worker::release_listeners() {
  std::vector<ListenSocket> out;
  for (const Accepting& a : listeners_) {
    const int fd = evconnlistener_get_fd(a.listener.get());
    if (a.shared) {
      out.push_back({fd, a.listener_index, true});
    } else if (const int kept = ::fcntl(fd, F_DUPFD_CLOEXEC, 0); kept >= 0) {
      out.push_back({kept, a.listener_index, false});
    }
  }
  listeners_.clear();  // closes this worker's own descriptors; the duplicates keep the sockets
  return out;
}

void Worker::begin_shutdown(bool graceful, bool handover) {
  close_listeners();
  if (!graceful) {
    shutdown_ = Shutdown::kImmediate;
    event_base_loopexit(base_.get(), nullptr);
    return;
  }
  if (shutdown_ != Shutdown::kNone) return;
  shutdown_ = Shutdown::kGraceful;
  handover_ = handover;
  for (auto& [id, c] : clients_) {
    c->drain_ready = c->state() == Client::State::kLinked || c->state() == Client::State::kDetached;
  }
  shutdown_deadline_ = Clock::now() + config().general.shutdown_timeout;
  tick();
}

void Worker::maybe_exit() {
  if (shutdown_ == Shutdown::kGraceful && clients_.empty() && servers_.empty()) {
    event_base_loopexit(base_.get(), nullptr);
  }
}

}  // namespace pgkeel::proxy
