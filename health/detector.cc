#include "health/detector.h"

namespace pgkeel::health {

std::string_view to_string(ProbeOutcome o) {
  switch (o) {
    case ProbeOutcome::kOk: return "ok";
    case ProbeOutcome::kRefused: return "refused";
    case ProbeOutcome::kReset: return "reset";
    case ProbeOutcome::kTimeout: return "timeout";
    case ProbeOutcome::kBusy: return "busy";
    case ProbeOutcome::kStartingUp: return "starting_up";
    case ProbeOutcome::kAuthFailed: return "auth_failed";
    case ProbeOutcome::kLocalError: return "local_error";
  }
  return "unknown";
}

ProbeOutcome classify_probe(bool ok, bool timed_out, bool connection_lost, std::string_view sqlstate,
                            std::string_view message) {
  if (ok) return ProbeOutcome::kOk;
  if (timed_out) return ProbeOutcome::kTimeout;
  auto has = [&](std::string_view s) { return message.find(s) != std::string_view::npos; };
  if (sqlstate == "53300" || has("too many clients") || has("remaining connection slots")) return ProbeOutcome::kBusy;
  // The postmaster could not fork a backend for us: it is alive and overloaded, and told us so.
  if (has("could not fork new process")) return ProbeOutcome::kBusy;
  // pgkeel's own limits, as libpq words them: the node was never asked.
  if (has("could not create socket") || has("Too many open files") || has("out of memory") ||
      has("Cannot allocate memory") || has("Cannot assign requested address") || has("No buffer space available") ||
      has("could not fork") || has("Resource temporarily unavailable")) {
    return ProbeOutcome::kLocalError;
  }
  // No path to the node (ICMP unreachable): as weak as a timeout, a network fault is not a death.
  if (has("No route to host") || has("Network is unreachable") || has("Host is unreachable")) return ProbeOutcome::kTimeout;
  // 57P03 (cannot connect now): the postmaster is alive and says why it turns us away: crash
  // recovery after a backend died, start-up, or a shutdown in progress.
  if (sqlstate == "57P03" || has("starting up") || has("in recovery mode") ||
      has("not yet accepting connections") || has("is not accepting connections") || has("shutting down")) {
    return ProbeOutcome::kStartingUp;
  }
  if (sqlstate == "28P01" || sqlstate == "28000" || has("password authentication failed") ||
      has("no pg_hba.conf entry")) {
    return ProbeOutcome::kAuthFailed;
  }
  // The node answered the SSLRequest, but TLS as configured cannot be had (its certificate does
  // not verify, it has no TLS): a misconfiguration to report, never a death.
  if (has("certificate verify failed") || has("does not match host name") || has("does not support SSL") ||
      has("root certificate file") || has("certificate file") || has("private key file")) {
    return ProbeOutcome::kAuthFailed;
  }
  if (has("Connection refused")) return ProbeOutcome::kRefused;
  if (connection_lost) return ProbeOutcome::kReset;
  return ProbeOutcome::kBusy;  // an ErrorResponse to the query itself: the node answered
}

ProbeOutcome classify_fork_check(bool ok, bool timed_out, bool connection_lost, std::string_view message) {
  if (!ok && !timed_out && message.find("no password supplied") != std::string_view::npos) return ProbeOutcome::kOk;
  const ProbeOutcome o = classify_probe(ok, timed_out, connection_lost, {}, message);
  // Turned away at authentication: the child answered, so the postmaster forks.
  return o == ProbeOutcome::kAuthFailed ? ProbeOutcome::kOk : o;
}

ProbeOutcome combine_probe(ProbeOutcome fork_check, ProbeOutcome session) {
  auto alive = [](ProbeOutcome o) {
    return o == ProbeOutcome::kOk || o == ProbeOutcome::kBusy || o == ProbeOutcome::kAuthFailed;
  };
  switch (fork_check) {
    case ProbeOutcome::kRefused:
    case ProbeOutcome::kReset:
      return fork_check;
    case ProbeOutcome::kStartingUp:
      return ProbeOutcome::kStartingUp;
    case ProbeOutcome::kTimeout:
      // New connections wait, but an existing backend answered: alive and slow.
      if (alive(session) || session == ProbeOutcome::kStartingUp) return ProbeOutcome::kBusy;
      return ProbeOutcome::kTimeout;
    case ProbeOutcome::kLocalError:
      // Nothing known of the postmaster; the standing session may still speak for the node.
      return alive(session) || session == ProbeOutcome::kStartingUp ? session : ProbeOutcome::kLocalError;
    case ProbeOutcome::kOk:
    case ProbeOutcome::kBusy:
    case ProbeOutcome::kAuthFailed:
      if (session == ProbeOutcome::kOk || session == ProbeOutcome::kBusy || session == ProbeOutcome::kAuthFailed ||
          session == ProbeOutcome::kStartingUp) {
        return session;
      }
      return ProbeOutcome::kBusy;  // the postmaster forks; the facts will come next round
  }
  return ProbeOutcome::kLocalError;
}

std::string_view to_string(NodeHealth h) {
  switch (h) {
    case NodeHealth::kUp: return "up";
    case NodeHealth::kDown: return "down";
    case NodeHealth::kUnknown: break;
  }
  return "unknown";
}

std::optional<Transition> Detector::move_to(NodeHealth to, std::string_view why, Clock::time_point now) {
  if (to == health_) return std::nullopt;
  Transition t{health_, to, why, now};
  health_ = to;
  return t;
}

std::optional<Transition> Detector::observe(ProbeOutcome outcome, Clock::time_point now, bool answered_meanwhile) {
  if (outcome == ProbeOutcome::kTimeout && answered_meanwhile) {
    // The node served pgkeel's clients while our probe waited: the probe was slow, not the node.
    ++excused_;
    outcome = ProbeOutcome::kBusy;
  }
  switch (outcome) {
    case ProbeOutcome::kLocalError:
      return std::nullopt;
    case ProbeOutcome::kOk:
      timeouts_ = 0;
      failing_since_.reset();
      ++oks_;
      // From unknown, one answer is enough; a node that was down must prove itself.
      if (health_ == NodeHealth::kDown && oks_ < policy_.oks_to_up) return std::nullopt;
      return move_to(NodeHealth::kUp, "probe answered", now);
    case ProbeOutcome::kRefused:
    case ProbeOutcome::kReset:
      oks_ = 0;
      if (!failing_since_) failing_since_ = now;
      return move_to(NodeHealth::kDown, outcome == ProbeOutcome::kRefused ? "connection refused" : "connection reset", now);
    case ProbeOutcome::kTimeout:
      oks_ = 0;
      if (!failing_since_) failing_since_ = now;
      ++timeouts_;
      if (timeouts_ < policy_.timeouts_to_down) return std::nullopt;
      return move_to(NodeHealth::kDown, "probe timed out repeatedly", now);
    case ProbeOutcome::kBusy:
    case ProbeOutcome::kStartingUp:
    case ProbeOutcome::kAuthFailed:
      // The postmaster answered: alive. Neither a failure nor proof that it serves.
      timeouts_ = 0;
      oks_ = 0;
      return std::nullopt;
  }
  return std::nullopt;
}

}  // namespace pgkeel::health
