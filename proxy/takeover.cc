#include "proxy/takeover.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <sstream>

namespace pgkeel::proxy::takeover {
namespace {

using Clock = std::chrono::steady_clock;

bool wait_for(int sock, short events, Clock::time_point deadline, std::string& err) {
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) {
      err = "timed out";
      return false;
    }
    pollfd p{sock, events, 0};
    const int n = ::poll(&p, 1, static_cast<int>(left));
    if (n > 0) return true;
    if (n < 0 && errno != EINTR) {
      err = std::string("poll: ") + std::strerror(errno);
      return false;
    }
  }
}

void close_all(std::vector<int>& fds) {
  for (int fd : fds) ::close(fd);
  fds.clear();
}

std::optional<std::uint64_t> number(std::string_view s) {
  std::uint64_t v = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || end != s.data() + s.size() || s.empty()) return std::nullopt;
  return v;
}

std::vector<std::string> words(const std::string& line) {
  std::vector<std::string> out;
  std::istringstream in(line);
  std::string w;
  while (in >> w) out.push_back(w);
  return out;
}

}  // namespace

bool send_parcel(int sock, const Parcel& p, std::chrono::milliseconds timeout, std::string& err) {
  if (p.fds.size() > kMaxFds || p.text.size() > kMaxText) {
    err = "parcel too large";
    return false;
  }
  const auto deadline = Clock::now() + timeout;
  std::string bytes(4, '\0');
  const auto len = static_cast<std::uint32_t>(p.text.size());
  bytes[0] = static_cast<char>(len >> 24);
  bytes[1] = static_cast<char>(len >> 16);
  bytes[2] = static_cast<char>(len >> 8);
  bytes[3] = static_cast<char>(len);
  bytes += p.text;
  std::size_t sent = 0;
  bool fds_sent = p.fds.empty();
  std::vector<char> control(CMSG_SPACE(sizeof(int) * kMaxFds), 0);
  while (sent < bytes.size()) {
    iovec iov{bytes.data() + sent, bytes.size() - sent};
    msghdr m{};
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    if (!fds_sent) {
      // The descriptors ride with the first byte that goes, so they arrive with the header.
      m.msg_control = control.data();
      m.msg_controllen = CMSG_SPACE(sizeof(int) * p.fds.size());
      cmsghdr* c = CMSG_FIRSTHDR(&m);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int) * p.fds.size());
      std::memcpy(CMSG_DATA(c), p.fds.data(), sizeof(int) * p.fds.size());
    }
    const ssize_t n = ::sendmsg(sock, &m, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      sent += static_cast<std::size_t>(n);
      fds_sent = true;
      continue;
    }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
      if (!wait_for(sock, POLLOUT, deadline, err)) return false;
      continue;
    }
    err = std::string("sendmsg: ") + std::strerror(errno);
    return false;
  }
  return true;
}

std::optional<Parcel> recv_parcel(int sock, std::chrono::milliseconds timeout, std::string& err) {
  const auto deadline = Clock::now() + timeout;
  Parcel p;
  std::string bytes;
  std::size_t want = 4;
  std::vector<char> control(CMSG_SPACE(sizeof(int) * kMaxFds), 0);
  while (bytes.size() < want) {
    char buf[4096];
    iovec iov{buf, std::min(sizeof buf, want - bytes.size())};
    msghdr m{};
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    m.msg_control = control.data();
    m.msg_controllen = control.size();
    const ssize_t n = ::recvmsg(sock, &m, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
      if (!wait_for(sock, POLLIN, deadline, err)) {
        close_all(p.fds);
        return std::nullopt;
      }
      continue;
    }
    if (n <= 0) {
      err = n == 0 ? "the peer closed the connection" : std::string("recvmsg: ") + std::strerror(errno);
      close_all(p.fds);
      return std::nullopt;
    }
    for (cmsghdr* c = CMSG_FIRSTHDR(&m); c != nullptr; c = CMSG_NXTHDR(&m, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      const std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (std::size_t i = 0; i < count; ++i) {
        int fd = -1;
        std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
        p.fds.push_back(fd);
      }
    }
    if ((m.msg_flags & MSG_CTRUNC) != 0) {
      err = "descriptors were cut off (more than " + std::to_string(kMaxFds) + ")";
      close_all(p.fds);
      return std::nullopt;
    }
    bytes.append(buf, static_cast<std::size_t>(n));
    if (want == 4 && bytes.size() == 4) {
      const std::uint32_t len = (static_cast<std::uint32_t>(static_cast<unsigned char>(bytes[0])) << 24) |
                                (static_cast<std::uint32_t>(static_cast<unsigned char>(bytes[1])) << 16) |
                                (static_cast<std::uint32_t>(static_cast<unsigned char>(bytes[2])) << 8) |
                                static_cast<std::uint32_t>(static_cast<unsigned char>(bytes[3]));
      if (len > kMaxText) {
        err = "parcel too large";
        close_all(p.fds);
        return std::nullopt;
      }
      want = 4 + len;
    }
  }
  p.text = bytes.substr(4);
  return p;
}

namespace {

const char* kind_word(Handed::Kind k) {
  switch (k) {
    case Handed::Kind::kTcp: return "tcp";
    case Handed::Kind::kUnix: return "unix";
    case Handed::Kind::kConsole: return "console";
    case Handed::Kind::kStatus: return "status";
  }
  return "?";
}

}  // namespace

Parcel listeners_parcel(const std::vector<Handed>& handed) {
  Parcel p;
  p.text = "listeners\n";
  for (const Handed& h : handed) {
    p.text += kind_word(h.kind);
    switch (h.kind) {
      case Handed::Kind::kTcp: p.text += " " + h.name + " " + h.host + " " + std::to_string(h.port); break;
      case Handed::Kind::kUnix: p.text += " " + h.name + " " + h.path; break;
      case Handed::Kind::kConsole:
      case Handed::Kind::kStatus: p.text += " " + h.host + " " + std::to_string(h.port); break;
    }
    p.text += "\n";
    p.fds.push_back(h.fd);
  }
  return p;
}

std::optional<std::vector<Handed>> parse_listeners(const Parcel& p, std::string& err) {
  std::istringstream in(p.text);
  std::string line;
  if (!std::getline(in, line) || line != "listeners") {
    err = "not a listeners parcel: " + p.text.substr(0, p.text.find('\n'));
    return std::nullopt;
  }
  std::vector<Handed> out;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    const std::vector<std::string> w = words(line);
    Handed h;
    bool ok = false;
    if (w.size() == 4 && w[0] == "tcp") {
      h.kind = Handed::Kind::kTcp;
      h.name = w[1];
      h.host = w[2];
      const auto port = number(w[3]);
      ok = port && *port > 0 && *port <= 65535;
      if (ok) h.port = static_cast<std::uint16_t>(*port);
    } else if (w.size() == 3 && w[0] == "unix") {
      h.kind = Handed::Kind::kUnix;
      h.name = w[1];
      h.path = w[2];
      ok = true;
    } else if (w.size() == 3 && (w[0] == "console" || w[0] == "status")) {
      h.kind = w[0] == "console" ? Handed::Kind::kConsole : Handed::Kind::kStatus;
      h.host = w[1];
      const auto port = number(w[2]);
      ok = port && *port > 0 && *port <= 65535;
      if (ok) h.port = static_cast<std::uint16_t>(*port);
    }
    if (!ok) {
      err = "bad listeners line: " + line;
      return std::nullopt;
    }
    out.push_back(std::move(h));
  }
  if (out.size() != p.fds.size()) {
    err = std::to_string(out.size()) + " listeners described, " + std::to_string(p.fds.size()) + " descriptors received";
    return std::nullopt;
  }
  for (std::size_t i = 0; i < out.size(); ++i) out[i].fd = p.fds[i];
  return out;
}

