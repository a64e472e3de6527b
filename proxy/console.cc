#include "proxy/console.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <chrono>
#include <ctime>

#include "health/keeper.h"
#include "proxy/control.h"
#include "proxy/tls.h"
#include "proxy/worker.h"
#include "proxy/log.h"
#include "proxy/protocol/message.h"

namespace pgkeel::proxy {
namespace {

constexpr const char* kHelp[][2] = {
    {"SHOW NODES", "every node: role, state, fencing, identity, timeline, LSN, lag, sync state, last probe"},
    {"SHOW ROUTES", "where each listener routes now, and why"},
    {"SHOW FAILOVER PLAN", "dry run: what pgkeel would do if the primary failed now"},
    {"SHOW LISTENERS", "listeners, pool mode, paused or not, clients connected"},
    {"SHOW CLIENTS", "client connections: address, user, database, application, state, server backend"},
    {"SHOW SERVERS", "server connections: node, state, client, backend pid, epoch"},
    {"SHOW POOLS", "per worker and pool: idle, active, connecting, waiting clients"},
    {"SHOW STATS", "per listener and node: transactions, queries, bytes, avg and p99 latency"},
    {"SHOW EVENTS", "detections, promotions, fencings, switchovers, reloads, console actions"},
    {"SHOW PEERS", "[store]: every pgkeel instance with a live lease: address, leader or follower, applied epoch"},
    {"SHOW CONFIG", "the running configuration (passwords hidden)"},
    {"SHOW VERSION", "pgkeel's version"},
    {"SHOW HELP", "this list"},
    {"PAUSE [listener]", "admin: hold new transactions (all listeners, or one); running ones finish"},
    {"RESUME [listener]", "admin: release what PAUSE holds"},
    {"FAILOVER [TO node] [FORCE]", "admin: promote a standby now; FORCE skips the lag check"},
    {"SWITCHOVER [TO node]", "admin: planned, clean change of primary; the old one rejoins as a standby"},
    {"FENCE node / UNFENCE node", "admin: no traffic at all to the node / allow it again (standbys only)"},
    {"DISABLE node / ENABLE node", "admin: maintenance: no traffic, never promoted / back in service"},
    {"KILL client", "admin: end a client session (id from SHOW CLIENTS)"},
    {"RELOAD", "admin: re-read the configuration and users file"},
    {"SHUTDOWN", "admin: graceful shutdown (as SIGTERM)"},
    {"RESTART", "admin: a new pgkeel process (the binary on disk now) takes over the listeners; this one drains (as SIGUSR2)"},
};

std::string help_line() {
  std::string out;
  for (const auto& h : kHelp) out += (out.empty() ? "" : ", ") + std::string(h[0]);
  return out;
}

std::vector<std::string> words(std::string_view sql) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : sql) {
    if (std::isspace(static_cast<unsigned char>(c)) || c == ';') {
      if (!cur.empty()) out.push_back(std::move(cur));
      cur.clear();
    } else {
      cur += c;
    }
  }
  if (!cur.empty()) out.push_back(std::move(cur));
  return out;
}

std::string upper(std::string s) {
  for (char& c : s) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return s;
}

ConsoleReply error(std::string sqlstate, std::string message) {
  ConsoleReply r;
  r.error_sqlstate = std::move(sqlstate);
  r.error_message = std::move(message);
  return r;
}

ConsoleReply done_reply(std::string tag, std::string notice) {
  ConsoleReply r;
  r.command_tag = std::move(tag);
  r.notice = std::move(notice);
  return r;
}

ConsoleReply outcome_reply(const std::string& tag, const health::Outcome& o) {
  if (!o.ok) return error("55000", o.text);
  return done_reply(tag, o.text);
}

using TableFn = ConsoleTable (*)(const StatusSnapshot&);

struct ShowVerb {
  const char* word;
  TableFn table;
  bool connections;  // needs every worker's report
};

constexpr ShowVerb kShows[] = {
    {"NODES", &nodes_table, false},       {"ROUTES", &routes_table, false},
    {"LISTENERS", &listeners_table, true}, {"CLIENTS", &clients_table, true},
    {"SERVERS", &servers_table, true},    {"POOLS", &pools_table, true},
    {"STATS", &stats_table, false},       {"EVENTS", &events_table, false},
    {"PEERS", &peers_table, false},
    {"CONFIG", &config_table, false},
};

