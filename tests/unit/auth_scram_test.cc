// SCRAM-SHA-256 both ways: the RFC 7677 vector, verifiers made by PostgreSQL, logins with a
// password and by pass-through, and hostile or broken messages.
#include <catch2/catch.hpp>
#include <random>
#include <string>

#include "proxy/auth/base64.h"
#include "proxy/auth/scram.h"

namespace {

using namespace pgkeel::auth;

// RFC 7677 §3. (The client proof is "...WIk4jUhN...": recomputed from the RFC's inputs, and the
// value published in the RFC.)
constexpr std::string_view kRfcSalt = "W22ZaJ0SNY7soEsUEjb6gQ==";
constexpr std::string_view kRfcClientNonce = "rOprNGfwEbeRWgbNEkqO";
constexpr std::string_view kRfcServerNonce = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
constexpr std::string_view kRfcClientFirst = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
constexpr std::string_view kRfcServerFirst =
    "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
constexpr std::string_view kRfcClientFinal =
    "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
    "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
constexpr std::string_view kRfcServerFinal = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";
// The verifier PostgreSQL would store for "pencil" with the RFC's salt.
constexpr std::string_view kRfcVerifier =
    "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:"
    "wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=";

// Made by PostgreSQL 15: SET password_encryption = 'scram-sha-256';
// CREATE ROLE pgkeel_test PASSWORD 'correct horse battery staple'; SELECT rolpassword ...
constexpr std::string_view kPgPassword = "correct horse battery staple";
constexpr std::string_view kPgVerifier =
    "SCRAM-SHA-256$4096:9Ol3wZlm3o8fkudsxCfACw==$dCDCzbeK704hNR9SrdBzThoBlUSseWuzros0lWXcP5A=:"
    "8xdxxGmQMjD3pb1upDgF+S1s9v/mpdAp03t6uV74n2E=";

ScramVerifier verifier_for(std::string_view password, std::string_view salt = "pgkeel-salt-16by",
                           int iterations = 4096) {
  return make_scram_verifier(password, salt, iterations).value();
}

ScramSecret with_password(std::string password) { return ScramSecret{std::move(password), {}}; }

// Keys as a pass-through login would have recovered them (any values: nothing checks them
// before the server's final message).
ScramKeys verifier_keys_for_test() {
  ScramKeys keys;
  keys.salt = "pgkeel-salt-16by";
  keys.iterations = 4096;
  keys.client_key[0] = 1;
  keys.server_key[0] = 2;
  return keys;
}

struct Login {
  ScramStep server_final;  // the server's last step (carries the recovered client keys)
  ScramStep client_final;  // the client's last step (carries the keys it used)
  [[nodiscard]] bool ok() const { return server_final.ok() && client_final.ok(); }
};

// Runs a whole exchange; the first failing step is reported in place of the rest.
Login log_in(ScramClient& client, ScramServer& server) {
  Login login;
  auto first = client.client_first_message();
  if (!first.ok()) {
    return {{}, first};
  }
  auto server_first = server.handle_client_first(first.message);
  if (!server_first.ok()) {
    return {server_first, {}};
  }
  auto client_final = client.handle_server_first(server_first.message);
  if (!client_final.ok()) {
    return {{}, client_final};
  }
  login.server_final = server.handle_client_final(client_final.message);
  if (!login.server_final.ok()) {
    return login;
  }
  login.client_final = client.verify_server_final(login.server_final.message);
  return login;
}

// Drives a server through a valid client-first so client-final parsing can be probed.
ScramServer server_after_first(std::string_view client_first = "n,,n=,r=abc") {
  auto server = ScramServer::with_nonce(verifier_for("pw"), "XYZ");
  const auto step = server.handle_client_first(client_first);
  REQUIRE(step.ok());
  return server;
}

ScramClient client_after_first(ScramSecret secret = with_password("pw")) {
  auto client = ScramClient::with_nonce("alice", std::move(secret), "abc");
  const auto step = client.client_first_message();
  REQUIRE(step.ok());
  return client;
}

}  // namespace

