#include "proxy/protocol/message.h"

#include <cstring>

namespace pgkeel::protocol {

Writer& Writer::begin(char type) {
  out_.push_back(type);
  start_ = out_.size();
  out_.append(4, '\0');
  return *this;
}

Writer& Writer::begin_untyped() {
  start_ = out_.size();
  out_.append(4, '\0');
  return *this;
}

Writer& Writer::i8(std::uint8_t v) {
  out_.push_back(static_cast<char>(v));
  return *this;
}

Writer& Writer::i16(std::int16_t v) {
  const auto u = static_cast<std::uint16_t>(v);
  out_.push_back(static_cast<char>(u >> 8));
  out_.push_back(static_cast<char>(u & 0xff));
  return *this;
}

Writer& Writer::i32(std::int32_t v) {
  unsigned char b[4];
  write_u32(b, static_cast<std::uint32_t>(v));
  out_.append(reinterpret_cast<const char*>(b), 4);
  return *this;
}

Writer& Writer::str(std::string_view s) {
  out_.append(s);
  out_.push_back('\0');
  return *this;
}

Writer& Writer::bytes(std::string_view s) {
  out_.append(s);
  return *this;
}

void Writer::end() {
  const auto len = static_cast<std::uint32_t>(out_.size() - start_);
  write_u32(reinterpret_cast<unsigned char*>(&out_[start_]), len);
}

std::uint8_t Reader::i8() {
  if (failed_ || data_.size() - pos_ < 1) {
    failed_ = true;
    return 0;
  }
  return static_cast<std::uint8_t>(data_[pos_++]);
}

std::int16_t Reader::i16() {
  if (failed_ || data_.size() - pos_ < 2) {
    failed_ = true;
    return 0;
  }
  const auto* p = reinterpret_cast<const unsigned char*>(data_.data() + pos_);
  pos_ += 2;
  return static_cast<std::int16_t>((p[0] << 8) | p[1]);
}

std::int32_t Reader::i32() {
  if (failed_ || data_.size() - pos_ < 4) {
    failed_ = true;
    return 0;
  }
  const auto* p = reinterpret_cast<const unsigned char*>(data_.data() + pos_);
  pos_ += 4;
  return static_cast<std::int32_t>(read_u32(p));
}

std::string_view Reader::str() {
  if (failed_) return {};
  const std::size_t nul = data_.find('\0', pos_);
  if (nul == std::string_view::npos) {
    failed_ = true;
    return {};
  }
  std::string_view s = data_.substr(pos_, nul - pos_);
  pos_ = nul + 1;
  return s;
}

std::string_view Reader::bytes(std::size_t n) {
  if (failed_ || data_.size() - pos_ < n) {
    failed_ = true;
    return {};
  }
  std::string_view s = data_.substr(pos_, n);
  pos_ += n;
  return s;
}

std::string_view Reader::rest() {
  std::string_view s = data_.substr(pos_);
  pos_ = data_.size();
  return s;
}

void append_error(std::string& out, const ErrorFields& f) {
  Writer w(out);
  w.begin(be::kErrorResponse);
  w.i8('S').str(f.severity);
  w.i8('V').str(f.severity);  // non-localized severity (PostgreSQL 9.6+)
  w.i8('C').str(f.sqlstate);
  w.i8('M').str(f.message);
  if (!f.detail.empty()) w.i8('D').str(f.detail);
  if (!f.hint.empty()) w.i8('H').str(f.hint);
  w.i8(0);
  w.end();
}

void append_ready_for_query(std::string& out, char tx_status) {
  Writer(out).begin(be::kReadyForQuery).i8(static_cast<std::uint8_t>(tx_status)).end();
}

void append_parameter_status(std::string& out, std::string_view name, std::string_view value) {
  Writer(out).begin(be::kParameterStatus).str(name).str(value).end();
}

void append_backend_key_data(std::string& out, std::int32_t pid, std::int32_t key) {
  Writer(out).begin(be::kBackendKeyData).i32(pid).i32(key).end();
}

void append_auth(std::string& out, AuthCode code, std::string_view payload) {
  Writer(out).begin(be::kAuthentication).i32(static_cast<std::int32_t>(code)).bytes(payload).end();
}

ParsedError parse_error(std::string_view body) {
  ParsedError e;
  Reader r(body);
  while (!r.failed() && !r.done()) {
    const std::uint8_t field = r.i8();
    if (field == 0) break;
    std::string_view v = r.str();
    switch (field) {
      case 'V': e.severity = v; break;
      case 'S': if (e.severity.empty()) e.severity = v; break;
      case 'C': e.sqlstate = v; break;
      case 'M': e.message = v; break;
      default: break;
    }
  }
  return e;
}

const std::string* StartupPacket::param(std::string_view name) const {
  for (const auto& [k, v] : params) {
    if (k == name) return &v;
  }
  return nullptr;
}

StartupParse parse_startup(std::string_view data) {
  StartupParse res;
  if (data.size() < 4) return res;
  const auto* p = reinterpret_cast<const unsigned char*>(data.data());
  const std::uint32_t len = read_u32(p);
  if (len < 8 || len > kMaxStartupLength) {
    res.status = StartupParse::Status::kMalformed;
    res.error = "invalid length of startup packet";
    return res;
  }
  if (data.size() < len) return res;
  Reader r(data.substr(4, len - 4));
  const std::int32_t code = r.i32();
  res.consumed = len;
  res.status = StartupParse::Status::kOk;
  StartupPacket& pkt = res.packet;
  if (code == kSSLRequestCode || code == kGSSENCRequestCode) {
    pkt.kind = code == kSSLRequestCode ? StartupPacket::Kind::kSSLRequest
                                       : StartupPacket::Kind::kGSSENCRequest;
    if (len != 8) {
      res.status = StartupParse::Status::kMalformed;
      res.error = "invalid length of SSL or GSS encryption request";
    }
    return res;
  }
  if (code == kCancelRequestCode) {
    pkt.kind = StartupPacket::Kind::kCancel;
    pkt.cancel_pid = r.i32();
    pkt.cancel_key = r.i32();
    if (r.failed() || len != 16) {
      res.status = StartupParse::Status::kMalformed;
      res.error = "invalid length of cancel request";
    }
    return res;
  }
  pkt.kind = StartupPacket::Kind::kStartup;
  pkt.version = code;
  if ((code >> 16) != 3) return res;  // not v3: the caller refuses it by version
  // Parameters: name\0value\0 pairs, terminated by an empty name (§55.7 StartupMessage).
  while (true) {
    std::string_view name = r.str();
    if (r.failed()) {
      res.status = StartupParse::Status::kMalformed;
      res.error = "invalid startup packet layout: expected terminator as last byte";
      return res;
    }
    if (name.empty()) break;
    std::string_view value = r.str();
    if (r.failed()) {
      res.status = StartupParse::Status::kMalformed;
      res.error = "invalid startup packet layout: missing value for parameter";
      return res;
    }
    pkt.params.emplace_back(std::string(name), std::string(value));
  }
  if (!r.done()) {
    res.status = StartupParse::Status::kMalformed;
    res.error = "invalid startup packet layout: expected terminator as last byte";
  }
  return res;
}

}  // namespace pgkeel::protocol
