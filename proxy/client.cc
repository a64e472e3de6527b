#include "proxy/client.h"

#include <arpa/inet.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "proxy/hba.h"
#include "proxy/txpool/txpool.h"
#include "proxy/log.h"
#include "proxy/pool.h"
#include "proxy/server.h"
#include "proxy/tls.h"

namespace pgkeel::proxy {
namespace {

namespace fe = protocol::fe;

constexpr std::uint32_t kClientIdBits = 22;  // BackendKeyData pid = worker << 22 | client id
constexpr std::size_t kMaxWaitingBytes = IoBuffer::kSize;
// Transaction pooling edits client messages. One up to this size is held whole before it goes
// (statement text classified exactly, names mapped); a longer one is edited from its first
// kMaxHeldMessage bytes, and the rest passes as it arrives, with backpressure, so a client holds
// at most this much however long its messages are (PostgreSQL accepts up to 1 GB). Nothing is
// reserved from a header alone.
constexpr std::uint32_t kMaxHeldMessage = 256u << 10;
// Answers pgkeel makes itself (a lost transaction's) are made at most this far ahead of a client
// that does not read them.
constexpr std::size_t kMaxOwnAnswers = 64u << 10;

static_assert(kMaxListeners <= 256, "Client keeps its listener index in a byte");

const SessionKey kNoSession;  // before the startup packet

bool is_false(std::string_view v) {
  return v == "false" || v == "0" || v == "off" || v == "no" || v == "f" || v == "n";
}

std::string error_message(std::string_view severity, std::string_view sqlstate,
                          std::string_view message, std::string_view detail = {}) {
  std::string out;
  protocol::append_error(out, {severity, sqlstate, message, detail, {}});
  return out;
}

// Whether `sql` drops prepared statements (DEALLOCATE, DISCARD ALL): a server connection's shared
// statements go with them. A false positive costs a Parse again.
bool drops_prepared(std::string_view sql) {
  if (!session_relevant(sql)) return false;
  for (const SqlStatement& st : split_sql(sql)) {
    const auto& w = st.words;
    if (!w.empty() && (w[0] == "deallocate" || (w[0] == "discard" && w.size() > 1 && w[1] == "all"))) return true;
  }
  return false;
}

// Why running `sql` would tie the session to its server connection ("" if it would not), given the
// session's state so far (`current`: nullptr for a fresh session).
std::string pin_reason(const SessionState* current, std::string_view sql) {
  if (!session_relevant(sql)) return {};
  SessionState probe = current != nullptr ? *current : SessionState{};
  probe.on_query(sql);
  if (!probe.replayable()) return probe.why_not_replayable();
  for (const SqlStatement& st : split_sql(sql)) {
    if (!st.words.empty() && st.words[0] == "prepare" && !(st.words.size() > 1 && st.words[1] == "transaction")) {
      return "PREPARE (SQL)";
    }
  }
  return {};
}

// A statement that fails as `why` says, in place of one pgkeel refuses to run: the server raises
// the error, so the transaction around it fails exactly as PostgreSQL would fail it.
std::string refusal_sql(const std::string& why, const std::string& listener) {
  const std::string text = "not allowed in transaction pooling on listener " + listener + " (pinning = \"refuse\"): " + why +
                           " ties a session to one server connection";
  std::string tag = "pgkeel";
  while (text.find("$" + tag + "$") != std::string::npos) tag += "x";
  return "DO $" + tag + "$BEGIN RAISE EXCEPTION USING ERRCODE = '0A000', MESSAGE = $m" + tag + "$" + text + "$m" + tag +
         "$; END$" + tag + "$";
}

}  // namespace

// What a session carries beyond its startup parameters, kept so that it can continue on another
// server connection: its settings (SessionState), its named statements, and, after its server
// died mid-transaction, the lost transaction's answers.
struct Client::Carried {
  SessionState state;
  ClientStatements statements;
  std::unique_ptr<LostTransaction> lost;
  std::string unreplayable;      // why the session cannot move, when it cannot
  std::string application_name;  // as the server reported it
  std::uint64_t write_lsn = 0;   // read_your_writes: the primary's WAL position after the last write
  bool write_lsn_pending = false;  // ... being asked for: reads go to the primary meanwhile
};

std::uint64_t Client::min_replay_lsn() const {
  if (!sess_ || !w_.config().listeners[listener_index_].read_your_writes) return 0;
  return sess_->write_lsn_pending ? ~std::uint64_t{0} : sess_->write_lsn;
}

void Client::note_write_lsn(std::uint64_t lsn) {
  Carried& c = carried();
  c.write_lsn = std::max(c.write_lsn, lsn);
  c.write_lsn_pending = false;
}

Client::Carried& Client::carried() {
  if (!sess_) {
    sess_ = std::make_unique<Carried>();
    if (server_ != nullptr) sess_->state.on_ready(server_->tx_status());
  }
  return *sess_;
}

bool Client::transaction_mode() const {
  return w_.config().listeners[listener_index_].pool_mode == conf::PoolMode::kTransaction;
}

std::string_view Client::application_name() const {
  if (sess_ && !sess_->application_name.empty()) return sess_->application_name;
  for (const auto& [k, v] : key().params) {
    if (k == "application_name") return v;
  }
  return {};
}

void Client::note_application_name(std::string_view name) {
  if (sess_ || application_name() != name) carried().application_name = std::string(name);
}

void Client::note_server_ready(char tx_status) {
  if (sess_) sess_->state.on_ready(tx_status);
}

void Client::note_server_error() {
  if (sess_) sess_->state.on_error();
}

// A request cycle begins when nothing runs on the server: autocommit unless it opens a block.
void Client::start_cycle() {
  if (server_ == nullptr || server_->query_running()) return;
  cycle_in_transaction_ = server_->tx_status() != 'I';
  cycle_may_commit_ = !cycle_in_transaction_;
}

void Client::note_effect(const TransactionEffect& e) {
  if (e.writes) txn_wrote_ = true;
  if (e.begins && !cycle_in_transaction_) {
    cycle_in_transaction_ = true;
    cycle_may_commit_ = false;
  }
  if (e.may_commit) cycle_may_commit_ = true;
}

Pool* Client::last_pool(routing::NodeId node) const {
  return last_pool_ != nullptr && last_pool_->node == node && last_pool_session_ == session_.get() ? last_pool_ : nullptr;
}

// Keeps what a later server would need to carry this session, from what the client sends.
// False only for a Query that names no session word (session_words()).
bool Client::track(char type, std::string_view body, bool truncated) {
  protocol::Reader r(body);
  switch (type) {
    case fe::kQuery: {
      std::string_view sql = r.str();
      if (r.failed()) sql = body;  // truncated: what we have
      note_effect(transaction_effect(sql));
      const SessionWords words = session_words(sql);
      const bool relevant = words.relevant;
      if (!sess_ && !relevant) return false;
      Carried& s = carried();
      s.state.on_query(sql, words);
      if (relevant) {  // DISCARD, DEALLOCATE and PREPARE are among its words
        for (const SqlStatement& st : split_sql(sql)) {
          const auto& w = st.words;
          if (w.empty()) continue;
          if ((w[0] == "discard" && w.size() > 1 && w[1] == "all") || (w[0] == "deallocate" && w.size() > 1 && w.back() == "all")) {
            s.statements.clear();
          } else if (w[0] == "deallocate" && w.size() > 1) {
            s.statements.forget(w.back());
          } else if (w[0] == "prepare" && !(w.size() > 1 && w[1] == "transaction") && s.unreplayable.empty()) {
            // SQL-level PREPARE lives on one server connection; pgkeel does not rewrite EXECUTE.
            if (transaction_mode()) s.unreplayable = "PREPARE (SQL)";
          }
        }
      }
      if (!s.state.replayable() && s.unreplayable.empty()) s.unreplayable = s.state.why_not_replayable();
      return relevant;
    }
    case fe::kParse: {
      const std::string_view name = r.str();
      std::string_view sql = r.str();
      if (r.failed() && truncated && body.size() > name.size()) {
        // The head of a long statement: its first words say what it does to the transaction; a
        // named one cannot be kept to prepare it on another server connection.
        sql = body.substr(name.size() + 1);
        if (name.empty()) {
          unnamed_effect_ = transaction_effect(sql);
        } else if (carried().unreplayable.empty()) {
          carried().unreplayable = "a prepared statement longer than pgkeel keeps";
        }
        if (sess_ || session_relevant(sql)) {
          carried().state.on_parsed(name, sql);
        }
        return true;
      }
      if (r.failed()) return true;
      if (name.empty()) unnamed_effect_ = transaction_effect(sql);
      if (!name.empty() && !transaction_mode()) carried().statements.define(name, body.substr(name.size() + 1));
      if (sess_ || session_relevant(sql)) {
        // Taken as parsed now: a Parse that fails fails its cycle, and the cycle's changes go.
        carried().state.on_parsed(name, sql);
      }
      return true;
    }
    case fe::kBind: {
      const std::string_view portal = r.str();
      const std::string_view name = r.str();
      if (r.failed()) return true;
      if (name.empty()) {
        note_effect(unnamed_effect_);
      } else if (sess_) {
        if (const ClientStatements::Statement* st = sess_->statements.find(name)) {
          note_effect(transaction_effect(std::string_view(st->tail).substr(0, st->tail.find('\0'))));
        }
      }
      if (sess_) sess_->state.on_bind(portal, name);
      return true;
    }
    case fe::kExecute:
      if (sess_) {
        // A LISTEN or CREATE TEMP TABLE runs here in the extended protocol (pgJDBC, psycopg).
        sess_->state.on_execute(r.str());
        if (!sess_->state.replayable() && sess_->unreplayable.empty()) sess_->unreplayable = sess_->state.why_not_replayable();
      }
      return true;
    case fe::kClose: {
      const char kind = static_cast<char>(r.i8());
      const std::string_view name = r.str();
      if (r.failed() || kind != 'S' || !sess_) return true;
      if (!transaction_mode()) sess_->statements.forget(name);
      sess_->state.on_close_statement(name);
      sess_->state.on_close_complete();
      return true;
    }
    default:
      return true;
  }
}

Client::Client(Worker& w, std::uint32_t id, int fd, std::size_t listener_index, const sockaddr* addr)
    : w_(w),
      id_(id),
      name_(connection_name('c', w.index(), id)),
      peer_(PeerAddress::from(addr)),
      listener_index_(static_cast<std::uint8_t>(listener_index)),
      tcp_(addr == nullptr || addr->sa_family != AF_UNIX) {
  ep_.fd = fd;
  // Frontend messages pgkeel must see while relaying: the end of the session, and what
  // starts or completes a query cycle (for cancel and for idleness).
  for (char t : {fe::kTerminate, fe::kQuery, fe::kFunctionCall, fe::kSync, fe::kParse, fe::kBind,
                 fe::kExecute, fe::kDescribe, fe::kClose, fe::kFlush, fe::kCopyDone, fe::kCopyFail}) {
    scanner_.watch(t);
  }
  // A long statement's text past the scanner's 8 KB: watched for what would pin (session
  // pooling: what would keep the session from moving at a failover).
  scanner_.follow(fe::kQuery);
  scanner_.follow(fe::kParse);
}

Client::~Client() {
  if (ep_.in != nullptr) w_.buffers().release(ep_.in);
  ep_.in = nullptr;
  ep_.close();
  if (counted_) w_.shared().clients.fetch_sub(1, std::memory_order_relaxed);
  if (limits_counted_) w_.shared().limits.client_leave(user(), database());
}

const SessionKey& Client::key() const { return session_ ? *session_ : kNoSession; }

std::int32_t Client::cancel_pid() const {
  return static_cast<std::int32_t>((w_.index() << kClientIdBits) | (id_ & ((1u << kClientIdBits) - 1)));
}

void Client::start() {
  started_ = Clock::now();
  // Every accepted socket counts against max_client_conn, logged in or not, so a flood of silent
  // sockets cannot exhaust descriptors. Over the limit, a client is still read, so its startup
  // packet gets a proper 53300 (and a CancelRequest still works); far over it, it is closed now.
  counted_ = true;
  const int max = w_.config().general.max_client_conn;
  const int n = w_.shared().clients.fetch_add(1, std::memory_order_relaxed);
  over_limit_ = n >= max;
  if (n >= 2 * max + 64) {
    w_.stats().clients_refused.add(1);
    log::warning("client").kv("event", "refused").kv("conn", name()).kv("peer", peer()).kv("reason", "far beyond max_client_conn").emit();
    close_now();
    return;
  }
  set_socket_options(ep_.fd, tcp_, w_.config().general);
  ep_.open_events(w_.base(), &Client::on_read_cb, &Client::on_write_cb, this);
  ep_.set_reading(true);
  log::debug("client").kv("event", "accepted").kv("conn", name()).kv("peer", peer()).emit();
}

void Client::on_read_cb(evutil_socket_t, short, void* arg) { static_cast<Client*>(arg)->on_read(); }
void Client::on_write_cb(evutil_socket_t, short, void* arg) { static_cast<Client*>(arg)->on_write(); }

void Client::on_read() {
  w_.touch_now();
  switch (state_) {
    case State::kLinked:
      // PAUSE: a new transaction waits (its bytes stay in the socket) until RESUME.
      if (w_.paused_for(listener_index_) && at_transaction_boundary()) {
        ep_.set_reading(false);
        w_.park(this);
        return;
      }
      relay_to_server();
      return;
    case State::kDetached:
      read_detached();
      return;
    case State::kStartup:
    case State::kAuth:
    case State::kWaiting:
      read_startup();
      return;
    case State::kClosed:
      return;
  }
}

// Startup, authentication and waiting: small messages, parsed from rx_.
void Client::read_startup() {
  if (tls_handshake_) {
    continue_tls();
    return;
  }
  char buf[8192];
  const long n = ep_.read(buf, sizeof buf);
  if (n == -1) return;
  if (n <= 0) {
    log::debug("client").kv("event", "disconnected").kv("conn", name()).kv("phase", state_ == State::kWaiting ? "waiting" : "login").emit();
    close_now();
    return;
  }
  rx_.append(buf, static_cast<std::size_t>(n));
  if (state_ == State::kWaiting) {
    // A client may pipeline its first query before ReadyForQuery; keep it for the server,
    // bounded: beyond one buffer we stop reading (backpressure) until linked.
    if (rx_.size() >= kMaxWaitingBytes) ep_.set_reading(false);
    return;
  }
  // Each packet is taken out of rx_ before it is handled: handling may link the client to a
  // server, and whatever follows in rx_ then belongs to the session.
  while (state_ == State::kStartup || state_ == State::kAuth) {
    if (state_ == State::kStartup) {
      protocol::StartupParse p = protocol::parse_startup(rx_);
      if (p.status == protocol::StartupParse::Status::kNeedMore) break;
      if (p.status == protocol::StartupParse::Status::kMalformed) {
        log::info("client").kv("event", "bad_startup").kv("conn", name()).kv("peer", peer()).kv("reason", p.error).emit();
        fail("FATAL", "08P01", p.error);
        return;
      }
      rx_.erase(0, p.consumed);
      handle_startup(p.packet);
      if (state_ == State::kClosed || closing_) return;
      continue;
    }
    // kAuth: typed messages; none is read while the secret is being looked up (or delayed).
    if (!auth_) break;
    if (rx_.size() < 5) break;
    const auto* h = reinterpret_cast<const unsigned char*>(rx_.data());
    const std::uint32_t len = protocol::read_u32(h + 1);
    if (len < 4 || len > protocol::kMaxStartupLength) {
      fail("FATAL", "08P01", "invalid message length during authentication");
      return;
    }
    if (rx_.size() < 1 + len) break;
    const char type = rx_[0];
    const std::string body = rx_.substr(5, len - 4);
    rx_.erase(0, 1 + len);
    handle_auth_message(type, body);
    if (state_ == State::kClosed || closing_) return;
  }
  if (state_ != State::kLinked && rx_.size() > protocol::kMaxStartupLength + 16) {
    fail("FATAL", "08P01", "startup packet too long");
    return;
  }
  if (rx_.empty()) std::string().swap(rx_);  // a logged-in client waiting for a server keeps no buffer
}

void Client::handle_startup(const protocol::StartupPacket& pkt) {
  using Kind = protocol::StartupPacket::Kind;
  switch (pkt.kind) {
    case Kind::kSSLRequest:
    case Kind::kGSSENCRequest: {
      if (!rx_.empty()) {
        // Bytes after the request, before our answer: never trust them (CVE-2021-23214 class).
        fail("FATAL", "08P01", "received unencrypted data after SSL request");
        return;
      }
      if (ep_.ssl != nullptr) {
        fail("FATAL", "08P01", "SSL request received inside an encrypted connection");
        return;
      }
      std::shared_ptr<SSL_CTX> ctx = pkt.kind == Kind::kSSLRequest ? w_.shared().client_tls() : nullptr;
      if (!ctx) {
        // No TLS toward clients (or GSSAPI): 'N', and the client continues in plaintext (§55.2.10).
        ep_.send("N");
        return;
      }
      if (ep_.send("S") != IoStatus::kDone) {
        close_now();  // one byte into an empty socket buffer; anything else is a dead peer
        return;
      }
      ep_.ssl = tls::new_server_session(ctx.get(), ep_.fd);
      if (ep_.ssl == nullptr) {
        close_now();
        return;
      }
      tls_handshake_ = true;
      continue_tls();
      return;
    }
    case Kind::kCancel: {
      const auto pid = static_cast<std::uint32_t>(pkt.cancel_pid);
      const unsigned worker = pid >> kClientIdBits;
      const std::uint32_t id = pid & ((1u << kClientIdBits) - 1);
      const std::int32_t key = pkt.cancel_key;
      auto& workers = w_.shared().workers;
      if (worker < workers.size()) {
        workers[worker]->post([id, key](Worker& owner) {
          Client* c = owner.find_client(id);
          if (c != nullptr && c->cancel_key() == key) c->cancel_running_query();
        });
      }
      // PostgreSQL answers a cancel request with nothing; the requester sees the close.
      close_now();
      return;
    }
    case Kind::kStartup:
      break;
  }

  const int major = pkt.version >> 16;
  const int minor = pkt.version & 0xffff;
  if (major != 3) {
    fail("FATAL", "0A000",
         "unsupported frontend protocol " + std::to_string(major) + "." + std::to_string(minor) +
             ": server supports 3.0 to 3.0");
    return;
  }
  std::vector<std::string> unknown_options;
  for (const auto& [k, v] : pkt.params) {
    if (k.rfind("_pq_.", 0) == 0) unknown_options.push_back(k);
  }
  if (minor > 0 || !unknown_options.empty()) {
    // §55.2.10 NegotiateProtocolVersion: we speak 3.0 and none of the _pq_ options.
    std::string out;
    protocol::Writer wr(out);
    wr.begin(protocol::be::kNegotiateProtocolVersion).i32(0).i32(static_cast<std::int32_t>(unknown_options.size()));
    for (const auto& o : unknown_options) wr.str(o);
    wr.end();
    ep_.send(out);
  }

  const std::string* user = pkt.param("user");
  if (user == nullptr || user->empty()) {
    fail("FATAL", "28000", "no PostgreSQL user name specified in startup packet");
    return;
  }
  SessionKey key;
  key.user = *user;
  const std::string* db = pkt.param("database");
  key.database = (db != nullptr && !db->empty()) ? *db : key.user;
  if (const std::string* repl = pkt.param("replication"); repl != nullptr && !is_false(*repl)) {
    fail("FATAL", "0A000", "pgkeel does not proxy replication connections",
         "Connect replication clients to the PostgreSQL node directly.");
    return;
  }

  Shared& sh = w_.shared();
  const conf::Config& cfg = w_.config();
  if (over_limit_) {
    log::warning("client").kv("event", "refused").kv("conn", name()).kv("reason", "max_client_conn").kv("limit", cfg.general.max_client_conn).emit();
    fail("FATAL", "53300", "sorry, too many clients already");
    return;
  }
  if (!w_.handing_over() && (w_.shutting_down() || sh.draining.load(std::memory_order_relaxed))) {
    fail("FATAL", "57P03", "pgkeel is shutting down");
    return;
  }

  // Client-facing database -> server database.
  if (cfg.databases.empty()) {
    key.server_database = key.database;
  } else {
    const conf::DatabaseConfig* match = nullptr;
    for (const auto& d : cfg.databases) {
      if (d.name == key.database) {
        match = &d;
        break;
      }
      if (d.name == "*" && match == nullptr) match = &d;
    }
    if (match == nullptr) {
      fail("FATAL", "3D000", "database \"" + key.database + "\" does not exist");
      return;
    }
    key.server_database = match->dbname.empty() ? key.database : match->dbname;
  }
  key.params = normalize_params(pkt.params);
  if (cfg.general.application_name_add_host && tcp_) {
    // pg_stat_activity shows who is really connected: "app - 10.1.2.3". The address without the
    // port, so warm connections stay shareable between one host's sessions.
    const std::string host = peer_.host();
    auto it = std::find_if(key.params.begin(), key.params.end(), [](const auto& p) { return p.first == "application_name"; });
    if (it == key.params.end()) {
      key.params.emplace_back("application_name", host);
      std::sort(key.params.begin(), key.params.end());
    } else {
      // PostgreSQL truncates application_name to NAMEDATALEN - 1 bytes: keep the address visible.
      std::string name = it->second.substr(0, 40);
      it->second = name + " - " + host;
    }
  }
  const std::string text = make_session_text(key);
  session_ = w_.interned().sessions.intern(text, std::move(key));
  begin_auth();
}

void Client::begin_auth() {
  state_ = State::kAuth;
  AuthSession::Method method = AuthSession::Method::kAuto;
  const std::vector<conf::HbaRule>& rules = w_.config().hba;
  if (!rules.empty()) {
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    const bool have_addr = tcp_ && ::getpeername(ep_.fd, reinterpret_cast<sockaddr*>(&ss), &len) == 0;
    const HbaClient who{!tcp_, ep_.ssl != nullptr, have_addr ? reinterpret_cast<const sockaddr*>(&ss) : nullptr, database(), user()};
    const conf::HbaRule* rule = match_hba(rules, who);
    if (rule == nullptr || rule->method == conf::HbaMethod::kReject) {
      w_.stats().auth_failures.add(1);
      log::info("client").kv("event", "hba_refused").kv("conn", name()).kv("user", user()).kv("db", database()).kv("peer", peer())
          .kv("rule_line", rule != nullptr ? rule->line : 0).emit();
      fail("FATAL", "28000", (rule == nullptr ? "no [[hba]] rule for " : "[[hba]] rejects connection for ") + describe_hba_client(who));
      return;
    }
    switch (rule->method) {
      case conf::HbaMethod::kScram: method = AuthSession::Method::kScram; break;
      case conf::HbaMethod::kMd5: method = AuthSession::Method::kMd5; break;
      case conf::HbaMethod::kPassword: method = AuthSession::Method::kPassword; break;
      case conf::HbaMethod::kTrust: method = AuthSession::Method::kTrust; break;
      case conf::HbaMethod::kReject: break;
    }
  }
  const conf::Config& cfg = w_.config();
  if (!cfg.auth.query.empty() && w_.shared().users()->count(user()) == 0) {
    // Not in the users file: ask the cluster. The answer comes back on this worker's loop;
    // by then this client may be gone (looked up again by id, with a token).
    std::uint64_t token = 0;
    while (token == 0) token = (static_cast<std::uint64_t>(arc4random()) << 32) | arc4random();
    lookup_token_ = token;
    ep_.set_reading(false);
    Worker& w = w_;
    const std::uint32_t id = id_;
    w_.secret_lookup().fetch(user(), [&w, id, token, method](SecretLookup::Result r) {
      Client* c = w.find_client(id);
      if (c == nullptr || c->lookup_token_ != token) return;
      c->lookup_done(method, std::move(r));
    });
    return;
  }
  start_auth(method, nullptr);
}

void Client::lookup_done(AuthSession::Method method, SecretLookup::Result r) {
  lookup_token_ = 0;
  if (state_ != State::kAuth || closing_) return;
  ep_.set_reading(true);
  if (r.status == SecretLookup::Result::Status::kBusy) {
    log::warning("client").kv("event", "auth_query_busy").kv("conn", name()).kv("user", user()).kv("reason", r.error).emit();
    fail("FATAL", "53300", "too many logins are waiting for the auth query; try again",
         "pgkeel looks up this user's secret on the cluster; " + r.error);
    return;
  }
  if (r.status == SecretLookup::Result::Status::kFailed) {
    log::warning("client").kv("event", "auth_query_unavailable").kv("conn", name()).kv("user", user()).kv("reason", r.error).emit();
    fail("FATAL", "57P03", "cannot authenticate user \"" + user() + "\" now: no node answered the auth query",
         "pgkeel looks up this user's secret on the cluster; " + r.error);
    return;
  }
  if (r.from_cache) {
    log::info("client").kv("event", "auth_query_cached").kv("conn", name()).kv("user", user()).kv("reason", r.error).emit();
  }
  start_auth(method, r.auth);  // nullptr (no such user): the mock exchange, failing as PostgreSQL does
}

void Client::start_auth(AuthSession::Method method, std::shared_ptr<const UserAuth> looked_up) {
  auth_ = std::make_unique<AuthSession>(w_.shared(), user(), method, std::move(looked_up));
  AuthSession::Step step = auth_->begin();
  apply_auth_step(step);
}

void Client::handle_auth_message(char type, std::string_view body) { apply_auth_step(auth_->handle(type, body)); }

void Client::apply_auth_step(const AuthSession::Step& step) {
  if (step.failed) {
    w_.stats().auth_failures.add(1);
    log::info("client").kv("event", "auth_failed").kv("conn", name()).kv("user", user()).kv("peer", peer()).kv("reason", step.log_reason).emit();
    // An address that keeps failing waits for its answer; nobody else does (the worker never blocks).
    const auto delay = tcp_ ? w_.shared().auth_throttle.failed(peer_.host(), w_.config().auth, Clock::now()) : std::chrono::milliseconds(0);
    if (delay.count() > 0) {
      log::info("client").kv("event", "auth_throttled").kv("conn", name()).kv("peer", peer()).kv("delay_ms", static_cast<std::int64_t>(delay.count())).emit();
      auth_.reset();
      ep_.set_reading(false);
      delayed_ = std::make_unique<DelayedError>(DelayedError{step.sqlstate, step.message, nullptr});
      delayed_->timer.reset(event_new(w_.base(), -1, 0, [](evutil_socket_t, short, void* arg) {
        auto* c = static_cast<Client*>(arg);
        if (c->state_ == State::kClosed || !c->delayed_) return;
        const DelayedError e{c->delayed_->sqlstate, c->delayed_->message, nullptr};
        c->fail("FATAL", e.sqlstate, e.message);
      }, this));
      const timeval tv{static_cast<time_t>(delay.count() / 1000), static_cast<suseconds_t>((delay.count() % 1000) * 1000)};
      event_add(delayed_->timer.get(), &tv);
      return;
    }
    fail("FATAL", step.sqlstate, step.message);
    return;
  }
  if (!step.out.empty() && ep_.send(step.out) == IoStatus::kError) {
    close_now();
    return;
  }
  if (!step.done) return;
  if (tcp_) w_.shared().auth_throttle.succeeded(peer_.host());
  // Per-user and per-database limits count sessions, as PostgreSQL's role and database connection
  // limits do: only once the client has proved who it is. Counted at the startup packet, a few
  // sockets that never answer the authentication request would lock a role out.
  if (std::string refused = w_.shared().limits.client_enter(w_.config(), user(), database()); !refused.empty()) {
    log::warning("client").kv("event", "refused").kv("conn", name()).kv("reason", refused).emit();
    auth_.reset();
    fail("FATAL", "53300", refused);
    return;
  }
  limits_counted_ = true;
  cred_ = w_.interned().credentials.intern(user(), ServerCredential(auth_->credential()));
  auth_.reset();
  std::uint32_t key = 0;
  while (key == 0) key = arc4random();
  cancel_key_ = static_cast<std::int32_t>(key);
  state_ = State::kWaiting;
  wait_started_ = Clock::now();
  log::debug("client").kv("event", "login").kv("conn", name()).kv("user", user()).kv("db", database()).kv("peer", peer()).emit();
  if (w_.paused_for(listener_index_)) {
    w_.park(this);  // a new session waits for RESUME before it takes a server
    return;
  }
  request_server(w_, *this);
}

void Client::unparked() {
  if (state_ == State::kLinked || state_ == State::kDetached) {
    ep_.set_reading(true);  // level-triggered: what the client sent meanwhile is read now
    if (state_ == State::kDetached && !rx_.empty()) forward_messages();
  } else if (state_ == State::kWaiting && server_ == nullptr && waiting_pool == nullptr && !held && !closing_) {
    request_server(w_, *this);
  }
}

bool Client::at_transaction_boundary() const {
  if (state_ == State::kDetached) return !(sess_ && sess_->lost) && waiting_pool == nullptr && !held;
  return state_ == State::kLinked && server_ != nullptr && server_->tx_status() == 'I' && !server_->query_running() &&
         streams_at_rest();
}

std::string_view Client::state_name() const {
  if (parked) return "paused";
  if (held) return "held";
  switch (state_) {
    case State::kStartup: return "startup";
    case State::kAuth: return "auth";
    case State::kWaiting: return "waiting";
    case State::kDetached: return waiting_pool != nullptr ? "waiting" : (sess_ && sess_->lost ? "idle in transaction" : "idle");
    case State::kLinked:
      if (server_ == nullptr) return "waiting";
      if (server_->query_running()) return "active";
      return server_->tx_status() == 'I' ? "idle" : "idle in transaction";
    case State::kClosed: return "closed";
  }
  return "unknown";
}

void Client::on_server_ready(Server* s) {
  if (state_ == State::kDetached) {
    attach(s);
    return;
  }
  if (state_ != State::kWaiting) return;
  state_ = State::kLinked;
  ever_linked_ = true;
  server_ = s;
  s->link(this);
  // The session's opening as the server would send it (§55.2.1): ParameterStatus for every
  // reported parameter, our own BackendKeyData, then ReadyForQuery.
  std::string out = s->parameter_status();
  protocol::append_backend_key_data(out, cancel_pid(), cancel_key_);
  protocol::append_ready_for_query(out, 'I');
  if (ep_.send(out) == IoStatus::kError) {
    close_now();
    return;
  }
  log::debug("client").kv("event", "linked").kv("conn", name()).kv("server", s->name()).kv("backend_pid", s->backend_pid()).emit();
  ep_.set_reading(true);
  // Bytes the client pipelined while it waited go first.
  if (!rx_.empty()) forward_messages();
  if (rx_.empty()) std::string().swap(rx_);
  // Transaction pooling: the server was needed for the session's opening only.
  on_cycle_done();
}

void Client::on_server_failed(const std::string& error_response) {
  if (state_ == State::kClosed) return;
  waiting_pool = nullptr;
  closing_ = true;
  ep_.set_reading(false);
  if (ep_.send(error_response) != IoStatus::kBlocked) close_now();
}

// The server died under the session (the primary failed, or was stopped for a switchover). The
// session goes on: on the next request it takes a server again, which gets its settings and
// statements back. What was in flight, or the transaction that was open, gets the answers
// PostgreSQL's rules call for (proxy/txpool/lost_transaction.h). Only a session that cannot move (LISTEN,
// temporary tables, ...) ends, with an error saying why.
void Client::on_server_lost(std::string_view reason) {
  if (state_ != State::kLinked) return;
  Server* s = server_;
  server_ = nullptr;
  // Whether what reached the client ends at a message boundary: only then can pgkeel speak.
  const bool boundary = s == nullptr || (s->at_boundary() && (s->edits_if() == nullptr || s->edits_if()->filter.at_boundary()));
  const int cycles = s != nullptr ? s->pending_syncs() : 0;
  const bool unsynced = s != nullptr && s->unsynced();
  // The last cycle's flags speak only for a cycle still in flight; otherwise the server's last
  // ReadyForQuery says where the session stands.
  const bool in_flight = cycles > 0 || unsynced;
  const bool in_transaction = (s != nullptr && s->tx_status() != 'I') || (in_flight && cycle_in_transaction_);
  // Answers read and not yet sent on: whole messages when the stream is at a boundary, so they
  // still go, before anything pgkeel says.
  std::string out;
  if (s != nullptr && s->ep().in != nullptr) {
    if (boundary) out.assign(reinterpret_cast<const char*>(s->ep().in->data + s->ep().in->begin), s->ep().in->pending());
    w_.buffers().release(s->ep().in);
    s->ep().in = nullptr;
  }
  state_ = State::kWaiting;  // no server; terminate() below closes
  log::info("client").kv("event", "server_lost").kv("conn", name()).kv("reason", reason).emit();
  if (!boundary || (!transaction_mode() && !scanner_.at_boundary()) || stream_left_ > 0 || (s != nullptr && s->fatal_relayed())) {
    // An answer, or a request, was cut in the middle: nothing can be said cleanly. Or the
    // server ended the session with a FATAL the client has read: the connection ends too.
    close_now();
    return;
  }
  if (sess_ && !sess_->unreplayable.empty()) {
    terminate("08006", "server connection lost (" + std::string(reason) + "); this session cannot move to another server: it used " +
                           sess_->unreplayable);
    return;
  }
  state_ = State::kDetached;
  replay_needed_ = !transaction_mode();
  auto lost = std::make_unique<LostTransaction>();
  const bool at_rest = lost->begin(cycles, unsynced, in_transaction, in_flight && cycle_may_commit_, out);
  if (sess_ && in_transaction && !(in_flight && cycle_may_commit_)) {
    sess_->state.on_error();  // the open transaction is gone: its pending SETs with it
    sess_->state.on_ready('E');
  }
  if (!at_rest) carried().lost = std::move(lost);
  log::info("client").kv("event", "session_kept").kv("conn", name()).kv("in_flight", cycles + (unsynced ? 1 : 0))
      .kv("transaction_lost", !at_rest).emit();
  if (!out.empty() && ep_.send(out) == IoStatus::kError) {
    close_now();
    return;
  }
  if (!transaction_mode() && ep_.in != nullptr) {
    // Requests read and not yet forwarded: they belong to the session, whole or partial.
    rx_.append(reinterpret_cast<const char*>(ep_.in->data + ep_.in->begin), ep_.in->pending());
    w_.buffers().release(ep_.in);
    ep_.in = nullptr;
  }
  ep_.set_reading(true);
  if (!rx_.empty()) forward_messages();
}

// kDetached (and transaction pooling while linked): requests are read whole into rx_.
void Client::read_detached() {
  char buf[16384];
  const long n = ep_.read(buf, sizeof buf);
  if (n == -1) return;
  if (n <= 0) {
    log::debug("client").kv("event", "disconnected").kv("conn", name()).emit();
    close_now();
    return;
  }
  last_activity_ = w_.now();
  rx_.append(buf, static_cast<std::size_t>(n));
  forward_messages();
}

void Client::start_long_text(char type, std::string_view head) {
  if (!long_text_) long_text_ = std::make_unique<PinWordScan>();
  *long_text_ = PinWordScan{};
  if (type == fe::kParse) head.remove_prefix(std::min(head.size(), head.find('\0') + 1));  // its name
  long_text_->feed(head);
  long_text_->clear_hit();
}

void Client::follow_long_text(std::string_view part, std::size_t head_bytes) {
  if (!long_text_) return;
  long_text_->feed(part);
  if (long_text_->hit().empty() || (sess_ && !sess_->unreplayable.empty())) return;
  // Past its head a statement is not classified statement by statement: one that may LISTEN,
  // create a temporary table, SET, take an advisory lock, ... keeps its server connection in
  // transaction pooling (with pinning = "refuse" too: its beginning already runs), and does not
  // move to another server at a failover.
  std::string word = long_text_->hit();
  for (char& ch : word) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
  carried().unreplayable = "a statement longer than " + std::to_string(head_bytes >> 10) + " KB with " + word +
                           " past its first " + std::to_string(head_bytes >> 10) +
                           " KB (pgkeel does not hold it whole)";
  log::info("client").kv("event", "pinned").kv("conn", name()).kv("why", sess_->unreplayable).emit();
}

void Client::forward_messages() {
  std::string to_server;
  std::string to_client;
  std::size_t off = 0;
  bool close_after = false;
  bool own_backlog = false;  // pgkeel's own answers are ahead of the client: read no further now
  while (state_ != State::kClosed) {
    if (stream_left_ > 0) {
      // The rest of a long message, as it comes.
      if (!stream_drop_ && (state_ != State::kLinked || server_ == nullptr)) break;
      const std::size_t take = std::min<std::size_t>(stream_left_, rx_.size() - off);
      if (take == 0) break;
      const std::string_view part(rx_.data() + off, take);
      if (!stream_drop_) {
        if (stream_scan_) follow_long_text(part, kMaxHeldMessage);
        to_server.append(part);
      }
      off += take;
      stream_left_ -= static_cast<std::uint32_t>(take);
      if (stream_left_ == 0) {
        stream_drop_ = stream_scan_ = false;
        long_text_.reset();
      }
      continue;
    }
    if (rx_.size() - off < 5) break;
    const auto* h = reinterpret_cast<const unsigned char*>(rx_.data() + off);
    const std::uint32_t len = protocol::read_u32(h + 1);
    if (len < 4 || len > protocol::kMaxMessageLength) {
      fail("FATAL", "08P01", "invalid message length");
      return;
    }
    // Session pooling: an incomplete message is left to the raw relay below (the scanner frames it).
    if (!transaction_mode() && state_ == State::kLinked && rx_.size() - off < 1 + std::size_t{len}) break;
    // A message is held whole up to kMaxHeldMessage; a longer one from its head on.
    const std::uint32_t body_len = len - 4;
    const bool streamed = body_len > kMaxHeldMessage;
    const std::size_t head = streamed ? kMaxHeldMessage : body_len;
    if (rx_.size() - off < 5 + head) break;
    const char type = rx_[off];
    const std::string_view body(rx_.data() + off + 5, head);
    if (type == fe::kTerminate) {
      close_after = true;
      off = rx_.size();
      break;
    }
    if (state_ == State::kDetached && sess_ && sess_->lost) {
      if (!ep_.out_empty() || to_client.size() >= kMaxOwnAnswers) {
        own_backlog = true;  // answered as fast as the client reads the answers, no faster
        break;
      }
      const LostTransaction::StatementText text = [this](std::string_view name) {
        const ClientStatements::Statement* st = sess_->statements.find(name);
        return st == nullptr ? std::string() : st->tail.substr(0, st->tail.find('\0'));
      };
      if (type == fe::kParse && !streamed) {
        // Kept for later: pgkeel answered it, no server has it yet.
        protocol::Reader r(body);
        const std::string_view name = r.str();
        if (!r.failed() && !name.empty() && ends_transaction(r.str())) sess_->statements.define(name, body.substr(name.size() + 1));
      }
      // The head of a long Query, ended as a whole one is (it is a statement, not an empty query).
      const std::string ended_head = streamed && type == fe::kQuery ? std::string(body) + '\0' : std::string();
      if (sess_->lost->on_client_message(type, ended_head.empty() ? body : std::string_view(ended_head), text, to_client)) {
        sess_->lost.reset();
        sess_->state.on_ready('I');  // ended (rolled back): nothing of it stays
      }
      off += 5 + head;
      if (streamed) {
        stream_left_ = body_len - static_cast<std::uint32_t>(head);
        stream_drop_ = true;
      }
      continue;
    }
    if (state_ != State::kLinked || server_ == nullptr) break;  // a server first
    std::string refused;  // the message pgkeel sends instead of one it refuses
    const conf::ListenerConfig& listener = w_.config().listeners[listener_index_];
    std::string_view statement_text;  // of a Query or Parse
    if (type == fe::kQuery || type == fe::kParse) {
      protocol::Reader r(body);
      const std::string_view statement = type == fe::kParse ? r.str() : std::string_view();
      const std::size_t at = type == fe::kParse ? statement.size() + 1 : 0;
      statement_text = at <= body.size() ? body.substr(at) : std::string_view();
      statement_text = statement_text.substr(0, statement_text.find('\0'));
      if (transaction_mode() && listener.refuse_pinning && !r.failed()) {
        const std::string why = pin_reason(sess_ ? &sess_->state : nullptr, statement_text);
        if (!why.empty()) {
          log::info("client").kv("event", "pinning_refused").kv("conn", name()).kv("why", why).emit();
          if (type == fe::kQuery) {
            protocol::Writer(refused).str(refusal_sql(why, listener.name));
          } else {
            protocol::Writer(refused).str(statement).str(refusal_sql(why, listener.name)).i16(0);
          }
        }
      }
    }
    const bool whole = !streamed || !refused.empty();  // a refused message is replaced whole
    const std::string_view message = refused.empty() ? body : std::string_view(refused);
    start_cycle();
    const bool names_session_word = track(type, message, !whole);
    const int ignored_syncs = server_->note_request(type);
    const std::uint64_t bytes = 1 + std::uint64_t{len};
    w_.stats().by_listener[listener_index_].bytes_in.add(bytes);
    w_.stats().by_node[server_->node()].bytes_in.add(bytes);
    if (transaction_mode()) {
      Server::Edits& e = server_->edits();
      if (ignored_syncs > 0) e.plan.ignore_syncs(ignored_syncs);
      // DEALLOCATE and DISCARD ALL drop the shared statements too: what follows prepares again.
      // (A Query's words were looked at by track() just now.)
      if (refused.empty() && !statement_text.empty() && names_session_word &&
          drops_prepared(statement_text)) {
        e.statements.clear();
      }
      if (whole) {
        if (!rewrite_for_shared(type, message, carried().statements, e.statements, e.plan, to_server)) {
          fail("FATAL", "08P01", "malformed message");
          return;
        }
      } else {
        if (type == fe::kParse && body.front() != '\0') {
          // A long named statement stays under the client's name on this connection, which the
          // session keeps (track() pinned it): its text is not held to prepare it elsewhere.
          carried().statements.forget(body.substr(0, body.find('\0')));
        }
        const std::size_t replaced =
            rewrite_head_for_shared(type, body, body_len, carried().statements, e.statements, e.plan, to_server);
        if (replaced == std::string_view::npos) {
          fail("FATAL", "08P01", "malformed message");
          return;
        }
        to_server.append(body.substr(replaced));
      }
    } else if (whole) {
      append_message(to_server, type, body);
    } else {
      to_server.append(rx_.data() + off, 5 + head);
    }
    off += 5 + head;
    if (streamed) {
      stream_left_ = body_len - static_cast<std::uint32_t>(head);
      stream_drop_ = !refused.empty();
      stream_scan_ = refused.empty() && (type == fe::kQuery || type == fe::kParse);
      if (stream_scan_) start_long_text(type, body);
    }
  }
  rx_.erase(0, off);
  if (state_ == State::kLinked && server_ != nullptr && !transaction_mode() && !rx_.empty() && !close_after) {
    // Session mode relays raw from here on: the start of a message goes now, and the scanner
    // follows it, so the rest of it passes by as relayed bytes do.
    Server* s = server_;
    const protocol::ScanResult res =
        scanner_.scan(reinterpret_cast<const unsigned char*>(rx_.data()), rx_.size(), [&](const protocol::ScannedMessage& m) {
          // Only a message longer than 8 KB can be reported here (its head): it is a request too.
          if (m.rest) {
            follow_long_text(m.body, protocol::Scanner::kCaptureLimit);
          } else if (m.type != fe::kTerminate) {
            start_cycle();
            track(m.type, m.body, m.truncated);
            if (m.truncated && (m.type == fe::kQuery || m.type == fe::kParse)) start_long_text(m.type, m.body);
            (void)s->note_request(m.type);
          }
          return protocol::ScanAction::kContinue;
        });
    if (res.status == protocol::ScanResult::Status::kMalformed) {
      fail("FATAL", "08P01", "invalid message length");
      return;
    }
    to_server += rx_;
    rx_.clear();
  }
  if (rx_.empty() && rx_.capacity() > kMaxWaitingBytes) std::string().swap(rx_);  // a long message held no more
  if (!to_client.empty() && ep_.send(to_client) == IoStatus::kError) {
    close_now();
    return;
  }
  if (own_backlog) {
    if (ep_.out_empty()) {
      forward_messages();  // sent at once: answer on (each round consumes requests)
      return;
    }
    own_answers_wait_ = true;
    ep_.set_reading(false);
    return;
  }
  if (close_after) {
    log::debug("client").kv("event", "terminate").kv("conn", name()).emit();
    close_now();
    return;
  }
  if (state_ == State::kLinked && server_ != nullptr) {
    if (!to_server.empty()) {
      Server* s = server_;
      if (s->ep().send(to_server) == IoStatus::kError) {
        s->close("send to server failed");
        return;
      }
      if (!s->ep().out_empty()) ep_.set_reading(false);  // Server::on_write resumes us
    }
    send_due_answers();
    return;
  }
  if (state_ == State::kDetached && !rx_.empty() && !(sess_ && sess_->lost) && waiting_pool == nullptr && !held && !parked) {
    // A new transaction: it needs a server (PAUSE holds it here first).
    if (w_.paused_for(listener_index_)) {
      ep_.set_reading(false);
      w_.park(this);
      return;
    }
    if (rx_.size() >= kMaxWaitingBytes) ep_.set_reading(false);
    wait_started_ = w_.now();
    read_only_txn_ = transaction_mode() && w_.config().listeners[listener_index_].read_write_split && declares_read_only();
    request_server(w_, *this);
  } else if (rx_.size() >= kMaxWaitingBytes && !(sess_ && sess_->lost)) {
    ep_.set_reading(false);  // a lost transaction reads on: its answers need no server (own_backlog bounds them)
  }
}

// kDetached -> kLinked: the server gets the session first (settings; after a failover in session
// mode also the statements), then the requests that waited.
void Client::attach(Server* s) {
  state_ = State::kLinked;
  server_ = s;
  s->link(this);
  log::debug("client").kv("event", "attached").kv("conn", name()).kv("server", s->name()).kv("backend_pid", s->backend_pid()).emit();
  static const SessionState kFresh;
  const SessionState& state = sess_ ? sess_->state : kFresh;
  std::string out;
  Server::Edits& e = s->edits();
  if (replay_needed_) {
    append_session_replay(state, sess_ ? sess_->statements : ClientStatements(), e.plan, out);
    e.settings = state.replay_sql();
    replay_needed_ = false;
  } else if (transaction_mode()) {
    append_settings_restore(state, e.settings, e.plan, out);
  }
  if (!out.empty()) {
    // pgkeel's own cycles: counted like the client's, so idleness stays exact.
    for (std::size_t at = 0; at + 5 <= out.size();) {
      const char t = out[at];
      if (t == fe::kQuery || t == fe::kSync) s->note_frontend_sync();
      at += 1 + protocol::read_u32(reinterpret_cast<const unsigned char*>(out.data() + at + 1));
    }
    if (s->ep().send(out) == IoStatus::kError) {
      s->close("send to server failed");
      return;
    }
  }
  ep_.set_reading(true);
  forward_messages();
}

// read_write_split: the first request of the transaction about to start declares it read-only
// (BEGIN READ ONLY, in a Query or a Parse), or the session reads only by default.
bool Client::declares_read_only() const {
  if (sess_) {
    const auto& s = sess_->state.settings();
    if (auto it = s.find("default_transaction_read_only"); it != s.end()) {
      std::string v = it->second;
      for (char& ch : v) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
      if (v.find("on") != std::string::npos || v.find("true") != std::string::npos || v == "1" || v == "'1'") return true;
    }
  }
  if (rx_.size() < 5) return false;
  const std::uint32_t len = protocol::read_u32(reinterpret_cast<const unsigned char*>(rx_.data() + 1));
  if (len < 4 || rx_.size() < 1 + std::size_t{len}) return false;
  protocol::Reader r(std::string_view(rx_.data() + 5, len - 4));
  if (rx_[0] == fe::kParse) r.str();
  if (rx_[0] != fe::kQuery && rx_[0] != fe::kParse) return false;
  const std::string_view sql = r.str();
  return !r.failed() && transaction_effect(sql).read_only;
}

// pgkeel's own answers (a Parse of a statement the connection has) that nothing is in front of.
void Client::send_due_answers() {
  if (server_ == nullptr || server_->edits_if() == nullptr) return;
  if (server_->ep().in != nullptr && server_->ep().in->pending() > 0) return;  // relayed bytes go first
  const std::string due = server_->edits_if()->plan.take_due();
  if (!due.empty() && ep_.send(due) == IoStatus::kError) close_now();
}

// Transaction pooling: the transaction is over and every answer reached the client.
void Client::on_cycle_done() {
  drain_ready = true;
  finish_cycle();
  // A takeover's drain: the session moves at this idle point (checked once the callbacks on the
  // stack have returned).
  if (w_.handing_over()) w_.note_idle(id_);
}

void Client::finish_cycle() {
  if (state_ != State::kLinked || server_ == nullptr || !transaction_mode() || closing_) return;
  if (sess_ && !sess_->unreplayable.empty()) return;  // pinned to this connection
  if (stream_left_ > 0) return;                       // a long message is still passing
  if (server_->cancel_in_flight()) return;            // released once the cancel is over (Server::cancel_finished)
  if (server_->tx_status() != 'I' || !server_->answers_done() || !server_->ep().out_empty() || !ep_.out_empty()) return;
  Server* s = server_;
  server_ = nullptr;
  state_ = State::kDetached;
  if (sess_) {
    s->edits().settings = sess_->state.replay_sql();
  } else {
    s->edits().settings.clear();
  }
  const bool ask_lsn = txn_wrote_ && w_.config().listeners[listener_index_].read_your_writes && w_.snapshot().writer &&
                       *w_.snapshot().writer == s->node();
  txn_wrote_ = false;
  read_only_txn_ = false;
  if (ask_lsn) {
    carried().write_lsn_pending = true;
    s->release_asking_lsn(id_);
  } else {
    s->release();
  }
  if (!rx_.empty()) forward_messages();  // the next transaction already began arriving
}

void Client::relay_to_server() {
  last_activity_ = w_.now();
  if (transaction_mode()) {
    read_detached();  // whole messages, edited: see forward_messages()
    return;
  }
  std::size_t from = 0;
  const long n = receive(ep_, w_.buffers(), from);
  if (n == -1) return;
  if (n <= 0) {
    log::debug("client").kv("event", "disconnected").kv("conn", name()).emit();
    close_now();
    return;
  }
  forward_to_server(ep_.in, from);
}

// Scans the client's new bytes [new_from, end) and sends [begin, end) to the server.
void Client::forward_to_server(IoBuffer* b, std::size_t new_from) {
  Server* s = server_;
  const std::uint64_t fresh = b->end - new_from;
  WorkerStats& st = w_.stats();
  st.by_listener[listener_index_].bytes_in.add(fresh);
  st.by_node[s->node()].bytes_in.add(fresh);
  bool terminate_seen = false;
  bool terminate_clean = true;
  const protocol::ScanResult res =
      scanner_.scan(b->data + new_from, b->end - new_from, [&](const protocol::ScannedMessage& m) {
        if (m.rest) {
          follow_long_text(m.body, protocol::Scanner::kCaptureLimit);
          return protocol::ScanAction::kContinue;
        }
        if (m.type != fe::kTerminate) {
          start_cycle();
          track(m.type, m.body, m.truncated);
          if (m.truncated && (m.type == fe::kQuery || m.type == fe::kParse)) start_long_text(m.type, m.body);
        }
        if (m.type == fe::kTerminate) {
          terminate_seen = true;
          return protocol::ScanAction::kStop;
        }
        s->note_request(m.type);
        return protocol::ScanAction::kContinue;
      });
  if (res.status == protocol::ScanResult::Status::kStopped) {
    terminate_clean = res.clean;
    b->end = new_from + res.consumed;  // drop Terminate and anything after it
  } else if (res.status == protocol::ScanResult::Status::kMalformed) {
    b->end = new_from + res.consumed;  // whole messages before the bad header still go
    log::info("client").kv("event", "protocol_violation").kv("conn", name()).kv("length", static_cast<std::uint64_t>(res.bad_length)).emit();
  }
  if (b->pending() > 0) {
    if (!s->ep().out_empty()) {
      ep_.set_reading(false);  // the server has bytes of ours queued; ours go after them
    } else {
      switch (send_buffer(s->ep(), b)) {
        case IoStatus::kDone:
          break;
        case IoStatus::kBlocked:
          ep_.set_reading(false);
          s->ep().set_writing(true);
          break;
        case IoStatus::kError:
          s->close("send to server failed");
          return;
      }
    }
  }
  if (ep_.in == b) release_if_drained(ep_, w_.buffers());
  if (res.status == protocol::ScanResult::Status::kMalformed) {
    // The server stream is cut mid-conversation: it cannot be reused.
    if (server_ != nullptr) {
      Server* srv = server_;
      server_ = nullptr;
      srv->unlink(false);
    }
    state_ = State::kWaiting;
    fail("FATAL", "08P01", "invalid message length");
    return;
  }
  if (terminate_seen) {
    log::debug("client").kv("event", "terminate").kv("conn", name()).emit();
    if (!terminate_clean && server_ != nullptr) {
      Server* srv = server_;
      server_ = nullptr;
      srv->unlink(false);
    }
    close_now();
  }
}

bool Client::streams_at_rest() const {
  if (server_ == nullptr) return true;
  return scanner_.at_boundary() && stream_left_ == 0 && server_->at_boundary() && !server_->holding() &&
         (ep_.in == nullptr || ep_.in->pending() == 0) &&
         (server_->ep().in == nullptr || server_->ep().in->pending() == 0) && ep_.out_empty() &&
         server_->ep().out_empty();
}

void Client::continue_tls() {
  std::string error;
  switch (ep_.handshake(error)) {
    case IoStatus::kBlocked:
      return;
    case IoStatus::kError:
      log::info("client").kv("event", "tls_failed").kv("conn", name()).kv("peer", peer()).kv("reason", error).emit();
      w_.stats().clients_refused.add(1);
      close_now();  // no ErrorResponse can be sent: there is no channel
      return;
    case IoStatus::kDone:
      break;
  }
  tls_handshake_ = false;
  log::debug("client").kv("event", "tls").kv("conn", name()).kv("tls", tls::describe(ep_.ssl)).emit();
  // The startup packet follows inside TLS; it may already be decrypted and waiting.
  read_startup();
}

void Client::on_write() {
  if (tls_handshake_) {
    continue_tls();
    return;
  }
  switch (ep_.flush_out()) {
    case IoStatus::kBlocked: return;
    case IoStatus::kError: close_now(); return;
    case IoStatus::kDone: break;
  }
  if (closing_) {
    close_now();
    return;
  }
  if (server_ != nullptr) {
    IoBuffer* in = server_->ep().in;
    if (in != nullptr) {
      switch (send_buffer(ep_, in)) {
        case IoStatus::kBlocked: return;
        case IoStatus::kError: close_now(); return;
        case IoStatus::kDone:
          w_.buffers().release(in);
          server_->ep().in = nullptr;
          break;
      }
    }
    server_->resume_reading();
    send_due_answers();
    if (server_ != nullptr && server_->answers_done()) on_cycle_done();
  } else if (own_answers_wait_) {
    // pgkeel's own answers drained: the client's next requests are read (forward_messages stopped).
    own_answers_wait_ = false;
    ep_.set_reading(true);
    if (!rx_.empty()) forward_messages();
  }
  ep_.set_writing(false);
}

bool Client::idle_for_shutdown() const {
  switch (state_) {
    case State::kStartup:
    case State::kAuth:
    case State::kWaiting:
      return true;
    case State::kLinked:
      return server_ != nullptr && server_->tx_status() == 'I' && !server_->query_running() &&
             streams_at_rest();
    case State::kDetached:
      return rx_.empty() && !(sess_ && sess_->lost) && waiting_pool == nullptr;
    case State::kClosed:
      return false;
  }
  return false;
}

std::optional<SessionTransfer> Client::transfer_out() const {
  if (ep_.ssl != nullptr || closing_ || stream_left_ > 0 || long_text_ || !rx_.empty() || !ep_.out_empty()) return std::nullopt;
  if (ep_.in != nullptr && ep_.in->pending() > 0) return std::nullopt;
  if (waiting_pool != nullptr || held || parked || !session_ || !cred_) return std::nullopt;
  if (state_ == State::kLinked) {
    if (server_ == nullptr || server_->tx_status() != 'I' || server_->query_running() || !streams_at_rest()) return std::nullopt;
  } else if (state_ != State::kDetached) {
    return std::nullopt;
  }
  if (sess_ && (sess_->lost || sess_->write_lsn_pending || !sess_->state.at_rest())) return std::nullopt;
  // The server connection moves too when it can (a plaintext one, idle, nothing pgkeel still
  // expects from it): the session keeps its backend. It must, for a session pinned to it.
  const bool pinned = sess_ && (!sess_->unreplayable.empty() || !sess_->state.replayable());
  Server* s = state_ == State::kLinked ? server_ : nullptr;
  const bool server_moves = s != nullptr && !s->tls() && s->state() == Server::State::kLinked && !s->cancel_in_flight() &&
                            s->answers_done() && s->ep().out_empty() && !s->holding() &&
                            (s->edits_if() == nullptr || (!s->edits_if()->dirty && s->edits_if()->plan.idle()));
  if (pinned && !server_moves) return std::nullopt;
  SessionTransfer t;
  if (server_moves) {
    MovedServer st;
    st.node = w_.snapshot().nodes[s->node()].name;
    st.backend_pid = s->backend_pid();
    st.backend_key = s->backend_key();
    st.parameter_status = s->parameter_status();
    if (const Server::Edits* e = s->edits_if()) {
      st.shared_statements = e->statements.names();
      st.settings = e->settings;
    }
    t.server = std::move(st);
    if (sess_) t.unreplayable = !sess_->unreplayable.empty() ? sess_->unreplayable : sess_->state.why_not_replayable();
  }
  const conf::Config& cfg = w_.config();
  if (listener_index_ >= cfg.listeners.size()) return std::nullopt;
  t.listener = cfg.listeners[listener_index_].name;
  t.key = *session_;
  t.credential = *cred_;
  t.cancel_pid = cancel_pid();
  t.cancel_key = cancel_key_;
  if (sess_) {
    t.settings = sess_->state.settings();
    t.sql_prepared = sess_->state.prepared();
    t.unnamed = sess_->state.unnamed();
    for (const auto& [name, st] : sess_->statements.all()) t.statements[name] = st.tail;
    t.application_name = sess_->application_name;
    t.write_lsn = sess_->write_lsn;
  }
  const auto age = Clock::now() - started_;
  t.connected_unix_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                            (std::chrono::system_clock::now() - std::chrono::duration_cast<std::chrono::system_clock::duration>(age))
                                .time_since_epoch())
                            .count();
  return t;
}