// Listener index by name, or -1.
int listener_index(const Shared& sh, const std::string& name) { return sh.config->listener_index(name); }

int running_through(Worker& w, int listener) {
  WorkerReport r;
  w.report(r);
  int n = 0;
  for (const ClientRow& c : r.clients) {
    if (listener >= 0 && c.listener != w.config().listeners[static_cast<std::size_t>(listener)].name) continue;
    if (c.state == "active" || c.state == "idle in transaction") ++n;
  }
  return n;
}

void note(Shared& sh, const std::string& node, const std::string& text) {
  if (sh.keeper != nullptr) sh.keeper->note_event("console", node, text);
}

}  // namespace

void run_console_command(Shared& sh, std::string_view sql, bool admin, const std::string& who, ConsoleReplyFn reply) {
  const std::vector<std::string> orig = words(sql);
  std::vector<std::string> w = orig;
  for (auto& x : w) x = upper(x);
  health::Keeper* k = sh.keeper;
  if (w.empty()) return reply(done_reply("EMPTY", ""));
  const std::string& verb = w[0];
  if (verb == "SHOW") {
    if (w.size() == 2 && w[1] == "VERSION") {
      ConsoleReply r = done_reply("SHOW", "");
      r.table = ConsoleTable{{"version"}, {{std::string("pgkeel ") + PGKEEL_VERSION}}};
      return reply(std::move(r));
    }
    if (w.size() == 2 && w[1] == "HELP") {
      ConsoleReply r = done_reply("SHOW", "");
      r.table = ConsoleTable{{"command", "what it does"}, {}};
      for (const auto& h : kHelp) r.table->rows.push_back({std::string(h[0]), std::string(h[1])});
      return reply(std::move(r));
    }
    if (w.size() == 3 && w[1] == "FAILOVER" && w[2] == "PLAN") {
      gather_status(sh, false, [reply](std::shared_ptr<const StatusSnapshot> s) {
        ConsoleReply r = done_reply("SHOW", "if the primary failed now: " + s->plan.summary);
        r.table = plan_table(*s);
        reply(std::move(r));
      });
      return;
    }
    for (const ShowVerb& v : kShows) {
      if (w.size() == 2 && w[1] == v.word) {
        const TableFn fn = v.table;
        const bool nodes = v.word == std::string_view("NODES");
        gather_status(sh, v.connections, [reply, fn, nodes](std::shared_ptr<const StatusSnapshot> s) {
          // SHOW NODES says in words what synchronous replication does now.
          ConsoleReply r = done_reply("SHOW", nodes ? "synchronous replication " +
                                                          std::string(health::to_string(s->keeper.sync_health)) + ": " +
                                                          s->keeper.sync_why +
                                                          (s->keeper.rejoin_why.empty() ? "" : "; " + s->keeper.rejoin_why)
                                                    : "");
          r.table = fn(*s);
          reply(std::move(r));
        });
        return;
      }
    }
    return reply(error("42601", "unknown SHOW command; the commands are: " + help_line()));
  }

  static const char* const kActs[] = {"PAUSE", "RESUME", "FAILOVER", "SWITCHOVER", "FENCE", "UNFENCE",
                                      "DISABLE", "ENABLE", "KILL", "RELOAD", "SHUTDOWN", "RESTART"};
  if (std::find(std::begin(kActs), std::end(kActs), verb) == std::end(kActs)) {
    return reply(error("42601", "not a console command: \"" + std::string(sql.substr(0, 60)) +
                                    "\"; the console takes: " + help_line()));
  }
  if (!admin) return reply(error("42501", "permission denied: " + verb + " needs a console admin user (monitor users may only SHOW)"));

  if (verb == "PAUSE" || verb == "RESUME") {
    if (w.size() > 2) return reply(error("42601", "syntax: " + verb + " [listener]"));
    int li = -1;
    if (w.size() == 2) {
      li = listener_index(sh, orig[1]);
      if (li < 0) return reply(error("42704", "no listener named \"" + orig[1] + "\"; see SHOW LISTENERS"));
    }
    const bool pause = verb == "PAUSE";
    const std::string what = li < 0 ? "all listeners" : "listener " + orig[1];
    for (std::size_t i = 0; i < sh.config->listeners.size() && i < kMaxListeners; ++i) {
      if (li < 0 || static_cast<std::size_t>(li) == i) sh.listener_paused[i].store(pause);
    }
    note(sh, "", verb + " " + what + " by " + who);
    if (!pause) {
      resume_workers(sh);
      return reply(done_reply("RESUME", "resumed " + what));
    }
    // Answer once the transactions running through those listeners have finished (or after the
    // switchover drain timeout, saying how many still run).
    drain(sh, [li](Worker& wk) { return running_through(wk, li); }, sh.config->failover.switchover_drain_timeout,
          [reply, what](int still) {
            reply(done_reply("PAUSE", "paused " + what + (still == 0 ? "; no transaction is running"
                                                                     : "; " + std::to_string(still) + " transactions still running")));
          });
    return;
  }
  if (verb == "FAILOVER" || verb == "SWITCHOVER") {
    if (k == nullptr) return reply(error("55000", "the keeper is not running"));
    std::optional<std::string> target;
    bool force = false;
    for (std::size_t i = 1; i < w.size(); ++i) {
      if (w[i] == "TO" && i + 1 < w.size() && !target) {
        target = orig[++i];  // node names are case-sensitive
      } else if (w[i] == "FORCE" && verb == "FAILOVER") {
        force = true;
      } else {
        return reply(error("42601", verb == "FAILOVER" ? "syntax: FAILOVER [TO node] [FORCE]" : "syntax: SWITCHOVER [TO node]"));
      }
    }
    auto on_done = [reply, verb](health::Outcome o) { reply(outcome_reply(verb, o)); };
    if (verb == "FAILOVER") {
      k->failover(target, force, who, on_done);
    } else {
      k->switchover(target, who, on_done);
    }
    return;
  }
  if (verb == "FENCE" || verb == "UNFENCE" || verb == "DISABLE" || verb == "ENABLE") {
    if (w.size() != 2) return reply(error("42601", "syntax: " + verb + " node"));
    if (k == nullptr) return reply(error("55000", "the keeper is not running"));
    health::Outcome o;
    if (verb == "FENCE") o = k->fence(orig[1], who);
    if (verb == "UNFENCE") o = k->unfence(orig[1], who);
    if (verb == "DISABLE") o = k->disable(orig[1], who);
    if (verb == "ENABLE") o = k->enable(orig[1], who);
    return reply(outcome_reply(verb, o));
  }
  if (verb == "KILL") {
    if (w.size() != 2) return reply(error("42601", "syntax: KILL client (the id from SHOW CLIENTS)"));
    const std::string id = orig[1];
    kill_client(sh, id, who, [&sh, reply, id, who](bool found) {
      if (!found) return reply(error("42704", "no client " + id + "; see SHOW CLIENTS"));
      note(sh, "", "KILL " + id + " by " + who);
      reply(done_reply("KILL", "terminated client " + id));
    });
    return;
  }
  if (verb == "RELOAD") {
    if (w.size() != 1 || !sh.reload) return reply(error("42601", "syntax: RELOAD"));
    bool ok = false;
    const std::string text = sh.reload(who, ok);
    return reply(ok ? done_reply("RELOAD", text) : error("F0000", text));
  }
  if (verb == "RESTART") {
    if (w.size() != 1 || !sh.restart) return reply(error("42601", "syntax: RESTART"));
    bool ok = false;
    const std::string text = sh.restart("console user " + who, ok);
    if (ok) note(sh, "", "RESTART by " + who + ": " + text);
    return reply(ok ? done_reply("RESTART", text) : error("55000", text));
  }
  // SHUTDOWN
  if (w.size() != 1 || !sh.shutdown) return reply(error("42601", "syntax: SHUTDOWN"));
  note(sh, "", "SHUTDOWN by " + who);
  reply(done_reply("SHUTDOWN", "pgkeel is shutting down gracefully"));
  sh.post_main([&sh] { sh.shutdown(true); });
}

