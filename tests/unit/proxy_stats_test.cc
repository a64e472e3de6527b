// Unit tests for the traffic counters' arithmetic, the auth_query answer cache and the login throttle.
#include <catch2/catch.hpp>

#include "conf/config.h"
#include "proxy/auth_query.h"
#include "proxy/shared.h"
#include "proxy/stats.h"

namespace pgkeel {

using proxy::LatencyBuckets;
using proxy::TrafficTotals;

TEST_CASE("latency buckets are 1, 1.5, 2, 3, 5, 7.5 per decade from 10 us, and 1-2-5 are exposed", "[unit][stats]") {
  CHECK(LatencyBuckets::upper_us(0) == 10);
  CHECK(LatencyBuckets::upper_us(1) == 15);
  CHECK(LatencyBuckets::upper_us(5) == 75);
  CHECK(LatencyBuckets::upper_us(6) == 100);
  CHECK(LatencyBuckets::upper_us(LatencyBuckets::kCount - 2) == 75000000);  // 75 s
  CHECK(LatencyBuckets::index_of(0) == 0);
  CHECK(LatencyBuckets::index_of(10) == 0);   // upper bounds are inclusive, as Prometheus' le
  CHECK(LatencyBuckets::index_of(11) == 1);
  CHECK(LatencyBuckets::index_of(1000000000) == LatencyBuckets::kCount - 1);  // overflow
  CHECK(LatencyBuckets::exposed(0));
  CHECK_FALSE(LatencyBuckets::exposed(1));
  CHECK(LatencyBuckets::exposed(2));
  CHECK_FALSE(LatencyBuckets::exposed(3));
  CHECK(LatencyBuckets::exposed(4));
  CHECK_FALSE(LatencyBuckets::exposed(LatencyBuckets::kCount - 1));
}

TEST_CASE("a quantile is interpolated inside its bucket and is 0 without data", "[unit][stats]") {
  std::array<std::uint64_t, LatencyBuckets::kCount> b{};
  CHECK(TrafficTotals::quantile_ms(b, 0.99) == 0.0);
  b[LatencyBuckets::index_of(1000)] = 100;  // 100 samples in (750 us, 1 ms]
  const double p50 = TrafficTotals::quantile_ms(b, 0.5);
  CHECK(p50 > 0.75);
  CHECK(p50 <= 1.0);
  b[LatencyBuckets::index_of(50000)] = 1;  // one slow outlier does not move p50, moves p99.9
  CHECK(TrafficTotals::quantile_ms(b, 0.5) == Approx(p50).margin(0.01));
  CHECK(TrafficTotals::quantile_ms(b, 0.999) > 30.0);
}

TEST_CASE("the difference of two samples never wraps below zero", "[unit][stats]") {
  TrafficTotals later;
  TrafficTotals earlier;
  later.transactions = 10;
  earlier.transactions = 4;
  later.queries = 3;
  earlier.queries = 5;  // a field read a moment earlier than the other sample's
  const TrafficTotals d = later.minus(earlier);
  CHECK(d.transactions == 6);
  CHECK(d.queries == 0);
  CHECK(d.avg_query_ms() == 0.0);
}

TEST_CASE("auth_query answers: found ones last cache_lifetime, not-found ones negative_cache_lifetime", "[unit][auth]") {
  using namespace std::chrono_literals;
  conf::AuthConfig cfg;
  cfg.cache_lifetime = 300s;
  cfg.negative_cache_lifetime = 5s;
  proxy::SecretCache cache;
  const auto t0 = std::chrono::steady_clock::now();
  auto user = std::make_shared<const proxy::UserAuth>();
  cache.put("shopper", {user, t0}, cfg, t0);
  cache.put("ghost", {nullptr, t0}, cfg, t0);
  REQUIRE(cache.get("ghost", cfg, t0 + 5s));
  CHECK(cache.get("ghost", cfg, t0 + 5s)->auth == nullptr);
  CHECK_FALSE(cache.get("ghost", cfg, t0 + 6s));  // a role created meanwhile gets its answer
  CHECK(cache.get("shopper", cfg, t0 + 6s)->auth == user);
  CHECK_FALSE(cache.get("shopper", cfg, t0 + 301s));
  CHECK_FALSE(cache.get("nobody", cfg, t0));
  cfg.negative_cache_lifetime = 0s;  // off: not-found answers are never reused
  CHECK_FALSE(cache.get("ghost", cfg, t0 + 1ms));
}

TEST_CASE("the auth_query cache stays bounded: invented names go first, real users stay", "[unit][auth]") {
  using namespace std::chrono_literals;
  conf::AuthConfig cfg;
  proxy::SecretCache cache(4);
  const auto t0 = std::chrono::steady_clock::now();
  auto user = std::make_shared<const proxy::UserAuth>();
  cache.put("shopper", {user, t0}, cfg, t0);
  for (int i = 0; i < 100; ++i) {
    cache.put("invented-" + std::to_string(i), {nullptr, t0}, cfg, t0);
    CHECK(cache.size() <= 4);
  }
  CHECK(cache.get("shopper", cfg, t0));  // a flood of unknown names did not push the user out
  CHECK(cache.get("invented-99", cfg, t0));
  // Past their lifetime, entries go before anything fresh is dropped.
  proxy::SecretCache aged(2);
  aged.put("old", {user, t0}, cfg, t0);
  aged.put("also-old", {nullptr, t0}, cfg, t0);
  aged.put("new", {user, t0 + 301s}, cfg, t0 + 301s);
  CHECK(aged.size() == 1);
  CHECK(aged.get("new", cfg, t0 + 301s));
}

TEST_CASE("the login throttle delays an address only past max_failures, doubling, capped", "[unit][auth]") {
  using namespace std::chrono_literals;
  conf::AuthConfig cfg;
  cfg.max_failures = 2;
  cfg.failure_window = 60s;
  cfg.failure_delay = 100ms;
  proxy::AuthThrottle t;
  const auto now = std::chrono::steady_clock::now();
  CHECK(t.failed("10.0.0.1", cfg, now).count() == 0);
  CHECK(t.failed("10.0.0.1", cfg, now).count() == 0);
  CHECK(t.failed("10.0.0.1", cfg, now).count() == 100);
  CHECK(t.failed("10.0.0.1", cfg, now).count() == 200);
  CHECK(t.failed("10.0.0.2", cfg, now).count() == 0);  // another address is not slowed
  for (int i = 0; i < 20; ++i) t.failed("10.0.0.1", cfg, now);
  CHECK(t.failed("10.0.0.1", cfg, now).count() == 5000);  // capped
  CHECK(t.throttled("10.0.0.1", cfg, now));                // the next failure would wait
  CHECK_FALSE(t.throttled("10.0.0.2", cfg, now));
  CHECK_FALSE(t.throttled("10.0.0.1", cfg, now + 61s));     // the window has passed
  CHECK(t.failed("10.0.0.1", cfg, now + 61s).count() == 0);  // a new window
  t.succeeded("10.0.0.2");
  CHECK(t.failed("10.0.0.1", cfg, now + 61s).count() == 0);  // the 2nd of the new window
  CHECK(t.throttled("10.0.0.1", cfg, now + 61s));
  t.succeeded("10.0.0.1");  // a successful login resets its address
  CHECK_FALSE(t.throttled("10.0.0.1", cfg, now + 61s));
  cfg.max_failures = 0;
  CHECK(t.failed("10.0.0.3", cfg, now).count() == 0);  // off
}

}  // namespace pgkeel
