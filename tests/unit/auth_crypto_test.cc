// Base64, the OpenSSL wrappers and the md5 password method, against published and
// PostgreSQL-computed values.
#include <catch2/catch.hpp>
#include <random>
#include <string>

#include "proxy/auth/base64.h"
#include "proxy/auth/crypto.h"
#include "proxy/auth/md5.h"

namespace {

using namespace pgkeel::auth;

std::string hex(const Key& key) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (unsigned char b : key) {
    out += kHex[b >> 4];
    out += kHex[b & 0xf];
  }
  return out;
}

}  // namespace

TEST_CASE("base64 encodes the RFC 4648 test vectors", "[auth][base64]") {
  CHECK(base64_encode("") == "");
  CHECK(base64_encode("f") == "Zg==");
  CHECK(base64_encode("fo") == "Zm8=");
  CHECK(base64_encode("foo") == "Zm9v");
  CHECK(base64_encode("foob") == "Zm9vYg==");
  CHECK(base64_encode("fooba") == "Zm9vYmE=");
  CHECK(base64_encode("foobar") == "Zm9vYmFy");
  CHECK(base64_encode(std::string("\xfb\xff\x00", 3)) == "+/8A");
  CHECK(base64_decode("Zm9vYmE=") == std::optional<std::string>("fooba"));
  CHECK(base64_decode("Zg==") == std::optional<std::string>("f"));
  CHECK(base64_decode("") == std::optional<std::string>(""));
  CHECK(base64_decode("+/8A") == std::optional<std::string>(std::string("\xfb\xff\x00", 3)));
}

TEST_CASE("base64 decoding refuses anything but the canonical encoding", "[auth][base64]") {
  for (const char* bad : {"Zg", "Zg=", "Zg===", "Z===", "====", "Zm9v\n", " Zm9v", "Zm-v", "Zm_v",
                          "Zg==Zg==", "Z=g=", "Zh==", "Zm9=", "Zm8=Zm8=", "biws,"}) {
    INFO(bad);
    CHECK_FALSE(base64_decode(bad).has_value());
  }
}

TEST_CASE("base64 round-trips random bytes, and every accepted string re-encodes to itself",
          "[auth][base64]") {
  std::mt19937 rng(20240601);
  for (int n = 0; n < 2000; ++n) {
    std::string bytes(rng() % 40, '\0');
    for (char& c : bytes) {
      c = static_cast<char>(rng());
    }
    const auto encoded = base64_encode(bytes);
    REQUIRE(base64_decode(encoded) == std::optional<std::string>(bytes));

    std::string noise(rng() % 12, '\0');
    for (char& c : noise) {
      c = "AZaz09+/=x"[rng() % 10];
    }
    if (const auto decoded = base64_decode(noise)) {
      CHECK(base64_encode(*decoded) == noise);
    }
  }
}

