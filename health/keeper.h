// health/keeper.h — the thin driver around the pure decisions: probes every node on an event
// loop, feeds the detectors, manages synchronous_standby_names, runs the failover sequence,
// keeps the primary record, and publishes routing snapshots through an Effects interface (so
// this layer knows nothing of workers or client sockets). keeper.cc holds probes, decisions and
// the failover and switchover sequences; keeper_record.cc is where the record store joins them.
#pragma once

#include <event2/event.h>

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "health/detector.h"
#include "health/facts.h"
#include "health/failover.h"
#include "health/pg_async.h"
#include "health/record_store.h"
#include "health/rejoin.h"
#include "health/switchover.h"
#include "routing/replicas.h"
#include "routing/snapshot.h"

namespace pgkeel::store {
class Client;
}

namespace pgkeel::health {

class EtcdRecordStore;
struct EtcdStoreOptions;

using Millis = std::chrono::milliseconds;

struct KeeperConfig {
  Millis probe_interval{500};
  Millis probe_timeout{1000};
  int timeouts_to_down = 3;
  int oks_to_up = 2;
  // How pgkeel logs in to nodes for probes and admin actions (superuser, or the roles the README
  // lists), and how standbys stream from a new primary.
  std::string admin_user = "postgres";
  std::string admin_password;
  std::string admin_dbname = "postgres";
  // TLS toward the nodes ([server_tls]); each node's effective sslmode is in its NodeTarget.
  conf::ServerTlsConfig server_tls;
  std::string replication_user = "replicator";
  std::string replication_password;
  bool automatic = true;
  SyncMode sync_mode = SyncMode::kOn;
  std::uint64_t max_lag_on_failover = 16 * 1024 * 1024;
  double witness_max_receipt_age_s = 2.0;
  std::string fence_command;   // run with the failed node's name, host and port in the env
  bool fence_required = true;  // a failing fence_command blocks the promotion
  std::string on_promote;
  std::string on_degraded;
  std::string state_file;      // empty: the record lives only in memory and in the cluster
  Millis promote_timeout{30000};
  std::string initial_primary;
  // Taken over from another pgkeel process: where its keeper last sent writes. Routed to until
  // this keeper's first probes decide (instead of holding clients meanwhile).
  std::string taken_over_writer;
  // Planned switchover: stop the old primary cleanly, then let it rejoin as a standby. Both run
  // with /bin/sh; env PGKEEL_NODE_NAME/_HOST/_PORT (the old primary; also PGKEEL_NODE/HOST/PORT as
  // for fence_command). stop_command is waited for (bounded by switchover_timeout) and may print
  // `checkpoint_lsn=X/Y`; rejoin_command also gets PGKEEL_PRIMARY_NAME/_HOST/_PORT (the new
  // primary), is not waited for, and its exit becomes an event.
  std::string stop_command;
  std::string rejoin_command;
  // A node that returned after a failover (health/rejoin.h): kAuto also runs rejoin_command.
  RejoinMode rejoin_mode = RejoinMode::kManual;
  Millis switchover_drain_timeout{10000};
  Millis switchover_timeout{60000};
};

struct NodeTarget {
  std::string name;
  std::string host;  // numeric address
  std::string host_name;  // as configured (a DNS name or an address): what verify-full checks
  std::uint16_t port = 0;
  int priority = 100;
  conf::SslMode sslmode = conf::SslMode::kPrefer;  // its own sslmode, or [server_tls]'s
  // Removed by a reload (its index stays taken for the life of the process; conf/reload.h): no
  // probes, no traffic, not a candidate, not shown.
  bool retired = false;
};

// What pgkeel's own server connections saw of a node since start, summed over the workers.
struct NodeActivity {
  std::uint64_t answers = 0;       // round trips completed, logins finished, bytes received
  std::uint64_t transactions = 0;  // transactions acknowledged to clients (ReadyForQuery 'I')
};

// What the keeper asks of the proxy.
class Effects {
 public:
  virtual ~Effects() = default;
  // Passive evidence from the data path: a node whose connections keep answering is alive,
  // whatever a probe says. Cheap (a few relaxed loads); called at every probe.
  virtual NodeActivity activity(routing::NodeId node) = 0;
  // Publishes the snapshot; `done(epoch)` runs on the keeper's loop once every worker has
  // applied it (closed its connections to nodes that lost the right to serve).
  virtual void publish(routing::Snapshot snap, std::function<void(std::uint64_t)> done) = 0;
  // Planned switchover: hold new transactions on every listener (clients wait, nothing fails),
  // let running ones finish, and call `done(still_running)` on the keeper's loop once none runs
  // on `node` or after `drain_timeout` (then `still_running` > 0).
  virtual void pause_writes(routing::NodeId node, Millis drain_timeout, std::function<void(int still_running)> done) = 0;
  // Releases what pause_writes() held; held transactions continue under the current snapshot.
  virtual void resume_writes() = 0;
};

// The outcome of a console verb, in one line.
struct Outcome {
  bool ok = false;
  std::string text;
};
using OutcomeFn = std::function<void(Outcome)>;

// What the keeper has done since start, for /metrics and SHOW STATS.
struct KeeperCounters {
  std::uint64_t failovers = 0;            // promotions completed (automatic or by console)
  std::uint64_t failovers_refused = 0;    // a failover was needed or asked for and refused/aborted
  std::uint64_t switchovers = 0;          // completed
  std::uint64_t switchovers_aborted = 0;
  std::uint64_t degradations = 0;         // synchronous replication lost (honoured -> degraded or waiting)
  std::uint64_t timeouts_excused = 0;     // probe timeouts not counted: the data path saw the node answer
  bool degraded = false;                  // commits are acknowledged without a standby (sync_health degraded)
  SyncMode sync_mode = SyncMode::kOn;
  SyncHealth sync_health = SyncHealth::kOff;
  std::string sync_why;                   // one line, for every surface
  std::string record_error;               // the last primary record that could not be written; empty once one is
  // Nodes that must rejoin (returned old primaries, standbys on an old timeline), one clause
  // each: "db1 returned as a primary on timeline 1 (...); fenced; rejoin running (attempt 1)".
  std::string rejoin_why;
  std::uint64_t rejoins = 0;              // rejoins verified (the node streams on the primary's timeline)
  std::uint64_t rejoin_failures = 0;      // rejoin_command failures and failed verifications
  // [store]: why this instance routes no writes and refuses logins (it cannot renew its lease);
  // empty while it can.
  std::string store_cut_why;
};

struct Event {
  std::chrono::system_clock::time_point at;
  std::uint64_t id = 0;
  std::uint64_t epoch = 0;
  // detection, promotion, fencing, degraded, restored, failover_refused, switchover,
  // switchover_refused, switchover_aborted, rejoin, rejoin_failed, fence, unfence, disable, enable, ...
  std::string kind;
  std::string node;
  std::string text;
};

struct NodeStatus {
  std::string name;
  std::string address;
  std::string role;    // primary / standby / unknown, as last probed
  std::string health;  // up / down / unknown
  bool fenced = false;
  bool enabled = true;
  std::string system_identifier;
  std::uint32_t timeline = 0;
  std::string lsn;
  std::optional<std::uint64_t> lag_bytes;
  std::optional<double> lag_seconds;
  std::string sync_state;
  std::string application_name;  // what its replication connection is called on the primary
  double probe_ms = 0;
  std::string last_probe;  // ISO time
  std::string last_error;
  std::uint64_t probes = 0;          // since start
  std::uint64_t probe_failures = 0;  // answered with an error, refused or timed out
  std::uint64_t timeouts_excused = 0;  // timeouts not counted: the data path saw it answer
  // Where it stands toward the recorded primary (health/rejoin.h: follows, returned primary, old
  // timeline, ...) and its rejoin: "" (nothing to do), needed, running, verifying, backoff.
  std::string standing;
  std::string rejoin;
  int rejoin_attempts = 0;
  std::string rejoin_why;    // why it must rejoin, while it must
  std::string rejoin_error;  // the last failure (the command's status and output, or the check's)
};

// One pgkeel instance sharing the record through etcd ([store]), for SHOW PEERS.
struct PeerStatus {
  std::string instance;
  std::string address;
  std::string role;  // leader / follower
  std::uint64_t applied_epoch = 0;  // the record epoch its workers applied
  // This instance: seconds since its last confirmed renewal was sent. Another: unknown here (its
  // key exists, so etcd has it renewed within the TTL).
  std::optional<double> lease_age_s;
  bool store_reachable = false;
  bool self = false;
};

class Keeper {
 public:
  Keeper(event_base* base, KeeperConfig config, std::vector<NodeTarget> nodes, routing::Table& table,
         Effects& effects);
  ~Keeper();
  Keeper(const Keeper&) = delete;
  Keeper& operator=(const Keeper&) = delete;

