// The etcd client (store/etcd_client.h) against a real 3-member etcd 3.4 on loopback: the calls
// pgkeel's record store makes (compare-and-swap, leases, a watch), and what happens to them when
// members die, lose their quorum and come back.

#include <event2/event.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "store/etcd_client.h"
#include "proxy/handles.h"
#include "tests/integration/etcd_fixture.h"
#include "tests/integration/fixture.h"

using namespace pgkeel::test;
using namespace pgkeel::store;

namespace {

// One call, waited for.
template <typename T, typename Start>
T await(event_base* base, Start start) {
  std::optional<T> out;
  start([&out](T r) { out = std::move(r); });
  REQUIRE(loop_until(base, 30s, [&] { return out.has_value(); }));
  return std::move(*out);
}

struct Harness {
  EtcdCluster etcd;
  pgkeel::proxy::EventBasePtr base{event_base_new()};
  std::unique_ptr<Client> client;
  explicit Harness(Millis timeout = Millis{1000}) {
    ClientOptions o;
    o.endpoints = etcd.endpoints();
    o.request_timeout = timeout;
    client = std::make_unique<Client>(base.get(), o);
  }
  ~Harness() { client.reset(); }
  Result<TxnResponse> txn(const TxnRequest& t) {
    return await<Result<TxnResponse>>(base.get(), [&](auto done) { client->txn(t, done); });
  }
  Result<RangeResponse> range(const std::string& key, const std::string& end = {}) {
    return await<Result<RangeResponse>>(base.get(), [&](auto done) { client->range(RangeRequest{key, end, 0, 0, false}, done); });
  }
  Result<TxnResponse> create(const std::string& key, const std::string& value, std::int64_t lease = 0) {
    TxnRequest t;
    t.compare.push_back({key, Compare::Target::kCreate, Compare::Result::kEqual, 0, {}});
    t.success.push_back(Op::put(key, value, lease));
    t.failure.push_back(Op::range(key));
    return txn(t);
  }
  Result<TxnResponse> swap(const std::string& key, std::int64_t mod_revision, const std::string& value) {
    TxnRequest t;
    t.compare.push_back({key, Compare::Target::kMod, Compare::Result::kEqual, mod_revision, {}});
    t.success.push_back(Op::put(key, value));
    t.failure.push_back(Op::range(key));
    return txn(t);
  }
};

}  // namespace

TEST_CASE("etcd: a key is created once and changed only by the revision that was read", "[store][etcd]") {
  Harness h;
  auto first = h.create("/pgkeel/t/record", "epoch=1");
  INFO(first.error);
  REQUIRE(first.ok());
  CHECK(first.value.succeeded);
  auto second = h.create("/pgkeel/t/record", "epoch=1 from another instance");
  REQUIRE(second.ok());
  CHECK_FALSE(second.value.succeeded);
  REQUIRE(second.value.responses.size() == 1);
  REQUIRE(second.value.responses[0].kvs.size() == 1);
  const KeyValue kv = second.value.responses[0].kvs[0];
  CHECK(kv.value == "epoch=1");

  // Two instances read the same revision; only the first swap wins, the second sees the winner.
  auto a = h.swap("/pgkeel/t/record", kv.mod_revision, "epoch=2 by a");
  auto b = h.swap("/pgkeel/t/record", kv.mod_revision, "epoch=2 by b");
  REQUIRE(a.ok());
  REQUIRE(b.ok());
  CHECK(a.value.succeeded);
  CHECK_FALSE(b.value.succeeded);
  REQUIRE(b.value.responses.at(0).kvs.size() == 1);
  CHECK(b.value.responses[0].kvs[0].value == "epoch=2 by a");
  auto read = h.range("/pgkeel/t/record");
  REQUIRE(read.ok());
  REQUIRE(read.value.kvs.size() == 1);
  CHECK(read.value.kvs[0].value == "epoch=2 by a");
  CHECK(read.value.kvs[0].mod_revision > kv.mod_revision);
}

TEST_CASE("etcd: a key on a lease lives while the lease is kept alive and goes with it", "[store][etcd]") {
  Harness h;
  auto grant = await<Result<LeaseGrantResponse>>(h.base.get(), [&](auto done) { h.client->lease_grant(5, done); });
  INFO(grant.error);
  REQUIRE(grant.ok());
  CHECK(grant.value.id != 0);
  CHECK(grant.value.ttl == 5);
  REQUIRE(h.create("/pgkeel/t/instances/pk1", "epoch=3", grant.value.id).value.succeeded);
  auto alive = await<Result<LeaseKeepAliveResponse>>(h.base.get(), [&](auto done) { h.client->lease_keepalive(grant.value.id, done); });
  REQUIRE(alive.ok());
  CHECK(alive.value.ttl == 5);
  auto revoked = await<Reply>(h.base.get(), [&](auto done) { h.client->lease_revoke(grant.value.id, done); });
  INFO(revoked.error);
  REQUIRE(revoked.ok());
  auto gone = await<Result<LeaseKeepAliveResponse>>(h.base.get(), [&](auto done) { h.client->lease_keepalive(grant.value.id, done); });
  REQUIRE(gone.ok());
  CHECK(gone.value.ttl == 0);  // the lease is no more
  auto read = h.range("/pgkeel/t/instances/pk1");
  REQUIRE(read.ok());
  CHECK(read.value.kvs.empty());
}