std::string encode_console_reply(const ConsoleReply& reply) {
  std::string out;
  if (!reply.error_sqlstate.empty()) {
    protocol::append_error(out, {"ERROR", reply.error_sqlstate, reply.error_message, {}, {}});
    return out;
  }
  if (!reply.notice.empty()) {
    protocol::Writer w(out);
    w.begin(protocol::be::kNoticeResponse);
    w.i8('S').str("NOTICE").i8('V').str("NOTICE").i8('C').str("00000").i8('M').str(reply.notice).i8(0);
    w.end();
  }
  if (reply.command_tag == "EMPTY") {
    protocol::Writer(out).begin('I').end();  // EmptyQueryResponse
    return out;
  }
  if (reply.table) {
    const ConsoleTable& t = *reply.table;
    protocol::Writer w(out);
    w.begin('T').i16(static_cast<std::int16_t>(t.columns.size()));
    for (const std::string& c : t.columns) {
      w.str(c).i32(0).i16(0).i32(25 /* text */).i16(-1).i32(-1).i16(0);
    }
    w.end();
    for (const auto& row : t.rows) {
      protocol::Writer d(out);
      d.begin('D').i16(static_cast<std::int16_t>(row.size()));
      for (const auto& v : row) {
        if (v) {
          d.i32(static_cast<std::int32_t>(v->size())).bytes(*v);
        } else {
          d.i32(-1);
        }
      }
      d.end();
    }
    protocol::Writer(out).begin('C').str(reply.command_tag + " " + std::to_string(t.rows.size())).end();
    return out;
  }
  protocol::Writer(out).begin('C').str(reply.command_tag).end();
  return out;
}

