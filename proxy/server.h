// proxy/server.h — a connection from pgkeel to a PostgreSQL node. It logs in on a client's
// behalf (SCRAM, md5, cleartext), then relays for one client at a time, then is reset and
// kept warm. Every server connection carries the routing epoch it was opened under.
//
// States: kConnecting (TCP connect in progress) -> kLogin (startup and authentication) ->
// kIdle (in its pool) <-> kLinked (relaying for a client) -> kResetting (reset query after the
// client left) -> kIdle; any -> kClosed.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "proxy/auth/scram.h"
#include "proxy/conn.h"
#include "proxy/txpool/txpool.h"
#include "proxy/pool.h"
#include "proxy/protocol/scanner.h"
#include "proxy/shared.h"
#include "proxy/worker.h"

namespace pgkeel::proxy {

class Client;

// `messages` (ParameterStatus messages, §55.7) with `name` set to `value`: replaced in place, or
// added at the end.
std::string with_parameter_status(std::string_view messages, std::string_view name, std::string_view value);

class Server {
 public:
  enum class State : std::uint8_t { kConnecting, kLogin, kIdle, kLinked, kResetting, kAskingLsn, kClosed };

  // `session`: user, server database and startup parameters (a client's, the same for the whole
  // pool); `cred`: how to log in, kept until the login is done.
  Server(Worker& w, std::uint32_t id, Pool& pool, std::shared_ptr<const SessionKey> session,
         std::shared_ptr<const ServerCredential> cred);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  void start();
  // A takeover: a logged-in, idle connection handed over by the previous pgkeel process (its
  // socket `fd`), in place of start().
  void adopt(int fd, std::int32_t backend_pid, std::int32_t backend_key, const std::string& parameter_status);
  // A takeover: the client moved to the new process with this connection; it is closed here
  // without a word (the new process holds the socket).
  void forget_client() { client_ = nullptr; }
  bool tls() const { return ep_.ssl != nullptr; }

  // Linking: the server relays for `c` until unlink().
  void link(Client* c);
  // The client left. `clean`: at a message boundary with the session idle, so the connection
  // can be reset and reused; otherwise it is closed.
  void unlink(bool clean);
  // Transaction pooling: the client's transaction is over and the connection goes back to its
  // pool as it is (no reset: its settings and statements are known, see Edits).
  void release();
  // release(), after asking the primary for its WAL position (read_your_writes): the answer goes
  // to client `client_id` (if it is still there), then the connection joins its pool.
  void release_asking_lsn(std::uint32_t client_id);

  // What pgkeel changed in this connection's request stream and what that means for the answers:
  // transaction pooling (statements and settings shared between clients), or a session resumed
  // here after its server died. Created on first use.
  struct Edits {
    ResponsePlan plan;
    ResponseFilter filter;
    ServerStatements statements;  // pgkeel's shared statements prepared here
    std::string settings;         // the settings a client left here (SessionState::replay_sql())
    bool dirty = false;           // the plan lost track or a restore failed: not to be reused
  };
  Edits& edits();
  Edits* edits_if() { return edits_.get(); }
  // True when the answers of everything sent so far have reached the client (or pgkeel's own
  // answers were swallowed): the client may detach.
  bool answers_done() const {
    return pending_syncs_ == 0 && !unsynced_ && scanner_.at_boundary() && held_.empty() && (ep_.in == nullptr || ep_.in->pending() == 0) &&
           (!edits_ || (edits_->plan.idle() && edits_->filter.at_boundary()));
  }
  int pending_syncs() const { return pending_syncs_; }
  // The client was sent a FATAL error: its session ends with this connection.
  bool fatal_relayed() const { return fatal_relayed_; }
  bool unsynced() const { return unsynced_; }
  // Relay entry points used by the client side.
  Endpoint& ep() { return ep_; }
  // The client drained what we sent it: resume reading from the server.
  void resume_reading() { ep_.set_reading(true); }
  // Called when the client's bytes were forwarded to this server and the client is now waiting
  // on its write side.
  void close(std::string_view reason);
  // As close(), with a reset (SO_LINGER 0): what the kernel still holds unsent or unacknowledged
  // is dropped, never retransmitted. For a node that must take nothing more (a demoted or fenced
  // primary): a statement in a send queue would otherwise reach it once a partition heals.
  void close_abortively(std::string_view reason);