TEST_CASE("pgkeel as a server reproduces the RFC 7677 exchange", "[auth][scram]") {
  const auto verifier = parse_scram_verifier(kRfcVerifier).value();
  auto server = ScramServer::with_nonce(verifier, std::string(kRfcServerNonce));

  const auto server_first = server.handle_client_first(kRfcClientFirst);
  REQUIRE(server_first.ok());
  CHECK(server_first.message == kRfcServerFirst);

  const auto server_final = server.handle_client_final(kRfcClientFinal);
  INFO(server_final.error);
  REQUIRE(server_final.ok());
  CHECK(server_final.message == kRfcServerFinal);
  REQUIRE(server_final.keys.has_value());
  CHECK(server_final.keys->salt == base64_decode(kRfcSalt).value());
  CHECK(server_final.keys->iterations == 4096);
  CHECK(server_final.keys->server_key == verifier.server_key);
  CHECK(sha256(key_bytes(server_final.keys->client_key)).value() == verifier.stored_key);
}

TEST_CASE("pgkeel as a client reproduces the RFC 7677 exchange", "[auth][scram]") {
  auto client = ScramClient::with_nonce("user", with_password("pencil"),
                                        std::string(kRfcClientNonce), "user");
  const auto first = client.client_first_message();
  REQUIRE(first.ok());
  CHECK(first.message == kRfcClientFirst);

  const auto final_message = client.handle_server_first(kRfcServerFirst);
  REQUIRE(final_message.ok());
  CHECK(final_message.message == kRfcClientFinal);

  SECTION("the RFC's server signature is accepted") {
    const auto done = client.verify_server_final(kRfcServerFinal);
    REQUIRE(done.ok());
    CHECK(done.message.empty());
    REQUIRE(done.keys.has_value());
    CHECK(format_scram_verifier(ScramVerifier{done.keys->iterations, done.keys->salt,
                                              sha256(key_bytes(done.keys->client_key)).value(),
                                              done.keys->server_key}) == kRfcVerifier);
  }
  SECTION("a server signature differing in one character is refused") {
    const auto done = client.verify_server_final("v=7rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=");
    CHECK(done.failure == ScramFailure::kCredentials);
    CHECK_FALSE(done.keys.has_value());
  }
}

TEST_CASE("verifiers are parsed and formatted exactly as PostgreSQL stores them", "[auth][scram]") {
  SECTION("a verifier made by PostgreSQL 15 round-trips and is reproduced from its password") {
    const auto verifier = parse_scram_verifier(kPgVerifier);
    REQUIRE(verifier.has_value());
    CHECK(verifier->iterations == 4096);
    CHECK(verifier->salt.size() == 16);
    CHECK(format_scram_verifier(*verifier) == kPgVerifier);
    CHECK(format_scram_verifier(
              make_scram_verifier(kPgPassword, verifier->salt, verifier->iterations).value()) ==
          kPgVerifier);
    CHECK(check_scram_password(*verifier, kPgPassword).has_value());
    CHECK_FALSE(check_scram_password(*verifier, "correct horse battery stapler").has_value());
  }
  SECTION("the RFC's password and salt give the expected verifier") {
    CHECK(format_scram_verifier(verifier_for("pencil", base64_decode(kRfcSalt).value())) ==
          kRfcVerifier);
  }
  SECTION("a fresh verifier has PostgreSQL's defaults and a random salt") {
    const auto a = make_scram_verifier("secret").value();
    const auto b = make_scram_verifier("secret").value();
    CHECK(a.iterations == kScramDefaultIterations);
    CHECK(a.salt.size() == kScramDefaultSaltLen);
    CHECK(a.salt != b.salt);
    CHECK(format_scram_verifier(a).starts_with("SCRAM-SHA-256$4096:"));
    CHECK(parse_scram_verifier(format_scram_verifier(a)).has_value());
  }
  SECTION("malformed verifiers are refused") {
    const std::string keys =
        "$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:"
        "wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=";
    for (const std::string& bad : {
             std::string(""),
             std::string("md53175bce1d3201d16594cebf9d7eb3f9d"),
             std::string("SCRAM-SHA-1$4096:W22ZaJ0SNY7soEsUEjb6gQ==") + keys,
             std::string("SCRAM-SHA-256$0:W22ZaJ0SNY7soEsUEjb6gQ==") + keys,
             std::string("SCRAM-SHA-256$-1:W22ZaJ0SNY7soEsUEjb6gQ==") + keys,
             std::string("SCRAM-SHA-256$+4096:W22ZaJ0SNY7soEsUEjb6gQ==") + keys,
             std::string("SCRAM-SHA-256$99999999999:W22ZaJ0SNY7soEsUEjb6gQ==") + keys,
             std::string("SCRAM-SHA-256$4096x:W22ZaJ0SNY7soEsUEjb6gQ==") + keys,
             std::string("SCRAM-SHA-256$4096:") + keys,
             std::string("SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6g!==") + keys,
             std::string("SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d:wfPL"),
             std::string("SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$") +
                 "WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=",
             std::string("SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==") + keys + "x",
             std::string("SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==") + keys + ":AAAA",
             std::string("SCRAM-SHA-256$4096$W22ZaJ0SNY7soEsUEjb6gQ==") + keys,
         }) {
      INFO(bad);
      CHECK_FALSE(parse_scram_verifier(bad).has_value());
    }
  }
}

