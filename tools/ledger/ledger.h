// tools/ledger/ledger.h — the ledger: uniquely numbered rows written by many clients, each
// attempt's outcome recorded (acknowledged / failed / unknown), then checked against what the
// surviving primary holds. Tests and the failover drill use it to prove no acknowledged commit
// was lost. This file is the libpq half; the pure half is outcome.h and report.h.
//
// The table (setup creates it; no unique constraint on purpose, so duplicates stay visible):
//   pgkeel_ledger (id bigint NOT NULL, client int NOT NULL,
//                  written_at timestamptz NOT NULL DEFAULT now(), payload text)
//   plus a plain (non-unique) index on id, and the sequence pgkeel_ledger_run that numbers runs.
// Ids are run * 10^12 + client * 10^9 + seq (seq from 1 per client): unique across clients and
// across runs against one setup. An id is used by exactly one attempt and never retried, so an
// id found twice means something between the client and the table replayed a commit.
//
// The run file (JSON, one object; times are steady-clock ms since the run started):
//   format              "pgkeel-ledger-run/1"
//   run, id_base        the run number, and run * 10^12
//   id_range            [first, last]: every id this run could use (verify reads only these)
//   clients, mode       client count; "autocommit" or "tx" (BEGIN; INSERT; COMMIT)
//   rate                target attempts per second over all clients, 0 = as fast as possible
//   split_gap_ms        timeline precision (see below)
//   started_at_unix_ms  wall clock at t = 0, to place outside events (a kill) on the timeline
//   elapsed_ms          run length
//   counts              {attempts, acknowledged, failed, unknown, connect_failures}
//   errors              [{phase, sqlstate, count, first_t_ms, last_t_ms, example}], phase one of
//                       "connect", "statement" (BEGIN or the INSERT inside it), "commit" (COMMIT
//                       or the autocommit INSERT). A connection lost without a server error is
//                       recorded as 08006, a statement abandoned after --statement-timeout as
//                       "timeout"; connect failures get a SQLSTATE derived from libpq's message
//                       (57P03, 53300, 28P01 ...) or 08001.
//   ids                 {acknowledged, failed, unknown}: sorted merged ranges [[first, last], ...]
//   timeline_fields     the names of a timeline row's columns, in order:
//   timeline            [[t_first_ms, t_last_ms, client, outcome, phase, sqlstate, first_seq,
//                       count], ...]: one row per run of one client's consecutive events of the
//                       same outcome ("acknowledged", "failed", "unknown", "connect_failed"),
//                       phase and SQLSTATE, none more than split_gap_ms after the previous one.
//                       Connect failures have first_seq 0 and use no id.
// Only id_range and ids are required on input, so other tools can have their outcomes verified.
#pragma once

#include <libpq-fe.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "tools/ledger/outcome.h"
#include "tools/ledger/report.h"

namespace pgkeel::ledger {

// The highest run number: run * kRunStride must fit an int64.
inline constexpr std::int64_t kMaxRun = 9'000'000;

// libpq's messages span lines ("connection to server ... failed: ...\n\tIs the server ...");
// one line, bounded, is what a report wants.
std::string one_line(std::string_view message);

// A notice receiver that drops notices (the load must not print).
void ignore_notice(void* arg, const PGresult* res);

struct PgConnDeleter {
  void operator()(PGconn* conn) const { PQfinish(conn); }
};
struct PgResultDeleter {
  void operator()(PGresult* res) const { PQclear(res); }
};
using PgConnPtr = std::unique_ptr<PGconn, PgConnDeleter>;
using PgResultPtr = std::unique_ptr<PGresult, PgResultDeleter>;

// Waits for the results of what was already sent on `conn`, giving up at `give_up` (a server that
// never answers must not hang a client). Returns the first error result, else the last result;
// null and timed_out when it gave up, after which the connection must be dropped.
PgResultPtr collect_until(PGconn* conn, std::chrono::steady_clock::time_point give_up, bool& timed_out);

struct [[nodiscard]] Status {
  std::string error;  // empty on success
  bool ok() const { return error.empty(); }
};

// Creates the table, its index and the run sequence if absent; with truncate, empties the table.
Status setup(const std::string& conninfo, bool truncate);

// Opens a connection with the ledger's defaults (connect_timeout 3 s, TCP keepalives and
// tcp_user_timeout so a dead peer is noticed in seconds, application_name pgkeel-ledger), each
// of which the conninfo may override.
PgConnPtr connect(const std::string& conninfo);

struct WriterOptions {
  std::string conninfo;
  int clients = 4;
  std::optional<std::chrono::milliseconds> duration;  // stop after this long, or
  std::optional<std::int64_t> count;                  // after this many attempts in all
  double rate = 0;                                    // attempts/s over all clients; 0 = max
  bool explicit_tx = false;                           // BEGIN; INSERT; COMMIT
  std::int64_t split_gap_ms = 10;
  // A statement without an answer this long is abandoned with its connection, its attempt
  // failed or unknown by phase (sqlstate "timeout"); 0 waits forever.
  std::chrono::milliseconds statement_timeout{10'000};
  std::chrono::milliseconds backoff_min{10};  // after an error, doubling while errors repeat
  std::chrono::milliseconds backoff_max{200};
  std::chrono::milliseconds start_timeout{10'000};  // to reach the server for a run number
};

// Live counters, readable from any thread while the writer runs.
struct Progress {
  std::int64_t t_ms = 0;
  std::int64_t acknowledged = 0;
  std::int64_t failed = 0;
  std::int64_t unknown = 0;
  std::int64_t connect_failures = 0;
  int connected = 0;  // clients holding a connection now
  int running = 0;    // clients not yet finished
};

// N client threads, each on its own connection, inserting ledger rows until the duration or
// count is reached or stop() is called. On any error a client drops its connection and
// reconnects after a short bounded backoff, as an application server would.
class Writer {
 public:
  explicit Writer(WriterOptions options);
  ~Writer();
  Writer(const Writer&) = delete;
  Writer& operator=(const Writer&) = delete;

  // Takes a run number from the server (retrying up to start_timeout), then starts the clients.
  Status start();
  Progress progress() const;
  bool finished() const { return running_.load() == 0; }
  // Asks every client to finish its attempt in flight and return.
  void stop() { stop_.store(true); }
  // Joins the clients (call stop() first to end early) and returns what they did.
  RunReport wait();

 private:
  struct Client;
  void client_loop(Client& c);
  std::int64_t now_ms() const;

  WriterOptions options_;
  std::int64_t run_ = 0;
  std::int64_t id_base_ = 0;
  std::chrono::steady_clock::time_point t0_{};
  std::int64_t started_at_unix_ms_ = 0;
  std::vector<std::unique_ptr<Client>> clients_;
  std::vector<std::thread> threads_;
  std::atomic<bool> stop_{false};
  std::atomic<std::int64_t> claimed_{0};  // attempts started, against options_.count
  std::atomic<std::int64_t> acknowledged_{0};
  std::atomic<std::int64_t> failed_{0};
  std::atomic<std::int64_t> unknown_{0};
  std::atomic<std::int64_t> connect_failures_{0};
  std::atomic<int> connected_{0};
  std::atomic<int> running_{0};
  bool joined_ = false;
};

// Reads every id of the run's range from the server and judges it against the attempts.
// Never throws on what the server sends: a connection or query failure is Verdict::error.
Verdict verify(const std::string& conninfo, const AttemptIds& ids, IdRange id_range);

}  // namespace pgkeel::ledger
