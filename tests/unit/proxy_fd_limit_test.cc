// Unit tests for pgkeel's own limits: the descriptor budget of a configuration, the RLIMIT_NOFILE
// plan, which errno values are pgkeel's own failures, and the accept() backoff.
#include <cerrno>
#include <chrono>

#include <catch2/catch.hpp>

#include "conf/config.h"
#include "proxy/fd_limit.h"

namespace pgkeel {
namespace {

using proxy::AcceptBackoff;
using proxy::FdBudget;
using proxy::NofilePlan;
using namespace std::chrono_literals;

conf::Config two_nodes() {
  conf::Config c;
  c.nodes.resize(2);
  c.nodes[0].name = "db1";
  c.nodes[1].name = "db2";
  c.listeners.resize(1);
  c.listeners[0].name = "rw";
  return c;
}

}  // namespace

TEST_CASE("the default configuration with two nodes and four workers needs 2,667 descriptors", "[unit][fdlimit]") {
  const FdBudget b = proxy::fd_budget(two_nodes(), 4);
  CHECK(b.clients == 2 * 1000 + 64 + 4);  // held up to 2 x max_client_conn + 64, one closing per worker
  CHECK(b.servers == 2 * 100);            // max_server_conn_per_node for each node
  CHECK(b.cancels == 4 * 16);
  CHECK(b.keeper == 2 * 4 + 8);
  CHECK(b.auth_query == 0);
  CHECK(b.listeners == 4);                // one TCP socket per worker
  CHECK(b.console_status == 0);
  CHECK(b.loops == 4 * 3 + 8);
  CHECK(b.fixed == 24);
  const std::uint64_t counted = 2068 + 200 + 64 + 16 + 4 + 20 + 24;
  CHECK(b.margin == counted / 10 + 32);
  CHECK(b.total() == 2667);
  CHECK(b.describe().find("clients=2068 servers=200 ") == 0);
}

TEST_CASE("each setting moves its own term of the descriptor budget", "[unit][fdlimit]") {
  const conf::Config base = two_nodes();
  const FdBudget b0 = proxy::fd_budget(base, 2);

  SECTION("max_client_conn counts twice (refused clients are held until they are told 53300)") {
    conf::Config c = base;
    c.general.max_client_conn += 100;
    CHECK(proxy::fd_budget(c, 2).clients == b0.clients + 200);
  }
  SECTION("a node cap beyond what clients can use is read as every client plus one pool") {
    conf::Config c = base;
    c.general.max_client_conn = 50;
    c.pool.pool_size = 20;
    c.pool.max_server_conn_per_node = 1000000;
    CHECK(proxy::fd_budget(c, 2).servers == 2 * (50 + 20));
  }
  SECTION("the reserve pool and per-user server limits add nothing: every server counts against the node cap") {
    conf::Config c = base;
    c.pool.reserve_pool_size = 50;
    c.pool.max_user_server_conn = 10;
    CHECK(proxy::fd_budget(c, 2).servers == b0.servers);
  }
  SECTION("retired nodes and listeners hold nothing") {
    conf::Config c = base;
    c.nodes.push_back(c.nodes[1]);
    c.nodes.back().retired = true;
    c.listeners.push_back(c.listeners[0]);
    c.listeners.back().retired = true;
    const FdBudget b = proxy::fd_budget(c, 2);
    CHECK(b.servers == b0.servers);
    CHECK(b.keeper == b0.keeper);
    CHECK(b.listeners == b0.listeners);
  }
  SECTION("a third node adds its server cap and the keeper's connections") {
    conf::Config c = base;
    c.nodes.push_back(c.nodes[1]);
    const FdBudget b = proxy::fd_budget(c, 2);
    CHECK(b.servers == b0.servers + 100);
    CHECK(b.keeper == b0.keeper + 4);
  }
  SECTION("a Unix socket is one more listening socket, shared by the workers") {
    conf::Config c = base;
    c.listeners[0].unix_socket_dir = "/tmp";
    CHECK(proxy::fd_budget(c, 2).listeners == b0.listeners + 1);
  }
  SECTION("auth_query keeps one connection per worker") {
    conf::Config c = base;
    c.auth.query = "SELECT 1";
    CHECK(proxy::fd_budget(c, 3).auth_query == 3);
  }
  SECTION("the console and the status port have their listening socket and their connections") {
    conf::Config c = base;
    c.console.port = 6000;
    c.status.port = 6001;
    CHECK(proxy::fd_budget(c, 2).console_status == (1 + 16) + (1 + 64));
  }
}

TEST_CASE("the soft limit is raised to what is needed, within the hard limit, or pgkeel refuses", "[unit][fdlimit]") {
  SECTION("enough already: kept, never lowered") {
    const NofilePlan p = proxy::plan_nofile(2000, 4096, 4096);
    CHECK(p.action == NofilePlan::Action::kKeep);
    CHECK(p.soft == 4096);
  }
  SECTION("systemd's 1024 soft under 524288 hard: raised to the need") {
    const NofilePlan p = proxy::plan_nofile(2667, 1024, 524288);
    CHECK(p.action == NofilePlan::Action::kRaise);
    CHECK(p.soft == 2667);
  }
  SECTION("an unlimited hard limit") {
    const NofilePlan p = proxy::plan_nofile(2667, 1024, proxy::kNoLimit);
    CHECK(p.action == NofilePlan::Action::kRaise);
    CHECK(p.soft == 2667);
  }
  SECTION("exactly the hard limit is enough") {
    CHECK(proxy::plan_nofile(1024, 512, 1024).action == NofilePlan::Action::kRaise);
  }
  SECTION("a hard limit below the need: refused, the soft limit untouched") {
    const NofilePlan p = proxy::plan_nofile(1025, 1024, 1024);
    CHECK(p.action == NofilePlan::Action::kRefuse);
    CHECK(p.soft == 1024);
  }
}

TEST_CASE("the integration tests' configurations: max_client_conn 300 fits 1,024 descriptors, 5,000 does not",
          "[unit][fdlimit]") {
  conf::Config c = two_nodes();
  c.pool.pool_size = 5;
  c.pool.max_server_conn_per_node = 20;
  c.console.port = 6000;
  c.general.max_client_conn = 300;
  const std::uint64_t fits = proxy::fd_budget(c, 2).total();
  CHECK(fits <= 1024);
  CHECK(proxy::plan_nofile(fits, 1024, 1024).action == NofilePlan::Action::kKeep);
  c.general.max_client_conn = 5000;
  CHECK(proxy::plan_nofile(proxy::fd_budget(c, 2).total(), 1024, 1024).action == NofilePlan::Action::kRefuse);
}

TEST_CASE("pgkeel's own shortages are told apart from a node's failures", "[unit][fdlimit]") {
  for (int own : {EMFILE, ENFILE, ENOMEM, ENOBUFS, EADDRNOTAVAIL}) {
    INFO(proxy::errno_name(own));
    CHECK(proxy::is_local_resource_error(own));
  }
  for (int node : {ECONNREFUSED, ECONNRESET, ETIMEDOUT, EHOSTUNREACH, ENETUNREACH, EPIPE}) {
    INFO(proxy::errno_name(node));
    CHECK_FALSE(proxy::is_local_resource_error(node));
  }
  CHECK(std::string(proxy::errno_name(EMFILE)) == "EMFILE");
}

TEST_CASE("accept pauses 10 ms doubling to 1 s, starts over after a success, and an episode ends when quiet",
          "[unit][fdlimit]") {
  AcceptBackoff b;
  const auto t0 = AcceptBackoff::Clock::time_point{} + 1h;
  bool started = false;
  CHECK(b.on_failure(t0, &started) == 10ms);
  CHECK(started);
  CHECK(b.in_episode());
  std::chrono::milliseconds total = 10ms;
  for (auto want : {20ms, 40ms, 80ms, 160ms, 320ms, 640ms, 1000ms, 1000ms}) {
    CHECK(b.on_failure(t0 + total, &started) == want);
    CHECK_FALSE(started);  // one episode: logged once
    total += want;
  }
  const auto last_failure = t0 + total - 1000ms;

  SECTION("an accept that succeeds makes the next pause short again, in the same episode") {
    b.on_success();
    CHECK(b.on_failure(t0 + total, &started) == 10ms);
    CHECK_FALSE(started);
  }
  SECTION("the episode ends after kQuiet without a failure, is reported once, and the next one starts fresh") {
    b.on_success();
    b.on_success();
    CHECK_FALSE(b.take_ended(last_failure + 1999ms).has_value());
    const auto e = b.take_ended(last_failure + 2000ms);
    REQUIRE(e.has_value());
    CHECK(e->failures == 9);
    CHECK(e->pauses == 9);
    CHECK(e->accepted == 2);
    CHECK(e->paused == 10ms + 20ms + 40ms + 80ms + 160ms + 320ms + 640ms + 1000ms + 1000ms);
    CHECK(e->started == t0);
    CHECK(e->last_failure == last_failure);
    CHECK_FALSE(b.in_episode());
    CHECK_FALSE(b.take_ended(last_failure + 10s).has_value());
    CHECK(b.on_failure(last_failure + 10s, &started) == 10ms);
    CHECK(started);
  }
}

}  // namespace pgkeel
