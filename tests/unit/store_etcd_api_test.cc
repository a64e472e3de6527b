// Tests for store/etcd_api.h: what pgkeel sends to etcd's JSON gateway and how it reads the
// answers, from bodies as etcd 3.4 writes them (captured from a real member with curl).

#include <catch2/catch.hpp>
#include <random>
#include <string>

#include "store/etcd_api.h"

using namespace pgkeel::store;

TEST_CASE("base64 round-trips any bytes and is strict about what it reads", "[store][etcd]") {
  CHECK(base64_encode("") == "");
  CHECK(base64_encode("f") == "Zg==");
  CHECK(base64_encode("fo") == "Zm8=");
  CHECK(base64_encode("foo") == "Zm9v");
  CHECK(base64_encode("/pgkeel/erp/record") == "L3Bna2VlbC9lcnAvcmVjb3Jk");
  CHECK(base64_decode("L2E=") == std::optional<std::string>("/a"));
  CHECK(base64_decode("") == std::optional<std::string>(""));
  CHECK_FALSE(base64_decode("Zg="));     // length not a multiple of 4
  CHECK_FALSE(base64_decode("Z===") );   // padding too early
  CHECK_FALSE(base64_decode("Zg==Zg==")); // data after padding
  CHECK_FALSE(base64_decode("Zh=="));    // dropped bits not zero: not canonical
  CHECK_FALSE(base64_decode("Zm9*"));
  std::mt19937 rng(7);
  for (int n = 0; n < 200; ++n) {
    std::string bytes(static_cast<std::size_t>(n), '\0');
    for (char& c : bytes) c = static_cast<char>(rng() & 0xff);
    CHECK(base64_decode(base64_encode(bytes)) == std::optional<std::string>(bytes));
  }
}

TEST_CASE("a prefix's range end covers exactly the keys under it", "[store][etcd]") {
  CHECK(prefix_end("/pgkeel/erp/instances/") == "/pgkeel/erp/instances0");
  CHECK(prefix_end("a\xff") == "b");
  CHECK(prefix_end("\xff\xff") == std::string(1, '\0'));
}

TEST_CASE("requests are the gateway's JSON: base64 keys, 64-bit numbers as strings", "[store][etcd]") {
  CHECK(encode(RangeRequest{"/a", "", 0, 0, false}) == R"({"key":"L2E="})");
  CHECK(encode(RangeRequest{"/a/", prefix_end("/a/"), 10, 5, true}) ==
        R"({"key":"L2Ev","range_end":"L2Ew","limit":"10","revision":"5","serializable":true})");
  TxnRequest t;
  t.compare.push_back({"/r", Compare::Target::kMod, Compare::Result::kEqual, 42, {}});
  t.compare.push_back({"/l", Compare::Target::kCreate, Compare::Result::kEqual, 0, {}});
  t.success.push_back(Op::put("/r", "v", 7));
  t.success.push_back(Op::del("/x"));
  t.failure.push_back(Op::range("/r"));
  CHECK(encode(t) ==
        R"({"compare":[{"key":"L3I=","target":"MOD","result":"EQUAL","mod_revision":"42"},)"
        R"({"key":"L2w=","target":"CREATE","result":"EQUAL","create_revision":"0"}],)"
        R"("success":[{"request_put":{"key":"L3I=","value":"dg==","lease":"7"}},{"request_delete_range":{"key":"L3g="}}],)"
        R"("failure":[{"request_range":{"key":"L3I="}}]})");
  CHECK(encode_lease_grant(10) == R"({"TTL":"10"})");
  CHECK(encode_lease_keepalive(8627949439802939912) == R"({"ID":"8627949439802939912"})");
  CHECK(encode_authenticate("pg\"keel", "pw") == R"({"name":"pg\"keel","password":"pw"})");
  CHECK(encode(WatchRequest{"/a/", prefix_end("/a/"), 17, true, false}) ==
        R"({"create_request":{"key":"L2Ev","range_end":"L2Ew","start_revision":"17","prev_kv":true}})");
}

