// proxy/auth/scram.h — SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL speaks it, both ways:
// pgkeel as the server checking a client, and as the client logging in to a server, including
// pass-through (a client's recovered ClientKey logs in to servers without the plaintext).
// Protocol docs §55.3 (SASL Authentication) and §55.3.1 (SCRAM-SHA-256 Authentication).
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "proxy/auth/crypto.h"

namespace pgkeel::auth {

inline constexpr std::string_view kScramSha256 = "SCRAM-SHA-256";  // the SASL mechanism name
inline constexpr int kScramDefaultIterations = 4096;               // PostgreSQL's default
inline constexpr std::size_t kScramDefaultSaltLen = 16;            // PostgreSQL's default

// The most iterations pgkeel will run PBKDF2 for, whoever supplies the count: a server's
// server-first-message (password mode; pass-through never runs it) or a stored verifier checked
// against a plaintext password (hba method "password", the status port's Basic authentication).
// PostgreSQL 16 allows up to INT_MAX, but Hi() runs on an event loop at about 0.5 us per
// iteration here (4096, the default, is 2-3 ms; 1,000,000 measured 480 ms): a hostile or broken
// count must not freeze a loop for minutes. 1,000,000 is 244 times PostgreSQL's default and above
// the 600,000 OWASP asks of PBKDF2-HMAC-SHA256 (2023), so deliberately hardened verifiers still work.
inline constexpr int kScramMaxIterations = 1'000'000;

// Why pgkeel will not run PBKDF2 for `iterations` ("" when it will).
[[nodiscard]] std::string scram_iterations_refusal(int iterations);

// What pg_authid.rolpassword (and pgkeel's users file) holds for a SCRAM password:
// SCRAM-SHA-256$<iterations>:<base64 salt>$<base64 StoredKey>:<base64 ServerKey>
struct ScramVerifier {
  int iterations = 0;
  std::string salt;  // raw bytes
  Key stored_key{};
  Key server_key{};
};

[[nodiscard]] std::optional<ScramVerifier> parse_scram_verifier(std::string_view text);
// Byte-identical to the string PostgreSQL stores for the same salt, iterations and password.
[[nodiscard]] std::string format_scram_verifier(const ScramVerifier& verifier);

// Passwords are used as given. PostgreSQL first applies SASLprep, which leaves ASCII alone but
// may NFKC-normalise non-ASCII passwords; see the fragility note in scram.cc.
[[nodiscard]] std::optional<ScramVerifier> make_scram_verifier(std::string_view password,
                                                               std::string_view salt,
                                                               int iterations);
// With a fresh random salt of kScramDefaultSaltLen bytes and kScramDefaultIterations.
[[nodiscard]] std::optional<ScramVerifier> make_scram_verifier(std::string_view password);

// Derived keys for one salt and iteration count: all pgkeel needs to log in to a server whose
// verifier has that salt and count. Recovered from a client's SCRAM login (pass-through), or
// derived once from a password and kept to skip PBKDF2 on the next login.
struct ScramKeys {
  Key client_key{};
  Key server_key{};
  std::string salt;  // raw bytes
  int iterations = 0;

  bool operator==(const ScramKeys&) const = default;
};

// A client-side (pgkeel -> server) credential. With keys whose salt and iterations match the
// server's, they are used; otherwise the password, if any, is run through PBKDF2.
struct ScramSecret {
  std::optional<std::string> password;
  std::optional<ScramKeys> keys;