// One console session: startup, authentication, then simple queries.
class ConsoleConn {
 public:
  // `over_limit`: accepted beyond [console] max_connections; its startup packet gets 53300.
  ConsoleConn(Console& owner, int fd, const sockaddr* addr, bool over_limit)
      : owner_(owner), peer_(PeerAddress::from(addr)), over_limit_(over_limit) {
    ep_.fd = fd;
    ep_.open_events(owner.base(), &ConsoleConn::on_read_cb, &ConsoleConn::on_write_cb, this);
    ep_.set_reading(true);
    // Authentication (TLS handshake included) must finish within login_timeout.
    login_timer_.reset(event_new(owner.base(), -1, 0, [](evutil_socket_t, short, void* arg) {
      auto* c = static_cast<ConsoleConn*>(arg);
      if (!c->authed_ && !c->closed_) {
        log::info("console").kv("event", "login_timeout").emit();
        if (c->tls_handshake_) {
          c->close();
        } else {
          c->fatal("57014", "canceling authentication due to timeout");
        }
      }
    }, this));
    const auto ms = owner.shared().config->general.login_timeout.count();
    const timeval tv{static_cast<time_t>(ms / 1000), static_cast<suseconds_t>((ms % 1000) * 1000)};
    event_add(login_timer_.get(), &tv);
  }
  ~ConsoleConn() { ep_.close(); }
  ConsoleConn(const ConsoleConn&) = delete;
  ConsoleConn& operator=(const ConsoleConn&) = delete;

 private:
  static void on_read_cb(evutil_socket_t, short, void* arg) { static_cast<ConsoleConn*>(arg)->on_read(); }
  static void on_write_cb(evutil_socket_t, short, void* arg) {
    auto* c = static_cast<ConsoleConn*>(arg);
    if (c->tls_handshake_) {
      c->continue_tls();
      return;
    }
    const IoStatus st = c->ep_.flush_out();
    if (st == IoStatus::kBlocked) return;
    c->ep_.set_writing(false);
    if (st == IoStatus::kError || c->closing_) c->close();
  }

  void send(const std::string& bytes) {
    if (ep_.send(bytes) == IoStatus::kError) close();
  }

  void fatal(std::string_view sqlstate, std::string_view message) {
    std::string out;
    protocol::append_error(out, {"FATAL", sqlstate, message, {}, {}});
    closing_ = true;
    ep_.set_reading(false);
    if (ep_.send(out) != IoStatus::kBlocked) close();
  }