TEST_CASE("a client logs in to pgkeel with its password, and fails with a wrong one",
          "[auth][scram]") {
  auto server = ScramServer(verifier_for("s3cret"));

  SECTION("right password") {
    auto client = ScramClient("alice", with_password("s3cret"));
    const auto login = log_in(client, server);
    INFO(login.server_final.error << login.client_final.error);
    REQUIRE(login.ok());
    REQUIRE(login.server_final.keys.has_value());
    REQUIRE(login.client_final.keys.has_value());
    CHECK(login.server_final.keys->client_key == login.client_final.keys->client_key);
  }
  SECTION("wrong password") {
    auto client = ScramClient("alice", with_password("s3cret!"));
    const auto login = log_in(client, server);
    CHECK(login.server_final.failure == ScramFailure::kCredentials);
    CHECK(login.server_final.error == "password authentication failed");
    CHECK(login.server_final.message.empty());
    CHECK_FALSE(login.server_final.keys.has_value());
  }
  SECTION("the PostgreSQL-made verifier accepts its password") {
    auto pg_server = ScramServer(parse_scram_verifier(kPgVerifier).value());
    auto client = ScramClient("pgkeel_test", with_password(std::string(kPgPassword)));
    CHECK(log_in(client, pg_server).ok());
  }
}

TEST_CASE("the client's first message is libpq's: no user name and a fresh random nonce",
          "[auth][scram]") {
  auto a = ScramClient("alice", with_password("x"));
  auto b = ScramClient("alice", with_password("x"));
  const auto first_a = a.client_first_message();
  const auto first_b = b.client_first_message();
  REQUIRE(first_a.ok());
  REQUIRE(first_b.ok());
  CHECK(first_a.message.starts_with("n,,n=,r="));
  CHECK(first_a.message.size() == std::string_view("n,,n=,r=").size() + 24);
  CHECK(first_a.message != first_b.message);
}

TEST_CASE("pass-through: a client's login lets pgkeel log in to a server as that client",
          "[auth][scram]") {
  // pg_authid on the servers and pgkeel's users file hold the same verifier.
  const auto verifier = verifier_for("hunter2");
  auto pgkeel_server = ScramServer(verifier);
  auto app = ScramClient("app", with_password("hunter2"));
  const auto client_login = log_in(app, pgkeel_server);
  REQUIRE(client_login.ok());
  const ScramKeys recovered = client_login.server_final.keys.value();

  SECTION("the recovered keys log in to a server with the same verifier, without the password") {
    auto postgres = ScramServer(verifier);
    auto upstream = ScramClient("app", ScramSecret{std::nullopt, recovered});
    const auto login = log_in(upstream, postgres);
    INFO(login.server_final.error << login.client_final.error);
    CHECK(login.ok());
  }
  SECTION("a server whose verifier has another salt is refused with a clear reason") {
    auto postgres = ScramServer(verifier_for("hunter2", "another-salt-16b"));
    auto upstream = ScramClient("app", ScramSecret{std::nullopt, recovered});
    const auto login = log_in(upstream, postgres);
    CHECK(login.client_final.failure == ScramFailure::kPassThrough);
    CHECK_THAT(login.client_final.error, Catch::Contains("pass-through") &&
                                             Catch::Contains("\"app\"") && Catch::Contains("salt"));
  }
  SECTION("a server whose verifier has another iteration count is refused") {
    auto postgres = ScramServer(verifier_for("hunter2", verifier.salt, 8192));
    auto upstream = ScramClient("app", ScramSecret{std::nullopt, recovered});
    const auto login = log_in(upstream, postgres);
    CHECK(login.client_final.failure == ScramFailure::kPassThrough);
    CHECK_THAT(login.client_final.error, Catch::Contains("i=8192") && Catch::Contains("i=4096"));
  }
  SECTION("a server holding another password's verifier refuses the proof") {
    auto impostor = ScramServer(verifier_for("not-hunter2", verifier.salt));
    auto upstream = ScramClient("app", ScramSecret{std::nullopt, recovered});
    const auto login = log_in(upstream, impostor);
    CHECK(login.server_final.failure == ScramFailure::kCredentials);
  }
}