  // With [store]: the record lives in etcd (the local store stays, as its caches); this instance
  // decides (detection verdicts, failover, switchover, synchronous replication) only while it
  // holds the leader lease, otherwise routes as the record says; and it routes no writes while
  // its lease is stale. Before start(); `client` must outlive the keeper.
  void use_etcd(store::Client& client, const EtcdStoreOptions& options);
  const EtcdRecordStore* etcd() const { return etcd_; }
  // [store], a clean stop: leadership given back when it begins (another instance decides at
  // once), the lease when it ends (no one waits for its TTL). Alone: nothing; `done` at once.
  void step_down();
  // A takeover by another pgkeel process: probes and decisions stop here, so the keeper never
  // runs in both (with [store], the leader key is given back). False, with `why`, while a
  // failover or switchover runs. resume(): the takeover failed; this keeper carries on.
  bool halt(std::string& why);
  void resume();
  bool halted() const { return halted_; }
  void release_store(std::function<void()> done);
  // Every instance with a live lease, this one first (empty without [store]).
  std::vector<PeerStatus> peers() const;

  void start();

  // A passive signal from the data path: a connect to `node` failed at the transport level.
  // It only makes the next probe of that node happen now; the probe decides.
  void suspect(routing::NodeId node);

  // Console verbs. Each reports what happened (or why not), in one line. failover() and
  // switchover() call `done` when the sequence finished or aborted; the others answer at once.
  void failover(std::optional<std::string> target, bool force, const std::string& who, OutcomeFn done);
  void switchover(std::optional<std::string> target, const std::string& who, OutcomeFn done);
  Outcome fence(const std::string& node, const std::string& who);
  Outcome unfence(const std::string& node, const std::string& who);   // refused unless in recovery
  Outcome disable(const std::string& node, const std::string& who);   // maintenance: no traffic, no promotion
  Outcome enable(const std::string& node, const std::string& who);
  // A reload changed [[node]]: `nodes` is the whole list by index, as conf/reload.h lines it up
  // (existing indices kept, new ones appended, removed ones retired). check_nodes() says why it
  // cannot be applied now (empty: it can): the primary cannot be removed or moved (switch over
  // first), and nodes do not change while a failover or switchover runs. set_nodes() applies it:
  // new nodes are probed from now on and join routing once their probes say what they are.
  std::string check_nodes(const std::vector<NodeTarget>& nodes) const;
  void set_nodes(const std::vector<NodeTarget>& nodes, const std::string& who);
  // Records a console action or a reload in the event list (kind "console" / "reload").
  void note_event(std::string kind, const std::string& node, std::string text) { add_event(std::move(kind), node, std::move(text)); }
  KeeperCounters counters() const;
  std::vector<NodeStatus> nodes() const;
  std::vector<Event> events() const { return {events_.begin(), events_.end()}; }
  Plan plan() const;
  const KeeperConfig& config() const { return config_; }
  bool failover_running() const { return step_ != Step::kIdle; }
  std::optional<routing::NodeId> writer() const { return writer_; }