  void close() {
    if (closed_) return;
    closed_ = true;
    ep_.close();
    owner_.forget(this);
  }

  void continue_tls() {
    std::string error;
    switch (ep_.handshake(error)) {
      case IoStatus::kBlocked:
        return;
      case IoStatus::kError:
        log::info("console").kv("event", "tls_failed").kv("reason", error).emit();
        close();
        return;
      case IoStatus::kDone:
        break;
    }
    tls_handshake_ = false;
    on_read();  // the startup packet may already be decrypted and waiting
  }

  void on_read() {
    if (tls_handshake_) {
      continue_tls();
      return;
    }
    char buf[8192];
    const long n = ep_.read(buf, sizeof buf);
    if (n == -1) return;
    if (n <= 0) {
      close();
      return;
    }
    rx_.append(buf, static_cast<std::size_t>(n));
    if (rx_.size() > (1u << 20) + 5) return fatal("08P01", "console input too large");
    process();
  }

  // Handles whole messages in rx_, one command at a time: while a command's reply is pending,
  // what follows waits.
  void process() {
    while (!closed_ && !closing_ && !busy_) {
      if (!started_) {
        protocol::StartupParse p = protocol::parse_startup(rx_);
        if (p.status == protocol::StartupParse::Status::kNeedMore) return;
        if (p.status == protocol::StartupParse::Status::kMalformed) return fatal("08P01", p.error);
        rx_.erase(0, p.consumed);
        handle_startup(p.packet);
        continue;
      }
      if (rx_.size() < 5) return;
      const std::uint32_t len = protocol::read_u32(reinterpret_cast<const unsigned char*>(rx_.data()) + 1);
      if (len < 4 || len > (1u << 20)) return fatal("08P01", "invalid message length");
      if (rx_.size() < 1 + len) return;
      const char type = rx_[0];
      const std::string body = rx_.substr(5, len - 4);
      rx_.erase(0, 1 + len);
      handle_message(type, body);
    }
  }

  void handle_startup(const protocol::StartupPacket& pkt) {
    using Kind = protocol::StartupPacket::Kind;
    if (pkt.kind == Kind::kSSLRequest || pkt.kind == Kind::kGSSENCRequest) {
      // The same [tls] certificate as the data listeners; bytes after the request are refused.
      // Over the connection limit no handshake is spent: 'N', then 53300 to the startup packet.
      std::shared_ptr<SSL_CTX> ctx =
          pkt.kind == Kind::kSSLRequest && !over_limit_ ? owner_.shared().client_tls() : nullptr;
      if (!rx_.empty() || ep_.ssl != nullptr) return fatal("08P01", "received unencrypted data after SSL request");
      if (!ctx) {
        send("N");
        return;
      }
      if (ep_.send("S") != IoStatus::kDone || (ep_.ssl = tls::new_server_session(ctx.get(), ep_.fd)) == nullptr) {
        close();
        return;
      }
      started_ = false;
      tls_handshake_ = true;
      continue_tls();
      return;
    }
    if (pkt.kind == Kind::kCancel) {
      close();
      return;
    }
    if ((pkt.version >> 16) != 3) return fatal("0A000", "unsupported frontend protocol");
    started_ = true;
    if (over_limit_) {
      log::warning("console").kv("event", "refused").kv("peer", peer_.text()).kv("reason", "console.max_connections")
          .kv("limit", owner_.shared().config->console.max_connections).emit();
      return fatal("53300", "sorry, too many clients already");
    }
    const std::string* user = pkt.param("user");
    const std::string* db = pkt.param("database");
    if (user == nullptr || user->empty()) return fatal("28000", "no PostgreSQL user name specified in startup packet");
    user_ = *user;
    if (db != nullptr && !db->empty() && *db != "pgkeel") {
      return fatal("3D000", "the console's database is \"pgkeel\", not \"" + *db + "\"");
    }
    const conf::ConsoleConfig& cc = owner_.shared().config->console;
    admin_ = std::find(cc.admin_users.begin(), cc.admin_users.end(), user_) != cc.admin_users.end();
    allowed_ = admin_ || std::find(cc.monitor_users.begin(), cc.monitor_users.end(), user_) != cc.monitor_users.end();
    // Every user goes through the exchange a data listener would run for that name: the users
    // file's own method, salt and iteration count, or for an unknown name the same mock salt the
    // listeners give it. A user who may not use the console then fails exactly like a wrong
    // password, even with the right one (apply()). So nothing the console sends before its
    // verdict tells console users from other users or from unknown names.
    auth_.emplace(owner_.shared(), user_);
    apply(auth_->begin());
  }