TEST_CASE("derived keys are reused while salt and iterations match, else the password is used",
          "[auth][scram]") {
  const auto verifier = verifier_for("pw");
  auto first_server = ScramServer(verifier);
  auto first = ScramClient("bob", with_password("pw"));
  const auto first_login = log_in(first, first_server);
  REQUIRE(first_login.ok());
  const ScramKeys cached = first_login.client_final.keys.value();

  SECTION("matching salt: the cached keys are used (a stale password proves it)") {
    auto server = ScramServer(verifier);
    auto client = ScramClient("bob", ScramSecret{"stale-password", cached});
    CHECK(log_in(client, server).ok());
  }
  SECTION("new salt after a password change: keys are derived again from the password") {
    auto server = ScramServer(verifier_for("pw", "a-new-salt-16byt"));
    auto client = ScramClient("bob", ScramSecret{"pw", cached});
    const auto login = log_in(client, server);
    REQUIRE(login.ok());
    CHECK(login.client_final.keys->salt == "a-new-salt-16byt");
  }
}

TEST_CASE("iteration counts above kScramMaxIterations are refused with the reason, never computed",
          "[auth][scram]") {
  CHECK(scram_iterations_refusal(kScramDefaultIterations).empty());
  CHECK(scram_iterations_refusal(kScramMaxIterations).empty());
  CHECK_THAT(scram_iterations_refusal(kScramMaxIterations + 1),
             Catch::Contains("at most 1000000") && Catch::Contains("1000001"));

  SECTION("stored: a verifier as PostgreSQL 16 may store it parses, but a plaintext check refuses it") {
    // scram_iterations = 2147483647 on the server: SCRAM logins never run PBKDF2 in pgkeel (the
    // client does), so the verifier itself is accepted.
    const std::string text = "SCRAM-SHA-256$2147483647" + std::string(kPgVerifier.substr(kPgVerifier.find(':')));
    const auto verifier = parse_scram_verifier(text);
    REQUIRE(verifier);
    CHECK(verifier->iterations == 2147483647);
    std::string why;
    CHECK_FALSE(check_scram_password(*verifier, kPgPassword, &why));  // would take ~17 min if computed
    CHECK_THAT(why, Catch::Contains("stored verifier refused") && Catch::Contains("2147483647"));
    auto just_over = verifier_for("pw");
    just_over.iterations = kScramMaxIterations + 1;
    CHECK_FALSE(check_scram_password(just_over, "pw", &why));
    CHECK_THAT(why, Catch::Contains("1000001"));
    // A plain mismatch says nothing of the kind.
    CHECK_FALSE(check_scram_password(verifier_for("pw"), "not-pw", &why));
    CHECK(why.empty());
  }
  SECTION("server-sent: just over the cap is refused when pgkeel would derive keys from the password") {
    const std::string first = "r=abcdef,s=" + base64_encode("pgkeel-salt-16by") + ",i=" + std::to_string(kScramMaxIterations + 1);
    auto client = ScramClient::with_nonce("bob", with_password("pw"), "abc");
    REQUIRE(client.client_first_message().ok());
    const auto step = client.handle_server_first(first);
    CHECK(step.failure == ScramFailure::kProtocol);
    CHECK_THAT(step.error, Catch::Contains("1000001") && Catch::Contains("at most"));
  }
  SECTION("server-sent: keys that fit the server's count need no PBKDF2, so any count is fine") {
    ScramKeys keys = verifier_keys_for_test();
    keys.iterations = 2147483647;  // as the client's own SCRAM login recovered them (pass-through)
    const std::string first = "r=abcdef,s=" + base64_encode(keys.salt) + ",i=2147483647";
    auto client = ScramClient::with_nonce("bob", ScramSecret{std::nullopt, keys}, "abc");
    REQUIRE(client.client_first_message().ok());
    CHECK(client.handle_server_first(first).ok());
  }
}

