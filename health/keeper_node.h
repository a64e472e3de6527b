// health/keeper_node.h — what the keeper knows of one node, shared by the keeper's translation
// units (keeper.cc: probes, decisions, sequences; keeper_record.cc: the record and the store).
// Private to health/keeper*.cc.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <tuple>

#include "health/keeper.h"

namespace pgkeel::health {

using SteadyClock = std::chrono::steady_clock;

struct Keeper::Node {
  routing::NodeId id = 0;
  NodeTarget target;
  Detector detector;
  // A probe round is two parts, run side by side: the fork check (a new connection taken as far
  // as the authentication request: the postmaster accepts and forks, and no SCRAM is paid) and
  // the facts query on pgkeel's standing session (authenticated once, kept).
  std::unique_ptr<PgAsync> fork_conn;
  std::unique_ptr<PgAsync> probe_conn;
  std::unique_ptr<PgAsync> admin_conn;
  std::deque<std::tuple<std::string, std::function<void(const PgResult&)>, Millis>> admin_queue;
  std::optional<ProbeFacts> facts;
  bool probing = false;
  int parts_pending = 0;
  PgResult fork_result;
  PgResult session_result;
  SteadyClock::time_point probe_started{};
  std::uint64_t answers_before = 0;  // Effects::activity() when the round began
  int probes_done = 0;
  std::uint64_t probe_failures = 0;
  int failed_in_row = 0;  // consecutive probes that did not answer as expected
  double probe_ms = 0;
  std::string last_error;
  std::chrono::system_clock::time_point last_probe_wall;
  bool fenced = false;
  bool enabled = true;
  SteadyClock::time_point last_sync_change{};
  std::optional<Lsn> settle_lsn;
  bool admin_running = false;
  SteadyClock::time_point facts_at{};  // when `facts` were observed
  bool retired = false;                // removed by a reload: kept only so its index stays valid
  // The witness heartbeat (the writer only): a WAL record when nothing else was written, so the
  // standbys hear from a live primary even when no client writes.
  Lsn heartbeat_lsn = 0;
  SteadyClock::time_point heartbeat_at{};
  bool heartbeat_refused = false;
  // Standbys: what the replication connection is called on the primary, and adoption.
  std::string replication_name;
  std::string sync_state;
  SteadyClock::time_point adopt_attempt{};
  bool adopting = false;
  std::string detached_conninfo;  // its primary_conninfo before a failover detached it
  // Toward the recorded primary (health/rejoin.h), as of the last evaluation while it had a writer.
  Standing standing = Standing::kUnknown;
  RejoinState rejoin;
  bool streams_from_writer = false;  // the writer's pg_stat_replication streams to it
};

}  // namespace pgkeel::health
