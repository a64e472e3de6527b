// The etcd record store (health/record_store_etcd.h) with two instances against a real 3-member
// etcd: one holds the leader lease and alone can publish the record, by compare-and-swap; the
// other follows it through the watch; a leader that dies is replaced once its lease expires; and
// the leader waits for every live instance to apply an epoch, or for its lease to expire.

#include <event2/event.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "health/record_store_etcd.h"
#include "proxy/handles.h"
#include "tests/integration/etcd_fixture.h"
#include "tests/integration/fixture.h"

using namespace pgkeel::test;
using namespace pgkeel::health;

namespace {

// One pgkeel instance's view of the store: its own client, lease and store object.
struct Instance {
  std::string name;
  std::unique_ptr<pgkeel::store::Client> client;
  std::unique_ptr<EtcdRecordStore> store;
  std::vector<StoredRecord> seen;  // records published by others, as the watch delivered them
  Instance(event_base* base, const EtcdCluster& etcd, std::string n, const std::string& prefix) : name(std::move(n)) {
    pgkeel::store::ClientOptions o;
    o.endpoints = etcd.endpoints();
    o.request_timeout = std::chrono::milliseconds(1000);
    client = std::make_unique<pgkeel::store::Client>(base, o);
    EtcdStoreOptions so;
    so.prefix = prefix;
    so.name = name;
    so.address = "127.0.0.1:6432";
    so.lease_ttl = std::chrono::seconds(3);
    so.request_timeout = std::chrono::milliseconds(1000);
    EtcdStoreHooks eh;
    eh.changed = [this](const StoredRecord& r) { seen.push_back(r); };
    store = std::make_unique<EtcdRecordStore>(base, *client, so, nullptr, RecordStoreHooks{}, eh);
    store->start();
  }
  ~Instance() {
    store.reset();  // as a kill -9: nothing given back, the lease runs out in etcd
    client.reset();
  }
};

PrimaryRecord record(std::uint64_t epoch, const std::string& node) {
  PrimaryRecord r;
  r.epoch = epoch;
  r.node = node;
  r.system_identifier = "7300000000000000001";
  r.timeline = static_cast<std::uint32_t>(epoch);
  r.how = epoch == 1 ? "bootstrap" : "failover";
  return r;
}

PublishOutcome publish(event_base* base, Instance& i, const std::optional<StoredRecord>& read, const PrimaryRecord& next) {
  std::optional<PublishOutcome> out;
  i.store->publish(read, next, [&out](PublishOutcome o) { out = std::move(o); });
  REQUIRE(loop_until(base, 30s, [&] { return out.has_value(); }));
  return *out;
}

}  // namespace

TEST_CASE("etcd store: one instance leads and alone publishes; the other follows the record", "[store][etcd][leader]") {
  EtcdCluster etcd;
  pgkeel::proxy::EventBasePtr base(event_base_new());
  auto a = std::make_unique<Instance>(base.get(), etcd, "pk1", "/pgkeel/t1");
  auto b = std::make_unique<Instance>(base.get(), etcd, "pk2", "/pgkeel/t1");
  REQUIRE(loop_until(base.get(), 20s, [&] {
    return a->store->serving() && b->store->serving() && (a->store->leader() || b->store->leader());
  }));
  CHECK(a->store->leader() != b->store->leader());  // exactly one
  Instance& leader = a->store->leader() ? *a : *b;
  Instance& follower = a->store->leader() ? *b : *a;

  // A fresh prefix holds no record: nothing to load, so the first is created (revision 0).
  std::optional<std::optional<StoredRecord>> loaded;
  follower.store->load({}, [&](std::optional<StoredRecord> r) { loaded = r; });
  REQUIRE(loop_until(base.get(), 20s, [&] { return loaded.has_value(); }));
  CHECK_FALSE(loaded->has_value());

  const PublishOutcome first = publish(base.get(), leader, std::nullopt, record(1, "db1"));
  INFO(first.why);
  REQUIRE(first.recorded);
  REQUIRE(first.stored);
  CHECK(first.stored->revision > 0);

  // The follower cannot publish, whatever it read.
  const PublishOutcome refused = publish(base.get(), follower, first.stored, record(2, "db2"));
  CHECK_FALSE(refused.recorded);
  CHECK(refused.why.find("leader") != std::string::npos);
  // The leader cannot publish over a record it did not read.
  const PublishOutcome stale = publish(base.get(), leader, std::nullopt, record(2, "db2"));
  CHECK_FALSE(stale.recorded);
  CHECK(stale.why.find("changed since it was read") != std::string::npos);

  const PublishOutcome second = publish(base.get(), leader, first.stored, record(2, "db2"));
  REQUIRE(second.recorded);
  // The follower's watch (started by its load) delivers the new record.
  REQUIRE(loop_until(base.get(), 10s, [&] { return !follower.seen.empty() && follower.seen.back().record.epoch == 2; }));
  CHECK(follower.seen.back().record.node == "db2");
  CHECK(follower.seen.back().revision == second.stored->revision);

  // The barrier before a promotion: the leader fences the record, and is done only once the
  // follower has applied it (closed its connections to db2).
  PrimaryRecord f = record(2, "db2");
  f.epoch = 3;
  f.how = "fenced";
  std::optional<bool> fenced;
  std::optional<StoredRecord> fenced_stored;
  leader.store->fence(second.stored, f, [&](bool ok, const std::string&, std::optional<StoredRecord> s) {
    fenced = ok;
    fenced_stored = s;
  });
  REQUIRE(loop_until(base.get(), 10s, [&] { return !follower.seen.empty() && follower.seen.back().record.how == "fenced"; }));
  CHECK_FALSE(fenced.has_value());
  follower.store->applied(3);
  REQUIRE(loop_until(base.get(), 10s, [&] { return fenced.has_value(); }));
  CHECK(*fenced);
  REQUIRE(fenced_stored);
  // The promotion's record replaces the fenced one.
  const PublishOutcome promoted = publish(base.get(), leader, fenced_stored, record(4, "db3"));
  CHECK(promoted.recorded);

  // Both see each other.
  REQUIRE(loop_until(base.get(), 10s, [&] { return leader.store->peers().size() == 2; }));
  CHECK(leader.store->peers()[0].name == "pk1");
  CHECK(leader.store->peers()[1].name == "pk2");
}

