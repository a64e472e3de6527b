// libFuzzer target: the frame scanner (both directions' watch sets, random chunking) and the
// startup packet parser must never crash, loop or read out of bounds on any input.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "proxy/protocol/message.h"
#include "proxy/protocol/scanner.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace pgkeel::protocol;
  (void)parse_startup(std::string_view(reinterpret_cast<const char*>(data), size));
  if (size == 0) return 0;
  // The first byte picks a chunk size, so split headers and bodies are explored too.
  const std::size_t chunk = 1 + data[0] % 64;
  Scanner s;
  for (char t : {'Z', 'S', 'E', 'X', 'Q'}) s.watch(t);
  std::size_t pos = 1;
  while (pos < size) {
    const std::size_t n = std::min(chunk, size - pos);
    ScanResult r = s.scan(data + pos, n, [](const ScannedMessage& m) {
      if (m.type == 'E') (void)parse_error(m.body);
      return m.type == 'X' ? ScanAction::kStop : ScanAction::kContinue;
    });
    if (r.status == ScanResult::Status::kMalformed) break;
    if (r.status == ScanResult::Status::kStopped) s.reset();
    pos += n;
  }
  return 0;
}
