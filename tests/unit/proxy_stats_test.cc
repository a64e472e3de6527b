// Unit tests for the traffic counters' arithmetic, the auth_query binding and the login throttle.
#include <catch2/catch.hpp>

#include "conf/config.h"
#include "proxy/auth_query.h"
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

TEST_CASE("auth_query binds the user as a quoted literal, only at $1", "[unit][auth]") {
  CHECK(proxy::bind_user("SELECT usename, passwd FROM pg_shadow WHERE usename = $1", "web") ==
        "SELECT usename, passwd FROM pg_shadow WHERE usename = 'web'");
  CHECK(proxy::bind_user("SELECT f($1)", "o'brien") == "SELECT f('o''brien')");
  CHECK(proxy::bind_user("SELECT $1, $10", "x") == "SELECT 'x', $10");
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
  CHECK(t.failed("10.0.0.1", cfg, now + 61s).count() == 0);  // a new window
  t.succeeded("10.0.0.2");
  cfg.max_failures = 0;
  CHECK(t.failed("10.0.0.3", cfg, now).count() == 0);  // off
}

}  // namespace pgkeel
