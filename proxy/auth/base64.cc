#include "proxy/auth/base64.h"

#include <algorithm>
#include <array>
#include <cstdint>

namespace pgkeel::auth {
namespace {

constexpr std::string_view kAlphabet =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

constexpr int kInvalid = -1;

constexpr std::array<int, 256> make_reverse() {
  std::array<int, 256> table{};
  for (int& v : table) {
    v = kInvalid;
  }
  for (std::size_t i = 0; i < kAlphabet.size(); ++i) {
    table[static_cast<unsigned char>(kAlphabet[i])] = static_cast<int>(i);
  }
  return table;
}

constexpr std::array<int, 256> kReverse = make_reverse();

}  // namespace

std::string base64_encode(std::string_view bytes) {
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  for (std::size_t i = 0; i < bytes.size(); i += 3) {
    const std::size_t chunk = std::min<std::size_t>(3, bytes.size() - i);
    std::uint32_t n = 0;
    for (std::size_t j = 0; j < chunk; ++j) {
      n |= std::uint32_t{static_cast<unsigned char>(bytes[i + j])} << (16 - 8 * j);
    }
    // `chunk` bytes fill chunk + 1 characters; '=' pads the group to four.
    for (std::size_t j = 0; j < 4; ++j) {
      out += j <= chunk ? kAlphabet[(n >> (18 - 6 * j)) & 63] : '=';
    }
  }
  return out;
}

std::optional<std::string> base64_decode(std::string_view text) {
  if (text.size() % 4 != 0) {
    return std::nullopt;
  }
  std::string out;
  out.reserve(text.size() / 4 * 3);
  for (std::size_t i = 0; i < text.size(); i += 4) {
    const bool last = i + 4 == text.size();
    int pad = 0;
    if (last && text[i + 3] == '=') {
      pad = text[i + 2] == '=' ? 2 : 1;
    }
    std::uint32_t n = 0;
    for (std::size_t j = 0; j < 4 - static_cast<std::size_t>(pad); ++j) {
      const int v = kReverse[static_cast<unsigned char>(text[i + j])];
      if (v == kInvalid) {
        return std::nullopt;  // also catches '=' anywhere but the padding
      }
      n |= static_cast<std::uint32_t>(v) << (18 - 6 * j);
    }
    out += static_cast<char>((n >> 16) & 0xff);
    if (pad == 2) {
      if ((n & 0xffff) != 0) {
        return std::nullopt;  // non-zero padding bits: not canonical
      }
      continue;
    }
    out += static_cast<char>((n >> 8) & 0xff);
    if (pad == 1) {
      if ((n & 0xff) != 0) {
        return std::nullopt;
      }
      continue;
    }
    out += static_cast<char>(n & 0xff);
  }
  return out;
}

}  // namespace pgkeel::auth
