#include "proxy/auth_session.h"

#include <cstring>

#include "proxy/auth/md5.h"
#include "proxy/auth/scram.h"
#include "proxy/protocol/message.h"

namespace pgkeel::proxy {

std::optional<UserAuth> make_user_auth(const std::string& name, const std::string& secret, std::string& error) {
  UserAuth a;
  a.name = name;
  if (secret.rfind("SCRAM-SHA-256$", 0) == 0) {
    auto v = auth::parse_scram_verifier(secret);
    if (!v) {
      error = "malformed SCRAM verifier";
      return std::nullopt;
    }
    a.kind = UserAuth::Kind::kScramVerifier;
    a.verifier = std::move(*v);
  } else if (auth::is_md5_hash(secret)) {
    a.kind = UserAuth::Kind::kMd5Hash;
    a.md5_hash = secret;
  } else {
    a.kind = UserAuth::Kind::kPassword;
    a.password = secret;
    auto v = auth::make_scram_verifier(secret);
    auto h = auth::md5_password_hash(name, secret);
    if (!v || !h) {
      error = "could not derive keys";
      return std::nullopt;
    }
    a.verifier = std::move(*v);
    a.md5_hash = std::move(*h);
  }
  return a;
}

AuthSession::AuthSession(const Shared& shared, std::string user, Method method, std::shared_ptr<const UserAuth> looked_up)
    : shared_(shared), user_(std::move(user)), users_(shared.users()), looked_up_(std::move(looked_up)), method_(method) {
  auto it = users_->find(user_);
  if (it != users_->end()) {
    user_auth_ = &it->second;
  } else if (looked_up_) {
    user_auth_ = looked_up_.get();
  }
}

AuthSession::Step AuthSession::fail(std::string sqlstate, std::string message, std::string log_reason) {
  Step s;
  s.failed = true;
  s.sqlstate = std::move(sqlstate);
  s.message = std::move(message);
  s.log_reason = std::move(log_reason);
  return s;
}

AuthSession::Step AuthSession::begin() {
  Step s;
  const UserAuth::Kind kind = user_auth_ != nullptr ? user_auth_->kind : UserAuth::Kind::kScramVerifier;
  switch (method_) {
    case Method::kTrust: {
      // No password from the client; servers are logged in to with what the users file holds.
      cred_.user = user_;
      if (user_auth_ != nullptr) {
        cred_.password = user_auth_->password;
        cred_.md5_hash = user_auth_->md5_hash;
        if (kind == UserAuth::Kind::kPassword) cred_.scram = auth::ScramSecret{user_auth_->password, std::nullopt};
      }
      protocol::append_auth(s.out, protocol::AuthCode::kOk);
      s.done = true;
      return s;
    }
    case Method::kPassword:
      protocol::append_auth(s.out, protocol::AuthCode::kCleartextPassword);
      expect_ = Expect::kCleartext;
      return s;
    case Method::kMd5:
      // As PostgreSQL: md5 with a SCRAM secret stored means SCRAM.
      if (user_auth_ != nullptr && kind != UserAuth::Kind::kScramVerifier) return begin_md5(std::move(s));
      return begin_scram(std::move(s));
    case Method::kScram:
      if (kind == UserAuth::Kind::kMd5Hash) {
        // PostgreSQL cannot do SCRAM from an md5 hash either; fail after a mock exchange.
        scram_.emplace(auth::ScramServer::mock(user_, shared_.mock_secret));
        user_auth_ = nullptr;
        mismatch_ = true;
      }
      return begin_scram(std::move(s));
    case Method::kAuto:
      break;
  }
  if (user_auth_ != nullptr && kind == UserAuth::Kind::kMd5Hash) return begin_md5(std::move(s));
  return begin_scram(std::move(s));
}

AuthSession::Step AuthSession::begin_md5(Step s) {
  unsigned char salt[4];
  if (!auth::random_bytes(salt)) return fail("XX000", "could not generate an md5 salt", "random_bytes failed");
  md5_salt_.assign(reinterpret_cast<const char*>(salt), 4);
  protocol::append_auth(s.out, protocol::AuthCode::kMD5Password, md5_salt_);
  expect_ = Expect::kMd5;
  return s;
}

AuthSession::Step AuthSession::begin_scram(Step s) {
  if (!scram_) {
    if (user_auth_ == nullptr) {
      // Unknown user: a full-looking SCRAM exchange that fails like a wrong password, so probing
      // cannot tell the two apart (as PostgreSQL does).
      scram_.emplace(auth::ScramServer::mock(user_, shared_.mock_secret));
    } else {
      scram_.emplace(user_auth_->verifier);
    }
  }
  std::string mechs(auth::kScramSha256);
  mechs.append(2, '\0');
  protocol::append_auth(s.out, protocol::AuthCode::kSASL, mechs);
  expect_ = Expect::kSaslInitial;
  return s;
}

// hba method "password": the client sent its password in the clear (over TLS, one hopes).
AuthSession::Step AuthSession::check_cleartext(std::string_view password) {
  const std::string failed_msg = "password authentication failed for user \"" + user_ + "\"";
  if (user_auth_ == nullptr) return fail("28P01", failed_msg, "unknown user");
  bool ok = false;
  std::string refused;  // why the stored secret could not be checked at all
  switch (user_auth_->kind) {
    case UserAuth::Kind::kPassword:
      ok = auth::equal_constant_time(password, user_auth_->password);
      break;
    case UserAuth::Kind::kMd5Hash: {
      const auto h = auth::md5_password_hash(user_, password);
      ok = h && auth::equal_constant_time(*h, user_auth_->md5_hash);
      break;
    }
    case UserAuth::Kind::kScramVerifier:
      ok = auth::check_scram_password(user_auth_->verifier, password, &refused).has_value();
      break;
  }
  if (!ok) return fail("28P01", failed_msg, refused.empty() ? "cleartext password did not match" : refused);
  // The password itself is now known: servers can be logged in to by any method.
  cred_.user = user_;
  cred_.password = std::string(password);
  const auto h = auth::md5_password_hash(user_, password);
  if (h) cred_.md5_hash = *h;
  cred_.scram = auth::ScramSecret{std::string(password), std::nullopt};
  return {};
}

AuthSession::Step AuthSession::handle(char type, std::string_view body) {
  if (type != protocol::fe::kPassword) {
    return fail("08P01", std::string("expected password response, got message type ") + type, "unexpected message");
  }
  const std::string failed_msg = "password authentication failed for user \"" + user_ + "\"";
  Step s;
  switch (expect_) {
    case Expect::kCleartext: {
      protocol::Reader r(body);
      std::string_view password = r.str();
      if (r.failed()) return fail("08P01", "malformed password message", "malformed PasswordMessage");
      Step checked = check_cleartext(password);
      if (checked.failed) return checked;
      break;
    }
    case Expect::kSaslInitial: {
      protocol::Reader r(body);
      std::string_view mech = r.str();
      const std::int32_t len = r.i32();
      std::string_view data = r.rest();
      if (r.failed() || (len >= 0 && static_cast<std::size_t>(len) != data.size())) {
        return fail("08P01", "malformed SASLInitialResponse message", "malformed SASLInitialResponse");
      }
      if (mech != auth::kScramSha256) {
        return fail("28000", "client selected an invalid SASL authentication mechanism", "bad mechanism");
      }
      auth::ScramStep step = scram_->handle_client_first(data);
      if (!step.ok()) {
        const bool proto = step.failure == auth::ScramFailure::kProtocol;
        return fail(proto ? "08P01" : "28P01", proto ? step.error : failed_msg, step.error);
      }
      protocol::append_auth(s.out, protocol::AuthCode::kSASLContinue, step.message);
      expect_ = Expect::kSaslFinal;
      return s;
    }
    case Expect::kSaslFinal: {
      auth::ScramStep step = scram_->handle_client_final(body);
      if (!step.ok() || user_auth_ == nullptr || !step.keys) {
        const bool proto = step.failure == auth::ScramFailure::kProtocol;
        const std::string why = mismatch_ ? "scram-sha-256 rule, but the users file holds an md5 hash for this user"
                                : step.ok() ? "unknown user"
                                            : step.error;
        return fail(proto ? "08P01" : "28P01", proto ? step.error : failed_msg, why);
      }
      protocol::append_auth(s.out, protocol::AuthCode::kSASLFinal, step.message);
      cred_.user = user_;
      auth::ScramSecret secret;
      secret.keys = *step.keys;
      if (user_auth_->kind == UserAuth::Kind::kPassword) {
        secret.password = user_auth_->password;
        cred_.password = user_auth_->password;
        cred_.md5_hash = user_auth_->md5_hash;
      }
      cred_.scram = std::move(secret);
      scram_.reset();
      break;
    }
    case Expect::kMd5: {
      protocol::Reader r(body);
      std::string_view response = r.str();
      auth::Md5Salt salt{};
      std::memcpy(salt.data(), md5_salt_.data(), 4);
      if (r.failed() || user_auth_ == nullptr ||
          !auth::md5_check_response(response, user_auth_->md5_hash, user_, salt)) {
        return fail("28P01", failed_msg, "md5 response did not match");
      }
      cred_.user = user_;
      cred_.md5_hash = user_auth_->md5_hash;
      break;
    }
    case Expect::kNone:
      return fail("08P01", "unexpected authentication message", "no exchange in progress");
  }
  expect_ = Expect::kNone;
  protocol::append_auth(s.out, protocol::AuthCode::kOk);
  s.done = true;
  return s;
}

}  // namespace pgkeel::proxy
