// tools/fuzz/fuzz_frames.cc — the frame scanner (proxy/protocol/scanner.h) on untrusted streams
// in either direction, with the watch sets client.cc and server.cc use and the parsers they run
// on what it reports. Nothing may crash, hang or read out of bounds, and the scanner must report
// the same messages however the stream is cut into reads (§55.7: type byte + int32 length); a
// message too long to capture may carry less of its start in smaller reads.
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
  // A truncated body is "its start": as much as the read held, so only a prefix must agree.
  bool operator==(const Seen& o) const {
    if (type != o.type || length != o.length || truncated != o.truncated) return false;
    if (!truncated) return body == o.body;
    const std::size_t n = std::min(body.size(), o.body.size());
    return body.compare(0, n, o.body, 0, n) == 0;
  }
};

struct Outcome {
  std::vector<Seen> messages;
  bool malformed = false;
};

// What the proxy does with a reported message: the backend side reads ReadyForQuery's status,
// ParameterStatus's two strings and ErrorResponse's fields; the frontend side stops at Terminate.
ScanAction inspect(const ScannedMessage& m, bool backend) {
  if (m.body.size() > Scanner::kCaptureLimit) std::abort();
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
    for (char t : {be::kReadyForQuery, be::kParameterStatus, be::kErrorResponse}) s.watch(t);
  } else {
    for (char t : {fe::kTerminate, fe::kQuery, fe::kFunctionCall, fe::kSync, fe::kParse, fe::kBind,
                   fe::kExecute, fe::kDescribe, fe::kClose, fe::kFlush}) {
      s.watch(t);
    }
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
      out.messages.push_back({m.type, m.length, m.truncated, std::string(m.body)});
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
  // A watched message longer than the capture limit is reported from its first read when that
  // read also held its header, but only after more of its body when the header came in pieces:
  // at the end of the input one side may not have reported it yet.
  const std::vector<Seen>& shorter =
      small.messages.size() <= whole.messages.size() ? small.messages : whole.messages;
  const std::vector<Seen>& longer = &shorter == &small.messages ? whole.messages : small.messages;
  if (longer.size() - shorter.size() > 1) std::abort();
  if (longer.size() > shorter.size() && !longer.back().truncated) std::abort();
  for (std::size_t i = 0; i < shorter.size(); ++i) {
    if (!(shorter[i] == longer[i])) std::abort();
  }
  return 0;
}
