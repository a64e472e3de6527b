#include "proxy/auth/scram.h"

#include <array>
#include <charconv>
#include <string>
#include <utility>

#include "proxy/auth/base64.h"

// Fragile by design, for now: PostgreSQL and libpq run passwords through SASLprep (RFC 4013)
// before PBKDF2. For ASCII passwords that is the identity (PostgreSQL skips it for ASCII), and
// invalid UTF-8 is used raw by both; but a non-ASCII password that NFKC normalisation or the
// RFC 3454 B.1/C.1.2 mappings would change derives different keys here than in PostgreSQL.
// Pass-through never sees the password, so it is unaffected.

namespace pgkeel::auth {
namespace {

constexpr std::string_view kVerifierScheme = "SCRAM-SHA-256$";
constexpr std::size_t kRawNonceLen = 18;  // as PostgreSQL and libpq: 24 base64 characters
constexpr std::size_t kMaxQuoted = 128;   // longest peer-supplied text copied into an error

ScramStep fail(ScramFailure failure, std::string error) {
  ScramStep step;
  step.failure = failure;
  step.error = std::move(error);
  return step;
}

ScramStep malformed(std::string_view what) {
  return fail(ScramFailure::kProtocol, "malformed SCRAM message (" + std::string(what) + ")");
}

ScramStep send(std::string message) {
  ScramStep step;
  step.message = std::move(message);
  return step;
}

// Peer-supplied text made safe for an error line: printable ASCII only, bounded.
std::string quoted(std::string_view s) {
  std::string out = "\"";
  for (char c : s.substr(0, kMaxQuoted)) {
    out += (c >= 0x20 && c <= 0x7e) ? c : '?';
  }
  if (s.size() > kMaxQuoted) {
    out += "...";
  }
  out += '"';
  return out;
}

// RFC 5802 "printable": %x21-2B / %x2D-7E, i.e. visible ASCII except ','.
bool is_printable(std::string_view s) {
  for (char c : s) {
    if (c < 0x21 || c > 0x7e || c == ',') {
      return false;
    }
  }
  return true;
}

// RFC 5802 saslname: ',' and '=' escaped as "=2C" and "=3D".
std::string sasl_escape(std::string_view name) {
  std::string out;
  for (char c : name) {
    if (c == ',') {
      out += "=2C";
    } else if (c == '=') {
      out += "=3D";
    } else {
      out += c;
    }
  }
  return out;
}

// A SCRAM message is attr=value pairs separated by ','; values never contain ','.
class Cursor {
 public:
  explicit Cursor(std::string_view text) : text_(text) {}

  [[nodiscard]] bool at_end() const { return pos_ == text_.size(); }
  [[nodiscard]] std::size_t pos() const { return pos_; }
  [[nodiscard]] bool at_attr(char attr) const {
    return text_.size() - pos_ >= 2 && text_[pos_] == attr && text_[pos_ + 1] == '=';
  }

  // Reads "<attr>=<value>", leaving the cursor on the following ',' or the end.
  [[nodiscard]] std::optional<std::string_view> attr(char attr) {
    if (!at_attr(attr)) {
      return std::nullopt;
    }
    return value_after(pos_ + 2);
  }

  // Reads any "<letter>=<value>": an extension we ignore.
  [[nodiscard]] bool any_attr() {
    if (text_.size() - pos_ < 2 || text_[pos_ + 1] != '=') {
      return false;
    }
    const char c = text_[pos_];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))) {
      return false;
    }
    (void)value_after(pos_ + 2);
    return true;
  }

  [[nodiscard]] bool comma() {
    if (at_end() || text_[pos_] != ',') {
      return false;
    }
    ++pos_;
    return true;
  }

 private:
  std::string_view value_after(std::size_t start) {
    std::size_t end = text_.find(',', start);
    if (end == std::string_view::npos) {
      end = text_.size();
    }
    pos_ = end;
    return text_.substr(start, end - start);
  }

  std::string_view text_;
  std::size_t pos_ = 0;
};

