// tools/fuzz/fuzz_startup.cc — the first packet of a connection (parse_startup, §55.2.1 and
// §55.7: StartupMessage, SSLRequest, GSSENCRequest, CancelRequest) from untrusted bytes. Nothing
// may crash or read out of bounds; a packet is accepted only whole (every shorter prefix needs
// more or is malformed); an accepted StartupMessage survives being written out and parsed again.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "proxy/protocol/message.h"

namespace {

using namespace pgkeel::protocol;

void put_u32(std::string& out, std::uint32_t v) {
  unsigned char b[4];
  write_u32(b, v);
  out.append(reinterpret_cast<const char*>(b), 4);
}

// The packet a client would send for these parameters.
std::string rebuild(const StartupPacket& p) {
  std::string body;
  put_u32(body, static_cast<std::uint32_t>(p.version));
  for (const auto& [k, v] : p.params) {
    body.append(k).push_back('\0');
    body.append(v).push_back('\0');
  }
  body.push_back('\0');
  std::string out;
  put_u32(out, static_cast<std::uint32_t>(body.size() + 4));
  return out + body;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  const StartupParse r = parse_startup(input);
  if (r.status == StartupParse::Status::kMalformed && r.error.empty()) std::abort();
  if (r.status != StartupParse::Status::kOk) return 0;
  if (r.consumed < 8 || r.consumed > size || r.consumed > kMaxStartupLength) std::abort();
  // A read that ends one byte short must never be taken for a packet.
  if (parse_startup(input.substr(0, r.consumed - 1)).status == StartupParse::Status::kOk) {
    std::abort();
  }
  if (r.packet.kind == StartupPacket::Kind::kStartup) {
    const StartupParse again = parse_startup(rebuild(r.packet));
    if (again.status != StartupParse::Status::kOk || again.packet.params != r.packet.params ||
        again.packet.version != r.packet.version) {
      std::abort();
    }
  }
  return 0;
}