TEST_CASE("range answers: keys, values, revisions; absent fields are zero", "[store][etcd]") {
  RangeResponse r;
  REQUIRE(decode(R"({"header":{"cluster_id":"16263853127689311720","member_id":"15787467686914127804","revision":"2","raft_term":"2"},)"
                 R"("kvs":[{"key":"L2E=","create_revision":"2","mod_revision":"2","version":"1","value":"djE="}],"count":"1"})",
                 r) == "");
  CHECK(r.header.revision == 2);
  CHECK(r.header.member_id == 15787467686914127804u);
  CHECK(r.count == 1);
  REQUIRE(r.kvs.size() == 1);
  CHECK(r.kvs[0].key == "/a");
  CHECK(r.kvs[0].value == "v1");
  CHECK(r.kvs[0].mod_revision == 2);
  CHECK(r.kvs[0].lease == 0);
  RangeResponse empty;
  REQUIRE(decode(R"({"header":{"revision":"2"}})", empty) == "");
  CHECK(empty.kvs.empty());
  CHECK(empty.count == 0);
}

TEST_CASE("txn answers say whether the comparison held, and carry the failure branch's reads", "[store][etcd]") {
  TxnResponse ok;
  REQUIRE(decode(R"({"header":{"revision":"5"},"succeeded":true,"responses":[{"response_put":{"header":{"revision":"5"}}}]})", ok) == "");
  CHECK(ok.succeeded);
  CHECK(ok.responses.size() == 1);
  TxnResponse lost;
  REQUIRE(decode(R"({"header":{"revision":"2"},"responses":[{"response_range":{"header":{"revision":"2"},)"
                 R"("kvs":[{"key":"L2E=","create_revision":"2","mod_revision":"2","version":"1","value":"djE="}],"count":"1"}}]})",
                 lost) == "");
  CHECK_FALSE(lost.succeeded);  // proto3 leaves false out
  REQUIRE(lost.responses.size() == 1);
  REQUIRE(lost.responses[0].kvs.size() == 1);
  CHECK(lost.responses[0].kvs[0].value == "v1");
}

TEST_CASE("leases: granted with an id, kept alive with a TTL, gone when the TTL is absent", "[store][etcd]") {
  LeaseGrantResponse g;
  REQUIRE(decode(R"({"header":{"revision":"2"},"ID":"8627949439802939912","TTL":"5"})", g) == "");
  CHECK(g.id == 8627949439802939912);
  CHECK(g.ttl == 5);
  LeaseKeepAliveResponse k;
  REQUIRE(decode(R"({"result":{"header":{"revision":"2"},"ID":"8627949439802939915","TTL":"5"}})", k) == "");
  CHECK(k.ttl == 5);
  LeaseKeepAliveResponse gone;
  REQUIRE(decode(R"({"result":{"header":{"revision":"2"},"ID":"12345"}})", gone) == "");
  CHECK(gone.id == 12345);
  CHECK(gone.ttl == 0);
}

TEST_CASE("errors are read from unary answers and from streams alike", "[store][etcd]") {
  auto e = decode_error(R"({"error":"etcdserver: authentication is not enabled","message":"etcdserver: authentication is not enabled","code":9})");
  REQUIRE(e);
  CHECK(e->code == 9);
  CHECK(e->message == "etcdserver: authentication is not enabled");
  e = decode_error(R"({"error":{"grpc_code":14,"http_code":503,"message":"etcdserver: no leader","http_status":"Service Unavailable"}})");
  REQUIRE(e);
  CHECK(e->code == 14);
  CHECK(e->message == "etcdserver: no leader");
  CHECK_FALSE(decode_error(R"({"header":{}})"));
  CHECK_FALSE(decode_error("not json"));
  RangeResponse r;
  CHECK(decode(R"({"error":"etcdserver: no leader","code":14})", r).find("no leader") != std::string::npos);
}