  bool operator==(const ScramSecret&) const = default;
};

// Checks a plaintext password (e.g. from AuthenticationCleartextPassword) against a verifier,
// as PostgreSQL does; on a match, returns the keys that log in to servers with this verifier.
// A verifier with more than kScramMaxIterations is refused without running PBKDF2; `why` (when
// given) then says so, and is empty for a plain mismatch.
[[nodiscard]] std::optional<ScramKeys> check_scram_password(const ScramVerifier& verifier,
                                                            std::string_view password,
                                                            std::string* why = nullptr);

// Why an exchange stopped. The proxy turns each into an ErrorResponse at its edge.
enum class ScramFailure {
  kNone,
  kProtocol,     // the peer's message is malformed, unsupported or out of order: 08P01
  kCredentials,  // wrong client proof, or a server that cannot prove it knows the verifier: 28P01
  kServerError,  // the server ended the exchange with e=<reason>
  kPassThrough,  // server's salt/iterations differ from the verifier the keys came from: config
  kInternal,     // OpenSSL failed (digest, CSPRNG), or pgkeel misused the API: XX000
};
[[nodiscard]] std::string_view to_string(ScramFailure failure);

// One step of an exchange: the next message to send, or why the exchange failed.
struct [[nodiscard]] ScramStep {
  ScramFailure failure = ScramFailure::kNone;
  std::string error;    // when failed; says nothing a client should not learn
  std::string message;  // when ok: the SCRAM message to send (empty after the client's last step)
  // Set by the last successful step on either side: the keys that log in to servers sharing
  // this verifier (ScramServer: the client's recovered ClientKey; ScramClient: the keys used).
  std::optional<ScramKeys> keys;

  [[nodiscard]] bool ok() const { return failure == ScramFailure::kNone; }
};

// pgkeel as the server (a client logs in to pgkeel). Mechanism SCRAM-SHA-256 only: gs2 headers
// "n,," and "y,," are accepted (we never offer -PLUS, so "y" is no downgrade; once we do, "y"
// must be refused on TLS connections); "p=" is refused.
// The SCRAM user name is ignored, as PostgreSQL does: the startup packet's user is the user.
class ScramServer {
 public:
  explicit ScramServer(ScramVerifier verifier);
  // For a user without a usable verifier: a full-looking exchange with a salt derived from the
  // user name and `mock_secret`, which always ends in "password authentication failed", so
  // probing cannot tell unknown users from wrong passwords (PostgreSQL's mock authentication).
  // `mock_secret` must be secret and stable across restarts, or salts change when pgkeel does.
  [[nodiscard]] static ScramServer mock(std::string_view user, std::string_view mock_secret,
                                        int iterations = kScramDefaultIterations);
  // A fixed server nonce instead of a random one: test vectors and fuzzing only.
  [[nodiscard]] static ScramServer with_nonce(ScramVerifier verifier, std::string server_nonce);

  // SASLInitialResponse data -> server-first-message for AuthenticationSASLContinue.
  [[nodiscard]] ScramStep handle_client_first(std::string_view client_first_message);
  // SASLResponse data -> server-final-message for AuthenticationSASLFinal, and `keys`.
  [[nodiscard]] ScramStep handle_client_final(std::string_view client_final_message);

 private:
  enum class State { kExpectClientFirst, kExpectClientFinal, kDone };

  ScramVerifier verifier_;
  bool mock_ = false;
  std::string server_nonce_;  // fixed for tests; otherwise made in handle_client_first
  State state_ = State::kExpectClientFirst;
  std::string gs2_header_;
  std::string client_nonce_;
  std::string client_first_bare_;
  std::string server_first_;
};

// pgkeel as the client (logging in to a PostgreSQL server), as libpq does without channel
// binding: "n,,n=,r=<nonce>" (an empty SCRAM user name: the server uses the startup one).
class ScramClient {
 public:
  // `user` only names the role in error messages.
  ScramClient(std::string user, ScramSecret secret);
  // A fixed nonce, and a SCRAM user name to send: test vectors and fuzzing only.
  [[nodiscard]] static ScramClient with_nonce(std::string user, ScramSecret secret,
                                              std::string client_nonce,
                                              std::string_view sasl_user = {});

  // Data for SASLInitialResponse (mechanism kScramSha256).
  [[nodiscard]] ScramStep client_first_message();
  // AuthenticationSASLContinue data -> client-final-message for SASLResponse.
  [[nodiscard]] ScramStep handle_server_first(std::string_view server_first_message);
  // AuthenticationSASLFinal data. Only after this succeeds may AuthenticationOk be believed.
  [[nodiscard]] ScramStep verify_server_final(std::string_view server_final_message);

 private:
  enum class State { kStart, kExpectServerFirst, kExpectServerFinal, kDone };

  std::string user_;
  ScramSecret secret_;
  std::string client_nonce_;  // fixed for tests; otherwise made in client_first_message
  std::string sasl_user_;
  State state_ = State::kStart;
  std::string client_first_bare_;
  ScramKeys keys_;
  Key expected_server_signature_{};
};

}  // namespace pgkeel::auth