void Client::adopt(const SessionTransfer& t, Server* moved_server) {
  started_ = Clock::now() - std::chrono::duration_cast<Clock::duration>(
                                std::chrono::system_clock::now() -
                                std::chrono::system_clock::time_point(std::chrono::milliseconds(t.connected_unix_ms)));
  counted_ = true;
  w_.shared().clients.fetch_add(1, std::memory_order_relaxed);
  SessionKey key = t.key;
  const std::string text = make_session_text(key);
  session_ = w_.interned().sessions.intern(text, std::move(key));
  cred_ = w_.interned().credentials.intern(t.key.user, ServerCredential(t.credential));
  // Counted where the session was: counted here the same (a limit lowered meanwhile does not
  // cut a session that had already passed it).
  if (w_.shared().limits.client_enter(w_.config(), user(), database()).empty()) limits_counted_ = true;
  cancel_key_ = t.cancel_key;
  ever_linked_ = true;
  if (!t.settings.empty() || !t.sql_prepared.empty() || !t.unnamed.empty() || !t.statements.empty() ||
      !t.application_name.empty() || t.write_lsn != 0) {
    Carried& c = carried();
    c.state.restore(t.settings, t.sql_prepared, t.unnamed);
    for (const auto& [name, tail] : t.statements) c.statements.define(name, tail);
    c.application_name = t.application_name;
    c.write_lsn = t.write_lsn;
  }
  if (!t.unreplayable.empty()) carried().unreplayable = t.unreplayable;
  // The next server is fresh: session pooling replays settings and statements on it; transaction
  // pooling restores settings and prepares statements as each server needs them.
  replay_needed_ = !transaction_mode();
  state_ = State::kDetached;
  if (moved_server != nullptr) {
    // Its own server came along: nothing to replay, the backend is the same.
    replay_needed_ = false;
    state_ = State::kLinked;
    server_ = moved_server;
    moved_server->link(this);
  }
  set_socket_options(ep_.fd, tcp_, w_.config().general);
  ep_.open_events(w_.base(), &Client::on_read_cb, &Client::on_write_cb, this);
  ep_.set_reading(true);
  log::debug("client").kv("event", "adopted").kv("conn", name()).kv("user", user()).kv("db", database()).kv("peer", peer()).emit();
}

