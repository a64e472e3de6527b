#include "proxy/conn.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>

namespace pgkeel::proxy {

void Endpoint::set_reading(bool on) {
  if (on == reading || !rd) return;
  if (on) {
    event_add(rd.get(), nullptr);
    // Bytes OpenSSL already decrypted will not make the socket readable again.
    if (ssl != nullptr && SSL_pending(ssl) > 0) event_active(rd.get(), EV_READ, 0);
  } else {
    event_del(rd.get());
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
    if (SSL_pending(ssl) > 0 && reading && rd) event_active(rd.get(), EV_READ, 0);
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
  if (on == writing || !wr) return;
  if (on) {
    event_add(wr.get(), nullptr);
  } else {
    event_del(wr.get());
  }
  writing = on;
}

IoStatus Endpoint::flush_out() {
  while (out_sent < out.size()) {
    const long n = write(out.data() + out_sent, out.size() - out_sent);
    if (n > 0) {
      out_sent += static_cast<std::size_t>(n);
      continue;
    }
    return n == -1 ? IoStatus::kBlocked : IoStatus::kError;
  }
  out.clear();
  out_sent = 0;
  if (out.capacity() > 4096) std::string().swap(out);  // idle connections hold no buffers
  return IoStatus::kDone;
}

IoStatus Endpoint::send(std::string_view bytes) {
  const bool was_empty = out_empty();
  out.append(bytes);
  if (!was_empty) return IoStatus::kBlocked;  // already waiting for the socket
  const IoStatus st = flush_out();
  if (st == IoStatus::kBlocked) set_writing(true);
  return st;
}

void Endpoint::close() {
  if (rd) event_del(rd.get());
  if (wr) event_del(wr.get());
  reading = writing = false;
  rd.reset();
  wr.reset();
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
