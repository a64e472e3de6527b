#include "proxy/auth/crypto.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <climits>

namespace pgkeel::auth {
namespace {

const unsigned char* uchars(std::string_view s) {
  return reinterpret_cast<const unsigned char*>(s.data());
}

std::optional<Key> digest_sha256(std::string_view data) {
  Key out{};
  unsigned int len = 0;
  if (EVP_Digest(data.data(), data.size(), out.data(), &len, EVP_sha256(), nullptr) != 1 ||
      len != out.size()) {
    return std::nullopt;
  }
  return out;
}

}  // namespace

std::optional<Key> sha256(std::string_view data) { return digest_sha256(data); }

std::optional<Key> hmac_sha256(std::string_view key, std::string_view data) {
  if (key.size() > INT_MAX) {
    return std::nullopt;
  }
  Key out{};
  unsigned int len = 0;
  if (HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()), uchars(data), data.size(),
           out.data(), &len) == nullptr ||
      len != out.size()) {
    return std::nullopt;
  }
  return out;
}

std::optional<Key> pbkdf2_sha256(std::string_view password, std::string_view salt, int iterations) {
  if (iterations < 1 || password.size() > INT_MAX || salt.size() > INT_MAX) {
    return std::nullopt;
  }
  Key out{};
  if (PKCS5_PBKDF2_HMAC(password.data(), static_cast<int>(password.size()), uchars(salt),
                        static_cast<int>(salt.size()), iterations, EVP_sha256(),
                        static_cast<int>(out.size()), out.data()) != 1) {
    return std::nullopt;
  }
  return out;
}

std::optional<std::string> md5_hex(std::string_view data) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (EVP_Digest(data.data(), data.size(), digest, &len, EVP_md5(), nullptr) != 1 || len != 16) {
    return std::nullopt;
  }
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(std::size_t{2} * len);
  for (unsigned int i = 0; i < len; ++i) {
    out += kHex[digest[i] >> 4];
    out += kHex[digest[i] & 0xf];
  }
  return out;
}

bool random_bytes(std::span<unsigned char> out) {
  if (out.size() > INT_MAX) {
    return false;
  }
  return RAND_bytes(out.data(), static_cast<int>(out.size())) == 1;
}

bool equal_constant_time(std::string_view a, std::string_view b) {
  return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

}  // namespace pgkeel::auth
