// tools/drill/load.h — the drill's load: N client threads through pgkeel, each on its own libpq
// connection, mixing ledger writes (uniquely numbered rows, each attempt's outcome recorded as
// the ledger does) and reads; errors classified by SQLSTATE and phase; a client that errors
// reconnects and carries on, as an application server does.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "tools/drill/report.h"
#include "tools/ledger/ledger.h"

namespace pgkeel::drill {

struct LoadOptions {
  std::string conninfo;
  int clients = 4;
  std::chrono::milliseconds duration{20'000};
  double rate = 0;           // operations per second over all clients; 0 = as fast as they go
  double write_ratio = 1.0;  // share of operations that are writes
  bool explicit_tx = false;  // BEGIN; INSERT; COMMIT instead of an autocommit INSERT
  bool prepared = false;     // PQprepare once per connection, then PQexecPrepared
  std::int64_t split_gap_ms = 10;
  std::chrono::milliseconds statement_timeout{10'000};
  std::chrono::milliseconds backoff_min{10};
  std::chrono::milliseconds backoff_max{200};
};

// What the live view shows: totals so far, and the last whole second.
struct LiveSecond {
  std::int64_t t_ms = 0;
  std::int64_t ops = 0;  // succeeded in the last second
  std::int64_t errors_total = 0;
  double p50_ms = 0, p99_ms = 0;
};

class Load {
 public:
  explicit Load(LoadOptions options);
  ~Load();
  Load(const Load&) = delete;
  Load& operator=(const Load&) = delete;

  // Takes a run number (so ids never repeat across runs), then starts the clients. t = 0 is now.
  ledger::Status start(std::chrono::milliseconds start_timeout);
  std::int64_t now_ms() const;
  std::int64_t started_at_unix_ms() const { return started_at_unix_ms_; }
  std::chrono::steady_clock::time_point t0() const { return t0_; }
  void stop() { stop_.store(true); }
  bool finished() const { return running_.load() == 0; }
  // The ops that ended since the last call (any thread may call it, one at a time).
  LiveSecond live();
  // Joins the clients and moves what they did into the recording.
  void finish(Recording& into);

 private:
  struct Client;
  void client_loop(Client& c);

  LoadOptions options_;
  std::int64_t run_ = 0;
  std::int64_t id_base_ = 0;
  std::chrono::steady_clock::time_point t0_{};
  std::int64_t started_at_unix_ms_ = 0;
  std::vector<std::unique_ptr<Client>> clients_;
  std::vector<std::thread> threads_;
  std::atomic<bool> stop_{false};
  std::atomic<int> running_{0};
  std::atomic<std::int64_t> errors_total_{0};
};

}  // namespace pgkeel::drill
