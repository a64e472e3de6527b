// proxy/client.h — a connection from an application to pgkeel. pgkeel is the server here: it
// reads the startup packet, authenticates the client itself, then attaches it to a server
// connection from a pool and relays.
//
// States: kStartup (reading SSLRequest/StartupMessage) -> kAuth (SCRAM or md5 exchange) ->
// kWaiting (authenticated; no server yet: queued, or a server is logging in) -> kLinked
// (relaying) <-> kDetached (the session is open, no server: between transactions in transaction
// pooling, or after its server died; the next request takes a server again) -> kClosed.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "proxy/auth_session.h"
#include "proxy/conn.h"
#include "proxy/txpool/txpool.h"
#include "proxy/pool.h"
#include "proxy/protocol/message.h"
#include "proxy/protocol/scanner.h"
#include "proxy/session_transfer.h"
#include "proxy/shared.h"
#include "proxy/worker.h"

namespace pgkeel::proxy {

class Server;

class Client {
 public:
  enum class State : std::uint8_t { kStartup, kAuth, kWaiting, kLinked, kDetached, kClosed };

  Client(Worker& w, std::uint32_t id, int fd, std::size_t listener_index, const sockaddr* addr);
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  void start();

  // Pool callbacks.
  void on_server_ready(Server* s);
  // `error_response` is a complete ErrorResponse message to send before closing.
  void on_server_failed(const std::string& error_response);
  // The linked server connection died under us.
  void on_server_lost(std::string_view reason);
  // The linked server's bytes were sent (or queued); relay helpers.
  Endpoint& ep() { return ep_; }
  void resume_reading() { ep_.set_reading(true); }

  // Ends the session with a FATAL ErrorResponse (when at a message boundary) and closes.
  void terminate(std::string_view sqlstate, std::string_view message);
  // Graceful shutdown: true when the session may be ended now without cutting a transaction.
  bool idle_for_shutdown() const;
  // A takeover (proxy/session_transfer.h): the session as it moves to the new process, when it
  // can move now (plaintext, at rest, replayable, nothing buffered either way); nullopt if not.
  std::optional<SessionTransfer> transfer_out() const;
  // The new process's side: a client created on a socket handed over takes up the session where
  // the old process left it (logged in, detached; the next server gets its state replayed).
  // `moved_server`: its server connection, adopted beside it (the session stays linked to it).
  void adopt(const SessionTransfer& t, Server* moved_server = nullptr);
  // Closes this end without a word: the session went on elsewhere (transfer_out()); with
  // `with_server`, its server connection went along and is closed here without a word too.
  void close_moved(bool with_server);
  void tick(Clock::time_point now);

  std::uint32_t id() const { return id_; }
  const std::string& name() const { return name_; }
  State state() const { return state_; }
  std::int32_t cancel_key() const { return cancel_key_; }
  std::int32_t cancel_pid() const;
  Server* server() const { return server_; }
  // Who the client is: shared with every client of the same identity; set from the startup
  // packet on (before it, the accessors below give empty values).
  const std::shared_ptr<const SessionKey>& session() const { return session_; }
  // The pool this session last took a server from on `node` (nullptr: none yet). Pools live as
  // long as their worker, so transaction pooling skips making the pool key at every transaction.
  Pool* last_pool(routing::NodeId node) const;
  void set_last_pool(Pool* p) {
    last_pool_ = p;
    last_pool_session_ = session_.get();
  }
  const std::string& user() const { return key().user; }
  const std::string& database() const { return key().database; }
  const std::string& server_database() const { return key().server_database; }
  const StartupParams& startup_params() const { return key().params; }
  // What a server logs in with on this client's behalf (after authentication): one per user.
  const std::shared_ptr<const ServerCredential>& credential() const { return cred_; }
  Clock::time_point wait_started() const { return wait_started_; }
  // Handles a CancelRequest aimed at this client (secret already checked by the worker).
  void cancel_running_query();
  std::size_t listener_index() const { return listener_index_; }

  // The listener pools by transaction: the server goes back to the pool after each one.
  bool transaction_mode() const;
  // The linked server has relayed every answer owed (a ReadyForQuery ended the last cycle): in
  // transaction pooling, at a transaction's end, the client lets its server go.
  void on_cycle_done();
  void finish_cycle();  // on_cycle_done's work: in transaction pooling, the server goes back
  // What the server said, for the session's state: ReadyForQuery, an ErrorResponse, and the
  // application_name it reports (pgJDBC sets it after login).
  void note_server_ready(char tx_status);
  void note_server_error();
  void note_application_name(std::string_view name);
  // As the server last reported it, else as the startup packet said.
  std::string_view application_name() const;
  // read_write_split: where the transaction about to start goes (read-only: a fit standby), and,
  // with read_your_writes, how far that standby must have replayed (the session's last write).
  bool read_only_transaction() const { return read_only_txn_; }
  std::uint64_t min_replay_lsn() const;
  // read_your_writes: the primary's WAL position after the session's last write transaction.
  void note_write_lsn(std::uint64_t lsn);

