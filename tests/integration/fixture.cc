// tests/integration/fixture.cc — the integration fixture, and Catch's main for the integration
// test binary (tests/CMakeLists.txt globs every .cc here into one executable).
#define CATCH_CONFIG_MAIN
#include "tests/integration/fixture.h"

#include <tuple>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <sys/resource.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cctype>
#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <mutex>
#include <regex>
#include <set>
#include <sstream>
#include <stdexcept>
#include <thread>
#include <utility>

#ifndef PGKEEL_SOURCE_DIR
#error "tests/CMakeLists.txt defines PGKEEL_SOURCE_DIR"
#endif
#ifndef PGKEEL_BINARY_DIR
#error "tests/CMakeLists.txt defines PGKEEL_BINARY_DIR"
#endif

extern char** environ;

namespace pgkeel::test {
namespace {

using Clock = std::chrono::steady_clock;

// Logs worth showing when a test case fails, and pgkeel folders to delete once it passed.
// Deliberately leaked: fixtures may be destroyed during static destruction, after any registry
// with a destructor would be gone.
class LogRegistry {
 public:
  static LogRegistry& get() {
    static auto* registry = new LogRegistry;
    return *registry;
  }

  void watch(const fs::path& log) {
    std::lock_guard lock(mu_);
    offsets_[log] = in_case_ ? 0 : file_size_or_zero(log);
  }

  void forget(const fs::path& log) {
    std::lock_guard lock(mu_);
    offsets_.erase(log);
  }

  // A stopped pgkeel's folder: its log is still reported for the running test case, then the
  // folder is deleted, or kept (and named) if the case failed.
  void retire(const fs::path& dir, const fs::path& log) {
    std::unique_lock lock(mu_);
    if (in_case_) {
      retired_.emplace_back(dir, log);
      return;
    }
    offsets_.erase(log);
    lock.unlock();
    std::error_code ec;
    fs::remove_all(dir, ec);
  }

  void case_starting() {
    std::lock_guard lock(mu_);
    in_case_ = true;
    for (auto& [log, offset] : offsets_) {
      offset = file_size_or_zero(log);
    }
  }

  void case_ended(bool failed, const std::string& name) {
    std::vector<std::pair<fs::path, fs::path>> retired;
    {
      std::lock_guard lock(mu_);
      in_case_ = false;
      if (failed) {
        any_failure_ = true;
        print_logs(name);
      }
      retired.swap(retired_);
      for (const auto& [dir, log] : retired) {
        offsets_.erase(log);
      }
      for (auto& [log, offset] : offsets_) {
        offset = file_size_or_zero(log);
      }
    }
    for (const auto& [dir, log] : retired) {
      if (failed) {
        std::cerr << "fixture: kept pgkeel config and log in " << dir.string() << "\n";
      } else {
        std::error_code ec;
        fs::remove_all(dir, ec);
      }
    }
  }

  bool any_failure() {
    std::lock_guard lock(mu_);
    return any_failure_;
  }

 private:
  static std::uintmax_t file_size_or_zero(const fs::path& file) {
    std::error_code ec;
    auto size = fs::file_size(file, ec);
    return ec ? 0 : size;
  }

  // Only what each log gained during the failed test case, at most the last 80 lines of it.
  void print_logs(const std::string& name) const {
    for (const auto& [log, offset] : offsets_) {
      std::ifstream in(log, std::ios::binary);
      if (!in) {
        continue;
      }
      const auto size = file_size_or_zero(log);
      // A log that shrank was replaced; read what it holds. Large logs: the last 256 KiB will do.
      constexpr std::uintmax_t kWindow = std::uintmax_t{256} * 1024;
      std::uintmax_t from = offset <= size ? offset : 0;
      if (size - from > kWindow) {
        from = size - kWindow;
      }
      in.seekg(static_cast<std::streamoff>(from));
      std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      if (text.empty()) {
        continue;
      }
      std::vector<std::string_view> lines;
      std::string_view rest(text);
      while (!rest.empty()) {
        auto nl = rest.find('\n');
        lines.push_back(rest.substr(0, nl));
        rest = nl == std::string_view::npos ? std::string_view{} : rest.substr(nl + 1);
      }
      constexpr std::size_t kLines = 80;
      const std::size_t first = lines.size() > kLines ? lines.size() - kLines : 0;
      std::cerr << "\n---- " << log.string() << ": last " << (lines.size() - first)
                << " lines written during \"" << name << "\"\n";
      for (std::size_t i = first; i < lines.size(); ++i) {
        std::cerr << lines[i] << "\n";
      }
    }
    std::cerr.flush();
  }

