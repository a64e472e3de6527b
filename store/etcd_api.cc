#include "store/etcd_api.h"

#include <array>
#include <charconv>

namespace pgkeel::store {

namespace {

constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

int sextet(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}

// The JSON writer: members in the order written, 64-bit numbers as strings (as the gateway's own
// answers carry them; it accepts both).
class Writer {
 public:
  Writer& open() {
    comma();
    out_ += '{';
    first_ = true;
    return *this;
  }
  Writer& close() {
    out_ += '}';
    first_ = false;
    return *this;
  }
  Writer& key(std::string_view k) {
    comma();
    json::append_string(out_, k);
    out_ += ':';
    first_ = true;
    return *this;
  }
  Writer& str(std::string_view v) {
    comma();
    json::append_string(out_, v);
    return *this;
  }
  Writer& bytes(std::string_view v) { return str(base64_encode(v)); }
  Writer& num(std::int64_t v) { return str(std::to_string(v)); }
  Writer& boolean(bool v) {
    comma();
    out_ += v ? "true" : "false";
    return *this;
  }
  Writer& array() {
    comma();
    out_ += '[';
    first_ = true;
    return *this;
  }
  Writer& end_array() {
    out_ += ']';
    first_ = false;
    return *this;
  }
  std::string take() { return std::move(out_); }

