// tools/ledger/ledger.cc — the ledger's libpq half: setup, the writer's client threads, and
// reading a run's ids back for verification. One libpq connection per client thread; every
// statement is bounded by a client-side timeout.
#include "tools/ledger/ledger.h"

#include <poll.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <string_view>
#include <utility>

namespace pgkeel::ledger {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

}  // namespace

void ignore_notice(void* /*arg*/, const PGresult* /*res*/) {}

std::string one_line(std::string_view message) {
  std::string out;
  bool space = false;
  for (const char c : message) {
    if (c == '\n' || c == '\t' || c == '\r' || c == ' ') {
      space = !out.empty();
      continue;
    }
    if (space) {
      out.push_back(' ');
      space = false;
    }
    out.push_back(c);
    if (out.size() >= 240) {
      out += "...";
      break;
    }
  }
  return out;
}

PgResultPtr collect_until(PGconn* conn, Clock::time_point give_up, bool& timed_out) {
  timed_out = false;
  PgResultPtr kept;
  while (true) {
    while (PQisBusy(conn) != 0) {
      const auto now = Clock::now();
      if (now >= give_up) {
        timed_out = true;
        return nullptr;
      }
      const auto wait = std::min<Clock::duration>(give_up - now, milliseconds(100));
      pollfd p{PQsocket(conn), POLLIN, 0};
      if (p.fd < 0 ||
          (poll(&p, 1, static_cast<int>(std::chrono::ceil<milliseconds>(wait).count())) < 0 &&
           errno != EINTR)) {
        break;  // PQgetResult reports the broken connection
      }
      if (PQconsumeInput(conn) == 0) {
        break;
      }
    }
    PgResultPtr res(PQgetResult(conn));
    if (!res) {
      return kept;
    }
    const bool kept_error = kept && (PQresultStatus(kept.get()) == PGRES_FATAL_ERROR ||
                                     PQresultStatus(kept.get()) == PGRES_BAD_RESPONSE);
    if (!kept_error) {
      kept = std::move(res);
    }
    if (PQstatus(conn) == CONNECTION_BAD) {
      return kept;
    }
  }
}

