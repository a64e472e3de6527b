#include "proxy/control.h"

#include <atomic>
#include <charconv>
#include <memory>

#include "proxy/handles.h"
#include "proxy/worker.h"

namespace pgkeel::proxy {

void count_on_workers(Shared& sh, std::function<int(Worker&)> count, std::function<void(int)> done) {
  if (sh.workers.empty()) {
    sh.post_main([done = std::move(done)] { done(0); });
    return;
  }
  struct State {
    std::atomic<int> remaining;
    std::atomic<int> sum{0};
    std::function<int(Worker&)> count;
    std::function<void(int)> done;
  };
  auto st = std::make_shared<State>();
  st->remaining.store(static_cast<int>(sh.workers.size()));
  st->count = std::move(count);
  st->done = std::move(done);
  for (Worker* w : sh.workers) {
    w->post([&sh, st](Worker& wk) {
      st->sum.fetch_add(st->count(wk));
      if (st->remaining.fetch_sub(1) == 1) sh.post_main([st] { st->done(st->sum.load()); });
    });
  }
}

namespace {

struct Drain : std::enable_shared_from_this<Drain> {
  Shared* sh = nullptr;
  std::function<int(Worker&)> count;
  std::function<void(int)> done;
  std::chrono::steady_clock::time_point deadline;
  EventPtr timer;

  void poll() {
    auto self = shared_from_this();
    count_on_workers(*sh, count, [self](int n) {
      if (n == 0 || std::chrono::steady_clock::now() >= self->deadline) {
        auto fn = std::move(self->done);
        self->timer.reset();
        fn(n);
        return;
      }
      // Keep ourselves alive through the timer's argument until it fires.
      self->timer.reset(event_new(self->sh->main_base, -1, 0, [](evutil_socket_t, short, void* arg) {
        auto* raw = static_cast<std::shared_ptr<Drain>*>(arg);
        std::shared_ptr<Drain> d = std::move(*raw);
        delete raw;
        d->poll();
      }, new std::shared_ptr<Drain>(self)));
      const timeval tv{0, 20 * 1000};
      event_add(self->timer.get(), &tv);
    });
  }
};

}  // namespace

void drain(Shared& sh, std::function<int(Worker&)> count, std::chrono::milliseconds timeout,
           std::function<void(int)> done) {
  auto d = std::make_shared<Drain>();
  d->sh = &sh;
  d->count = std::move(count);
  d->done = std::move(done);
  d->deadline = std::chrono::steady_clock::now() + timeout;
  d->poll();
}

void resume_workers(Shared& sh) {
  for (Worker* w : sh.workers) w->post([](Worker& wk) { wk.resume_parked(); });
}

void kill_client(Shared& sh, const std::string& id, const std::string& who, std::function<void(bool)> done) {
  // "c<worker>-<n>"
  unsigned worker = 0;
  std::uint32_t n = 0;
  const std::size_t dash = id.find('-');
  const bool parsed = id.size() > 3 && (id[0] == 'c' || id[0] == 'C') && dash != std::string::npos &&
                      std::from_chars(id.data() + 1, id.data() + dash, worker).ec == std::errc() &&
                      std::from_chars(id.data() + dash + 1, id.data() + id.size(), n).ec == std::errc();
  if (!parsed || worker >= sh.workers.size()) {
    sh.post_main([done = std::move(done)] { done(false); });
    return;
  }
  sh.workers[worker]->post([&sh, n, who, done = std::move(done)](Worker& w) mutable {
    const bool found = w.kill_client(n, who);
    sh.post_main([done = std::move(done), found] { done(found); });
  });
}

}  // namespace pgkeel::proxy