void Client::close_moved(bool with_server) {
  if (with_server && server_ != nullptr) {
    Server* s = server_;
    server_ = nullptr;
    s->forget_client();
    s->close("moved to the new pgkeel process with its client");
  }
  close_now();
}

void Client::terminate(std::string_view sqlstate, std::string_view message) {
  if (state_ == State::kClosed || closing_) return;
  if (state_ == State::kLinked && !streams_at_rest()) {
    close_now();  // an error now would land inside a message
    return;
  }
  if (server_ != nullptr) {
    Server* s = server_;
    server_ = nullptr;
    s->unlink(s->tx_status() == 'I' && !s->query_running() && s->at_boundary());
  }
  state_ = State::kWaiting;
  fail("FATAL", sqlstate, message);
}

void Client::fail(std::string_view severity, std::string_view sqlstate, std::string_view message,
                  std::string_view detail) {
  if (state_ == State::kClosed) return;
  if (state_ != State::kLinked && !ever_linked_) w_.stats().clients_refused.add(1);
  if (waiting_pool != nullptr) cancel_wait(w_, *this);
  w_.unhold(this);
  w_.unpark(this);
  closing_ = true;
  ep_.set_reading(false);
  log::debug("client").kv("event", "error").kv("conn", name()).kv("sqlstate", sqlstate).kv("message", message).emit();
  if (ep_.send(error_message(severity, sqlstate, message, detail)) != IoStatus::kBlocked) close_now();
}

