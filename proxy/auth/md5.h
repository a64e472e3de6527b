// proxy/auth/md5.h — PostgreSQL's md5 password method, both as server (checking a client)
// and as client (answering AuthenticationMD5Password). Protocol docs §55.2.1 (Authentication).
#pragma once

#include <array>
#include <optional>
#include <string>
#include <string_view>

namespace pgkeel::auth {

using Md5Salt = std::array<unsigned char, 4>;  // from AuthenticationMD5Password

// True for the form pg_authid stores: "md5" and 32 lowercase hex digits (PostgreSQL's test).
[[nodiscard]] bool is_md5_hash(std::string_view s);

// "md5" + hex(md5(password + user)): what pg_authid stores for an md5 password.
[[nodiscard]] std::optional<std::string> md5_password_hash(std::string_view user,
                                                           std::string_view password);

// The PasswordMessage answering AuthenticationMD5Password: "md5" + hex(md5(hex + salt)), where
// hex is the stored hash without its "md5" prefix. Needs no plaintext; nullopt if `md5_hash` is
// not in the stored form.
[[nodiscard]] std::optional<std::string> md5_response(std::string_view md5_hash,
                                                      const Md5Salt& salt);

// Server side: does a client's md5 answer match `stored` — an "md5..." hash, or else a plaintext
// password (as PostgreSQL, a 35-character "md5<hex>" is always taken to be a hash)? Always false
// for an empty `stored` and for anything starting "SCRAM-SHA-256$": a verifier cannot check an
// md5 answer, and taking it for a plaintext would let whoever read the users file log in.
[[nodiscard]] bool md5_check_response(std::string_view client_response, std::string_view stored,
                                      std::string_view user, const Md5Salt& salt);

}  // namespace pgkeel::auth