  std::mutex mu_;
  std::map<fs::path, std::uintmax_t> offsets_;
  std::vector<std::pair<fs::path, fs::path>> retired_;
  bool in_case_ = false;
  bool any_failure_ = false;
};

fs::path temp_root() {
  const char* tmpdir = std::getenv("TMPDIR");
  return (tmpdir != nullptr && *tmpdir != '\0') ? fs::path(tmpdir) : fs::path("/tmp");
}

fs::path make_temp_dir(const std::string& prefix) {
  std::string pattern = (temp_root() / (prefix + ".XXXXXX")).string();
  if (::mkdtemp(pattern.data()) == nullptr) {
    throw std::runtime_error("mkdtemp " + pattern + ": " + std::strerror(errno));
  }
  return fs::path(pattern);
}

std::string exit_description(int status) {
  if (WIFEXITED(status)) {
    return "exit code " + std::to_string(WEXITSTATUS(status));
  }
  if (WIFSIGNALED(status)) {
    return std::string("signal ") + ::strsignal(WTERMSIG(status));
  }
  return "status " + std::to_string(status);
}

void write_all(int fd, std::string_view text) {
  while (!text.empty()) {
    ssize_t n = ::write(fd, text.data(), text.size());
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0) {
      return;
    }
    text.remove_prefix(static_cast<std::size_t>(n));
  }
}

// Waits for `events` on `fd` until `deadline`; false on timeout.
bool wait_fd(int fd, short events, Clock::time_point deadline) {
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) {
      return false;
    }
    pollfd p{fd, events, 0};
    int n = ::poll(&p, 1, static_cast<int>(std::min<long long>(left.count(), 1000)));
    if (n > 0) {
      return true;
    }
    if (n < 0 && errno != EINTR) {
      return true;  // let the caller see the error
    }
  }
}

bool tcp_accepts(int port, const std::string& host = "127.0.0.1") {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    return false;
  }
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<std::uint16_t>(port));
  ::inet_pton(AF_INET, host.c_str(), &addr.sin_addr);
  bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  ::close(fd);
  return ok;
}

std::string conninfo_value(std::string_view v) {
  std::string out = "'";
  for (char c : v) {
    if (c == '\'' || c == '\\') {
      out += '\\';
    }
    out += c;
  }
  return out + "'";
}

std::string toml_string(std::string_view v) {
  std::string out = "\"";
  for (char c : v) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out + "\"";
}

std::string upper(std::string s) {
  for (auto& c : s) {
    c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  }
  return s;
}

// The SQLSTATE in a verbose libpq connection error ("FATAL:  28P01: password ..."); the last
// one wins, since libpq appends one message per attempt.
std::string sqlstate_from_message(const std::string& message) {
  static const std::regex kState("(?:FATAL|ERROR|PANIC):  ([0-9A-Z]{5}):");
  std::string state;
  for (std::sregex_iterator it(message.begin(), message.end(), kState), end; it != end; ++it) {
    state = (*it)[1];
  }
  return state;
}

struct PgCancelDeleter {
  void operator()(PGcancel* cancel) const { PQfreeCancel(cancel); }
};
using PgCancelPtr = std::unique_ptr<PGcancel, PgCancelDeleter>;

}  // namespace

// ---- small helpers -----------------------------------------------------------------------------

int free_port() {
  static std::mutex mu;
  static std::set<int> handed_out;
  std::lock_guard lock(mu);
  for (int attempt = 0; attempt < 100; ++attempt) {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      throw std::runtime_error(std::string("socket: ") + std::strerror(errno));
    }
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    int port = 0;
    if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 &&
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
      port = ntohs(addr.sin_port);
    }
    ::close(fd);
    if (port != 0 && handed_out.insert(port).second) {
      return port;
    }
  }
  throw std::runtime_error("free_port: no free port after 100 attempts");
}

bool eventually(std::chrono::milliseconds deadline, const std::function<bool()>& pred,
                std::chrono::milliseconds interval) {
  const auto until = Clock::now() + deadline;
  for (;;) {
    if (pred()) {
      return true;
    }
    if (Clock::now() >= until) {
      return false;
    }
    std::this_thread::sleep_for(interval);
  }
}

std::vector<pid_t> instance_pids(pid_t postmaster) {
  std::vector<pid_t> pids = {postmaster};
  const RunResult r = run({"ps", "-o", "pid=", "--ppid", std::to_string(postmaster)});
  std::size_t pos = 0;
  while (pos < r.output.size()) {
    const std::size_t nl = r.output.find('\n', pos);
    const std::string line = r.output.substr(pos, nl == std::string::npos ? std::string::npos : nl - pos);
    if (line.find_first_not_of(' ') != std::string::npos) pids.push_back(std::stoi(line));
    if (nl == std::string::npos) break;
    pos = nl + 1;
  }
  return pids;
}

