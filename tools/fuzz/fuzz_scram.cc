// tools/fuzz/fuzz_scram.cc — untrusted bytes into every SCRAM step on both sides, plus the
// verifier and base64 parsers. Nothing may crash, leak or hang; accepted base64 must re-encode
// to itself. Password mode is left out: a fuzzed "i=" would make each run a PBKDF2 benchmark,
// and its parsing is the same code the pass-through client runs.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "proxy/auth/base64.h"
#include "proxy/auth/md5.h"
#include "proxy/auth/scram.h"

namespace {

using namespace pgkeel::auth;

const ScramVerifier& fixed_verifier() {
  // Iterations 1: the server side never runs PBKDF2, this only keeps start-up cheap.
  static const ScramVerifier verifier = make_scram_verifier("pw", "salt", 1).value();
  return verifier;
}

ScramSecret pass_through_secret() {
  ScramKeys keys;
  keys.salt = "salt";
  keys.iterations = 1;
  return ScramSecret{std::nullopt, keys};
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  // Up to the first NUL: one message; after it: the next message of the same exchange.
  const std::size_t nul = input.find('\0');
  const std::string_view first = input.substr(0, nul);
  const std::string_view second = nul == std::string_view::npos ? "" : input.substr(nul + 1);

  if (const auto decoded = base64_decode(input); decoded && base64_encode(*decoded) != input) {
    std::abort();
  }
  if (const auto verifier = parse_scram_verifier(input);
      verifier && format_scram_verifier(*verifier) != input) {
    std::abort();
  }
  (void)md5_check_response(first, second, "user", {1, 2, 3, 4});

  {  // pgkeel as the server: the whole message, then a two-message exchange.
    auto server = ScramServer::with_nonce(fixed_verifier(), "XYZ");
    (void)server.handle_client_first(input);
    auto exchange = ScramServer::with_nonce(fixed_verifier(), "XYZ");
    if (exchange.handle_client_first(first).ok()) {
      (void)exchange.handle_client_final(second);
    }
    auto after_first = ScramServer::with_nonce(fixed_verifier(), "XYZ");
    if (after_first.handle_client_first("n,,n=,r=abc").ok()) {
      (void)after_first.handle_client_final(input);
    }
  }
  {  // pgkeel as the client (pass-through keys, so no PBKDF2 whatever "i=" says).
    auto client = ScramClient::with_nonce("user", pass_through_secret(), "abc");
    if (client.client_first_message().ok() && client.handle_server_first(first).ok()) {
      (void)client.verify_server_final(second);
    }
    auto after_first = ScramClient::with_nonce("user", pass_through_secret(), "abc");
    if (after_first.client_first_message().ok() &&
        after_first.handle_server_first("r=abcXYZ,s=c2FsdA==,i=1").ok()) {
      (void)after_first.verify_server_final(input);
    }
  }
  return 0;
}
