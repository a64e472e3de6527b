// health/detector.h — turns a node's probe outcomes into health transitions. Pure: time is an
// argument, nothing here touches a socket. Strong evidence (a new connection refused, or closed
// before the postmaster's child said a word) counts at once; weak evidence (a timeout) only after
// several in a row, and never while the data path saw the node answer; an answer that proves the
// postmaster is alive (too many connections, starting up) never counts as down; pgkeel's own
// failures (out of file descriptors, of memory) are no evidence at all.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string_view>

namespace pgkeel::health {

using Clock = std::chrono::steady_clock;

enum class ProbeOutcome : std::uint8_t {
  kOk,                  // the probe query answered
  kRefused,             // connection refused: nothing listens
  kReset,               // connection reset or closed mid-probe
  kTimeout,             // no answer within the probe timeout (a hang, or a partition)
  kBusy,                // 53300: alive, out of connection slots
  kStartingUp,          // 57P03: alive, in crash recovery or starting
  kAuthFailed,          // 28P01/28000, or TLS that cannot be had as configured: alive, but pgkeel is refused
  kLocalError,          // pgkeel could not probe (EMFILE, ENFILE, ENOMEM, ...): says nothing of the node
};

enum class NodeHealth : std::uint8_t { kUnknown, kUp, kDown };

// What one probe attempt amounts to, from what libpq reported: whether it worked, timed out or
// lost the connection, the SQLSTATE of an ErrorResponse (libpq gives none for a refused login,
// so PostgreSQL's message texts are matched too), and the message.
ProbeOutcome classify_probe(bool ok, bool timed_out, bool connection_lost, std::string_view sqlstate,
                            std::string_view message);

// The fork check: a new connection taken only as far as the authentication request (no password
// is sent, so no SCRAM is paid). Any answer from the postmaster's child, an authentication
// request included ("no password supplied"), proves the postmaster accepts and forks: kOk.
ProbeOutcome classify_fork_check(bool ok, bool timed_out, bool connection_lost, std::string_view message);

// One probe round is a fork check and the facts query on pgkeel's standing session to the node;
// this is what the two amount to together. Only the fork check can give strong evidence: the
// standing session may be ended by the server for reasons of its own (idle_session_timeout,
// pg_terminate_backend), and an existing backend that answers proves the node alive even when
// new connections are slow.
ProbeOutcome combine_probe(ProbeOutcome fork_check, ProbeOutcome session);

std::string_view to_string(ProbeOutcome o);
std::string_view to_string(NodeHealth h);

struct DetectorPolicy {
  int timeouts_to_down = 3;  // consecutive timeouts before a node is down
  int oks_to_up = 2;         // consecutive successes before a down node is up again
};

struct Transition {
  NodeHealth from;
  NodeHealth to;
  std::string_view why;
  Clock::time_point at;
};

class Detector {
 public:
  explicit Detector(DetectorPolicy policy = {}) : policy_(policy) {}

  // Feeds one probe outcome; returns a transition when the node's health changed.
  // `answered_meanwhile`: pgkeel's own server connections to the node completed round trips while
  // the probe was out. A timeout then proves only that the probe was slow: the node is alive.
  std::optional<Transition> observe(ProbeOutcome outcome, Clock::time_point now, bool answered_meanwhile = false);

  NodeHealth health() const { return health_; }
  int consecutive_timeouts() const { return timeouts_; }
  // Timeouts not counted because the data path saw the node answer meanwhile (since start).
  std::uint64_t timeouts_excused() const { return excused_; }
  // When the first failure of the current streak was seen (for detection-time reports).
  std::optional<Clock::time_point> failing_since() const { return failing_since_; }

 private:
  std::optional<Transition> move_to(NodeHealth to, std::string_view why, Clock::time_point now);

  DetectorPolicy policy_;
  NodeHealth health_ = NodeHealth::kUnknown;
  int timeouts_ = 0;
  int oks_ = 0;
  std::uint64_t excused_ = 0;
  std::optional<Clock::time_point> failing_since_;
};

}  // namespace pgkeel::health