 private:
  void comma() {
    if (!first_) out_ += ',';
    first_ = false;
  }
  std::string out_;
  bool first_ = true;
};

// Reads an int64 that the gateway writes as a string (or, leniently, as a number). Absent: 0
// (proto3 leaves zero values out). Returns false for anything else.
bool read_i64(const json::Value& obj, std::string_view name, std::int64_t& out) {
  const json::Value* v = obj.find(name);
  if (v == nullptr) {
    out = 0;
    return true;
  }
  if (v->is_int()) {
    out = v->integer;
    return true;
  }
  if (!v->is_string()) return false;
  const std::string& s = v->string;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc() && end == s.data() + s.size() && !s.empty();
}

bool read_u64(const json::Value& obj, std::string_view name, std::uint64_t& out) {
  const json::Value* v = obj.find(name);
  if (v == nullptr) {
    out = 0;
    return true;
  }
  if (!v->is_string()) return false;
  const std::string& s = v->string;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc() && end == s.data() + s.size() && !s.empty();
}

bool read_bool(const json::Value& obj, std::string_view name, bool& out) {
  const json::Value* v = obj.find(name);
  if (v == nullptr) {
    out = false;
    return true;
  }
  if (v->type != json::Value::Type::kBool) return false;
  out = v->boolean;
  return true;
}

bool read_bytes(const json::Value& obj, std::string_view name, std::string& out) {
  const json::Value* v = obj.find(name);
  if (v == nullptr) {
    out.clear();
    return true;
  }
  if (!v->is_string()) return false;
  std::optional<std::string> d = base64_decode(v->string);
  if (!d) return false;
  out = std::move(*d);
  return true;
}

std::string read_header(const json::Value& obj, Header& h) {
  const json::Value* v = obj.find("header");
  if (v == nullptr) return {};  // e.g. the range answers inside a txn carry only a revision
  if (!v->is_object() || !read_i64(*v, "revision", h.revision) || !read_u64(*v, "member_id", h.member_id) ||
      !read_i64(*v, "raft_term", h.raft_term)) {
    return "malformed header";
  }
  return {};
}

std::string read_kv(const json::Value& v, KeyValue& kv) {
  if (!v.is_object() || !read_bytes(v, "key", kv.key) || !read_bytes(v, "value", kv.value) ||
      !read_i64(v, "create_revision", kv.create_revision) || !read_i64(v, "mod_revision", kv.mod_revision) ||
      !read_i64(v, "version", kv.version) || !read_i64(v, "lease", kv.lease)) {
    return "malformed key-value";
  }
  return {};
}

std::string read_range(const json::Value& v, RangeResponse& out) {
  if (!v.is_object()) return "not an object";
  if (std::string e = read_header(v, out.header); !e.empty()) return e;
  if (!read_i64(v, "count", out.count)) return "malformed count";
  out.kvs.clear();
  if (const json::Value* kvs = v.find("kvs")) {
    if (!kvs->is_array()) return "kvs is not an array";
    for (const json::Value& item : kvs->items) {
      KeyValue kv;
      if (std::string e = read_kv(item, kv); !e.empty()) return e;
      out.kvs.push_back(std::move(kv));
    }
  }
  return {};
}

// The document, refusing an error body (decoders of a 200 answer).
std::string parse(std::string_view body, json::Value& out) {
  json::Reader reader(body);
  std::optional<json::Value> doc = reader.parse();
  if (!doc) return "malformed JSON: " + reader.error();
  if (!doc->is_object()) return "not a JSON object";
  if (doc->find("error") != nullptr) {
    const std::optional<ApiError> e = decode_error(body);
    return "etcd error: " + (e ? e->message : std::string("(unreadable)"));
  }
  out = std::move(*doc);
  return {};
}

const char* target_name(Compare::Target t) {
  switch (t) {
    case Compare::Target::kVersion: return "VERSION";
    case Compare::Target::kCreate: return "CREATE";
    case Compare::Target::kMod: return "MOD";
    case Compare::Target::kValue: return "VALUE";
    case Compare::Target::kLease: return "LEASE";
  }
  return "MOD";
}

const char* result_name(Compare::Result r) {
  switch (r) {
    case Compare::Result::kEqual: return "EQUAL";
    case Compare::Result::kGreater: return "GREATER";
    case Compare::Result::kLess: return "LESS";
    case Compare::Result::kNotEqual: return "NOT_EQUAL";
  }
  return "EQUAL";
}

void write_op(Writer& w, const Op& op) {
  w.open();
  switch (op.kind) {
    case Op::Kind::kRange:
      w.key("request_range").open().key("key").bytes(op.key);
      if (!op.range_end.empty()) w.key("range_end").bytes(op.range_end);
      w.close();
      break;
    case Op::Kind::kPut:
      w.key("request_put").open().key("key").bytes(op.key).key("value").bytes(op.value);
      if (op.lease != 0) w.key("lease").num(op.lease);
      w.close();
      break;
    case Op::Kind::kDelete:
      w.key("request_delete_range").open().key("key").bytes(op.key);
      if (!op.range_end.empty()) w.key("range_end").bytes(op.range_end);
      w.close();
      break;
  }
  w.close();
}

}  // namespace

std::string base64_encode(std::string_view bytes) {
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  std::size_t i = 0;
  for (; i + 3 <= bytes.size(); i += 3) {
    const std::uint32_t n = (std::uint32_t{static_cast<unsigned char>(bytes[i])} << 16) |
                            (std::uint32_t{static_cast<unsigned char>(bytes[i + 1])} << 8) |
                            std::uint32_t{static_cast<unsigned char>(bytes[i + 2])};
    out += kAlphabet[(n >> 18) & 63];
    out += kAlphabet[(n >> 12) & 63];
    out += kAlphabet[(n >> 6) & 63];
    out += kAlphabet[n & 63];
  }
  const std::size_t rest = bytes.size() - i;
  if (rest > 0) {
    std::uint32_t n = std::uint32_t{static_cast<unsigned char>(bytes[i])} << 16;
    if (rest == 2) n |= std::uint32_t{static_cast<unsigned char>(bytes[i + 1])} << 8;
    out += kAlphabet[(n >> 18) & 63];
    out += kAlphabet[(n >> 12) & 63];
    out += rest == 2 ? kAlphabet[(n >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

std::optional<std::string> base64_decode(std::string_view text) {
  if (text.size() % 4 != 0) return std::nullopt;
  std::string out;
  out.reserve(text.size() / 4 * 3);
  for (std::size_t i = 0; i < text.size(); i += 4) {
    const bool last = i + 4 == text.size();
    std::array<int, 4> s{};
    int pad = 0;
    for (int j = 0; j < 4; ++j) {
      const char c = text[i + static_cast<std::size_t>(j)];
      if (c == '=' && last && j >= 2) {
        ++pad;
        s[static_cast<std::size_t>(j)] = 0;
        continue;
      }
      if (pad > 0) return std::nullopt;  // data after padding
      s[static_cast<std::size_t>(j)] = sextet(c);
      if (s[static_cast<std::size_t>(j)] < 0) return std::nullopt;
    }
    const std::uint32_t n = (static_cast<std::uint32_t>(s[0]) << 18) | (static_cast<std::uint32_t>(s[1]) << 12) |
                            (static_cast<std::uint32_t>(s[2]) << 6) | static_cast<std::uint32_t>(s[3]);
    // Bits that padding drops must be zero, so each text has one decoding (strict).
    if ((pad == 1 && (n & 0xff) != 0) || (pad == 2 && (n & 0xffff) != 0)) return std::nullopt;
    out += static_cast<char>((n >> 16) & 0xff);
    if (pad < 2) out += static_cast<char>((n >> 8) & 0xff);
    if (pad < 1) out += static_cast<char>(n & 0xff);
  }
  return out;
}

std::string prefix_end(std::string_view prefix) {
  std::string end(prefix);
  while (!end.empty()) {
    auto& c = reinterpret_cast<unsigned char&>(end.back());
    if (c < 0xff) {
      ++c;
      return end;
    }
    end.pop_back();
  }
  return std::string(1, '\0');  // every key
}

std::string encode(const RangeRequest& r) {
  Writer w;
  w.open().key("key").bytes(r.key);
  if (!r.range_end.empty()) w.key("range_end").bytes(r.range_end);
  if (r.limit != 0) w.key("limit").num(r.limit);
  if (r.revision != 0) w.key("revision").num(r.revision);
  if (r.serializable) w.key("serializable").boolean(true);
  return w.close().take();
}

std::string encode(const TxnRequest& t) {
  Writer w;
  w.open().key("compare").array();
  for (const Compare& c : t.compare) {
    w.open().key("key").bytes(c.key).key("target").str(target_name(c.target)).key("result").str(result_name(c.result));
    switch (c.target) {
      case Compare::Target::kVersion: w.key("version").num(c.number); break;
      case Compare::Target::kCreate: w.key("create_revision").num(c.number); break;
      case Compare::Target::kMod: w.key("mod_revision").num(c.number); break;
      case Compare::Target::kLease: w.key("lease").num(c.number); break;
      case Compare::Target::kValue: w.key("value").bytes(c.value); break;
    }
    w.close();
  }
  w.end_array().key("success").array();
  for (const Op& op : t.success) write_op(w, op);
  w.end_array().key("failure").array();
  for (const Op& op : t.failure) write_op(w, op);
  return w.end_array().close().take();
}

std::string encode_lease_grant(std::int64_t ttl_seconds) {
  Writer w;
  return w.open().key("TTL").num(ttl_seconds).close().take();
}

std::string encode_lease_keepalive(std::int64_t id) {
  Writer w;
  return w.open().key("ID").num(id).close().take();
}

std::string encode_lease_revoke(std::int64_t id) {
  Writer w;
  return w.open().key("ID").num(id).close().take();
}

std::string encode_authenticate(std::string_view name, std::string_view password) {
  Writer w;
  return w.open().key("name").str(name).key("password").str(password).close().take();
}

std::string encode(const WatchRequest& r) {
  Writer w;
  w.open().key("create_request").open().key("key").bytes(r.key);
  if (!r.range_end.empty()) w.key("range_end").bytes(r.range_end);
  if (r.start_revision != 0) w.key("start_revision").num(r.start_revision);
  if (r.prev_kv) w.key("prev_kv").boolean(true);
  if (r.progress_notify) w.key("progress_notify").boolean(true);
  return w.close().close().take();
}

std::string decode(std::string_view body, RangeResponse& out) {
  json::Value doc;
  if (std::string e = parse(body, doc); !e.empty()) return e;
  return read_range(doc, out);
}

std::string decode(std::string_view body, TxnResponse& out) {
  json::Value doc;
  if (std::string e = parse(body, doc); !e.empty()) return e;
  if (std::string e = read_header(doc, out.header); !e.empty()) return e;
  if (!read_bool(doc, "succeeded", out.succeeded)) return "malformed succeeded";
  out.responses.clear();
  if (const json::Value* rs = doc.find("responses")) {
    if (!rs->is_array()) return "responses is not an array";
    for (const json::Value& item : rs->items) {
      RangeResponse r;
      if (!item.is_object()) return "malformed response";
      if (const json::Value* range = item.find("response_range")) {
        if (std::string e = read_range(*range, r); !e.empty()) return e;
      } else if (item.find("response_put") == nullptr && item.find("response_delete_range") == nullptr &&
                 item.find("response_txn") == nullptr) {
        return "unknown response in a txn";
      }
      out.responses.push_back(std::move(r));
    }
  }
  return {};
}

std::string decode(std::string_view body, LeaseGrantResponse& out) {
  json::Value doc;
  if (std::string e = parse(body, doc); !e.empty()) return e;
  if (std::string e = read_header(doc, out.header); !e.empty()) return e;
  if (!read_i64(doc, "ID", out.id) || !read_i64(doc, "TTL", out.ttl)) return "malformed lease";
  if (const json::Value* e = doc.find("error"); e != nullptr && e->is_string()) out.error = e->string;
  return {};
}

std::string decode(std::string_view body, LeaseKeepAliveResponse& out) {
  json::Value doc;
  if (std::string e = parse(body, doc); !e.empty()) return e;
  const json::Value* result = doc.find("result");
  if (result == nullptr || !result->is_object()) return "no result";
  if (std::string e = read_header(*result, out.header); !e.empty()) return e;
  if (!read_i64(*result, "ID", out.id) || !read_i64(*result, "TTL", out.ttl)) return "malformed lease";
  return {};
}

std::string decode(std::string_view body, AuthenticateResponse& out) {
  json::Value doc;
  if (std::string e = parse(body, doc); !e.empty()) return e;
  if (std::string e = read_header(doc, out.header); !e.empty()) return e;
  const json::Value* t = doc.find("token");
  if (t == nullptr || !t->is_string() || t->string.empty()) return "no token";
  out.token = t->string;
  return {};
}

std::string decode(const json::Value& result, WatchResponse& out) {
  if (!result.is_object()) return "result is not an object";
  if (std::string e = read_header(result, out.header); !e.empty()) return e;
  if (!read_i64(result, "watch_id", out.watch_id) || !read_bool(result, "created", out.created) ||
      !read_bool(result, "canceled", out.canceled) || !read_i64(result, "compact_revision", out.compact_revision)) {
    return "malformed watch response";
  }
  if (const json::Value* r = result.find("cancel_reason"); r != nullptr && r->is_string()) out.cancel_reason = r->string;
  out.events.clear();
  if (const json::Value* evs = result.find("events")) {
    if (!evs->is_array()) return "events is not an array";
    for (const json::Value& item : evs->items) {
      if (!item.is_object()) return "malformed event";
      Event ev;
      if (const json::Value* type = item.find("type")) {
        if (!type->is_string() || (type->string != "PUT" && type->string != "DELETE")) return "unknown event type";
        ev.deleted = type->string == "DELETE";
      }
      const json::Value* kv = item.find("kv");
      if (kv == nullptr) return "event without kv";
      if (std::string e = read_kv(*kv, ev.kv); !e.empty()) return e;
      if (const json::Value* prev = item.find("prev_kv")) {
        ev.prev_kv.emplace();
        if (std::string e = read_kv(*prev, *ev.prev_kv); !e.empty()) return e;
      }
      out.events.push_back(std::move(ev));
    }
  }
  return {};
}

std::optional<ApiError> decode_error(std::string_view body) {
  json::Reader reader(body);
  std::optional<json::Value> doc = reader.parse();
  if (!doc || !doc->is_object()) return std::nullopt;
  const json::Value* e = doc->find("error");
  if (e == nullptr) return std::nullopt;
  ApiError out;
  if (e->is_string()) {
    // Unary answers: {"error": "etcdserver: ...", "code": 9, "message": "etcdserver: ..."}
    out.message = e->string;
    if (const json::Value* c = doc->find("code"); c != nullptr && c->is_int()) out.code = static_cast<int>(c->integer);
    return out;
  }
  if (e->is_object()) {
    // Streams: {"error": {"grpc_code": 14, "http_code": 503, "message": "...", ...}}
    if (const json::Value* m = e->find("message"); m != nullptr && m->is_string()) out.message = m->string;
    if (const json::Value* c = e->find("grpc_code"); c != nullptr && c->is_int()) out.code = static_cast<int>(c->integer);
    return out;
  }
  return std::nullopt;
}

WatchStreamDecoder::Item WatchStreamDecoder::next() {
  Item item;
  while (true) {
    const std::size_t nl = buffer_.find('\n', pos_);
    if (nl == std::string::npos) {
      if (pos_ > 0) {  // keep the partial line only
        buffer_.erase(0, pos_);
        pos_ = 0;
      }
      if (buffer_.size() > (std::size_t{64} << 20)) {
        item.status = Status::kMalformed;
        item.why = "a watch message longer than 64 MiB";
      }
      return item;
    }
    const std::string_view line(buffer_.data() + pos_, nl - pos_);
    pos_ = nl + 1;
    if (line.find_first_not_of(" \r\t") == std::string_view::npos) continue;  // blank line
    json::Reader reader(line);
    std::optional<json::Value> doc = reader.parse();
    if (!doc || !doc->is_object()) {
      item.status = Status::kMalformed;
      item.why = doc ? "not a JSON object" : "malformed JSON: " + reader.error();
      return item;
    }
    if (doc->find("error") != nullptr) {
      item.status = Status::kError;
      item.error = decode_error(line).value_or(ApiError{0, "(unreadable error)"});
      return item;
    }
    const json::Value* result = doc->find("result");
    if (result == nullptr) {
      item.status = Status::kMalformed;
      item.why = "a watch message without result";
      return item;
    }
    if (std::string e = decode(*result, item.response); !e.empty()) {
      item.status = Status::kMalformed;
      item.why = e;
      return item;
    }
    item.status = Status::kMessage;
    return item;
  }
}

}  // namespace pgkeel::store