TEST_CASE("unknown users get a mock exchange that looks real and always fails", "[auth][scram]") {
  auto mock_a = ScramServer::mock("nobody", "instance secret");
  auto mock_b = ScramServer::mock("nobody", "instance secret");
  auto mock_other = ScramServer::mock("someone", "instance secret");
  const auto first_a = mock_a.handle_client_first("n,,n=,r=abc");
  const auto first_b = mock_b.handle_client_first("n,,n=,r=abc");
  const auto first_other = mock_other.handle_client_first("n,,n=,r=abc");
  REQUIRE(first_a.ok());
  REQUIRE(first_b.ok());
  REQUIRE(first_other.ok());

  const auto salt_of = [](const std::string& msg) {
    const auto s = msg.find(",s=");
    return msg.substr(s + 3, msg.find(",i=") - s - 3);
  };
  CHECK(salt_of(first_a.message) == salt_of(first_b.message));  // stable per user
  CHECK(salt_of(first_a.message) != salt_of(first_other.message));
  CHECK(base64_decode(salt_of(first_a.message))->size() == kScramDefaultSaltLen);
  CHECK(first_a.message.ends_with(",i=4096"));

  // A client answering with the mock's own salt still fails, exactly as a wrong password does.
  auto mock = ScramServer::mock("nobody", "instance secret");
  auto client = ScramClient("nobody", with_password("anything"));
  const auto login = log_in(client, mock);
  CHECK(login.server_final.failure == ScramFailure::kCredentials);
  CHECK(login.server_final.error == "password authentication failed");
}

TEST_CASE("channel-binding flags: n and y are accepted, p is refused", "[auth][scram]") {
  SECTION("y,, (client supports binding, thinks we don't) must echo c=eSws") {
    auto server = server_after_first("y,,n=,r=abc");
    const auto step =
        server.handle_client_final("c=biws,r=abcXYZ,p=" + base64_encode(key_bytes(Key{})));
    CHECK(step.failure == ScramFailure::kProtocol);
    CHECK_THAT(step.error, Catch::Contains("channel-binding"));
  }
  SECTION("y,, with c=eSws passes channel-binding checks and fails only on the proof") {
    auto server = server_after_first("y,,n=,r=abc");
    const auto step =
        server.handle_client_final("c=eSws,r=abcXYZ,p=" + base64_encode(std::string(32, 'x')));
    CHECK(step.failure == ScramFailure::kCredentials);
  }
  SECTION("p=tls-server-end-point is refused: we never offer -PLUS") {
    auto server = ScramServer(verifier_for("pw"));
    const auto step = server.handle_client_first("p=tls-server-end-point,,n=,r=abc");
    CHECK(step.failure == ScramFailure::kProtocol);
    CHECK_THAT(step.error, Catch::Contains("channel binding"));
  }
  SECTION("authorization identities and mandatory extensions are refused") {
    auto a = ScramServer(verifier_for("pw"));
    CHECK_THAT(a.handle_client_first("n,a=admin,n=,r=abc").error,
               Catch::Contains("authorization identity"));
    auto m = ScramServer(verifier_for("pw"));
    CHECK_THAT(m.handle_client_first("n,,m=ext,n=,r=abc").error,
               Catch::Contains("unsupported SCRAM extension"));
  }
}

