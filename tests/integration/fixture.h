// tests/integration/fixture.h — what integration tests stand on: a real PostgreSQL cluster
// (tools/cluster.sh), a pgkeel child process, and small helpers to wait, run commands and query.
// When a test case fails, the tails of every pgkeel and PostgreSQL log it touched are printed.
#pragma once

#include <libpq-fe.h>
#include <sys/resource.h>
#include <sys/types.h>

#include <chrono>
#include <compare>
#include <cstddef>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace pgkeel::test {

using namespace std::chrono_literals;
namespace fs = std::filesystem;

// Roles that tools/cluster.sh creates in every cluster, with their passwords.
inline constexpr std::string_view kAppUser = "app";  // scram, owns database app
inline constexpr std::string_view kAppPassword = "app-pass";
inline constexpr std::string_view kAppDatabase = "app";
inline constexpr std::string_view kMd5User = "md5user";  // md5 hash, hba method md5
inline constexpr std::string_view kMd5Password = "md5-pass";
inline constexpr std::string_view kClearUser = "clearuser";  // hba method password
inline constexpr std::string_view kClearPassword = "clear-pass";
inline constexpr std::string_view kReplicationUser = "replicator";
inline constexpr std::string_view kReplicationPassword = "replicator-pass";
inline constexpr std::string_view kPgkeelUser = "pgkeel";  // superuser over TCP: probes, promotion
inline constexpr std::string_view kPgkeelPassword = "pgkeel-pass";

// ---- small helpers -----------------------------------------------------------------------------

// A TCP port on 127.0.0.1 that the OS reported free a moment ago. Never the same twice per process.
int free_port();

// Calls `pred` every `interval` until it returns true or `deadline` has passed (one last call is
// made after the deadline). Returns whether it ever held. The way to wait; never sleep.
bool eventually(std::chrono::milliseconds deadline, const std::function<bool()>& pred,
                std::chrono::milliseconds interval = 20ms);

using Env = std::map<std::string, std::string>;

struct RunResult {
  int exit_code = -1;      // exit status; 128 + signal when killed; -1 when it never ran
  bool timed_out = false;  // the process group was killed at the timeout
  std::string output;      // stdout and stderr, interleaved as written

  bool ok() const { return exit_code == 0 && !timed_out; }
};

// Runs argv (argv[0] searched in PATH) with our environment plus `env`, stdin from /dev/null, in
// its own process group, which is killed if it outlives `timeout`.
// A child that runs `SCRIPT down DIR --rm` once the returned descriptor is closed, or this
// process dies however it dies; returns its pid and that descriptor.
std::pair<pid_t, int> start_watchdog(const fs::path& script, const fs::path& dir);

// The whole file as text ("" when it cannot be read).
std::string read_file(const fs::path& p);

RunResult run(const std::vector<std::string>& argv, const Env& env = {},
              std::chrono::milliseconds timeout = 120s);
// Same, for `/bin/sh -c script`.
RunResult run_shell(const std::string& script, const Env& env = {},
                    std::chrono::milliseconds timeout = 120s);

// Raises this process's soft RLIMIT_NOFILE to at least `want` (within the hard limit), for tests
// that hold many sockets themselves; fails the test when it cannot.
void raise_nofile(unsigned long want);

// The last `max_lines` lines of a file (all of it if shorter); "" if it cannot be read.
std::string tail_file(const fs::path& file, std::size_t max_lines = 80);

// ---- libpq, synchronously (fine in tests) ------------------------------------------------------

struct PgConnDeleter {
  void operator()(PGconn* conn) const { PQfinish(conn); }
};
struct PgResultDeleter {
  void operator()(PGresult* res) const { PQclear(res); }
};
using PgConnPtr = std::unique_ptr<PGconn, PgConnDeleter>;
using PgResultPtr = std::unique_ptr<PGresult, PgResultDeleter>;

struct PqResult {
  bool ok = false;             // connected, and every statement succeeded
  std::string error;           // libpq's message when !ok
  std::string sqlstate;        // e.g. "28P01", "57P03"; empty when the failure had none
  std::string command_status;  // of the last statement, e.g. "INSERT 0 1"
  std::vector<std::string> columns;
  std::vector<std::vector<std::optional<std::string>>> rows;  // of the last statement

  // rows[row][col], or "" for NULL and out of range; scalar() is value(0, 0).
  std::string value(std::size_t row, std::size_t col) const;
  std::string scalar() const { return value(0, 0); }
};

// One client connection, for tests that need a session (transactions, SET, backend pid). The
// connection attempt and each exec are bounded by a deadline; an exec past it is cancelled.
class PqSession {
 public:
  explicit PqSession(const std::string& conninfo, std::chrono::milliseconds timeout = 10s);