  void apply(const AuthSession::Step& step) {
    if (step.failed || (step.done && !allowed_)) {
      const std::string reason = step.failed ? step.log_reason : "not a console user";
      log::info("console").kv("event", "auth_failed").kv("user", user_).kv("peer", peer_.text()).kv("reason", reason).emit();
      const std::string sqlstate = step.failed ? step.sqlstate : "28P01";
      const std::string message =
          sqlstate == "28P01" ? "password authentication failed for user \"" + user_ + "\"" : step.message;
      auth_.reset();
      // The listeners' throttle, shared with them: an address that keeps failing waits for its
      // answer here too (the main loop never blocks; the timer answers).
      const auto delay = owner_.shared().auth_throttle.failed(peer_.host(), owner_.shared().config->auth,
                                                              std::chrono::steady_clock::now());
      if (delay.count() > 0) {
        log::info("console").kv("event", "auth_throttled").kv("peer", peer_.text())
            .kv("delay_ms", static_cast<std::int64_t>(delay.count())).emit();
        ep_.set_reading(false);
        delayed_sqlstate_ = sqlstate;
        delayed_message_ = message;
        delay_timer_.reset(event_new(owner_.base(), -1, 0, [](evutil_socket_t, short, void* arg) {
          auto* c = static_cast<ConsoleConn*>(arg);
          if (!c->closed_ && !c->closing_) c->fatal(c->delayed_sqlstate_, c->delayed_message_);
        }, this));
        const timeval tv{static_cast<time_t>(delay.count() / 1000), static_cast<suseconds_t>((delay.count() % 1000) * 1000)};
        event_add(delay_timer_.get(), &tv);
        throttled_ = true;
        return;
      }
      return fatal(sqlstate, message);
    }
    std::string out = step.out;
    if (step.done) {
      owner_.shared().auth_throttle.succeeded(peer_.host());
      authed_ = true;
      auth_.reset();
      for (const auto& [k, v] : {std::pair<const char*, const char*>{"server_version", "15.0 (pgkeel console)"},
                                 {"server_encoding", "UTF8"}, {"client_encoding", "UTF8"}, {"DateStyle", "ISO, MDY"},
                                 {"integer_datetimes", "on"}, {"standard_conforming_strings", "on"}, {"TimeZone", "UTC"}}) {
        protocol::append_parameter_status(out, k, v);
      }
      protocol::append_backend_key_data(out, 0, 0);
      protocol::append_ready_for_query(out, 'I');
      log::info("console").kv("event", "login").kv("user", user_).kv("admin", admin_ ? "yes" : "no").emit();
    }
    send(out);
  }

  void handle_message(char type, const std::string& body) {
    if (!authed_) {
      if (!auth_ || throttled_) return;  // failed; the answer is on its way
      apply(auth_->handle(type, body));
      return;
    }
    if (type == protocol::fe::kTerminate) {
      close();
      return;
    }
    if (type != protocol::fe::kQuery) {
      if (type == protocol::fe::kSync) {
        std::string out;
        protocol::append_error(out, {"ERROR", "0A000", "the console speaks the simple query protocol only", {}, {}});
        protocol::append_ready_for_query(out, 'I');
        send(out);
      }
      return;  // extended-protocol messages are answered at their Sync
    }
    const std::string sql = body.substr(0, body.find('\0'));
    log::info("console").kv("event", "command").kv("user", user_).kv("sql", sql).emit();
    busy_ = true;
    std::weak_ptr<bool> alive = alive_;
    run_console_command(owner_.shared(), sql, admin_, user_, [this, alive](ConsoleReply reply) {
      if (alive.expired()) return;  // the session ended while the command ran
      std::string out = encode_console_reply(reply);
      protocol::append_ready_for_query(out, 'I');
      send(out);
      busy_ = false;
      // Continue with what the client pipelined, from the loop (not inside this callback).
      owner_.shared().post_main([this, alive] {
        if (!alive.expired()) process();
      });
    });
  }

