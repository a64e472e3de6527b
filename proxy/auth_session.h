// proxy/auth_session.h — pgkeel authenticating a connecting client, as a PostgreSQL server
// would (§55.2.1, §55.3): SCRAM-SHA-256 or md5, from the users file. Bytes in, bytes out, no
// socket: the data listeners and the console both drive it.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "proxy/auth/scram.h"
#include "proxy/shared.h"

namespace pgkeel::proxy {

// A user's secret as pg_authid stores it (SCRAM verifier, md5 hash) or a plaintext password,
// ready for logins; nullopt with `error` when it is malformed.
std::optional<UserAuth> make_user_auth(const std::string& name, const std::string& secret, std::string& error);

class AuthSession {
 public:
  // kAuto: no [[hba]] rules; the kind of secret stored decides (SCRAM verifier or plaintext:
  // SCRAM; md5 hash: md5). Otherwise the matching rule's method, as PostgreSQL applies it.
  enum class Method : std::uint8_t { kAuto, kScram, kMd5, kPassword, kTrust };

  // `looked_up`: the user's secret from [auth] query, used when the users file has none.
  AuthSession(const Shared& shared, std::string user, Method method = Method::kAuto,
              std::shared_ptr<const UserAuth> looked_up = nullptr);

  struct Step {
    std::string out;           // messages to send to the client now
    bool done = false;         // authenticated (AuthenticationOk is in `out`)
    bool failed = false;       // send a FATAL with these and close
    std::string sqlstate;
    std::string message;
    std::string log_reason;    // the detail for pgkeel's log, never for the client
  };

  // The first request: AuthenticationSASL (SCRAM-SHA-256) or AuthenticationMD5Password.
  Step begin();
  // One message from the client during authentication.
  Step handle(char type, std::string_view body);

  // After done: what server connections use to log in on this client's behalf.
  const ServerCredential& credential() const { return cred_; }
  bool known_user() const { return user_auth_ != nullptr; }

 private:
  Step fail(std::string sqlstate, std::string message, std::string log_reason);

  const Shared& shared_;
  std::string user_;
  std::shared_ptr<const UserMap> users_;  // keeps user_auth_ alive across a reload
  std::shared_ptr<const UserAuth> looked_up_;
  const UserAuth* user_auth_ = nullptr;
  std::optional<auth::ScramServer> scram_;
  std::string md5_salt_;
  Step begin_scram(Step s);
  Step begin_md5(Step s);
  Step check_cleartext(std::string_view password);
  Method method_;
  bool mismatch_ = false;  // the rule's method cannot work with the stored secret
  enum class Expect : std::uint8_t { kNone, kSaslInitial, kSaslFinal, kMd5, kCleartext } expect_ = Expect::kNone;
  ServerCredential cred_;
};

}  // namespace pgkeel::proxy
