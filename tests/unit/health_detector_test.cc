#include <catch2/catch.hpp>

#include "health/detector.h"

using namespace pgkeel::health;
using namespace std::chrono_literals;

TEST_CASE("a refused connection marks a node down at once", "[health]") {
  Detector d;
  const Clock::time_point t0{};
  REQUIRE(d.observe(ProbeOutcome::kOk, t0));
  auto tr = d.observe(ProbeOutcome::kRefused, t0 + 500ms);
  REQUIRE(tr);
  CHECK(tr->from == NodeHealth::kUp);
  CHECK(tr->to == NodeHealth::kDown);
  CHECK(d.failing_since() == t0 + 500ms);
}

TEST_CASE("timeouts mark a node down only after several in a row", "[health]") {
  Detector d({.timeouts_to_down = 3, .oks_to_up = 2});
  const Clock::time_point t0{};
  d.observe(ProbeOutcome::kOk, t0);
  CHECK_FALSE(d.observe(ProbeOutcome::kTimeout, t0 + 1s));
  CHECK_FALSE(d.observe(ProbeOutcome::kTimeout, t0 + 2s));
  SECTION("a success in between resets the streak") {
    CHECK_FALSE(d.observe(ProbeOutcome::kOk, t0 + 3s));
    CHECK_FALSE(d.observe(ProbeOutcome::kTimeout, t0 + 4s));
    CHECK(d.health() == NodeHealth::kUp);
  }
  SECTION("the third timeout is enough") {
    auto tr = d.observe(ProbeOutcome::kTimeout, t0 + 3s);
    REQUIRE(tr);
    CHECK(tr->to == NodeHealth::kDown);
    CHECK(d.failing_since() == t0 + 1s);
  }
}

TEST_CASE("a busy or recovering postmaster is never counted as down", "[health]") {
  Detector d;
  const Clock::time_point t0{};
  d.observe(ProbeOutcome::kOk, t0);
  for (int i = 1; i < 20; ++i) {
    CHECK_FALSE(d.observe(i % 2 ? ProbeOutcome::kBusy : ProbeOutcome::kStartingUp, t0 + i * 500ms));
  }
  CHECK(d.health() == NodeHealth::kUp);
  // And they break a timeout streak: a node that answers with an error is reachable.
  d.observe(ProbeOutcome::kTimeout, t0 + 20s);
  d.observe(ProbeOutcome::kTimeout, t0 + 21s);
  d.observe(ProbeOutcome::kBusy, t0 + 22s);
  CHECK_FALSE(d.observe(ProbeOutcome::kTimeout, t0 + 23s));
  CHECK(d.health() == NodeHealth::kUp);
}

TEST_CASE("a down node must answer several times before it is up again", "[health]") {
  Detector d({.timeouts_to_down = 3, .oks_to_up = 2});
  const Clock::time_point t0{};
  d.observe(ProbeOutcome::kRefused, t0);
  CHECK(d.health() == NodeHealth::kDown);
  CHECK_FALSE(d.observe(ProbeOutcome::kOk, t0 + 1s));
  auto tr = d.observe(ProbeOutcome::kOk, t0 + 2s);
  REQUIRE(tr);
  CHECK(tr->to == NodeHealth::kUp);
}

TEST_CASE("probe failures are classified by how strong the evidence is", "[health]") {
  CHECK(classify_probe(true, false, false, "", "") == ProbeOutcome::kOk);
  CHECK(classify_probe(false, true, false, "", "timeout while connecting") == ProbeOutcome::kTimeout);
  CHECK(classify_probe(false, false, true, "",
                       "connection to server at \"127.0.0.1\", port 5433 failed: Connection refused") ==
        ProbeOutcome::kRefused);
  CHECK(classify_probe(false, false, true, "", "server closed the connection unexpectedly") == ProbeOutcome::kReset);
  SECTION("a postmaster that answers is alive, whatever it says") {
    CHECK(classify_probe(false, false, true, "", "FATAL:  sorry, too many clients already") == ProbeOutcome::kBusy);
    CHECK(classify_probe(false, false, true, "",
                         "FATAL:  the database system is not yet accepting connections DETAIL:  Consistent "
                         "recovery state has not been yet reached.") == ProbeOutcome::kStartingUp);
    CHECK(classify_probe(false, false, true, "", "FATAL:  the database system is in recovery mode") ==
          ProbeOutcome::kStartingUp);
    CHECK(classify_probe(false, false, true, "", "FATAL:  the database system is starting up") ==
          ProbeOutcome::kStartingUp);
    CHECK(classify_probe(false, false, true, "", "FATAL:  password authentication failed for user \"pgkeel\"") ==
          ProbeOutcome::kAuthFailed);
    CHECK(classify_probe(false, false, false, "42P01", "relation does not exist") == ProbeOutcome::kBusy);
  }
}