  std::uint32_t id() const { return id_; }
  State state() const { return state_; }
  routing::NodeId node() const { return node_; }
  std::uint64_t epoch() const { return epoch_; }
  char tx_status() const { return tx_status_; }
  bool at_boundary() const { return scanner_.at_boundary(); }
  // An ErrorResponse cut short by a read is held back until it is whole (relay_to_client).
  bool holding() const { return !held_.empty(); }
  std::int32_t backend_pid() const { return backend_pid_; }
  std::int32_t backend_key() const { return backend_key_; }
  // The server's reported settings as ParameterStatus messages, replayed to each client it gets.
  const std::string& parameter_status() const;
  Pool& pool() { return pool_; }
  const std::string& user() const { return session_->user; }
  const std::string& database() const { return session_->server_database; }
  const Client* client() const { return client_; }
  // Statistics of the query cycle and transaction in progress (pgkeel's clock).
  Clock::time_point cycle_started;
  Clock::time_point xact_started;
  Clock::time_point created() const { return created_; }
  Clock::time_point last_used() const { return last_used_; }
  const std::string& name() const { return name_; }
  // Outstanding query cycles: a Query or Sync sent and its ReadyForQuery not yet back.
  void note_frontend_sync() { ++pending_syncs_; }
  // A Query, FunctionCall or extended message is about to be forwarded: note when the cycle
  // (and, at 'I', the transaction) began.
  void note_cycle_start();
  bool query_running() const { return pending_syncs_ > 0 || unsynced_; }
  // A client request of this type is about to be forwarded: a Query, FunctionCall or Sync opens
  // a cycle that its ReadyForQuery closes; Parse, Bind, Describe, Close and Execute await their
  // Sync. Flush and the COPY messages change neither. PostgreSQL ignores a Sync (and a Flush)
  // that reaches it in copy-in mode (§55.2.6); libpq's extended-protocol COPY sends one Sync after
  // the Execute and one after CopyDone, for one ReadyForQuery. So at CopyDone or CopyFail, when
  // the server said CopyInResponse, the Syncs sent since the Execute (or Query) that started the
  // COPY are taken back. Returns how many were (0 but in that case).
  int note_request(char type);
  void note_unsynced(bool v) { unsynced_ = v; }
  // The server said CopyInResponse: it reads copy data until CopyDone or CopyFail.
  void note_copy_in() { copy_in_ = true; }

  // Cancel requests sent for this connection's backend that PostgreSQL has not finished with
  // (its cancel connection is not closed yet). While one is in flight the connection is not
  // given to another client: the cancel would land on that client's query (PgBouncer does the
  // same). A connection released meanwhile waits linked, and an unlinked one is closed.
  void cancel_started() { ++cancels_in_flight_; }
  void cancel_finished();
  bool cancel_in_flight() const { return cancels_in_flight_ > 0; }

  bool counted_connecting = true;  // pool.cc: still counted in Pool::connecting

  // Maintenance tick: connect/login timeouts.
  void tick(Clock::time_point now);

 private:
  static void on_read_cb(evutil_socket_t fd, short what, void* arg);
  static void on_write_cb(evutil_socket_t fd, short what, void* arg);
  void on_read();
  void on_write();
  void on_connected();
  void send_startup();
  void continue_tls();
  void handle_login_message(char type, std::string_view body);
  // `transport`: the node could not be reached (refused, reset, timeout), as opposed to a
  // PostgreSQL ErrorResponse; only the former is a passive health signal.
  void login_failed(std::string error_response, std::string_view reason, bool transport = false);
  void relay_to_client();
  void hold_partial_error(std::size_t from);
  void after_reset_message(char type, std::string_view body);
  void after_lsn_message(char type, std::string_view body);
  bool let_go();
  void note_parameter(protocol::Reader& r);
  void share_parameter_status();
  void finish_reset();

  // Ordered by size, so the object has no padding.
  Worker& w_;
  Pool& pool_;
  std::shared_ptr<const SessionKey> session_;
  std::shared_ptr<const ServerCredential> cred_;  // until logged in
  std::shared_ptr<const std::string> parameter_status_;  // shared with equal ones (Interned)
  Endpoint ep_;
  protocol::Scanner scanner_;  // backend messages while linked
  std::string rx_;  // login and reset phases: bytes not yet parsed
  std::unique_ptr<auth::ScramClient> scram_;  // during a SCRAM login only
  Client* client_ = nullptr;
  std::unique_ptr<Edits> edits_;
  std::uint32_t lsn_for_ = 0;  // kAskingLsn: the client that gets the answer
  std::uint64_t epoch_;
  Clock::time_point created_;
  Clock::time_point last_used_;
  Clock::time_point deadline_;  // connect + login must finish by then
  const std::uint32_t id_;
  const std::string name_;  // "s<worker>-<id>", for logs and SHOW
  routing::NodeId node_;
  std::int32_t backend_pid_ = 0;
  std::int32_t backend_key_ = 0;
  int pending_syncs_ = 0;
  int syncs_since_execute_ = 0;  // frontend Syncs since the last Execute or Query (see note_request)
  int cancels_in_flight_ = 0;
  int connect_errno_ = 0;       // connect() failed at once; reported from the loop
  char tx_status_ = 'I';
  bool unsynced_ = false;
  bool copy_in_ = false;        // CopyInResponse seen; the client's CopyDone / CopyFail not yet
  bool fatal_relayed_ = false;
  // The start of an ErrorResponse that a read cut short, taken out of ep_.in: sent on only once
  // whole, so that a FATAL 57P0x (the server going away) can still be kept from the client, whose
  // session then moves on. The stream's bytes before it went on as usual; the scanner stands at
  // its start. Put back in front of the next read (relay_to_client).
  std::string held_;
  State state_ = State::kConnecting;
  enum class TlsPhase : std::uint8_t { kNone, kAnswer, kHandshake };
  TlsPhase tls_phase_ = TlsPhase::kNone;
  conf::SslMode ssl_mode_ = conf::SslMode::kDisable;
};

}  // namespace pgkeel::proxy