TEST_CASE("malformed client messages are refused as protocol violations", "[auth][scram]") {
  SECTION("client-first-message") {
    for (const std::string_view bad : std::initializer_list<std::string_view>{
             "",
             "n",
             "n,",
             "n,,",
             "n,,n=",
             "n,,n=,",
             "n,,n=,r=",
             "n,,r=abc",
             "n,,n=,x=abc",
             "x,,n=,r=abc",
             "nn,,n=,r=abc",
             "n,,n=,r=ab c",
             "n,,n=,r=abc,",
             "n,,n=,r=abc,zz",
             "n,,n=,r=abc,1=x",
             std::string_view("n,,n=,r=a\0c", 11),
             "n,,n=,r=\x01\x02",
             "n,,n=,r=\xff\xfe",
         }) {
      auto server = ScramServer(verifier_for("pw"));
      const auto step = server.handle_client_first(bad);
      INFO(bad);
      CHECK(step.failure == ScramFailure::kProtocol);
      CHECK(step.message.empty());
    }
  }
  SECTION("client-first-message extensions after the nonce are ignored") {
    auto server = ScramServer::with_nonce(verifier_for("pw"), "XYZ");
    const auto step = server.handle_client_first("n,,n=whoever,r=abc,x=1,y=");
    REQUIRE(step.ok());
    CHECK(step.message.starts_with("r=abcXYZ,s="));
  }
  SECTION("client-final-message") {
    const std::string proof = base64_encode(std::string(32, 'x'));
    for (const std::string& bad : {
             std::string(""),
             std::string("r=abcXYZ,p=") + proof,     // missing c=
             std::string("c=biws,p=") + proof,       // missing r=
             std::string("c=biws,r=abcXYZ"),         // missing p=
             std::string("c=biws,r=abcXYZ,p="),      // empty proof
             std::string("c=biws,r=abcXYZ,p=!!!!"),  // bad base64
             std::string("c=biws,r=abcXYZ,p=") + base64_encode("short"),
             std::string("c=biws,r=abcXYZ,p=") + proof + ",x=1",  // garbage after proof
             std::string("c=biws,r=abcXYZ,p=") + proof + ",",
             std::string("c=b!ws,r=abcXYZ,p=") + proof,  // bad base64 binding
             std::string("c=eSws,r=abcXYZ,p=") + proof,  // flag was n, not y
             std::string("c=biws,r=abcXYW,p=") + proof,  // wrong nonce
             std::string("c=biws,r=abc,p=") + proof,     // client nonce only
             std::string("c=biws,r=abcXYZ,,p=") + proof,
         }) {
      auto server = server_after_first();
      const auto step = server.handle_client_final(bad);
      INFO(bad);
      CHECK(step.failure == ScramFailure::kProtocol);
      CHECK_FALSE(step.keys.has_value());
    }
  }
  SECTION("client-final-message extensions before the proof are part of the signed text") {
    // A right proof would have to cover ",x=1"; with a fake proof, parsing reaches the check.
    auto server = server_after_first();
    const auto step =
        server.handle_client_final("c=biws,r=abcXYZ,x=1,p=" + base64_encode(std::string(32, 'x')));
    CHECK(step.failure == ScramFailure::kCredentials);
  }
}

TEST_CASE("malformed server messages are refused without trusting them", "[auth][scram]") {
  SECTION("server-first-message") {
    for (const std::string_view bad : {
             "",
             "r=",
             "r=abc",
             "r=abcdef",
             "r=abcdef,s=c2FsdA==",
             "r=xyzdef,s=c2FsdA==,i=4096",
             "r=ab,s=c2FsdA==,i=4096",
             "r=abc,s=c2FsdA==,i=4096",
             "s=c2FsdA==,r=abcdef,i=4096",
             "r=abcdef,s=,i=4096",
             "r=abcdef,s=c2Fsd!==,i=4096",
             "r=abcdef,s=c2FsdA==,i=",
             "r=abcdef,s=c2FsdA==,i=0",
             "r=abcdef,s=c2FsdA==,i=-1",
             "r=abcdef,s=c2FsdA==,i=+5",
             "r=abcdef,s=c2FsdA==,i= 5",
             "r=abcdef,s=c2FsdA==,i=4096x",
             "r=abcdef,s=c2FsdA==,i=99999999999999999999",
             "r=abcdef,s=c2FsdA==,i=4096,",
             "r=abcdef,s=c2FsdA==,i=4096,zz",
             "r=abc\x01\x02,s=c2FsdA==,i=4096",
             "m=ext,r=abcdef,s=c2FsdA==,i=4096",
         }) {
      auto client = client_after_first();
      const auto step = client.handle_server_first(bad);
      INFO(bad);
      CHECK(step.failure == ScramFailure::kProtocol);
      CHECK(step.message.empty());
    }
  }
  SECTION("an absurd iteration count is refused before any work, with the reason") {
    auto client = client_after_first();
    const auto step = client.handle_server_first("r=abcdef,s=c2FsdA==,i=2147483647");
    CHECK(step.failure == ScramFailure::kProtocol);
    CHECK_THAT(step.error, Catch::Contains("2147483647") && Catch::Contains("at most"));
  }
  SECTION("extensions after the iteration count are ignored") {
    auto client = client_after_first();
    const auto step = client.handle_server_first("r=abcdef,s=c2FsdA==,i=16,x=1");
    REQUIRE(step.ok());
    CHECK(step.message.starts_with("c=biws,r=abcdef,p="));
  }
  SECTION("server-final-message") {
    for (const std::string_view bad : {
             "",
             "v=",
             "v=!!!!",
             "v=c2hvcnQ=",
             "x=1",
             "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=,",
         }) {
      auto client = client_after_first();
      REQUIRE(client.handle_server_first("r=abcdef,s=c2FsdA==,i=16").ok());
      const auto step = client.verify_server_final(bad);
      INFO(bad);
      CHECK(step.failure == ScramFailure::kProtocol);
      CHECK_FALSE(step.keys.has_value());
    }
  }
  SECTION("a server error attribute is reported, made printable") {
    auto client = client_after_first();
    REQUIRE(client.handle_server_first("r=abcdef,s=c2FsdA==,i=16").ok());
    const auto step = client.verify_server_final("e=invalid-proof\x07");
    CHECK(step.failure == ScramFailure::kServerError);
    CHECK_THAT(step.error, Catch::Contains("\"invalid-proof?\""));
  }
}

