// tools/drill/soak.cc — see soak.h.
#include "tools/drill/soak.h"

#include <chrono>
#include <cstdio>
#include <thread>

namespace pgkeel::drill {

namespace {

using std::chrono::milliseconds;
using SteadyClock = std::chrono::steady_clock;

// Sleeps up to `ms`, waking early on a signal; false when signalled.
bool pause_for(const SoakRun& run, std::int64_t ms) {
  const auto until = SteadyClock::now() + milliseconds(ms);
  while (SteadyClock::now() < until) {
    if (run.signalled != 0) return false;
    std::this_thread::sleep_for(std::min(milliseconds(100), std::chrono::duration_cast<milliseconds>(until - SteadyClock::now())));
  }
  return run.signalled == 0;
}

// Waits until the cluster is whole; "" then, else why not (timeout or signal).
std::string wait_whole(const SoakRun& run) {
  const auto deadline = SteadyClock::now() + milliseconds(run.options.whole_timeout_ms);
  std::string why;
  std::string said;
  while (true) {
    why = not_whole_because(run.world, run.conninfo, run.sync);
    if (why.empty()) return "";
    if (why != said) {
      std::fprintf(stderr, "drill: soak: waiting for the cluster to be whole: %s\n", why.c_str());
      said = why;
    }
    if (SteadyClock::now() > deadline) {
      return "the cluster was not whole again within " + std::to_string(run.options.whole_timeout_ms / 1000) +
             " s: " + why;
    }
    if (!pause_for(run, 500)) return "stopped by a signal";
  }
}

// SHOW EVENTS now, merged into what was read before (pgkeel's list starts again at a restart and
// keeps only its last 1,000 events; a soak outlives both).
void collect_events(SoakRun& run) {
  std::string error;
  std::vector<ConsoleEvent> now;
  {
    std::lock_guard lock(run.mu);
    now = console_events(run.world.console_conninfo, run.load.started_at_unix_ms(), error);
  }
  if (!error.empty()) return;  // read again later; the last read (after the soak) must succeed
  std::lock_guard lock(run.mu);
  merge_events(run.rec.events, now);
}

void note(SoakRun& run, std::size_t index, const std::string& more) {
  std::lock_guard lock(run.mu);
  run.rec.faults[index].detail += "; " + more;
}

}  // namespace

std::vector<std::string> default_soak_kinds(const World& world, bool sync) {
  bool local = false;
  bool links = false;
  for (const auto& n : world.nodes) {
    local = local || !n.data_dir.empty();
    links = links || !n.link.empty();
  }
  std::vector<std::string> kinds;
  for (std::string_view k : kSoakKinds) {
    if ((k == "kill" || k == "kill-all" || k == "hang" || k == "sync-loss") && !local) continue;
    if (k == "partition" && !links) continue;
    if (k == "restart-proxy" && world.restart_command.empty()) continue;
    if (k == "sync-loss" && !sync) continue;
    kinds.emplace_back(k);
  }
  return kinds;
}

void run_soak(SoakRun& run) {
  const SoakOptions& o = run.options;
  std::uint64_t state = o.seed;
  {
    std::lock_guard lock(run.mu);
    run.rec.soak = true;
    run.rec.soak_seed = o.seed;
    run.rec.soak_planned = o.faults;
  }
  auto stop_with = [&](const std::string& why) {
    std::lock_guard lock(run.mu);
    run.rec.soak_stopped = why;
  };
  for (int i = 0; i <= o.faults; ++i) {
    // Whole again (after the previous fault), then writes flow for the gap.
    const std::string why = wait_whole(run);
    const std::int64_t whole_at = run.load.now_ms();
    collect_events(run);
    if (i > 0) {
      std::lock_guard lock(run.mu);
      const auto& prev = run.rec.faults[static_cast<std::size_t>(i - 1)];
      if (why.empty()) run.rec.whole_after_ms[static_cast<std::size_t>(i - 1)] = whole_at - prev.t_ms;
    }
    if (!why.empty()) {
      stop_with((i == 0 ? "before the first fault: " : "after fault " + std::to_string(i) + ": ") + why);
      return;
    }
    if (!pause_for(run, o.gap_ms)) return;
    if (i == o.faults) return;

    const Fault f = draw_soak_fault(state, o.kinds, run.load.now_ms(), o.hold_ms);
    if (f.kind == FaultKind::kRestartProxy) collect_events(run);  // its list dies with the process
    const Injected done = inject_and_record(run.world, f, run.load.now_ms());
    const Injection& in = done.injection;
    const FaultRecord& fr = done.record;
    const auto index = static_cast<std::size_t>(i);
    {
      std::lock_guard lock(run.mu);
      run.faults.push_back(f);
      run.injections.push_back(in);
      run.undone.push_back(!(in.ok && in.undo_after_ms));
      run.rec.faults.push_back(fr);
      run.rec.whole_after_ms.emplace_back();
    }
    std::fprintf(stderr, "drill: soak %d/%d t=%.1fs %s%s: %s%s%s\n", i + 1, o.faults, static_cast<double>(fr.t_ms) / 1000.0,
                 std::string(to_string(f.kind)).c_str(), f.all_processes ? " mode=all" : "", fr.detail.c_str(),
                 fr.effect.empty() ? "" : "; ", fr.effect.c_str());
    if (!in.ok) {
      stop_with("fault " + std::to_string(i + 1) + " (" + std::string(to_string(f.kind)) + ") could not be injected: " + in.detail);
      return;
    }
    // Undone after its hold: SIGCONT, the link up, replay resumed.
    if (in.undo_after_ms) {
      const std::int64_t wait = fr.t_ms + *in.undo_after_ms - run.load.now_ms();
      pause_for(run, std::max<std::int64_t>(0, wait));  // undone even after a signal
      const std::string what = undo(run.world, f, in);
      {
        std::lock_guard lock(run.mu);
        run.undone[index] = true;
      }
      note(run, index, what + " at " + std::to_string(run.load.now_ms()) + " ms");
    }
    // A killed node is started again, once pgkeel has replaced it if it was the writer; pgkeel
    // then finds it returned (a primary on the old timeline) and rejoins it.
    if ((f.kind == FaultKind::kKill || f.kind == FaultKind::kSyncLoss) && !fr.target.empty()) {
      if (fr.hit_writer) {
        const auto deadline = SteadyClock::now() + milliseconds(o.whole_timeout_ms);
        while (SteadyClock::now() < deadline && run.signalled == 0) {
          const RouteNow r = current_route(run.world.console_conninfo);
          if (r.ok && !r.primary.empty() && r.primary != fr.target) break;
          std::this_thread::sleep_for(milliseconds(100));
        }
      } else {
        pause_for(run, 2000);  // pgkeel sees the standby gone first
      }
      const std::string err = start_node(run.world, fr.target, 60'000);
      note(run, index, err.empty() ? fr.target + " started again at " + std::to_string(run.load.now_ms()) + " ms" : err);
      if (!err.empty()) {
        stop_with("after fault " + std::to_string(i + 1) + ": " + err);
        return;
      }
    }
    if (run.signalled != 0) return;
  }
}

}  // namespace pgkeel::drill
