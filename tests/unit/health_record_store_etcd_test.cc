// Tests for the pure parts of health/record_store_etcd.h: what an instance reports under its key,
// the keys of a cluster, and until when a lease may be taken as still held.

#include <catch2/catch.hpp>
#include <chrono>

#include "health/record_store_etcd.h"

using namespace pgkeel::health;

TEST_CASE("an instance's report reads back, and malformed ones are refused", "[health][record][store]") {
  PeerReport p;
  p.name = "pk1";
  p.address = "10.0.0.21:6432";
  p.applied_epoch = 17;
  const auto back = PeerReport::parse("pk1", p.serialize());
  REQUIRE(back);
  CHECK(back->applied_epoch == 17);
  CHECK(back->address == "10.0.0.21:6432");
  CHECK_FALSE(PeerReport::parse("pk1", "address=x"));
  CHECK_FALSE(PeerReport::parse("pk1", "epoch=12x"));
  CHECK_FALSE(PeerReport::parse("", "epoch=1"));
  const StoreKeys k("/pgkeel/erp");
  CHECK(k.record == "/pgkeel/erp/record");
  CHECK(k.leader == "/pgkeel/erp/leader");
  CHECK(k.instance("pk1") == "/pgkeel/erp/instances/pk1");
}

TEST_CASE("a lease counts as held until its TTL less two request timeouts after the renewal was sent", "[health][record][store]") {
  using namespace std::chrono;
  const steady_clock::time_point sent = steady_clock::time_point{} + hours(1);
  CHECK(lease_still_held(sent, sent, seconds(10), seconds(1)));
  CHECK(lease_still_held(sent, sent + milliseconds(7999), seconds(10), seconds(1)));
  CHECK_FALSE(lease_still_held(sent, sent + seconds(8), seconds(10), seconds(1)));
  CHECK_FALSE(lease_still_held(steady_clock::time_point{}, sent, seconds(10), seconds(1)));  // never renewed
}
