// proxy/worker.h — one thread, one event loop. A worker owns its listeners' accepted clients,
// their server connections and its pools; nothing it owns is touched by another thread. Other
// threads reach it only through its mailbox.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "proxy/buffer.h"
#include "proxy/fd_limit.h"
#include "proxy/handles.h"
#include "proxy/pool.h"
#include "proxy/session_transfer.h"
#include "proxy/shared.h"
#include "proxy/stats.h"
#include "routing/snapshot.h"

namespace pgkeel::proxy {

class Client;
class Server;
struct WorkerReport;
class SecretLookup;

using Clock = std::chrono::steady_clock;

// A listening socket handed to a worker (one per worker per TCP listener via SO_REUSEPORT;
// a Unix socket is shared by all workers).
struct ListenSocket {
  int fd = -1;
  std::size_t listener_index = 0;  // into config->listeners
  bool shared = false;             // shared fds are closed by main, not the worker
};

class Worker {
 public:
  Worker(Shared& shared, unsigned index, const std::vector<ListenSocket>& sockets);
  ~Worker();
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  void start();  // spawns the thread
  void join();

  // Thread-safe: runs `fn` on this worker's thread, soon.
  void post(std::function<void(Worker&)> fn);

  // --- called on the worker's own thread ---
  event_base* base() const { return base_.get(); }
  unsigned index() const { return index_; }
  Shared& shared() { return shared_; }
  // This worker's view of the configuration; a reload hands it a new one through the mailbox
  // (worker 0 then raises RLIMIT_NOFILE if the new one needs more descriptors).
  const conf::Config& config() const { return *config_; }
  void set_config(std::shared_ptr<const conf::Config> c);
  WorkerStats& stats() { return *stats_; }
  const WorkerStats& stats() const { return *stats_; }
  BufferPool& buffers() { return buffers_; }
  const routing::Snapshot& snapshot();  // refreshed when the table's epoch moved
  // The loop's time: read afresh when a client's or a server's bytes arrive (touch_now()) and at
  // each tick, so what runs in one callback shares one clock read.
  Clock::time_point now() const { return now_; }
  Clock::time_point touch_now() { return now_ = Clock::now(); }

  Pool& pool_for(const std::string& key, routing::NodeId node);
  Server* new_server(Pool& pool, std::shared_ptr<const SessionKey> session,
                     std::shared_ptr<const ServerCredential> cred);
  // Shared copies of what many of this worker's connections hold alike.
  Interned& interned() { return interned_; }
  void retire(Client* c);  // destroyed after the current callback returns
  void retire(Server* s);
  // Sends a CancelRequest for a backend. `server_id`: the server connection it aims at (0: none):
  // that connection counts it in flight until PostgreSQL closes the cancel connection, which it
  // does once it has signalled the backend (Server::cancel_started()).
  void send_cancel(routing::NodeId node, std::int32_t pid, std::int32_t key, std::uint32_t server_id = 0);
  // A cancel for `server_id` completed (or gave up): the connection may serve another client.
  void cancel_done(std::uint32_t server_id);
  Client* find_client(std::uint32_t id);

  // A new routing snapshot was published: close what lost the right to serve, retry or fail
  // held clients. The caller counts the acknowledgements (the failover barrier).
  void apply_epoch();
  // Clients that authenticated while no node could serve, waiting for one (hold_timeout).
  void hold(Client* c);
  void unhold(Client* c);

  // Closes every server connection to `node` (idle ones quietly; sessions on them get an
  // error). The failover sequence posts this to every worker and waits for all of them.
  void close_node(routing::NodeId node, std::string_view reason);

  // PAUSE: whether new transactions through `listener` must wait now; clients parked at a
  // transaction boundary, released by resume_parked() (from tick, and at once on RESUME).
  bool paused_for(std::size_t listener) const;
  void park(Client* c);
  void unpark(Client* c);
  void resume_parked();
  // Transactions (or queries) running now on `node`, for a switchover's drain.
  int running_on(routing::NodeId node) const;
  // Clients, servers and pools as rows, for SHOW CLIENTS / SERVERS / POOLS.
  void report(WorkerReport& out) const;
  // Closes one idle (warm) server connection to `node` for this user or database, so a client
  // blocked by a per-user or per-database limit can use the slot. False when there was none.
  bool close_idle_like(routing::NodeId node, const std::string& user, const std::string& database);
  // [auth] query, on this worker's loop (created on first use).
  SecretLookup& secret_lookup();
  // KILL: ends the client's session with 57P01; false if this worker has no such client.
  bool kill_client(std::uint32_t id, const std::string& who);