  bool connected() const;
  const std::string& error() const { return error_; }        // why the connection failed
  const std::string& sqlstate() const { return sqlstate_; }  // from the server's ErrorResponse
  PqResult exec(const std::string& sql, std::chrono::milliseconds timeout = 30s);
  int backend_pid() const;
  PGconn* get() const { return conn_.get(); }

 private:
  PgConnPtr conn_;
  std::string error_;
  std::string sqlstate_;
};

// Connects, runs `sql` (may hold several statements), disconnects.
PqResult pq_exec(const std::string& conninfo, const std::string& sql,
                 std::chrono::milliseconds timeout = 30s);

// ---- a PostgreSQL cluster ----------------------------------------------------------------------

struct ClusterOptions {
  int standbys = 1;   // db2, db3, ...
  bool sync = false;  // synchronous_standby_names = 'ANY 1 (db2, ...)' on the primary
  int max_connections = 100;
  bool netns = false;  // each node in a network namespace of its own (tools/cluster.sh up --netns)
  // Standbys made as users make them (tools/cluster.sh up --basebackup): pg_basebackup -R, so
  // they stream as `walreceiver`, without slots, with PostgreSQL's default replication timeouts,
  // and the primary has no synchronous_standby_names. Not with `sync`.
  bool basebackup = false;

  auto operator<=>(const ClusterOptions&) const = default;
};

struct NodeInfo {
  std::string name;  // "db1" (the initial primary), "db2", ...
  int port = 0;
  std::string host = "127.0.0.1";  // its namespace address when the cluster runs with netns
  std::string netns;               // its network namespace (netns only), for `ip netns exec`
  pid_t pid = 0;  // postmaster pid as of the last refresh(); 0 when stopped
  fs::path data_dir;
  fs::path log_file;
};

// A host on a netns cluster's bridge that is not a node (Cluster::add_host): a namespace of its
// own for a pgkeel (PgkeelOptions::netns) or a client, reachable from every node and from here.
struct NetHost {
  std::string name;
  std::string address;  // on the cluster's /24
  std::string netns;    // for PgkeelOptions::netns and `ip netns exec`
};

// A primary and streaming standbys started by `tools/cluster.sh up` in a fresh temporary folder
// and removed (`down --rm`) by the destructor. A watchdog child removes it too if this process
// dies without running destructors. Not thread-safe; one test thread drives it.
class Cluster {
 public:
  explicit Cluster(ClusterOptions options = {});  // throws std::runtime_error if `up` fails
  ~Cluster();
  Cluster(const Cluster&) = delete;
  Cluster& operator=(const Cluster&) = delete;

  // One cluster per distinct options per process, created on first use, stopped at exit. Tests
  // that kill, stop or promote nodes should own a Cluster instead of changing a shared one.
  static Cluster& shared(const ClusterOptions& options = {});

  const ClusterOptions& options() const { return options_; }
  const fs::path& dir() const { return dir_; }
  const fs::path& sock_dir() const { return sock_dir_; }
  fs::path users_file() const { return dir_ / "users.txt"; }
  fs::path env_file() const { return dir_ / "cluster.env"; }
  const std::vector<NodeInfo>& nodes() const { return nodes_; }
  const NodeInfo& node(std::string_view name) const;  // throws std::out_of_range
  int port(std::string_view name) const { return node(name).port; }
  pid_t pid(std::string_view name) const { return node(name).pid; }

  // libpq conninfo for a TCP login to the node (default: app on database app).
  std::string conninfo(std::string_view node, std::string_view user = kAppUser,
                       std::string_view password = kAppPassword,
                       std::string_view dbname = kAppDatabase) const;

  // psql -XAtq as the superuser over the node's Unix socket. Returns stdout without the final
  // newline; throws std::runtime_error carrying psql's output when psql fails.
  std::string psql_as_postgres(std::string_view node, const std::string& sql,
                               std::string_view dbname = "postgres") const;

  // `tools/cluster.sh VERB DIR ARGS...`, then refresh(). stop/start/promote throw on failure.
  RunResult control(const std::string& verb, const std::vector<std::string>& args = {});
  void stop_node(std::string_view name, std::string_view mode = "fast");
  void start_node(std::string_view name);
  void promote(std::string_view name);
  // netns only: this namespace's address on the cluster's bridge (how nodes and hosts see it),
  // and one more namespace on the bridge (`tools/cluster.sh host`), removed by the destructor.
  const std::string& gateway() const { return gateway_; }
  NetHost add_host(const std::string& name);

  void refresh();  // re-reads cluster.env (pids change when nodes restart)

 private:
  void down() noexcept;

  ClusterOptions options_;
  fs::path dir_;
  fs::path sock_dir_;
  fs::path pg_bindir_;
  std::vector<NodeInfo> nodes_;
  std::string gateway_;
  int watchdog_fd_ = -1;  // write end of the watchdog's stdin; its EOF means "clean up now"
  pid_t watchdog_pid_ = 0;
};

// The repository's tools/cluster.sh.
fs::path cluster_script();

