#include "proxy/auth/md5.h"

#include "proxy/auth/crypto.h"

namespace pgkeel::auth {

namespace {
constexpr std::string_view kPrefix = "md5";
constexpr std::size_t kHashLen = 35;  // "md5" + 32 hex digits
constexpr std::string_view kScramPrefix = "SCRAM-SHA-256$";
}  // namespace

bool is_md5_hash(std::string_view s) {
  if (s.size() != kHashLen || !s.starts_with(kPrefix)) {
    return false;
  }
  for (char c : s.substr(kPrefix.size())) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) {
      return false;
    }
  }
  return true;
}

std::optional<std::string> md5_password_hash(std::string_view user, std::string_view password) {
  std::string input;
  input.reserve(password.size() + user.size());
  input.append(password).append(user);
  auto hex = md5_hex(input);
  if (!hex) {
    return std::nullopt;
  }
  return std::string(kPrefix) + *hex;
}

std::optional<std::string> md5_response(std::string_view md5_hash, const Md5Salt& salt) {
  if (!is_md5_hash(md5_hash)) {
    return std::nullopt;
  }
  std::string input(md5_hash.substr(kPrefix.size()));
  input.append(reinterpret_cast<const char*>(salt.data()), salt.size());
  auto hex = md5_hex(input);
  if (!hex) {
    return std::nullopt;
  }
  return std::string(kPrefix) + *hex;
}

bool md5_check_response(std::string_view client_response, std::string_view stored,
                        std::string_view user, const Md5Salt& salt) {
  if (stored.empty() || stored.starts_with(kScramPrefix)) {
    return false;
  }
  std::optional<std::string> hash;
  if (is_md5_hash(stored)) {
    hash = std::string(stored);
  } else {
    hash = md5_password_hash(user, stored);
  }
  if (!hash) {
    return false;
  }
  const auto expected = md5_response(*hash, salt);
  return expected && equal_constant_time(*expected, client_response);
}

}  // namespace pgkeel::auth
