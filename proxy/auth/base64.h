// proxy/auth/base64.h — RFC 4648 base64 (standard alphabet, padded), as SCRAM and pg_authid use it.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace pgkeel::auth {

[[nodiscard]] std::string base64_encode(std::string_view bytes);

// Strict: only the canonical encoding is accepted (length a multiple of 4, '=' only as final
// padding, zero padding bits, no whitespace), so every accepted string re-encodes to itself.
// PostgreSQL's decoder also skips whitespace; no PostgreSQL or libpq encoder emits any.
[[nodiscard]] std::optional<std::string> base64_decode(std::string_view text);

}  // namespace pgkeel::auth
