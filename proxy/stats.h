// proxy/stats.h — traffic counters and latency histograms. Each worker owns its own set and is
// its only writer (relaxed load + store, no locked instruction on the data path); the main
// thread sums the workers' sets for SHOW STATS and /metrics, and keeps a short history so it can
// also say what happened over the last minute.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <vector>

namespace pgkeel::proxy {

// Fixed capacities, so a worker's counters never move (the main thread reads them while the
// worker writes). The configuration refuses more listeners or nodes than this.
inline constexpr std::size_t kMaxListeners = 32;
inline constexpr std::size_t kMaxNodes = 32;

// A counter with one writing thread.
class Counter {
 public:
  void add(std::uint64_t n) { v_.store(v_.load(std::memory_order_relaxed) + n, std::memory_order_relaxed); }
  std::uint64_t get() const { return v_.load(std::memory_order_relaxed); }

 private:
  std::atomic<std::uint64_t> v_{0};
};

// Latency buckets in microseconds: 1, 1.5, 2, 3, 5, 7.5 × 10^k from 10 µs to 75 s, then +Inf.
// The 1-2-5 bounds are the ones /metrics exposes (cumulative counts stay exact there).
struct LatencyBuckets {
  static constexpr std::size_t kCount = 43;  // 42 bounded + overflow
  static std::uint64_t upper_us(std::size_t i);  // i < kCount - 1
  static std::size_t index_of(std::uint64_t us);
  static bool exposed(std::size_t i);            // a 1-2-5 bound
};

class Histogram {
 public:
  void add(std::uint64_t us) { add(us, LatencyBuckets::index_of(us)); }
  // With its bucket already found (one latency counted in several histograms).
  void add(std::uint64_t us, std::size_t bucket) {
    buckets_[bucket].add(1);
    sum_us_.add(us);
  }
  std::uint64_t bucket(std::size_t i) const { return buckets_[i].get(); }
  std::uint64_t sum_us() const { return sum_us_.get(); }

 private:
  std::array<Counter, LatencyBuckets::kCount> buckets_;
  Counter sum_us_;
};

// Traffic through one listener or to one node, as one worker saw it.
struct Traffic {
  Counter transactions;  // ReadyForQuery 'I' after a query cycle (an autocommit statement is one)
  Counter queries;       // query cycles: a Query, or extended messages up to Sync
  Counter bytes_in;      // client -> server
  Counter bytes_out;     // server -> client
  Histogram query_latency;  // first byte forwarded -> ReadyForQuery
  Histogram xact_latency;   // first query of a transaction -> ReadyForQuery 'I'
};

struct WorkerStats {
  std::array<Traffic, kMaxListeners> by_listener;
  std::array<Traffic, kMaxNodes> by_node;
  // Logins and resets completed by each node: with by_node's queries and bytes, the round trips
  // that prove a node alive to the keeper whatever its probes say (Effects::activity).
  std::array<Counter, kMaxNodes> node_answers;
  // Event counters (per worker; summed for /metrics).
  Counter clients_accepted;
  Counter clients_refused;       // limits, bad startup, authentication failures
  Counter auth_failures;
  Counter server_connects;
  Counter server_connect_failures;
  Counter held_clients;          // clients that waited for a writer (failover hold or PAUSE)
  Counter held_us;               // total time they waited
  Counter sessions_handed_over;  // a takeover: sessions moved to the new process (old side)
  Counter sessions_adopted;      // ... and taken up (new side)
};

// A plain copy of Traffic (summed over workers, or a difference of two sums).
struct TrafficTotals {
  std::uint64_t transactions = 0;
  std::uint64_t queries = 0;
  std::uint64_t bytes_in = 0;
  std::uint64_t bytes_out = 0;
  std::array<std::uint64_t, LatencyBuckets::kCount> query_buckets{};
  std::uint64_t query_sum_us = 0;
  std::array<std::uint64_t, LatencyBuckets::kCount> xact_buckets{};
  std::uint64_t xact_sum_us = 0;

  void add(const Traffic& t);
  TrafficTotals minus(const TrafficTotals& earlier) const;
  double avg_query_ms() const;
  double avg_xact_ms() const;
  // Quantile by linear interpolation inside the bucket (q in [0, 1]); 0 when empty.
  static double quantile_ms(const std::array<std::uint64_t, LatencyBuckets::kCount>& b, double q);
};

struct EventTotals {
  std::uint64_t clients_accepted = 0;
  std::uint64_t clients_refused = 0;
  std::uint64_t auth_failures = 0;
  std::uint64_t server_connects = 0;
  std::uint64_t server_connect_failures = 0;
  std::uint64_t held_clients = 0;
  std::uint64_t held_us = 0;
};

// All workers summed at one moment.
struct StatsSample {
  std::chrono::steady_clock::time_point at;
  std::vector<TrafficTotals> by_listener;  // sized to the listeners configured
  std::vector<TrafficTotals> by_node;
  EventTotals events;
};

StatsSample sum_stats(const std::vector<const WorkerStats*>& workers, std::size_t listeners, std::size_t nodes);

// Samples kept by the main thread (every few seconds) so "over the last minute" is a
// difference of two samples.
class StatsHistory {
 public:
  void add(StatsSample s);
  // The newest sample at least `age` older than `now`, or the oldest one; nullptr when empty.
  const StatsSample* at_least(std::chrono::steady_clock::duration age, std::chrono::steady_clock::time_point now) const;

 private:
  std::deque<StatsSample> samples_;
};

}  // namespace pgkeel::proxy
