#include "health/pg_async.h"

#include <utility>

namespace pgkeel::health {

std::string conninfo_value(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'' || c == '\\') out += '\\';
    out += c;
  }
  return out + "'";
}

std::string tls_conninfo(conf::SslMode mode, const conf::ServerTlsConfig& tls) {
  const char* name = "prefer";
  switch (mode) {
    case conf::SslMode::kDisable: return " sslmode=disable";
    case conf::SslMode::kPrefer: name = "prefer"; break;
    case conf::SslMode::kRequire: name = "require"; break;
    case conf::SslMode::kVerifyCa: name = "verify-ca"; break;
    case conf::SslMode::kVerifyFull: name = "verify-full"; break;
  }
  std::string out = std::string(" sslmode=") + name;
  if (!tls.ca_file.empty()) out += " sslrootcert=" + conninfo_value(tls.ca_file);
  if (!tls.cert_file.empty()) out += " sslcert=" + conninfo_value(tls.cert_file);
  if (!tls.key_file.empty()) out += " sslkey=" + conninfo_value(tls.key_file);
  return out;
}

namespace {

std::string one_line(const char* msg) {
  std::string s = msg ? msg : "";
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  for (char& c : s) {
    if (c == '\n') c = ' ';
  }
  return s;
}

}  // namespace

PgAsync::PgAsync(event_base* base, std::string conninfo) : base_(base), conninfo_(std::move(conninfo)) {
  timer_.reset(evtimer_new(base_, &PgAsync::on_timeout, this));
  patience_timer_.reset(evtimer_new(base_, &PgAsync::on_patience_over, this));
}

PgAsync::~PgAsync() {
  io_.reset();
  timer_.reset();
  patience_timer_.reset();
  conn_.reset();
}

void PgAsync::close() {
  io_.reset();
  conn_.reset();
  connecting_ = false;
  late_ = false;
  evtimer_del(patience_timer_.get());
}

void PgAsync::run(const std::string& sql, std::chrono::milliseconds timeout, Callback cb) {
  start(sql, std::nullopt, timeout, std::move(cb));
}

void PgAsync::run_params(const std::string& sql, std::vector<std::string> params, std::chrono::milliseconds timeout,
                         Callback cb) {
  start(sql, std::move(params), timeout, std::move(cb));
}

void PgAsync::start(const std::string& sql, std::optional<std::vector<std::string>> params,
                    std::chrono::milliseconds timeout, Callback cb) {
  if (cb_ || late_) {
    PgResult r;
    r.timed_out = late_;
    r.error = late_ ? "timeout: still waiting for the answer to the previous query" : "a query is already running on this connection";
    // Report from the loop, as promised.
    auto* holder = new Callback(std::move(cb));
    auto* res = new PgResult(r);
    event_base_once(base_, -1, EV_TIMEOUT, [](evutil_socket_t, short, void* arg) {
      auto* pair = static_cast<std::pair<Callback*, PgResult*>*>(arg);
      (*pair->first)(*pair->second);
      delete pair->first;
      delete pair->second;
      delete pair;
    }, new std::pair<Callback*, PgResult*>(holder, res), nullptr);
    return;
  }
  cb_ = std::move(cb);
  sql_ = sql;
  params_ = std::move(params);
  partial_ = PgResult{};
  const timeval tv{static_cast<time_t>(timeout.count() / 1000), static_cast<suseconds_t>((timeout.count() % 1000) * 1000)};
  evtimer_add(timer_.get(), &tv);
  if (conn_ && PQstatus(conn_.get()) == CONNECTION_OK && !connecting_) {
    send_query();
  } else {
    start_connect();
  }
}

void PgAsync::start_connect() {
  io_.reset();
  conn_.reset(PQconnectStart(conninfo_.c_str()));
  if (!conn_ || PQstatus(conn_.get()) == CONNECTION_BAD) {
    PgResult r;
    r.connection_lost = true;
    r.error = conn_ ? one_line(PQerrorMessage(conn_.get())) : "out of memory";
    conn_.reset();
    // Defer: never call back from inside run().
    io_.reset();
    partial_ = r;
    event_active(timer_.get(), EV_READ, 0);
    return;
  }
  PQsetnonblocking(conn_.get(), 1);
  connecting_ = true;
  wait_for(EV_WRITE);
}

void PgAsync::wait_for(short what) {
  io_.reset(event_new(base_, PQsocket(conn_.get()), what, &PgAsync::on_io, this));
  event_add(io_.get(), nullptr);
}

void PgAsync::on_io(evutil_socket_t, short, void* arg) {
  auto* self = static_cast<PgAsync*>(arg);
  if (self->connecting_) {
    self->poll_connect();
  } else {
    self->read_results();
  }
}

