#include "proxy/conn.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

namespace pgkeel::proxy {

PeerAddress PeerAddress::from(const sockaddr* sa) {
  PeerAddress p;
  if (sa == nullptr) return p;
  if (sa->sa_family == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(sa);
    std::memcpy(p.addr.data(), &in->sin_addr, sizeof in->sin_addr);
    p.port = ntohs(in->sin_port);
    p.family = AF_INET;
  } else if (sa->sa_family == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(sa);
    std::memcpy(p.addr.data(), &in6->sin6_addr, sizeof in6->sin6_addr);
    p.port = ntohs(in6->sin6_port);
    p.family = AF_INET6;
  } else if (sa->sa_family == AF_UNIX) {
    p.family = AF_UNIX;
  }
  return p;
}

std::string PeerAddress::host() const {
  char host[INET6_ADDRSTRLEN] = {0};
  switch (family) {
    case AF_INET:
      inet_ntop(AF_INET, addr.data(), host, sizeof host);
      return host;
    case AF_INET6: {
      inet_ntop(AF_INET6, addr.data(), host, sizeof host);
      // snprintf rather than string concatenation: GCC 12 at -O3 warns falsely (-Wrestrict) on the latter.
      char out[INET6_ADDRSTRLEN + 2];
      std::snprintf(out, sizeof out, "[%s]", host);
      return out;
    }
    case AF_UNIX:
      return "unix";
    default:
      return "unknown";
  }
}

std::string PeerAddress::text() const {
  std::string h = host();
  if (family != AF_INET && family != AF_INET6) return h;
  char out[INET6_ADDRSTRLEN + 16];
  std::snprintf(out, sizeof out, "%s:%u", h.c_str(), static_cast<unsigned>(port));
  return out;
}

bool Endpoint::open_events(event_base* base, event_callback_fn on_read, event_callback_fn on_write, void* arg) {
  rd_.reset(event_new(base, fd, EV_READ | EV_PERSIST, on_read, arg));
  on_writable_ = on_write;
  return rd_ != nullptr;
}

bool Endpoint::make_write_event() {
  if (!wr_ && rd_ && on_writable_ != nullptr) {
    wr_.reset(event_new(event_get_base(rd_.get()), fd, EV_WRITE | EV_PERSIST, on_writable_,
                        event_get_callback_arg(rd_.get())));
  }
  return wr_ != nullptr;
}

void Endpoint::activate_write() {
  if (make_write_event()) event_active(wr_.get(), EV_WRITE, 0);
}

void Endpoint::set_reading(bool on) {
  if (on == reading || !rd_) return;
  if (on) {
    event_add(rd_.get(), nullptr);
    // Bytes OpenSSL already decrypted will not make the socket readable again.
    if (ssl != nullptr && SSL_pending(ssl) > 0) event_active(rd_.get(), EV_READ, 0);
  } else {
    event_del(rd_.get());
  }
  reading = on;
}

long Endpoint::read(char* p, std::size_t n) {
  if (ssl == nullptr) {
    while (true) {
      const ssize_t r = ::recv(fd, p, n, 0);
      if (r >= 0) return r;
      if (errno == EINTR) continue;
      return errno == EAGAIN || errno == EWOULDBLOCK ? -1 : -2;
    }
  }
  ERR_clear_error();
  const int r = SSL_read(ssl, p, static_cast<int>(std::min<std::size_t>(n, 1 << 30)));
  if (r > 0) {
    if (SSL_pending(ssl) > 0 && reading && rd_) event_active(rd_.get(), EV_READ, 0);
    return r;
  }
  switch (SSL_get_error(ssl, r)) {
    case SSL_ERROR_WANT_READ:
    case SSL_ERROR_WANT_WRITE:
      return -1;
    case SSL_ERROR_ZERO_RETURN:
      return 0;
    case SSL_ERROR_SYSCALL:
      return errno == 0 ? 0 : -2;  // EOF without close_notify: a plain close
    default:
      return -2;
  }
}

long Endpoint::write(const char* p, std::size_t n) {
  if (ssl == nullptr) {
    while (true) {
      const ssize_t r = ::send(fd, p, n, MSG_NOSIGNAL);
      if (r > 0) return r;
      if (r < 0 && errno == EINTR) continue;
      return r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) ? -1 : -2;
    }
  }
  ERR_clear_error();
  const int r = SSL_write(ssl, p, static_cast<int>(std::min<std::size_t>(n, 1 << 30)));
  if (r > 0) return r;
  switch (SSL_get_error(ssl, r)) {
    case SSL_ERROR_WANT_READ:
    case SSL_ERROR_WANT_WRITE:
      return -1;
    default:
      return -2;
  }
}

