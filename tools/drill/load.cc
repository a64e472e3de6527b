// tools/drill/load.cc — the drill's client threads. Every statement is sent asynchronously and
// bounded by a client-side timeout, so a commit waiting for a vanished synchronous standby or a
// SIGSTOPped primary cannot hang the drill.
#include "tools/drill/load.h"

#include <poll.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <random>
#include <string_view>

namespace pgkeel::drill {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
using ledger::EventKind;
using ledger::Phase;
using ledger::PgConnPtr;
using ledger::PgResultPtr;
using ledger::ignore_notice;
using ledger::kMaxRun;
using ledger::collect_until;
using ledger::one_line;

constexpr const char* kInsertSql = "INSERT INTO pgkeel_ledger (id, client, payload) VALUES ($1::bigint, $2::int, $3)";
constexpr const char* kReadSql = "SELECT count(*) FROM pgkeel_ledger WHERE id = $1::bigint";

struct Step {
  bool ok = false;
  bool lost = false;
  bool timed_out = false;
  std::string sqlstate;
  std::string message;
  PgResultPtr result;
};

// One statement: plain SQL, or a prepared statement (name non-null) with text parameters.
Step run_step(PGconn* conn, const char* sql, const char* prepared_name, const std::vector<std::string>& params,
              ExecStatusType want, const char* want_tag, milliseconds timeout) {
  Step s;
  std::vector<const char*> values;
  for (const auto& p : params) {
    values.push_back(p.c_str());
  }
  const int n = static_cast<int>(values.size());
  int sent = 0;
  if (prepared_name != nullptr) {
    sent = PQsendQueryPrepared(conn, prepared_name, n, values.data(), nullptr, nullptr, 0);
  } else if (n > 0) {
    sent = PQsendQueryParams(conn, sql, n, nullptr, values.data(), nullptr, nullptr, 0);
  } else {
    sent = PQsendQuery(conn, sql);
  }
  if (sent == 0) {
    s.lost = true;
    s.message = one_line(PQerrorMessage(conn));
    return s;
  }
  const auto give_up = timeout.count() > 0 ? Clock::now() + timeout : Clock::time_point::max();
  s.result = collect_until(conn, give_up, s.timed_out);
  if (s.timed_out) {
    s.lost = true;
    s.message = "no answer within " + std::to_string(timeout.count()) + " ms: connection abandoned";
    return s;
  }
  s.lost = PQstatus(conn) != CONNECTION_OK;
  const bool status_ok = s.result && PQresultStatus(s.result.get()) == want;
  if (status_ok && (want_tag == nullptr || std::string_view(PQcmdStatus(s.result.get())) == want_tag)) {
    s.ok = true;
    return s;
  }
  if (status_ok) {
    s.sqlstate = "25P02";  // COMMIT answered ROLLBACK: nothing was committed
    s.message = std::string("answered ") + PQcmdStatus(s.result.get());
    return s;
  }
  if (s.result) {
    const char* code = PQresultErrorField(s.result.get(), PG_DIAG_SQLSTATE);
    s.sqlstate = code != nullptr ? code : "";
    s.message = one_line(PQresultErrorMessage(s.result.get()));
  } else if (!s.lost) {
    s.lost = true;
  }
  if (s.message.empty()) {
    s.message = one_line(PQerrorMessage(conn));
  }
  return s;
}

}  // namespace

struct Load::Client {
  int index = 0;
  std::mutex mu;  // guards ops and cursor against live()
  std::vector<Op> ops;
  std::size_t cursor = 0;  // live() has seen ops[0, cursor)
  std::vector<ledger::Segment> writes;
  std::vector<ErrorRow> errors;
};

Load::Load(LoadOptions options) : options_(std::move(options)) {}

Load::~Load() {
  stop();
  for (auto& t : threads_) {
    if (t.joinable()) {
      t.join();
    }
  }
}

std::int64_t Load::now_ms() const {
  return std::chrono::duration_cast<milliseconds>(Clock::now() - t0_).count();
}

