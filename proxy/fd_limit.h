// proxy/fd_limit.h — pgkeel's own limits: how many descriptors a configuration may hold open at
// once, RLIMIT_NOFILE raised at start to cover them (or a refusal that names the limit), the pause
// of accept() when descriptors run out anyway, and which errno values are pgkeel's own failures.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "conf/config.h"

namespace pgkeel::proxy {

// Worker threads the configuration asks for: general.workers, or one per online core; 1 to 255.
unsigned worker_count(const conf::Config& cfg);

// Descriptors pgkeel may hold open at once, by who holds them (see fd_budget()).
struct FdBudget {
  std::uint64_t clients = 0;         // accepted sockets, refused ones included
  std::uint64_t servers = 0;         // connections to the nodes
  std::uint64_t cancels = 0;         // CancelRequests on their way to a node
  std::uint64_t keeper = 0;          // probes, admin connections, commands' pipes
  std::uint64_t auth_query = 0;      // [auth] query: one connection per worker
  std::uint64_t listeners = 0;       // listening sockets
  std::uint64_t console_status = 0;  // the console's and the status port's sockets
  std::uint64_t loops = 0;           // epoll, eventfd and signal descriptors of the event loops
  std::uint64_t fixed = 0;           // stdio, files read at start and reload, name lookups
  std::uint64_t margin = 0;          // what this estimate cannot see

  std::uint64_t total() const;
  // "clients=2066 servers=200 ..." for the log line.
  std::string describe() const;
};

// The descriptors `cfg` may need with `workers` workers. Pure arithmetic; the README's "Limits and
// timeouts" explains each term.
FdBudget fd_budget(const conf::Config& cfg, unsigned workers);

// What to do with RLIMIT_NOFILE, given what is needed and the soft and hard limits in effect
// (kNoLimit: RLIM_INFINITY). pgkeel raises only the soft limit: the hard limit is the operator's.
inline constexpr std::uint64_t kNoLimit = ~std::uint64_t{0};
struct NofilePlan {
  enum class Action : std::uint8_t { kKeep, kRaise, kRefuse };
  Action action = Action::kKeep;
  std::uint64_t soft = 0;  // the soft limit after the plan (kRefuse: unchanged)
};
NofilePlan plan_nofile(std::uint64_t need, std::uint64_t soft, std::uint64_t hard);

// Applies plan_nofile() to this process for `cfg` and logs it. `at_start`: the limit in effect is
// logged, and false means pgkeel must not start (the line says why and how to fix it). After a
// reload the limit is raised if the new configuration needs more, and a warning says so if the
// hard limit does not allow it; the reload itself is not refused.
bool apply_nofile(const conf::Config& cfg, unsigned workers, bool at_start);

// True for an errno that says pgkeel itself ran out of something (descriptors, memory, local
// ports), which is never evidence that the peer failed.
bool is_local_resource_error(int err);
// "EMFILE" for EMFILE; "?" for an unknown value.
const char* errno_name(int err);

// When accept() fails for want of a resource, a worker stops accepting for a while (the kernel
// keeps new connections in the listen queue) instead of retrying at once: 10 ms, doubling to 1 s;
// an accept that succeeds starts the doubling again from 10 ms. An episode is the time from the
// first failure until no failure for kQuiet; it is logged once when it starts and once when it
// ends. Pure: time is an argument.
class AcceptBackoff {
 public:
  using Clock = std::chrono::steady_clock;
  static constexpr std::chrono::milliseconds kFirst{10};
  static constexpr std::chrono::milliseconds kMax{1000};
  static constexpr std::chrono::milliseconds kQuiet{2000};

  struct Episode {
    Clock::time_point started;
    Clock::time_point last_failure;
    std::uint64_t failures = 0;   // accept() calls that failed
    std::uint64_t accepted = 0;   // connections accepted during the episode
    std::uint64_t pauses = 0;
    std::chrono::milliseconds paused{0};  // sum of the pauses
  };

  // accept() failed at `now`: how long to stop accepting. `started` is set when this failure
  // begins an episode (log it).
  std::chrono::milliseconds on_failure(Clock::time_point now, bool* started = nullptr);
  // accept() succeeded: the next pause is short again.
  void on_success();
  // The episode, once it has had no failure for kQuiet; returned once, then forgotten.
  std::optional<Episode> take_ended(Clock::time_point now);
  bool in_episode() const { return episode_.has_value(); }
  std::chrono::milliseconds next_delay() const { return next_; }

 private:
  std::optional<Episode> episode_;
  std::chrono::milliseconds next_ = kFirst;
};

}  // namespace pgkeel::proxy