std::optional<int> parse_positive_int(std::string_view s) {
  if (s.empty() || s.front() < '0' || s.front() > '9') {
    return std::nullopt;  // no sign, no space
  }
  int value = 0;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
  if (ec != std::errc() || end != s.data() + s.size() || value < 1) {
    return std::nullopt;
  }
  return value;
}

std::optional<Key> decode_key(std::string_view text) {
  const auto raw = base64_decode(text);
  if (!raw || raw->size() != kKeyLen) {
    return std::nullopt;
  }
  Key key{};
  for (std::size_t i = 0; i < kKeyLen; ++i) {
    key[i] = static_cast<unsigned char>((*raw)[i]);
  }
  return key;
}

Key xor_keys(const Key& a, const Key& b) {
  Key out{};
  for (std::size_t i = 0; i < kKeyLen; ++i) {
    out[i] = a[i] ^ b[i];
  }
  return out;
}

std::optional<std::string> make_nonce() {
  std::array<unsigned char, kRawNonceLen> raw{};
  if (!random_bytes(raw)) {
    return std::nullopt;
  }
  return base64_encode({reinterpret_cast<const char*>(raw.data()), raw.size()});
}

// SaltedPassword -> (ClientKey, ServerKey), RFC 5802 §3.
std::optional<ScramKeys> derive_keys(std::string_view password, std::string_view salt,
                                     int iterations) {
  if (iterations > kScramMaxIterations) {
    return std::nullopt;  // every caller says why before it gets here
  }
  const auto salted = pbkdf2_sha256(password, salt, iterations);
  if (!salted) {
    return std::nullopt;
  }
  const auto client_key = hmac_sha256(key_bytes(*salted), "Client Key");
  const auto server_key = hmac_sha256(key_bytes(*salted), "Server Key");
  if (!client_key || !server_key) {
    return std::nullopt;
  }
  return ScramKeys{*client_key, *server_key, std::string(salt), iterations};
}

// Pass-through needs the server's verifier to be the one the client's keys came from.
std::string pass_through_mismatch(std::string_view user, const ScramKeys& keys,
                                  std::string_view server_salt, int server_iterations) {
  const bool salt_differs = keys.salt != server_salt;
  const bool iterations_differ = keys.iterations != server_iterations;
  const char* what = salt_differs && iterations_differ ? "salt and iteration count differ"
                     : salt_differs                    ? "salt differs"
                                                       : "iteration count differs";
  return "SCRAM pass-through cannot log in user " + quoted(user) + ": the server's " + what +
         " from pgkeel's verifier (server s=" + quoted(base64_encode(server_salt)) +
         " i=" + std::to_string(server_iterations) +
         ", pgkeel s=" + quoted(base64_encode(keys.salt)) +
         " i=" + std::to_string(keys.iterations) +
         "); the password was changed or set separately on this server: copy its "
         "pg_authid.rolpassword into pgkeel's users file, or give pgkeel the plaintext password";
}

}  // namespace

// ---- Verifiers ----

std::optional<ScramVerifier> parse_scram_verifier(std::string_view text) {
  if (!text.starts_with(kVerifierScheme)) {
    return std::nullopt;
  }
  text.remove_prefix(kVerifierScheme.size());
  const std::size_t colon1 = text.find(':');
  const std::size_t dollar = text.find('$');
  if (colon1 == std::string_view::npos || dollar == std::string_view::npos || dollar < colon1) {
    return std::nullopt;
  }
  const std::size_t colon2 = text.find(':', dollar);
  if (colon2 == std::string_view::npos) {
    return std::nullopt;
  }

  const auto iterations = parse_positive_int(text.substr(0, colon1));
  const auto salt = base64_decode(text.substr(colon1 + 1, dollar - colon1 - 1));
  const auto stored_key = decode_key(text.substr(dollar + 1, colon2 - dollar - 1));
  const auto server_key = decode_key(text.substr(colon2 + 1));
  if (!iterations || !salt || salt->empty() || !stored_key || !server_key) {
    return std::nullopt;
  }
  return ScramVerifier{*iterations, *salt, *stored_key, *server_key};
}