  // Where each node's position goes after every probe (read routing); may stay unset.
  void set_replica_board(routing::ReplicaBoard* board) { board_ = board; }

  // Called for every event as it happens (the proxy logs them).
  std::function<void(const Event&)> on_event;

 private:
  struct Node;
  // Failover: kBarrier .. kPublish. Switchover: kSwitch* first, then kPromote .. kPublish.
  enum class Step : std::uint8_t {
    kIdle, kBarrier, kDetach, kSettle, kFence, kPromote, kConfirm, kRecord, kPublish,
    kSwitchCheckpoint, kSwitchDrain, kSwitchBarrier, kSwitchNoteLsn, kSwitchStop, kSwitchCatchup,
  };
  enum class Sequence : std::uint8_t { kFailover, kSwitchover };
  using ChildDone = std::function<void(int status, std::string output)>;

  static void on_tick(evutil_socket_t, short, void* arg);
  void tick();
  void probe(Node& n);
  void on_probe_part(Node& n);
  void finish_probe(Node& n);
  void heartbeat(Node& primary);
  void decide();
  void decide_writer_at_start();
  RecordStoreHooks record_hooks();
  // With [store]: true when decide() stops here (routing stopped for a stale lease, or a follower
  // routing as the record says).
  bool follow();
  // Routes writes as the record says, where that changed; reports the record epoch applied.
  void route_by_record();
  void on_record_changed(const StoredRecord& r);
  // [store]: records again, unfenced, a primary fenced by a leader that died before promoting.
  void unfence_record();
  void start_with_record(std::optional<StoredRecord> found);
  void finish_start(const std::string& source);
  void manage_sync();
  // Names the replication connection of every standby that streams from `primary` under another
  // name after its [[node]] (application_name in its primary_conninfo), so that
  // synchronous_standby_names can name it.
  void adopt_standbys(Node& primary);
  void note_sync(const SyncStatus& status, Node& primary);
  // `skip_witness`: a console FAILOVER; `force`: FAILOVER ... FORCE (skip the lag check).
  void begin_failover(const std::string& reason, std::optional<routing::NodeId> target, bool force, bool skip_witness);
  void step_barrier();
  // After this instance's barrier: the other instances' (the record store's fence; alone, at once).
  void fence_peers(std::function<void(bool ok, const std::string& why)> done);
  void step_detach();
  void step_settle(int rounds_left);
  void step_fence();
  void step_promote();
  void step_confirm(int tries_left);
  void step_record();
  void step_publish();
  void abort_failover(const std::string& why);
  void finish_sequence(std::uint64_t epoch);
  void step_switch_checkpoint();
  void step_switch_drain();
  void step_switch_barrier();
  void step_switch_note_lsn();
  void step_switch_stop();
  void step_switch_catchup();
  void on_switch_deadline();
  void abort_switchover(const std::string& why);
  void rejoin_old_primary();
  // After manage_sync: where every other node stands toward the writer, and each one's rejoin
  // (health/rejoin.h): events, fencing, and with rejoin = "auto" the command.
  void manage_rejoins();
  RejoinPolicy rejoin_policy() const;
  // Runs rejoin_command for `n` (its rejoin is kRunning); `reason` becomes PGKEEL_REJOIN_REASON.
  void run_rejoin(Node& n, const Node& primary, const std::string& reason);
  static bool held_out(const Node& n);
  // Runs `command` with /bin/sh in its own process group, stdout captured; `done(status, output)`
  // runs on the loop when it exits (status: exit code, 128+signal, -1 when killed at `timeout`).
  void run_child(const std::string& command, const std::vector<std::pair<std::string, std::string>>& env,
                 Millis timeout, ChildDone done);
  void after(Millis delay, std::function<void()> fn);
  std::string busy_text() const;
  std::optional<routing::NodeId> failover_subject() const;
  routing::Role role_of(const Node& n) const;
  void refresh_routes();
  Outcome node_verb(NodeVerb verb, const std::string& node, const std::string& who);
  // `then(epoch)` runs once every worker applied the snapshot.
  void publish(std::optional<routing::NodeId> writer, const std::string& why, bool hold,
               std::function<void(std::uint64_t)> then = {});
  void note_writer_trouble(const std::string& why);
  void admin(Node& n, const std::string& sql, std::function<void(const PgResult&)> cb,
             std::optional<Millis> timeout = std::nullopt);
  void admin_next(Node& n);
  // `reason` reaches the hook as PGKEEL_REASON.
  void run_hook(const std::string& command, const std::string& event, const Node* node, const std::string& reason = {});
  void add_event(std::string kind, const std::string& node, std::string text);
  void note_record_error(const std::string& node, const std::string& error);
  std::uint64_t highest_record_epoch() const;
  std::vector<NodeObservation> observations() const;
  std::string conninfo(const Node& n, bool with_password = true) const;
  void open_connections(Node& n);
  std::string follow_conninfo(const Node& upstream, const Node& standby) const;
  PlanInput plan_input(routing::NodeId failed) const;
  // When the failure of `failed` began, as the quorum rule counts "heard from since".
  std::chrono::steady_clock::time_point failure_began(routing::NodeId failed) const;
  Node* node_by_name(const std::string& name);
  void post_positions();