TEST_CASE("malformed answers are refused, never trusted", "[store][etcd]") {
  RangeResponse r;
  CHECK(decode("", r) != "");
  CHECK(decode("[]", r) != "");
  CHECK(decode(R"({"kvs":[{"key":"not base64!"}]})", r) != "");
  CHECK(decode(R"({"kvs":[{"key":"L2E=","mod_revision":"12x"}]})", r) != "");
  CHECK(decode(R"({"kvs":{}})", r) != "");
  CHECK(decode(R"({"header":{"revision":true}})", r) != "");
  TxnResponse t;
  CHECK(decode(R"({"succeeded":"yes"})", t) != "");
  CHECK(decode(R"({"responses":[{"response_mystery":{}}]})", t) != "");
}

TEST_CASE("a watch stream splits into messages across chunk boundaries", "[store][etcd]") {
  const std::string stream =
      R"({"result":{"header":{"revision":"2"},"created":true}})" "\n"
      R"({"result":{"header":{"revision":"3"},"events":[{"kv":{"key":"L2EveA==","create_revision":"3","mod_revision":"3","version":"1","value":"djM=","lease":"8627949439802939915"}}]}})" "\n"
      R"({"result":{"header":{"revision":"4"},"events":[{"type":"DELETE","kv":{"key":"L2EveA==","mod_revision":"4"},"prev_kv":{"key":"L2EveA==","create_revision":"3","mod_revision":"3","version":"1","value":"djM="}}]}})" "\n";
  for (std::size_t cut : {std::size_t{1}, std::size_t{7}, std::size_t{64}, stream.size()}) {
    INFO("chunks of " << cut);
    WatchStreamDecoder d;
    std::vector<WatchResponse> got;
    for (std::size_t at = 0; at < stream.size(); at += cut) {
      d.feed(std::string_view(stream).substr(at, cut));
      while (true) {
        WatchStreamDecoder::Item item = d.next();
        if (item.status == WatchStreamDecoder::Status::kNeedMore) break;
        REQUIRE(item.status == WatchStreamDecoder::Status::kMessage);
        got.push_back(item.response);
      }
    }
    REQUIRE(got.size() == 3);
    CHECK(got[0].created);
    CHECK(got[0].events.empty());
    REQUIRE(got[1].events.size() == 1);
    CHECK_FALSE(got[1].events[0].deleted);
    CHECK(got[1].events[0].kv.key == "/a/x");
    CHECK(got[1].events[0].kv.value == "v3");
    CHECK(got[1].events[0].kv.lease == 8627949439802939915);
    REQUIRE(got[2].events.size() == 1);
    CHECK(got[2].events[0].deleted);
    REQUIRE(got[2].events[0].prev_kv);
    CHECK(got[2].events[0].prev_kv->value == "v3");
    CHECK(got[2].header.revision == 4);
    CHECK(d.buffered() == 0);
  }
}

TEST_CASE("a watch stream reports etcd's errors, cancellations and garbage", "[store][etcd]") {
  WatchStreamDecoder d;
  d.feed(R"({"error":{"grpc_code":14,"message":"etcdserver: no leader"}})" "\n");
  auto item = d.next();
  REQUIRE(item.status == WatchStreamDecoder::Status::kError);
  CHECK(item.error.code == 14);
  d.feed(R"({"result":{"header":{"revision":"9"},"canceled":true,"compact_revision":"5"}})" "\n");
  item = d.next();
  REQUIRE(item.status == WatchStreamDecoder::Status::kMessage);
  CHECK(item.response.canceled);
  CHECK(item.response.compact_revision == 5);
  d.feed("{\"result\": 1}\n");
  CHECK(d.next().status == WatchStreamDecoder::Status::kMalformed);
  WatchStreamDecoder g;
  g.feed("\r\n\n{oops}\n");
  CHECK(g.next().status == WatchStreamDecoder::Status::kMalformed);
  WatchStreamDecoder partial;
  partial.feed(R"({"result":{"header":{"revision":"2"})");
  CHECK(partial.next().status == WatchStreamDecoder::Status::kNeedMore);
  CHECK(partial.buffered() > 0);
}
