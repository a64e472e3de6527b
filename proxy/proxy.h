// proxy/proxy.h — the process: builds the shared state from a validated config, binds the
// listeners, runs the workers, and turns signals into shutdowns.
#pragma once

#include <string>

#include "conf/config.h"

namespace pgkeel::proxy {

// Runs until SIGTERM (graceful) or SIGINT (fast). Returns the process exit code.
int run(const conf::Config& config);

}  // namespace pgkeel::proxy
