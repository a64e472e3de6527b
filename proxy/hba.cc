#include "proxy/hba.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <algorithm>

#include "conf/cidr.h"

namespace pgkeel::proxy {
namespace {

bool names_match(const std::vector<std::string>& names, std::string_view value) {
  return std::any_of(names.begin(), names.end(), [&](const std::string& n) { return n == "all" || n == value; });
}

bool address_matches(const conf::HbaRule& r, const sockaddr* addr) {
  if (r.address == "all") return true;
  if (addr == nullptr) return false;
  const std::optional<conf::Cidr> net = conf::parse_cidr(r.address);  // validated at load
  if (!net) return false;
  if (addr->sa_family == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(addr);
    return net->contains(reinterpret_cast<const std::uint8_t*>(&in->sin_addr), false);
  }
  if (addr->sa_family == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(addr);
    return net->contains(reinterpret_cast<const std::uint8_t*>(&in6->sin6_addr), true);
  }
  return false;
}

}  // namespace

const conf::HbaRule* match_hba(const std::vector<conf::HbaRule>& rules, const HbaClient& c) {
  for (const conf::HbaRule& r : rules) {
    switch (r.type) {
      case conf::HbaType::kLocal:
        if (!c.local) continue;
        break;
      case conf::HbaType::kHost:
        if (c.local) continue;
        break;
      case conf::HbaType::kHostSsl:
        if (c.local || !c.tls) continue;
        break;
      case conf::HbaType::kHostNoSsl:
        if (c.local || c.tls) continue;
        break;
    }
    if (!names_match(r.databases, c.database) || !names_match(r.users, c.user)) continue;
    if (r.type != conf::HbaType::kLocal && !address_matches(r, c.addr)) continue;
    return &r;
  }
  return nullptr;
}

std::string describe_hba_client(const HbaClient& c) {
  std::string host = "[local]";
  if (!c.local && c.addr != nullptr) {
    char buf[INET6_ADDRSTRLEN] = {0};
    if (c.addr->sa_family == AF_INET) {
      inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(c.addr)->sin_addr, buf, sizeof buf);
    } else if (c.addr->sa_family == AF_INET6) {
      inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6*>(c.addr)->sin6_addr, buf, sizeof buf);
    }
    host = buf;
  }
  return "host \"" + host + "\", user \"" + std::string(c.user) + "\", database \"" + std::string(c.database) +
         "\", " + (c.tls ? "SSL encryption" : "no encryption");
}

}  // namespace pgkeel::proxy