ledger::Status Load::start(milliseconds start_timeout) {
  if (options_.clients < 1 || options_.clients > ledger::kMaxClients) {
    return {"clients must be 1.." + std::to_string(ledger::kMaxClients)};
  }
  // txid_current() makes the statement a write, so the run number is replicated like any commit.
  const auto deadline = Clock::now() + start_timeout;
  std::string last_error;
  while (true) {
    PgConnPtr conn = ledger::connect(options_.conninfo);
    if (conn && PQstatus(conn.get()) == CONNECTION_OK) {
      bool timed_out = false;
      if (PQsendQuery(conn.get(), "SELECT nextval('pgkeel_ledger_run'), txid_current()") != 0) {
        PgResultPtr res = collect_until(conn.get(), deadline, timed_out);
        if (res && PQresultStatus(res.get()) == PGRES_TUPLES_OK && PQntuples(res.get()) == 1) {
          const std::string_view v = PQgetvalue(res.get(), 0, 0);
          auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), run_);
          if (ec != std::errc() || end != v.data() + v.size() || run_ < 1 || run_ > kMaxRun) {
            return {"unexpected run number '" + std::string(v) + "'"};
          }
          break;
        }
        last_error = timed_out ? std::string("no answer") : res ? one_line(PQresultErrorMessage(res.get())) : "?";
      }
    } else {
      last_error = conn ? one_line(PQerrorMessage(conn.get())) : "out of memory";
    }
    if (Clock::now() > deadline) {
      return {"taking a run number: " + last_error};
    }
    std::this_thread::sleep_for(milliseconds(200));
  }
  id_base_ = run_ * ledger::kRunStride;
  t0_ = Clock::now();
  started_at_unix_ms_ =
      std::chrono::duration_cast<milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
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

void Load::client_loop(Client& c) {
  const auto deadline = t0_ + options_.duration;
  std::optional<Clock::duration> interval;
  auto next = t0_;
  if (options_.rate > 0) {
    interval = std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(options_.clients / options_.rate));
    next += *interval * c.index / options_.clients;
  }
  std::mt19937_64 rng(static_cast<std::uint64_t>(c.index) * 7919 + 17);
  std::uniform_real_distribution<double> coin(0.0, 1.0);
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
  auto record = [&](OpKind kind, Clock::time_point began) {
    const auto end = Clock::now();
    const Op op{std::chrono::duration_cast<milliseconds>(end - t0_).count(),
                static_cast<std::int32_t>(std::min<std::int64_t>(
                    std::chrono::duration_cast<std::chrono::microseconds>(end - began).count(), INT32_MAX)),
                kind};
    if (op.error()) {
      errors_total_.fetch_add(1);
    }
    std::lock_guard lock(c.mu);
    c.ops.push_back(op);
    return op.t_ms;
  };

  PgConnPtr conn;
  std::int64_t seq = 0;
  std::int64_t last_acked_id = 0;
  auto backoff = options_.backoff_min;
  auto drop = [&] {
    conn.reset();
    pause_until(Clock::now() + backoff);
    backoff = std::min(backoff * 2, options_.backoff_max);
  };
  while (!stop_.load() && Clock::now() < deadline) {
    if (!conn) {
      const auto began = Clock::now();
      conn = ledger::connect(options_.conninfo);
      bool ok = conn && PQstatus(conn.get()) == CONNECTION_OK;
      std::string message = conn ? one_line(PQerrorMessage(conn.get())) : "out of memory";
      if (ok && options_.prepared) {
        PQsetNoticeReceiver(conn.get(), ignore_notice, nullptr);
        for (const auto& [name, sql] : {std::pair{"drill_insert", kInsertSql}, std::pair{"drill_read", kReadSql}}) {
          PgResultPtr res(PQprepare(conn.get(), name, sql, 0, nullptr));
          if (!res || PQresultStatus(res.get()) != PGRES_COMMAND_OK) {
            ok = false;
            message = res ? one_line(PQresultErrorMessage(res.get())) : one_line(PQerrorMessage(conn.get()));
            break;
          }
        }
      }
      if (!ok) {
        const std::int64_t t = record(OpKind::kConnectFailed, began);
        const std::string sqlstate = ledger::connect_failure_sqlstate(message);
        add_error(c.errors, "connect", sqlstate, t, 1, message);
        ledger::append_event(c.writes, {c.index, EventKind::kConnectFailed, Phase::kConnect, sqlstate, 0, t},
                             options_.split_gap_ms);
        drop();
        continue;
      }
      PQsetNoticeReceiver(conn.get(), ignore_notice, nullptr);
    }
    if (interval) {
      if (!pause_until(next)) {
        break;
      }
      next += *interval;
      if (next < Clock::now() - *interval) {
        next = Clock::now();
      }
    }
    if (stop_.load() || Clock::now() >= deadline) {
      break;
    }
    const bool write = last_acked_id == 0 || coin(rng) < options_.write_ratio;
    const auto began = Clock::now();
    if (!write) {
      const std::vector<std::string> params{std::to_string(last_acked_id)};
      Step s = run_step(conn.get(), kReadSql, options_.prepared ? "drill_read" : nullptr, params, PGRES_TUPLES_OK,
                        nullptr, options_.statement_timeout);
      const std::int64_t t = record(s.ok ? OpKind::kReadOk : OpKind::kReadFailed, began);
      if (s.ok) {
        backoff = options_.backoff_min;
        continue;
      }
      add_error(c.errors, "read", s.timed_out ? "timeout" : s.sqlstate.empty() ? "08006" : s.sqlstate, t, 1,
                s.message);
      drop();
      continue;
    }
    if (seq + 1 >= ledger::kClientStride) {
      break;
    }
    ++seq;
    const std::int64_t id = ledger::ledger_id(id_base_, c.index, seq);
    const std::vector<std::string> params{std::to_string(id), std::to_string(c.index),
                                          "c" + std::to_string(c.index) + " s" + std::to_string(seq)};
    struct Planned {
      bool insert;
      const char* sql;
      const char* tag;
      Phase phase;
    };
    const Planned autocommit[] = {{true, kInsertSql, "INSERT 0 1", Phase::kCommit}};
    const Planned tx[] = {{false, "BEGIN", nullptr, Phase::kStatement},
                          {true, kInsertSql, "INSERT 0 1", Phase::kStatement},
                          {false, "COMMIT", "COMMIT", Phase::kCommit}};
    const Planned* steps = options_.explicit_tx ? tx : autocommit;
    const std::size_t n = options_.explicit_tx ? std::size(tx) : std::size(autocommit);
    bool acked = true;
    for (std::size_t i = 0; i < n; ++i) {
      const Planned& p = steps[i];
      Step s = p.insert ? run_step(conn.get(), p.sql, options_.prepared ? "drill_insert" : nullptr, params,
                                   PGRES_COMMAND_OK, p.tag, options_.statement_timeout)
                        : run_step(conn.get(), p.sql, nullptr, {}, PGRES_COMMAND_OK, p.tag, options_.statement_timeout);
      if (s.ok) {
        continue;
      }
      acked = false;
      const ledger::Outcome o = ledger::classify_error(p.phase, s.sqlstate, s.lost);
      std::string sqlstate = s.timed_out ? "timeout" : s.sqlstate.empty() ? (s.lost ? "08006" : "XX000") : s.sqlstate;
      const OpKind kind = o == ledger::Outcome::kFailed ? OpKind::kWriteFailed : OpKind::kWriteUnknown;
      const std::int64_t t = record(kind, began);
      ledger::append_event(c.writes, {c.index, ledger::event_kind(o), p.phase, sqlstate, seq, t},
                           options_.split_gap_ms);
      add_error(c.errors, ledger::to_string(p.phase), sqlstate, t, 1, s.message);
      break;
    }
    if (acked) {
      const std::int64_t t = record(OpKind::kWriteAck, began);
      ledger::append_event(c.writes, {c.index, EventKind::kAcknowledged, Phase::kCommit, "", seq, t},
                           options_.split_gap_ms);
      last_acked_id = id;
      backoff = options_.backoff_min;
      continue;
    }
    drop();
  }
  conn.reset();
  running_.fetch_sub(1);
}