std::string format_scram_verifier(const ScramVerifier& verifier) {
  return std::string(kVerifierScheme) + std::to_string(verifier.iterations) + ":" +
         base64_encode(verifier.salt) + "$" + base64_encode(key_bytes(verifier.stored_key)) + ":" +
         base64_encode(key_bytes(verifier.server_key));
}

std::optional<ScramVerifier> make_scram_verifier(std::string_view password, std::string_view salt,
                                                 int iterations) {
  if (salt.empty()) {
    return std::nullopt;
  }
  const auto keys = derive_keys(password, salt, iterations);
  if (!keys) {
    return std::nullopt;
  }
  const auto stored_key = sha256(key_bytes(keys->client_key));
  if (!stored_key) {
    return std::nullopt;
  }
  return ScramVerifier{iterations, std::string(salt), *stored_key, keys->server_key};
}

std::optional<ScramVerifier> make_scram_verifier(std::string_view password) {
  std::array<unsigned char, kScramDefaultSaltLen> salt{};
  if (!random_bytes(salt)) {
    return std::nullopt;
  }
  return make_scram_verifier(password, {reinterpret_cast<const char*>(salt.data()), salt.size()},
                             kScramDefaultIterations);
}

std::string scram_iterations_refusal(int iterations) {
  if (iterations <= kScramMaxIterations) {
    return {};
  }
  return "pgkeel computes at most " + std::to_string(kScramMaxIterations) +
         " SCRAM iterations (each costs CPU time on an event loop), not " + std::to_string(iterations);
}

std::optional<ScramKeys> check_scram_password(const ScramVerifier& verifier,
                                              std::string_view password, std::string* why) {
  if (why != nullptr) {
    why->clear();
  }
  if (std::string refusal = scram_iterations_refusal(verifier.iterations); !refusal.empty()) {
    if (why != nullptr) {
      *why = "stored verifier refused: " + refusal;
    }
    return std::nullopt;
  }
  auto keys = derive_keys(password, verifier.salt, verifier.iterations);
  if (!keys) {
    return std::nullopt;
  }
  const auto stored_key = sha256(key_bytes(keys->client_key));
  if (!stored_key || !equal_constant_time(key_bytes(*stored_key), key_bytes(verifier.stored_key)) ||
      !equal_constant_time(key_bytes(keys->server_key), key_bytes(verifier.server_key))) {
    return std::nullopt;
  }
  return keys;
}

std::string_view to_string(ScramFailure failure) {
  switch (failure) {
    case ScramFailure::kNone:
      return "none";
    case ScramFailure::kProtocol:
      return "protocol";
    case ScramFailure::kCredentials:
      return "credentials";
    case ScramFailure::kServerError:
      return "server_error";
    case ScramFailure::kPassThrough:
      return "pass_through";
    case ScramFailure::kInternal:
      return "internal";
  }
  return "unknown";
}

// ---- Server ----

ScramServer::ScramServer(ScramVerifier verifier) : verifier_(std::move(verifier)) {}

ScramServer ScramServer::mock(std::string_view user, std::string_view mock_secret, int iterations) {
  ScramVerifier fake;
  fake.iterations = iterations;
  // As PostgreSQL's scram_mock_salt(): SHA-256(user || secret), cut to the default salt length.
  std::string input(user);
  input.append(mock_secret);
  const auto digest = sha256(input);
  fake.salt = digest ? std::string(key_bytes(*digest).substr(0, kScramDefaultSaltLen))
                     : std::string(kScramDefaultSaltLen, '\0');
  // Keys are never used to succeed (mock_ fails the proof regardless); random so that nothing
  // computed from them is predictable.
  if (!random_bytes(fake.stored_key) || !random_bytes(fake.server_key)) {
    fake.stored_key = {};
    fake.server_key = {};
  }
  ScramServer server(std::move(fake));
  server.mock_ = true;
  return server;
}

