// proxy/control.h — main-thread actions that reach every worker: count what runs, wait for it to
// drain, release paused clients, kill one client. Used by the console (PAUSE, RESUME, KILL) and by
// the switchover's pause (ProxyEffects).
#pragma once

#include <chrono>
#include <functional>
#include <string>

#include "proxy/shared.h"

namespace pgkeel::proxy {

// Runs `count` on every worker and calls `done(sum)` on the main thread.
void count_on_workers(Shared& sh, std::function<int(Worker&)> count, std::function<void(int)> done);

// Calls `done(still_running)` on the main thread once `count` sums to zero over the workers, or
// when `timeout` has passed (then with what still runs). Polls every 20 ms.
void drain(Shared& sh, std::function<int(Worker&)> count, std::chrono::milliseconds timeout,
           std::function<void(int)> done);

// Every worker releases the clients it parked whose listener is no longer paused.
void resume_workers(Shared& sh);

// KILL: `id` as SHOW CLIENTS prints it ("c<worker>-<n>"). `done(found)` on the main thread.
void kill_client(Shared& sh, const std::string& id, const std::string& who, std::function<void(bool)> done);

}  // namespace pgkeel::proxy
