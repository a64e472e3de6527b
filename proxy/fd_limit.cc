#include "proxy/fd_limit.h"

#include <sys/resource.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <thread>

#include "proxy/log.h"

namespace pgkeel::proxy {
namespace {

static_assert(RLIM_INFINITY == kNoLimit, "RLIM_INFINITY is all ones on Linux");

// Estimates for what no setting caps; each is named in the README.
constexpr std::uint64_t kCancelsPerWorker = 16;     // CancelRequests in flight to the nodes
constexpr std::uint64_t kKeeperPerNode = 4;         // probe, admin connection, a cancel, spare
constexpr std::uint64_t kKeeperCommands = 8;        // fence/stop/rejoin/hook pipes
constexpr std::uint64_t kConsoleConnections = 16;   // DBAs on the console
constexpr std::uint64_t kStatusConnections = 64;    // scrapers and load-balancer checks
constexpr std::uint64_t kLoopsPerWorker = 3;        // epoll, mailbox eventfd, spare
constexpr std::uint64_t kLoopsMain = 8;             // epoll, signal pair, mailbox, spare
constexpr std::uint64_t kFixed = 24;                // stdio, config/users/TLS files, DNS, libpq files
// Client::start holds accepted sockets up to 2 × max_client_conn + 64 (so that a startup packet
// beyond max_client_conn is answered 53300), and closes the rest at once.
constexpr std::uint64_t kClientSlack = 64;

std::uint64_t positive(int v) { return v > 0 ? static_cast<std::uint64_t>(v) : 0; }

std::string limit_text(std::uint64_t v) { return v == kNoLimit ? "unlimited" : std::to_string(v); }

}  // namespace

unsigned worker_count(const conf::Config& cfg) {
  const unsigned n = cfg.general.workers > 0 ? static_cast<unsigned>(cfg.general.workers)
                                             : std::max(1u, std::thread::hardware_concurrency());
  return std::min(n, 255u);
}

std::uint64_t FdBudget::total() const {
  return clients + servers + cancels + keeper + auth_query + listeners + console_status + loops + fixed + margin;
}

std::string FdBudget::describe() const {
  return "clients=" + std::to_string(clients) + " servers=" + std::to_string(servers) + " cancels=" + std::to_string(cancels) +
         " keeper=" + std::to_string(keeper) + " auth_query=" + std::to_string(auth_query) + " listeners=" + std::to_string(listeners) +
         " console_status=" + std::to_string(console_status) + " loops=" + std::to_string(loops) + " fixed=" + std::to_string(fixed) +
         " margin=" + std::to_string(margin);
}

FdBudget fd_budget(const conf::Config& cfg, unsigned workers) {
  const std::uint64_t w = std::max(1u, workers);
  const std::uint64_t max_clients = positive(cfg.general.max_client_conn);
  std::uint64_t nodes = 0;
  for (const conf::NodeConfig& n : cfg.nodes) nodes += n.retired ? 0 : 1;
  FdBudget b;
  b.clients = 2 * max_clients + kClientSlack + w;  // + one being closed per worker
  // Every server connection counts against max_server_conn_per_node (the reserve pool and the
  // per-user and per-database limits only lower it). A cap set beyond what clients can use is read
  // as: every client linked, plus one pool's warm connections.
  const std::uint64_t per_node = std::min(positive(cfg.pool.max_server_conn_per_node), max_clients + positive(cfg.pool.pool_size));
  b.servers = nodes * per_node;
  b.cancels = kCancelsPerWorker * w;
  b.keeper = kKeeperPerNode * nodes + kKeeperCommands;
  b.auth_query = cfg.auth.query.empty() ? 0 : w;
  for (const conf::ListenerConfig& l : cfg.listeners) {
    if (l.retired) continue;
    b.listeners += w + (l.unix_socket_dir.empty() ? 0 : 1);
  }
  if (cfg.console.port != 0) b.console_status += 1 + kConsoleConnections;
  if (cfg.status.port != 0) b.console_status += 1 + kStatusConnections;
  b.loops = kLoopsPerWorker * w + kLoopsMain;
  b.fixed = kFixed;
  const std::uint64_t counted = b.total();
  b.margin = counted / 10 + 32;
  return b;
}

NofilePlan plan_nofile(std::uint64_t need, std::uint64_t soft, std::uint64_t hard) {
  if (soft >= need) return {NofilePlan::Action::kKeep, soft};
  if (hard >= need) return {NofilePlan::Action::kRaise, need};
  return {NofilePlan::Action::kRefuse, soft};
}

bool apply_nofile(const conf::Config& cfg, unsigned workers, bool at_start) {
  const FdBudget budget = fd_budget(cfg, workers);
  const std::uint64_t need = budget.total();
  rlimit r{};
  if (getrlimit(RLIMIT_NOFILE, &r) != 0) {
    log::error("main").kv("event", "fd_limit_unknown").kv("reason", std::strerror(errno)).unlimited().emit();
    return !at_start;
  }
  const std::uint64_t soft = r.rlim_cur;
  const std::uint64_t hard = r.rlim_max;
  const NofilePlan plan = plan_nofile(need, soft, hard);
  const char* when = at_start ? "start" : "reload";
  if (plan.action == NofilePlan::Action::kRefuse) {
    // A reload is applied anyway: take what the hard limit allows, and say what is missing.
    if (!at_start && soft < hard) {
      r.rlim_cur = r.rlim_max;
      setrlimit(RLIMIT_NOFILE, &r);
    }
    const std::string n = std::to_string(need);
    log::Line(at_start ? log::Level::kError : log::Level::kWarning, "main")
        .kv("event", "fd_limit_too_low")
        .kv("when", when)
        .kv("need", need)
        .kv("nofile_soft", at_start ? limit_text(soft) : limit_text(hard))
        .kv("nofile_hard", limit_text(hard))
        .kv("budget", budget.describe())
        .kv("reason", "the hard limit on open files (RLIMIT_NOFILE " + limit_text(hard) + ") is below the " + n +
                          " descriptors this configuration may need; pgkeel raises only the soft limit")
        .kv("fix", "raise the hard limit to at least " + n + " (systemd: LimitNOFILE=" + n + " in the unit; shell: ulimit -n " + n +
                       " as root; docker: --ulimit nofile=" + n + ":" + n +
                       "), or lower general.max_client_conn or pool.max_server_conn_per_node")
        .unlimited()
        .emit();
    return !at_start;
  }
  if (plan.action == NofilePlan::Action::kRaise) {
    r.rlim_cur = plan.soft;
    if (setrlimit(RLIMIT_NOFILE, &r) != 0) {
      const int err = errno;
      log::Line(at_start ? log::Level::kError : log::Level::kWarning, "main")
          .kv("event", "fd_limit_too_low")
          .kv("when", when)
          .kv("need", need)
          .kv("nofile_soft", limit_text(soft))
          .kv("nofile_hard", limit_text(hard))
          .kv("reason", std::string("setrlimit(RLIMIT_NOFILE) failed: ") + std::strerror(err))
          .unlimited()
          .emit();
      return !at_start;
    }
  }
  if (at_start || plan.action == NofilePlan::Action::kRaise) {
    log::info("main")
        .kv("event", "fd_limit")
        .kv("when", when)
        .kv("nofile", limit_text(plan.soft))
        .kv("was", limit_text(soft))
        .kv("nofile_hard", limit_text(hard))
        .kv("need", need)
        .kv("action", plan.action == NofilePlan::Action::kRaise ? "raised" : "kept")
        .kv("budget", budget.describe())
        .unlimited()
        .emit();
  }
  return true;
}

const char* errno_name(int err) {
  const char* n = strerrorname_np(err);
  return n != nullptr ? n : "?";
}

bool is_local_resource_error(int err) {
  switch (err) {
    case EMFILE:         // this process's descriptor limit
    case ENFILE:         // the system's
    case ENOMEM:
    case ENOBUFS:
    case EADDRNOTAVAIL:  // no local port left to connect from
      return true;
    default:
      return false;
  }
}

std::chrono::milliseconds AcceptBackoff::on_failure(Clock::time_point now, bool* started) {
  if (started != nullptr) *started = !episode_.has_value();
  if (!episode_) {
    // Not emplace(): clang cannot default-construct a nested struct with member initializers
    // while the enclosing class is incomplete (the std::optional member is declared in it).
    Episode e;
    e.started = now;
    episode_ = e;
  }
  const std::chrono::milliseconds delay = next_;
  episode_->last_failure = now;
  ++episode_->failures;
  ++episode_->pauses;
  episode_->paused += delay;
  next_ = std::min(kMax, next_ * 2);
  return delay;
}

void AcceptBackoff::on_success() {
  next_ = kFirst;
  if (episode_) ++episode_->accepted;
}

std::optional<AcceptBackoff::Episode> AcceptBackoff::take_ended(Clock::time_point now) {
  if (!episode_ || now - episode_->last_failure < kQuiet) return std::nullopt;
  std::optional<Episode> out;
  out.swap(episode_);
  next_ = kFirst;
  return out;
}

}  // namespace pgkeel::proxy
