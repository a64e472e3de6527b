// Unit tests for the log's rate limit: the same component and event at most 20 times a second,
// and a later count of what was suppressed.
#include <chrono>
#include <string>

#include <catch2/catch.hpp>

#include "proxy/log.h"

namespace pgkeel {
namespace {

using log::RateLimiter;
using namespace std::chrono_literals;

const std::string kRefused = std::string("client") + '\0' + "refused";
const std::string kLogin = std::string("client") + '\0' + "login";

}  // namespace

TEST_CASE("a key writes 20 lines a second; the rest are counted and reported when its next window opens",
          "[unit][log]") {
  RateLimiter r;
  const auto t0 = RateLimiter::Clock::time_point{} + 1h;
  RateLimiter::Suppressed ended;
  int written = 0;
  for (int i = 0; i < 1000; ++i) written += r.admit(kRefused, t0 + i * 500us, &ended) ? 1 : 0;
  CHECK(written == 20);
  CHECK(ended.lines == 0);  // nothing reported while the window lasts

  SECTION("another key has its own window") {
    CHECK(r.admit(kLogin, t0 + 1ms, &ended));
    CHECK(ended.lines == 0);
  }
  SECTION("the first line after the window passes, with the count of the window before it") {
    CHECK(r.admit(kRefused, t0 + 1s, &ended));
    CHECK(ended.key == kRefused);
    CHECK(ended.lines == 980);
    CHECK(ended.over == 999 * 500us);  // first line to last suppressed one
    RateLimiter::Suppressed again;
    CHECK(r.admit(kRefused, t0 + 1s + 1ms, &again));
    CHECK(again.lines == 0);  // reported once
  }
  SECTION("flush reports a passed window even when its key goes quiet, once, and forgets the key") {
    CHECK(r.flush(t0 + 999ms).empty());
    const auto out = r.flush(t0 + 1s);
    REQUIRE(out.size() == 1);
    CHECK(out[0].key == kRefused);
    CHECK(out[0].lines == 980);
    CHECK(r.keys() == 0);
    CHECK(r.flush(t0 + 5s).empty());
  }
}

TEST_CASE("a key under the limit is never suppressed and never reported", "[unit][log]") {
  RateLimiter r;
  const auto t0 = RateLimiter::Clock::time_point{} + 1h;
  for (int second = 0; second < 10; ++second) {
    for (int i = 0; i < 20; ++i) {
      RateLimiter::Suppressed ended;
      CHECK(r.admit(kLogin, t0 + second * 1s + i * 10ms, &ended));
      CHECK(ended.lines == 0);
    }
  }
  CHECK(r.flush(t0 + 1h).empty());
  CHECK(r.keys() == 0);
}

TEST_CASE("a flood of 4.5 million lines in 8 seconds writes at most 20 lines and one count a second", "[unit][log]") {
  RateLimiter r;
  const auto t0 = RateLimiter::Clock::time_point{} + 1h;
  std::uint64_t written = 0;
  std::uint64_t reported = 0;
  std::uint64_t counts = 0;
  const int n = 4'500'000;
  for (int i = 0; i < n; ++i) {
    RateLimiter::Suppressed ended;
    const auto t = t0 + std::chrono::nanoseconds(std::int64_t{8'000'000'000} * i / n);
    if (r.admit(kRefused, t, &ended)) ++written;
    if (ended.lines > 0) {
      ++counts;
      reported += ended.lines;
    }
  }
  for (const auto& s : r.flush(t0 + 9s)) {
    ++counts;
    reported += s.lines;
  }
  CHECK(written == 8 * 20);
  CHECK(counts == 8);
  CHECK(written + reported == static_cast<std::uint64_t>(n));  // every line is written or counted
}

}  // namespace pgkeel