  event_base* base_;
  KeeperConfig config_;
  routing::Table& table_;
  Effects& effects_;
  routing::ReplicaBoard* board_ = nullptr;
  std::vector<std::unique_ptr<Node>> nodes_;
  PgEventHandle tick_;
  std::deque<Event> events_;
  std::uint64_t next_event_id_ = 1;

  // Where the record lives (alone: LocalRecordStore), what it last gave (what a compare-and-swap
  // compares), and the record itself.
  std::unique_ptr<RecordStore> store_;
  EtcdRecordStore* etcd_ = nullptr;  // store_, with [store]
  std::string instance_;             // [store] name: events say which instance decided
  bool halted_ = false;              // halt(): another process's keeper runs
  bool store_cut_ = false;           // routing stopped: the lease could not be renewed in time
  bool refreshing_record_ = false;   // store back: the record is being read afresh before routing
  std::string cut_why_;              // what clients are told meanwhile (57P03)
  bool unfencing_ = false;           // unfence_record() waits for the store
  std::optional<StoredRecord> stored_;
  std::optional<PrimaryRecord> record_;
  std::optional<routing::NodeId> writer_;
  std::string writer_why_;       // why the writer is the writer (the snapshot's why while all is well)
  bool writer_trouble_ = false;  // the snapshot's why says the writer does not answer (nothing was cut)
  bool started_ = false;  // the writer was decided once
  std::string system_identifier_;
  // Synchronous replication as last seen on the primary.
  std::vector<std::string> known_sync_;
  bool degraded_ = false;
  SyncSpec sync_spec_;
  SyncStatus sync_;
  bool sync_known_ = false;      // sync_ was noted once (the first evaluation is an event too)
  bool sync_evaluated_ = false;  // sync_ says something (the surfaces show it even while settling)
  Lsn primary_last_lsn_ = 0;
  std::chrono::steady_clock::time_point primary_last_probe_{};  // of primary_last_lsn_
  std::uint64_t primary_tx_at_probe_ = 0;   // transactions acknowledged on it up to that probe
  std::string record_error_;

