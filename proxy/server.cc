#include "proxy/server.h"

#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "health/facts.h"
#include "proxy/auth/md5.h"
#include "proxy/client.h"
#include "proxy/fd_limit.h"
#include "proxy/log.h"
#include "proxy/pool.h"
#include "proxy/tls.h"

namespace pgkeel::proxy {
namespace {

namespace be = protocol::be;

// Login and reset messages are small; anything larger from a server at that stage is broken.
constexpr std::uint32_t kMaxLoginMessage = 1u << 20;

std::string error_message(std::string_view sqlstate, std::string_view message,
                          std::string_view detail = {}) {
  std::string out;
  protocol::append_error(out, {"FATAL", sqlstate, message, detail, {}});
  return out;
}

// pgkeel could not open a connection for want of its own resources (is_local_resource_error):
// class 53, insufficient resources, as PostgreSQL answers when it is out of connections (53300)
// or memory (53200). Not class 08: the node was never reached, and nothing is wrong with it.
std::string local_failure_message(int err, std::string_view node) {
  const bool memory = err == ENOMEM || err == ENOBUFS;
  return error_message(memory ? "53200" : "53300",
                       "pgkeel cannot open a connection to node " + std::string(node) + " now: " + std::strerror(err),
                       "This is a limit of pgkeel itself (" + std::string(errno_name(err)) +
                           "), not a failure of the node; try again later.");
}

}  // namespace

std::string with_parameter_status(std::string_view messages, std::string_view name, std::string_view value) {
  std::string out;
  out.reserve(messages.size() + name.size() + value.size() + 7);
  bool found = false;
  std::size_t pos = 0;
  while (messages.size() - pos >= 5) {
    const std::size_t len = 1 + protocol::read_u32(reinterpret_cast<const unsigned char*>(messages.data() + pos + 1));
    const std::string_view m = messages.substr(pos, len);
    pos += m.size();
    const std::string_view body = m.substr(std::min<std::size_t>(5, m.size()));
    if (!found && body.substr(0, body.find('\0')) == name) {
      protocol::append_parameter_status(out, name, value);
      found = true;
    } else {
      out.append(m);
    }
  }
  if (!found) protocol::append_parameter_status(out, name, value);
  return out;
}

Server::Server(Worker& w, std::uint32_t id, Pool& pool, std::shared_ptr<const SessionKey> session,
               std::shared_ptr<const ServerCredential> cred)
    : w_(w),
      pool_(pool),
      session_(std::move(session)),
      cred_(std::move(cred)),
      epoch_(w.snapshot().epoch),
      id_(id),
      name_(connection_name('s', w.index(), id)),
      node_(pool.node) {
  scanner_.watch(be::kReadyForQuery);
  scanner_.watch(be::kParameterStatus);
  scanner_.watch(be::kErrorResponse);
  scanner_.watch(be::kCommandComplete);  // DISCARD ALL / DEALLOCATE: the shared statements go
  scanner_.watch(be::kCopyInResponse);   // copy-in: Syncs are ignored until CopyDone
}

void Server::note_cycle_start() {
  if (pending_syncs_ > 0 || unsynced_) return;
  cycle_started = w_.now();  // the client's bytes arrived in this callback (Client::on_read)
  if (tx_status_ == 'I') xact_started = cycle_started;
}

int Server::note_request(char type) {
  namespace fe = protocol::fe;
  note_cycle_start();
  switch (type) {
    case fe::kQuery:
    case fe::kFunctionCall:
      note_frontend_sync();
      syncs_since_execute_ = 0;
      return 0;
    case fe::kSync:
      note_frontend_sync();
      note_unsynced(false);
      ++syncs_since_execute_;
      return 0;
    case fe::kExecute:
      syncs_since_execute_ = 0;
      note_unsynced(true);
      return 0;
    case fe::kParse:
    case fe::kBind:
    case fe::kDescribe:
    case fe::kClose:
      note_unsynced(true);
      return 0;
    case fe::kCopyDone:
    case fe::kCopyFail: {
      if (!copy_in_) return 0;
      copy_in_ = false;
      const int ignored = std::min(syncs_since_execute_, pending_syncs_);
      pending_syncs_ -= ignored;
      syncs_since_execute_ = 0;
      return ignored;
    }
    default:
      return 0;  // Flush, CopyData
  }
}

void Server::cancel_finished() {
  if (cancels_in_flight_ > 0) --cancels_in_flight_;
  if (cancels_in_flight_ > 0 || state_ != State::kLinked || client_ == nullptr) return;
  if (answers_done()) client_->on_cycle_done();  // a release that waited for the cancel
}

Server::Edits& Server::edits() {
  if (!edits_) edits_ = std::make_unique<Edits>();
  return *edits_;
}

Server::~Server() {
  if (ep_.in != nullptr) w_.buffers().release(ep_.in);
  ep_.in = nullptr;
  ep_.close();
}

void Server::on_read_cb(evutil_socket_t, short, void* arg) { static_cast<Server*>(arg)->on_read(); }
void Server::on_write_cb(evutil_socket_t, short, void* arg) { static_cast<Server*>(arg)->on_write(); }

void Server::adopt(int fd, std::int32_t backend_pid, std::int32_t backend_key, const std::string& parameter_status) {
  created_ = last_used_ = Clock::now();
  ep_.fd = fd;
  set_socket_options(fd, w_.shared().node_addrs[node_].addr.ss_family != AF_UNIX, w_.config().general);
  ep_.open_events(w_.base(), &Server::on_read_cb, &Server::on_write_cb, this);
  backend_pid_ = backend_pid;
  backend_key_ = backend_key;
  parameter_status_ = std::make_shared<const std::string>(parameter_status);
  share_parameter_status();
  cred_.reset();
  tx_status_ = 'I';
  state_ = State::kIdle;
  log::debug("server").kv("event", "adopted").kv("server", name()).kv("backend_pid", backend_pid_).emit();
}

void Server::start() {
  w_.stats().server_connects.add(1);
  created_ = last_used_ = Clock::now();
  deadline_ = created_ + w_.config().pool.connect_timeout;
  const NodeAddress& na = w_.shared().node_addrs[node_];
  const int fd = ::socket(na.addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    // No socket, so no event to defer through: the next tick reports it (see tick()).
    connect_errno_ = errno;
    deadline_ = created_;
    return;
  }
  ep_.fd = fd;
  set_socket_options(fd, na.addr.ss_family != AF_UNIX, w_.config().general);
  ep_.open_events(w_.base(), &Server::on_read_cb, &Server::on_write_cb, this);
  log::debug("server").kv("event", "connecting").kv("server", name()).kv("node", w_.snapshot().nodes[node_].name).kv("addr", na.text).emit();
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&na.addr), na.len) == 0) {
    ep_.activate_write();  // continue from the loop, as for EINPROGRESS
    return;
  }
  if (errno != EINPROGRESS) {
    // Reported from the event loop, never from inside the pool call that started us.
    connect_errno_ = errno;
    ep_.activate_write();
    return;
  }
  ep_.set_writing(true);  // connect completes when writable
}

