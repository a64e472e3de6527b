#include "conf/cidr.h"

#include <arpa/inet.h>

#include <charconv>
#include <cstring>
#include <string>

namespace pgkeel::conf {

std::optional<Cidr> parse_cidr(std::string_view text) {
  Cidr c;
  std::string_view host = text;
  int prefix = -1;
  if (const std::size_t slash = text.find('/'); slash != std::string_view::npos) {
    host = text.substr(0, slash);
    const std::string_view p = text.substr(slash + 1);
    if (p.empty() || std::from_chars(p.data(), p.data() + p.size(), prefix).ptr != p.data() + p.size()) {
      return std::nullopt;
    }
  }
  const std::string h(host);
  if (inet_pton(AF_INET, h.c_str(), c.addr.data()) == 1) {
    c.v6 = false;
    if (prefix < 0) prefix = 32;
    if (prefix > 32) return std::nullopt;
  } else if (inet_pton(AF_INET6, h.c_str(), c.addr.data()) == 1) {
    c.v6 = true;
    if (prefix < 0) prefix = 128;
    if (prefix > 128) return std::nullopt;
  } else {
    return std::nullopt;
  }
  c.prefix = prefix;
  return c;
}

bool Cidr::contains(const std::uint8_t* bytes, bool is_v6) const {
  static constexpr std::uint8_t kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  if (is_v6 && !v6 && std::memcmp(bytes, kMapped, 12) == 0) {
    bytes += 12;  // ::ffff:a.b.c.d against an IPv4 network
    is_v6 = false;
  }
  if (is_v6 != v6) return false;
  const int full = prefix / 8;
  if (std::memcmp(bytes, addr.data(), static_cast<std::size_t>(full)) != 0) return false;
  const int rest = prefix % 8;
  if (rest == 0) return true;
  const auto mask = static_cast<std::uint8_t>(0xff << (8 - rest));
  return (bytes[full] & mask) == (addr[static_cast<std::size_t>(full)] & mask);
}

}  // namespace pgkeel::conf