void Client::close_now() {
  if (state_ == State::kClosed) return;
  if (waiting_pool != nullptr) cancel_wait(w_, *this);
  w_.unhold(this);
  w_.unpark(this);
  if (server_ != nullptr) {
    Server* s = server_;
    const bool clean = s->tx_status() == 'I' && !s->query_running() && streams_at_rest();
    server_ = nullptr;
    s->unlink(clean);
  }
  state_ = State::kClosed;
  if (ep_.in != nullptr) {
    w_.buffers().release(ep_.in);
    ep_.in = nullptr;
  }
  ep_.close();
  w_.retire(this);
}

void Client::hold_expired(std::string_view why) {
  log::warning("client").kv("event", "hold_timeout").kv("conn", name()).kv("reason", why).emit();
  fail("FATAL", "57P03", "no node can serve this connection now: " + std::string(why),
       "pgkeel held the connection for hold_timeout waiting for a writable primary.");
}

void Client::cancel_running_query() {
  if (state_ != State::kLinked || server_ == nullptr || !server_->query_running()) {
    log::debug("client").kv("event", "cancel_ignored").kv("conn", name()).emit();
    return;
  }
  log::info("client").kv("event", "cancel").kv("conn", name()).kv("server", server_->name()).kv("backend_pid", server_->backend_pid()).emit();
  w_.send_cancel(server_->node(), server_->backend_pid(), server_->backend_key(), server_->id());
}

