// health/record_store_etcd.h — the primary record in etcd ([store]): one key changed only by a
// transaction that compares the revision read and that this instance still holds the leader key
// on its live lease; each instance's key, on the same lease, with the epoch it applied. The lease
// is kept alive here, and whether this instance may still serve writes is measured from its last
// renewal. The state file and pgkeel.primary_history stay as caches, written after etcd.
#pragma once

#include <event2/event.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "health/record_store.h"
#include "store/etcd_client.h"

namespace pgkeel::health {

struct EtcdStoreOptions {
  std::string prefix;   // "/pgkeel/erp"
  std::string name;     // this instance
  std::string address;  // where peers and clients reach it ("10.0.0.21:6432")
  std::chrono::milliseconds lease_ttl{10000};
  std::chrono::milliseconds request_timeout{1000};
};

// What only a shared store tells: the record changed by another instance (followers adopt it),
// and this instance gained or lost the leader key.
struct EtcdStoreHooks {
  std::function<void(const StoredRecord&)> changed;
  std::function<void(bool leader)> leadership;
  // The lease was not renewed in time: serving() just turned false (routing must stop now).
  std::function<void()> stale;
};

// What an instance reports under <prefix>/instances/<name>.
struct PeerReport {
  std::string name;
  std::string address;
  std::uint64_t applied_epoch = 0;
  bool leader = false;       // filled from <prefix>/leader, not from the report itself
  std::int64_t lease = 0;
  std::string serialize() const;  // "epoch=7 address=10.0.0.21:6432"
  static std::optional<PeerReport> parse(std::string_view name, std::string_view value);
};

// The keys of one cluster under its prefix.
struct StoreKeys {
  std::string record, leader, instances;  // instances: a prefix ending in '/'
  explicit StoreKeys(const std::string& prefix)
      : record(prefix + "/record"), leader(prefix + "/leader"), instances(prefix + "/instances/") {}
  std::string instance(const std::string& name) const { return instances + name; }
};

// Whether an instance whose last successful renewal was *sent* at `renewal_sent` may still act as
// holding its lease at `now`: until lease_ttl minus two request timeouts after it, so it stops
// before etcd could let the lease expire (etcd counts from when it received the renewal, later).
bool lease_still_held(std::chrono::steady_clock::time_point renewal_sent, std::chrono::steady_clock::time_point now,
                      std::chrono::milliseconds lease_ttl, std::chrono::milliseconds request_timeout);

class EtcdRecordStore final : public RecordStore {
 public:
  using Clock = std::chrono::steady_clock;
  // `caches`: the local store written after etcd (may be null). `client` must outlive this.
  EtcdRecordStore(event_base* base, store::Client& client, EtcdStoreOptions options,
                  std::unique_ptr<RecordStore> caches, RecordStoreHooks hooks, EtcdStoreHooks etcd_hooks = {});
  ~EtcdRecordStore() override;
  EtcdRecordStore(const EtcdRecordStore&) = delete;
  EtcdRecordStore& operator=(const EtcdRecordStore&) = delete;

  // Grants the lease, registers this instance, campaigns for the leader key, and keeps all of it
  // alive: three renewals in the time one is trusted (lease_ttl less two request timeouts).
  void start();
  // A clean stop begins: the leader key is given back now, so another instance decides at once,
  // and this one campaigns no more. Its lease (and its instance key) stay until resign(): while
  // its connections drain, a leader still waits for it.
  void step_down();
  // After step_down() without resign(): campaign for the leader key again (a takeover that failed).
  void campaign_again() { stepping_down_ = false; }
  // The stop is done (no connection left): the lease is revoked, and the instance key with it,
  // so no leader waits for the TTL.
  void resign(std::function<void()> done);

  std::string_view kind() const override { return "etcd"; }
  void load(const std::vector<FoundRecord>& in_cluster, LoadDone done) override;
  void publish(const std::optional<StoredRecord>& read, const PrimaryRecord& next, PublishDone done) override;
  bool leader() const override { return leader_ && serving(); }
  void applied(std::uint64_t record_epoch) override;
  void fence(const std::optional<StoredRecord>& read, const PrimaryRecord& fenced, FenceDone done) override;
  void routing_epoch(std::uint64_t epoch) override {
    if (caches_) caches_->routing_epoch(epoch);
  }
  // `done(true)` once every other live instance has reported `record_epoch` applied or its lease
  // has expired; `done(false)` when this instance loses the leader lease first.
  using PeersDone = std::function<void(bool ok, const std::string& why)>;
  void await_peers(std::uint64_t record_epoch, PeersDone done);

  // A fresh read of the record: a change the watch has not delivered yet (it may have been cut
  // along with the lease) goes through `changed` first. done(true) once this instance knows the
  // record as etcd holds it now; done(false) when etcd did not answer.
  void refresh(std::function<void(bool ok)> done);

  // The lease was renewed recently enough that it cannot have expired in etcd.
  bool serving() const;
  std::int64_t lease() const { return lease_; }
  Clock::time_point last_renewal() const { return renewal_sent_; }
  const std::string& name() const { return options_.name; }
  const std::string& address() const { return options_.address; }
  const std::string& leader_name() const { return leader_name_; }
  std::uint64_t applied_epoch() const { return applied_; }
  const std::string& store_error() const { return store_error_; }
  // As last read (every tick): every instance with a live lease, this one included.
  const std::vector<PeerReport>& peers() const { return peers_; }

 private:
  static void on_tick(evutil_socket_t, short, void* arg);
  void tick();
  void grant();
  void keepalive();
  void register_instance();
  void campaign();
  void read_peers();
  void watch_record(std::int64_t from_revision);
  void rewatch();
  void arm_stale_timer();
  void on_record_event(const store::KeyValue& kv, bool deleted);
  void check_peers(std::uint64_t epoch, PeersDone done);
  // The compare-and-swap under publish() and fence(): `next` in place of `read`, only while this
  // instance holds the leader key on its lease. The caches follow only when `to_caches`.
  void swap(const std::optional<StoredRecord>& read, const PrimaryRecord& next, bool to_caches, PublishDone done);
  void after(std::chrono::milliseconds delay, std::function<void()> fn);
  void note_error(const std::string& why);

  event_base* base_;
  store::Client& client_;
  EtcdStoreOptions options_;
  StoreKeys keys_;
  std::unique_ptr<RecordStore> caches_;
  RecordStoreHooks hooks_;
  EtcdStoreHooks etcd_hooks_;
  store::EventHandle tick_;
  store::EventHandle stale_timer_;
  std::unique_ptr<store::Watch> watch_;
  std::int64_t lease_ = 0;
  bool granting_ = false;
  bool stepping_down_ = false;
  bool registered_ = false;
  bool leader_ = false;
  std::string leader_name_;
  Clock::time_point renewal_sent_{};  // of the last renewal etcd confirmed
  std::uint64_t applied_ = 0;
  std::int64_t record_revision_ = 0;  // the newest record revision seen (load, publish, watch)
  std::string store_error_;
  std::vector<PeerReport> peers_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace pgkeel::health
