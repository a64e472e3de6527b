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

TEST_CASE("a timeout while the data path saw the node answer is not counted", "[health][no-harm]") {
  Detector d({.timeouts_to_down = 3, .oks_to_up = 2});
  const Clock::time_point t0{};
  d.observe(ProbeOutcome::kOk, t0);
  for (int i = 1; i <= 10; ++i) CHECK_FALSE(d.observe(ProbeOutcome::kTimeout, t0 + i * 500ms, /*answered_meanwhile=*/true));
  CHECK(d.health() == NodeHealth::kUp);
  CHECK(d.timeouts_excused() == 10);
  SECTION("and it breaks a streak of real timeouts") {
    d.observe(ProbeOutcome::kTimeout, t0 + 6s);
    d.observe(ProbeOutcome::kTimeout, t0 + 7s);
    d.observe(ProbeOutcome::kTimeout, t0 + 8s, true);
    CHECK_FALSE(d.observe(ProbeOutcome::kTimeout, t0 + 9s));
    CHECK(d.health() == NodeHealth::kUp);
  }
  SECTION("without answers, three timeouts still mark it down (a hang)") {
    d.observe(ProbeOutcome::kTimeout, t0 + 6s);
    d.observe(ProbeOutcome::kTimeout, t0 + 7s);
    auto tr = d.observe(ProbeOutcome::kTimeout, t0 + 8s);
    REQUIRE(tr);
    CHECK(tr->to == NodeHealth::kDown);
  }
}

TEST_CASE("pgkeel's own failures are no evidence against a node", "[health][no-harm]") {
  CHECK(classify_probe(false, false, true, "", "could not create socket: Too many open files") == ProbeOutcome::kLocalError);
  CHECK(classify_probe(false, false, true, "", "out of memory") == ProbeOutcome::kLocalError);
  CHECK(classify_probe(false, false, true, "",
                       "connection to server at \"127.0.0.1\", port 5433 failed: Cannot assign requested address") ==
        ProbeOutcome::kLocalError);
  // The server's own fork failure is the server speaking: alive.
  CHECK(classify_probe(false, false, true, "", "could not fork new process for connection: Resource temporarily unavailable") ==
        ProbeOutcome::kBusy);
  // An unreachable network is as weak as a timeout.
  CHECK(classify_probe(false, false, true, "", "connection to server at \"10.0.0.9\", port 5432 failed: No route to host") ==
        ProbeOutcome::kTimeout);
  Detector d;
  const Clock::time_point t0{};
  d.observe(ProbeOutcome::kOk, t0);
  for (int i = 1; i < 50; ++i) CHECK_FALSE(d.observe(ProbeOutcome::kLocalError, t0 + i * 100ms));
  CHECK(d.health() == NodeHealth::kUp);
  // Nor does it break a streak, or start one.
  d.observe(ProbeOutcome::kTimeout, t0 + 6s);
  d.observe(ProbeOutcome::kLocalError, t0 + 7s);
  CHECK(d.consecutive_timeouts() == 1);
}

TEST_CASE("the fork check counts any answer of the postmaster's child as alive", "[health]") {
  CHECK(classify_fork_check(false, false, true, "fe_sendauth: no password supplied") == ProbeOutcome::kOk);
  CHECK(classify_fork_check(true, false, false, "") == ProbeOutcome::kOk);  // trust: logged in
  CHECK(classify_fork_check(false, false, true, "FATAL:  password authentication failed for user \"pgkeel\"") ==
        ProbeOutcome::kOk);
  CHECK(classify_fork_check(false, false, true, "FATAL:  sorry, too many clients already") == ProbeOutcome::kBusy);
  CHECK(classify_fork_check(false, false, true, "FATAL:  the database system is starting up") == ProbeOutcome::kStartingUp);
  CHECK(classify_fork_check(false, false, true, "connection to server at \"127.0.0.1\", port 5433 failed: Connection refused") ==
        ProbeOutcome::kRefused);
  CHECK(classify_fork_check(false, true, false, "timeout while connecting") == ProbeOutcome::kTimeout);
  CHECK(classify_fork_check(false, false, true, "could not create socket: Too many open files") == ProbeOutcome::kLocalError);
}

TEST_CASE("a probe round is as strong as its fork check, and the standing session speaks for a slow node",
          "[health]") {
  using O = ProbeOutcome;
  SECTION("strong evidence comes only from a new connection") {
    CHECK(combine_probe(O::kRefused, O::kOk) == O::kRefused);  // postmaster gone, a backend lingers
    CHECK(combine_probe(O::kReset, O::kTimeout) == O::kReset);
    CHECK(combine_probe(O::kOk, O::kReset) == O::kBusy);  // a session ended by the server, nothing more
    CHECK(combine_probe(O::kTimeout, O::kReset) == O::kTimeout);
  }
  SECTION("an existing backend that answers proves the node alive") {
    CHECK(combine_probe(O::kTimeout, O::kOk) == O::kBusy);
    CHECK(combine_probe(O::kOk, O::kTimeout) == O::kBusy);
    CHECK(combine_probe(O::kTimeout, O::kTimeout) == O::kTimeout);
  }
  SECTION("both answered") {
    CHECK(combine_probe(O::kOk, O::kOk) == O::kOk);
    CHECK(combine_probe(O::kOk, O::kAuthFailed) == O::kAuthFailed);
    CHECK(combine_probe(O::kStartingUp, O::kReset) == O::kStartingUp);
    CHECK(combine_probe(O::kBusy, O::kOk) == O::kOk);
  }
  SECTION("pgkeel's own failure on one side leaves the other to speak, or nothing") {
    CHECK(combine_probe(O::kLocalError, O::kOk) == O::kOk);
    CHECK(combine_probe(O::kLocalError, O::kTimeout) == O::kLocalError);
    CHECK(combine_probe(O::kLocalError, O::kLocalError) == O::kLocalError);
    CHECK(combine_probe(O::kOk, O::kLocalError) == O::kBusy);
  }
}

TEST_CASE("TLS that cannot be had as configured is a refusal, never a death", "[health]") {
  CHECK(classify_probe(false, false, true, "", "SSL error: certificate verify failed") == ProbeOutcome::kAuthFailed);
  CHECK(classify_probe(false, false, true, "",
                       "server certificate for \"localhost\" does not match host name \"db1.shop\"") ==
        ProbeOutcome::kAuthFailed);
  CHECK(classify_probe(false, false, true, "", "server does not support SSL, but SSL was required") ==
        ProbeOutcome::kAuthFailed);
  CHECK(classify_fork_check(false, false, true, "SSL error: certificate verify failed") == ProbeOutcome::kOk);
  // A server that goes away in the middle of a handshake is not a misconfiguration.
  CHECK(classify_probe(false, false, true, "", "SSL SYSCALL error: EOF detected") == ProbeOutcome::kReset);
}
