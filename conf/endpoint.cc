#include "conf/endpoint.h"

#include <charconv>

namespace pgkeel::conf {

std::string Endpoint::text() const {
  const bool v6 = host.find(':') != std::string::npos;
  return std::string(tls ? "https://" : "http://") + (v6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

std::optional<Endpoint> parse_endpoint(std::string_view text, std::string& why) {
  Endpoint e;
  if (text.rfind("http://", 0) == 0) {
    text.remove_prefix(7);
  } else if (text.rfind("https://", 0) == 0) {
    e.tls = true;
    text.remove_prefix(8);
  } else {
    why = "must start with http:// or https://";
    return std::nullopt;
  }
  if (!text.empty() && text.back() == '/') text.remove_suffix(1);  // "http://h:2379/" is common
  for (const char c : text) {
    const auto u = static_cast<unsigned char>(c);
    if (u <= 0x20 || u >= 0x7f || c == '/' || c == '?' || c == '#' || c == '@') {
      why = "must be scheme://host:port, with no path, query or user";
      return std::nullopt;
    }
  }
  std::string_view port;
  if (!text.empty() && text.front() == '[') {
    const std::size_t close = text.find(']');
    if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':') {
      why = "an IPv6 address is written [addr]:port";
      return std::nullopt;
    }
    e.host = std::string(text.substr(1, close - 1));
    port = text.substr(close + 2);
  } else {
    const std::size_t colon = text.rfind(':');
    if (colon == std::string_view::npos) {
      why = "needs a port (etcd's client port is usually 2379)";
      return std::nullopt;
    }
    e.host = std::string(text.substr(0, colon));
    if (e.host.find(':') != std::string::npos) {
      why = "an IPv6 address is written [addr]:port";
      return std::nullopt;
    }
    port = text.substr(colon + 1);
  }
  if (e.host.empty()) {
    why = "has no host";
    return std::nullopt;
  }
  unsigned value = 0;
  const auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
  if (port.empty() || ec != std::errc() || end != port.data() + port.size() || value == 0 || value > 65535) {
    why = "has no valid port (1-65535)";
    return std::nullopt;
  }
  e.port = static_cast<std::uint16_t>(value);
  return e;
}

}  // namespace pgkeel::conf
