// tests/integration/etcd_fixture.h — a real etcd cluster for the [store] tests: N members on
// loopback started by tools/etcd.sh, stopped and removed in the destructor (and by a watchdog if
// the test process dies), with members that can be stopped, killed and started again.
#pragma once

#include <sys/types.h>

#include <event2/event.h>

#include <chrono>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "conf/endpoint.h"

namespace pgkeel::test {

struct EtcdOptions {
  int members = 3;
  std::string client_host;  // see EtcdCluster(members, client_host)
  bool tls = false;         // clients speak TLS (https://); ca_file() is the CA to trust
  std::string password;     // etcd authentication on: users root and pgkeel with this password
};

class EtcdCluster {
 public:
  explicit EtcdCluster(const EtcdOptions& options);
  // client_host: the members take clients there too (tools/etcd.sh up --client-host), e.g. a
  // bridge address for pgkeel instances in network namespaces. Throws if `up` fails.
  explicit EtcdCluster(int members = 3, const std::string& client_host = {});
  ~EtcdCluster();
  EtcdCluster(const EtcdCluster&) = delete;
  EtcdCluster& operator=(const EtcdCluster&) = delete;

  const std::filesystem::path& dir() const { return dir_; }
  const std::vector<std::string>& urls() const { return urls_; }  // "http://127.0.0.1:P", by member
  // "http://CLIENT_HOST:P", by member (empty without a client_host).
  const std::vector<std::string>& host_urls() const { return host_urls_; }
  std::vector<int> client_ports() const;  // P of each member's URL
  std::vector<conf::Endpoint> endpoints() const;
  // --tls: the CA that signed the members' certificate (empty otherwise).
  const std::filesystem::path& ca_file() const { return ca_file_; }
  // Member n (1-based): SIGTERM and wait, SIGKILL, or start it again with its data.
  void stop(int n);
  void kill(int n);
  void start(int n);
  // etcdctl, with every member as an endpoint; returns its output (throws when it fails).
  std::string ctl(const std::vector<std::string>& args);

 private:
  void control(const std::vector<std::string>& args);
  std::filesystem::path dir_;
  std::vector<std::string> urls_;
  std::vector<std::string> host_urls_;
  std::filesystem::path ca_file_;
  std::string user_;  // root:PASSWORD for etcdctl, with authentication on
  pid_t watchdog_pid_ = -1;
  int watchdog_fd_ = -1;
};

std::filesystem::path etcd_script();

// Runs `base`'s loop until `pred` holds or `deadline` passes (a failure bound, not a measurement):
// for the tests that drive the etcd client and the record store on a loop of their own.
bool loop_until(event_base* base, std::chrono::milliseconds deadline, const std::function<bool()>& pred);

}  // namespace pgkeel::test
