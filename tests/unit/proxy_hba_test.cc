// Unit tests for host-based authentication matching and CIDR parsing (pure, no sockets).
#include <arpa/inet.h>
#include <netinet/in.h>

#include <catch2/catch.hpp>

#include "conf/cidr.h"
#include "proxy/hba.h"

namespace pgkeel {
namespace {

sockaddr_storage v4(const char* ip) {
  sockaddr_storage ss{};
  auto* in = reinterpret_cast<sockaddr_in*>(&ss);
  in->sin_family = AF_INET;
  inet_pton(AF_INET, ip, &in->sin_addr);
  return ss;
}

sockaddr_storage v6(const char* ip) {
  sockaddr_storage ss{};
  auto* in6 = reinterpret_cast<sockaddr_in6*>(&ss);
  in6->sin6_family = AF_INET6;
  inet_pton(AF_INET6, ip, &in6->sin6_addr);
  return ss;
}

conf::HbaRule rule(conf::HbaType type, std::vector<std::string> dbs, std::vector<std::string> users,
                   std::string address, conf::HbaMethod method, int line) {
  conf::HbaRule r;
  r.type = type;
  r.databases = std::move(dbs);
  r.users = std::move(users);
  r.address = std::move(address);
  r.method = method;
  r.line = line;
  return r;
}

}  // namespace

TEST_CASE("CIDR parsing accepts networks and bare addresses and refuses nonsense", "[unit][hba]") {
  CHECK(conf::parse_cidr("10.0.0.0/8"));
  CHECK(conf::parse_cidr("127.0.0.1"));
  CHECK(conf::parse_cidr("::1/128"));
  CHECK(conf::parse_cidr("fe80::/10"));
  CHECK_FALSE(conf::parse_cidr("10.0.0.0/33"));
  CHECK_FALSE(conf::parse_cidr("300.0.0.1"));
  CHECK_FALSE(conf::parse_cidr("10.0.0.0/"));
  CHECK_FALSE(conf::parse_cidr("10.0.0.0/8x"));
  CHECK_FALSE(conf::parse_cidr("localhost"));
  CHECK_FALSE(conf::parse_cidr(""));
}

TEST_CASE("a CIDR network contains exactly its addresses, IPv4-mapped IPv6 included", "[unit][hba]") {
  const auto net = *conf::parse_cidr("192.168.4.0/22");
  std::uint8_t in[4] = {192, 168, 7, 255};
  std::uint8_t out[4] = {192, 168, 8, 0};
  CHECK(net.contains(in, false));
  CHECK_FALSE(net.contains(out, false));
  std::uint8_t mapped[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 168, 5, 1};
  CHECK(net.contains(mapped, true));
  const auto zero = *conf::parse_cidr("0.0.0.0/0");
  CHECK(zero.contains(out, false));
  const auto six = *conf::parse_cidr("2001:db8::/32");
  std::uint8_t a6[16] = {0x20, 0x01, 0x0d, 0xb8, 1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0, 1};
  std::uint8_t b6[16] = {0x20, 0x01, 0x0d, 0xb9};
  CHECK(six.contains(a6, true));
  CHECK_FALSE(six.contains(b6, true));
  CHECK_FALSE(six.contains(in, false));
}

TEST_CASE("hba rules match as pg_hba.conf does: type, database, user, address, first match wins", "[unit][hba]") {
  using conf::HbaMethod;
  using conf::HbaType;
  const std::vector<conf::HbaRule> rules = {
      rule(HbaType::kLocal, {"all"}, {"all"}, "all", HbaMethod::kTrust, 1),
      rule(HbaType::kHostSsl, {"shop"}, {"web"}, "all", HbaMethod::kScram, 2),
      rule(HbaType::kHostNoSsl, {"shop"}, {"web"}, "all", HbaMethod::kReject, 3),
      rule(HbaType::kHost, {"erp", "shop"}, {"all"}, "10.0.0.0/8", HbaMethod::kMd5, 4),
      rule(HbaType::kHost, {"all"}, {"all"}, "::1/128", HbaMethod::kPassword, 5),
  };
  const auto lan = v4("10.1.2.3");
  const auto wan = v4("8.8.8.8");
  const auto lo6 = v6("::1");
  auto line = [&](proxy::HbaClient c) {
    const conf::HbaRule* r = proxy::match_hba(rules, c);
    return r == nullptr ? 0 : r->line;
  };
  const auto* lan_addr = reinterpret_cast<const sockaddr*>(&lan);
  CHECK(line({true, false, nullptr, "anything", "anyone"}) == 1);
  CHECK(line({false, true, lan_addr, "shop", "web"}) == 2);
  CHECK(line({false, false, lan_addr, "shop", "web"}) == 3);
  CHECK(line({false, false, lan_addr, "shop", "erpuser"}) == 4);
  CHECK(line({false, true, lan_addr, "erp", "x"}) == 4);
  CHECK(line({false, false, reinterpret_cast<const sockaddr*>(&wan), "erp", "x"}) == 0);
  CHECK(line({false, false, reinterpret_cast<const sockaddr*>(&lo6), "erp", "x"}) == 5);
  CHECK(proxy::describe_hba_client({false, true, lan_addr, "shop", "web"}) ==
        "host \"10.1.2.3\", user \"web\", database \"shop\", SSL encryption");
}

}  // namespace pgkeel