RunResult run(const std::vector<std::string>& argv, const Env& env,
              std::chrono::milliseconds timeout) {
  RunResult result;
  if (argv.empty()) {
    return result;
  }

  // Everything the child needs is built before fork: after it, only async-signal-safe calls.
  std::map<std::string, std::string> merged;
  for (char** e = environ; *e != nullptr; ++e) {
    std::string_view kv(*e);
    auto eq = kv.find('=');
    if (eq != std::string_view::npos) {
      merged[std::string(kv.substr(0, eq))] = kv.substr(eq + 1);
    }
  }
  for (const auto& [k, v] : env) {
    merged[k] = v;
  }
  std::vector<std::string> env_strings;
  env_strings.reserve(merged.size());
  for (const auto& [k, v] : merged) {
    env_strings.push_back(k);
    env_strings.back().append("=").append(v);
  }
  std::vector<char*> envp;
  envp.reserve(env_strings.size() + 1);
  for (auto& s : env_strings) {
    envp.push_back(s.data());
  }
  envp.push_back(nullptr);
  std::vector<std::string> args(argv);
  std::vector<char*> c_argv;
  c_argv.reserve(args.size() + 1);
  for (auto& a : args) {
    c_argv.push_back(a.data());
  }
  c_argv.push_back(nullptr);

  int out[2];
  if (::pipe2(out, O_CLOEXEC) != 0) {
    result.output = std::string("pipe2: ") + std::strerror(errno);
    return result;
  }
  pid_t pid = ::fork();
  if (pid < 0) {
    result.output = std::string("fork: ") + std::strerror(errno);
    ::close(out[0]);
    ::close(out[1]);
    return result;
  }
  if (pid == 0) {
    ::setpgid(0, 0);
    int devnull = ::open("/dev/null", O_RDONLY);
    if (devnull >= 0) {
      ::dup2(devnull, STDIN_FILENO);
    }
    ::dup2(out[1], STDOUT_FILENO);
    ::dup2(out[1], STDERR_FILENO);
    ::execvpe(c_argv[0], c_argv.data(), envp.data());
    const char msg[] = "run: exec failed\n";
    [[maybe_unused]] auto n = ::write(STDERR_FILENO, msg, sizeof msg - 1);
    ::_exit(127);
  }
  ::setpgid(pid, pid);  // also in the parent, so the group exists before we might kill it
  ::close(out[1]);

  const auto deadline = Clock::now() + timeout;
  int status = 0;
  bool exited = false;
  bool eof = false;
  char buf[8192];
  while (!exited) {
    if (!eof) {
      pollfd p{out[0], POLLIN, 0};
      if (::poll(&p, 1, 50) > 0) {
        ssize_t n = ::read(out[0], buf, sizeof buf);
        if (n > 0) {
          result.output.append(buf, static_cast<std::size_t>(n));
        } else if (n == 0 || (errno != EINTR && errno != EAGAIN)) {
          eof = true;
        }
      }
    } else {
      std::this_thread::sleep_for(10ms);
    }
    pid_t w = ::waitpid(pid, &status, WNOHANG);
    if (w == pid) {
      exited = true;
    } else if (Clock::now() >= deadline) {
      ::kill(-pid, SIGKILL);  // the child's own process group
      ::waitpid(pid, &status, 0);
      result.timed_out = true;
      exited = true;
    }
  }
  // A daemon the child started may hold the pipe open forever: take what is there, no more.
  ::fcntl(out[0], F_SETFL, ::fcntl(out[0], F_GETFL) | O_NONBLOCK);
  for (ssize_t n; !eof && (n = ::read(out[0], buf, sizeof buf)) > 0;) {
    result.output.append(buf, static_cast<std::size_t>(n));
  }
  ::close(out[0]);
  if (WIFEXITED(status)) {
    result.exit_code = WEXITSTATUS(status);
  }
  if (WIFSIGNALED(status)) {
    result.exit_code = 128 + WTERMSIG(status);
  }
  return result;
}

RunResult run_shell(const std::string& script, const Env& env, std::chrono::milliseconds timeout) {
  return run({"/bin/sh", "-c", script}, env, timeout);
}

void raise_nofile(unsigned long want) {
  rlimit r{};
  REQUIRE(getrlimit(RLIMIT_NOFILE, &r) == 0);
  if (r.rlim_cur < want) {
    r.rlim_cur = std::min<rlim_t>(want, r.rlim_max);
    REQUIRE(setrlimit(RLIMIT_NOFILE, &r) == 0);
  }
  REQUIRE(r.rlim_cur >= want);
}

std::string tail_file(const fs::path& file, std::size_t max_lines) {
  std::ifstream in(file, std::ios::binary);
  if (!in) {
    return "";
  }
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::size_t pos = text.size();
  if (pos > 0 && text[pos - 1] == '\n') {
    --pos;
  }
  for (std::size_t lines = 0; pos > 0; --pos) {
    if (text[pos - 1] == '\n' && ++lines == max_lines) {
      break;
    }
  }
  return text.substr(pos);
}

// ---- libpq -------------------------------------------------------------------------------------

std::string PqResult::value(std::size_t row, std::size_t col) const {
  if (row >= rows.size() || col >= rows[row].size() || !rows[row][col]) {
    return "";
  }
  return *rows[row][col];
}

PqSession::PqSession(const std::string& conninfo, std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  conn_.reset(PQconnectStart(conninfo.c_str()));
  if (!conn_) {
    error_ = "PQconnectStart: out of memory";
    return;
  }
  // Verbose, so that a server's FATAL during login carries its SQLSTATE in the message: libpq
  // has no other way to hand it out before the connection exists.
  PQsetErrorVerbosity(conn_.get(), PQERRORS_VERBOSE);
  PostgresPollingStatusType state =
      PQstatus(conn_.get()) == CONNECTION_BAD ? PGRES_POLLING_FAILED : PGRES_POLLING_WRITING;
  while (state != PGRES_POLLING_OK) {
    if (state == PGRES_POLLING_FAILED) {
      error_ = PQerrorMessage(conn_.get());
      sqlstate_ = sqlstate_from_message(error_);
      conn_.reset();
      return;
    }
    const short events = state == PGRES_POLLING_READING ? POLLIN : POLLOUT;
    if (!wait_fd(PQsocket(conn_.get()), events, deadline)) {
      error_ = "timed out after " + std::to_string(timeout.count()) + " ms connecting";
      conn_.reset();
      return;
    }
    state = PQconnectPoll(conn_.get());
  }
  PQsetErrorVerbosity(conn_.get(), PQERRORS_DEFAULT);
}

