// tools/fuzz/fuzz_frames.cc — the frame scanner (proxy/protocol/scanner.h) on untrusted streams
// in either direction, with the watch sets client.cc and server.cc use and the parsers they run
// on what it reports. Nothing may crash, hang or read out of bounds, and the scanner must report
// the same messages however the stream is cut into reads (§55.7: type byte + int32 length). A
// message longer than the capture limit is reported whole when one read holds all of it, else
// with its first kCaptureLimit bytes; for the types the client follows (Query, Parse) the rest
// then comes in pieces, so head and rest add up to the same bytes either way.
//
// Input: byte 0 picks the read size (1 + low 6 bits) and the direction (bit 7: backend, else
// frontend); the rest is the stream.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "proxy/protocol/message.h"
#include "proxy/protocol/scanner.h"

namespace {

using namespace pgkeel::protocol;

struct Seen {
  char type;
  std::uint32_t length;
  bool truncated;
  std::string body;
  std::string rest;  // a followed message's pieces after its head, concatenated
  bool operator==(const Seen& o) const {
    if (type != o.type || length != o.length) return false;
    const std::string all = body + rest;
    const std::string other = o.body + o.rest;
    if (type == fe::kQuery || type == fe::kParse || (!truncated && !o.truncated)) return all == other;
    // Not followed: one side may hold only the first kCaptureLimit bytes.
    const std::size_t n = std::min(all.size(), other.size());
    return n >= std::min<std::size_t>(Scanner::kCaptureLimit, length - 4) && all.compare(0, n, other, 0, n) == 0;
  }
};

struct Outcome {
  std::vector<Seen> messages;
  bool malformed = false;
};

// What the proxy does with a reported message: the backend side reads ReadyForQuery's status,
// ParameterStatus's two strings and ErrorResponse's fields; the frontend side stops at Terminate.
ScanAction inspect(const ScannedMessage& m, bool backend) {
  if (m.rest) return ScanAction::kContinue;
  if (m.truncated && m.body.size() != Scanner::kCaptureLimit) std::abort();
  if (!m.truncated && m.body.size() + 4 != m.length) std::abort();
  if (backend) {
    Reader r(m.body);
    if (m.type == be::kReadyForQuery) {
      (void)r.i8();
    } else if (m.type == be::kParameterStatus) {
      (void)r.str();
      (void)r.str();
    } else if (m.type == be::kErrorResponse) {
      (void)parse_error(m.body);
    }
    return ScanAction::kContinue;
  }
  return m.type == fe::kTerminate ? ScanAction::kStop : ScanAction::kContinue;
}

void watch_as_proxy(Scanner& s, bool backend) {
  if (backend) {
    for (char t : {be::kReadyForQuery, be::kParameterStatus, be::kErrorResponse, be::kCommandComplete,
                   be::kCopyInResponse}) {
      s.watch(t);
    }
  } else {
    for (char t : {fe::kTerminate, fe::kQuery, fe::kFunctionCall, fe::kSync, fe::kParse, fe::kBind,
                   fe::kExecute, fe::kDescribe, fe::kClose, fe::kFlush, fe::kCopyDone, fe::kCopyFail}) {
      s.watch(t);
    }
    s.follow(fe::kQuery);
    s.follow(fe::kParse);
  }
}

// Scans `stream` in reads of `chunk` bytes until the end, a malformed frame or a stop.
Outcome scan_in_reads(const std::uint8_t* stream, std::size_t size, std::size_t chunk,
                      bool backend) {
  Outcome out;
  Scanner s;
  watch_as_proxy(s, backend);
  for (std::size_t pos = 0; pos < size;) {
    const std::size_t n = std::min(chunk, size - pos);
    const ScanResult r = s.scan(stream + pos, n, [&](const ScannedMessage& m) {
      if (m.rest) {
        if (out.messages.empty() || !out.messages.back().truncated || out.messages.back().type != m.type) std::abort();
        out.messages.back().rest += m.body;
      } else {
        out.messages.push_back({m.type, m.length, m.truncated, std::string(m.body), {}});
      }
      return inspect(m, backend);
    });
    if (r.consumed > n) std::abort();
    if (r.status == ScanResult::Status::kMalformed) {
      out.malformed = true;
      break;
    }
    if (r.status == ScanResult::Status::kStopped) break;
    pos += n;
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::size_t chunk = 1 + (data[0] & 0x3f);
  const bool backend = (data[0] & 0x80) != 0;
  const Outcome small = scan_in_reads(data + 1, size - 1, chunk, backend);
  const Outcome whole = scan_in_reads(data + 1, size - 1, size, backend);
  if (small.malformed != whole.malformed) std::abort();
  // However the reads are cut: the same messages, the same heads, the same rest.
  if (small.messages.size() != whole.messages.size()) std::abort();
  for (std::size_t i = 0; i < small.messages.size(); ++i) {
    if (!(small.messages[i] == whole.messages[i])) std::abort();
  }
  return 0;
}