void Server::on_connected() {
  int err = connect_errno_;
  socklen_t len = sizeof err;
  if (err == 0 && getsockopt(ep_.fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
  if (err != 0 && is_local_resource_error(err)) {
    // pgkeel's own shortage (EADDRNOTAVAIL: no local port left): never reported to the keeper.
    login_failed(local_failure_message(err, w_.snapshot().nodes[node_].name),
                 "pgkeel's own limit, not the node's: connect: " + std::string(std::strerror(err)), false);
    return;
  }
  if (err != 0) {
    const NodeAddress& na = w_.shared().node_addrs[node_];
    login_failed(error_message("08006", "could not connect to node " + w_.snapshot().nodes[node_].name + " (" + na.text + "): " + std::strerror(err)), std::strerror(err), true);
    return;
  }
  state_ = State::kLogin;
  ep_.set_writing(false);
  ep_.set_reading(true);
  const conf::Config& cfg = w_.config();
  const conf::NodeConfig& nc = cfg.nodes[node_];
  ssl_mode_ = nc.sslmode_set ? nc.sslmode : cfg.server_tls.sslmode;
  if (ssl_mode_ != conf::SslMode::kDisable && w_.shared().node_addrs[node_].addr.ss_family != AF_UNIX) {
    // SSLRequest (§55.2.10); the answer is one byte, read alone.
    std::string out;
    protocol::Writer(out).begin_untyped().i32(protocol::kSSLRequestCode).end();
    tls_phase_ = TlsPhase::kAnswer;
    if (ep_.send(out) == IoStatus::kError) login_failed(error_message("08006", "could not send SSL request to server"), "send", true);
    return;
  }
  send_startup();
}

void Server::send_startup() {
  std::string out;
  protocol::Writer wr(out);
  wr.begin_untyped().i32(protocol::kProtocolVersion3);
  wr.str("user").str(user()).str("database").str(database());
  for (const auto& [k, v] : session_->params) wr.str(k).str(v);
  wr.i8(0);
  wr.end();
  if (ep_.send(out) == IoStatus::kError) login_failed(error_message("08006", "could not send startup packet to server"), "send", true);
}

// The server's answer to our SSLRequest, then the handshake.
void Server::continue_tls() {
  const std::string& node = w_.snapshot().nodes[node_].name;
  if (tls_phase_ == TlsPhase::kAnswer) {
    char answer = 0;
    const long n = ep_.read(&answer, 1);  // exactly one byte: nothing unencrypted after it is read
    if (n == -1) return;
    if (n <= 0) {
      login_failed(error_message("08006", "server closed the connection after the SSL request"), "eof", true);
      return;
    }
    if (answer == 'N') {
      if (ssl_mode_ == conf::SslMode::kPrefer) {
        tls_phase_ = TlsPhase::kNone;
        send_startup();
        return;
      }
      login_failed(error_message("08006", "node " + node + " does not support TLS, but sslmode requires it"), "server refused TLS");
      return;
    }
    if (answer != 'S') {
      login_failed(error_message("08P01", "node " + node + " answered the SSL request with an invalid byte"), "bad SSL answer");
      return;
    }
    std::shared_ptr<SSL_CTX> ctx = w_.shared().server_tls();
    if (!ctx) {
      login_failed(error_message("08006", "TLS toward the nodes is not available (see the log at start)"), "no TLS context");
      return;
    }
    const std::string host = w_.config().nodes[node_].host;
    ep_.ssl = tls::new_client_session(ctx.get(), ep_.fd, ssl_mode_, host);
    if (ep_.ssl == nullptr) {
      login_failed(error_message("08006", "could not start TLS toward node " + node), "SSL_new");
      return;
    }
    tls_phase_ = TlsPhase::kHandshake;
  }
  std::string error;
  switch (ep_.handshake(error)) {
    case IoStatus::kBlocked:
      return;
    case IoStatus::kError:
      login_failed(error_message("08006", "TLS handshake with node " + node + " failed: " + error), "tls: " + error, false);
      return;
    case IoStatus::kDone:
      break;
  }
  tls_phase_ = TlsPhase::kNone;
  log::debug("server").kv("event", "tls").kv("server", name()).kv("tls", tls::describe(ep_.ssl)).emit();
  send_startup();
}

void Server::on_write() {
  if (state_ == State::kConnecting) {
    on_connected();
    return;
  }
  if (tls_phase_ != TlsPhase::kNone) {
    if (tls_phase_ == TlsPhase::kHandshake) {
      continue_tls();
      return;
    }
    // The SSL request itself is going out.
    if (ep_.flush_out() == IoStatus::kError) login_failed(error_message("08006", "could not send SSL request to server"), "send", true);
    if (ep_.out_empty()) ep_.set_writing(false);
    return;
  }
  switch (ep_.flush_out()) {
    case IoStatus::kBlocked: return;
    case IoStatus::kError: close("send to server failed"); return;
    case IoStatus::kDone: break;
  }
  if (state_ == State::kLinked && client_ != nullptr) {
    IoBuffer* in = client_->ep().in;
    if (in != nullptr) {
      switch (send_buffer(ep_, in)) {
        case IoStatus::kBlocked: return;
        case IoStatus::kError: close("send to server failed"); return;
        case IoStatus::kDone:
          w_.buffers().release(in);
          client_->ep().in = nullptr;
          break;
      }
    }
    client_->resume_reading();
  }
  ep_.set_writing(false);
}

void Server::on_read() {
  w_.touch_now();
  switch (state_) {
    case State::kLinked:
      relay_to_client();
      return;
    case State::kLogin:
    case State::kResetting:
    case State::kAskingLsn:
    case State::kIdle:
      break;
    case State::kConnecting:
    case State::kClosed:
      return;
  }
  if (tls_phase_ != TlsPhase::kNone) {
    continue_tls();
    return;
  }
  char buf[16384];
  const long n = ep_.read(buf, sizeof buf);
  if (n == -1) return;
  if (n <= 0) {
    if (state_ == State::kLogin) {
      login_failed(error_message("08006", "server closed the connection during login"), "eof during login", true);
    } else {
      close(state_ == State::kIdle ? "server closed an idle connection" : "server closed the connection during reset");
    }
    return;
  }
  if (state_ == State::kIdle) {
    // An idle server speaks only to end the session (e.g. FATAL on administrator shutdown).
    close("unexpected data from an idle server");
    return;
  }
  rx_.append(buf, static_cast<std::size_t>(n));
  std::size_t off = 0;
  while (rx_.size() - off >= 5 && (state_ == State::kLogin || state_ == State::kResetting || state_ == State::kAskingLsn)) {
    const auto* h = reinterpret_cast<const unsigned char*>(rx_.data() + off);
    const std::uint32_t len = protocol::read_u32(h + 1);
    if (len < 4 || len > kMaxLoginMessage) {
      if (state_ == State::kLogin) {
        login_failed(error_message("08P01", "server sent an invalid message during login"), "bad length");
      } else {
        close("server sent an invalid message during reset");
      }
      return;
    }
    if (rx_.size() - off < 1 + len) break;
    const char type = rx_[off];
    const std::string body = rx_.substr(off + 5, len - 4);
    off += 1 + len;
    if (state_ == State::kLogin) {
      handle_login_message(type, body);
    } else if (state_ == State::kAskingLsn) {
      after_lsn_message(type, body);
    } else {
      after_reset_message(type, body);
    }
    if (state_ == State::kClosed) return;
  }
  rx_.erase(0, off);
  if (state_ == State::kIdle) std::string().swap(rx_);
}

void Server::handle_login_message(char type, std::string_view body) {
  protocol::Reader r(body);
  switch (type) {
    case be::kAuthentication: {
      if (cred_ == nullptr) {
        login_failed(error_message("08P01", "server asked for authentication without a login in progress"), "no credential");
        return;
      }
      const auto code = static_cast<protocol::AuthCode>(r.i32());
      std::string out;
      protocol::Writer wr(out);
      switch (code) {
        case protocol::AuthCode::kOk:
          if (scram_) {
            login_failed(error_message("28000", "server accepted the login before proving it knows the SCRAM secret"), "scram not finished");
          }
          return;
        case protocol::AuthCode::kCleartextPassword:
          if (cred_->password.empty()) {
            login_failed(error_message("28000", "server asks for a cleartext password for user \"" + user() + "\", but pgkeel has none",
                                       "Put the plaintext password in the users file, or use SCRAM on the server."), "no cleartext password");
            return;
          }
          wr.begin(protocol::fe::kPassword).str(cred_->password).end();
          break;
        case protocol::AuthCode::kMD5Password: {
          std::string_view salt_bytes = r.bytes(4);
          std::string hash = cred_->md5_hash;
          if (hash.empty() && !cred_->password.empty()) hash = auth::md5_password_hash(user(), cred_->password).value_or("");
          auth::Md5Salt salt{};
          if (!r.failed()) std::memcpy(salt.data(), salt_bytes.data(), 4);
          std::optional<std::string> resp = r.failed() || hash.empty() ? std::nullopt : auth::md5_response(hash, salt);
          if (!resp) {
            login_failed(error_message("28000", "server asks for md5 authentication for user \"" + user() + "\", but pgkeel has no md5 hash or password for it",
                                       "A SCRAM verifier cannot answer md5: put the md5 hash or the plaintext password in the users file."), "no md5 secret");
            return;
          }
          wr.begin(protocol::fe::kPassword).str(*resp).end();
          break;
        }
        case protocol::AuthCode::kSASL: {
          bool scram_offered = false;
          while (!r.failed()) {
            std::string_view mech = r.str();
            if (mech.empty()) break;
            if (mech == auth::kScramSha256) scram_offered = true;
          }
          if (!scram_offered || !cred_->scram) {
            login_failed(error_message("28000", scram_offered ? "server asks for SCRAM for user \"" + user() + "\", but pgkeel has no SCRAM secret for it"
                                                              : "server offers no SASL mechanism pgkeel supports",
                                       "SCRAM pass-through needs the client to log in to pgkeel with SCRAM and the user's "
                                       "verifier (from pg_authid) in the users file; after a trust rule pgkeel holds no keys, "
                                       "so put the plaintext password in the users file."), "no scram secret");
            return;
          }
          scram_ = std::make_unique<auth::ScramClient>(user(), *cred_->scram);
          auth::ScramStep step = scram_->client_first_message();
          if (!step.ok()) {
            login_failed(error_message("XX000", step.error), step.error);
            return;
          }
          wr.begin(protocol::fe::kPassword).str(auth::kScramSha256).i32(static_cast<std::int32_t>(step.message.size())).bytes(step.message).end();
          break;
        }
        case protocol::AuthCode::kSASLContinue: {
          if (!scram_) {
            login_failed(error_message("08P01", "server sent SASLContinue out of order"), "sasl order");
            return;
          }
          auth::ScramStep step = scram_->handle_server_first(r.rest());
          if (!step.ok()) {
            login_failed(error_message(step.failure == auth::ScramFailure::kPassThrough ? "28000" : "08P01", step.error), step.error);
            return;
          }
          wr.begin(protocol::fe::kPassword).bytes(step.message).end();
          break;
        }
        case protocol::AuthCode::kSASLFinal: {
          if (!scram_) {
            login_failed(error_message("08P01", "server sent SASLFinal out of order"), "sasl order");
            return;
          }
          auth::ScramStep step = scram_->verify_server_final(r.rest());
          if (!step.ok()) {
            login_failed(error_message("28000", step.error), step.error);
            return;
          }
          scram_.reset();
          return;
        }
        default:
          login_failed(error_message("28000", "server asks for an authentication method pgkeel does not support (code " + std::to_string(static_cast<int>(code)) + ")"), "auth method");
          return;
      }
      if (ep_.send(out) == IoStatus::kError) close("send to server failed");
      return;
    }
    case be::kErrorResponse: {
      // The server refused the login: the waiting client sees the server's own error.
      const protocol::ParsedError e = protocol::parse_error(body);
      std::string msg;
      protocol::Writer(msg).begin(be::kErrorResponse).bytes(body).end();
      login_failed(std::move(msg), e.message);
      return;
    }
    case be::kParameterStatus:
      note_parameter(r);
      return;
    case be::kBackendKeyData:
      backend_pid_ = r.i32();
      backend_key_ = r.i32();
      return;
    case be::kReadyForQuery: {
      tx_status_ = static_cast<char>(r.i8());
      state_ = State::kIdle;
      last_used_ = Clock::now();
      w_.stats().node_answers[node_].add(1);
      cred_.reset();  // logged in: the user's credential is no longer needed here
      share_parameter_status();
      log::debug("server").kv("event", "login").kv("server", name()).kv("node", w_.snapshot().nodes[node_].name).kv("backend_pid", backend_pid_).emit();
      server_available(w_, *this);
      return;
    }
    default:
      return;  // NoticeResponse, NegotiateProtocolVersion: nothing to do
  }
}

void Server::login_failed(std::string error_response, std::string_view reason, bool transport) {
  if (state_ == State::kClosed) return;
  w_.stats().server_connect_failures.add(1);
  log::warning("server").kv("event", "login_failed").kv("server", name()).kv("node", w_.snapshot().nodes[node_].name).kv("reason", reason).emit();
  state_ = State::kClosed;
  ep_.close();
  server_login_failed(w_, *this, error_response, transport);
}

// A ParameterStatus: the server's current value of a reported setting, replayed to the next
// client that gets this connection. Kept as the messages themselves, shared once logged in.
void Server::note_parameter(protocol::Reader& r) {
  std::string_view k = r.str();
  std::string_view v = r.str();
  if (r.failed()) return;
  parameter_status_ = std::make_shared<const std::string>(with_parameter_status(parameter_status(), k, v));
  if (state_ != State::kLogin) share_parameter_status();  // a login shares its set once, at the end
}

void Server::share_parameter_status() {
  if (parameter_status_) parameter_status_ = w_.interned().parameter_statuses.intern(pool_.key, std::string(*parameter_status_));
}

const std::string& Server::parameter_status() const {
  static const std::string kNone;
  return parameter_status_ ? *parameter_status_ : kNone;
}

void Server::link(Client* c) {
  state_ = State::kLinked;
  client_ = c;
  last_used_ = w_.now();  // the loop's time: release() sets it exactly
  scanner_.reset();
  pending_syncs_ = 0;
  syncs_since_execute_ = 0;
  unsynced_ = false;
  copy_in_ = false;
  ep_.set_reading(true);
}

void Server::unlink(bool clean) {
  client_ = nullptr;
  if (state_ != State::kLinked) return;
  const bool pending = ep_.in != nullptr && ep_.in->pending() > 0;
  if (ep_.in != nullptr) {
    w_.buffers().release(ep_.in);
    ep_.in = nullptr;
  }
  if (!clean || pending || !ep_.out_empty() || tx_status_ != 'I' || (edits_ && (edits_->dirty || !edits_->plan.idle()))) {
    close("client left mid-session");
    return;
  }
  if (cancel_in_flight()) {
    close("a cancel request for it is in flight");  // it would cancel the next client's query
    return;
  }
  const Clock::time_point now = Clock::now();
  last_used_ = now;
  if (w_.shutting_down() || now - created_ > w_.config().pool.server_lifetime) {
    close(w_.shutting_down() ? "shutting down" : "server_lifetime reached");
    return;
  }
  const std::string& q = w_.config().pool.reset_query;
  if (q.empty()) {
    state_ = State::kIdle;
    server_available(w_, *this);
    return;
  }
  state_ = State::kResetting;
  std::string out;
  protocol::Writer(out).begin(protocol::fe::kQuery).str(q).end();
  if (ep_.send(out) == IoStatus::kError) close("send to server failed");
}

// The client let go of this connection: true when it may serve again (else it is closed).
bool Server::let_go() {
  client_ = nullptr;
  if (state_ != State::kLinked) return false;
  const bool reusable = answers_done() && ep_.out_empty() && tx_status_ == 'I' && !(edits_ && edits_->dirty) && !cancel_in_flight();
  if (ep_.in != nullptr) {
    w_.buffers().release(ep_.in);
    ep_.in = nullptr;
  }
  if (!reusable) close(edits_ && edits_->dirty ? "its state is unknown" : "released mid-transaction");
  return reusable;
}

void Server::release() {
  if (!let_go()) return;
  const Clock::time_point now = w_.now();
  last_used_ = now;
  if (w_.shutting_down() || now - created_ > w_.config().pool.server_lifetime) {
    close(w_.shutting_down() ? "shutting down" : "server_lifetime reached");
    return;
  }
  state_ = State::kIdle;
  server_available(w_, *this);
}

void Server::release_asking_lsn(std::uint32_t client_id) {
  if (!let_go()) return;
  state_ = State::kAskingLsn;
  lsn_for_ = client_id;
  std::string out;
  protocol::Writer(out).begin(protocol::fe::kQuery).str("SELECT pg_catalog.pg_current_wal_lsn()::text").end();
  if (ep_.send(out) == IoStatus::kError) close("send to server failed");
}

void Server::after_lsn_message(char type, std::string_view body) {
  protocol::Reader r(body);
  switch (type) {
    case be::kErrorResponse:
      close("asking for the WAL position failed: " + std::string(protocol::parse_error(body).message));
      return;
    case be::kDataRow: {
      r.i16();
      const std::int32_t n = r.i32();
      const std::string_view text = n > 0 ? r.bytes(static_cast<std::size_t>(n)) : std::string_view();
      const health::Lsn lsn = r.failed() ? 0 : health::parse_lsn(text).value_or(0);
      if (Client* c = w_.find_client(lsn_for_); c != nullptr && lsn > 0) c->note_write_lsn(lsn);
      return;
    }
    case be::kReadyForQuery:
      tx_status_ = static_cast<char>(r.i8());
      lsn_for_ = 0;
      if (tx_status_ != 'I') {
        close("server not idle after asking for the WAL position");
        return;
      }
      state_ = State::kIdle;
      last_used_ = Clock::now();
      server_available(w_, *this);
      return;
    default:
      return;  // RowDescription, CommandComplete, notices
  }
}

void Server::after_reset_message(char type, std::string_view body) {
  protocol::Reader r(body);
  switch (type) {
    case be::kErrorResponse:
      close("reset query failed: " + std::string(protocol::parse_error(body).message));
      return;
    case be::kParameterStatus:
      note_parameter(r);
      return;
    case be::kReadyForQuery:
      tx_status_ = static_cast<char>(r.i8());
      if (tx_status_ != 'I') {
        close("server not idle after reset");
        return;
      }
      state_ = State::kIdle;
      last_used_ = Clock::now();
      w_.stats().node_answers[node_].add(1);
      if (edits_) {
        // The reset query (DISCARD ALL, by default) dropped the statements and the settings.
        edits_->statements.clear();
        edits_->settings.clear();
      }
      server_available(w_, *this);
      return;
    default:
      return;  // CommandComplete, notices
  }
}

// The ErrorResponse the bytes read so far end inside of, when its start is in this read (from
// `from` on) and it is small: taken out of the buffer into held_, the scanner back at its start.
void Server::hold_partial_error(std::size_t from) {
  const protocol::Scanner::Partial p = scanner_.partial();
  if (p.type != be::kErrorResponse || p.length > 4 + protocol::Scanner::kCaptureLimit) return;
  IoBuffer* b = ep_.in;
  if (p.scanned > b->end - from) return;  // began in an earlier read, which went on already
  held_.assign(reinterpret_cast<const char*>(b->data + b->end - p.scanned), p.scanned);
  b->end -= p.scanned;
  scanner_.reset();
}

void Server::relay_to_client() {
  Client* c = client_;
  std::size_t from = 0;
  std::size_t held = 0;  // bytes of held_ put back in front of this read
  if (!held_.empty()) {
    if (ep_.in == nullptr) ep_.in = w_.buffers().acquire();
    if (IoBuffer::kSize - ep_.in->end <= held_.size()) {
      ep_.set_reading(false);  // no room behind what the client has still to take: resumed once it has
      return;
    }
    std::memcpy(ep_.in->data + ep_.in->end, held_.data(), held_.size());
    ep_.in->end += held_.size();
    held = held_.size();
    held_.clear();
  }
  const long n = receive(ep_, w_.buffers(), from);
  if (held > 0) {
    from -= held;
    if (n == -1) {
      // Nothing more yet: held again, as it was.
      held_.assign(reinterpret_cast<const char*>(ep_.in->data + from), held);
      ep_.in->end = from;
      release_if_drained(ep_, w_.buffers());
      return;
    }
    if (n <= 0) ep_.in->end = from;  // the stream ended inside it: never sent on by halves
  }
  if (n == -1) return;
  if (n <= 0) {
    release_if_drained(ep_, w_.buffers());
    close(n == 0 ? "server closed the connection unexpectedly" : "receive from server failed");
    return;
  }
  IoBuffer* b = ep_.in;
  WorkerStats& st = w_.stats();
  Traffic& by_listener = st.by_listener[c->listener_index()];
  Traffic& by_node = st.by_node[node_];
  by_listener.bytes_out.add(static_cast<std::uint64_t>(n));
  by_node.bytes_out.add(static_cast<std::uint64_t>(n));
  std::string ended;  // a 57P0x FATAL: the server goes away (shutdown, postmaster gone, terminated)
  std::size_t ended_at = 0;
  const protocol::ScanResult res =
      scanner_.scan(b->data + from, b->end - from, [&](const protocol::ScannedMessage& m) {
        protocol::Reader r(m.body);
        if (m.type == be::kErrorResponse) {
          const protocol::ParsedError f = protocol::parse_error(m.body);
          if (f.severity == "FATAL" || f.severity == "PANIC") {
            // The server goes away (57P0x: shutting down, its postmaster gone, terminated by an
            // administrator): the session moves on (Client::on_server_lost), told what became of
            // what was in flight, without this message. Any other FATAL is the session's end.
            if (f.sqlstate.rfind("57P0", 0) == 0 && m.started_in_chunk && !m.truncated) {
              ended = std::string(f.sqlstate) + " " + std::string(f.message);
              ended_at = from + m.start;
              return protocol::ScanAction::kStop;
            }
            fatal_relayed_ = true;
          }
          c->note_server_error();
          return protocol::ScanAction::kContinue;
        }
        if (m.type == be::kCopyInResponse) {
          note_copy_in();
          return protocol::ScanAction::kContinue;
        }
        if (m.type == be::kCommandComplete) {
          // DISCARD ALL, DEALLOCATE ALL and DEALLOCATE name drop prepared statements, pgkeel's
          // shared ones among them: forget every one (the next use prepares it again, after a
          // Close, so a statement that in fact survived cannot collide).
          const std::string_view tag = m.body.substr(0, m.body.find('\0'));
          if (edits_ && (tag == "DISCARD ALL" || tag.rfind("DEALLOCATE", 0) == 0)) edits_->statements.clear();
          return protocol::ScanAction::kContinue;
        }
        if (m.type == be::kReadyForQuery) {
          tx_status_ = static_cast<char>(r.i8());
          c->note_server_ready(tx_status_);
          if (pending_syncs_ > 0) --pending_syncs_;
          const Clock::time_point now = w_.now();  // read as this callback began
          c->note_activity(now);
          const auto us = [&](Clock::time_point since) {
            return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::microseconds>(now - since).count());
          };
          const std::uint64_t q = us(cycle_started);
          const std::size_t qb = LatencyBuckets::index_of(q);
          by_listener.queries.add(1);
          by_node.queries.add(1);
          by_listener.query_latency.add(q, qb);
          by_node.query_latency.add(q, qb);
          if (pending_syncs_ > 0) cycle_started = now;  // pipelined: the next cycle is timed from here
          if (tx_status_ == 'I') {
            const std::uint64_t x = us(xact_started);
            const std::size_t xb = LatencyBuckets::index_of(x);
            by_listener.transactions.add(1);
            by_node.transactions.add(1);
            by_listener.xact_latency.add(x, xb);
            by_node.xact_latency.add(x, xb);
            xact_started = now;
          }
        } else if (!m.truncated) {
          note_parameter(r);
          protocol::Reader p(m.body);
          if (p.str() == "application_name") c->note_application_name(p.str());
        }
        return protocol::ScanAction::kContinue;
      });
  if (!ended.empty()) {
    // What came before it still goes to the client (Client::on_server_lost sends it on).
    b->end = ended_at;
    scanner_.reset();
    if (edits_ && b->end > from) {
      std::string out;
      if (edits_->filter.filter(b->data + from, b->end - from, edits_->plan, out) == ResponseFilter::Result::kChanged) {
        std::string all(reinterpret_cast<const char*>(b->data + b->begin), from - b->begin);
        all += out;
        b->begin = b->end;
        (void)c->ep().send(all);  // a failure shows when the client is next written to
      }
    }
    close("the server ended the session: " + ended);
    return;
  }
  if (res.status == protocol::ScanResult::Status::kMalformed) {
    b->end = from + res.consumed;
  } else {
    hold_partial_error(from);
  }
  if (res.status != protocol::ScanResult::Status::kMalformed && edits_ &&
      (!edits_->plan.idle() || !edits_->filter.at_boundary() || c->transaction_mode())) {
    // The request stream was edited: the plan says which answers the client gets.
    std::string out;
    const ResponseFilter::Result fr = edits_->filter.filter(b->data + from, b->end - from, edits_->plan, out);
    for (const std::string& name : edits_->plan.take_dropped()) edits_->statements.remove(name);
    if (edits_->plan.lost() || edits_->plan.injected_failed()) edits_->dirty = true;
    if (fr == ResponseFilter::Result::kMalformed) {
      b->end = from;
      release_if_drained(ep_, w_.buffers());
      log::warning("server").kv("event", "protocol_violation").kv("server", name()).emit();
      close("server sent an invalid message");
      return;
    }
    if (fr == ResponseFilter::Result::kChanged) {
      // What is still unsent from earlier reads goes first, then the edited answers.
      std::string all(reinterpret_cast<const char*>(b->data + b->begin), from - b->begin);
      all += out;
      b->begin = b->end;
      release_if_drained(ep_, w_.buffers());
      if (c->ep().send(all) == IoStatus::kError) {
        close("client vanished");
        return;
      }
      if (!c->ep().out_empty()) ep_.set_reading(false);  // resumed once the client drained
      if (answers_done()) c->on_cycle_done();
      return;
    }
  }
  if (b->pending() > 0) {
    if (!c->ep().out_empty()) {
      ep_.set_reading(false);  // our own bytes for the client go first
    } else {
      switch (send_buffer(c->ep(), b)) {
        case IoStatus::kDone:
          break;
        case IoStatus::kBlocked:
          ep_.set_reading(false);
          c->ep().set_writing(true);
          break;
        case IoStatus::kError:
          // The client is gone; closing it unlinks (and closes) us.
          c->ep().set_reading(false);
          w_.buffers().release(b);
          ep_.in = nullptr;
          close("client vanished");
          return;
      }
    }
  }
  if (ep_.in == b) release_if_drained(ep_, w_.buffers());
  if (res.status == protocol::ScanResult::Status::kMalformed) {
    log::warning("server").kv("event", "protocol_violation").kv("server", name()).kv("length", static_cast<std::uint64_t>(res.bad_length)).emit();
    close("server sent an invalid message");
    return;
  }
  if (answers_done()) c->on_cycle_done();
}

void Server::close_abortively(std::string_view reason) {
  if (ep_.fd >= 0) {
    const linger reset{1, 0};
    ::setsockopt(ep_.fd, SOL_SOCKET, SO_LINGER, &reset, sizeof reset);
  }
  close(reason);
}

void Server::close(std::string_view reason) {
  if (state_ == State::kClosed) return;
  const bool was_login = state_ == State::kConnecting || state_ == State::kLogin;
  if (was_login) {
    login_failed(error_message("08006", "server connection failed during login: " + std::string(reason)), reason, true);
    return;
  }
  log::debug("server").kv("event", "closed").kv("server", name()).kv("reason", reason).emit();
  state_ = State::kClosed;
  ep_.close();
  Client* c = client_;
  client_ = nullptr;
  if (c != nullptr) c->on_server_lost(reason);
  if (ep_.in != nullptr) {
    w_.buffers().release(ep_.in);
    ep_.in = nullptr;
  }
  server_gone(w_, *this);
}

void Server::tick(Clock::time_point now) {
  if (state_ == State::kConnecting && ep_.fd < 0 && connect_errno_ != 0) {
    // socket() failed in start(). EMFILE, ENFILE, ENOMEM: pgkeel's own shortage, which is no
    // evidence against the node and is not reported to the keeper.
    const int err = connect_errno_;
    const bool local = is_local_resource_error(err);
    login_failed(local ? local_failure_message(err, w_.snapshot().nodes[node_].name)
                       : error_message("58000", std::string("pgkeel could not create a socket: ") + std::strerror(err)),
                 (local ? "pgkeel's own limit, not the node's: socket: " : "socket: ") + std::string(std::strerror(err)), false);
    return;
  }
  if ((state_ == State::kConnecting || state_ == State::kLogin) && now > deadline_) {
    const NodeAddress& na = w_.shared().node_addrs[node_];
    login_failed(error_message("08006", "timeout connecting to node " + w_.snapshot().nodes[node_].name + " (" + na.text + ")"), "connect_timeout", true);
  }
}

}  // namespace pgkeel::proxy
