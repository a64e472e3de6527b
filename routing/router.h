// routing/router.h — where a new client or transaction goes, decided from a snapshot alone.
#pragma once

#include <string_view>
#include <variant>

#include "routing/snapshot.h"

namespace pgkeel::routing {

struct RouteRequest {
  Intent intent = Intent::kReadWrite;
};

struct Route {
  NodeId node = 0;
  std::string_view why;
};

// No node can serve now: becomes SQLSTATE 57P03 at the proxy's edge.
struct NoRoute {
  std::string_view why;
};

using Decision = std::variant<Route, NoRoute>;

Decision choose_node(const Snapshot& snap, const RouteRequest& req);

}  // namespace pgkeel::routing