ScramServer ScramServer::with_nonce(ScramVerifier verifier, std::string server_nonce) {
  ScramServer server(std::move(verifier));
  server.server_nonce_ = std::move(server_nonce);
  return server;
}

ScramStep ScramServer::handle_client_first(std::string_view message) {
  if (state_ != State::kExpectClientFirst) {
    state_ = State::kDone;
    return fail(ScramFailure::kProtocol, "unexpected SCRAM client-first-message at this point");
  }
  state_ = State::kDone;  // until this step succeeds

  // gs2-header: gs2-cbind-flag "," [authzid] ","
  if (message.empty()) {
    return malformed("empty client-first-message");
  }
  if (message.front() == 'p') {
    return fail(ScramFailure::kProtocol,
                "client requires SCRAM channel binding, but pgkeel does not offer " +
                    std::string(kScramSha256) + "-PLUS");
  }
  if (message.front() != 'n' && message.front() != 'y') {
    return malformed("unexpected channel-binding flag " + quoted(message.substr(0, 1)));
  }
  Cursor in(message.substr(1));
  if (!in.comma()) {
    return malformed("comma expected after channel-binding flag");
  }
  if (in.at_attr('a')) {
    return fail(ScramFailure::kProtocol,
                "client uses authorization identity, but it is not supported");
  }
  if (!in.comma()) {
    return malformed("unexpected attribute in client-first-message");
  }
  const std::size_t bare_start = 1 + in.pos();

  // client-first-message-bare: [reserved-mext ","] username "," nonce ["," extensions]
  if (in.at_attr('m')) {
    return fail(ScramFailure::kProtocol, "client requires an unsupported SCRAM extension");
  }
  if (!in.attr('n')) {
    return malformed("attribute \"n\" expected");  // ignored, as PostgreSQL
  }
  if (!in.comma()) {
    return malformed("attribute \"r\" expected");
  }
  const auto client_nonce = in.attr('r');
  if (!client_nonce || client_nonce->empty()) {
    return malformed("attribute \"r\" expected");
  }
  if (!is_printable(*client_nonce)) {
    return malformed("non-printable characters in SCRAM nonce");
  }
  while (!in.at_end()) {
    if (!in.comma() || !in.any_attr()) {
      return malformed("garbage at end of client-first-message");
    }
  }

  if (server_nonce_.empty()) {
    auto nonce = make_nonce();
    if (!nonce) {
      return fail(ScramFailure::kInternal, "could not generate a random SCRAM nonce");
    }
    server_nonce_ = std::move(*nonce);
  }
  gs2_header_ = std::string(message.substr(0, bare_start));
  client_nonce_ = std::string(*client_nonce);
  client_first_bare_ = std::string(message.substr(bare_start));
  server_first_ = "r=" + client_nonce_ + server_nonce_ + ",s=" + base64_encode(verifier_.salt) +
                  ",i=" + std::to_string(verifier_.iterations);
  state_ = State::kExpectClientFinal;
  return send(server_first_);
}

