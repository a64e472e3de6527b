// proxy/handles.h — move-only owners for libevent handles (one place, stateless deleters).
#pragma once

#include <event2/event.h>
#include <event2/listener.h>

#include <memory>

namespace pgkeel::proxy {

struct EventBaseDeleter {
  void operator()(event_base* b) const { event_base_free(b); }
};
struct EventDeleter {
  void operator()(event* e) const { event_free(e); }
};
struct ListenerDeleter {
  void operator()(evconnlistener* l) const { evconnlistener_free(l); }
};

using EventBasePtr = std::unique_ptr<event_base, EventBaseDeleter>;
using EventPtr = std::unique_ptr<event, EventDeleter>;
using ListenerPtr = std::unique_ptr<evconnlistener, ListenerDeleter>;

}  // namespace pgkeel::proxy
