// proxy/proxy.h — the process: builds the shared state from a validated config, binds the
// listeners, runs the workers, and turns signals into shutdowns.
#pragma once

#include <string>
#include <vector>

#include "conf/config.h"

namespace pgkeel::proxy {

struct RunOptions {
  // pgkeel --takeover: the listening sockets, and where writes go, come from the running pgkeel
  // at general.takeover_socket (proxy/takeover.h), which then drains and exits.
  bool takeover = false;
  // How this process was started (argv, without --takeover): RESTART and SIGUSR2 start it again
  // with --takeover.
  std::vector<std::string> command;
};

// Runs until SIGTERM (graceful) or SIGINT (fast), or until another process has taken over and
// the sessions here have drained. Returns the process exit code.
int run(const conf::Config& config, const RunOptions& options = {});

}  // namespace pgkeel::proxy
