#include "proxy/stats.h"

#include <algorithm>

namespace pgkeel::proxy {
namespace {

// 1, 1.5, 2, 3, 5, 7.5 (tenths) per decade, from 10 µs.
constexpr std::uint64_t kSteps[] = {10, 15, 20, 30, 50, 75};

constexpr std::array<std::uint64_t, LatencyBuckets::kCount - 1> make_bounds() {
  std::array<std::uint64_t, LatencyBuckets::kCount - 1> b{};
  std::uint64_t decade = 1;  // µs per tenth of the first step
  for (std::size_t i = 0; i < b.size(); ++i) {
    b[i] = kSteps[i % 6] * decade;
    if (i % 6 == 5) decade *= 10;
  }
  return b;
}

constexpr auto kBounds = make_bounds();

}  // namespace

std::uint64_t LatencyBuckets::upper_us(std::size_t i) { return kBounds[i]; }

std::size_t LatencyBuckets::index_of(std::uint64_t us) {
  return static_cast<std::size_t>(std::lower_bound(kBounds.begin(), kBounds.end(), us) - kBounds.begin());
}

bool LatencyBuckets::exposed(std::size_t i) {
  const std::size_t step = i % 6;
  return i < kCount - 1 && (step == 0 || step == 2 || step == 4);
}

void TrafficTotals::add(const Traffic& t) {
  transactions += t.transactions.get();
  queries += t.queries.get();
  bytes_in += t.bytes_in.get();
  bytes_out += t.bytes_out.get();
  for (std::size_t i = 0; i < LatencyBuckets::kCount; ++i) {
    query_buckets[i] += t.query_latency.bucket(i);
    xact_buckets[i] += t.xact_latency.bucket(i);
  }
  query_sum_us += t.query_latency.sum_us();
  xact_sum_us += t.xact_latency.sum_us();
}

TrafficTotals TrafficTotals::minus(const TrafficTotals& e) const {
  // Counters only grow, but a sample taken while a worker writes may be a little behind in one
  // field and ahead in another: clamp at zero rather than wrap.
  auto d = [](std::uint64_t a, std::uint64_t b) { return a > b ? a - b : 0; };
  TrafficTotals r;
  r.transactions = d(transactions, e.transactions);
  r.queries = d(queries, e.queries);
  r.bytes_in = d(bytes_in, e.bytes_in);
  r.bytes_out = d(bytes_out, e.bytes_out);
  for (std::size_t i = 0; i < LatencyBuckets::kCount; ++i) {
    r.query_buckets[i] = d(query_buckets[i], e.query_buckets[i]);
    r.xact_buckets[i] = d(xact_buckets[i], e.xact_buckets[i]);
  }
  r.query_sum_us = d(query_sum_us, e.query_sum_us);
  r.xact_sum_us = d(xact_sum_us, e.xact_sum_us);
  return r;
}

double TrafficTotals::avg_query_ms() const {
  return queries == 0 ? 0.0 : static_cast<double>(query_sum_us) / 1000.0 / static_cast<double>(queries);
}

double TrafficTotals::avg_xact_ms() const {
  return transactions == 0 ? 0.0 : static_cast<double>(xact_sum_us) / 1000.0 / static_cast<double>(transactions);
}

double TrafficTotals::quantile_ms(const std::array<std::uint64_t, LatencyBuckets::kCount>& b, double q) {
  std::uint64_t total = 0;
  for (std::uint64_t c : b) total += c;
  if (total == 0) return 0.0;
  const double rank = q * static_cast<double>(total);
  double seen = 0;
  for (std::size_t i = 0; i < b.size(); ++i) {
    if (b[i] == 0) continue;
    if (seen + static_cast<double>(b[i]) >= rank) {
      const double lo = i == 0 ? 0.0 : static_cast<double>(kBounds[i - 1]);
      // The overflow bucket has no upper bound: report its lower one.
      const double hi = i < kBounds.size() ? static_cast<double>(kBounds[i]) : lo;
      const double frac = (rank - seen) / static_cast<double>(b[i]);
      return (lo + (hi - lo) * frac) / 1000.0;
    }
    seen += static_cast<double>(b[i]);
  }
  return static_cast<double>(kBounds.back()) / 1000.0;
}

StatsSample sum_stats(const std::vector<const WorkerStats*>& workers, std::size_t listeners, std::size_t nodes) {
  StatsSample s;
  s.at = std::chrono::steady_clock::now();
  listeners = std::min(listeners, kMaxListeners);
  nodes = std::min(nodes, kMaxNodes);
  s.by_listener.resize(listeners);
  s.by_node.resize(nodes);
  for (const WorkerStats* w : workers) {
    for (std::size_t i = 0; i < listeners; ++i) s.by_listener[i].add(w->by_listener[i]);
    for (std::size_t i = 0; i < nodes; ++i) s.by_node[i].add(w->by_node[i]);
    s.events.clients_accepted += w->clients_accepted.get();
    s.events.clients_refused += w->clients_refused.get();
    s.events.auth_failures += w->auth_failures.get();
    s.events.server_connects += w->server_connects.get();
    s.events.server_connect_failures += w->server_connect_failures.get();
    s.events.held_clients += w->held_clients.get();
    s.events.held_us += w->held_us.get();
  }
  return s;
}

void StatsHistory::add(StatsSample s) {
  samples_.push_back(std::move(s));
  // Keep a little over a minute and a half at one sample every few seconds.
  while (samples_.size() > 2 && samples_.back().at - samples_.front().at > std::chrono::seconds(90)) {
    samples_.pop_front();
  }
}

const StatsSample* StatsHistory::at_least(std::chrono::steady_clock::duration age,
                                          std::chrono::steady_clock::time_point now) const {
  if (samples_.empty()) return nullptr;
  const StatsSample* best = &samples_.front();
  for (const StatsSample& s : samples_) {
    if (now - s.at >= age) best = &s;
  }
  return best;
}

}  // namespace pgkeel::proxy