TEST_CASE("etcd store: the leader waits for every live instance to apply an epoch, or for its lease to run out",
          "[store][etcd][leader]") {
  EtcdCluster etcd;
  pgkeel::proxy::EventBasePtr base(event_base_new());
  auto a = std::make_unique<Instance>(base.get(), etcd, "pk1", "/pgkeel/t2");
  REQUIRE(loop_until(base.get(), 20s, [&] { return a->store->leader(); }));  // first to start leads
  auto b = std::make_unique<Instance>(base.get(), etcd, "pk2", "/pgkeel/t2");
  REQUIRE(loop_until(base.get(), 20s, [&] { return b->store->serving(); }));
  CHECK_FALSE(b->store->leader());

  // pk2 has applied nothing yet: the leader waits until it has.
  std::optional<bool> ok;
  a->store->await_peers(5, [&](bool r, const std::string&) { ok = r; });
  loop_until(base.get(), 1s, [&] { return ok.has_value(); });
  CHECK_FALSE(ok.has_value());
  b->store->applied(5);
  REQUIRE(loop_until(base.get(), 10s, [&] { return ok.has_value(); }));
  CHECK(*ok);

  // pk2 dies without a word (its lease stays in etcd until it expires): the wait ends only then.
  ok.reset();
  b.reset();
  CHECK(etcd.ctl({"get", "--prefix", "--keys-only", "/pgkeel/t2/instances/"}).find("pk2") != std::string::npos);
  a->store->await_peers(6, [&](bool r, const std::string&) { ok = r; });
  REQUIRE(loop_until(base.get(), 20s, [&] { return ok.has_value(); }));
  CHECK(*ok);
  // It ended because the lease ran out, not before: pk2's key is gone with it.
  CHECK(etcd.ctl({"get", "--prefix", "--keys-only", "/pgkeel/t2/instances/"}).find("pk2") == std::string::npos);

  // The leader dies the same way: pk3 takes over once the lease is gone, and its compare-and-swap
  // continues the record.
  auto c = std::make_unique<Instance>(base.get(), etcd, "pk3", "/pgkeel/t2");
  const PublishOutcome first = publish(base.get(), *a, std::nullopt, record(1, "db1"));
  REQUIRE(first.recorded);
  REQUIRE(loop_until(base.get(), 10s, [&] { return c->store->serving(); }));
  CHECK_FALSE(c->store->leader());
  a.reset();
  REQUIRE(loop_until(base.get(), 20s, [&] { return c->store->leader(); }));
  std::optional<std::optional<StoredRecord>> loaded;
  c->store->load({}, [&](std::optional<StoredRecord> r) { loaded = r; });
  REQUIRE(loop_until(base.get(), 10s, [&] { return loaded.has_value(); }));
  REQUIRE(loaded->has_value());
  CHECK((*loaded)->record.epoch == 1);
  const PublishOutcome next = publish(base.get(), *c, *loaded, record(2, "db2"));
  INFO(next.why);
  CHECK(next.recorded);
}

TEST_CASE("etcd store: an instance that cannot reach etcd stops serving before its lease can expire, and resumes",
          "[store][etcd][leader]") {
  EtcdCluster etcd;
  pgkeel::proxy::EventBasePtr base(event_base_new());
  auto a = std::make_unique<Instance>(base.get(), etcd, "pk1", "/pgkeel/t3");
  REQUIRE(loop_until(base.get(), 20s, [&] { return a->store->leader(); }));
  // Quorum lost: renewals fail on every member.
  etcd.kill(1);
  etcd.kill(2);
  REQUIRE(loop_until(base.get(), 20s, [&] { return !a->store->serving() && !a->store->store_error().empty(); }));
  CHECK_FALSE(a->store->leader());
  etcd.start(1);
  etcd.start(2);
  // etcd extends every lease when a new leader is elected, so the old lease may live on, or a new
  // one is granted: either way this instance serves and leads again by itself.
  REQUIRE(loop_until(base.get(), 30s, [&] { return a->store->serving() && a->store->leader(); }));
}
