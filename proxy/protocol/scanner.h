// proxy/protocol/scanner.h — an incremental framer for one direction of a relayed stream.
// It walks message boundaries as bytes pass by, never copying what it need not look at:
// messages of selected types are handed to a callback whole, or, beyond a capture limit, as
// their first kCaptureLimit bytes once those have arrived (however the header and the body were
// cut between reads); everything else is only counted. Frames are type byte + int32 length (§55.7).
#pragma once

#include <array>
#include <bitset>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "proxy/protocol/message.h"

namespace pgkeel::protocol {

struct ScannedMessage {
  char type = 0;
  std::uint32_t length = 0;  // the length field: body + 4
  std::string_view body;     // complete unless truncated
  bool truncated = false;    // body longer than the capture limit; `body` holds its first kCaptureLimit bytes
  std::size_t start = 0;     // offset in the fed chunk where the message began (may be "before"
                             // the chunk when the header straddled reads: then 0)
  bool started_in_chunk = false;
  // A piece of the rest of a truncated message of a type marked with Scanner::follow(): `body`
  // is the next bytes after what was reported before (kStop is not honoured for these).
  bool rest = false;
};

enum class ScanAction { kContinue, kStop };

struct ScanResult {
  enum class Status { kOk, kStopped, kMalformed };
  Status status = Status::kOk;
  std::size_t consumed = 0;  // bytes of the chunk scanned; when kStopped and `clean`, the
                             // stopping message's start; when not clean, the end of it
  bool clean = true;         // kStopped: the stopping message began inside this chunk
  std::uint32_t bad_length = 0;
};

class Scanner {
 public:
  static constexpr std::size_t kCaptureLimit = 8192;

  // Only types marked here are reported to the callback.
  void watch(char type) { watched_.set(static_cast<unsigned char>(type)); }
  // A watched type whose truncated messages are followed to their end: after the head, the rest
  // of the body is reported too, piece by piece, as it passes (ScannedMessage::rest).
  void follow(char type) { followed_.set(static_cast<unsigned char>(type)); }
  void unwatch_all() { watched_.reset(); }

  // Walks `chunk`; calls `on_message(const ScannedMessage&) -> ScanAction` for each complete
  // watched message. On kStop, scanning ends before that message; the caller decides what to do
  // with the rest of the chunk (the scanner's state is reset to a message boundary).
  template <class OnMessage>
  ScanResult scan(const unsigned char* chunk, std::size_t n, OnMessage&& on_message);

  // True when the bytes scanned so far end exactly at a message boundary.
  bool at_boundary() const { return header_have_ == 0 && remaining_ == 0; }
  void reset() {
    header_have_ = 0;
    remaining_ = 0;
    capturing_ = false;
    truncating_ = false;
    following_ = false;
    capture_.clear();
  }
  // Type of the message whose body is being scanned (0 between messages).
  char current_type() const { return remaining_ > 0 ? type_ : 0; }
  // The message the bytes scanned so far end inside of: its type, how many of its bytes (header
  // included) were scanned, and its length field (0 while the header is incomplete). All zero
  // at a boundary.
  struct Partial {
    char type = 0;
    std::size_t scanned = 0;
    std::uint32_t length = 0;
  };
  Partial partial() const {
    if (header_have_ > 0) return {static_cast<char>(header_[0]), header_have_, 0};
    if (remaining_ > 0) return {type_, 5 + (length_ - 4 - remaining_), length_};
    return {};
  }