TEST_CASE("calls out of order fail instead of misbehaving", "[auth][scram]") {
  auto server = ScramServer(verifier_for("pw"));
  CHECK(server.handle_client_final("c=biws,r=x,p=y").failure == ScramFailure::kProtocol);
  CHECK_FALSE(server.handle_client_first("n,,n=,r=abc").ok());  // a failed exchange stays failed

  auto client = ScramClient("alice", with_password("pw"));
  CHECK(client.handle_server_first("r=abc,s=c2FsdA==,i=1").failure == ScramFailure::kProtocol);
  CHECK_FALSE(client.client_first_message().ok());
  auto finished = ScramClient("alice", with_password("pw"));
  REQUIRE(finished.client_first_message().ok());
  CHECK_FALSE(finished.client_first_message().ok());
  CHECK(ScramClient("a", ScramSecret{}).verify_server_final("v=x").failure ==
        ScramFailure::kProtocol);
}

TEST_CASE("a client with neither password nor keys fails cleanly", "[auth][scram]") {
  auto client = client_after_first(ScramSecret{});
  const auto step = client.handle_server_first("r=abcdef,s=c2FsdA==,i=16");
  CHECK(step.failure == ScramFailure::kInternal);
  CHECK_THAT(step.error, Catch::Contains("\"alice\""));
}

TEST_CASE("random bytes fed to every step never crash and never authenticate", "[auth][scram]") {
  std::mt19937 rng(7677);
  const std::string_view alphabet = "nyprsicvem=,abcXYZ+/0123456789\x01\xff";
  const auto verifier = verifier_for("pw", "salt-salt-salt-1", 1);
  for (int n = 0; n < 3000; ++n) {
    std::string input(rng() % 64, '\0');
    const bool structured = n % 2 == 0;
    for (char& c : input) {
      c = structured ? alphabet[rng() % alphabet.size()] : static_cast<char>(rng());
    }
    auto server = ScramServer::with_nonce(verifier, "XYZ");
    (void)server.handle_client_first(input);
    auto server2 = ScramServer::with_nonce(verifier, "XYZ");
    REQUIRE(server2.handle_client_first("n,,n=,r=abc").ok());
    CHECK_FALSE(server2.handle_client_final(input).ok());

    auto client = client_after_first(ScramSecret{std::string("pw"), std::nullopt});
    const auto step = client.handle_server_first(input);
    if (step.ok()) {
      // Only a well-formed server-first can pass; then no random final may verify.
      CHECK_FALSE(client.verify_server_final(input).ok());
    }
    auto client2 = client_after_first();
    REQUIRE(client2.handle_server_first("r=abcdef,s=c2FsdA==,i=1").ok());
    CHECK_FALSE(client2.verify_server_final(input).ok());
  }
}