bool PqSession::connected() const {
  return conn_ != nullptr && PQstatus(conn_.get()) == CONNECTION_OK;
}

int PqSession::backend_pid() const { return conn_ ? PQbackendPID(conn_.get()) : 0; }

PqResult PqSession::exec(const std::string& sql, std::chrono::milliseconds timeout) {
  PqResult out;
  if (!conn_) {
    out.error = "not connected: " + error_;
    out.sqlstate = sqlstate_;
    return out;
  }
  PGconn* conn = conn_.get();
  if (PQsendQuery(conn, sql.c_str()) == 0) {
    out.error = PQerrorMessage(conn);
    return out;
  }
  out.ok = true;
  auto fail = [&out](std::string error, std::string sqlstate) {
    if (!out.ok) {
      return;  // the first failure is the one worth reporting
    }
    out.ok = false;
    out.error = std::move(error);
    out.sqlstate = std::move(sqlstate);
  };
  auto deadline = Clock::now() + timeout;
  bool cancelled = false;
  for (;;) {
    bool lost = false;
    while (PQisBusy(conn) != 0) {
      if (!wait_fd(PQsocket(conn), POLLIN, deadline)) {
        if (cancelled) {  // the server ignored the cancel too: give up on this connection
          fail("timed out, and the cancel request went unanswered", "");
          conn_.reset();
          return out;
        }
        fail("timed out after " + std::to_string(timeout.count()) + " ms; cancel sent", "");
        PgCancelPtr cancel(PQgetCancel(conn));
        char errbuf[256];
        if (cancel) {
          PQcancel(cancel.get(), errbuf, sizeof errbuf);
        }
        cancelled = true;
        deadline = Clock::now() + 5s;
        continue;
      }
      if (PQconsumeInput(conn) == 0) {
        lost = true;  // PQgetResult now reports the broken connection
        break;
      }
    }
    PgResultPtr res(PQgetResult(conn));
    if (!res) {
      break;
    }
    switch (PQresultStatus(res.get())) {
      case PGRES_TUPLES_OK:
      case PGRES_SINGLE_TUPLE: {
        out.columns.clear();
        out.rows.clear();
        const int ncols = PQnfields(res.get());
        for (int c = 0; c < ncols; ++c) {
          out.columns.emplace_back(PQfname(res.get(), c));
        }
        for (int r = 0; r < PQntuples(res.get()); ++r) {
          auto& row = out.rows.emplace_back();
          for (int c = 0; c < ncols; ++c) {
            if (PQgetisnull(res.get(), r, c) != 0) {
              row.emplace_back(std::nullopt);
            } else {
              row.emplace_back(std::string(PQgetvalue(res.get(), r, c),
                                           static_cast<std::size_t>(PQgetlength(res.get(), r, c))));
            }
          }
        }
        out.command_status = PQcmdStatus(res.get());
        break;
      }
      case PGRES_COMMAND_OK:
        out.columns.clear();
        out.rows.clear();
        out.command_status = PQcmdStatus(res.get());
        break;
      case PGRES_EMPTY_QUERY:
        break;
      case PGRES_COPY_IN:
        PQputCopyEnd(conn, "COPY FROM STDIN is not supported by the test fixture");
        break;
      case PGRES_COPY_OUT: {
        char* buf = nullptr;
        while (PQgetCopyData(conn, &buf, 0) > 0) {
          PQfreemem(buf);
        }
        break;
      }
      default: {
        const char* state = PQresultErrorField(res.get(), PG_DIAG_SQLSTATE);
        std::string sqlstate = state != nullptr ? state : "";
        if (!out.ok && out.sqlstate.empty()) {
          out.sqlstate = sqlstate;  // e.g. 57014 after cancel
        }
        fail(PQresultErrorMessage(res.get()), std::move(sqlstate));
        break;
      }
    }
    if (lost && PQstatus(conn) == CONNECTION_BAD) {
      fail(PQerrorMessage(conn), "");
      break;
    }
  }
  if (PQstatus(conn) == CONNECTION_BAD) {
    fail(PQerrorMessage(conn), "");
  }
  return out;
}

PqResult pq_exec(const std::string& conninfo, const std::string& sql,
                 std::chrono::milliseconds timeout) {
  PqSession session(conninfo, std::min<std::chrono::milliseconds>(timeout, 10s));
  if (!session.connected()) {
    PqResult out;
    out.error = session.error();
    out.sqlstate = session.sqlstate();
    return out;
  }
  return session.exec(sql, timeout);
}