// A postmaster and every process it forked. PostgreSQL puts each child in a process group of its
// own, so "the instance's process group" is this set, not one pgid.
std::vector<pid_t> instance_pids(pid_t postmaster);

// [failover] lines for a planned switchover on `cluster`: stop_command and rejoin_command (the
// tools/ scripts, rejoin without a rewind).
std::string switchover_commands(const Cluster& cluster);

// ---- a pgkeel process --------------------------------------------------------------------------

struct ListenerSpec {
  std::string name = "rw";
  std::string intent = "read-write";
  int port = 0;           // 0: free_port()
  std::string pool_mode;  // empty: pgkeel's default
  std::string extra;      // more `key = value` lines inside this [[listener]]
};

struct PgkeelOptions {
  int workers = 2;
  int max_client_conn = 1000;
  int pool_size = 20;
  std::string log_level = "debug";
  std::string initial_primary = "db1";
  std::vector<ListenerSpec> listeners = {ListenerSpec{}};
  std::optional<fs::path> unix_socket_dir;  // written into every [[listener]]
  std::vector<std::string> nodes;           // cluster nodes to list; empty: all of them
  std::string databases = "\"*\" = {}";     // the body of [databases]
  // More `key = value` lines inside [general], [cluster] and [pool].
  std::string general_extra;
  std::string cluster_extra;
  std::string pool_extra;
  std::string health_extra;    // inside [health] (user/password for the pgkeel role are set)
  std::string failover_extra;  // inside [failover] (replication_password is set)
  bool state_file = true;      // general.state_file in the pgkeel folder
  std::string listen_host = "127.0.0.1";        // listeners and console bind here
  std::map<std::string, std::string> node_hosts;  // node name -> address (default 127.0.0.1)
  std::string netns;           // run pgkeel inside this network namespace (/run/netns/NAME)
  bool console = false;        // a console listener on a free port, admin user "pgkeel"
  int console_port = 0;        // set when console is true
  std::vector<std::string> console_monitor_users;  // [console] monitor_users
  std::string console_extra;   // more `key = value` lines inside [console]
  bool status = false;         // the HTTP status port on a free port
  int status_port = 0;         // set when status is true
  std::string status_extra;    // more `key = value` lines inside [status]
  // Appended after everything else; must start with a table header, e.g. "[health]\n...".
  std::string extra_toml;
  std::chrono::milliseconds start_timeout = 10s;
  std::chrono::milliseconds stop_timeout = 10s;
  // RLIMIT_NOFILE of the pgkeel process, soft and hard alike, set in the child before exec (as
  // `prlimit --nofile=N:N pgkeel ...` would); unset: inherited from the test process.
  std::optional<rlim_t> nofile;
};

// PGKEEL_BINARY_DIR/pgkeel -c <config>, its stdout and stderr appended to log_path(). The
// constructor writes the config, starts the process and waits until every TCP listener accepts
// connections (throws std::runtime_error with the log tail if it exits or misses the deadline).
// The destructor stops it: SIGTERM, then SIGKILL after stop_timeout. Only its own pid is signalled.
class Pgkeel {
 public:
  Pgkeel(const Cluster& cluster, PgkeelOptions options = {});
  ~Pgkeel();
  Pgkeel(const Pgkeel&) = delete;
  Pgkeel& operator=(const Pgkeel&) = delete;

  static fs::path binary();

  int port(std::string_view listener = "rw") const;  // throws std::out_of_range
  int console_port() const { return options_.console_port; }
  int status_port() const { return options_.status_port; }
  // "http://host:port" of the status port.
  std::string status_url() const;
  // conninfo for the console (user pgkeel).
  std::string console_conninfo() const;
  pid_t pid() const { return pid_; }
  const fs::path& dir() const { return dir_; }
  const fs::path& config_path() const { return config_path_; }
  const fs::path& log_path() const { return log_path_; }
  std::string config_text() const;

  // conninfo through the named listener (default: app on database app).
  std::string conninfo(std::string_view user = kAppUser, std::string_view password = kAppPassword,
                       std::string_view dbname = kAppDatabase,
                       std::string_view listener = "rw") const;

  bool running();  // false once it has exited (reaps it)
  std::optional<int> exit_status() const { return exit_status_; }  // waitpid status, once exited
  void start();                                                    // throws as the constructor does
  int stop();            // SIGTERM, deadline, SIGKILL; returns the waitpid status
  void restart();        // same config, same ports
  void signal(int sig);  // e.g. SIGHUP to reload a rewritten config_path()
  void write_config();   // rewrites config_path() from options()
  PgkeelOptions& options() { return options_; }

 private:
  std::string render_config() const;

  const Cluster& cluster_;
  PgkeelOptions options_;
  fs::path dir_;
  fs::path config_path_;
  fs::path log_path_;
  pid_t pid_ = 0;
  std::optional<int> exit_status_;
};

}  // namespace pgkeel::test
