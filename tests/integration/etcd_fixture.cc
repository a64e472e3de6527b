#include "tests/integration/etcd_fixture.h"

#include <tuple>

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "tests/integration/fixture.h"

namespace pgkeel::test {

namespace {

fs::path make_dir(const std::string& prefix) {
  const char* tmpdir = std::getenv("TMPDIR");
  const fs::path root = (tmpdir != nullptr && *tmpdir != '\0') ? fs::path(tmpdir) : fs::path("/tmp");
  std::string pattern = (root / (prefix + ".XXXXXX")).string();
  if (::mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp " + pattern + ": " + std::strerror(errno));
  return fs::path(pattern);
}

}  // namespace

bool loop_until(event_base* base, std::chrono::milliseconds deadline, const std::function<bool()>& pred) {
  const auto until = std::chrono::steady_clock::now() + deadline;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > until) return false;
    timeval tv{0, 20000};
    event_base_loopexit(base, &tv);
    event_base_dispatch(base);
  }
  return true;
}

fs::path etcd_script() { return fs::path(PGKEEL_SOURCE_DIR) / "tools" / "etcd.sh"; }

EtcdCluster::EtcdCluster(int members, const std::string& client_host)
    : EtcdCluster(EtcdOptions{.members = members, .client_host = client_host}) {}

EtcdCluster::EtcdCluster(const EtcdOptions& options) {
  const int members = options.members;
  const std::string& client_host = options.client_host;
  dir_ = make_dir("pgkeel-etcd");
  // As Cluster's: a watchdog runs `down --rm` when this process goes away, however it goes.
  std::tie(watchdog_pid_, watchdog_fd_) = start_watchdog(etcd_script(), dir_);
  const std::string script = etcd_script().string();
  const std::string dir = dir_.string();
  std::vector<std::string> up = {script, "up", dir, "--members", std::to_string(members)};
  if (!client_host.empty()) {
    up.insert(up.end(), {"--client-host", client_host});
  }
  if (options.tls) up.push_back("--tls");
  if (!options.password.empty()) up.insert(up.end(), {"--auth", options.password});
  RunResult res = run(up, {}, 120s);
  if (!res.ok()) {
    ::close(watchdog_fd_);
    watchdog_fd_ = -1;
    throw std::runtime_error("tools/etcd.sh up failed:\n" + res.output);
  }
  std::ifstream env(dir_ / "etcd.env");
  std::string line;
  while (std::getline(env, line)) {
    if (line.rfind("ETCD_CACERT=", 0) == 0) ca_file_ = line.substr(12);
    if (line.rfind("ETCD_USER=", 0) == 0) user_ = line.substr(10);
    const bool host = line.rfind("ETCD_HOST_ENDPOINTS=", 0) == 0;
    if (line.rfind("ETCD_ENDPOINTS=", 0) != 0 && !host) continue;
    std::stringstream ss(line.substr(host ? 20 : 15));
    std::string url;
    while (std::getline(ss, url, ',')) (host ? host_urls_ : urls_).push_back(url);
  }
  if (urls_.size() != static_cast<std::size_t>(members)) throw std::runtime_error("etcd.env lists no endpoints");
}

EtcdCluster::~EtcdCluster() {
  run({etcd_script().string(), "down", dir_.string(), "--rm"}, {}, 60s);
  if (watchdog_fd_ >= 0) ::close(watchdog_fd_);  // the watchdog finds nothing left to do
  if (watchdog_pid_ > 0) ::waitpid(watchdog_pid_, nullptr, 0);
  std::error_code ec;
  fs::remove_all(dir_, ec);
}

std::vector<int> EtcdCluster::client_ports() const {
  std::vector<int> out;
  for (const std::string& u : urls_) out.push_back(std::stoi(u.substr(u.rfind(':') + 1)));
  return out;
}

std::vector<conf::Endpoint> EtcdCluster::endpoints() const {
  std::vector<conf::Endpoint> out;
  for (const std::string& u : urls_) {
    std::string why;
    out.push_back(*conf::parse_endpoint(u, why));
  }
  return out;
}

void EtcdCluster::control(const std::vector<std::string>& args) {
  std::vector<std::string> argv = {etcd_script().string()};
  argv.push_back(args[0]);
  argv.push_back(dir_.string());
  argv.insert(argv.end(), args.begin() + 1, args.end());
  RunResult res = run(argv, {}, 60s);
  if (!res.ok()) throw std::runtime_error("tools/etcd.sh " + args[0] + " failed:\n" + res.output);
}

void EtcdCluster::stop(int n) { control({"stop", std::to_string(n)}); }
void EtcdCluster::kill(int n) { control({"kill", std::to_string(n)}); }
void EtcdCluster::start(int n) { control({"start", std::to_string(n)}); }

std::string EtcdCluster::ctl(const std::vector<std::string>& args) {
  std::string endpoints;
  for (const std::string& u : urls_) endpoints += (endpoints.empty() ? "" : ",") + u;
  std::vector<std::string> argv = {"etcdctl", "--endpoints", endpoints, "--command-timeout", "5s"};
  if (!ca_file_.empty()) argv.insert(argv.end(), {"--cacert", ca_file_.string()});
  if (!user_.empty()) argv.insert(argv.end(), {"--user", user_});
  argv.insert(argv.end(), args.begin(), args.end());
  RunResult res = run(argv, {{"ETCDCTL_API", "3"}}, 30s);
  if (!res.ok()) throw std::runtime_error("etcdctl failed:\n" + res.output);
  return res.output;
}

}  // namespace pgkeel::test