  Console& owner_;
  Endpoint ep_;
  PeerAddress peer_;
  std::string rx_;
  const bool over_limit_;
  bool started_ = false;
  bool authed_ = false;
  bool admin_ = false;
  bool allowed_ = false;    // an admin or monitor user
  bool throttled_ = false;  // failed; the answer waits for delay_timer_
  std::string delayed_sqlstate_;
  std::string delayed_message_;
  EventPtr delay_timer_;
  bool closing_ = false;
  bool closed_ = false;
  bool busy_ = false;  // a command's reply is pending
  bool tls_handshake_ = false;
  EventPtr login_timer_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
  std::string user_;
  std::optional<AuthSession> auth_;
};

Console::Console(Shared& shared, event_base* base) : shared_(shared), base_(base) {
  reap_.reset(event_new(base_, -1, 0, [](evutil_socket_t, short, void* arg) { static_cast<Console*>(arg)->dead_.clear(); }, this));
}

Console::~Console() {
  listener_.reset();
  conns_.clear();
  dead_.clear();
}

bool Console::listen(const std::string& host, std::uint16_t port) {
  sockaddr_in sin{};
  sin.sin_family = AF_INET;
  sin.sin_port = htons(port);
  if (inet_pton(AF_INET, host.c_str(), &sin.sin_addr) != 1) {
    log::error("console").kv("event", "listen_failed").kv("addr", host).kv("reason", "console host must be an IPv4 address").emit();
    return false;
  }
  listener_.reset(evconnlistener_new_bind(base_, &Console::on_accept, this, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_EXEC, 64,
                                          reinterpret_cast<sockaddr*>(&sin), sizeof sin));
  if (!listener_) {
    log::error("console").kv("event", "listen_failed").kv("addr", host + ":" + std::to_string(port)).kv("reason", std::strerror(errno)).emit();
    return false;
  }
  log::info("console").kv("event", "listening").kv("addr", host + ":" + std::to_string(port)).emit();
  return true;
}

bool Console::listen_on(int fd) {
  listener_.reset(evconnlistener_new(base_, &Console::on_accept, this, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_EXEC, 0, fd));
  if (!listener_) {
    ::close(fd);
    log::error("console").kv("event", "listen_failed").kv("reason", "cannot accept on the socket handed over").emit();
    return false;
  }
  log::info("console").kv("event", "listening").kv("addr", "handed over").emit();
  return true;
}

int Console::listener_fd() const { return listener_ ? evconnlistener_get_fd(listener_.get()) : -1; }

void Console::close_listener() { listener_.reset(); }

void Console::on_accept(evconnlistener*, evutil_socket_t fd, sockaddr* addr, int, void* arg) {
  auto* self = static_cast<Console*>(arg);
  evutil_make_socket_nonblocking(fd);
  evutil_make_socket_closeonexec(fd);  // hooks and stop/rejoin commands must not inherit it
  // Every connection counts, logged in or not (a silent one lasts login_timeout at most). Over the
  // limit a client is still read, so its startup packet gets a proper 53300; far over it, it is
  // closed unread: a flood costs the main loop, which the keeper shares, next to nothing.
  const std::size_t max = static_cast<std::size_t>(std::max(1, self->shared_.config->console.max_connections));
  if (self->conns_.size() >= 2 * max + 16) {
    ::close(fd);
    return;
  }
  auto c = std::make_unique<ConsoleConn>(*self, fd, addr, self->conns_.size() >= max);
  ConsoleConn* raw = c.get();
  self->conns_.emplace(raw, std::move(c));
}

void Console::forget(ConsoleConn* c) {
  auto it = conns_.find(c);
  if (it == conns_.end()) return;
  dead_.push_back(std::move(it->second));
  conns_.erase(it);
  event_active(reap_.get(), EV_TIMEOUT, 0);
}

}  // namespace pgkeel::proxy
