// proxy/auth/crypto.h — the few OpenSSL primitives authentication needs, as pure functions.
// Every digest can fail inside OpenSSL (e.g. MD5 under a FIPS-only provider), so each result
// is optional: a failed digest must never be mistaken for a value that matches.
#pragma once

#include <array>
#include <cstddef>
#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace pgkeel::auth {

inline constexpr std::size_t kKeyLen = 32;  // SHA-256 output: every SCRAM key and digest

// A SHA-256-sized key or digest (ClientKey, StoredKey, ServerKey, proofs, signatures).
using Key = std::array<unsigned char, kKeyLen>;

// The key's bytes, for passing a Key where bytes are expected.
[[nodiscard]] inline std::string_view key_bytes(const Key& key) {
  return {reinterpret_cast<const char*>(key.data()), key.size()};
}

[[nodiscard]] std::optional<Key> sha256(std::string_view data);
[[nodiscard]] std::optional<Key> hmac_sha256(std::string_view key, std::string_view data);

// SCRAM's Hi(): PBKDF2 with HMAC-SHA-256, one 32-byte block. Fails for iterations < 1.
[[nodiscard]] std::optional<Key> pbkdf2_sha256(std::string_view password, std::string_view salt,
                                               int iterations);

// Lowercase hex of MD5(data), 32 characters.
[[nodiscard]] std::optional<std::string> md5_hex(std::string_view data);

// Fills `out` from OpenSSL's CSPRNG; false if it could not.
[[nodiscard]] bool random_bytes(std::span<unsigned char> out);

// Compares in time independent of the contents (lengths are not secret).
[[nodiscard]] bool equal_constant_time(std::string_view a, std::string_view b);

}  // namespace pgkeel::auth