  // A reload changed [[listener]]: stop accepting on the listener indices in `close` (clients that
  // came through them stay), then accept on `add`. Call after set_config() with the new config.
  void change_listeners(const std::vector<ListenSocket>& add, const std::vector<std::size_t>& close);

  // Shutdown: graceful (idle sessions closed with 57P01, others when idle) or immediate.
  // `handover`: another process took the listeners over; a login under way completes, and a
  // session is closed at an idle point once it has run a query since (or was logged in before).
  void begin_shutdown(bool graceful, bool handover = false);
  bool shutting_down() const { return shutdown_ != Shutdown::kNone; }
  bool handing_over() const { return handover_; }
  // A takeover's drain: client `id` reached an idle point; it moves (or is closed) once the
  // callbacks on the stack have returned.
  void note_idle(std::uint32_t id);
  // The new process's side: a session handed over with its socket joins this worker.
  void adopt_client(int fd, int server_fd, const SessionTransfer& t);  // server_fd -1: none

  // A takeover: this worker stops accepting and gives up its sockets (its own TCP ones as
  // descriptors the caller now owns; shared Unix ones as main's). change_listeners(them, {})
  // takes them back.
  std::vector<ListenSocket> release_listeners();

  std::size_t client_count() const { return clients_.size(); }
  std::size_t server_count() const { return servers_.size(); }

 private:
  enum class Shutdown : std::uint8_t { kNone, kGraceful, kImmediate };
  static void on_accept(evconnlistener* l, evutil_socket_t fd, sockaddr* addr, int len, void* arg);
  static void on_accept_error(evconnlistener* l, void* arg);
  static void on_accept_retry(evutil_socket_t fd, short what, void* arg);
  // accept() failed with `err`: stop accepting on every listener of this worker for a while.
  void pause_accepting(int err);
  void log_accept_episode_end();
  static void on_mailbox(evutil_socket_t fd, short what, void* arg);
  static void on_tick(evutil_socket_t fd, short what, void* arg);
  static void on_reap(evutil_socket_t fd, short what, void* arg);
  void accept_client(int fd, std::size_t listener_index, const sockaddr* addr);
  void tick();
  void reap();
  void close_listeners();
  void accept_on(const ListenSocket& s);
  void maybe_exit();
  std::uint32_t next_client_id();

  Shared& shared_;
  const unsigned index_;
  bool handover_ = false;  // begin_shutdown(true, true)
  std::vector<std::uint32_t> idle_now_;  // note_idle(), for on_idle_now
  EventPtr idle_now_event_;
  static void on_idle_now(evutil_socket_t fd, short what, void* arg);
  // Moves client `c` to the new process (when it can move) or ends it (57P01).
  void hand_over_or_close(Client* c);
  EventBasePtr base_;
  struct Accepting {
    ListenerPtr listener;
    std::size_t listener_index = 0;
    bool shared = false;  // a Unix socket main owns
  };
  std::vector<Accepting> listeners_;
  AcceptBackoff accept_backoff_;
  EventPtr accept_retry_event_;  // re-enables the listeners after a pause
  bool accept_paused_ = false;
  EventPtr mailbox_event_;
  EventPtr tick_event_;
  EventPtr reap_event_;
  int mailbox_fd_ = -1;
  std::mutex mailbox_mu_;
  std::vector<std::function<void(Worker&)>> mailbox_;
  std::thread thread_;

  BufferPool buffers_;
  Interned interned_;
  std::shared_ptr<const routing::Snapshot> snapshot_;
  Clock::time_point now_;
  Shutdown shutdown_ = Shutdown::kNone;
  Clock::time_point shutdown_deadline_;

  std::uint32_t last_client_id_ = 0;
  std::uint32_t last_server_id_ = 0;
  std::unordered_map<std::uint32_t, std::unique_ptr<Client>> clients_;
  std::unordered_map<std::uint32_t, std::unique_ptr<Server>> servers_;
  std::unordered_map<std::string, std::unique_ptr<Pool>> pools_;
  std::vector<std::unique_ptr<Client>> dead_clients_;
  std::vector<std::unique_ptr<Server>> dead_servers_;
  std::vector<std::unique_ptr<struct CancelConn>> cancels_;
  std::vector<Client*> held_;
  std::vector<Client*> parked_;
  std::shared_ptr<const conf::Config> config_;
  std::unique_ptr<WorkerStats> stats_;
  std::unique_ptr<SecretLookup> secret_lookup_;
  std::shared_ptr<const routing::Snapshot> applied_;  // the snapshot apply_epoch() last saw
};

}  // namespace pgkeel::proxy
