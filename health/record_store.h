// health/record_store.h — where the primary record lives and who may change it, behind one small
// interface so the failover sequence reads the same with either implementation: local (alone:
// the state file plus pgkeel.primary_history on the nodes, as pgkeel always kept it) and, with
// [store], etcd (a key changed only by compare-and-swap, under a leader lease; issue 15).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "health/failover.h"

namespace pgkeel::health {

// A record as read from the store, with what a compare-and-swap compares.
struct StoredRecord {
  PrimaryRecord record;
  std::string source;          // "state file", "cluster record on db2", "etcd"
  std::uint64_t revision = 0;  // the store's version of it (etcd: mod_revision); 0 locally
};

struct PublishOutcome {
  // Recorded where it counts: routing may now name this primary. False: another decided first
  // (a lost compare-and-swap) or the store cannot be written; `why` says which.
  bool recorded = false;
  std::string why;
  std::optional<StoredRecord> stored;  // what the store now holds (the new record when recorded)
};

// What the store tells the keeper as it goes. Each runs on the keeper's loop.
struct RecordStoreHooks {
  // A copy of the record could not be written or read (kind "record_failed" / "record_unreadable").
  std::function<void(const std::string& kind, const std::string& node, const std::string& text)> problem;
  // The authoritative copy was written: an earlier record_failed no longer holds.
  std::function<void()> written;
};

class RecordStore {
 public:
  virtual ~RecordStore() = default;

  // "local" or "etcd", for events and SHOW surfaces.
  virtual std::string_view kind() const = 0;

  // The newest record, or nullopt when none exists yet (the very first start). `in_cluster`:
  // what the probes read from each node's pgkeel.primary_history. `done` may run inside load().
  using LoadDone = std::function<void(std::optional<StoredRecord>)>;
  virtual void load(const std::vector<FoundRecord>& in_cluster, LoadDone done) = 0;

  // Records `next` as the primary, in place of `read` (what load() or the last publish gave;
  // nullopt: none yet). The local store always records (its copies are best effort, each
  // failure a problem()); etcd records only if the record is still `read`.
  using PublishDone = std::function<void(PublishOutcome)>;
  virtual void publish(const std::optional<StoredRecord>& read, const PrimaryRecord& next, PublishDone done) = 0;

  // Whether this instance may decide (detection verdicts, failover, switchover, synchronous
  // replication). Alone: always.
  virtual bool leader() const = 0;

  // This instance's workers applied the record of `record_epoch` (closed their connections to
  // nodes it took the right to serve from). Epochs here are record epochs, shared by every
  // instance through the record, never an instance's own routing epochs.
  virtual void applied(std::uint64_t record_epoch) = 0;

  // The barrier before a promotion, once this instance's own workers stopped writing to the old
  // primary: no instance may route writes to it any more. `fenced` is the record `read` with a
  // higher epoch and how = "fenced". Alone there is no other instance: `done(true)` at once,
  // inside the call, and nothing is written. With etcd, `fenced` is published by compare-and-swap
  // and `done` runs once every other live instance has applied it or its lease has expired;
  // `ok` false (lost the compare-and-swap or the leader lease) aborts the failover.
  using FenceDone = std::function<void(bool ok, const std::string& why, std::optional<StoredRecord> stored)>;
  virtual void fence(const std::optional<StoredRecord>& read, const PrimaryRecord& fenced, FenceDone done) = 0;

  // Routing is about to hand out `epoch`. The local store keeps the highest in its state file
  // beside the record, so that a restart starts above it (epoch_floor()); etcd passes it to its
  // caches. Without a state file the epochs between two records are kept nowhere.
  virtual void routing_epoch(std::uint64_t epoch) = 0;
};

// Runs `sql` on the named node through the keeper's admin session; `done(ok, error)`.
using ClusterSql = std::function<void(const std::string& node, const std::string& sql,
                                      std::function<void(bool ok, const std::string& error)> done)>;

// Alone: the state file (when configured) and pgkeel.primary_history on the new primary.
class LocalRecordStore final : public RecordStore {
 public:
  LocalRecordStore(std::string state_file, ClusterSql cluster_sql, RecordStoreHooks hooks)
      : state_file_(std::move(state_file)), cluster_sql_(std::move(cluster_sql)), hooks_(std::move(hooks)) {}

  std::string_view kind() const override { return "local"; }
  void load(const std::vector<FoundRecord>& in_cluster, LoadDone done) override;
  void publish(const std::optional<StoredRecord>& read, const PrimaryRecord& next, PublishDone done) override;
  bool leader() const override { return true; }
  void applied(std::uint64_t) override {}
  void fence(const std::optional<StoredRecord>&, const PrimaryRecord&, FenceDone done) override { done(true, {}, std::nullopt); }
  void routing_epoch(std::uint64_t epoch) override;

  // Every epoch the state file says was handed out (the record's and the highest routing epoch):
  // the routing table of the next start begins above it, before its first publication. 0 when
  // there is no state file or it holds neither.
  static std::uint64_t epoch_floor(const std::string& state_file);

  // The statement that appends `rec` to pgkeel.primary_history (creating it if need be). It
  // never waits for a synchronous standby.
  static std::string history_insert_sql(const PrimaryRecord& rec);

 private:
  // The state file: the record on its first line (absent before the first record), then
  // "routing_epoch=N" once routing has handed out an epoch above the record's.
  struct StateFile {
    std::optional<PrimaryRecord> record;
    std::uint64_t routing_epoch = 0;
    bool unreadable = false;  // it exists and holds no record
  };
  static StateFile parse_state_file(const std::string& path);
  bool write_state_file(std::string& error) const;
  std::optional<PrimaryRecord> read_state_file();  // says when it is unreadable
  void remember(const StateFile& f);

  std::string state_file_;  // empty: the record lives only in the cluster
  std::optional<PrimaryRecord> file_record_;  // what the state file holds (read once, then as written)
  bool file_read_ = false;
  bool file_unreadable_ = false;  // it held something other than a record: not overwritten by routing epochs
  std::uint64_t routing_epoch_ = 0;  // the highest routing epoch in the state file
  ClusterSql cluster_sql_;
  RecordStoreHooks hooks_;
};

}  // namespace pgkeel::health
