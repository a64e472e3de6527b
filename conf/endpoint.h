// conf/endpoint.h — an etcd endpoint as [store] endpoints writes it ("http://10.0.0.5:2379",
// "https://etcd1.example:2379", "http://[::1]:2379"), parsed once for validation and for the client.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace pgkeel::conf {

struct Endpoint {
  bool tls = false;   // https
  std::string host;   // without brackets for IPv6
  std::uint16_t port = 0;
  std::string text() const;  // as written back: "http://host:port" ("[v6]" bracketed)
};

// The endpoint, or nullopt with `why` saying what is wrong. A port is required; a path, a query,
// user information and a scheme other than http/https are refused.
std::optional<Endpoint> parse_endpoint(std::string_view text, std::string& why);

}  // namespace pgkeel::conf
