#include "health/keeper.h"

#include "health/keeper_node.h"
#include "health/record_store_etcd.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <tuple>

namespace pgkeel::health {
namespace {

constexpr std::size_t kMaxEvents = 1000;

std::string iso_time(std::chrono::system_clock::time_point t) {
  const std::time_t tt = std::chrono::system_clock::to_time_t(t);
  std::tm tm{};
  gmtime_r(&tt, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

ProbeOutcome classify(const PgResult& r) {
  return classify_probe(r.ok, r.timed_out, r.connection_lost, r.sqlstate, r.error);
}

// Runs `command` with /bin/sh; returns the child's pid (-1 on failure). The environment tells
// the hook what happened and to which node.
pid_t spawn(const std::string& command, const std::vector<std::pair<std::string, std::string>>& env) {
  const pid_t pid = fork();
  if (pid != 0) return pid;
  for (const auto& [k, v] : env) setenv(k.c_str(), v.c_str(), 1);
  const int devnull = open("/dev/null", O_RDONLY);
  if (devnull >= 0) dup2(devnull, STDIN_FILENO);
  execl("/bin/sh", "sh", "-c", command.c_str(), static_cast<char*>(nullptr));
  _exit(127);
}

}  // namespace

// A node that must rejoin, or is rejoining, or belongs to another cluster gets no route (no
// reads), is no candidate, and is never named synchronous, whatever it says of itself.
bool Keeper::held_out(const Node& n) {
  return n.fenced || n.rejoin.phase != RejoinPhase::kFollowing || n.standing == Standing::kReturnedPrimary ||
         n.standing == Standing::kForeign;
}

Keeper::Keeper(event_base* base, KeeperConfig config, std::vector<NodeTarget> nodes, routing::Table& table,
               Effects& effects)
    : base_(base), config_(std::move(config)), table_(table), effects_(effects) {
  for (std::size_t i = 0; i < nodes.size(); ++i) {
    auto n = std::make_unique<Node>();
    n->id = static_cast<routing::NodeId>(i);
    n->target = nodes[i];
    n->detector = Detector({config_.timeouts_to_down, config_.oks_to_up});
    nodes_.push_back(std::move(n));
  }
  for (auto& n : nodes_) open_connections(*n);
  // Alone, the record lives in the state file and in the cluster; [store] puts etcd in front.
  ClusterSql sql = [this](const std::string& node, const std::string& statement,
                          std::function<void(bool, const std::string&)> done) {
    Node* n = node_by_name(node);
    if (n == nullptr) {
      done(false, "no node " + node);
      return;
    }
    admin(*n, statement, [done](const PgResult& r) { done(r.ok, r.error); });
  };
  store_ = std::make_unique<LocalRecordStore>(config_.state_file, std::move(sql), record_hooks());
  store_->routing_epoch(table_.epoch());  // the first publication, made before the keeper existed
}

Keeper::~Keeper() = default;

std::string Keeper::check_nodes(const std::vector<NodeTarget>& nodes) const {
  if (nodes.size() < nodes_.size()) return "[[node]]: the node list lost indices (a bug: conf/reload.h keeps them)";
  bool changes = nodes.size() != nodes_.size();
  for (const auto& n : nodes_) {
    const NodeTarget& t = nodes[n->id];
    if (t.name != n->target.name || t.host != n->target.host || t.port != n->target.port) {
      return "[[node]]: index " + std::to_string(n->id) + " changed identity (a bug: conf/reload.h keeps them)";
    }
    if (t.retired == n->retired) continue;
    changes = true;
    if (!t.retired) return "[[node]]: " + t.name + " cannot come back at its old index";
    if (writer_ && *writer_ == n->id) {
      return "[[node]] " + n->target.name + " is the primary: it cannot be removed or moved by a reload (SWITCHOVER first)";
    }
    if (record_ && record_->node == n->target.name && !writer_) {
      return "[[node]] " + n->target.name + " is the recorded primary: it cannot be removed or moved while no primary serves";
    }
  }
  if (changes && step_ != Step::kIdle) return "[[node]]: nodes cannot change while " + busy_text();
  return {};
}

void Keeper::set_nodes(const std::vector<NodeTarget>& nodes, const std::string& who) {
  for (std::size_t i = 0; i < nodes.size(); ++i) {
    const NodeTarget& t = nodes[i];
    if (i < nodes_.size()) {
      Node& n = *nodes_[i];
      n.target.priority = t.priority;
      if (!t.retired || n.retired) continue;
      // What pgkeel knew of it says nothing from now on: a retired node is never probed again.
      n.retired = true;
      n.facts.reset();
      n.detector = Detector({config_.timeouts_to_down, config_.oks_to_up});
      add_event("node_removed", n.target.name, "removed by " + who + " (" + n.target.host + ":" + std::to_string(n.target.port) + ")");
      continue;
    }
    auto n = std::make_unique<Node>();
    n->id = static_cast<routing::NodeId>(i);
    n->target = t;
    n->retired = t.retired;
    n->detector = Detector({config_.timeouts_to_down, config_.oks_to_up});
    open_connections(*n);
    nodes_.push_back(std::move(n));
    if (!t.retired) add_event("node_added", t.name, "added by " + who + " (" + t.host + ":" + std::to_string(t.port) + "); probed from now on");
  }
  // New nodes enter the snapshot at once (as unknown, so nothing routes there before a probe
  // says what they are); removed ones leave it, and workers close their connections to them.
  publish(writer_, table_.current()->why, table_.current()->hold);
  for (auto& n : nodes_) {
    if (!n->retired && n->probes_done == 0 && !n->probing) probe(*n);
  }
}

// primary_conninfo for `standby` to stream from `upstream`.
std::string Keeper::follow_conninfo(const Node& upstream, const Node& standby) const {
  if (!standby.detached_conninfo.empty()) {
    std::string error;
    const std::optional<std::string> moved = rewrite_conninfo(
        standby.detached_conninfo,
        {{"host", upstream.target.host}, {"port", std::to_string(upstream.target.port)}, {"application_name", standby.target.name}},
        {"hostaddr"}, error);
    if (moved) return *moved;
  }
  std::string pci = "host=" + upstream.target.host + " port=" + std::to_string(upstream.target.port) +
                    " user=" + conninfo_value(config_.replication_user) + " application_name=" + standby.target.name;
  if (!config_.replication_password.empty()) pci += " password=" + conninfo_value(config_.replication_password);
  return pci;
}

// How pgkeel logs in to a node for probes and admin actions: TLS as the data path ([server_tls],
// the node's sslmode). The fork check sends no password: the authentication request is its answer.
std::string Keeper::conninfo(const Node& n, bool with_password) const {
  // hostaddr: no name resolution on the loop; host: the name a certificate must carry.
  std::string c = "hostaddr=" + n.target.host +
                  (n.target.host_name.empty() ? std::string() : " host=" + conninfo_value(n.target.host_name)) +
                  " port=" + std::to_string(n.target.port) +
                  " user=" + conninfo_value(config_.admin_user) + " dbname=" + conninfo_value(config_.admin_dbname) +
                  " application_name=pgkeel gssencmode=disable connect_timeout=" +
                  std::to_string(std::max<long>(1, (config_.probe_timeout.count() + 999) / 1000)) +
                  tls_conninfo(n.target.sslmode, config_.server_tls);
  if (!with_password) {
    c += " password=''";
  } else if (!config_.admin_password.empty()) {
    c += " password=" + conninfo_value(config_.admin_password);
  }
  return c;
}

void Keeper::open_connections(Node& n) {
  n.fork_conn = std::make_unique<PgAsync>(base_, conninfo(n, false));
  n.probe_conn = std::make_unique<PgAsync>(base_, conninfo(n));
  // A slow answer is waited for in the background (up to a few probe timeouts) rather than paid
  // for with a new connection and its authentication every round.
  n.probe_conn->set_patience(std::max(Millis(5000), config_.probe_timeout * 4));
  n.admin_conn = std::make_unique<PgAsync>(base_, conninfo(n));
}

void Keeper::start() {
  if (Node* w = config_.taken_over_writer.empty() ? nullptr : node_by_name(config_.taken_over_writer); w != nullptr) {
    publish(w->id, "taken over from the previous pgkeel process; confirming with this process's first probes", false);
  } else {
    publish(std::nullopt, "waiting for the first probes of every node", true);
  }
  if (etcd_ != nullptr) etcd_->start();
  tick_.reset(event_new(base_, -1, EV_PERSIST, &Keeper::on_tick, this));
  const timeval tv{static_cast<time_t>(config_.probe_interval.count() / 1000),
                   static_cast<suseconds_t>((config_.probe_interval.count() % 1000) * 1000)};
  event_add(tick_.get(), &tv);
  tick();
}

void Keeper::on_tick(evutil_socket_t, short, void* arg) { static_cast<Keeper*>(arg)->tick(); }

bool Keeper::halt(std::string& why) {
  if (step_ != Step::kIdle) {
    why = "a failover or switchover is running; try again when it has finished";
    return false;
  }
  halted_ = true;
  if (tick_) event_del(tick_.get());
  if (etcd_ != nullptr) etcd_->step_down();
  add_event("halted", "", "another pgkeel process takes over: this keeper stops probing and deciding");
  return true;
}

void Keeper::resume() {
  if (!halted_) return;
  halted_ = false;
  if (etcd_ != nullptr) etcd_->campaign_again();
  add_event("resumed", "", "the takeover did not complete: this keeper carries on");
  if (tick_) {
    const timeval tv{static_cast<time_t>(config_.probe_interval.count() / 1000),
                     static_cast<suseconds_t>((config_.probe_interval.count() % 1000) * 1000)};
    event_add(tick_.get(), &tv);
  }
  tick();
}

void Keeper::tick() {
  if (halted_) return;
  for (auto& n : nodes_) {
    if (!n->probing && !n->retired) probe(*n);
  }
  decide();
}

void Keeper::suspect(routing::NodeId node) {
  if (node >= nodes_.size()) return;
  Node& n = *nodes_[node];
  if (!n.probing && !n.retired) probe(n);
}

void Keeper::probe(Node& n) {
  n.probing = true;
  n.parts_pending = 2;
  n.probe_started = SteadyClock::now();
  n.answers_before = effects_.activity(n.id).answers;
  n.fork_result = PgResult{};
  n.session_result = PgResult{};
  n.fork_conn->run("", config_.probe_timeout, [this, &n](const PgResult& r) {
    n.fork_result = r;
    n.fork_conn->close();
    on_probe_part(n);
  });
  n.probe_conn->run(kProbeQuery, config_.probe_timeout, [this, &n](const PgResult& r) {
    n.session_result = r;
    on_probe_part(n);
  });
}

void Keeper::on_probe_part(Node& n) {
  if (--n.parts_pending == 0) finish_probe(n);
}

void Keeper::finish_probe(Node& n) {
  n.probing = false;
  if (n.retired) {
    n.probe_conn->close();
    return;
  }
  const auto now = SteadyClock::now();
  n.probe_ms = std::chrono::duration<double, std::milli>(now - n.probe_started).count();
  n.last_probe_wall = std::chrono::system_clock::now();
  const PgResult& f = n.fork_result;
  const PgResult& r = n.session_result;
  const ProbeOutcome fork = classify_fork_check(f.ok, f.timed_out, f.connection_lost, f.error);
  ProbeOutcome session = classify(r);
  std::string session_error;
  if (r.ok) {
    std::string err;
    std::optional<ProbeFacts> facts;
    if (r.rows.size() == 1) {
      facts = parse_probe_row(r.rows[0], err);
    } else {
      err = "probe returned " + std::to_string(r.rows.size()) + " rows";
    }
    if (facts) {
      n.facts = std::move(*facts);
      n.facts_at = now;
    } else {
      session = ProbeOutcome::kBusy;  // it answered, but not as expected: alive, not confirmed
      session_error = err;
    }
  } else {
    session_error = std::string(to_string(session)) + ": " + r.error;
  }
  const ProbeOutcome outcome = combine_probe(fork, session);
  // Passive evidence: pgkeel's own connections to the node answered while the probe was out.
  const bool answered = effects_.activity(n.id).answers > n.answers_before;
  if (outcome == ProbeOutcome::kOk) {
    n.last_error.clear();
  } else {
    std::string e;
    if (fork != ProbeOutcome::kOk) e = "new connection: " + std::string(to_string(fork)) + ": " + f.error;
    if (!session_error.empty()) e += (e.empty() ? "" : "; ") + std::string("session: ") + session_error;
    if (outcome == ProbeOutcome::kTimeout && answered) e += "; not counted: its connections through pgkeel answered meanwhile";
    if (outcome == ProbeOutcome::kLocalError) e += "; pgkeel's own failure, no evidence against the node";
    n.last_error = e;
  }
  ++n.probes_done;
  if (outcome == ProbeOutcome::kOk) {
    n.failed_in_row = 0;
  } else if (outcome != ProbeOutcome::kLocalError) {
    ++n.probe_failures;
    ++n.failed_in_row;
  }
  if (auto t = n.detector.observe(outcome, now, answered)) {
    add_event(t->to == NodeHealth::kDown ? "detection" : "node_up", n.target.name,
              "node " + std::string(to_string(t->to)) + ": " + std::string(t->why) +
                  (n.last_error.empty() ? "" : " (" + n.last_error + ")"));
    if (t->to == NodeHealth::kDown && failover_subject() == n.id) {
      // The witness and the plan need the standbys as they are after the failure: ask now.
      for (auto& other : nodes_) {
        if (other->id != n.id && !other->retired && !other->probing) probe(*other);
      }
    }
  }
  if (writer_ && *writer_ == n.id && outcome == ProbeOutcome::kOk && store_->leader()) heartbeat(n);
  post_positions();
  decide();
  if (started_ && step_ == Step::kIdle) refresh_routes();
}

// The witness asks the standbys whether they still hear from the primary; a primary that writes
// nothing sends them nothing (its keepalives come every wal_sender_timeout / 2, 30 s by default).
// So when the writer's WAL did not move since the last round, pgkeel writes one small
// non-transactional WAL message (no transaction id, never waits for a synchronous standby).
void Keeper::heartbeat(Node& p) {
  if (!p.facts || p.facts->in_recovery || p.heartbeat_refused || p.admin_running || !p.admin_queue.empty()) return;
  const auto now = SteadyClock::now();
  // Moved past what the last round saw, or what our own last heartbeat wrote.
  const Lsn lsn = p.facts->current_lsn;
  const bool moved = lsn > p.heartbeat_lsn;
  p.heartbeat_lsn = std::max(p.heartbeat_lsn, lsn);
  if (moved || now - p.heartbeat_at < config_.probe_interval) return;
  p.heartbeat_at = now;
  admin(p, "SELECT pg_logical_emit_message(false, 'pgkeel', 'heartbeat')::text", [this, &p](const PgResult& r) {
    if (r.ok && !r.rows.empty() && !r.rows[0].empty() && r.rows[0][0]) {
      p.heartbeat_lsn = std::max(p.heartbeat_lsn, parse_lsn(*r.rows[0][0]).value_or(0));
    }
    if (r.ok || r.timed_out || r.connection_lost) return;
    p.heartbeat_refused = true;
    add_event("heartbeat_refused", p.target.name,
              "the witness heartbeat (pg_logical_emit_message) failed: " + r.error +
                  "; while no client writes, the standbys cannot vouch for this primary");
  }, config_.probe_timeout);
}

// Every node's position relative to the writer's last observed WAL position, for read routing.
// Lag in seconds counts only while a standby has not replayed what it received: an idle primary
// writes no transaction (the witness heartbeat is not one), and its standbys' last replay
// timestamps age without them being behind.
void Keeper::post_positions() {
  if (board_ == nullptr) return;
  const ProbeFacts* primary = writer_ && nodes_[*writer_]->facts ? &*nodes_[*writer_]->facts : nullptr;
  for (const auto& n : nodes_) {
    routing::NodeLoad l;
    l.up = !n->retired && n->detector.health() == NodeHealth::kUp && n->facts.has_value();
    if (l.up) {
      const ProbeFacts& f = *n->facts;
      l.replay_lsn = f.in_recovery ? f.replay_lsn : f.current_lsn;
      if (f.in_recovery) {
        const Lsn head = std::max(f.receive_lsn, primary != nullptr ? primary->current_lsn : Lsn{0});
        l.lag_bytes = head > f.replay_lsn ? head - f.replay_lsn : 0;
        // Time lag only while received WAL waits to be replayed: the witness heartbeat writes WAL
        // but no transaction, so on an idle primary the last replayed transaction only gets older.
        l.lag_seconds = f.receive_lsn > f.replay_lsn && f.replay_age_s ? *f.replay_age_s : 0.0;
      }
    }
    board_->set(n->id, l);
  }
}

std::vector<NodeObservation> Keeper::observations() const {
  std::vector<NodeObservation> out;
  for (const auto& n : nodes_) {
    if (n->retired) continue;
    NodeObservation o;
    o.id = n->id;
    o.name = n->target.name;
    o.priority = n->target.priority;
    o.health = n->detector.health();
    o.enabled = n->enabled;
    o.fenced = held_out(*n);
    if (o.fenced && !n->fenced) {
      o.fence_why = n->rejoin.phase != RejoinPhase::kFollowing
                        ? "fenced until it rejoins (rejoin " + std::string(to_string(n->rejoin.phase)) + ")"
                        : "fenced: " + std::string(to_string(n->standing));
    }
    o.replication_name = n->replication_name;
    if (o.health == NodeHealth::kUp) o.facts = n->facts;
    out.push_back(std::move(o));
  }
  return out;
}

Keeper::Node* Keeper::node_by_name(const std::string& name) {
  for (auto& n : nodes_) {
    if (n->target.name == name && !n->retired) return n.get();
  }
  return nullptr;
}

void Keeper::decide() {
  if (halted_) return;
  if (!started_) {
    for (const auto& n : nodes_) {
      if (n->probes_done == 0 && !n->retired) return;
    }
    decide_writer_at_start();
    return;
  }
  if (etcd_ != nullptr && follow()) return;
  if (step_ == Step::kConfirm && candidate_) {
    Node& c = *nodes_[*candidate_];
    if (c.facts && !c.facts->in_recovery && c.facts->timeline > old_timeline_ && c.detector.health() == NodeHealth::kUp) {
      step_record();
    } else if (SteadyClock::now() - failover_started_ > config_.promote_timeout) {
      abort_failover("promoted node " + c.target.name + " did not leave recovery in time");
    }
    return;
  }
  if (step_ != Step::kIdle) return;

  if (writer_) {
    Node& p = *nodes_[*writer_];
    if (p.detector.health() == NodeHealth::kDown) {
      // Nothing is cut here: the writer stays until a failover has a candidate and may fence.
      if (config_.automatic) {
        if (SteadyClock::now() >= next_attempt_) {
          begin_failover("primary " + p.target.name + " failed: " + p.last_error, std::nullopt, false, false);
        }
      } else {
        note_writer_trouble("primary " + p.target.name + " is down; failover mode is manual: waiting for FAILOVER on the console");
        if (SteadyClock::now() - last_refusal_log_ > std::chrono::seconds(10)) {
          last_refusal_log_ = SteadyClock::now();
          if (!refusal_counted_) ++counters_.failovers_refused;
          refusal_counted_ = true;
          add_event("failover_refused", p.target.name, "primary is down; failover mode is manual: run FAILOVER on the console");
        }
      }
      return;
    }
    if (p.detector.health() == NodeHealth::kUp && p.facts) {
      if (p.facts->in_recovery) {
        add_event("demoted", p.target.name, "the recorded primary is in recovery: no writes go anywhere");
        writer_.reset();
        publish(std::nullopt, "the recorded primary " + p.target.name + " is in recovery", false);
        return;
      }
      refusal_counted_ = false;
      if (writer_trouble_) {  // it answers again: clients are told the usual reason
        writer_trouble_ = false;
        publish(writer_, writer_why_, false);
      }
      if (p.facts_at > primary_last_probe_) {
        primary_last_lsn_ = p.facts->current_lsn;
        primary_last_probe_ = p.facts_at;
        primary_tx_at_probe_ = effects_.activity(p.id).transactions;
      }
      manage_sync();
      manage_rejoins();
    }
    return;
  }
  // No writer: the recorded primary may be back, or a failover may now be possible.
  if (!record_) return;
  if (record_->how == "fenced" && !unfencing_) {
    // [store]: a leader fenced it and died before another node was recorded. Back to it when it
    // still serves as recorded (rolled back); when it is down, the failover below goes on.
    PrimaryRecord plain = *record_;
    plain.how.clear();
    if (choose_writer(plain, observations()).writer) {
      unfence_record();
      return;
    }
  }
  WriterChoice c = choose_writer(*record_, observations());
  if (c.writer) {
    writer_ = c.writer;
    add_event("restored", nodes_[*c.writer]->target.name, "writes go to the recorded primary again: " + c.why);
    publish(c.writer, c.why, false);
    return;
  }
  Node* rec = node_by_name(record_->node);
  if (config_.automatic && rec != nullptr && rec->detector.health() == NodeHealth::kDown &&
      SteadyClock::now() >= next_attempt_) {
    begin_failover("recorded primary " + rec->target.name + " is down: " + rec->last_error, std::nullopt, false, false);
  }
}

void Keeper::manage_sync() {
  if (!writer_) return;
  Node& p = *nodes_[*writer_];
  if (!p.facts) return;
  const ProbeFacts& pf = *p.facts;
  // Which of the primary's replication connections is which standby, whatever it is called.
  std::vector<StandbyRef> refs;
  std::vector<Node*> standbys;
  for (auto& n : nodes_) {
    if (n->id == p.id || n->retired) continue;
    StandbyRef ref;
    ref.name = n->target.name;
    ref.host = n->target.host;
    ref.streams_from_primary = n->detector.health() == NodeHealth::kUp && n->facts && n->facts->in_recovery &&
                               n->facts->receiver_streaming && n->facts->upstream_port == p.target.port;
    refs.push_back(std::move(ref));
    standbys.push_back(n.get());
  }
  const std::vector<ReplicationMatch> matches = match_replication(refs, pf.replicas);
  auto rows_named = [&](const std::string& name) {
    return std::count_if(pf.replicas.begin(), pf.replicas.end(), [&](const ReplicaInfo& ri) { return ri.application_name == name; });
  };
  known_sync_.clear();
  std::vector<SyncStandby> view;
  std::vector<std::string> healthy;
  std::vector<std::string> all;
  for (std::size_t i = 0; i < standbys.size(); ++i) {
    Node& n = *standbys[i];
    const ReplicaInfo* ri = matches[i].row ? &pf.replicas[*matches[i].row] : nullptr;
    n.replication_name = ri ? ri->application_name : std::string();
    n.sync_state = ri ? ri->sync_state : std::string();
    if (ri && (ri->sync_state == "sync" || ri->sync_state == "quorum")) known_sync_.push_back(ri->application_name);
    n.streams_from_writer = ri != nullptr && ri->state == "streaming";
    const bool excluded = held_out(n) || !n.enabled;
    view.push_back({n.target.name, n.replication_name, n.sync_state, ri ? ri->state : std::string(),
                    n.detector.health() == NodeHealth::kUp, excluded});
    // synchronous_standby_names can name a standby only by a name no other connection uses.
    const bool own_name = ri && rows_named(ri->application_name) == 1;
    all.push_back(own_name ? ri->application_name : n.target.name);
    if (own_name && ri->state == "streaming" && !excluded) healthy.push_back(ri->application_name);
  }
  sync_spec_ = parse_sync_names(pf.synchronous_standby_names);
  adopt_standbys(p);
  const std::string desired = desired_sync_names(config_.sync_mode, healthy, all);
  const bool changing = desired != pf.synchronous_standby_names;
  const bool settling = changing || SteadyClock::now() - p.last_sync_change < std::chrono::seconds(2) ||
                        std::any_of(standbys.begin(), standbys.end(), [](const Node* n) { return n->adopting; });
  const SyncStatus status = sync_status(config_.sync_mode, p.target.name, pf.synchronous_standby_names, view);
  degraded_ = status.health != SyncHealth::kHonoured;
  // Every surface shows the state at once; an event waits until a change pgkeel is making itself
  // (a new synchronous_standby_names, a standby being named) had its chance to land.
  if (!settling || status.health == SyncHealth::kHonoured) {
    note_sync(status, p);
  } else {
    sync_.why = status.why;
    if (!sync_known_) sync_.health = status.health;
  }
  sync_evaluated_ = true;
  if (!changing || p.admin_running) return;
  if (SteadyClock::now() - p.last_sync_change < std::chrono::seconds(2)) return;
  p.last_sync_change = SteadyClock::now();
  const bool degrading = desired.empty() && config_.sync_mode == SyncMode::kOn;
  const std::string was = pf.synchronous_standby_names;
  admin(p, "ALTER SYSTEM SET synchronous_standby_names = " + quote_literal(desired), [this, &p, desired, degrading, was](const PgResult& r) {
    if (!r.ok) {
      add_event("sync_change_failed", p.target.name, "synchronous_standby_names = '" + desired + "': " + r.error);
      return;
    }
    admin(p, "SELECT pg_reload_conf()", [this, &p, desired, degrading, was](const PgResult& r2) {
      if (!r2.ok) {
        add_event("sync_change_failed", p.target.name, r2.error);
        return;
      }
      if (degrading && !was.empty()) {
        // pgkeel chose availability: say so now, not after the next probe.
        note_sync({SyncHealth::kDegraded, "no healthy synchronous standby: commits on " + p.target.name +
                                               " no longer wait for one (synchronous_standby_names was '" + was + "')"},
                  p);
      } else if (!degrading) {
        add_event("sync_names", p.target.name, "synchronous_standby_names = '" + desired + "'");
      }
    });
  });
}

void Keeper::note_sync(const SyncStatus& status, Node& primary) {
  const bool changed = !sync_known_ || status.health != sync_.health;
  const bool was_bad = sync_known_ && (sync_.health == SyncHealth::kDegraded || sync_.health == SyncHealth::kWaiting);
  sync_known_ = true;
  sync_ = status;
  if (!changed) return;
  switch (status.health) {
    case SyncHealth::kUnknown:
    case SyncHealth::kOff:
      return;
    case SyncHealth::kHonoured:
      if (was_bad) add_event("sync_restored", primary.target.name, status.why);
      return;
    case SyncHealth::kDegraded:
    case SyncHealth::kWaiting: {
      ++counters_.degradations;
      const std::string kind = status.health == SyncHealth::kDegraded ? "degraded" : "sync_waiting";
      add_event(kind, primary.target.name, status.why);
      run_hook(config_.on_degraded, kind, &primary, status.why);
      return;
    }
  }
}

// A standby made by `pg_basebackup -R` streams as "walreceiver" (or its cluster_name), a name that
// synchronous_standby_names cannot tell apart from any other. pgkeel names it after its [[node]]:
// application_name in its primary_conninfo (ALTER SYSTEM, reload: the WAL receiver reconnects).
void Keeper::adopt_standbys(Node& p) {
  const auto now = SteadyClock::now();
  for (auto& np : nodes_) {
    Node& n = *np;
    if (n.id == p.id || n.retired || n.adopting || n.admin_running) continue;
    if (n.detector.health() != NodeHealth::kUp || !n.facts || !n.facts->in_recovery || !n.facts->receiver_streaming ||
        n.facts->upstream_port != p.target.port) {
      continue;
    }
    const bool named = std::any_of(p.facts->replicas.begin(), p.facts->replicas.end(),
                                   [&](const ReplicaInfo& ri) { return ri.application_name == n.target.name; });
    // Someone streams under a name no standby [[node]] has ("walreceiver", a cluster_name, the
    // primary's own name): it is this standby or another unnamed one. Without such a row the two
    // probes only disagree for a moment (the standby is reconnecting).
    const bool stranger = std::any_of(p.facts->replicas.begin(), p.facts->replicas.end(), [&](const ReplicaInfo& ri) {
      return std::none_of(nodes_.begin(), nodes_.end(), [&](const auto& m) {
        return !m->retired && m->id != p.id && m->target.name == ri.application_name;
      });
    });
    if (named || !stranger || now - n.adopt_attempt < std::chrono::seconds(10)) continue;
    n.adopting = true;
    n.adopt_attempt = now;
    const std::string was = n.replication_name.empty() ? "a name it shares with another standby" : "'" + n.replication_name + "'";
    auto fail = [this, &n](const std::string& why) {
      n.adopting = false;
      add_event("adopt_failed", n.target.name,
                "could not name its replication connection " + n.target.name + ": " + why +
                    "; synchronous_standby_names cannot rely on it until it streams as " + n.target.name +
                    " (set application_name=" + n.target.name + " in its primary_conninfo)");
    };
    admin(n, "SELECT current_setting('primary_conninfo')", [this, &n, was, fail](const PgResult& r) {
      if (!r.ok || r.rows.empty() || r.rows[0].empty() || !r.rows[0][0]) {
        fail(r.ok ? "primary_conninfo is not readable" : r.error);
        return;
      }
      std::string error;
      const std::optional<std::string> renamed = with_application_name(*r.rows[0][0], n.target.name, error);
      if (!renamed) {
        fail("its primary_conninfo does not parse: " + error);
        return;
      }
      admin(n, "ALTER SYSTEM SET primary_conninfo = " + quote_literal(*renamed), [this, &n, was, fail](const PgResult& r2) {
        if (!r2.ok) {
          fail(r2.error);
          return;
        }
        admin(n, "SELECT pg_reload_conf()", [this, &n, was, fail](const PgResult& r3) {
          if (!r3.ok) {
            fail(r3.error);
            return;
          }
          n.adopting = false;
          // synchronous_standby_names follows its new name at the next look at the primary, without
          // the usual pause between two changes: until then a commit may wait for the old name.
          if (writer_) {
            Node& w = *nodes_[*writer_];
            w.last_sync_change = {};
            if (!w.probing) probe(w);
          }
          add_event("adopted", n.target.name,
                    "it streamed as " + was + "; pgkeel set application_name=" + n.target.name +
                        " in its primary_conninfo so that synchronous_standby_names can name it");
        });
      });
    });
  }
}

// The node a failover would replace: the writer, or else the recorded primary.
std::optional<routing::NodeId> Keeper::failover_subject() const {
  if (writer_) return writer_;
  if (record_) {
    for (const auto& n : nodes_) {
      if (n->target.name == record_->node && !n->retired) return n->id;
    }
  }
  return std::nullopt;
}

void Keeper::begin_failover(const std::string& reason, std::optional<routing::NodeId> target, bool force,
                            bool skip_witness) {
  std::optional<routing::NodeId> failed = failover_subject();
  if (!failed) return;
  const auto now = SteadyClock::now();
  const Node& f = *nodes_[*failed];
  auto refuse = [&](const std::string& why, const char* hook_event, Millis retry) {
    // Nothing was touched: clients keep their server connections, the writer stays. Clients that
    // cannot reach it are held, and hear this reason when their hold_timeout runs out.
    next_attempt_ = now + retry;
    note_writer_trouble("primary " + f.target.name + " is not answering pgkeel, and no failover: " + why);
    if (now - last_refusal_log_ <= std::chrono::seconds(10)) return;
    last_refusal_log_ = now;
    if (!refusal_counted_) ++counters_.failovers_refused;
    refusal_counted_ = true;
    add_event("failover_refused", f.target.name, why);
    run_hook(config_.on_degraded, hook_event, &f, why);
  };
  if (!skip_witness) {
    // The witness and the plan must speak from after the failure: a probe answered before the
    // primary was seen failing still shows a receiver that was streaming then.
    const auto since = f.detector.failing_since();
    for (const auto& n : nodes_) {
      if (n->id == *failed || n->retired || n->detector.health() != NodeHealth::kUp || !n->facts) continue;
      if (since && n->facts_at < *since) return;  // the next probe round decides
    }
    std::vector<NodeObservation> standbys;
    for (const NodeObservation& o : observations()) {
      if (o.id != *failed) standbys.push_back(o);
    }
    WitnessResult w = witness(standbys, config_.witness_max_receipt_age_s);
    if (!w.confirmed) {
      // Asked again after the next probe: a hung primary's standbys stop hearing from it soon.
      refuse(w.why, "failover_refused", config_.probe_interval);
      return;
    }
  }
  // Decide before anything is cut: the plan the sequence makes again once the standbys are
  // detached must have a candidate now, or nothing happens at all.
  failure_began_ = skip_witness ? now : f.detector.failing_since().value_or(now);
  PlanInput in = plan_input(*failed);
  in.force = force;
  in.target = target;
  const Plan plan = plan_failover(in);
  if (!plan.chosen) {
    refuse(plan.summary, "failover_refused", std::max(config_.probe_interval * 2, Millis(1000)));
    return;
  }
  failed_ = failed;
  target_ = target;
  force_ = force;
  reason_ = reason;
  sequence_ = Sequence::kFailover;
  ++sequence_id_;
  refusal_counted_ = false;
  {
    const int n = std::max(1, f.failed_in_row);
    cause_ = skip_witness ? reason
                          : "promoted after " + f.target.name + " failed " + std::to_string(n) + (n == 1 ? " probe" : " probes");
  }
  candidate_.reset();
  failover_started_ = now;
  old_timeline_ = 0;
  for (const auto& n : nodes_) {
    if (n->facts) old_timeline_ = std::max(old_timeline_, n->facts->timeline);
  }
  add_event("failover_started", f.target.name, reason + "; would promote " + nodes_[*plan.chosen]->target.name);
  step_detach();
}

// The writer stays, but what clients are told when they cannot reach it changes (no connection
// is closed: the writer is the same node).
void Keeper::note_writer_trouble(const std::string& why) {
  if (!writer_ || table_.current()->why == why) return;
  writer_trouble_ = true;
  publish(writer_, why, false);
}

void Keeper::publish(std::optional<routing::NodeId> writer, const std::string& why_asked, bool hold,
                     std::function<void(std::uint64_t)> then) {
  std::string why = why_asked;
  if (store_cut_ && writer) {
    // [store]: no writes on a stale lease, whoever asks (an aborted sequence restoring its writer).
    writer.reset();
    why = cut_why_;
    hold = false;
  }
  if (writer && !hold && !writer_trouble_) writer_why_ = why;
  routing::Snapshot snap = *table_.current();
  if (snap.nodes.size() != nodes_.size()) snap.nodes.resize(nodes_.size());
  for (const auto& n : nodes_) {
    routing::NodeView& v = snap.nodes[n->id];
    v.id = n->id;
    v.name = n->target.name;
    v.host = n->target.host;
    v.port = n->target.port;
    v.fenced = held_out(*n);
    v.enabled = n->enabled && !n->retired;
    v.retired = n->retired;
    v.role = role_of(*n);
    if (writer && *writer == n->id) v.role = routing::Role::kPrimary;
  }
  snap.writer = writer;
  snap.why = why;
  snap.hold = hold;
  const bool in_barrier = step_ == Step::kBarrier;
  const bool in_publish = step_ == Step::kPublish;
  const std::uint64_t seq = sequence_id_;
  // Kept before anyone can see it: a restart never hands the same epoch out for another table.
  store_->routing_epoch(table_.next_epoch());
  effects_.publish(std::move(snap), [this, in_barrier, in_publish, seq, then = std::move(then)](std::uint64_t epoch) {
    if (then) {
      then(epoch);
    } else if (seq != sequence_id_) {
      // an acknowledgement for a sequence that has been aborted since
    } else if (in_barrier && step_ == Step::kBarrier) {
      add_event("writes_stopped", failed_ ? nodes_[*failed_]->target.name : "", "every worker closed its connections; epoch " + std::to_string(epoch));
      // And every other instance's workers (alone: there are none, and this returns at once).
      fence_peers([this, seq](bool ok, const std::string& refused) {
        if (seq != sequence_id_ || step_ != Step::kBarrier) return;
        if (!ok) {
          abort_failover(refused);
          return;
        }
        step_promote();
      });
    } else if (in_publish && step_ == Step::kPublish) {
      finish_sequence(epoch);
    }
  });
}

void Keeper::admin(Node& n, const std::string& sql, std::function<void(const PgResult&)> cb, std::optional<Millis> timeout) {
  n.admin_queue.emplace_back(sql, std::move(cb), timeout.value_or(config_.promote_timeout));
  if (!n.admin_running) admin_next(n);
}

// One statement at a time: ALTER SYSTEM refuses to run inside a transaction block, and a
// multi-statement query string is one.
void Keeper::admin_next(Node& n) {
  if (n.admin_queue.empty()) {
    n.admin_running = false;
    return;
  }
  n.admin_running = true;
  const auto& [sql, cb, timeout] = n.admin_queue.front();
  n.admin_conn->run(sql, timeout, [this, &n](const PgResult& r) {
    auto done = std::move(std::get<1>(n.admin_queue.front()));
    n.admin_queue.pop_front();
    if (!r.ok) n.admin_conn->close();
    done(r);  // may queue more: admin_running is still set, so it only enqueues
    admin_next(n);
  });
}

void Keeper::step_detach() {
  step_ = Step::kDetach;
  // Standbys stop taking WAL from the old primary before one of them is chosen, so no standby
  // moves on past the one promoted, and a half-alive old primary cannot feed them.
  int pending = 0;
  auto remaining = std::make_shared<int>(0);
  for (auto& n : nodes_) {
    if (n->id == *failed_ || n->detector.health() != NodeHealth::kUp || !n->facts || !n->facts->in_recovery) continue;
    ++pending;
  }
  *remaining = pending;
  if (pending == 0) {
    step_settle(0);
    return;
  }
  for (auto& n : nodes_) {
    if (n->id == *failed_ || n->detector.health() != NodeHealth::kUp || !n->facts || !n->facts->in_recovery) continue;
    Node& node = *n;
    node.settle_lsn.reset();
    node.detached_conninfo.clear();
    // Kept, so that it follows the new primary (or the old one again) with its own user,
    // password and TLS settings, not only pgkeel's [failover] replication_user.
    admin(node, "SELECT current_setting('primary_conninfo')", [&node](const PgResult& r) {
      if (r.ok && !r.rows.empty() && !r.rows[0].empty() && r.rows[0][0]) node.detached_conninfo = *r.rows[0][0];
    });
    admin(node, "ALTER SYSTEM SET primary_conninfo = ''", [](const PgResult&) {});
    admin(node, "SELECT pg_reload_conf()", [this, remaining, &node](const PgResult& r) {
      if (!r.ok) add_event("detach_failed", node.target.name, r.error);
      if (!node.probing) probe(node);  // its position after the detach, now rather than at the next tick
      if (--*remaining == 0 && step_ == Step::kDetach) step_settle(20);
    });
  }
}

void Keeper::step_settle(int rounds_left) {
  step_ = Step::kSettle;
  // Wait until every reachable standby's receiver stopped and its position held still.
  bool settled = true;
  for (auto& n : nodes_) {
    if (n->id == *failed_ || n->detector.health() != NodeHealth::kUp || !n->facts || !n->facts->in_recovery) continue;
    const Lsn pos = n->facts->wal_position();
    // Seen by a probe since the detach, its receiver stopped and its position held still.
    if (n->facts_at < failover_started_ || n->facts->receiver_streaming || !n->settle_lsn || *n->settle_lsn != pos) {
      settled = false;
    }
    n->settle_lsn = pos;
  }
  if (!settled && rounds_left > 0) {
    auto* arg = new std::pair<Keeper*, int>(this, rounds_left - 1);
    const timeval tv{0, 100 * 1000};
    event_base_once(base_, -1, EV_TIMEOUT, [](evutil_socket_t, short, void* a) {
      auto* p = static_cast<std::pair<Keeper*, int>*>(a);
      Keeper* k = p->first;
      const int left = p->second;
      delete p;
      if (k->step_ == Step::kSettle) k->step_settle(left);
    }, arg, &tv);
    return;
  }
  PlanInput in = plan_input(*failed_);
  in.force = force_;
  in.target = target_;
  Plan plan = plan_failover(in);
  if (!plan.chosen) {
    abort_failover(plan.summary);
    return;
  }
  candidate_ = plan.chosen;
  std::string text = plan.summary;
  const bool sync_guarantee = config_.sync_mode != SyncMode::kOff && !degraded_ && !known_sync_.empty() && !force_;
  if (!sync_guarantee && primary_last_probe_ != SteadyClock::time_point{}) {
    // What the bound above cannot see: the old primary's WAL after its last good probe.
    const auto ms = std::chrono::duration_cast<Millis>(failure_began_ - primary_last_probe_).count();
    const std::uint64_t tx = effects_.activity(*failed_).transactions - primary_tx_at_probe_;
    text += " (its last good probe was " + std::to_string(std::max<long long>(0, ms)) + " ms before the failure began; " +
            std::to_string(tx) + " transaction" + (tx == 1 ? " was" : "s were") +
            " acknowledged through pgkeel on it after that probe, and may be among what is lost)";
  }
  add_event("candidate", nodes_[*candidate_]->target.name, text);
  step_fence();
}

void Keeper::step_fence() {
  step_ = Step::kFence;
  Node& old = *nodes_[*failed_];
  if (config_.fence_command.empty()) {
    add_event("fencing", old.target.name, "fenced by epoch: the next epoch gives it no route and closes every connection from before; no fence_command configured");
    step_barrier();
    return;
  }
  const std::uint64_t seq = sequence_id_;
  // In its own process group, waited for with a deadline; the whole group is killed at it.
  run_child(config_.fence_command, {{"PGKEEL_EVENT", "fence"}, {"PGKEEL_NODE", old.target.name},
                                    {"PGKEEL_HOST", old.target.host}, {"PGKEEL_PORT", std::to_string(old.target.port)}},
            Millis(30000), [this, seq, &old](int status, std::string output) {
              if (seq != sequence_id_ || step_ != Step::kFence) return;
              while (!output.empty() && output.back() == '\n') output.pop_back();
              const std::size_t nl = output.rfind('\n');
              const std::string last = nl == std::string::npos ? output : output.substr(nl + 1);
              const std::string said = last.empty() ? "" : ": " + last;
              if (status == 0) {
                old.fenced = true;
                add_event("fencing", old.target.name, "fence_command succeeded" + said);
                step_barrier();
              } else if (config_.fence_required) {
                abort_failover("fence_command failed (" + (status < 0 ? std::string("killed at its 30 s deadline, or not run") : "status " + std::to_string(status)) +
                               said + "): not promoting while the old primary may still take writes");
              } else {
                add_event("fencing", old.target.name, "fence_command failed (status " + std::to_string(status) + said + "); continuing because fence_required = false");
                step_barrier();
              }
            });
}

// Only now, with a candidate chosen and the old primary fenced, are writes cut: every worker
// closes its connections to the old primary and acknowledges before anything is promoted.
void Keeper::step_barrier() {
  step_ = Step::kBarrier;
  writer_.reset();
  publish(std::nullopt, "failover in progress: " + reason_, true);
}

void Keeper::step_promote() {
  step_ = Step::kPromote;
  Node& c = *nodes_[*candidate_];
  admin(c, "SELECT pg_promote(true, " + std::to_string(std::max<long>(1, config_.promote_timeout.count() / 1000)) + ")",
        [this, &c](const PgResult& r) {
          if (step_ != Step::kPromote) return;
          if (!r.ok || r.rows.empty() || !r.rows[0][0] || *r.rows[0][0] != "t") {
            abort_failover("pg_promote on " + c.target.name + " failed: " + (r.ok ? "returned false" : r.error));
            return;
          }
          step_ = Step::kConfirm;  // decide() waits for a probe that shows it out of recovery
          if (!c.probing) probe(c);  // now, rather than at the next tick
        });
}

void Keeper::step_publish() {
  step_ = Step::kPublish;
  Node& c = *nodes_[*candidate_];
  writer_ = candidate_;
  known_sync_.clear();
  degraded_ = true;
  const Node& old = *nodes_[*failed_];
  std::string why = "primary since epoch " + std::to_string(record_ ? record_->epoch : table_.epoch() + 1) + ": " + cause_;
  if (sequence_ == Sequence::kFailover) why += "; " + old.target.name + (old.fenced ? " fenced" : " fenced by epoch");
  publish(candidate_, why, false);
  // The other standbys follow the new primary.
  for (auto& n : nodes_) {
    if (n->id == c.id || n->id == *failed_ || n->detector.health() != NodeHealth::kUp || !n->facts || !n->facts->in_recovery) continue;
    const std::string pci = follow_conninfo(c, *n);
    Node& node = *n;
    // Its replication slot on the new primary, so WAL it still needs is kept there.
    admin(c, "SELECT pg_create_physical_replication_slot(" + quote_literal(node.target.name) +
                 ", true) WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = " +
                 quote_literal(node.target.name) + ")",
          [](const PgResult&) {});
    admin(node, "ALTER SYSTEM SET primary_conninfo = " + quote_literal(pci), [](const PgResult&) {});
    admin(node, "ALTER SYSTEM SET primary_slot_name = " + quote_literal(node.target.name), [](const PgResult&) {});
    admin(node, "SELECT pg_reload_conf()", [this, &node](const PgResult& r) {
      add_event("follow", node.target.name, r.ok ? "now streams from the new primary" : "could not repoint: " + r.error);
    });
  }
  run_hook(config_.on_promote, "promote", &c);
}

void Keeper::abort_failover(const std::string& why) {
  if (sequence_ == Sequence::kSwitchover) {
    abort_switchover(why);
    return;
  }
  ++counters_.failovers_refused;
  ++sequence_id_;
  add_event("failover_refused", failed_ ? nodes_[*failed_]->target.name : "", why);
  run_hook(config_.on_degraded, "failover_refused", failed_ ? nodes_[*failed_].get() : nullptr, why);
  const bool cut = !writer_;  // the barrier ran (or there was no writer to begin with)
  step_ = Step::kIdle;
  next_attempt_ = SteadyClock::now() + std::chrono::seconds(5);
  // The sequence detached the standbys first: they follow the old primary again, should it come back.
  if (failed_) {
    Node& old = *nodes_[*failed_];
    for (auto& n : nodes_) {
      if (n->id == old.id || n->detector.health() != NodeHealth::kUp || !n->facts || !n->facts->in_recovery) continue;
      // Its own conninfo back, as it was before the detach.
      const std::string pci = n->detached_conninfo.empty() ? follow_conninfo(old, *n) : n->detached_conninfo;
      admin(*n, "ALTER SYSTEM SET primary_conninfo = " + quote_literal(pci), [](const PgResult&) {});
      admin(*n, "SELECT pg_reload_conf()", [](const PgResult&) {});
    }
  }
  // Before the barrier nothing was cut and the writer stays. After it, keep holding: the
  // primary may come back, or a standby may become eligible; clients get this reason when their
  // hold_timeout runs out.
  if (cut) {
    publish(std::nullopt, "no writable primary: " + why, true);
  } else {
    note_writer_trouble("a failover from " + nodes_[*writer_]->target.name + " was aborted: " + why);
  }
  if (auto done = std::move(done_)) {
    done_ = nullptr;
    done({false, "failover aborted: " + why});
  }
}

std::string Keeper::busy_text() const {
  if (step_ == Step::kIdle) return {};
  return sequence_ == Sequence::kSwitchover ? "a switchover" : "a failover";
}

// Called once every worker applied the snapshot naming the new writer.
void Keeper::finish_sequence(std::uint64_t epoch) {
  step_ = Step::kIdle;
  const Node& c = *nodes_[*candidate_];
  const Node& old = *nodes_[*failed_];
  const auto ms = std::chrono::duration_cast<Millis>(SteadyClock::now() - failover_started_).count();
  Outcome outcome{true, ""};
  if (sequence_ == Sequence::kFailover) {
    ++counters_.failovers;
    add_event("promotion", c.target.name,
              "writes go to " + c.target.name + " under epoch " + std::to_string(epoch) + ", " + std::to_string(ms) +
                  " ms after the failover started");
    outcome.text = c.target.name + " promoted, epoch " + std::to_string(epoch);
  } else {
    ++counters_.switchovers;
    long paused_ms = 0;
    if (writes_paused_) {
      paused_ms = static_cast<long>(std::chrono::duration_cast<Millis>(SteadyClock::now() - writes_paused_at_).count());
      writes_paused_ = false;
      effects_.resume_writes();
    }
    add_event("promotion", c.target.name, "writes go to " + c.target.name + " under epoch " + std::to_string(epoch));
    add_event("switchover", c.target.name,
              "done: " + c.target.name + " is the primary under epoch " + std::to_string(epoch) + ", " +
                  std::to_string(ms) + " ms after the switchover started; writes were paused for " +
                  std::to_string(paused_ms) + " ms");
    outcome.text = "switched over to " + c.target.name + ", epoch " + std::to_string(epoch) + "; writes paused " +
                   std::to_string(paused_ms) + " ms; " + old.target.name +
                   (config_.rejoin_command.empty() ? " stays stopped (no rejoin_command)" : " rejoins as a standby");
  }
  if (auto done = std::move(done_)) {
    done_ = nullptr;
    done(outcome);
  }
  if (sequence_ == Sequence::kSwitchover) rejoin_old_primary();
}

void Keeper::failover(std::optional<std::string> target, bool force, const std::string& who, OutcomeFn done) {
  auto refuse = [&](const std::string& why) {
    ++counters_.failovers_refused;
    add_event("failover_refused", target.value_or(""), why);
    done({false, "FAILOVER refused: " + why});
  };
  if (step_ != Step::kIdle) return refuse(busy_text() + " is running");
  if (halted_) return refuse("another pgkeel process is taking over: run FAILOVER there");
  if (!store_->leader()) return refuse("this pgkeel instance does not hold the leader lease: run FAILOVER on the instance that does");
  std::optional<routing::NodeId> t;
  if (target) {
    Node* n = node_by_name(*target);
    if (n == nullptr) return refuse("no node named " + *target);
    t = n->id;
  }
  const std::optional<routing::NodeId> failed = failover_subject();
  if (!failed) return refuse("no primary is known (no record yet): there is nothing to fail over from");
  if (t && *t == *failed) return refuse(*target + " is the primary already");
  const std::string reason = "FAILOVER" + std::string(target ? " TO " + *target : "") + (force ? " FORCE" : "") + " by " + who;
  // The same plan the sequence makes after detaching the standbys: refuse now, before anything
  // moves, when it would refuse then.
  PlanInput in = plan_input(*failed);
  in.force = force;
  in.target = t;
  const Plan plan = plan_failover(in);
  if (!plan.chosen) return refuse(plan.summary);
  add_event("console", nodes_[*failed]->target.name, reason);
  done_ = std::move(done);
  begin_failover(reason, t, force, true);
  if (step_ == Step::kIdle && done_) {
    auto d = std::move(done_);
    done_ = nullptr;
    ++counters_.failovers_refused;
    d({false, "FAILOVER refused: see SHOW EVENTS"});
  }
}

// ---- planned switchover ------------------------------------------------------------------------

void Keeper::switchover(std::optional<std::string> target, const std::string& who, OutcomeFn done) {
  if (halted_) {
    done({false, "SWITCHOVER refused: another pgkeel process is taking over: run it there"});
    return;
  }
  if (!store_->leader()) {
    add_event("switchover_refused", target.value_or(""), "this instance does not hold the leader lease");
    done({false, "SWITCHOVER refused: this pgkeel instance does not hold the leader lease: run it on the instance that does"});
    return;
  }
  SwitchoverInput in;
  in.nodes = observations();
  in.writer = writer_;
  in.system_identifier = system_identifier_;
  in.target = target;
  in.stop_command_configured = !config_.stop_command.empty();
  in.busy = busy_text();
  const SwitchoverChoice choice = choose_switchover_target(in);
  if (!choice.target) {
    add_event("switchover_refused", target.value_or(""), choice.why + " (by " + who + ")");
    done({false, "SWITCHOVER refused: " + choice.why});
    return;
  }
  Node& old = *nodes_[*writer_];
  Node& c = *nodes_[*choice.target];
  sequence_ = Sequence::kSwitchover;
  ++sequence_id_;
  failed_ = old.id;
  candidate_ = c.id;
  target_ = c.id;
  force_ = false;
  reason_ = "SWITCHOVER TO " + c.target.name + " by " + who;
  cause_ = reason_;
  done_ = std::move(done);
  failover_started_ = SteadyClock::now();
  switch_deadline_ = failover_started_ + config_.switchover_timeout;
  writes_paused_ = false;
  old_stopped_ = false;
  lsn_before_stop_ = 0;
  checkpoint_lsn_.reset();
  catchup_last_ = 0;
  catchup_unchanged_ = 0;
  old_timeline_ = 0;
  for (const auto& n : nodes_) {
    if (n->facts) old_timeline_ = std::max(old_timeline_, n->facts->timeline);
  }
  add_event("switchover", old.target.name, "started: " + reason_ + " (" + choice.why + ")");
  const std::uint64_t seq = sequence_id_;
  after(config_.switchover_timeout, [this, seq] {
    if (seq == sequence_id_) on_switch_deadline();
  });
  step_switch_checkpoint();
}

// A checkpoint while writes still flow, so the shutdown checkpoint (taken while they are paused)
// has little to write.
void Keeper::step_switch_checkpoint() {
  step_ = Step::kSwitchCheckpoint;
  Node& old = *nodes_[*failed_];
  const auto started = SteadyClock::now();
  const std::uint64_t seq = sequence_id_;
  admin(old, "CHECKPOINT", [this, seq, &old, started](const PgResult& r) {
    if (seq != sequence_id_ || step_ != Step::kSwitchCheckpoint) return;
    if (!r.ok) {
      abort_switchover("CHECKPOINT on " + old.target.name + " failed: " + r.error);
      return;
    }
    const auto ms = std::chrono::duration_cast<Millis>(SteadyClock::now() - started).count();
    add_event("switchover", old.target.name, "CHECKPOINT done in " + std::to_string(ms) + " ms");
    step_switch_drain();
  });
}

// New transactions wait in the proxy; running ones get switchover_drain_timeout to finish.
void Keeper::step_switch_drain() {
  step_ = Step::kSwitchDrain;
  Node& old = *nodes_[*failed_];
  writes_paused_ = true;
  writes_paused_at_ = SteadyClock::now();
  const std::uint64_t seq = sequence_id_;
  effects_.pause_writes(old.id, config_.switchover_drain_timeout, [this, seq, &old](int still_running) {
    if (seq != sequence_id_ || step_ != Step::kSwitchDrain) return;
    const auto ms = std::chrono::duration_cast<Millis>(SteadyClock::now() - writes_paused_at_).count();
    add_event("switchover", old.target.name,
              still_running > 0 ? "writes paused; " + std::to_string(still_running) +
                                      " transactions still running after " + std::to_string(ms) +
                                      " ms: their sessions will be cut"
                                : "writes paused; no transaction running (drained in " + std::to_string(ms) + " ms)");
    step_switch_barrier();
  });
}

// No writer: every worker closes its server connections to the old primary and acknowledges.
void Keeper::step_switch_barrier() {
  step_ = Step::kSwitchBarrier;
  writer_.reset();
  const std::uint64_t seq = sequence_id_;
  publish(std::nullopt, "switchover in progress: " + reason_, true, [this, seq](std::uint64_t epoch) {
    if (seq != sequence_id_ || step_ != Step::kSwitchBarrier) return;
    add_event("switchover", nodes_[*failed_]->target.name,
              "writes stopped: every worker closed its connections to it; epoch " + std::to_string(epoch));
    fence_peers([this, seq](bool ok, const std::string& why) {
      if (seq != sequence_id_ || step_ != Step::kSwitchBarrier) return;
      if (!ok) {
        abort_switchover(why);
        return;
      }
      step_switch_note_lsn();
    });
  });
}

void Keeper::step_switch_note_lsn() {
  step_ = Step::kSwitchNoteLsn;
  Node& old = *nodes_[*failed_];
  const std::uint64_t seq = sequence_id_;
  admin(old, "SELECT pg_current_wal_lsn()::text", [this, seq, &old](const PgResult& r) {
    if (seq != sequence_id_ || step_ != Step::kSwitchNoteLsn) return;
    std::optional<Lsn> lsn;
    if (r.ok && !r.rows.empty() && !r.rows[0].empty() && r.rows[0][0]) lsn = parse_lsn(*r.rows[0][0]);
    if (!lsn) {
      abort_switchover("could not read pg_current_wal_lsn() on " + old.target.name + ": " +
                       (r.ok ? "unexpected answer" : r.error));
      return;
    }
    lsn_before_stop_ = *lsn;
    add_event("switchover", old.target.name, "at " + format_lsn(*lsn) + " before the stop");
    step_switch_stop();
  });
}

void Keeper::step_switch_stop() {
  step_ = Step::kSwitchStop;
  Node& old = *nodes_[*failed_];
  const auto left = std::chrono::duration_cast<Millis>(switch_deadline_ - SteadyClock::now());
  if (left <= Millis(0)) {
    abort_switchover("switchover_timeout ran out before the stop");
    return;
  }
  add_event("switchover", old.target.name, "running stop_command");
  // From here on the old primary may be stopping: an abort cannot simply give it its writes back.
  old_stopped_ = true;
  const std::uint64_t seq = sequence_id_;
  run_child(config_.stop_command,
            {{"PGKEEL_EVENT", "stop"}, {"PGKEEL_NODE", old.target.name}, {"PGKEEL_HOST", old.target.host},
             {"PGKEEL_PORT", std::to_string(old.target.port)}, {"PGKEEL_NODE_NAME", old.target.name},
             {"PGKEEL_NODE_HOST", old.target.host}, {"PGKEEL_NODE_PORT", std::to_string(old.target.port)}},
            left, [this, seq, &old](int status, std::string output) {
              if (seq != sequence_id_ || step_ != Step::kSwitchStop) return;
              if (status != 0) {
                // Did it stop? If the old primary still answers as a primary, it did not, and it
                // can take its writes back.
                admin(old, "SELECT pg_is_in_recovery()", [this, seq, &old, status](const PgResult& r) {
                  if (seq != sequence_id_ || step_ != Step::kSwitchStop) return;
                  if (r.ok && !r.rows.empty() && r.rows[0][0] && *r.rows[0][0] == "f") old_stopped_ = false;
                  abort_switchover("stop_command failed (" +
                                   (status < 0 ? std::string("killed at switchover_timeout")
                                               : "status " + std::to_string(status)) +
                                   ")" + (old_stopped_ ? "" : "; " + old.target.name + " still runs"));
                });
                return;
              }
              checkpoint_lsn_ = parse_checkpoint_lsn(output);
              add_event("switchover", old.target.name,
                        "stopped cleanly" + (checkpoint_lsn_ ? ", shutdown checkpoint at " + format_lsn(*checkpoint_lsn_)
                                                             : std::string(", no checkpoint_lsn printed")));
              step_switch_catchup();
            });
}

// The target must hold every byte the old primary wrote (its shutdown checkpoint included), so
// promoting it loses nothing and the old primary can follow it without a rewind.
void Keeper::step_switch_catchup() {
  step_ = Step::kSwitchCatchup;
  Node& c = *nodes_[*candidate_];
  const std::uint64_t seq = sequence_id_;
  admin(c, "SELECT pg_last_wal_receive_lsn()::text, pg_last_wal_replay_lsn()::text", [this, seq, &c](const PgResult& r) {
    if (seq != sequence_id_ || step_ != Step::kSwitchCatchup) return;
    Lsn received = 0;
    if (r.ok && !r.rows.empty()) {
      for (const auto& v : r.rows[0]) {
        if (v) received = std::max(received, parse_lsn(*v).value_or(0));
      }
    }
    catchup_unchanged_ = received == catchup_last_ ? catchup_unchanged_ + 1 : 0;
    catchup_last_ = received;
    CatchupInput in;
    in.checkpoint_lsn = checkpoint_lsn_;
    in.lsn_before_stop = lsn_before_stop_;
    in.received = received;
    in.unchanged_checks = catchup_unchanged_;
    in.past_deadline = SteadyClock::now() >= switch_deadline_;
    const CatchupVerdict v = check_catchup(in);
    switch (v.state) {
      case CatchupState::kWait:
        after(Millis(50), [this, seq] {
          if (seq == sequence_id_ && step_ == Step::kSwitchCatchup) step_switch_catchup();
        });
        return;
      case CatchupState::kFailed:
        abort_switchover(c.target.name + ": " + v.why + (r.ok ? "" : " (" + r.error + ")"));
        return;
      case CatchupState::kCaughtUp:
        add_event("switchover", c.target.name, "caught up: " + v.why);
        step_promote();
        return;
    }
  });
}

void Keeper::on_switch_deadline() {
  switch (step_) {
    case Step::kSwitchCheckpoint:
    case Step::kSwitchDrain:
    case Step::kSwitchBarrier:
    case Step::kSwitchNoteLsn:
      abort_switchover("switchover_timeout (" + std::to_string(config_.switchover_timeout.count()) + " ms) ran out");
      return;
    default:
      // The stop command and the catch-up check watch the deadline themselves; a promotion that
      // started is not undone (promote_timeout bounds it).
      return;
  }
}

void Keeper::abort_switchover(const std::string& why) {
  const Step at = step_;
  static constexpr const char* kStepNames[] = {"idle",       "barrier",    "detach",     "settle",
                                               "fence",      "promote",    "confirm",    "record",
                                               "publish",    "checkpoint", "drain",      "barrier",
                                               "note_lsn",   "stop",       "catchup"};
  const std::string where = kStepNames[static_cast<int>(at)];
  ++counters_.switchovers_aborted;
  ++sequence_id_;
  step_ = Step::kIdle;
  next_attempt_ = SteadyClock::now() + std::chrono::seconds(5);
  Node& old = *nodes_[*failed_];
  std::string text = "aborted at " + where + ": " + why;
  const bool promoted = at == Step::kPromote || at == Step::kConfirm || at == Step::kRecord || at == Step::kPublish;
  if (!old_stopped_ && !promoted) {
    writer_ = old.id;
    text += "; writes resume on " + old.target.name;
    publish(old.id, "primary since epoch " + std::to_string(record_ ? record_->epoch : 0) + ": switchover aborted (" + why + ")",
            false);
  } else {
    text += "; " + old.target.name + (promoted ? " was stopped and " + nodes_[*candidate_]->target.name +
                                                     " may be promoted: see SHOW NODES; no writer until it is settled"
                                               : " was stopped and is still the recorded primary: start it again, or "
                                                 "FAILOVER to a standby; clients are held");
    publish(std::nullopt, "no writable primary: switchover aborted at " + where + ": " + why, true);
  }
  if (writes_paused_) {
    writes_paused_ = false;
    effects_.resume_writes();
  }
  add_event("switchover_aborted", old.target.name, text);
  run_hook(config_.on_degraded, "switchover_aborted", &old);
  if (auto done = std::move(done_)) {
    done_ = nullptr;
    done({false, "SWITCHOVER " + text});
  }
}

// The old primary follows the new one. Not waited for by the console; its exit is an event, and
// the rejoin is then verified as any other (manage_rejoins).
void Keeper::rejoin_old_primary() {
  Node& old = *nodes_[*failed_];
  const Node& primary = *nodes_[*candidate_];
  if (config_.rejoin_command.empty()) {
    add_event("rejoin", old.target.name, "no rejoin_command configured: it stays stopped until it is made a standby of " +
                                             primary.target.name);
    return;
  }
  old.rejoin = RejoinState{};
  old.rejoin.phase = RejoinPhase::kRunning;
  old.rejoin.attempts = 1;
  old.rejoin.why = old.target.name + " was stopped by a switchover to " + primary.target.name;
  run_rejoin(old, primary, "switchover");
}

RejoinPolicy Keeper::rejoin_policy() const {
  RejoinPolicy p;
  p.mode = config_.rejoin_mode;
  p.has_command = !config_.rejoin_command.empty();
  // A standby pointed at a new primary a moment ago is on the old timeline until it has received
  // the promotion: a standing counts once it lasted a few probes.
  p.settle = std::max<Millis>(Millis(3000), config_.probe_interval * 6);
  p.verify_timeout = Millis(60000);
  p.backoff_first = Millis(10000);
  p.backoff_max = Millis(300000);
  return p;
}

void Keeper::manage_rejoins() {
  if (!writer_ || !record_) return;
  const Node& w = *nodes_[*writer_];
  const auto now = SteadyClock::now();
  const RejoinPolicy policy = rejoin_policy();
  // Nothing is started while a sequence runs or the writer is in doubt.
  const bool busy = step_ != Step::kIdle || writer_trouble_;
  bool routes_changed = false;
  for (auto& np : nodes_) {
    Node& n = *np;
    if (n.retired) continue;
    if (n.id == w.id) {
      // The writer stands as the writer; whatever it was rejoining from is over.
      const bool was_held = held_out(n);
      n.standing = Standing::kWriter;
      n.rejoin = RejoinState{};
      if (held_out(n) != was_held) routes_changed = true;
      continue;
    }
    StandingInput in;
    in.facts = n.detector.health() == NodeHealth::kUp && n.facts ? &*n.facts : nullptr;
    in.system_identifier = system_identifier_;
    in.record_timeline = record_->timeline;
    in.streams_from_writer = n.streams_from_writer;
    const Standing standing = assess(in);
    std::string why = describe_standing(standing, n.target.name, in.facts, w.target.name, record_->timeline);
    // A primary on a newer timeline than the record's was promoted outside pgkeel: it may hold
    // writes nobody else has. It is fenced and reported, never rewound automatically.
    RejoinPolicy node_policy = policy;
    if (standing == Standing::kReturnedPrimary && in.facts != nullptr && in.facts->timeline > record_->timeline) {
      node_policy.mode = RejoinMode::kManual;
      why += "; its timeline is newer than the record's (promoted outside pgkeel?): not rewound automatically";
    }
    const bool was_held = held_out(n);
    n.standing = standing;
    const std::string name = n.target.name;
    switch (observe(n.rejoin, standing, why, node_policy, now, busy)) {
      case RejoinAction::kNone:
        break;
      case RejoinAction::kReportNeeded: {
        const bool will_run = node_policy.mode == RejoinMode::kAuto && node_policy.has_command;
        add_event("rejoin_needed", name,
                  n.rejoin.why + (will_run ? "; rejoining (rejoin_command)"
                                           : node_policy.mode == RejoinMode::kAuto
                                                 ? "; no rejoin_command configured: rejoin it by hand"
                                                 : "; rejoin = \"manual\": rejoin it by hand (tools/rejoin.sh), or set rejoin = \"auto\""));
        run_hook(config_.on_degraded, "rejoin_needed", &n, n.rejoin.why);
        break;
      }
      case RejoinAction::kRun:
        run_rejoin(n, w, standing == Standing::kReturnedPrimary ? "returned-primary" : "old-timeline");
        break;
      case RejoinAction::kVerified:
        ++counters_.rejoins;
        add_event("rejoined", name, why);
        break;
      case RejoinAction::kVerifyFailed:
        ++counters_.rejoin_failures;
        add_event("rejoin_failed", name,
                  n.rejoin.last_error + "; next try in " +
                      std::to_string(std::chrono::duration_cast<std::chrono::seconds>(n.rejoin.next_try - now).count()) + " s");
        break;
    }
    if (held_out(n) != was_held) routes_changed = true;
  }
  if (routes_changed) refresh_routes();
}

void Keeper::run_rejoin(Node& n, const Node& primary, const std::string& reason) {
  if (reason != "switchover") {
    add_event("rejoin", n.target.name,
              "running rejoin_command (attempt " + std::to_string(n.rejoin.attempts) + ", " + reason + ", standby of " +
                  primary.target.name + ")");
  } else {
    add_event("rejoin", n.target.name, "running rejoin_command (standby of " + primary.target.name + ")");
  }
  const std::string name = n.target.name;
  const routing::NodeId id = n.id;
  const auto started = SteadyClock::now();
  run_child(config_.rejoin_command,
            {{"PGKEEL_EVENT", "rejoin"}, {"PGKEEL_NODE", n.target.name}, {"PGKEEL_HOST", n.target.host},
             {"PGKEEL_PORT", std::to_string(n.target.port)}, {"PGKEEL_NODE_NAME", n.target.name},
             {"PGKEEL_NODE_HOST", n.target.host}, {"PGKEEL_NODE_PORT", std::to_string(n.target.port)},
             {"PGKEEL_PRIMARY_NAME", primary.target.name}, {"PGKEEL_PRIMARY_HOST", primary.target.host},
             {"PGKEEL_PRIMARY_PORT", std::to_string(primary.target.port)}, {"PGKEEL_REJOIN_REASON", reason}},
            std::chrono::hours(1), [this, id, name, started](int status, std::string output) {
              while (!output.empty() && output.back() == '\n') output.pop_back();
              const std::size_t nl = output.rfind('\n');
              const std::string last = nl == std::string::npos ? output : output.substr(nl + 1);
              const auto now = SteadyClock::now();
              const auto ms = std::chrono::duration_cast<Millis>(now - started).count();
              Node& node = *nodes_[id];
              // The last lines of its output go with a failure (the surfaces show the last error).
              std::string tail = output;
              if (tail.size() > 2000) tail = "..." + tail.substr(tail.size() - 2000);
              command_finished(node.rejoin, status, tail, rejoin_policy(), now);
              std::string text = (status == 0 ? "rejoin_command succeeded" : "rejoin_command failed (status " + std::to_string(status) + ")") +
                                 std::string(" in ") + std::to_string(ms) + " ms" + (last.empty() ? "" : ": " + last);
              if (status != 0) ++counters_.rejoin_failures;
              if (status != 0 && node.rejoin.phase == RejoinPhase::kBackoff) {
                text += "; next try in " +
                        std::to_string(std::chrono::duration_cast<std::chrono::seconds>(node.rejoin.next_try - now).count()) + " s";
              } else if (status == 0) {
                text += "; checking that it streams from the primary on the primary's timeline";
              }
              add_event(status == 0 ? "rejoin" : "rejoin_failed", name, text);
            });
}

// ---- maintenance verbs -------------------------------------------------------------------------

Outcome Keeper::node_verb(NodeVerb verb, const std::string& node, const std::string& who) {
  Node* n = node_by_name(node);
  if (n == nullptr) return {false, std::string(to_string(verb)) + " refused: no node named " + node};
  NodeVerbInput in;
  in.verb = verb;
  for (NodeObservation& o : observations()) {
    if (o.id == n->id) in.node = std::move(o);
  }
  in.node.facts = n->facts;  // the last successful probe's, even if the node is down now
  in.writer = writer_;
  if (record_) in.recorded_primary = record_->node;
  in.busy = busy_text();
  const NodeVerbDecision d = decide_node_verb(in);
  if (!d.ok || !d.changes) return {d.ok, d.text};
  switch (verb) {
    case NodeVerb::kFence: n->fenced = true; break;
    case NodeVerb::kUnfence: n->fenced = false; break;
    case NodeVerb::kDisable: n->enabled = false; break;
    case NodeVerb::kEnable: n->enabled = true; break;
  }
  std::string kind(to_string(verb));
  std::transform(kind.begin(), kind.end(), kind.begin(), [](unsigned char ch) { return std::tolower(ch); });
  add_event(kind, n->target.name, std::string(to_string(verb)) + " by " + who + ": " + d.text);
  const auto snap = table_.current();
  if (d.drops_writer) {
    writer_.reset();
    publish(std::nullopt, "no writer: " + n->target.name + " (the primary) fenced by " + who, true);
  } else {
    publish(snap->writer, snap->why, snap->hold);
  }
  // An unfenced recorded primary, or a restored standby, is picked up by the next decide().
  return {true, d.text};
}

Outcome Keeper::fence(const std::string& node, const std::string& who) { return node_verb(NodeVerb::kFence, node, who); }
Outcome Keeper::unfence(const std::string& node, const std::string& who) { return node_verb(NodeVerb::kUnfence, node, who); }
Outcome Keeper::disable(const std::string& node, const std::string& who) { return node_verb(NodeVerb::kDisable, node, who); }
Outcome Keeper::enable(const std::string& node, const std::string& who) { return node_verb(NodeVerb::kEnable, node, who); }

KeeperCounters Keeper::counters() const {
  KeeperCounters c = counters_;
  c.sync_mode = config_.sync_mode;
  c.sync_health = config_.sync_mode == SyncMode::kOff ? SyncHealth::kOff : sync_.health;
  c.sync_why = sync_.why;
  if (config_.sync_mode != SyncMode::kOff && !sync_evaluated_) {
    c.sync_health = SyncHealth::kUnknown;
    c.sync_why = "no primary evaluated yet";
  }
  c.degraded = c.sync_health == SyncHealth::kDegraded;
  c.record_error = record_error_;
  if (store_cut_) c.store_cut_why = cut_why_;
  for (const auto& n : nodes_) {
    c.timeouts_excused += n->detector.timeouts_excused();
    if (n->retired || n->rejoin.phase == RejoinPhase::kFollowing) continue;
    std::string clause = n->rejoin.why;
    switch (n->rejoin.phase) {
      case RejoinPhase::kNeeded:
        clause += config_.rejoin_mode == RejoinMode::kAuto && !config_.rejoin_command.empty() ? "; rejoin starting"
                                                                                              : "; to be rejoined by hand";
        break;
      case RejoinPhase::kRunning: clause += "; rejoin running (attempt " + std::to_string(n->rejoin.attempts) + ")"; break;
      case RejoinPhase::kVerifying: clause += "; rejoined, checking that it streams"; break;
      case RejoinPhase::kBackoff: clause += "; rejoin failed: " + n->rejoin.last_error.substr(0, 300); break;
      case RejoinPhase::kFollowing: break;
    }
    c.rejoin_why += (c.rejoin_why.empty() ? "" : "; ") + clause;
  }
  return c;
}

// What the planner needs, as the keeper knows it now, were `failed` the failed primary.
PlanInput Keeper::plan_input(routing::NodeId failed) const {
  PlanInput in;
  in.nodes = observations();
  const SteadyClock::time_point since = failure_began(failed);
  for (NodeObservation& o : in.nodes) o.heard_since_failure = nodes_[o.id]->facts_at >= since;
  in.sync_spec = sync_spec_;
  in.failed_primary = failed;
  in.system_identifier = system_identifier_;
  in.sync_mode = config_.sync_mode;
  in.known_sync = known_sync_;
  in.degraded = degraded_;
  in.primary_last_lsn = primary_last_lsn_;
  in.max_lag_bytes = config_.max_lag_on_failover;
  return in;
}

SteadyClock::time_point Keeper::failure_began(routing::NodeId failed) const {
  if (step_ != Step::kIdle && failed_ && *failed_ == failed) return failure_began_;
  // A dry run, or the check before a console FAILOVER: what would be, if every standby answers.
  return nodes_[failed]->detector.failing_since().value_or(SteadyClock::time_point{});
}

// The dry run: the node the next automatic failover would replace (the writer, or else the
// recorded primary), with the same inputs step_settle() gives the planner (no target, no FORCE).
Plan Keeper::plan() const {
  const std::optional<routing::NodeId> failed = failover_subject();
  if (!failed) {
    Plan p;
    p.summary = "no primary is known yet: nothing to fail over from";
    return p;
  }
  return plan_failover(plan_input(*failed));
}

// The role a snapshot gives a node that is not the writer: a standby only while it is reachable
// and in recovery; a node that is down or never answered is unknown and gets no reads.
routing::Role Keeper::role_of(const Node& n) const {
  if (!n.facts || n.detector.health() == NodeHealth::kDown) return routing::Role::kUnknown;
  return n.facts->in_recovery ? routing::Role::kStandby : routing::Role::kPrimary;
}

// Republishes (same writer, same why) when a node's role as the snapshot shows it is out of date,
// e.g. an old primary that came back as a streaming standby after a switchover now serves reads.
void Keeper::refresh_routes() {
  const auto snap = table_.current();
  bool stale = snap->nodes.size() != nodes_.size();
  for (const auto& n : nodes_) {
    if (stale) break;
    const routing::NodeView& v = snap->nodes[n->id];
    routing::Role want = role_of(*n);
    if (snap->writer && *snap->writer == n->id) want = routing::Role::kPrimary;
    if (v.role != want || v.fenced != held_out(*n) || v.enabled != (n->enabled && !n->retired) || v.retired != n->retired) {
      stale = true;
    }
  }
  if (stale) publish(snap->writer, snap->why, snap->hold);
}

void Keeper::after(Millis delay, std::function<void()> fn) {
  auto* f = new std::function<void()>(std::move(fn));
  const timeval tv{static_cast<time_t>(delay.count() / 1000), static_cast<suseconds_t>((delay.count() % 1000) * 1000)};
  event_base_once(base_, -1, EV_TIMEOUT, [](evutil_socket_t, short, void* a) {
    auto* fp = static_cast<std::function<void()>*>(a);
    (*fp)();
    delete fp;
  }, f, &tv);
}

void Keeper::run_child(const std::string& command, const std::vector<std::pair<std::string, std::string>>& env,
                       Millis timeout, ChildDone done) {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) {
    done(-1, std::string("pipe: ") + std::strerror(errno));
    return;
  }
  const pid_t pid = fork();
  if (pid == 0) {
    setpgid(0, 0);
    dup2(fds[1], STDOUT_FILENO);  // dup2 clears FD_CLOEXEC on the copy
    for (const auto& [k, v] : env) setenv(k.c_str(), v.c_str(), 1);
    const int devnull = open("/dev/null", O_RDONLY);
    if (devnull >= 0) dup2(devnull, STDIN_FILENO);
    execl("/bin/sh", "sh", "-c", command.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  ::close(fds[1]);
  if (pid < 0) {
    ::close(fds[0]);
    done(-1, std::string("fork: ") + std::strerror(errno));
    return;
  }
  fcntl(fds[0], F_SETFL, fcntl(fds[0], F_GETFL) | O_NONBLOCK);
  struct Watch {
    Keeper* k;
    pid_t pid;
    int fd;
    SteadyClock::time_point deadline;
    std::string output;
    ChildDone done;
  };
  auto* w = new Watch{this, pid, fds[0], SteadyClock::now() + timeout, {}, std::move(done)};
  static void (*poll)(evutil_socket_t, short, void*) = [](evutil_socket_t, short, void* a) {
    auto* wait = static_cast<Watch*>(a);
    char buf[4096];
    for (;;) {
      const ssize_t got = ::read(wait->fd, buf, sizeof buf);
      if (got <= 0) break;
      wait->output.append(buf, static_cast<std::size_t>(got));
      if (wait->output.size() > 65536) wait->output.erase(0, wait->output.size() - 65536);
    }
    int status = 0;
    const pid_t r = waitpid(wait->pid, &status, WNOHANG);
    if (r == 0 && SteadyClock::now() < wait->deadline) {
      const timeval tv{0, 50 * 1000};
      event_base_once(wait->k->base_, -1, EV_TIMEOUT, poll, wait, &tv);
      return;
    }
    int code = -1;
    if (r == 0) {
      kill(-wait->pid, SIGKILL);
      waitpid(wait->pid, &status, 0);
    } else if (r == wait->pid && WIFEXITED(status)) {
      code = WEXITSTATUS(status);
    } else if (r == wait->pid && WIFSIGNALED(status)) {
      code = 128 + WTERMSIG(status);
    }
    for (;;) {  // what it wrote just before exiting
      const ssize_t got = ::read(wait->fd, buf, sizeof buf);
      if (got <= 0) break;
      wait->output.append(buf, static_cast<std::size_t>(got));
    }
    ::close(wait->fd);
    ChildDone cb = std::move(wait->done);
    std::string out = std::move(wait->output);
    delete wait;
    cb(code, std::move(out));
  };
  const timeval tv{0, 20 * 1000};
  event_base_once(base_, -1, EV_TIMEOUT, poll, w, &tv);
}

std::vector<NodeStatus> Keeper::nodes() const {
  std::vector<NodeStatus> out;
  const ProbeFacts* primary = writer_ && nodes_[*writer_]->facts ? &*nodes_[*writer_]->facts : nullptr;
  for (const auto& n : nodes_) {
    if (n->retired) continue;
    NodeStatus s;
    s.name = n->target.name;
    s.address = n->target.host + ":" + std::to_string(n->target.port);
    s.health = std::string(to_string(n->detector.health()));
    s.fenced = held_out(*n);
    s.standing = n->standing == Standing::kUnknown ? std::string() : std::string(to_string(n->standing));
    s.rejoin = std::string(to_string(n->rejoin.phase));
    s.rejoin_attempts = n->rejoin.attempts;
    if (n->rejoin.phase != RejoinPhase::kFollowing) s.rejoin_why = n->rejoin.why;
    s.rejoin_error = n->rejoin.last_error;
    s.enabled = n->enabled;
    s.probe_ms = n->probe_ms;
    s.probes = static_cast<std::uint64_t>(n->probes_done);
    s.probe_failures = n->probe_failures;
    s.timeouts_excused = n->detector.timeouts_excused();
    s.last_error = n->last_error;
    if (n->probes_done > 0) s.last_probe = iso_time(n->last_probe_wall);
    if (n->facts) {
      const ProbeFacts& f = *n->facts;
      s.role = f.in_recovery ? "standby" : "primary";
      if (writer_ && *writer_ == n->id) s.role = "primary (writer)";
      s.system_identifier = f.system_identifier;
      s.timeline = f.timeline;
      s.lsn = format_lsn(f.wal_position());
      if (f.in_recovery) {
        if (primary) s.lag_bytes = primary->current_lsn > f.wal_position() ? primary->current_lsn - f.wal_position() : 0;
        // As read routing counts it (post_positions): only while received WAL waits for replay.
        s.lag_seconds = f.receive_lsn > f.replay_lsn ? f.replay_age_s : std::optional<double>(0.0);
        if (primary) {
          s.sync_state = n->sync_state;
          s.application_name = n->replication_name;
        }
      }
    } else {
      s.role = "unknown";
    }
    out.push_back(std::move(s));
  }
  return out;
}

void Keeper::run_hook(const std::string& command, const std::string& event, const Node* node, const std::string& reason) {
  if (command.empty()) return;
  // Double fork: the hook runs detached and never becomes our zombie.
  const pid_t pid = fork();
  if (pid == 0) {
    std::vector<std::pair<std::string, std::string>> env = {{"PGKEEL_EVENT", event}};
    if (!reason.empty()) env.emplace_back("PGKEEL_REASON", reason);
    if (node != nullptr) {
      env.emplace_back("PGKEEL_NODE", node->target.name);
      env.emplace_back("PGKEEL_HOST", node->target.host);
      env.emplace_back("PGKEEL_PORT", std::to_string(node->target.port));
    }
    spawn(command, env);
    _exit(0);
  }
  if (pid > 0) waitpid(pid, nullptr, 0);
}

void Keeper::add_event(std::string kind, const std::string& node, std::string text) {
  Event e;
  e.at = std::chrono::system_clock::now();
  e.id = next_event_id_++;
  e.epoch = table_.epoch();
  e.kind = std::move(kind);
  e.node = node;
  e.text = std::move(text);
  if (!instance_.empty()) e.text = "[" + instance_ + "] " + e.text;  // which instance decided
  if (on_event) on_event(e);
  events_.push_back(std::move(e));
  while (events_.size() > kMaxEvents) events_.pop_front();
}

}  // namespace pgkeel::health