namespace {

std::string_view result_sqlstate(const PGresult* res) {
  const char* code = res != nullptr ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : nullptr;
  return code != nullptr ? code : "";
}

bool connected_ok(PGconn* conn) { return conn != nullptr && PQstatus(conn) == CONNECTION_OK; }

std::string conn_error(PGconn* conn) {
  return conn == nullptr ? std::string("out of memory") : one_line(PQerrorMessage(conn));
}

// Sends sql and collects its results, giving up at `give_up` (a server that never answers, such
// as a commit waiting for a synchronous standby that is gone, must not hang the writer). Returns
// the first error result, else the last result; null and timed_out when it gave up, after which
// the connection must be dropped. A connection that breaks yields libpq's error result.
PgResultPtr exec_until(PGconn* conn, const char* sql, Clock::time_point give_up, bool& timed_out) {
  timed_out = false;
  if (PQsendQuery(conn, sql) == 0) {
    return nullptr;
  }
  return collect_until(conn, give_up, timed_out);
}

// One statement's result. sqlstate is the server's, or empty when it sent none.
struct Step {
  bool ok = false;
  bool lost = false;  // the connection is gone afterwards (or abandoned)
  bool timed_out = false;
  std::string sqlstate;
  std::string message;
};

// Runs sql; success means PGRES_COMMAND_OK and, when want_tag is given, that command tag.
Step exec_step(PGconn* conn, const char* sql, const char* want_tag, Clock::time_point give_up,
               milliseconds timeout) {
  Step s;
  PgResultPtr res = exec_until(conn, sql, give_up, s.timed_out);
  if (s.timed_out) {
    s.lost = true;
    s.message = "no answer within " + std::to_string(timeout.count()) +
                " ms (--statement-timeout): connection abandoned";
    return s;
  }
  const bool command_ok = res && PQresultStatus(res.get()) == PGRES_COMMAND_OK;
  s.lost = PQstatus(conn) != CONNECTION_OK;
  if (command_ok && (want_tag == nullptr || std::string_view(PQcmdStatus(res.get())) == want_tag)) {
    s.ok = true;
    return s;
  }
  if (command_ok) {
    // COMMIT answered ROLLBACK: the transaction had already failed, so nothing was committed.
    s.sqlstate = "25P02";
    s.message = std::string("COMMIT answered ") + PQcmdStatus(res.get());
    return s;
  }
  if (res) {
    s.sqlstate = result_sqlstate(res.get());
    s.message = one_line(PQresultErrorMessage(res.get()));
  } else if (!s.lost) {
    s.lost = true;  // nothing came back at all: trust nothing about this connection
  }
  if (s.message.empty()) {
    s.message = conn_error(conn);
  }
  return s;
}

struct AttemptEnd {
  EventKind kind = EventKind::kAcknowledged;
  Phase phase = Phase::kCommit;
  std::string sqlstate;  // as recorded: 08006 for a connection lost without a server error
  std::string message;
};

AttemptEnd attempt(PGconn* conn, bool explicit_tx, std::int64_t id, int client, std::int64_t seq,
                   milliseconds timeout) {
  char insert[192];
  std::snprintf(insert, sizeof insert,
                "INSERT INTO pgkeel_ledger (id, client, payload) VALUES (%lld, %d, 'c%d s%lld')",
                static_cast<long long>(id), client, client, static_cast<long long>(seq));
  struct Planned {
    const char* sql;
    const char* want_tag;
    Phase phase;
  };
  const Planned autocommit[] = {{insert, "INSERT 0 1", Phase::kCommit}};
  const Planned tx[] = {{"BEGIN", nullptr, Phase::kStatement},
                        {insert, "INSERT 0 1", Phase::kStatement},
                        {"COMMIT", "COMMIT", Phase::kCommit}};
  const Planned* steps = explicit_tx ? tx : autocommit;
  const std::size_t n = explicit_tx ? std::size(tx) : std::size(autocommit);
  for (std::size_t i = 0; i < n; ++i) {
    const auto give_up = timeout.count() > 0 ? Clock::now() + timeout : Clock::time_point::max();
    Step s = exec_step(conn, steps[i].sql, steps[i].want_tag, give_up, timeout);
    if (s.ok) {
      continue;
    }
    const Outcome o = classify_error(steps[i].phase, s.sqlstate, s.lost);
    AttemptEnd end{event_kind(o), steps[i].phase, std::move(s.sqlstate), std::move(s.message)};
    if (s.timed_out) {
      end.sqlstate = "timeout";
    } else if (end.sqlstate.empty()) {
      end.sqlstate = s.lost ? "08006" : "XX000";
    }
    return end;
  }
  return {};
}

void merge_errors(std::vector<ErrorCount>& into, const std::vector<ErrorCount>& from) {
  for (const auto& e : from) {
    auto it = std::find_if(into.begin(), into.end(), [&](const ErrorCount& x) {
      return x.phase == e.phase && x.sqlstate == e.sqlstate;
    });
    if (it == into.end()) {
      into.push_back(e);
      continue;
    }
    it->count += e.count;
    if (e.first_t_ms < it->first_t_ms) {
      it->first_t_ms = e.first_t_ms;
      it->example = e.example;
    }
    it->last_t_ms = std::max(it->last_t_ms, e.last_t_ms);
  }
}

}  // namespace

PgConnPtr connect(const std::string& conninfo) {
  // Later keywords override earlier ones, and the expanded dbname comes last: the caller's
  // conninfo wins over every default here.
  const char* const keys[] = {"connect_timeout",     "keepalives",       "keepalives_idle",
                              "keepalives_interval", "keepalives_count", "tcp_user_timeout",
                              "application_name",    "dbname",           nullptr};
  const char* const values[] = {
      "3", "1", "2", "1", "3", "5000", "pgkeel-ledger", conninfo.c_str(), nullptr};
  return PgConnPtr(PQconnectdbParams(keys, values, /*expand_dbname=*/1));
}

Status setup(const std::string& conninfo, bool truncate) {
  PgConnPtr conn = connect(conninfo);
  if (!connected_ok(conn.get())) {
    return {"connect: " + conn_error(conn.get())};
  }
  PQsetNoticeReceiver(conn.get(), ignore_notice, nullptr);
  std::string sql =
      "CREATE TABLE IF NOT EXISTS pgkeel_ledger (id bigint NOT NULL, client int NOT NULL, "
      "written_at timestamptz NOT NULL DEFAULT now(), payload text);"
      "CREATE INDEX IF NOT EXISTS pgkeel_ledger_id ON pgkeel_ledger (id);"
      "CREATE SEQUENCE IF NOT EXISTS pgkeel_ledger_run;";
  if (truncate) {
    sql += "TRUNCATE pgkeel_ledger;";
  }
  PgResultPtr res(PQexec(conn.get(), sql.c_str()));
  if (!res || PQresultStatus(res.get()) != PGRES_COMMAND_OK) {
    return {"setup: " + (res ? one_line(PQresultErrorMessage(res.get())) : conn_error(conn.get()))};
  }
  return {};
}

struct Writer::Client {
  int index = 0;
  std::vector<Segment> timeline;
  std::vector<ErrorCount> errors;
};

Writer::Writer(WriterOptions options) : options_(std::move(options)) {}

Writer::~Writer() {
  stop();
  if (!joined_) {
    for (auto& t : threads_) {
      if (t.joinable()) {
        t.join();
      }
    }
  }
}