ScramStep ScramServer::handle_client_final(std::string_view message) {
  if (state_ != State::kExpectClientFinal) {
    state_ = State::kDone;
    return fail(ScramFailure::kProtocol, "unexpected SCRAM client-final-message at this point");
  }
  state_ = State::kDone;

  // client-final-message: channel-binding "," nonce ["," extensions] "," proof
  Cursor in(message);
  const auto channel_binding = in.attr('c');
  if (!channel_binding) {
    return malformed("attribute \"c\" expected");
  }
  const auto cbind_data = base64_decode(*channel_binding);
  if (!cbind_data || *cbind_data != gs2_header_) {
    return fail(ScramFailure::kProtocol,
                "unexpected SCRAM channel-binding attribute in client-final-message");
  }
  if (!in.comma()) {
    return malformed("attribute \"r\" expected");
  }
  const auto nonce = in.attr('r');
  if (!nonce) {
    return malformed("attribute \"r\" expected");
  }
  std::size_t proof_start = 0;  // position of the ',' before "p="
  for (;;) {
    proof_start = in.pos();
    if (!in.comma()) {
      return malformed("attribute \"p\" expected");
    }
    if (in.at_attr('p')) {
      break;
    }
    if (!in.any_attr()) {
      return malformed("attribute \"p\" expected");
    }
  }
  const auto proof_text = in.attr('p');
  if (!proof_text || !in.at_end()) {
    return malformed("garbage at end of client-final-message");
  }
  const auto proof = decode_key(*proof_text);
  if (!proof) {
    return malformed("invalid client proof");
  }
  if (*nonce != client_nonce_ + server_nonce_) {
    return fail(ScramFailure::kProtocol, "SCRAM nonce does not match the server's");
  }

  const std::string auth_message =
      client_first_bare_ + "," + server_first_ + "," + std::string(message.substr(0, proof_start));
  const auto client_signature = hmac_sha256(key_bytes(verifier_.stored_key), auth_message);
  if (!client_signature) {
    return fail(ScramFailure::kInternal, "could not compute SCRAM signature");
  }
  const Key client_key = xor_keys(*proof, *client_signature);
  const auto stored_key = sha256(key_bytes(client_key));
  if (!stored_key) {
    return fail(ScramFailure::kInternal, "could not compute SCRAM stored key");
  }
  // Compared even in mock mode, so both take the same time.
  const bool proof_ok =
      equal_constant_time(key_bytes(*stored_key), key_bytes(verifier_.stored_key));
  if (!proof_ok || mock_) {
    return fail(ScramFailure::kCredentials, "password authentication failed");
  }

  const auto server_signature = hmac_sha256(key_bytes(verifier_.server_key), auth_message);
  if (!server_signature) {
    return fail(ScramFailure::kInternal, "could not compute SCRAM signature");
  }
  ScramStep step = send("v=" + base64_encode(key_bytes(*server_signature)));
  step.keys = ScramKeys{client_key, verifier_.server_key, verifier_.salt, verifier_.iterations};
  return step;
}

// ---- Client ----

ScramClient::ScramClient(std::string user, ScramSecret secret)
    : user_(std::move(user)), secret_(std::move(secret)) {}

ScramClient ScramClient::with_nonce(std::string user, ScramSecret secret, std::string client_nonce,
                                    std::string_view sasl_user) {
  ScramClient client(std::move(user), std::move(secret));
  client.client_nonce_ = std::move(client_nonce);
  client.sasl_user_ = sasl_escape(sasl_user);
  return client;
}

ScramStep ScramClient::client_first_message() {
  if (state_ != State::kStart) {
    state_ = State::kDone;
    return fail(ScramFailure::kInternal, "SCRAM client-first-message requested twice");
  }
  state_ = State::kDone;
  if (client_nonce_.empty()) {
    auto nonce = make_nonce();
    if (!nonce) {
      return fail(ScramFailure::kInternal, "could not generate a random SCRAM nonce");
    }
    client_nonce_ = std::move(*nonce);
  }
  client_first_bare_ = "n=" + sasl_user_ + ",r=" + client_nonce_;
  state_ = State::kExpectServerFirst;
  return send("n,," + client_first_bare_);
}