TEST_CASE("etcd: a watch streams puts and deletes under a prefix, in order", "[store][etcd]") {
  Harness h;
  std::vector<Event> events;
  bool created = false;
  std::optional<std::string> ended;
  auto w = h.client->watch(
      WatchRequest{"/pgkeel/t/", prefix_end("/pgkeel/t/"), 0, true, false},
      [&](const WatchResponse& r) {
        created = created || r.created;
        events.insert(events.end(), r.events.begin(), r.events.end());
      },
      [&](const std::string& why) { ended = why; });
  REQUIRE(loop_until(h.base.get(), 10s, [&] { return created || ended; }));
  REQUIRE_FALSE(ended);
  // Big values cross chunk boundaries.
  const std::string big(100000, 'x');
  REQUIRE(h.create("/pgkeel/t/a", "1").ok());
  REQUIRE(h.create("/pgkeel/t/b", big).ok());
  REQUIRE(h.create("/pgkeel/u/outside", "no").ok());
  TxnRequest del;
  del.success.push_back(Op::del("/pgkeel/t/a"));
  REQUIRE(h.txn(del).ok());
  REQUIRE(loop_until(h.base.get(), 10s, [&] { return events.size() >= 3 || ended; }));
  INFO(ended.value_or(""));
  REQUIRE(events.size() == 3);
  CHECK(events[0].kv.key == "/pgkeel/t/a");
  CHECK(events[1].kv.value == big);
  CHECK(events[2].deleted);
  CHECK(events[2].kv.key == "/pgkeel/t/a");
  REQUIRE(events[2].prev_kv);
  CHECK(events[2].prev_kv->value == "1");
  CHECK(events[0].kv.mod_revision < events[1].kv.mod_revision);
  CHECK(events[1].kv.mod_revision < events[2].kv.mod_revision);
  CHECK_FALSE(ended);
}

TEST_CASE("etcd: calls move on to the next member when one dies, and fail only when none can serve", "[store][etcd]") {
  Harness h;
  REQUIRE(h.create("/pgkeel/t/k", "v").ok());
  const std::string first = h.client->endpoint();
  // The member the client talks to dies: the next call is answered by another one.
  int member = 0;
  for (std::size_t i = 0; i < h.etcd.urls().size(); ++i) {
    if (h.etcd.urls()[i] == first) member = static_cast<int>(i) + 1;
  }
  REQUIRE(member != 0);
  h.etcd.kill(member);
  // If it led etcd, the others elect a new leader first (about a second): the same client,
  // untouched, gets its answer from another member.
  Result<RangeResponse> read;
  REQUIRE(eventually(20s, [&] {
    read = h.range("/pgkeel/t/k");
    return read.ok();
  }, 100ms));
  CHECK(read.value.kvs.size() == 1);
  CHECK(h.client->endpoint() != first);
  CHECK(h.swap("/pgkeel/t/k", read.value.kvs[0].mod_revision, "w").value.succeeded);

  // A second member goes: the last one has no quorum, so no write and no linearizable read.
  const int second = member % 3 + 1;
  h.etcd.kill(second);
  auto lost = h.range("/pgkeel/t/k");
  CHECK_FALSE(lost.ok());
  CHECK(lost.error.find("no etcd member answered") != std::string::npos);
  auto refused = h.swap("/pgkeel/t/k", read.value.kvs[0].mod_revision, "x");
  CHECK_FALSE(refused.ok());

  // Both come back: the same client, untouched, works again.
  h.etcd.start(member);
  h.etcd.start(second);
  std::optional<Result<RangeResponse>> back;
  REQUIRE(eventually(30s, [&] {
    back = h.range("/pgkeel/t/k");
    return back->ok();
  }, 200ms));
  REQUIRE(back->value.kvs.size() == 1);
  CHECK(back->value.kvs[0].value == "w");  // the refused swap left nothing behind
}

TEST_CASE("etcd: a watch whose member dies ends, and a new one from the next revision misses nothing", "[store][etcd]") {
  Harness h;
  std::vector<Event> events;
  std::int64_t last_revision = 0;
  std::optional<std::string> ended;
  auto on_response = [&](const WatchResponse& r) {
    for (const Event& e : r.events) {
      events.push_back(e);
      last_revision = e.kv.mod_revision;
    }
    if (r.created && last_revision == 0) last_revision = r.header.revision;
  };
  auto w = h.client->watch(WatchRequest{"/pgkeel/t/", prefix_end("/pgkeel/t/"), 0, false, false}, on_response,
                           [&](const std::string& why) { ended = why; });
  REQUIRE(loop_until(h.base.get(), 10s, [&] { return last_revision != 0 || ended; }));
  REQUIRE(h.create("/pgkeel/t/one", "1").ok());
  REQUIRE(loop_until(h.base.get(), 10s, [&] { return events.size() == 1 || ended; }));
  int member = 0;
  for (std::size_t i = 0; i < h.etcd.urls().size(); ++i) {
    if (h.etcd.urls()[i] == w->endpoint()) member = static_cast<int>(i) + 1;
  }
  REQUIRE(member != 0);
  h.etcd.kill(member);
  REQUIRE(loop_until(h.base.get(), 30s, [&] { return ended.has_value(); }));
  // Written while no watch runs.
  REQUIRE(h.create("/pgkeel/t/two", "2").ok());
  ended.reset();
  w = h.client->watch(WatchRequest{"/pgkeel/t/", prefix_end("/pgkeel/t/"), last_revision + 1, false, false}, on_response,
                      [&](const std::string& why) { ended = why; });
  REQUIRE(loop_until(h.base.get(), 10s, [&] { return events.size() == 2 || ended; }));
  INFO(ended.value_or(""));
  REQUIRE(events.size() == 2);
  CHECK(events[1].kv.key == "/pgkeel/t/two");
  CHECK(w->endpoint() != h.etcd.urls()[static_cast<std::size_t>(member - 1)]);
  h.etcd.start(member);
}
