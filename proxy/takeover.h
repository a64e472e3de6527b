// proxy/takeover.h — a new pgkeel process takes over from the running one (`pgkeel --takeover`,
// the console's RESTART, SIGUSR2) without a refused connection: the running process hands its
// listening sockets over a Unix socket (SCM_RIGHTS), stops its keeper, tells the new one where
// writes go, and once the new one accepts, stops accepting and drains its own sessions.
//
// The exchange, one parcel each (a 4-byte length, text, descriptors attached):
//   new -> old   "hello pid=P version=V"
//   old -> new   "listeners" + a line per descriptor ("tcp NAME HOST PORT", "unix NAME PATH",
//                "console HOST PORT", "status HOST PORT"), the descriptors in the same order
//   old -> new   "keeper epoch=E writer=NODE" (writer "-": none) once its keeper has stopped
//   new -> old   "ready" once its workers accept
// A refusal is "refused REASON" in place of "listeners"; an old process whose peer goes away
// before "ready" starts its keeper again and carries on.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace pgkeel::proxy::takeover {

// Text and descriptors sent together. Received descriptors are close-on-exec and owned by the
// receiver.
struct Parcel {
  std::string text;
  std::vector<int> fds;
};

inline constexpr std::size_t kMaxFds = 250;       // SCM_RIGHTS takes 253 at most
inline constexpr std::size_t kMaxText = 1 << 20;  // a parcel's text

// Blocking, on a connected Unix stream socket (whatever its O_NONBLOCK: waits up to `timeout`).
bool send_parcel(int sock, const Parcel& p, std::chrono::milliseconds timeout, std::string& err);
std::optional<Parcel> recv_parcel(int sock, std::chrono::milliseconds timeout, std::string& err);

// What one handed-over descriptor is.
struct Handed {
  enum class Kind : std::uint8_t { kTcp, kUnix, kConsole, kStatus };
  Kind kind = Kind::kTcp;
  std::string name;  // listener name (tcp, unix)
  std::string host;  // tcp, console, status
  std::uint16_t port = 0;
  std::string path;  // unix
  int fd = -1;
  friend bool operator==(const Handed& a, const Handed& b) {
    return a.kind == b.kind && a.name == b.name && a.host == b.host && a.port == b.port && a.path == b.path && a.fd == b.fd;
  }
};

// "listeners\n" and a line per descriptor; the parcel's fds in the same order.
Parcel listeners_parcel(const std::vector<Handed>& handed);
// nullopt (with `err`) when the text is not a listeners parcel or its lines and descriptors do
// not match; the descriptors are not closed here.
std::optional<std::vector<Handed>> parse_listeners(const Parcel& p, std::string& err);

struct KeeperHandover {
  std::uint64_t epoch = 0;
  std::string writer;  // empty: none
};
std::string keeper_text(const KeeperHandover& k);
std::optional<KeeperHandover> parse_keeper(std::string_view text);

// `key=value` from a line of words ("hello pid=7 version=0.1"): the value, or empty.
std::string field(std::string_view line, std::string_view key);

// The new process's side, up to its "ready": connects to `path`, says hello, takes the
// listeners and the keeper's last word. On failure nothing is left open.
struct Received {
  int sock = -1;  // the connection, for "ready"
  std::vector<Handed> handed;
  KeeperHandover keeper;
};
std::optional<Received> request(const std::string& path, std::chrono::milliseconds timeout, std::string& err);

}  // namespace pgkeel::proxy::takeover
