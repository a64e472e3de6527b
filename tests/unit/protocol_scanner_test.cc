#include <catch2/catch.hpp>

#include <random>
#include <string>
#include <vector>

#include "proxy/protocol/message.h"
#include "proxy/protocol/scanner.h"

using namespace pgkeel::protocol;

namespace {

std::string msg(char type, const std::string& body) {
  std::string out;
  Writer(out).begin(type).bytes(body).end();
  return out;
}

struct Seen {
  char type;
  std::string body;
  bool truncated;
};

// Feeds `stream` in chunks of the given sizes (cycled) and records watched messages.
std::vector<Seen> scan_in_chunks(Scanner& s, const std::string& stream, std::vector<std::size_t> sizes,
                                 ScanResult* last = nullptr) {
  std::vector<Seen> seen;
  std::size_t pos = 0;
  std::size_t i = 0;
  while (pos < stream.size()) {
    const std::size_t n = std::min(sizes[i++ % sizes.size()], stream.size() - pos);
    ScanResult r = s.scan(reinterpret_cast<const unsigned char*>(stream.data() + pos), n,
                          [&](const ScannedMessage& m) {
                            seen.push_back({m.type, std::string(m.body), m.truncated});
                            return ScanAction::kContinue;
                          });
    if (last) *last = r;
    if (r.status != ScanResult::Status::kOk) break;
    pos += n;
  }
  return seen;
}

}  // namespace

TEST_CASE("the scanner reports watched messages whole, however the bytes are split", "[protocol]") {
  std::string stream;
  stream += msg('T', std::string(100, 'x'));
  stream += msg('D', "row-1");
  stream += msg('C', "SELECT 1");
  stream += msg('S', std::string("TimeZone\0UTC\0", 13));
  stream += msg('Z', "I");
  for (std::size_t chunk : {1u, 2u, 3u, 5u, 7u, 64u, 4096u}) {
    DYNAMIC_SECTION("chunks of " << chunk) {
      Scanner s;
      s.watch('Z');
      s.watch('S');
      auto seen = scan_in_chunks(s, stream, {chunk});
      REQUIRE(seen.size() == 2);
      CHECK(seen[0].type == 'S');
      CHECK(seen[0].body == std::string("TimeZone\0UTC\0", 13));
      CHECK(seen[1].type == 'Z');
      CHECK(seen[1].body == "I");
      CHECK(s.at_boundary());
    }
  }
}

TEST_CASE("unwatched messages are only counted, and boundaries are tracked", "[protocol]") {
  Scanner s;
  const std::string big = msg('D', std::string(100000, 'r'));
  auto seen = scan_in_chunks(s, big.substr(0, 50000), {32768});
  CHECK(seen.empty());
  CHECK_FALSE(s.at_boundary());
  CHECK(s.current_type() == 'D');
  seen = scan_in_chunks(s, big.substr(50000), {32768});
  CHECK(s.at_boundary());
}

TEST_CASE("a message with an empty body is reported, even with a split header", "[protocol]") {
  const std::string stream = msg('S', "") + msg('X', "");
  for (std::size_t chunk : {1u, 3u, 5u, 10u}) {
    Scanner s;
    s.watch('X');
    s.watch('S');
    auto seen = scan_in_chunks(s, stream, {chunk});
    REQUIRE(seen.size() == 2);
    CHECK(seen[1].type == 'X');
  }
}

TEST_CASE("a watched message larger than the capture limit is reported truncated", "[protocol]") {
  Scanner s;
  s.watch('Q');
  const std::string body(Scanner::kCaptureLimit + 100, 'q');
  auto seen = scan_in_chunks(s, msg('Q', body), {1000});
  REQUIRE(seen.size() == 1);
  CHECK(seen[0].truncated);
  CHECK(s.at_boundary());
}