std::string keeper_text(const KeeperHandover& k) {
  return "keeper epoch=" + std::to_string(k.epoch) + " writer=" + (k.writer.empty() ? std::string("-") : k.writer);
}

std::string field(std::string_view line, std::string_view key) {
  std::size_t pos = 0;
  while (pos < line.size()) {
    const std::size_t end = std::min(line.find(' ', pos), line.size());
    const std::string_view w = line.substr(pos, end - pos);
    if (w.size() > key.size() && w.substr(0, key.size()) == key && w[key.size()] == '=') {
      return std::string(w.substr(key.size() + 1));
    }
    pos = end + 1;
  }
  return {};
}

std::optional<KeeperHandover> parse_keeper(std::string_view text) {
  if (text.substr(0, 7) != "keeper ") return std::nullopt;
  const auto epoch = number(field(text, "epoch"));
  const std::string writer = field(text, "writer");
  if (!epoch || writer.empty()) return std::nullopt;
  return KeeperHandover{*epoch, writer == "-" ? std::string() : writer};
}

std::optional<Received> request(const std::string& path, std::chrono::milliseconds timeout, std::string& err) {
  sockaddr_un sun{};
  if (path.size() >= sizeof sun.sun_path) {
    err = path + ": path too long for a Unix socket";
    return std::nullopt;
  }
  sun.sun_family = AF_UNIX;
  std::memcpy(sun.sun_path, path.c_str(), path.size() + 1);
  Received r;
  r.sock = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (r.sock < 0 || ::connect(r.sock, reinterpret_cast<const sockaddr*>(&sun), sizeof sun) != 0) {
    err = "cannot reach the running pgkeel at " + path + ": " + std::strerror(errno);
    if (r.sock >= 0) ::close(r.sock);
    return std::nullopt;
  }
  auto fail = [&](const std::string& why) -> std::optional<Received> {
    err = why;
    for (Handed& h : r.handed) ::close(h.fd);
    ::close(r.sock);
    return std::nullopt;
  };
  std::string e;
  if (!send_parcel(r.sock, Parcel{"hello pid=" + std::to_string(::getpid()) + " version=" PGKEEL_VERSION, {}}, timeout, e)) {
    return fail("saying hello: " + e);
  }
  std::optional<Parcel> l = recv_parcel(r.sock, timeout, e);
  if (!l) return fail("waiting for the listeners: " + e);
  if (l->text.rfind("refused", 0) == 0) {
    for (int fd : l->fds) ::close(fd);
    return fail("the running pgkeel refused: " + l->text.substr(std::min<std::size_t>(8, l->text.size())));
  }
  std::optional<std::vector<Handed>> handed = parse_listeners(*l, e);
  if (!handed) {
    for (int fd : l->fds) ::close(fd);
    return fail(e);
  }
  r.handed = std::move(*handed);
  std::optional<Parcel> k = recv_parcel(r.sock, timeout, e);
  if (!k) return fail("waiting for the keeper to stop: " + e);
  for (int fd : k->fds) ::close(fd);
  std::optional<KeeperHandover> kh = parse_keeper(k->text);
  if (!kh) return fail("not a keeper parcel: " + k->text.substr(0, 100));
  r.keeper = *kh;
  return r;
}

}  // namespace pgkeel::proxy::takeover