ScramStep ScramClient::handle_server_first(std::string_view message) {
  if (state_ != State::kExpectServerFirst) {
    state_ = State::kDone;
    return fail(ScramFailure::kProtocol, "unexpected SCRAM server-first-message at this point");
  }
  state_ = State::kDone;

  // server-first-message: [reserved-mext ","] nonce "," salt "," iteration-count ["," ext]
  Cursor in(message);
  if (in.at_attr('m')) {
    return fail(ScramFailure::kProtocol, "server requires an unsupported SCRAM extension");
  }
  const auto nonce = in.attr('r');
  if (!nonce) {
    return malformed("attribute \"r\" expected");
  }
  if (nonce->size() <= client_nonce_.size() || !nonce->starts_with(client_nonce_)) {
    return fail(ScramFailure::kProtocol, "invalid SCRAM response (nonce mismatch)");
  }
  if (!is_printable(*nonce)) {
    return malformed("non-printable characters in SCRAM nonce");
  }
  if (!in.comma()) {
    return malformed("attribute \"s\" expected");
  }
  const auto salt_text = in.attr('s');
  if (!salt_text) {
    return malformed("attribute \"s\" expected");
  }
  const auto salt = base64_decode(*salt_text);
  if (!salt || salt->empty()) {
    return malformed("invalid salt");
  }
  if (!in.comma()) {
    return malformed("attribute \"i\" expected");
  }
  const auto iterations_text = in.attr('i');
  if (!iterations_text) {
    return malformed("attribute \"i\" expected");
  }
  const auto iterations = parse_positive_int(*iterations_text);
  if (!iterations) {
    return malformed("invalid iteration count");
  }
  while (!in.at_end()) {
    if (!in.comma() || !in.any_attr()) {
      return malformed("garbage at end of server-first-message");
    }
  }

  const bool keys_fit =
      secret_.keys && secret_.keys->salt == *salt && secret_.keys->iterations == *iterations;
  if (keys_fit) {
    keys_ = *secret_.keys;
  } else if (secret_.password) {
    if (std::string refusal = scram_iterations_refusal(*iterations); !refusal.empty()) {
      return fail(ScramFailure::kProtocol, "server asks for " + std::to_string(*iterations) +
                                               " SCRAM iterations; " + refusal);
    }
    auto derived = derive_keys(*secret_.password, *salt, *iterations);
    if (!derived) {
      return fail(ScramFailure::kInternal, "could not derive SCRAM keys");
    }
    keys_ = std::move(*derived);
  } else if (secret_.keys) {
    return fail(ScramFailure::kPassThrough,
                pass_through_mismatch(user_, *secret_.keys, *salt, *iterations));
  } else {
    return fail(ScramFailure::kInternal, "no SCRAM password or keys for user " + quoted(user_));
  }

  const auto stored_key = sha256(key_bytes(keys_.client_key));
  if (!stored_key) {
    return fail(ScramFailure::kInternal, "could not compute SCRAM stored key");
  }
  const std::string without_proof = "c=" + base64_encode("n,,") + ",r=" + std::string(*nonce);
  const std::string auth_message =
      client_first_bare_ + "," + std::string(message) + "," + without_proof;
  const auto client_signature = hmac_sha256(key_bytes(*stored_key), auth_message);
  const auto server_signature = hmac_sha256(key_bytes(keys_.server_key), auth_message);
  if (!client_signature || !server_signature) {
    return fail(ScramFailure::kInternal, "could not compute SCRAM signature");
  }
  expected_server_signature_ = *server_signature;
  const Key proof = xor_keys(keys_.client_key, *client_signature);
  state_ = State::kExpectServerFinal;
  return send(without_proof + ",p=" + base64_encode(key_bytes(proof)));
}

ScramStep ScramClient::verify_server_final(std::string_view message) {
  if (state_ != State::kExpectServerFinal) {
    state_ = State::kDone;
    return fail(ScramFailure::kProtocol, "unexpected SCRAM server-final-message at this point");
  }
  state_ = State::kDone;

  // server-final-message: (server-error / verifier) ["," extensions]
  Cursor in(message);
  if (const auto error = in.attr('e')) {
    return fail(ScramFailure::kServerError,
                "server refused SCRAM authentication: " + quoted(*error));
  }
  const auto verifier = in.attr('v');
  if (!verifier) {
    return malformed("attribute \"v\" expected");
  }
  while (!in.at_end()) {
    if (!in.comma() || !in.any_attr()) {
      return malformed("garbage at end of server-final-message");
    }
  }
  const auto signature = decode_key(*verifier);
  if (!signature) {
    return malformed("invalid server signature");
  }
  if (!equal_constant_time(key_bytes(*signature), key_bytes(expected_server_signature_))) {
    return fail(ScramFailure::kCredentials,
                "server's SCRAM signature is wrong: it does not hold the verifier for user " +
                    quoted(user_));
  }
  ScramStep step;
  step.keys = keys_;
  return step;
}

}  // namespace pgkeel::auth