  // The client or its server last did something (idle_transaction_timeout counts from here).
  void note_activity(Clock::time_point now) { last_activity_ = now; }
  // Owned by the pool code (pool.cc): where this client waits, and whether it holds a place
  // in the node's queue for a connection slot.
  Pool* waiting_pool = nullptr;
  bool waiting_for_slot = false;
  // Owned by the worker: held while no node can serve (a failover in progress).
  bool held = false;
  bool ever_held = false;
  // Owned by the worker: parked at a transaction boundary while its listener is paused.
  bool parked = false;
  // A takeover's drain (Worker::begin_shutdown with handover): the session may be closed at its
  // next idle point (logged in before the drain, or a query cycle done since).
  bool drain_ready = false;
  Clock::time_point held_since;
  Clock::time_point parked_since;
  // Called by the worker when the pause ends: read on (linked) or ask for a server (new).
  void unparked();
  // Linked, with no transaction or query running and nothing in flight either way.
  bool at_transaction_boundary() const;
  std::string peer() const { return peer_.text(); }
  bool tls() const { return ep_.ssl != nullptr; }
  bool local() const { return !tcp_; }
  Clock::time_point connected_at() const { return started_; }
  std::string_view state_name() const;
  void hold_expired(std::string_view why);

 private:
  static void on_read_cb(evutil_socket_t fd, short what, void* arg);
  static void on_write_cb(evutil_socket_t fd, short what, void* arg);
  void on_read();
  void on_write();
  void read_startup();
  void handle_startup(const protocol::StartupPacket& pkt);
  void begin_auth();
  void continue_tls();
  void lookup_done(AuthSession::Method method, SecretLookup::Result r);
  void start_auth(AuthSession::Method method, std::shared_ptr<const UserAuth> looked_up);
  void handle_auth_message(char type, std::string_view body);
  void apply_auth_step(const AuthSession::Step& step);
  void relay_to_server();
  void forward_to_server(IoBuffer* b, std::size_t new_from);
  bool streams_at_rest() const;
  void fail(std::string_view severity, std::string_view sqlstate, std::string_view message,
            std::string_view detail = {});
  void close_now();
  // Session state kept for another server (transaction pooling, a failover): created on need.
  struct Carried;
  Carried& carried();
  // A client message on its way to the server (body complete unless truncated). False only for
  // a Query that names no session word: nothing in it can drop prepared statements either.
  bool track(char type, std::string_view body, bool truncated);
  void start_cycle();
  void note_effect(const TransactionEffect& e);
  void read_detached();
  // Whole messages from rx_ to the server (transaction pooling, and the first requests after a
  // detach), or to the lost transaction's answers.
  void forward_messages();
  // A statement too long to hold whole (a Query or Parse over the frontend scanner's 8 KB in
  // session pooling, over kMaxHeldMessage in transaction pooling): its head was classified; the
  // rest is watched for what could pin the session, as it passes.
  void start_long_text(char type, std::string_view head);
  void follow_long_text(std::string_view part, std::size_t head_bytes);
  void attach(Server* s);
  void send_due_answers();
  bool declares_read_only() const;
  const SessionKey& key() const;

  // Ordered by size, so the object has no padding: an idle client is mostly this object.
  Worker& w_;
  std::shared_ptr<const SessionKey> session_;
  Pool* last_pool_ = nullptr;
  const SessionKey* last_pool_session_ = nullptr;
  std::shared_ptr<const ServerCredential> cred_;
  Endpoint ep_;
  protocol::Scanner scanner_;  // frontend messages while linked
  std::string rx_;             // startup and auth phases: bytes not yet parsed (no capacity kept)
  std::unique_ptr<AuthSession> auth_;  // while authenticating only: an idle session does not carry it
  std::unique_ptr<Carried> sess_;  // created on need (Client::carried())
  std::unique_ptr<PinWordScan> long_text_;  // see start_long_text()
  Server* server_ = nullptr;
  std::uint64_t lookup_token_ = 0;  // an [auth] query for this client is in flight
  Clock::time_point started_;
  Clock::time_point wait_started_;
  Clock::time_point last_activity_;
  const std::uint32_t id_;
  const std::string name_;  // "c<worker>-<id>", for logs and SHOW
  std::uint32_t stream_left_ = 0;  // body bytes of a long client message still to pass (or drop) as they come
  std::int32_t cancel_key_ = 0;
  PeerAddress peer_;
  const std::uint8_t listener_index_;
  State state_ = State::kStartup;
  bool tcp_ = true;
  bool closing_ = false;         // FATAL sent; close once the queued bytes drain
  bool counted_ = false;         // holds a slot in shared.clients (from accept)
  bool over_limit_ = false;      // accepted beyond max_client_conn: a login gets 53300
  bool ever_linked_ = false;
  bool limits_counted_ = false;  // holds a place in shared.limits
  bool tls_handshake_ = false;  // SSLRequest answered 'S'; the handshake is running
  bool stream_drop_ = false;     // the rest of the long message is dropped (refused, or a lost transaction)
  bool own_answers_wait_ = false;  // reading stopped until pgkeel's own answers drain (a lost transaction)
  bool stream_scan_ = false;     // the rest of the long message is statement text: follow_long_text()
  bool replay_needed_ = false;        // the next server is fresh: restore settings and statements
  bool cycle_may_commit_ = false;     // what runs now may commit (autocommit, COMMIT)
  bool cycle_in_transaction_ = false;  // what runs now runs inside a transaction block
  TransactionEffect unnamed_effect_;   // of the unnamed statement last parsed
  bool read_only_txn_ = false;         // read_write_split: this transaction goes to a standby
  bool txn_wrote_ = false;             // read_your_writes: this transaction wrote
  // A failed login answered later (the address keeps failing): allocated only then.
  struct DelayedError {
    std::string sqlstate;
    std::string message;
    EventPtr timer;
  };
  std::unique_ptr<DelayedError> delayed_;
};

}  // namespace pgkeel::proxy
