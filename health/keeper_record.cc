// health/keeper_record.cc — where the keeper meets the record store: the record at start and
// its bootstrap, the record of a promotion, the fence before it, and with [store] the follower's
// routing by the record, the stale-lease cut, and the peers.
#include <algorithm>
#include <string>
#include <vector>

#include "health/keeper.h"
#include "health/keeper_node.h"
#include "health/record_store_etcd.h"

namespace pgkeel::health {

RecordStoreHooks Keeper::record_hooks() {
  RecordStoreHooks hooks;
  hooks.problem = [this](const std::string& kind, const std::string& node, const std::string& text) {
    if (kind == "record_failed") {
      note_record_error(node, text);
    } else {
      add_event(kind, node, text);
    }
  };
  hooks.written = [this]() { record_error_.clear(); };
  return hooks;
}

void Keeper::use_etcd(store::Client& client, const EtcdStoreOptions& options) {
  instance_ = options.name;
  EtcdStoreHooks eh;
  eh.changed = [this](const StoredRecord& r) { on_record_changed(r); };
  eh.stale = [this]() {
    if (started_) decide();  // follow() cuts routing now, not at the next probe round
  };
  eh.leadership = [this](bool leads) {
    add_event(leads ? "leader" : "follower", "",
              leads ? "this instance holds the leader lease: it decides"
                    : "this instance does not hold the leader lease: it routes as the record says");
  };
  auto etcd = std::make_unique<EtcdRecordStore>(base_, client, options, std::move(store_), record_hooks(), std::move(eh));
  etcd_ = etcd.get();
  store_ = std::move(etcd);
}

void Keeper::step_down() {
  if (etcd_ != nullptr) etcd_->step_down();
}

void Keeper::release_store(std::function<void()> done) {
  if (etcd_ == nullptr) {
    done();
    return;
  }
  etcd_->resign(std::move(done));
}

std::vector<PeerStatus> Keeper::peers() const {
  std::vector<PeerStatus> out;
  if (etcd_ == nullptr) return out;
  PeerStatus me;
  me.instance = etcd_->name();
  me.address = etcd_->address();
  me.role = etcd_->leader() ? "leader" : "follower";
  me.applied_epoch = etcd_->applied_epoch();
  if (etcd_->last_renewal() != SteadyClock::time_point{}) {
    me.lease_age_s = std::chrono::duration<double>(SteadyClock::now() - etcd_->last_renewal()).count();
  }
  me.store_reachable = etcd_->serving() && etcd_->store_error().empty();
  me.self = true;
  out.push_back(me);
  for (const PeerReport& p : etcd_->peers()) {
    if (p.name == me.instance) continue;
    PeerStatus s;
    s.instance = p.name;
    s.address = p.address;
    s.role = p.name == etcd_->leader_name() ? "leader" : "follower";
    s.applied_epoch = p.applied_epoch;
    s.store_reachable = true;  // its key lives only while it renews its lease
    out.push_back(std::move(s));
  }
  return out;
}

bool Keeper::follow() {
  if (!etcd_->serving()) {
    // Before etcd could let the lease expire and a leader stop waiting for this instance.
    if (!store_cut_) {
      store_cut_ = true;
      writer_.reset();
      cut_why_ = "pgkeel instance " + instance_ + " cannot renew its lease in etcd (" +
                 (etcd_->store_error().empty() ? std::string("no answer yet") : etcd_->store_error()) +
                 "): it routes no writes until etcd answers again; connect through another instance";
      add_event("store_lost", "", cut_why_);
      publish(std::nullopt, cut_why_, false);
    }
    // A sequence under way goes on to its next step in the store, which refuses it (no lease, no
    // leadership) and aborts it; publish() routes no writer meanwhile, whatever it is asked.
    return step_ == Step::kIdle;
  }
  if (store_cut_) {
    // The record may have changed while this instance could not see it (its watch was cut with
    // its lease): no writer until a fresh read says what etcd holds now, or it would route to
    // the primary of before the outage for as long as the watch takes to catch up.
    if (!refreshing_record_) {
      refreshing_record_ = true;
      etcd_->refresh([this](bool ok) {
        refreshing_record_ = false;
        if (!ok || !store_cut_ || !etcd_->serving()) return;  // the next round tries again
        store_cut_ = false;
        add_event("store_back", "", "the lease is renewed again and the record read afresh: routing as it says");
        route_by_record();
      });
    }
    return step_ == Step::kIdle;
  }
  // A sequence under way runs on: its next step in the store fails if leadership was lost.
  if (store_->leader() || step_ != Step::kIdle) return false;
  route_by_record();
  return true;
}

void Keeper::unfence_record() {
  PrimaryRecord rec = *record_;
  rec.epoch = std::max(table_.epoch(), highest_record_epoch()) + 1;
  rec.how = "unfenced";
  unfencing_ = true;
  store_->publish(stored_, rec, [this, rec](PublishOutcome o) {
    unfencing_ = false;
    if (!o.recorded) {
      add_event("unfence_failed", rec.node, o.why);
      return;
    }
    record_ = rec;
    stored_ = o.stored;
    table_.raise_floor(rec.epoch - 1);
    WriterChoice c = choose_writer(rec, observations());
    add_event("unfenced", rec.node, "the failover that fenced it was never finished and it still serves: it takes writes again (epoch " +
                                        std::to_string(rec.epoch) + ")");
    writer_ = c.writer;
    publish(c.writer, c.why, false);
  });
}

void Keeper::route_by_record() {
  if (!record_) return;
  WriterChoice c = choose_writer(*record_, observations());
  // A follower waits for the leader's failover: no writer, but one is expected.
  const bool hold = !c.writer;
  const routing::Snapshot& now = *table_.current();
  if (c.writer == writer_ && now.writer == c.writer && now.why == c.why && now.hold == hold) return;
  writer_ = c.writer;
  const std::uint64_t epoch = record_->epoch;
  publish(c.writer, c.why, hold, [this, epoch](std::uint64_t) { store_->applied(epoch); });
}

void Keeper::on_record_changed(const StoredRecord& r) {
  // The leader's own record, delivered by the watch before its transaction's answer: the
  // sequence under way takes it from that answer.
  if (store_->leader() && step_ != Step::kIdle) return;
  record_ = r.record;
  stored_ = r;
  table_.raise_floor(r.record.epoch - 1);
  if (r.record.how != "fenced") system_identifier_ = r.record.system_identifier;
  add_event("record", r.record.node, "the leader recorded " + r.record.serialize());
  if (started_ && !store_cut_ && !store_->leader()) route_by_record();
}

void Keeper::decide_writer_at_start() {
  started_ = true;
  // The store's newest record decides (alone: the state file and every node's
  // pgkeel.primary_history, replicated with the data), and no epoch any of them holds is handed
  // out again.
  std::vector<FoundRecord> in_cluster;
  for (const auto& n : nodes_) {
    if (n->retired || !n->facts || !n->facts->record) continue;
    const RecordFields& f = *n->facts->record;
    in_cluster.push_back({PrimaryRecord{f.epoch, f.node, f.system_identifier, f.timeline, f.lsn, {}}, "cluster record on " + n->target.name});
  }
  store_->load(in_cluster, [this](std::optional<StoredRecord> found) { start_with_record(std::move(found)); });
}

void Keeper::start_with_record(std::optional<StoredRecord> found) {
  if (found) {
    record_ = found->record;
    stored_ = found;
  }
  table_.raise_floor(highest_record_epoch());
  if (record_) {
    finish_start(found ? found->source : std::string("memory"));
    return;
  }
  // First start ever: the configured primary bootstraps the record, if it is one.
  Node* p = node_by_name(config_.initial_primary);
  if (p == nullptr && !nodes_.empty()) p = nodes_[0].get();
  if (p == nullptr || p->detector.health() != NodeHealth::kUp || !p->facts || p->facts->in_recovery) {
    started_ = false;  // try again on the next probe round
    const std::string why =
        "no primary record yet, and the initial primary " + (p ? p->target.name : std::string("?")) +
        (p == nullptr ? " is not configured"
         : p->facts && p->detector.health() == NodeHealth::kUp ? " is in recovery"
                                                               : " is not available (" + p->last_error + ")");
    if (why != table_.current()->why) publish(std::nullopt, why, true);
    if (SteadyClock::now() - last_refusal_log_ > std::chrono::seconds(5)) {
      last_refusal_log_ = SteadyClock::now();
      add_event("bootstrap_waiting", p ? p->target.name : "", why);
    }
    return;
  }
  PrimaryRecord rec;
  rec.epoch = std::max(table_.epoch(), highest_record_epoch()) + 1;
  rec.node = p->target.name;
  rec.system_identifier = p->facts->system_identifier;
  rec.timeline = p->facts->timeline;
  rec.how = "bootstrap";
  store_->publish(std::nullopt, rec, [this, rec](PublishOutcome o) {
    if (!o.recorded) {
      // Another instance bootstrapped first: its record is read on the next probe round.
      started_ = false;
      add_event("bootstrap_lost", rec.node, o.why);
      return;
    }
    record_ = rec;
    stored_ = o.stored;
    table_.raise_floor(rec.epoch - 1);
    finish_start("bootstrap from initial_primary");
  });
}

void Keeper::finish_start(const std::string& source) {
  system_identifier_ = record_->system_identifier;
  WriterChoice c = choose_writer(*record_, observations());
  if (!c.writer) {
    if (Node* rec = node_by_name(record_->node); rec != nullptr && !rec->last_error.empty()) c.why += " (" + rec->last_error + ")";
  }
  add_event("startup", record_->node, "primary record (" + source + "): " + record_->serialize() + "; " + c.why);
  writer_ = c.writer;
  publish(c.writer, c.why, false);
}

void Keeper::step_record() {
  step_ = Step::kRecord;
  Node& c = *nodes_[*candidate_];
  PrimaryRecord rec;
  // Above every epoch in use or recorded anywhere: epochs never go backwards, across restarts too.
  rec.epoch = std::max(table_.epoch(), highest_record_epoch()) + 1;
  rec.node = c.target.name;
  rec.system_identifier = c.facts->system_identifier;
  rec.timeline = c.facts->timeline;
  rec.lsn = c.facts->current_lsn;
  rec.how = sequence_ == Sequence::kSwitchover ? "switchover" : "failover";
  // Its first commit must not wait for a standby that does not stream from it yet: it starts
  // asynchronous; manage_sync() makes it synchronous once a standby follows it.
  admin(c, "ALTER SYSTEM SET synchronous_standby_names = ''", [](const PgResult&) {});
  admin(c, "SELECT pg_reload_conf()", [](const PgResult&) {});
  const std::uint64_t seq = sequence_id_;
  store_->publish(stored_, rec, [this, seq, rec](PublishOutcome o) {
    if (o.recorded) {
      record_ = rec;
      stored_ = o.stored;
      table_.raise_floor(rec.epoch - 1);  // the publication naming it carries this epoch
    }
    if (seq != sequence_id_ || step_ != Step::kRecord) return;
    if (!o.recorded) {
      abort_failover("the primary record could not be published (" + std::string(store_->kind()) + "): " + o.why);
      return;
    }
    step_publish();
  });
}

// The barrier for the other instances: the record, fenced, at an epoch above every one in use.
void Keeper::fence_peers(std::function<void(bool, const std::string&)> done) {
  if (!record_) {
    done(true, {});
    return;
  }
  PrimaryRecord fenced = *record_;
  fenced.epoch = std::max(table_.epoch(), highest_record_epoch()) + 1;
  fenced.how = "fenced";
  store_->fence(stored_, fenced, [this, done = std::move(done)](bool ok, const std::string& why, std::optional<StoredRecord> stored) {
    if (stored) {
      stored_ = stored;  // what the promotion's compare-and-swap compares
      table_.raise_floor(stored->record.epoch);
    }
    done(ok, why);
  });
}

// A record that could not be written is an event, and stays on /health until one is written.
void Keeper::note_record_error(const std::string& node, const std::string& error) {
  record_error_ = node.empty() ? error : node + ": " + error;
  add_event("record_failed", node, error);
}

std::uint64_t Keeper::highest_record_epoch() const {
  std::uint64_t e = record_ ? record_->epoch : 0;
  if (stored_) e = std::max(e, stored_->record.epoch);  // a fenced record (with [store]) counts too
  for (const auto& n : nodes_) {
    if (n->facts && n->facts->record) e = std::max(e, n->facts->record->epoch);
  }
  return e;
}

}  // namespace pgkeel::health