LiveSecond Load::live() {
  LiveSecond l;
  l.t_ms = now_ms();
  std::vector<std::int32_t> lat;
  for (auto& c : clients_) {
    std::lock_guard lock(c->mu);
    for (std::size_t i = c->cursor; i < c->ops.size(); ++i) {
      if (c->ops[i].ok()) {
        lat.push_back(c->ops[i].latency_us);
      }
    }
    c->cursor = c->ops.size();
  }
  const LatencySummary s = summarize_latency(lat);
  l.ops = s.count;
  l.p50_ms = s.p50;
  l.p99_ms = s.p99;
  l.errors_total = errors_total_.load();
  return l;
}

void Load::finish(Recording& into) {
  for (auto& t : threads_) {
    if (t.joinable()) {
      t.join();
    }
  }
  into.run = run_;
  into.id_base = id_base_;
  into.clients = options_.clients;
  into.explicit_tx = options_.explicit_tx;
  into.prepared = options_.prepared;
  into.write_ratio = options_.write_ratio;
  into.rate = options_.rate;
  into.started_at_unix_ms = started_at_unix_ms_;
  into.elapsed_ms = now_ms();
  for (auto& c : clients_) {
    std::lock_guard lock(c->mu);
    into.ops.insert(into.ops.end(), c->ops.begin(), c->ops.end());
    into.writes.insert(into.writes.end(), c->writes.begin(), c->writes.end());
    for (const auto& e : c->errors) {
      add_error(into.errors, e.phase, e.sqlstate, e.first_t_ms, e.count, e.example);
      add_error(into.errors, e.phase, e.sqlstate, e.last_t_ms, 0, e.example);
    }
  }
  std::sort(into.errors.begin(), into.errors.end(),
            [](const ErrorRow& a, const ErrorRow& b) { return a.first_t_ms < b.first_t_ms; });
}

}  // namespace pgkeel::drill