// ---- Cluster -----------------------------------------------------------------------------------

fs::path cluster_script() { return fs::path(PGKEEL_SOURCE_DIR) / "tools" / "cluster.sh"; }

Cluster::Cluster(ClusterOptions options) : options_(options) {
  dir_ = make_temp_dir("pgkeel-cluster");

  std::tie(watchdog_pid_, watchdog_fd_) = start_watchdog(cluster_script(), dir_);
  const std::string script = cluster_script().string();
  const std::string dir = dir_.string();

  std::vector<std::string> up = {script,
                                 "up",
                                 dir,
                                 "--standbys",
                                 std::to_string(options_.standbys),
                                 options_.sync ? "--sync" : "--async",
                                 "--max-connections",
                                 std::to_string(options_.max_connections)};
  if (options_.netns) {
    up.emplace_back("--netns");
  }
  if (options_.basebackup) {
    up.emplace_back("--basebackup");
  }
  RunResult res = run(up, {}, 300s);
  if (!res.ok()) {
    down();
    throw std::runtime_error(
        "tools/cluster.sh up failed (" +
        (res.timed_out ? std::string("timed out") : "exit code " + std::to_string(res.exit_code)) +
        "):\n" + res.output);
  }
  refresh();
  for (const auto& n : nodes_) {
    LogRegistry::get().watch(n.log_file);
  }
}

std::string switchover_commands(const Cluster& cluster) {
  const fs::path tools = cluster_script().parent_path();
  return "stop_command = \"" + (tools / "stop-node.sh").string() + " " + cluster.dir().string() + "\"\n" +
         "rejoin_command = \"" + (tools / "rejoin.sh").string() + " --no-rewind " + cluster.dir().string() + "\"";
}

Cluster::~Cluster() { down(); }

void Cluster::down() noexcept {
  try {
    for (const auto& n : nodes_) {
      LogRegistry::get().forget(n.log_file);
    }
    if (LogRegistry::get().any_failure() && fs::exists(dir_)) {
      // A test failed: the node logs outlive the cluster for a closer look.
      fs::path keep = make_temp_dir("pgkeel-logs");
      for (const auto& entry : fs::directory_iterator(dir_)) {
        if (entry.path().extension() == ".log") {
          fs::copy_file(entry.path(), keep / entry.path().filename());
        }
      }
      std::cerr << "fixture: PostgreSQL logs of " << dir_.string() << " kept in " << keep.string()
                << "\n";
    }
    if (!dir_.empty()) {
      RunResult res = run({cluster_script().string(), "down", dir_.string(), "--rm"}, {}, 120s);
      if (!res.ok()) {
        std::cerr << "fixture: cluster.sh down failed:\n" << res.output << "\n";
      }
    }
  } catch (const std::exception& e) {
    std::cerr << "fixture: stopping the cluster: " << e.what() << "\n";
  }
  if (watchdog_fd_ >= 0) {
    ::close(watchdog_fd_);  // the watchdog finds nothing left to do, and exits
    watchdog_fd_ = -1;
  }
  if (watchdog_pid_ > 0) {
    const auto until = Clock::now() + 5s;
    while (::waitpid(watchdog_pid_, nullptr, WNOHANG) == 0 && Clock::now() < until) {
      std::this_thread::sleep_for(10ms);
    }
    watchdog_pid_ = 0;
  }
}

Cluster& Cluster::shared(const ClusterOptions& options) {
  static std::map<ClusterOptions, std::unique_ptr<Cluster>> clusters;
  auto& slot = clusters[options];
  if (!slot) {
    slot = std::make_unique<Cluster>(options);
  }
  return *slot;
}

void Cluster::refresh() {
  std::ifstream in(env_file());
  if (!in) {
    throw std::runtime_error("cannot read " + env_file().string());
  }
  std::map<std::string, std::string> env;
  for (std::string line; std::getline(in, line);) {
    if (line.empty() || line[0] == '#') {
      continue;
    }
    auto eq = line.find('=');
    if (eq == std::string::npos) {
      continue;
    }
    std::string value = line.substr(eq + 1);
    if (value.size() >= 2 && (value.front() == '"' || value.front() == '\'') &&
        value.back() == value.front()) {
      value = value.substr(1, value.size() - 2);
    }
    env[line.substr(0, eq)] = value;
  }
  sock_dir_ = env["SOCKDIR"];
  gateway_ = env["NETNS_GATEWAY"];
  pg_bindir_ = env["PG_BINDIR"];
  std::vector<NodeInfo> nodes;
  std::istringstream names(env["NODES"]);
  for (std::string name; names >> name;) {
    const std::string key = upper(name);
    NodeInfo n;
    n.name = name;
    n.port = std::stoi(env[key + "_PORT"]);
    n.pid = static_cast<pid_t>(std::stol(env[key + "_PID"]));
    n.data_dir = env[key + "_DATA"];
    n.log_file = env[key + "_LOG"];
    if (!env[key + "_HOST"].empty()) {
      n.host = env[key + "_HOST"];
    }
    n.netns = env[key + "_NETNS"];
    nodes.push_back(std::move(n));
  }
  if (nodes.empty()) {
    throw std::runtime_error(env_file().string() + " lists no NODES");
  }
  nodes_ = std::move(nodes);
}

