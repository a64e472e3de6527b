#include "proxy/console.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <ctime>

#include "health/keeper.h"
#include "proxy/log.h"
#include "proxy/protocol/message.h"

namespace pgkeel::proxy {
namespace {

constexpr const char* kHelp =
    "SHOW NODES | SHOW EVENTS | SHOW FAILOVER PLAN | SHOW ROUTES | SHOW VERSION | SHOW HELP | "
    "FAILOVER [TO node] [FORCE]";

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

std::string iso(std::chrono::system_clock::time_point t) {
  const std::time_t tt = std::chrono::system_clock::to_time_t(t);
  std::tm tm{};
  gmtime_r(&tt, &tm);
  char buf[40];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S", &tm);
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count() % 1000;
  char out[48];
  std::snprintf(out, sizeof out, "%s.%03d+00", buf, static_cast<int>(ms));
  return out;
}

ConsoleReply error(std::string sqlstate, std::string message) {
  ConsoleReply r;
  r.error_sqlstate = std::move(sqlstate);
  r.error_message = std::move(message);
  return r;
}

std::optional<std::string> opt(const std::string& s) {
  if (s.empty()) return std::nullopt;
  return s;
}

}  // namespace

ConsoleReply run_console_command(Shared& sh, std::string_view sql, bool admin, const std::string& who) {
  std::vector<std::string> w = words(sql);
  for (auto& x : w) x = upper(x);
  ConsoleReply r;
  health::Keeper* k = sh.keeper;
  if (w.empty()) {
    r.command_tag = "EMPTY";
    return r;
  }
  if (w[0] == "SHOW" && w.size() >= 2) {
    r.command_tag = "SHOW";
    ConsoleTable t;
    if (w[1] == "NODES" && k != nullptr) {
      t.columns = {"name", "address", "role", "health", "fenced", "enabled", "system_identifier", "timeline",
                   "lsn", "lag_bytes", "lag_seconds", "sync_state", "last_probe", "probe_ms", "last_error"};
      for (const health::NodeStatus& n : k->nodes()) {
        char ms[32];
        std::snprintf(ms, sizeof ms, "%.1f", n.probe_ms);
        std::optional<std::string> lag_s;
        if (n.lag_seconds) {
          char b[32];
          std::snprintf(b, sizeof b, "%.3f", *n.lag_seconds);
          lag_s = b;
        }
        t.rows.push_back({n.name, n.address, n.role, n.health, n.fenced ? "yes" : "no", n.enabled ? "yes" : "no",
                          opt(n.system_identifier), n.timeline ? std::optional<std::string>(std::to_string(n.timeline)) : std::nullopt,
                          opt(n.lsn), n.lag_bytes ? std::optional<std::string>(std::to_string(*n.lag_bytes)) : std::nullopt,
                          lag_s, opt(n.sync_state), opt(n.last_probe), std::string(ms), opt(n.last_error)});
      }
    } else if (w[1] == "EVENTS" && k != nullptr) {
      t.columns = {"id", "time", "epoch", "kind", "node", "detail"};
      for (const health::Event& e : k->events()) {
        t.rows.push_back({std::to_string(e.id), iso(e.at), std::to_string(e.epoch), e.kind, opt(e.node), e.text});
      }
    } else if (w[1] == "FAILOVER" && w.size() >= 3 && w[2] == "PLAN" && k != nullptr) {
      const health::Plan p = k->plan();
      t.columns = {"node", "eligible", "lsn", "verdict"};
      for (const health::Verdict& v : p.candidates) {
        t.rows.push_back({v.name, v.eligible ? "yes" : "no", health::format_lsn(v.lsn),
                          p.chosen && *p.chosen == v.id ? "would be promoted: " + v.why : v.why});
      }
      r.notice = "if the primary failed now: " + p.summary;
    } else if (w[1] == "ROUTES") {
      auto snap = sh.table.current();
      t.columns = {"listener", "address", "intent", "node", "epoch", "why"};
      for (const conf::ListenerConfig& l : sh.config->listeners) {
        std::optional<std::string> node;
        if (l.intent == routing::Intent::kReadWrite && snap->writer) node = snap->nodes[*snap->writer].name;
        t.rows.push_back({l.name, l.host + ":" + std::to_string(l.port), std::string(routing::to_string(l.intent)), node,
                          std::to_string(snap->epoch), snap->why});
      }
    } else if (w[1] == "VERSION") {
      t.columns = {"version"};
      t.rows.push_back({std::string("pgkeel ") + PGKEEL_VERSION});
    } else if (w[1] == "HELP") {
      t.columns = {"command"};
      t.rows.push_back({std::string(kHelp)});
    } else {
      return error("42601", "unknown console command; the commands are: " + std::string(kHelp));
    }
    r.table = std::move(t);
    return r;
  }
  if (w[0] == "FAILOVER") {
    if (!admin) return error("42501", "permission denied: FAILOVER needs a console admin user");
    if (k == nullptr) return error("55000", "failover is not available");
    std::optional<std::string> target;
    bool force = false;
    for (std::size_t i = 1; i < w.size(); ++i) {
      if (w[i] == "TO" && i + 1 < w.size()) {
        // Node names are case-sensitive: take the original spelling.
        std::vector<std::string> orig = words(sql);
        target = orig[i + 1];
        ++i;
      } else if (w[i] == "FORCE") {
        force = true;
      } else {
        return error("42601", "syntax: FAILOVER [TO node] [FORCE]");
      }
    }
    r.command_tag = "FAILOVER";
    health::Outcome outcome;
    k->failover(target, force, who, [&outcome](health::Outcome o) { outcome = std::move(o); });
    r.notice = outcome.text;
    return r;
  }
  return error("42601", "unknown console command; the commands are: " + std::string(kHelp));
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
  ConsoleConn(Console& owner, int fd) : owner_(owner) {
    ep_.fd = fd;
    ep_.rd.reset(event_new(owner.base(), fd, EV_READ | EV_PERSIST, &ConsoleConn::on_read_cb, this));
    ep_.wr.reset(event_new(owner.base(), fd, EV_WRITE | EV_PERSIST, &ConsoleConn::on_write_cb, this));
    ep_.set_reading(true);
  }
  ~ConsoleConn() { ep_.close(); }
  ConsoleConn(const ConsoleConn&) = delete;
  ConsoleConn& operator=(const ConsoleConn&) = delete;

 private:
  static void on_read_cb(evutil_socket_t, short, void* arg) { static_cast<ConsoleConn*>(arg)->on_read(); }
  static void on_write_cb(evutil_socket_t, short, void* arg) {
    auto* c = static_cast<ConsoleConn*>(arg);
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

  void on_read() {
    char buf[8192];
    const ssize_t n = ::recv(ep_.fd, buf, sizeof buf, 0);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
    if (n <= 0) {
      close();
      return;
    }
    rx_.append(buf, static_cast<std::size_t>(n));
    while (!closed_ && !closing_) {
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
      send("N");
      return;
    }
    if (pkt.kind == Kind::kCancel) {
      close();
      return;
    }
    if ((pkt.version >> 16) != 3) return fatal("0A000", "unsupported frontend protocol");
    started_ = true;
    const std::string* user = pkt.param("user");
    const std::string* db = pkt.param("database");
    if (user == nullptr || user->empty()) return fatal("28000", "no PostgreSQL user name specified in startup packet");
    user_ = *user;
    if (db != nullptr && !db->empty() && *db != "pgkeel") {
      return fatal("3D000", "the console's database is \"pgkeel\", not \"" + *db + "\"");
    }
    const conf::ConsoleConfig& cc = owner_.shared().config->console;
    admin_ = std::find(cc.admin_users.begin(), cc.admin_users.end(), user_) != cc.admin_users.end();
    const bool monitor = std::find(cc.monitor_users.begin(), cc.monitor_users.end(), user_) != cc.monitor_users.end();
    // Users not allowed on the console still go through authentication (a mock exchange if they
    // are unknown) and fail the same way, so the console does not reveal who may use it.
    auth_.emplace(owner_.shared(), (admin_ || monitor) ? user_ : "\x01not-a-console-user");
    apply(auth_->begin());
  }

  void apply(const AuthSession::Step& step) {
    if (step.failed) {
      log::info("console").kv("event", "auth_failed").kv("user", user_).kv("reason", step.log_reason).emit();
      return fatal(step.sqlstate, step.sqlstate == "28P01" ? "password authentication failed for user \"" + user_ + "\"" : step.message);
    }
    std::string out = step.out;
    if (step.done) {
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
    std::string out = encode_console_reply(run_console_command(owner_.shared(), sql, admin_, user_));
    protocol::append_ready_for_query(out, 'I');
    send(out);
  }

  Console& owner_;
  Endpoint ep_;
  std::string rx_;
  bool started_ = false;
  bool authed_ = false;
  bool admin_ = false;
  bool closing_ = false;
  bool closed_ = false;
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
  listener_.reset(evconnlistener_new_bind(base_, &Console::on_accept, this, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE, 64,
                                          reinterpret_cast<sockaddr*>(&sin), sizeof sin));
  if (!listener_) {
    log::error("console").kv("event", "listen_failed").kv("addr", host + ":" + std::to_string(port)).kv("reason", std::strerror(errno)).emit();
    return false;
  }
  log::info("console").kv("event", "listening").kv("addr", host + ":" + std::to_string(port)).emit();
  return true;
}

void Console::close_listener() { listener_.reset(); }

void Console::on_accept(evconnlistener*, evutil_socket_t fd, sockaddr*, int, void* arg) {
  auto* self = static_cast<Console*>(arg);
  evutil_make_socket_nonblocking(fd);
  auto c = std::make_unique<ConsoleConn>(*self, fd);
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