std::int64_t Writer::now_ms() const {
  return std::chrono::duration_cast<milliseconds>(Clock::now() - t0_).count();
}

Status Writer::start() {
  if (options_.clients < 1 || options_.clients > kMaxClients) {
    return {"clients must be 1.." + std::to_string(kMaxClients)};
  }
  if (!threads_.empty()) {
    return {"already started"};
  }
  // A run number from the sequence. txid_current() gives the statement's transaction an xid,
  // so its commit is flushed (and, with synchronous replication, replicated) like any write:
  // a failover cannot hand the same run number out twice. On a standby it fails with 25006.
  const auto deadline = Clock::now() + options_.start_timeout;
  std::string last_error;
  while (true) {
    PgConnPtr conn = connect(options_.conninfo);
    if (connected_ok(conn.get())) {
      bool timed_out = false;
      PgResultPtr res = exec_until(
          conn.get(), "SELECT nextval('pgkeel_ledger_run'), txid_current()", deadline, timed_out);
      if (res && PQresultStatus(res.get()) == PGRES_TUPLES_OK && PQntuples(res.get()) == 1) {
        const std::string_view v = PQgetvalue(res.get(), 0, 0);
        auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), run_);
        if (ec != std::errc() || end != v.data() + v.size() || run_ < 1 || run_ > kMaxRun) {
          return {"unexpected run number '" + std::string(v) + "'"};
        }
        break;
      }
      last_error = timed_out ? std::string("no answer (is a synchronous standby missing?)")
                   : res     ? one_line(PQresultErrorMessage(res.get()))
                             : conn_error(conn.get());
      if (result_sqlstate(res.get()) == "42P01") {
        return {"taking a run number: " + last_error + " (run 'pgkeel-ledger setup' first)"};
      }
    } else {
      last_error = conn_error(conn.get());
    }
    if (Clock::now() > deadline) {
      return {"taking a run number: " + last_error};
    }
    std::this_thread::sleep_for(milliseconds(200));
  }
  id_base_ = run_ * kRunStride;

  t0_ = Clock::now();
  started_at_unix_ms_ =
      std::chrono::duration_cast<milliseconds>(std::chrono::system_clock::now().time_since_epoch())
          .count();
  running_.store(options_.clients);
  for (int i = 0; i < options_.clients; ++i) {
    clients_.push_back(std::make_unique<Client>());
    clients_.back()->index = i;
  }
  for (auto& c : clients_) {
    threads_.emplace_back([this, client = c.get()] { client_loop(*client); });
  }
  return {};
}

Progress Writer::progress() const {
  Progress p;
  p.t_ms = threads_.empty() ? 0 : now_ms();
  p.acknowledged = acknowledged_.load();
  p.failed = failed_.load();
  p.unknown = unknown_.load();
  p.connect_failures = connect_failures_.load();
  p.connected = connected_.load();
  p.running = running_.load();
  return p;
}

void Writer::client_loop(Client& c) {
  const auto deadline = options_.duration ? t0_ + *options_.duration : Clock::time_point::max();
  std::optional<Clock::duration> interval;
  auto next = t0_;
  if (options_.rate > 0) {
    interval = std::chrono::duration_cast<Clock::duration>(
        std::chrono::duration<double>(options_.clients / options_.rate));
    next += *interval * c.index / options_.clients;  // spread the clients over one interval
  }
  // Sleeps until `until` in short slices; false when asked to stop meanwhile.
  auto pause_until = [&](Clock::time_point until) {
    until = std::min(until, deadline);
    while (!stop_.load()) {
      const auto now = Clock::now();
      if (now >= until) {
        return true;
      }
      std::this_thread::sleep_for(std::min<Clock::duration>(until - now, milliseconds(20)));
    }
    return false;
  };
  auto record = [&](EventKind kind, Phase phase, const std::string& sqlstate, std::int64_t seq,
                    std::string_view message) {
    const std::int64_t t = now_ms();
    append_event(c.timeline, {c.index, kind, phase, sqlstate, seq, t}, options_.split_gap_ms);
    if (kind != EventKind::kAcknowledged) {
      add_error(c.errors, phase, sqlstate, t, 1, message);
    }
    switch (kind) {
      case EventKind::kAcknowledged:
        acknowledged_.fetch_add(1);
        break;
      case EventKind::kFailed:
        failed_.fetch_add(1);
        break;
      case EventKind::kUnknown:
        unknown_.fetch_add(1);
        break;
      case EventKind::kConnectFailed:
        connect_failures_.fetch_add(1);
        break;
    }
  };

  PgConnPtr conn;
  std::int64_t seq = 0;
  auto backoff = options_.backoff_min;
  while (!stop_.load() && Clock::now() < deadline) {
    if (!conn) {
      conn = connect(options_.conninfo);
      if (!connected_ok(conn.get())) {
        const std::string message = conn_error(conn.get());
        record(EventKind::kConnectFailed, Phase::kConnect, connect_failure_sqlstate(message), 0,
               message);
        conn.reset();
        pause_until(Clock::now() + backoff);
        backoff = std::min(backoff * 2, options_.backoff_max);
        continue;
      }
      PQsetNoticeReceiver(conn.get(), ignore_notice, nullptr);
      connected_.fetch_add(1);
    }
    if (interval) {
      if (!pause_until(next)) {
        break;
      }
      next += *interval;
      if (next < Clock::now() - *interval) {
        next = Clock::now();  // fell behind (an outage): carry on at the rate, not in a burst
      }
    }
    if (stop_.load() || Clock::now() >= deadline) {
      break;
    }
    if (options_.count && claimed_.fetch_add(1) >= *options_.count) {
      break;
    }
    if (seq + 1 >= kClientStride) {
      break;  // this client's id space is used up
    }
    ++seq;
    AttemptEnd end = attempt(conn.get(), options_.explicit_tx, ledger_id(id_base_, c.index, seq),
                             c.index, seq, options_.statement_timeout);
    record(end.kind, end.phase, end.sqlstate, seq, end.message);
    if (end.kind == EventKind::kAcknowledged) {
      backoff = options_.backoff_min;
      continue;
    }
    conn.reset();
    connected_.fetch_sub(1);
    pause_until(Clock::now() + backoff);
    backoff = std::min(backoff * 2, options_.backoff_max);
  }
  if (conn) {
    connected_.fetch_sub(1);
  }
  running_.fetch_sub(1);
}

