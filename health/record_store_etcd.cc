#include "health/record_store_etcd.h"

#include <algorithm>
#include <charconv>

namespace pgkeel::health {

using namespace std::chrono_literals;

namespace {

timeval to_timeval(std::chrono::milliseconds d) {
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(d.count() / 1000);
  tv.tv_usec = static_cast<suseconds_t>((d.count() % 1000) * 1000);
  return tv;
}

}  // namespace

std::string PeerReport::serialize() const {
  return "epoch=" + std::to_string(applied_epoch) + " address=" + address;
}

std::optional<PeerReport> PeerReport::parse(std::string_view name, std::string_view value) {
  PeerReport p;
  p.name = std::string(name);
  bool have_epoch = false;
  std::size_t pos = 0;
  while (pos < value.size()) {
    while (pos < value.size() && value[pos] == ' ') ++pos;
    const std::size_t end = std::min(value.find(' ', pos), value.size());
    const std::string_view kv = value.substr(pos, end - pos);
    pos = end;
    const std::size_t eq = kv.find('=');
    if (eq == std::string_view::npos) continue;
    const std::string_view k = kv.substr(0, eq);
    const std::string_view v = kv.substr(eq + 1);
    if (k == "epoch") {
      const auto [e, ec] = std::from_chars(v.data(), v.data() + v.size(), p.applied_epoch);
      have_epoch = ec == std::errc() && e == v.data() + v.size();
    } else if (k == "address") {
      p.address = std::string(v);
    }
  }
  if (!have_epoch || p.name.empty()) return std::nullopt;
  return p;
}

bool lease_still_held(std::chrono::steady_clock::time_point renewal_sent, std::chrono::steady_clock::time_point now,
                      std::chrono::milliseconds lease_ttl, std::chrono::milliseconds request_timeout) {
  if (renewal_sent == std::chrono::steady_clock::time_point{}) return false;
  return now < renewal_sent + lease_ttl - 2 * request_timeout;
}

EtcdRecordStore::EtcdRecordStore(event_base* base, store::Client& client, EtcdStoreOptions options,
                                 std::unique_ptr<RecordStore> caches, RecordStoreHooks hooks, EtcdStoreHooks etcd_hooks)
    : base_(base), client_(client), options_(std::move(options)), keys_(options_.prefix), caches_(std::move(caches)),
      hooks_(std::move(hooks)), etcd_hooks_(std::move(etcd_hooks)) {}

EtcdRecordStore::~EtcdRecordStore() { *alive_ = false; }

void EtcdRecordStore::after(std::chrono::milliseconds delay, std::function<void()> fn) {
  auto* heap = new std::function<void()>([alive = std::weak_ptr<bool>(alive_), fn = std::move(fn)]() {
    if (auto a = alive.lock(); a && *a) fn();
  });
  const timeval tv = to_timeval(delay);
  if (event_base_once(
          base_, -1, EV_TIMEOUT,
          [](evutil_socket_t, short, void* arg) {
            std::unique_ptr<std::function<void()>> f(static_cast<std::function<void()>*>(arg));
            (*f)();
          },
          heap, &tv) != 0) {
    delete heap;
  }
}

void EtcdRecordStore::note_error(const std::string& why) {
  if (why != store_error_ && hooks_.problem) hooks_.problem("store_error", "", why);
  store_error_ = why;
}

bool EtcdRecordStore::serving() const {
  return lease_ != 0 && lease_still_held(renewal_sent_, Clock::now(), options_.lease_ttl, options_.request_timeout);
}

void EtcdRecordStore::start() {
  tick_.reset(event_new(base_, -1, EV_PERSIST, &EtcdRecordStore::on_tick, this));
  // Three renewals fit in the time a renewal is trusted (lease_ttl less two request timeouts),
  // so one or two failed ones cost nothing.
  const auto trusted = options_.lease_ttl - 2 * options_.request_timeout;
  const timeval tv = to_timeval(std::max(std::chrono::milliseconds(100), trusted / 3));
  event_add(tick_.get(), &tv);
  tick();
}

void EtcdRecordStore::on_tick(evutil_socket_t, short, void* arg) { static_cast<EtcdRecordStore*>(arg)->tick(); }

// The moment serving() turns false unless a renewal succeeds first: the keeper hears it then,
// not at its next probe round.
void EtcdRecordStore::arm_stale_timer() {
  if (!stale_timer_) {
    stale_timer_.reset(evtimer_new(
        base_,
        [](evutil_socket_t, short, void* arg) {
          auto* self = static_cast<EtcdRecordStore*>(arg);
          if (!self->serving() && self->etcd_hooks_.stale) self->etcd_hooks_.stale();
        },
        this));
  }
  const auto trusted = options_.lease_ttl - 2 * options_.request_timeout;
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(renewal_sent_ + trusted - Clock::now());
  const timeval tv = to_timeval(std::max(std::chrono::milliseconds(0), left) + std::chrono::milliseconds(1));
  evtimer_add(stale_timer_.get(), &tv);
}

void EtcdRecordStore::tick() {
  if (lease_ == 0) {
    grant();
    return;
  }
  keepalive();
}

void EtcdRecordStore::grant() {
  if (granting_) return;
  granting_ = true;
  const Clock::time_point sent = Clock::now();
  const auto ttl_s = std::chrono::duration_cast<std::chrono::seconds>(options_.lease_ttl).count();
  client_.lease_grant(ttl_s, [this, sent, alive = std::weak_ptr<bool>(alive_)](store::Result<store::LeaseGrantResponse> r) {
    if (alive.expired()) return;
    granting_ = false;
    if (!r.ok() || !r.value.error.empty() || r.value.id == 0) {
      note_error("lease grant: " + (r.ok() ? r.value.error : r.error));
      return;
    }
    store_error_.clear();
    lease_ = r.value.id;
    renewal_sent_ = sent;
    arm_stale_timer();
    registered_ = false;
    leader_ = false;
    register_instance();
    campaign();
  });
}

void EtcdRecordStore::keepalive() {
  const Clock::time_point sent = Clock::now();
  const std::int64_t lease = lease_;
  client_.lease_keepalive(lease, [this, sent, lease, alive = std::weak_ptr<bool>(alive_)](store::Result<store::LeaseKeepAliveResponse> r) {
    if (alive.expired() || lease != lease_) return;
    if (!r.ok()) {
      note_error("lease keepalive: " + r.error);
      return;  // serving() turns false by itself when renewals keep failing
    }
    if (r.value.ttl <= 0) {
      // Expired in etcd (this instance was cut off too long): its keys are gone, leadership too.
      note_error("lease " + std::to_string(lease) + " expired in etcd");
      lease_ = 0;
      leader_ = false;
      registered_ = false;
      grant();
      return;
    }
    store_error_.clear();
    renewal_sent_ = sent;
    arm_stale_timer();
    if (!registered_) register_instance();
    campaign();
    read_peers();
  });
}

void EtcdRecordStore::register_instance() {
  PeerReport me;
  me.name = options_.name;
  me.address = options_.address;
  me.applied_epoch = applied_;
  store::TxnRequest t;
  t.success.push_back(store::Op::put(keys_.instance(options_.name), me.serialize(), lease_));
  const std::uint64_t epoch = applied_;
  client_.txn(t, [this, epoch, alive = std::weak_ptr<bool>(alive_)](store::Result<store::TxnResponse> r) {
    if (alive.expired()) return;
    if (!r.ok()) {
      registered_ = false;
      note_error("instance key: " + r.error);
      return;
    }
    registered_ = epoch == applied_;  // a newer epoch is reported by the next tick or applied()
  });
}

void EtcdRecordStore::campaign() {
  if (stepping_down_) return;
  // The leader key exists only on a live lease: created if absent, else read to learn who leads.
  store::TxnRequest t;
  t.compare.push_back({keys_.leader, store::Compare::Target::kCreate, store::Compare::Result::kEqual, 0, {}});
  t.success.push_back(store::Op::put(keys_.leader, options_.name, lease_));
  t.failure.push_back(store::Op::range(keys_.leader));
  const std::int64_t lease = lease_;
  client_.txn(t, [this, lease, alive = std::weak_ptr<bool>(alive_)](store::Result<store::TxnResponse> r) {
    if (alive.expired() || lease != lease_) return;
    if (!r.ok()) {
      note_error("leader key: " + r.error);
      return;
    }
    const bool was = leader_;
    if (r.value.succeeded) {
      leader_ = true;
      leader_name_ = options_.name;
    } else if (!r.value.responses.empty() && !r.value.responses[0].kvs.empty()) {
      const store::KeyValue& kv = r.value.responses[0].kvs[0];
      leader_ = kv.value == options_.name && kv.lease == lease_;
      leader_name_ = kv.value;
    } else {
      leader_ = false;  // gone between the compare and the read: the next tick campaigns again
      leader_name_.clear();
    }
    if (was != leader_ && etcd_hooks_.leadership) etcd_hooks_.leadership(leader_);
  });
}

void EtcdRecordStore::read_peers() {
  client_.range(store::RangeRequest{keys_.instances, store::prefix_end(keys_.instances), 0, 0, false},
                [this, alive = std::weak_ptr<bool>(alive_)](store::Result<store::RangeResponse> r) {
                  if (alive.expired() || !r.ok()) return;
                  std::vector<PeerReport> peers;
                  for (const store::KeyValue& kv : r.value.kvs) {
                    std::optional<PeerReport> p = PeerReport::parse(std::string_view(kv.key).substr(keys_.instances.size()), kv.value);
                    if (!p) continue;
                    p->lease = kv.lease;
                    p->leader = p->name == leader_name_;
                    peers.push_back(std::move(*p));
                  }
                  peers_ = std::move(peers);
                });
}

void EtcdRecordStore::step_down() {
  stepping_down_ = true;
  if (!leader_ || lease_ == 0) return;
  leader_ = false;
  if (etcd_hooks_.leadership) etcd_hooks_.leadership(false);
  store::TxnRequest t;
  t.compare.push_back({keys_.leader, store::Compare::Target::kValue, store::Compare::Result::kEqual, 0, options_.name});
  t.compare.push_back({keys_.leader, store::Compare::Target::kLease, store::Compare::Result::kEqual, lease_, {}});
  t.success.push_back(store::Op::del(keys_.leader));
  client_.txn(t, [](const store::Result<store::TxnResponse>&) {});
}

void EtcdRecordStore::resign(std::function<void()> done) {
  if (lease_ == 0) {
    done();
    return;
  }
  const std::int64_t lease = lease_;
  lease_ = 0;
  leader_ = false;
  tick_.reset();
  // Revoking the lease deletes the leader key and the instance key with it.
  client_.lease_revoke(lease, [done = std::move(done)](const store::Reply&) { done(); });
}

void EtcdRecordStore::load(const std::vector<FoundRecord>& in_cluster, LoadDone done) {
  client_.range(store::RangeRequest{keys_.record, {}, 0, 0, false},
                [this, in_cluster, done = std::move(done), alive = std::weak_ptr<bool>(alive_)](store::Result<store::RangeResponse> r) mutable {
                  if (alive.expired()) return;
                  if (!r.ok()) {
                    // Never "no record" for "no answer": that would bootstrap a second primary.
                    note_error("reading the record: " + r.error);
                    after(options_.request_timeout, [this, in_cluster, done = std::move(done)]() mutable {
                      load(in_cluster, std::move(done));
                    });
                    return;
                  }
                  store_error_.clear();
                  if (!watch_) watch_record(r.value.header.revision + 1);
                  if (!r.value.kvs.empty()) {
                    const store::KeyValue& kv = r.value.kvs[0];
                    std::optional<PrimaryRecord> rec = PrimaryRecord::parse(kv.value);
                    if (!rec) {
                      note_error(keys_.record + " does not hold a primary record");
                      after(options_.request_timeout, [this, in_cluster, done = std::move(done)]() mutable {
                        load(in_cluster, std::move(done));
                      });
                      return;
                    }
                    record_revision_ = kv.mod_revision;
                    done(StoredRecord{*rec, "etcd", static_cast<std::uint64_t>(kv.mod_revision)});
                    return;
                  }
                  // Nothing in etcd yet: the newest local copy (a pgkeel that ran alone before)
                  // carries on, and is created in etcd by its first publish (revision 0).
                  if (!caches_) {
                    done(std::nullopt);
                    return;
                  }
                  caches_->load(in_cluster, [done = std::move(done)](std::optional<StoredRecord> local) {
                    if (local) {
                      local->source += " (not yet in etcd)";
                      local->revision = 0;
                    }
                    done(std::move(local));
                  });
                });
}

void EtcdRecordStore::refresh(std::function<void(bool ok)> done) {
  client_.range(store::RangeRequest{keys_.record, {}, 0, 0, false},
                [this, done = std::move(done), alive = std::weak_ptr<bool>(alive_)](store::Result<store::RangeResponse> r) {
                  if (alive.expired()) return;
                  if (!r.ok()) {
                    note_error("reading the record: " + r.error);
                    done(false);
                    return;
                  }
                  if (!r.value.kvs.empty()) on_record_event(r.value.kvs[0], false);
                  done(true);
                });
}

void EtcdRecordStore::publish(const std::optional<StoredRecord>& read, const PrimaryRecord& next, PublishDone done) {
  swap(read, next, true, std::move(done));
}

void EtcdRecordStore::fence(const std::optional<StoredRecord>& read, const PrimaryRecord& fenced, FenceDone done) {
  // Never in the caches: alone, a pgkeel reads them as the primary to route to.
  swap(read, fenced, false, [this, epoch = fenced.epoch, done = std::move(done)](PublishOutcome o) {
    if (!o.recorded) {
      done(false, "the fenced record could not be published: " + o.why, std::nullopt);
      return;
    }
    await_peers(epoch, [stored = o.stored, done](bool ok, const std::string& why) { done(ok, why, stored); });
  });
}

void EtcdRecordStore::swap(const std::optional<StoredRecord>& read, const PrimaryRecord& next, bool to_caches,
                           PublishDone done) {
  if (!leader()) {
    done(PublishOutcome{false, "this instance does not hold the leader lease" + (leader_name_.empty() ? std::string() : " (" + leader_name_ + " does)"), std::nullopt});
    return;
  }
  store::TxnRequest t;
  if (read && read->revision != 0) {
    t.compare.push_back({keys_.record, store::Compare::Target::kMod, store::Compare::Result::kEqual,
                         static_cast<std::int64_t>(read->revision), {}});
  } else {
    t.compare.push_back({keys_.record, store::Compare::Target::kCreate, store::Compare::Result::kEqual, 0, {}});
  }
  // Only while this instance holds the leader key on its own live lease.
  t.compare.push_back({keys_.leader, store::Compare::Target::kValue, store::Compare::Result::kEqual, 0, options_.name});
  t.compare.push_back({keys_.leader, store::Compare::Target::kLease, store::Compare::Result::kEqual, lease_, {}});
  const std::string value = next.serialize();
  t.success.push_back(store::Op::put(keys_.record, value));
  t.failure.push_back(store::Op::range(keys_.record));
  t.failure.push_back(store::Op::range(keys_.leader));
  auto finish = [this, next, done, to_caches](std::int64_t revision) {
    record_revision_ = std::max(record_revision_, revision);
    StoredRecord stored{next, "etcd", static_cast<std::uint64_t>(revision)};
    if (hooks_.written) hooks_.written();
    if (!caches_ || !to_caches) {
      done(PublishOutcome{true, {}, stored});
      return;
    }
    // The caches follow etcd; their failures are events, never a reason to undo.
    caches_->publish(std::nullopt, next, [stored, done](const PublishOutcome&) { done(PublishOutcome{true, {}, stored}); });
  };
  client_.txn(t, [this, value, finish, done, alive = std::weak_ptr<bool>(alive_)](store::Result<store::TxnResponse> r) {
    if (alive.expired()) return;
    if (r.ok() && r.value.succeeded) {
      finish(r.value.header.revision);
      return;
    }
    if (r.ok()) {
      std::string why = "lost the compare-and-swap";
      if (r.value.responses.size() == 2) {
        const auto& rec = r.value.responses[0].kvs;
        const auto& lead = r.value.responses[1].kvs;
        if (lead.empty() || lead[0].value != options_.name || lead[0].lease != lease_) {
          why = "this instance no longer holds the leader key" + (lead.empty() ? std::string() : " (" + lead[0].value + " does)");
          leader_ = false;
        } else if (!rec.empty()) {
          why = "the record changed since it was read: now " + rec[0].value;
        }
      }
      done(PublishOutcome{false, why, std::nullopt});
      return;
    }
    // No answer: the transaction may or may not have been applied. What etcd holds decides.
    const std::string error = r.error;
    client_.range(store::RangeRequest{keys_.record, {}, 0, 0, false},
                  [value, finish, done, error, alive](store::Result<store::RangeResponse> back) {
                    if (alive.expired()) return;
                    if (back.ok() && !back.value.kvs.empty() && back.value.kvs[0].value == value) {
                      finish(back.value.kvs[0].mod_revision);
                      return;
                    }
                    done(PublishOutcome{false, "etcd did not answer: " + error, std::nullopt});
                  });
  });
}

void EtcdRecordStore::applied(std::uint64_t epoch) {
  if (epoch <= applied_) return;
  applied_ = epoch;
  if (lease_ != 0) register_instance();
}

void EtcdRecordStore::await_peers(std::uint64_t epoch, PeersDone done) { check_peers(epoch, std::move(done)); }

void EtcdRecordStore::check_peers(std::uint64_t epoch, PeersDone done) {
  if (!leader()) {
    done(false, "this instance lost the leader lease while waiting for the other instances");
    return;
  }
  client_.range(store::RangeRequest{keys_.instances, store::prefix_end(keys_.instances), 0, 0, false},
                [this, epoch, done = std::move(done), alive = std::weak_ptr<bool>(alive_)](store::Result<store::RangeResponse> r) mutable {
                  if (alive.expired()) return;
                  std::string waiting;
                  if (!r.ok()) {
                    waiting = "(etcd: " + r.error + ")";
                  } else {
                    // An instance whose lease expired has no key any more: it cannot serve.
                    for (const store::KeyValue& kv : r.value.kvs) {
                      const std::string name = kv.key.substr(keys_.instances.size());
                      if (name == options_.name) continue;
                      std::optional<PeerReport> p = PeerReport::parse(name, kv.value);
                      if (!p || p->applied_epoch < epoch) waiting += (waiting.empty() ? "" : ", ") + name;
                    }
                  }
                  if (waiting.empty()) {
                    done(true, {});
                    return;
                  }
                  after(100ms, [this, epoch, done = std::move(done)]() mutable { check_peers(epoch, std::move(done)); });
                });
}

void EtcdRecordStore::watch_record(std::int64_t from_revision) {
  watch_ = client_.watch(
      store::WatchRequest{keys_.record, {}, from_revision, false, false},
      [this](const store::WatchResponse& r) {
        for (const store::Event& e : r.events) on_record_event(e.kv, e.deleted);
      },
      [this](const std::string& why) {
        note_error("record watch: " + why);
        after(options_.request_timeout, [this]() {
          watch_.reset();
          rewatch();
        });
      });
}

// After a watch ended (its member went away, its start revision was compacted, etcd was out of
// quorum): the record is read first, so nothing between is missed whatever etcd kept, then the
// watch starts again from the revision after that read. Retried until etcd answers.
void EtcdRecordStore::rewatch() {
  client_.range(store::RangeRequest{keys_.record, {}, 0, 0, false},
                [this, alive = std::weak_ptr<bool>(alive_)](store::Result<store::RangeResponse> r) {
                  if (alive.expired()) return;
                  if (!r.ok()) {
                    note_error("reading the record: " + r.error);
                    after(options_.request_timeout, [this]() { rewatch(); });
                    return;
                  }
                  if (!r.value.kvs.empty()) on_record_event(r.value.kvs[0], false);
                  watch_record(r.value.header.revision + 1);
                });
}

void EtcdRecordStore::on_record_event(const store::KeyValue& kv, bool deleted) {
  if (kv.mod_revision <= record_revision_) return;  // this instance's own publish, seen again
  record_revision_ = kv.mod_revision;
  if (deleted) {
    note_error(keys_.record + " was deleted in etcd");
    return;
  }
  std::optional<PrimaryRecord> rec = PrimaryRecord::parse(kv.value);
  if (!rec) {
    note_error(keys_.record + " does not hold a primary record");
    return;
  }
  if (etcd_hooks_.changed) etcd_hooks_.changed(StoredRecord{*rec, "etcd", static_cast<std::uint64_t>(kv.mod_revision)});
}

}  // namespace pgkeel::health