 private:
  std::bitset<256> watched_;
  std::bitset<256> followed_;
  std::array<unsigned char, 5> header_{};
  std::uint8_t header_have_ = 0;
  char type_ = 0;
  std::uint32_t length_ = 0;
  std::uint32_t remaining_ = 0;  // body bytes still to come of the current message
  bool capturing_ = false;
  bool truncating_ = false;      // capturing only the head of a message over the capture limit
  bool following_ = false;       // reporting the rest of a truncated message (follow())
  std::string capture_;          // body of a watched message that straddles chunks
};

template <class OnMessage>
ScanResult Scanner::scan(const unsigned char* chunk, std::size_t n, OnMessage&& on_message) {
  ScanResult res;
  std::size_t pos = 0;
  while (pos < n) {
    if (remaining_ == 0 && header_have_ == 0 && n - pos >= 5) {
      // Fast path: a whole header in the chunk.
      const std::size_t start = pos;
      type_ = static_cast<char>(chunk[pos]);
      length_ = read_u32(chunk + pos + 1);
      if (length_ < 4 || length_ > kMaxMessageLength) {
        res.status = ScanResult::Status::kMalformed;
        res.consumed = pos;
        res.bad_length = length_;
        return res;
      }
      pos += 5;
      const std::uint32_t body_len = length_ - 4;
      const bool watched = watched_.test(static_cast<unsigned char>(type_));
      if (watched && n - pos >= body_len) {
        ScannedMessage m{type_, length_,
                         std::string_view(reinterpret_cast<const char*>(chunk + pos), body_len),
                         false, start, true};
        if (on_message(m) == ScanAction::kStop) {
          res.status = ScanResult::Status::kStopped;
          res.consumed = start;
          return res;
        }
        pos += body_len;
        continue;
      }
      if (!watched && n - pos >= body_len) {
        pos += body_len;
        continue;
      }
      if (watched && body_len > kCaptureLimit && n - pos >= kCaptureLimit) {
        // Too big to hold: report its head now, as truncated, and skip the rest.
        ScannedMessage m{type_, length_, std::string_view(reinterpret_cast<const char*>(chunk + pos), kCaptureLimit),
                         true, start, true};
        if (on_message(m) == ScanAction::kStop) {
          res.status = ScanResult::Status::kStopped;
          res.consumed = start;
          return res;
        }
        capturing_ = false;
        following_ = followed_.test(static_cast<unsigned char>(type_));
        if (following_ && n - pos > kCaptureLimit) {
          ScannedMessage more{type_, length_,
                              std::string_view(reinterpret_cast<const char*>(chunk + pos + kCaptureLimit), n - pos - kCaptureLimit),
                              true, start, true, true};
          on_message(more);
        }
      } else {
        // Its body (or head) comes in later reads: captured until then.
        capturing_ = watched;
        truncating_ = watched && body_len > kCaptureLimit;
        if (watched) capture_.assign(reinterpret_cast<const char*>(chunk + pos), n - pos);
      }
      remaining_ = body_len - static_cast<std::uint32_t>(n - pos);
      pos = n;
      continue;
    }
    if (remaining_ == 0) {
      // Slow path: assemble a header that straddles chunks.
      while (header_have_ < 5 && pos < n) header_[header_have_++] = chunk[pos++];
      if (header_have_ < 5) break;
      header_have_ = 0;
      type_ = static_cast<char>(header_[0]);
      length_ = read_u32(header_.data() + 1);
      if (length_ < 4 || length_ > kMaxMessageLength) {
        res.status = ScanResult::Status::kMalformed;
        res.consumed = pos;
        res.bad_length = length_;
        return res;
      }
      remaining_ = length_ - 4;
      capturing_ = watched_.test(static_cast<unsigned char>(type_));
      truncating_ = capturing_ && remaining_ > kCaptureLimit;  // reported at kCaptureLimit bytes
      following_ = false;
      capture_.clear();
      if (remaining_ == 0 && capturing_) {
        capturing_ = false;
        ScannedMessage m{type_, length_, {}, false, 0, false};
        if (on_message(m) == ScanAction::kStop) {
          res.status = ScanResult::Status::kStopped;
          res.consumed = pos;
          res.clean = false;
          return res;
        }
      }
      continue;
    }
    // Inside a body.
    const std::size_t take = std::min<std::size_t>(remaining_, n - pos);
    std::size_t keep = 0;  // bytes of `take` that went to the capture
    if (capturing_) {
      keep = truncating_ ? std::min(take, kCaptureLimit - capture_.size()) : take;
      capture_.append(reinterpret_cast<const char*>(chunk + pos), keep);
    } else if (following_) {
      ScannedMessage more{type_, length_, std::string_view(reinterpret_cast<const char*>(chunk + pos), take),
                          true, 0, false, true};
      on_message(more);
    }
    const std::size_t after_head = pos + keep;  // where a truncated head ends in this chunk
    pos += take;
    remaining_ -= static_cast<std::uint32_t>(take);
    if (remaining_ == 0 && !capturing_) following_ = false;
    if (capturing_ && (remaining_ == 0 || (truncating_ && capture_.size() >= kCaptureLimit))) {
      capturing_ = false;
      ScannedMessage m{type_, length_, capture_, truncating_, 0, false};
      following_ = truncating_ && followed_.test(static_cast<unsigned char>(type_));
      truncating_ = false;
      if (following_ && pos > after_head) {
        // The head was reported from this chunk: what of the chunk follows it is the rest's first piece.
        const ScanAction a = on_message(m);
        ScannedMessage more{type_, length_, std::string_view(reinterpret_cast<const char*>(chunk + after_head), pos - after_head),
                            true, 0, false, true};
        on_message(more);
        capture_.clear();
        if (remaining_ == 0) following_ = false;
        if (a == ScanAction::kStop) {
          res.status = ScanResult::Status::kStopped;
          res.consumed = pos;
          res.clean = false;
          return res;
        }
        continue;
      }
      if (on_message(m) == ScanAction::kStop) {
        // The message began before this chunk; stopping can only end after what was read of it.
        capture_.clear();
        res.status = ScanResult::Status::kStopped;
        res.consumed = pos;
        res.clean = false;
        return res;
      }
      capture_.clear();
    }
  }
  res.consumed = n;
  return res;
}

}  // namespace pgkeel::protocol