  // The failover in progress.
  Step step_ = Step::kIdle;
  std::optional<routing::NodeId> failed_;
  std::optional<routing::NodeId> candidate_;
  std::optional<routing::NodeId> target_;
  bool force_ = false;
  std::string reason_;
  std::uint32_t old_timeline_ = 0;
  std::chrono::steady_clock::time_point failover_started_;
  std::chrono::steady_clock::time_point last_refusal_log_;  // rate-limits repeated refusals
  std::chrono::steady_clock::time_point next_attempt_;       // after an aborted or refused failover
  std::chrono::steady_clock::time_point failure_began_{};    // the failover in progress: when its failure was first seen
  Sequence sequence_ = Sequence::kFailover;
  std::uint64_t sequence_id_ = 0;  // callbacks of an earlier sequence see a newer id and stop
  std::string cause_;              // for the snapshot's why: "promoted after db1 failed 3 probes"
  OutcomeFn done_;                 // the console waiting for this sequence, if any
  bool refusal_counted_ = false;   // one refused failover per episode of a failed primary

  // The switchover in progress.
  std::chrono::steady_clock::time_point switch_deadline_;
  std::chrono::steady_clock::time_point writes_paused_at_;
  bool writes_paused_ = false;
  bool old_stopped_ = false;       // the stop command ran: the old primary may no longer serve
  Lsn lsn_before_stop_ = 0;
  std::optional<Lsn> checkpoint_lsn_;
  Lsn catchup_last_ = 0;
  int catchup_unchanged_ = 0;

  KeeperCounters counters_;
};

}  // namespace pgkeel::health