const NodeInfo& Cluster::node(std::string_view name) const {
  for (const auto& n : nodes_) {
    if (n.name == name) {
      return n;
    }
  }
  throw std::out_of_range("no node " + std::string(name) + " in cluster " + dir_.string());
}

std::string Cluster::conninfo(std::string_view node_name, std::string_view user,
                              std::string_view password, std::string_view dbname) const {
  return "host=" + node(node_name).host + " port=" + std::to_string(port(node_name)) +
         " user=" + conninfo_value(user) + " password=" + conninfo_value(password) +
         " dbname=" + conninfo_value(dbname) + " connect_timeout=5";
}

std::string Cluster::psql_as_postgres(std::string_view node_name, const std::string& sql,
                                      std::string_view dbname) const {
  RunResult res =
      run({(pg_bindir_ / "psql").string(), "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h",
           sock_dir_.string(), "-p", std::to_string(port(node_name)), "-U", "postgres", "-d",
           std::string(dbname), "-c", sql},
          {{"PGOPTIONS", "-c client_min_messages=warning"}, {"PGCONNECT_TIMEOUT", "5"}}, 60s);
  if (!res.ok()) {
    throw std::runtime_error("psql on " + std::string(node_name) + " failed (exit " +
                             std::to_string(res.exit_code) + ") for: " + sql + "\n" + res.output);
  }
  std::string out = std::move(res.output);
  while (!out.empty() && out.back() == '\n') {
    out.pop_back();
  }
  return out;
}

RunResult Cluster::control(const std::string& verb, const std::vector<std::string>& args) {
  std::vector<std::string> argv = {cluster_script().string(), verb, dir_.string()};
  argv.insert(argv.end(), args.begin(), args.end());
  RunResult res = run(argv, {}, 120s);
  refresh();
  return res;
}

namespace {
void expect_ok(const RunResult& res, const std::string& what) {
  if (!res.ok()) {
    throw std::runtime_error(what + " failed:\n" + res.output);
  }
}
}  // namespace

void Cluster::stop_node(std::string_view name, std::string_view mode) {
  expect_ok(control("stop", {std::string(name), std::string(mode)}),
            "cluster.sh stop " + std::string(name));
}

void Cluster::start_node(std::string_view name) {
  expect_ok(control("start", {std::string(name)}), "cluster.sh start " + std::string(name));
}

void Cluster::promote(std::string_view name) {
  expect_ok(control("promote", {std::string(name)}), "cluster.sh promote " + std::string(name));
}

NetHost Cluster::add_host(const std::string& name) {
  const RunResult res = control("host", {name});
  expect_ok(res, "cluster.sh host " + name);
  std::ifstream in(env_file());
  const std::string prefix = upper(name) + "_";
  NetHost h{name, {}, {}};
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(prefix + "ADDR=", 0) == 0) h.address = line.substr(prefix.size() + 5);
    if (line.rfind(prefix + "NETNS=", 0) == 0) h.netns = line.substr(prefix.size() + 6);
  }
  if (h.address.empty() || h.netns.empty()) {
    throw std::runtime_error("cluster.sh host " + name + ": not in cluster.env");
  }
  return h;
}

// ---- Pgkeel ------------------------------------------------------------------------------------

fs::path Pgkeel::binary() { return fs::path(PGKEEL_BINARY_DIR) / "pgkeel"; }

Pgkeel::Pgkeel(const Cluster& cluster, PgkeelOptions options)
    : cluster_(cluster), options_(std::move(options)) {
  dir_ = make_temp_dir("pgkeel-proc");
  config_path_ = dir_ / "pgkeel.toml";
  log_path_ = dir_ / "pgkeel.log";
  for (auto& l : options_.listeners) {
    if (l.port == 0) {
      l.port = free_port();
    }
  }
  if (options_.console && options_.console_port == 0) options_.console_port = free_port();
  if (options_.status && options_.status_port == 0) options_.status_port = free_port();
  write_config();
  LogRegistry::get().watch(log_path_);
  try {
    start();
  } catch (...) {
    stop();
    LogRegistry::get().retire(dir_, log_path_);
    throw;
  }
}

Pgkeel::~Pgkeel() {
  stop();
  LogRegistry::get().retire(dir_, log_path_);
}

int Pgkeel::port(std::string_view listener) const {
  for (const auto& l : options_.listeners) {
    if (l.name == listener) {
      return l.port;
    }
  }
  throw std::out_of_range("no pgkeel listener named " + std::string(listener));
}

std::string Pgkeel::conninfo(std::string_view user, std::string_view password,
                             std::string_view dbname, std::string_view listener) const {
  return "host=" + options_.listen_host + " port=" + std::to_string(port(listener)) + " user=" + conninfo_value(user) +
         " password=" + conninfo_value(password) + " dbname=" + conninfo_value(dbname) +
         " connect_timeout=5";
}

std::string Pgkeel::console_conninfo() const {
  return "host=" + options_.listen_host + " port=" + std::to_string(options_.console_port) + " user=" + std::string(kPgkeelUser) +
         " password=" + std::string(kPgkeelPassword) + " dbname=pgkeel connect_timeout=5";
}