TEST_CASE("a watched message over the capture limit is reported with its head, however its header is cut", "[protocol]") {
  // A Query over 8 KB whose 5-byte header straddles two reads (issue 14, item 6): it must be
  // reported all the same (its query runs; a LISTEN in its head pins), with its first 8 KB.
  const std::string body = "LISTEN padded;" + std::string(Scanner::kCaptureLimit * 3, ' ');
  const std::string stream = msg('Q', body) + msg('S', "");
  for (const std::vector<std::size_t>& cuts :
       {std::vector<std::size_t>{3, 4000}, std::vector<std::size_t>{1}, std::vector<std::size_t>{4, 100000},
        std::vector<std::size_t>{5 + 10, 30000}, std::vector<std::size_t>{100000}, std::vector<std::size_t>{7, 8190, 3}}) {
    Scanner s;
    s.watch('Q');
    s.watch('S');
    auto seen = scan_in_chunks(s, stream, cuts);
    INFO("first cut " << cuts[0]);
    REQUIRE(seen.size() == 2);
    CHECK(seen[0].type == 'Q');
    // Whole when it came in one read; otherwise truncated to exactly its first 8 KB.
    CHECK(seen[0].body == (seen[0].truncated ? body.substr(0, Scanner::kCaptureLimit) : body));
    CHECK(seen[0].truncated == (cuts[0] < stream.size()));
    CHECK(seen[1].type == 'S');
    CHECK(s.at_boundary());
  }
}

TEST_CASE("a followed type's long message is reported as its head, then the rest piece by piece", "[protocol]") {
  const std::string body = std::string(Scanner::kCaptureLimit + 5000, 'a') + "LISTEN x;" + std::string(30000, 'b');
  const std::string stream = msg('Q', body) + msg('S', "");
  for (const std::vector<std::size_t>& cuts : {std::vector<std::size_t>{3, 4000}, std::vector<std::size_t>{100000},
                                              std::vector<std::size_t>{8192 + 5}, std::vector<std::size_t>{1, 9000}}) {
    Scanner s;
    s.watch('Q');
    s.watch('S');
    s.follow('Q');
    std::string head;
    std::string rest;
    int syncs = 0;
    std::size_t pos = 0;
    for (std::size_t i = 0; pos < stream.size(); ++i) {
      const std::size_t n = std::min(cuts[i % cuts.size()], stream.size() - pos);
      s.scan(reinterpret_cast<const unsigned char*>(stream.data() + pos), n, [&](const ScannedMessage& m) {
        if (m.type == 'S') ++syncs;
        if (m.type == 'Q' && m.rest) rest += m.body;
        if (m.type == 'Q' && !m.rest) head += m.body;
        return ScanAction::kContinue;
      });
      pos += n;
    }
    INFO("first cut " << cuts[0]);
    CHECK(syncs == 1);
    CHECK(head + rest == body);  // whole (one read), or head then rest, nothing twice
    CHECK(s.at_boundary());
  }
}

TEST_CASE("stopping at a message leaves the bytes before it to forward", "[protocol]") {
  Scanner s;
  s.watch('X');
  const std::string stream = msg('Q', "SELECT 1") + msg('X', "") + "trailing";
  ScanResult r = s.scan(reinterpret_cast<const unsigned char*>(stream.data()), stream.size(),
                        [](const ScannedMessage& m) { return m.type == 'X' ? ScanAction::kStop : ScanAction::kContinue; });
  CHECK(r.status == ScanResult::Status::kStopped);
  CHECK(r.clean);
  CHECK(r.consumed == msg('Q', "SELECT 1").size());
}

TEST_CASE("the message a chunk ends inside of is named with how much of it was scanned", "[protocol]") {
  const std::string a = msg('D', "row");
  static constexpr char kBody[] = "SFATAL\0C57P01\0Mterminating\0";  // the last field's NUL, then the terminator
  const std::string e = msg('E', std::string(kBody, sizeof kBody));
  const std::string stream = a + e;
  Scanner s;
  s.watch('E');
  const auto feed = [&](std::size_t from, std::size_t to) {
    s.scan(reinterpret_cast<const unsigned char*>(stream.data() + from), to - from,
           [](const ScannedMessage&) { return ScanAction::kContinue; });
  };
  feed(0, a.size());
  CHECK(s.partial().type == 0);
  CHECK(s.partial().scanned == 0);
  feed(a.size(), a.size() + 3);  // inside the header
  CHECK(s.partial().type == 'E');
  CHECK(s.partial().scanned == 3);
  CHECK(s.partial().length == 0);
  feed(a.size() + 3, a.size() + 11);  // inside the body
  CHECK(s.partial().type == 'E');
  CHECK(s.partial().scanned == 11);
  CHECK(s.partial().length == e.size() - 1);
  feed(a.size() + 11, stream.size());
  CHECK(s.partial().type == 0);
  CHECK(s.at_boundary());
}