void PgAsync::poll_connect() {
  switch (PQconnectPoll(conn_.get())) {
    case PGRES_POLLING_READING:
      wait_for(EV_READ);
      return;
    case PGRES_POLLING_WRITING:
      wait_for(EV_WRITE);
      return;
    case PGRES_POLLING_OK:
      connecting_ = false;
      if (late_) {  // connected after the caller gave up: ready for the next run()
        io_.reset();
        finish(PgResult{});
        return;
      }
      send_query();
      return;
    case PGRES_POLLING_FAILED:
    default: {
      lost();
      return;
    }
  }
}

void PgAsync::send_query() {
  int sent = 0;
  if (params_) {
    std::vector<const char*> values;
    values.reserve(params_->size());
    for (const std::string& v : *params_) values.push_back(v.c_str());
    sent = PQsendQueryParams(conn_.get(), sql_.c_str(), static_cast<int>(values.size()), nullptr, values.data(),
                             nullptr, nullptr, 0);
  } else {
    sent = PQsendQuery(conn_.get(), sql_.c_str());
  }
  if (sent != 1) {
    lost();
    return;
  }
  // Small queries leave libpq's buffer at once; if not, the flush completes as we read.
  while (PQflush(conn_.get()) == 1) {
  }
  wait_for(EV_READ);
}

void PgAsync::read_results() {
  if (PQconsumeInput(conn_.get()) != 1) {
    lost();
    return;
  }
  while (!PQisBusy(conn_.get())) {
    PGresult* res = PQgetResult(conn_.get());
    if (res == nullptr) {
      PgResult r = std::move(partial_);
      if (r.error.empty()) r.ok = true;
      io_.reset();
      finish(std::move(r));
      return;
    }
    const ExecStatusType st = PQresultStatus(res);
    if (st == PGRES_TUPLES_OK) {
      partial_.rows.clear();
      const int nrows = PQntuples(res);
      const int ncols = PQnfields(res);
      for (int i = 0; i < nrows; ++i) {
        std::vector<std::optional<std::string>> row;
        row.reserve(ncols);
        for (int j = 0; j < ncols; ++j) {
          if (PQgetisnull(res, i, j)) {
            row.emplace_back(std::nullopt);
          } else {
            row.emplace_back(std::string(PQgetvalue(res, i, j), PQgetlength(res, i, j)));
          }
        }
        partial_.rows.push_back(std::move(row));
      }
    } else if (st != PGRES_COMMAND_OK && st != PGRES_EMPTY_QUERY) {
      if (partial_.error.empty()) {
        partial_.error = one_line(PQresultErrorMessage(res));
        const char* state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
        partial_.sqlstate = state ? state : "";
      }
    }
    PQclear(res);
  }
  wait_for(EV_READ);
  if (PQstatus(conn_.get()) == CONNECTION_BAD) {
    lost();
  }
}

void PgAsync::on_timeout(evutil_socket_t, short what, void* arg) {
  auto* self = static_cast<PgAsync*>(arg);
  if (what & EV_READ) {  // a deferred connect failure from start_connect()
    PgResult r = std::move(self->partial_);
    self->finish(std::move(r));
    return;
  }
  // The answer may be waiting in the socket: on a starved machine the deadline and the answer
  // can become ready in the same turn of the loop, and the timer may run first.
  if (!self->connecting_ && self->conn_) {
    self->read_results();
    if (!self->cb_) return;  // it finished, with the answer or with the connection lost
  }
  PgResult r;
  r.timed_out = true;
  r.error = self->connecting_ ? "timeout while connecting" : "timeout waiting for the query";
  if (self->patience_.count() > 0 && self->conn_) {
    // Keep it: the answer (or the end of the connect) is read and dropped when it comes.
    Callback cb = std::move(self->cb_);
    self->cb_ = nullptr;
    self->late_ = true;
    const timeval tv{static_cast<time_t>(self->patience_.count() / 1000),
                     static_cast<suseconds_t>((self->patience_.count() % 1000) * 1000)};
    evtimer_add(self->patience_timer_.get(), &tv);
    if (cb) cb(r);
    return;
  }
  // A hung server cannot be cancelled over a new connection either: drop ours.
  self->close();
  self->finish(std::move(r));
}

void PgAsync::on_patience_over(evutil_socket_t, short, void* arg) {
  auto* self = static_cast<PgAsync*>(arg);
  if (self->late_) self->close();  // a hung server: a new connection next time
}

// The connection is gone: report libpq's reason and drop it.
void PgAsync::lost() {
  PgResult r;
  r.connection_lost = true;
  r.error = one_line(PQerrorMessage(conn_.get()));
  close();
  finish(std::move(r));
}

void PgAsync::finish(PgResult r) {
  evtimer_del(timer_.get());
  if (late_) {
    late_ = false;  // the late answer: nobody waits for it any more
    evtimer_del(patience_timer_.get());
  }
  Callback cb = std::move(cb_);
  cb_ = nullptr;
  if (cb) cb(r);
}

}  // namespace pgkeel::health