std::string Pgkeel::status_url() const {
  return "http://" + options_.listen_host + ":" + std::to_string(options_.status_port);
}

std::string Pgkeel::render_config() const {
  std::ostringstream out;
  out << "# written by tests/integration/fixture.cc\n"
      << "[general]\n"
      << "workers = " << options_.workers << "\n"
      << "max_client_conn = " << options_.max_client_conn << "\n"
      << "log_level = " << toml_string(options_.log_level) << "\n"
      << "users_file = " << toml_string(cluster_.users_file().string()) << "\n";
  if (options_.state_file) out << "state_file = " << toml_string((dir_ / "pgkeel.state").string()) << "\n";
  out << options_.general_extra << "\n"
      << "[cluster]\n"
      << "initial_primary = " << toml_string(options_.initial_primary) << "\n"
      << options_.cluster_extra << "\n"
      << "[pool]\n"
      << "pool_size = " << options_.pool_size << "\n"
      << options_.pool_extra << "\n"
      << "[health]\n"
      << "user = " << toml_string(std::string(kPgkeelUser)) << "\n"
      << "password = " << toml_string(std::string(kPgkeelPassword)) << "\n"
      << options_.health_extra << "\n"
      << "[failover]\n"
      << "replication_password = " << toml_string(std::string(kReplicationPassword)) << "\n"
      << options_.failover_extra << "\n";
  if (options_.console) {
    out << "[console]\n"
        << "host = " << toml_string(options_.listen_host) << "\n"
        << "port = " << options_.console_port << "\n"
        << "admin_users = [\"pgkeel\"]\n";
    out << "monitor_users = [";
    for (std::size_t i = 0; i < options_.console_monitor_users.size(); ++i) {
      out << (i ? ", " : "") << toml_string(options_.console_monitor_users[i]);
    }
    out << "]\n" << options_.console_extra << "\n\n";
  }
  if (options_.status) {
    out << "[status]\n"
        << "host = " << toml_string(options_.listen_host) << "\n"
        << "port = " << options_.status_port << "\n"
        << options_.status_extra << "\n\n";
  }
  for (const auto& l : options_.listeners) {
    out << "[[listener]]\n"
        << "name = " << toml_string(l.name) << "\n"
        << "host = " << toml_string(options_.listen_host) << "\n"
        << "port = " << l.port << "\n"
        << "intent = " << toml_string(l.intent) << "\n";
    if (options_.unix_socket_dir) {
      out << "unix_socket_dir = " << toml_string(options_.unix_socket_dir->string()) << "\n";
    }
    if (!l.pool_mode.empty()) {
      out << "pool_mode = " << toml_string(l.pool_mode) << "\n";
    }
    out << l.extra << "\n";
  }
  for (const auto& n : cluster_.nodes()) {
    if (!options_.nodes.empty() &&
        std::find(options_.nodes.begin(), options_.nodes.end(), n.name) == options_.nodes.end()) {
      continue;
    }
    const auto host = options_.node_hosts.find(n.name);
    out << "[[node]]\n"
        << "name = " << toml_string(n.name) << "\n"
        << "host = " << toml_string(host == options_.node_hosts.end() ? n.host : host->second) << "\n"
        << "port = " << n.port << "\n\n";
  }
  out << "[databases]\n" << options_.databases << "\n\n" << options_.extra_toml << "\n";
  return out.str();
}

// The watchdog waits for EOF on a pipe only this process can write to (close-on-exec), then
// runs `SCRIPT down DIR --rm`: the servers go away even if we crash, abort or are SIGKILLed.
// setsid keeps it out of reach of a terminal's Ctrl-C, which it must outlive to clean up.
std::pair<pid_t, int> start_watchdog(const fs::path& script_path, const fs::path& dir_path) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) throw std::runtime_error("pipe2 failed");
  const std::string script = script_path.string();
  const std::string dir = dir_path.string();
  const char* const argv[] = {"/bin/sh", "-c", "cat >/dev/null; exec \"$0\" down \"$1\" --rm", script.c_str(), dir.c_str(), nullptr};
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::setsid();
    ::dup2(fds[0], STDIN_FILENO);
    const int devnull = ::open("/dev/null", O_WRONLY);
    if (devnull >= 0) {
      ::dup2(devnull, STDOUT_FILENO);
      ::dup2(devnull, STDERR_FILENO);
    }
    ::execv("/bin/sh", const_cast<char* const*>(argv));
    ::_exit(127);
  }
  ::close(fds[0]);
  return {pid, fds[1]};
}

std::string read_file(const fs::path& p) {
  std::ifstream in(p);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

std::string Pgkeel::config_text() const { return read_file(config_path_); }

void Pgkeel::write_config() {
  const fs::path tmp = config_path_.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << render_config();
    if (!out) {
      throw std::runtime_error("cannot write " + tmp.string());
    }
  }
  fs::rename(tmp, config_path_);  // a reload never sees half a file
}

