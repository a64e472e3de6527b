// tests/integration/etcd_fixture.h — a real etcd cluster for the [store] tests: N members on
// loopback (or another local address) started by tools/etcd.sh, stopped and removed in the
// destructor (and by a watchdog if the test process dies), with members that can be stopped,
// killed and started again.
#pragma once

#include <sys/types.h>

#include <filesystem>
#include <string>
#include <vector>

#include "conf/endpoint.h"

namespace pgkeel::test {

class EtcdCluster {
 public:
  // `host`: the local address clients reach the members on (tools/etcd.sh up --host), e.g. a
  // netns Cluster's gateway, so that a pgkeel inside a namespace reaches etcd too. Throws
  // std::runtime_error if `up` fails.
  explicit EtcdCluster(int members = 3, const std::string& host = "127.0.0.1");
  ~EtcdCluster();
  EtcdCluster(const EtcdCluster&) = delete;
  EtcdCluster& operator=(const EtcdCluster&) = delete;

  const std::filesystem::path& dir() const { return dir_; }
  const std::vector<std::string>& urls() const { return urls_; }  // "http://HOST:P", by member
  std::vector<int> client_ports() const;                          // P of each member's URL
  std::vector<conf::Endpoint> endpoints() const;
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
  pid_t watchdog_pid_ = -1;
  int watchdog_fd_ = -1;
};

std::filesystem::path etcd_script();

}  // namespace pgkeel::test
