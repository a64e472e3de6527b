// store/etcd_api.h — etcd's v3 API as its JSON gateway speaks it (etcd 3.4+, paths under /v3/):
// the request bodies pgkeel sends and the answers it reads, with keys and values base64-encoded
// and 64-bit numbers as JSON strings. Pure: no sockets, no clock.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "store/json.h"

namespace pgkeel::store {

std::string base64_encode(std::string_view bytes);
// Standard alphabet with padding, as etcd's gateway writes it; nullopt for anything else.
std::optional<std::string> base64_decode(std::string_view text);
// The range_end that makes a range cover every key starting with `prefix` (etcd's rule: the
// prefix with its last byte below 0xff incremented and what follows it dropped; "\0" for all keys).
std::string prefix_end(std::string_view prefix);

// gRPC status codes etcd answers with (google.golang.org/grpc/codes).
enum class Code : int {
  kOk = 0, kCanceled = 1, kUnknown = 2, kInvalidArgument = 3, kDeadlineExceeded = 4, kNotFound = 5,
  kFailedPrecondition = 9, kUnavailable = 14, kUnauthenticated = 16,
};

// An answer etcd refused: {"error": "...", "code": N, "message": "..."}.
struct ApiError {
  int code = 0;
  std::string message;
};

struct Header {
  std::int64_t revision = 0;
  std::uint64_t member_id = 0;
  std::int64_t raft_term = 0;
};

struct KeyValue {
  std::string key;
  std::string value;
  std::int64_t create_revision = 0;
  std::int64_t mod_revision = 0;
  std::int64_t version = 0;
  std::int64_t lease = 0;
};

// --- requests -------------------------------------------------------------------------------

struct RangeRequest {
  std::string key;
  std::string range_end;  // empty: the one key
  std::int64_t limit = 0;
  std::int64_t revision = 0;
  bool serializable = false;  // answered by the member alone, without a quorum read
};
std::string encode(const RangeRequest& r);

struct Compare {
  enum class Target : std::uint8_t { kVersion, kCreate, kMod, kValue, kLease };
  enum class Result : std::uint8_t { kEqual, kGreater, kLess, kNotEqual };
  std::string key;
  Target target = Target::kMod;
  Result result = Result::kEqual;
  std::int64_t number = 0;  // version, create_revision, mod_revision or lease
  std::string value;        // kValue
};

struct Op {
  enum class Kind : std::uint8_t { kRange, kPut, kDelete };
  Kind kind = Kind::kRange;
  std::string key;
  std::string range_end;
  std::string value;       // kPut
  std::int64_t lease = 0;  // kPut: 0 for none
  static Op range(std::string key, std::string range_end = {}) { return {Kind::kRange, std::move(key), std::move(range_end), {}, 0}; }
  static Op put(std::string key, std::string value, std::int64_t lease = 0) { return {Kind::kPut, std::move(key), {}, std::move(value), lease}; }
  static Op del(std::string key, std::string range_end = {}) { return {Kind::kDelete, std::move(key), std::move(range_end), {}, 0}; }
};

struct TxnRequest {
  std::vector<Compare> compare;
  std::vector<Op> success;
  std::vector<Op> failure;
};
std::string encode(const TxnRequest& t);

std::string encode_lease_grant(std::int64_t ttl_seconds);
std::string encode_lease_keepalive(std::int64_t id);
std::string encode_lease_revoke(std::int64_t id);
std::string encode_authenticate(std::string_view name, std::string_view password);

struct WatchRequest {
  std::string key;
  std::string range_end;
  std::int64_t start_revision = 0;  // 0: from now
  bool prev_kv = false;
  bool progress_notify = false;
};
std::string encode(const WatchRequest& w);

// --- answers --------------------------------------------------------------------------------

struct RangeResponse {
  Header header;
  std::vector<KeyValue> kvs;
  std::int64_t count = 0;
};

struct TxnResponse {
  Header header;
  bool succeeded = false;
  // One entry per operation of the branch taken; a range's kvs, empty for a put or a delete.
  std::vector<RangeResponse> responses;
};

struct LeaseGrantResponse {
  Header header;
  std::int64_t id = 0;
  std::int64_t ttl = 0;
  std::string error;  // etcd's own refusal inside a 200 answer
};

struct LeaseKeepAliveResponse {
  Header header;
  std::int64_t id = 0;
  std::int64_t ttl = 0;  // 0: the lease does not exist (expired or revoked)
};

struct Event {
  bool deleted = false;  // DELETE; otherwise PUT
  KeyValue kv;
  std::optional<KeyValue> prev_kv;
};

struct WatchResponse {
  Header header;
  std::int64_t watch_id = 0;
  bool created = false;
  bool canceled = false;
  std::int64_t compact_revision = 0;  // canceled because the start revision was compacted
  std::string cancel_reason;
  std::vector<Event> events;
};

struct AuthenticateResponse {
  Header header;
  std::string token;
};

// Each decoder fills `out` from a 200 answer's body, or returns why it cannot. An {"error": ...}
// body is refused by all of them; read it with decode_error().
std::string decode(std::string_view body, RangeResponse& out);
std::string decode(std::string_view body, TxnResponse& out);
std::string decode(std::string_view body, LeaseGrantResponse& out);
std::string decode(std::string_view body, LeaseKeepAliveResponse& out);  // {"result": {...}}
std::string decode(std::string_view body, AuthenticateResponse& out);
std::string decode(const json::Value& result, WatchResponse& out);        // the inside of "result"
// An error answer (any HTTP status); nullopt when the body is not one.
std::optional<ApiError> decode_error(std::string_view body);

// Splits a watch stream (one JSON object per line, across chunk boundaries) into responses.
class WatchStreamDecoder {
 public:
  enum class Status : std::uint8_t { kNeedMore, kMessage, kError, kMalformed };
  struct Item {
    Status status = Status::kNeedMore;
    WatchResponse response;  // kMessage
    ApiError error;          // kError: {"error": {...}} inside the stream
    std::string why;         // kMalformed
  };
  void feed(std::string_view bytes) { buffer_.append(bytes); }
  // The next complete item, or kNeedMore. After kMalformed the stream is no use.
  Item next();
  std::size_t buffered() const { return buffer_.size() - pos_; }

 private:
  std::string buffer_;
  std::size_t pos_ = 0;
};

}  // namespace pgkeel::store