void Pgkeel::start() {
  if (running()) {
    throw std::logic_error("pgkeel is already running (pid " + std::to_string(pid_) + ")");
  }
  const std::string bin = binary().string();
  if (::access(bin.c_str(), X_OK) != 0) {
    throw std::runtime_error(bin + " is not built (" + std::strerror(errno) + ")");
  }
  int log_fd = ::open(log_path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (log_fd < 0) {
    throw std::runtime_error("cannot open " + log_path_.string());
  }
  write_all(log_fd, "---- fixture: starting " + bin + " -c " + config_path_.string() + "\n");

  std::string config = config_path_.string();
  const char* const argv[] = {bin.c_str(), "-c", config.c_str(), nullptr};
  const pid_t parent = ::getpid();
  exit_status_.reset();
  pid_t pid = ::fork();
  if (pid < 0) {
    ::close(log_fd);
    throw std::runtime_error(std::string("fork: ") + std::strerror(errno));
  }
  if (pid == 0) {
    // Dies with the test process even when no destructor gets to run.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) {
      ::_exit(1);
    }
    int devnull = ::open("/dev/null", O_RDONLY);
    if (devnull >= 0) {
      ::dup2(devnull, STDIN_FILENO);
    }
    ::dup2(log_fd, STDOUT_FILENO);
    ::dup2(log_fd, STDERR_FILENO);
    if (!options_.netns.empty()) {
      // Run inside the test's network namespace (a test host of its own).
      const std::string ns = "/run/netns/" + options_.netns;
      const int nsfd = ::open(ns.c_str(), O_RDONLY | O_CLOEXEC);
      if (nsfd < 0 || ::setns(nsfd, CLONE_NEWNET) != 0) ::_exit(126);
    }
    if (options_.nofile) {
      const rlimit limit{*options_.nofile, *options_.nofile};
      if (::setrlimit(RLIMIT_NOFILE, &limit) != 0) ::_exit(125);
    }
    ::execv(argv[0], const_cast<char* const*>(argv));
    ::_exit(127);
  }
  ::close(log_fd);
  pid_ = pid;

  // Every listener, and the console and status ports when configured (they open last).
  std::vector<std::pair<std::string, int>> ports;
  for (const auto& l : options_.listeners) ports.emplace_back("listener " + l.name, l.port);
  if (options_.console) ports.emplace_back("console", options_.console_port);
  if (options_.status) ports.emplace_back("status", options_.status_port);
  for (const auto& [what, port] : ports) {
    const int p = port;
    const bool up = eventually(
        options_.start_timeout, [&] { return !running() || tcp_accepts(p, options_.listen_host); }, 10ms);
    if (!running() || !up) {
      const std::string why = exit_status_
                                  ? "exited with " + exit_description(*exit_status_)
                                  : "did not accept connections on " + what + " (port " +
                                        std::to_string(port) + ") within " +
                                        std::to_string(options_.start_timeout.count()) + " ms";
      stop();
      throw std::runtime_error("pgkeel " + why + "; last lines of " + log_path_.string() + ":\n" +
                               tail_file(log_path_, 40));
    }
  }
}

bool Pgkeel::running() {
  if (pid_ <= 0) {
    return false;
  }
  int status = 0;
  pid_t w = ::waitpid(pid_, &status, WNOHANG);
  if (w == pid_ || (w < 0 && errno == ECHILD)) {
    if (w == pid_) {
      exit_status_ = status;
    }
    pid_ = 0;  // never signal a pid that may have been reused
    return false;
  }
  return true;
}

int Pgkeel::stop() {
  if (!running()) {
    return exit_status_.value_or(0);
  }
  ::kill(pid_, SIGTERM);
  const bool gone = eventually(
      options_.stop_timeout, [&] { return !running(); }, 10ms);
  if (!gone && pid_ > 0) {
    std::cerr << "fixture: pgkeel pid " << pid_ << " ignored SIGTERM for "
              << options_.stop_timeout.count() << " ms; sending SIGKILL\n";
    ::kill(pid_, SIGKILL);
    int status = 0;
    if (::waitpid(pid_, &status, 0) == pid_) {
      exit_status_ = status;
    }
    pid_ = 0;
  }
  return exit_status_.value_or(0);
}

void Pgkeel::restart() {
  stop();
  start();
}

void Pgkeel::signal(int sig) {
  if (running()) {
    ::kill(pid_, sig);
  }
}

// ---- Catch2 hook -------------------------------------------------------------------------------

namespace {

// When a test case fails, prints what each running (or just stopped) fixture logged during it.
class FailureLogListener : public Catch::TestEventListenerBase {
 public:
  using TestEventListenerBase::TestEventListenerBase;

  void testCaseStarting(const Catch::TestCaseInfo& info) override {
    TestEventListenerBase::testCaseStarting(info);
    LogRegistry::get().case_starting();
  }

  void testCaseEnded(const Catch::TestCaseStats& stats) override {
    LogRegistry::get().case_ended(stats.totals.assertions.failed > 0, stats.testInfo.name);
    TestEventListenerBase::testCaseEnded(stats);
  }
};

CATCH_REGISTER_LISTENER(FailureLogListener)

}  // namespace
}  // namespace pgkeel::test