IoStatus Endpoint::handshake(std::string& error) {
  ERR_clear_error();
  const int r = SSL_do_handshake(ssl);
  if (r == 1) {
    set_writing(false);
    set_reading(true);
    return IoStatus::kDone;
  }
  switch (SSL_get_error(ssl, r)) {
    case SSL_ERROR_WANT_READ:
      set_writing(false);
      set_reading(true);
      return IoStatus::kBlocked;
    case SSL_ERROR_WANT_WRITE:
      set_reading(false);
      set_writing(true);
      return IoStatus::kBlocked;
    default: {
      const unsigned long e = ERR_get_error();
      char buf[256] = "connection closed during the TLS handshake";
      if (e != 0) ERR_error_string_n(e, buf, sizeof buf);
      error = buf;
      return IoStatus::kError;
    }
  }
}

void Endpoint::set_writing(bool on) {
  if (on == writing || (on ? !make_write_event() : !wr_)) return;
  if (on) {
    event_add(wr_.get(), nullptr);
  } else {
    event_del(wr_.get());
  }
  writing = on;
}

IoStatus Endpoint::flush_out() {
  if (unsent_ == nullptr) return IoStatus::kDone;
  std::string& b = unsent_->bytes;
  while (unsent_->sent < b.size()) {
    const long n = write(b.data() + unsent_->sent, b.size() - unsent_->sent);
    if (n > 0) {
      unsent_->sent += static_cast<std::size_t>(n);
      continue;
    }
    return n == -1 ? IoStatus::kBlocked : IoStatus::kError;
  }
  unsent_.reset();  // idle connections hold no output buffer
  return IoStatus::kDone;
}

IoStatus Endpoint::send(std::string_view bytes) {
  if (unsent_ != nullptr) {
    unsent_->bytes.append(bytes);
    return IoStatus::kBlocked;  // already waiting for the socket; ours go after what is queued
  }
  std::size_t sent = 0;
  while (sent < bytes.size()) {
    const long n = write(bytes.data() + sent, bytes.size() - sent);
    if (n > 0) {
      sent += static_cast<std::size_t>(n);
      continue;
    }
    if (n != -1) return IoStatus::kError;
    // Over TLS the retry repeats these bytes from the copy (SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER).
    unsent_ = std::make_unique<Unsent>(Unsent{std::string(bytes.substr(sent)), 0});
    set_writing(true);
    return IoStatus::kBlocked;
  }
  return IoStatus::kDone;
}

void Endpoint::close() {
  if (rd_) event_del(rd_.get());
  if (wr_) event_del(wr_.get());
  reading = writing = false;
  rd_.reset();
  wr_.reset();
  unsent_.reset();
  if (ssl != nullptr) {
    SSL_free(ssl);  // no close_notify: PostgreSQL does not wait for one either
    ssl = nullptr;
  }
  if (fd >= 0) ::close(fd);
  fd = -1;
}

IoStatus send_buffer(Endpoint& ep, IoBuffer* in) {
  while (in->begin < in->end) {
    const long n = ep.write(reinterpret_cast<const char*>(in->data + in->begin), in->end - in->begin);
    if (n > 0) {
      in->begin += static_cast<std::size_t>(n);
      continue;
    }
    return n == -1 ? IoStatus::kBlocked : IoStatus::kError;
  }
  return IoStatus::kDone;
}

long recv_into(Endpoint& ep, IoBuffer* buf) {
  const long n = ep.read(reinterpret_cast<char*>(buf->data + buf->end), IoBuffer::kSize - buf->end);
  if (n > 0) buf->end += static_cast<std::size_t>(n);
  return n;
}

long receive(Endpoint& ep, BufferPool& pool, std::size_t& from) {
  if (ep.in == nullptr) ep.in = pool.acquire();
  from = ep.in->end;
  const long n = recv_into(ep, ep.in);
  if (n == -1) release_if_drained(ep, pool);
  return n;
}

void release_if_drained(Endpoint& ep, BufferPool& pool) {
  if (ep.in != nullptr && ep.in->pending() == 0) {
    pool.release(ep.in);
    ep.in = nullptr;
  }
}

std::string connection_name(char kind, unsigned worker, std::uint32_t id) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%c%u-%u", kind, worker, static_cast<unsigned>(id));
  return buf;
}

void set_socket_options(int fd, bool tcp, const conf::GeneralConfig& g) {
  if (!tcp) return;
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
  auto secs = [](conf::Millis d) { return static_cast<int>(std::max<long long>(1, (d.count() + 999) / 1000)); };
  const int idle = secs(g.tcp_keepalive_idle);
  const int intvl = secs(g.tcp_keepalive_interval);
  const int cnt = g.tcp_keepalive_count;
  setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
  setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof intvl);
  setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof cnt);
  if (g.tcp_user_timeout.count() > 0) {
    const auto ut = static_cast<unsigned>(g.tcp_user_timeout.count());
    setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &ut, sizeof ut);
  }
}

}  // namespace pgkeel::proxy
