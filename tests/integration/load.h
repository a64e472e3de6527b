// tests/integration/load.h — what a user's own load looks like to the tests: a CPU hog on every
// core (Debian's stress-ng) and pgbench running in the background, each a child process in its
// own process group that the destructor stops by pid.
#pragma once

#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/integration/fixture.h"

namespace pgkeel::test {

// A child process (argv[0] searched in PATH), stdout and stderr to `log`, in its own process
// group. stop() (and the destructor) sends SIGTERM to the group, then SIGKILL after 5 s.
class Background {
 public:
  Background(const std::vector<std::string>& argv, const fs::path& log) : log_(log) {
    pid_ = fork();
    if (pid_ == 0) {
      setpgid(0, 0);
      FILE* out = std::fopen(log.c_str(), "w");
      if (out != nullptr) {
        dup2(fileno(out), STDOUT_FILENO);
        dup2(fileno(out), STDERR_FILENO);
      }
      std::vector<char*> args;
      for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
      args.push_back(nullptr);
      execvp(args[0], args.data());
      _exit(127);
    }
    if (pid_ > 0) setpgid(pid_, pid_);
  }
  ~Background() { stop(); }
  Background(const Background&) = delete;
  Background& operator=(const Background&) = delete;

  // Waits for it to exit on its own (up to `deadline`); returns the exit code, or -1 when it had
  // to be stopped or did not start.
  int wait(std::chrono::milliseconds deadline) {
    if (pid_ <= 0) return status_;
    int st = 0;
    const auto until = std::chrono::steady_clock::now() + deadline;
    while (std::chrono::steady_clock::now() < until) {
      const pid_t r = waitpid(pid_, &st, WNOHANG);
      if (r == pid_) {
        pid_ = 0;
        status_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        return status_;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    stop();
    return -1;
  }

  // SIGTERM to the process alone (not its group), then wait() up to `deadline`: for a child that
  // ends cleanly on SIGTERM (pgkeel-ledger writes its report) and whose exit code matters.
  int terminate(std::chrono::milliseconds deadline) {
    if (pid_ <= 0) return status_;
    kill(pid_, SIGTERM);
    return wait(deadline);
  }

  void stop() {
    if (pid_ <= 0) return;
    kill(-pid_, SIGTERM);
    int st = 0;
    for (int i = 0; i < 50; ++i) {
      if (waitpid(pid_, &st, WNOHANG) == pid_) {
        pid_ = 0;
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    kill(-pid_, SIGKILL);
    waitpid(pid_, &st, 0);
    pid_ = 0;
  }

  std::string output() const {
    std::ifstream in(log_);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }

 private:
  fs::path log_;
  pid_t pid_ = -1;
  int status_ = -1;
};

// Every core kept busy, as a host saturated by its own load is: `stress-ng --cpu N`, N = the
// number of cores, at normal priority.
inline std::unique_ptr<Background> cpu_hog(const fs::path& dir, std::chrono::seconds duration) {
  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  return std::make_unique<Background>(
      std::vector<std::string>{"stress-ng", "--cpu", std::to_string(cores), "--timeout", std::to_string(duration.count()) + "s",
                               "--quiet"},
      dir / "stress-ng.log");
}

// The figure after `key` in pgbench's report ("number of failed transactions: 0 (0.000%)"), or
// -1 when it is not there.
inline double pgbench_figure(const std::string& out, const std::string& key) {
  const std::size_t at = out.find(key);
  if (at == std::string::npos) return -1;
  return std::strtod(out.c_str() + at + key.size(), nullptr);
}

}  // namespace pgkeel::test
