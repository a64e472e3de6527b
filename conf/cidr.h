// conf/cidr.h — an IPv4 or IPv6 network in CIDR notation ("10.0.0.0/8", "::1/128", or a bare
// address meaning /32 or /128), parsed once and matched against client addresses.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string_view>

namespace pgkeel::conf {

struct Cidr {
  bool v6 = false;
  std::array<std::uint8_t, 16> addr{};  // network bytes (first 4 for IPv4)
  int prefix = 0;

  // Whether `bytes` (4 for IPv4, 16 for IPv6) lies in this network. An IPv4-mapped IPv6
  // address (::ffff:a.b.c.d) matches IPv4 networks.
  bool contains(const std::uint8_t* bytes, bool is_v6) const;
};

std::optional<Cidr> parse_cidr(std::string_view text);

}  // namespace pgkeel::conf