void Client::tick(Clock::time_point now) {
  const conf::Config& cfg = w_.config();
  if (state_ == State::kLinked && cfg.pool.idle_transaction_timeout.count() > 0 && server_ != nullptr &&
      server_->tx_status() != 'I' && !server_->query_running() && streams_at_rest() &&
      now - last_activity_ > cfg.pool.idle_transaction_timeout) {
    log::info("client").kv("event", "idle_transaction_timeout").kv("conn", name()).kv("user", user()).emit();
    // The server connection is closed (not reset): PostgreSQL rolls the transaction back.
    terminate("25P03", "terminating connection due to idle-in-transaction timeout");
    return;
  }
  if ((state_ == State::kStartup || state_ == State::kAuth) && !closing_ &&
      now - started_ > cfg.general.login_timeout) {
    log::info("client").kv("event", "login_timeout").kv("conn", name()).kv("peer", peer()).emit();
    fail("FATAL", "57014", "canceling authentication due to timeout");
    return;
  }
  if ((state_ == State::kWaiting || state_ == State::kDetached) && waiting_pool != nullptr &&
      now - wait_started_ > cfg.pool.wait_timeout) {
    log::warning("client").kv("event", "wait_timeout").kv("conn", name()).kv("user", user()).kv("db", database()).emit();
    fail("FATAL", "53300", "no server connection became available within wait_timeout",
         "The server connections are at a limit: " + (waiting_pool->blocked_by.empty() ? std::string("max_server_conn_per_node") : waiting_pool->blocked_by) + ".");
  }
}

}  // namespace pgkeel::proxy
