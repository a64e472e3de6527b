// proxy/hba.h — host-based authentication: which [[hba]] rule a connecting client falls under,
// read as pg_hba.conf reads (first match wins). Pure: no sockets, no clock.
#pragma once

#include <sys/socket.h>

#include <string>
#include <string_view>
#include <vector>

#include "conf/config.h"

namespace pgkeel::proxy {

struct HbaClient {
  bool local = false;               // a Unix-socket connection
  bool tls = false;
  const sockaddr* addr = nullptr;   // TCP peer (AF_INET / AF_INET6)
  std::string_view database;        // as the client asked
  std::string_view user;
};

// The first rule that matches, or nullptr (PostgreSQL: "no pg_hba.conf entry").
const conf::HbaRule* match_hba(const std::vector<conf::HbaRule>& rules, const HbaClient& client);

// The words PostgreSQL uses in its refusals: host "1.2.3.4", user "u", database "d", SSL
// encryption / no encryption.
std::string describe_hba_client(const HbaClient& client);

}  // namespace pgkeel::proxy