TEST_CASE("lengths below 4 or above 1 GB are malformed", "[protocol]") {
  for (std::uint32_t bad : {0u, 3u, 0x40000000u, 0xffffffffu}) {
    Scanner s;
    std::string stream = msg('Q', "SELECT 1");
    std::string b(5, '\0');
    b[0] = 'Q';
    write_u32(reinterpret_cast<unsigned char*>(&b[1]), bad);
    stream += b;
    ScanResult r;
    scan_in_chunks(s, stream, {3}, &r);
    CHECK(r.status == ScanResult::Status::kMalformed);
    CHECK(r.bad_length == bad);
  }
}

TEST_CASE("random bytes never crash the scanner", "[protocol]") {
  std::mt19937 rng(12345);
  for (int round = 0; round < 2000; ++round) {
    std::string junk(rng() % 300, '\0');
    for (char& c : junk) c = static_cast<char>(rng());
    Scanner s;
    s.watch('Z');
    s.watch('S');
    s.watch('E');
    std::size_t calls = 0;
    ScanResult r;
    auto seen = scan_in_chunks(s, junk, {1 + rng() % 17}, &r);
    calls += seen.size();
    CHECK(calls <= junk.size());
  }
}

TEST_CASE("startup packets are parsed and validated", "[protocol]") {
  auto packet = [](std::int32_t code, const std::string& payload) {
    std::string out;
    Writer(out).begin_untyped().i32(code).bytes(payload).end();
    return out;
  };
  SECTION("a StartupMessage with parameters, options included") {
    const std::string p = packet(kProtocolVersion3, std::string("user\0app\0database\0shop\0options\0-c geqo=off\0\0", 44));
    StartupParse r = parse_startup(p);
    REQUIRE(r.status == StartupParse::Status::kOk);
    CHECK(r.consumed == p.size());
    CHECK(r.packet.kind == StartupPacket::Kind::kStartup);
    REQUIRE(r.packet.param("options"));
    CHECK(*r.packet.param("options") == "-c geqo=off");
    CHECK(*r.packet.param("database") == "shop");
  }
  SECTION("partial input asks for more") {
    const std::string p = packet(kProtocolVersion3, std::string("user\0app\0\0", 10));
    for (std::size_t n = 0; n < p.size(); ++n) {
      CHECK(parse_startup(p.substr(0, n)).status == StartupParse::Status::kNeedMore);
    }
  }
  SECTION("SSLRequest, GSSENCRequest and CancelRequest") {
    CHECK(parse_startup(packet(kSSLRequestCode, "")).packet.kind == StartupPacket::Kind::kSSLRequest);
    CHECK(parse_startup(packet(kGSSENCRequestCode, "")).packet.kind == StartupPacket::Kind::kGSSENCRequest);
    std::string c;
    Writer(c).begin_untyped().i32(kCancelRequestCode).i32(1234).i32(-99).end();
    StartupParse r = parse_startup(c);
    REQUIRE(r.status == StartupParse::Status::kOk);
    CHECK(r.packet.cancel_pid == 1234);
    CHECK(r.packet.cancel_key == -99);
  }
  SECTION("malformed packets") {
    CHECK(parse_startup(std::string("\x00\x00\x00\x02", 4)).status == StartupParse::Status::kMalformed);
    CHECK(parse_startup(std::string("\x7f\xff\xff\xff", 4)).status == StartupParse::Status::kMalformed);
    CHECK(parse_startup(packet(kProtocolVersion3, std::string("user\0app", 8))).status == StartupParse::Status::kMalformed);
    CHECK(parse_startup(packet(kProtocolVersion3, std::string("user\0", 5))).status == StartupParse::Status::kMalformed);
    CHECK(parse_startup(packet(kSSLRequestCode, "xx")).status == StartupParse::Status::kMalformed);
  }
}

TEST_CASE("ErrorResponse fields round trip", "[protocol]") {
  std::string out;
  append_error(out, {"FATAL", "53300", "sorry, too many clients already", {}, {}});
  REQUIRE(out[0] == 'E');
  const ParsedError e = parse_error(std::string_view(out).substr(5));
  CHECK(e.severity == "FATAL");
  CHECK(e.sqlstate == "53300");
  CHECK(e.message == "sorry, too many clients already");
}
