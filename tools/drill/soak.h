// tools/drill/soak.h — the soak (--soak N): faults drawn at random from the seed, one at a time,
// each once the cluster is whole again, with what the last one broke put back in between (a
// killed node started again, so pgkeel rejoins it). The load runs throughout; the ledger is
// verified over the whole run.
#pragma once

#include <csignal>
#include <mutex>
#include <string>
#include <vector>

#include "tools/drill/actions.h"
#include "tools/drill/load.h"
#include "tools/drill/plan.h"
#include "tools/drill/report.h"

namespace pgkeel::drill {

struct SoakRun {
  const World& world;
  std::string conninfo;
  bool sync = true;
  SoakOptions options;
  Load& load;
  // Shared with the live view; every push below holds `mu`.
  std::mutex& mu;
  Recording& rec;
  std::vector<Fault>& faults;
  std::vector<Injection>& injections;
  std::vector<bool>& undone;
  const volatile std::sig_atomic_t& signalled;
};

// Runs the soak on the calling thread; returns when every fault ran and the cluster is whole
// again, or when it cannot go on (rec.soak_stopped says why), or on a signal.
void run_soak(SoakRun& run);

// The kinds a soak draws from when --soak-kinds is not given: every kind this world can inject
// (partition needs nodes in network namespaces, restart-proxy a restart command, sync-loss
// synchronous mode; kills and hangs need the nodes on this machine).
std::vector<std::string> default_soak_kinds(const World& world, bool sync);

}  // namespace pgkeel::drill