TEST_CASE("sha256, hmac and pbkdf2 match their published vectors", "[auth][crypto]") {
  CHECK(hex(sha256("abc").value()) ==
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  // RFC 4231, test case 2.
  CHECK(hex(hmac_sha256("Jefe", "what do ya want for nothing?").value()) ==
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
  // RFC 7914 §11 (PBKDF2-HMAC-SHA256, first 32 bytes) and the widely used c=4096 vector.
  CHECK(hex(pbkdf2_sha256("password", "salt", 1).value()) ==
        "120fb6cffcf8b32c43e7225256c4f837a86548c92ccc35480805987cb70be17b");
  CHECK(hex(pbkdf2_sha256("password", "salt", 4096).value()) ==
        "c5e478d59288c841aa530db6845c4c8d962893a001ce4e11a4963873aa98134a");
  CHECK_FALSE(pbkdf2_sha256("password", "salt", 0).has_value());
  CHECK_FALSE(pbkdf2_sha256("password", "salt", -5).has_value());
  CHECK(md5_hex("") == std::optional<std::string>("d41d8cd98f00b204e9800998ecf8427e"));
}

TEST_CASE("random bytes differ between calls and the constant-time compare compares",
          "[auth][crypto]") {
  Key a{};
  Key b{};
  REQUIRE(random_bytes(a));
  REQUIRE(random_bytes(b));
  CHECK(a != b);
  CHECK(equal_constant_time("abc", "abc"));
  CHECK_FALSE(equal_constant_time("abc", "abd"));
  CHECK_FALSE(equal_constant_time("abc", "ab"));
  CHECK(equal_constant_time("", ""));
}

TEST_CASE("md5 password hashes are what pg_authid stores", "[auth][md5]") {
  CHECK(md5_password_hash("postgres", "postgres") ==
        std::optional<std::string>("md53175bce1d3201d16594cebf9d7eb3f9d"));
  // From PostgreSQL 15: SET password_encryption = 'md5'; CREATE ROLE md5user PASSWORD 'md5pass'.
  CHECK(md5_password_hash("md5user", "md5pass") ==
        std::optional<std::string>("md57541d4e65fae11bd07f18dc6fe2b02bc"));
  CHECK(is_md5_hash("md57541d4e65fae11bd07f18dc6fe2b02bc"));
  CHECK_FALSE(is_md5_hash("md57541D4E65FAE11BD07F18DC6FE2B02BC"));  // PostgreSQL: lowercase only
  CHECK_FALSE(is_md5_hash("md57541d4e65fae11bd07f18dc6fe2b02b"));
  CHECK_FALSE(is_md5_hash("xyz7541d4e65fae11bd07f18dc6fe2b02bc"));
}

TEST_CASE("md5 answers to AuthenticationMD5Password match PostgreSQL's md5()", "[auth][md5]") {
  // Expected values computed by PostgreSQL 15:
  //   'md5' || md5(convert_to(substr(<stored hash>, 4), 'UTF8') || '\x<salt>'::bytea)
  CHECK(md5_response("md57541d4e65fae11bd07f18dc6fe2b02bc", {0xde, 0xad, 0xbe, 0xef}) ==
        std::optional<std::string>("md5630cc6cf74f5f2e5fad37e4c1aa93600"));
  CHECK(md5_response("md53175bce1d3201d16594cebf9d7eb3f9d", {1, 2, 3, 4}) ==
        std::optional<std::string>("md568be9ed08db75f318087ab337aaea044"));
  CHECK_FALSE(md5_response("postgres", {1, 2, 3, 4}).has_value());
  CHECK_FALSE(md5_response("", {1, 2, 3, 4}).has_value());
}

TEST_CASE("an md5 answer is checked against a stored hash or a plaintext password", "[auth][md5]") {
  const Md5Salt salt{0xde, 0xad, 0xbe, 0xef};
  const std::string answer = "md5630cc6cf74f5f2e5fad37e4c1aa93600";

  SECTION("stored md5 hash") {
    CHECK(md5_check_response(answer, "md57541d4e65fae11bd07f18dc6fe2b02bc", "md5user", salt));
    CHECK_FALSE(md5_check_response(answer, "md57541d4e65fae11bd07f18dc6fe2b02bc", "md5user",
                                   {0xde, 0xad, 0xbe, 0xee}));
  }
  SECTION("stored plaintext password") {
    CHECK(md5_check_response(answer, "md5pass", "md5user", salt));
    CHECK_FALSE(md5_check_response(answer, "md5pass", "otheruser", salt));
    CHECK_FALSE(md5_check_response(answer, "wrong", "md5user", salt));
  }
  SECTION("garbage answers and unusable stored values fail") {
    CHECK_FALSE(md5_check_response("", "md5pass", "md5user", salt));
    CHECK_FALSE(md5_check_response(answer + "x", "md5pass", "md5user", salt));
    CHECK_FALSE(md5_check_response(answer, "", "md5user", salt));
    const std::string verifier = "SCRAM-SHA-256$4096:c2FsdA==$x:y";
    const Md5Salt any{1, 2, 3, 4};
    const auto from_verifier_text = md5_response(md5_password_hash("u", verifier).value(), any);
    CHECK_FALSE(md5_check_response(from_verifier_text.value(), verifier, "u", any));
  }
}