RunReport Writer::wait() {
  for (auto& t : threads_) {
    if (t.joinable()) {
      t.join();
    }
  }
  joined_ = true;
  RunReport r;
  r.run = run_;
  r.id_base = id_base_;
  r.clients = options_.clients;
  r.explicit_tx = options_.explicit_tx;
  r.rate = options_.rate;
  r.split_gap_ms = options_.split_gap_ms;
  r.started_at_unix_ms = started_at_unix_ms_;
  r.elapsed_ms = threads_.empty() ? 0 : now_ms();
  for (auto& c : clients_) {
    r.timeline.insert(r.timeline.end(), c->timeline.begin(), c->timeline.end());
    merge_errors(r.errors, c->errors);
  }
  std::sort(r.errors.begin(), r.errors.end(),
            [](const ErrorCount& a, const ErrorCount& b) { return a.first_t_ms < b.first_t_ms; });
  return r;
}

Verdict verify(const std::string& conninfo, const AttemptIds& ids, IdRange id_range) {
  Verdict failed_verdict;
  failed_verdict.acknowledged = total_size(ids.acknowledged);
  failed_verdict.failed = total_size(ids.failed);
  failed_verdict.unknown = total_size(ids.unknown);
  PgConnPtr conn = connect(conninfo);
  if (!connected_ok(conn.get())) {
    failed_verdict.error = "connect: " + conn_error(conn.get());
    return failed_verdict;
  }
  PQsetNoticeReceiver(conn.get(), ignore_notice, nullptr);
  const std::string first = std::to_string(id_range.first);
  const std::string last = std::to_string(id_range.last);
  const char* params[] = {first.c_str(), last.c_str()};
  PgResultPtr res(PQexecParams(
      conn.get(),
      "SELECT id, count(*) FROM pgkeel_ledger WHERE id BETWEEN $1::bigint AND $2::bigint "
      "GROUP BY id",
      2, nullptr, params, nullptr, nullptr, 0));
  if (!res || PQresultStatus(res.get()) != PGRES_TUPLES_OK || PQnfields(res.get()) != 2) {
    failed_verdict.error = "reading ids: " + (res ? one_line(PQresultErrorMessage(res.get()))
                                                  : conn_error(conn.get()));
    return failed_verdict;
  }
  std::vector<FoundId> found;
  const int rows = PQntuples(res.get());
  found.reserve(static_cast<std::size_t>(rows));
  for (int i = 0; i < rows; ++i) {
    FoundId f;
    bool good = true;
    for (int col = 0; col < 2; ++col) {
      const char* v = PQgetvalue(res.get(), i, col);
      const char* end = v + PQgetlength(res.get(), i, col);
      auto [p, ec] = std::from_chars(v, end, col == 0 ? f.id : f.copies);
      good = good && ec == std::errc() && p == end;
    }
    if (!good) {
      failed_verdict.error = "reading ids: row " + std::to_string(i) + " is not two integers";
      return failed_verdict;
    }
    found.push_back(f);
  }
  return judge(ids, std::move(found));
}

}  // namespace pgkeel::ledger
