#include "proxy/conn.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>

namespace pgkeel::proxy {

void Endpoint::set_reading(bool on) {
  if (on == reading || !rd) return;
  if (on) {
    event_add(rd.get(), nullptr);
  } else {
    event_del(rd.get());
  }
  reading = on;
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
    const ssize_t n = ::send(fd, out.data() + out_sent, out.size() - out_sent, MSG_NOSIGNAL);
    if (n > 0) {
      out_sent += static_cast<std::size_t>(n);
      continue;
    }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return IoStatus::kBlocked;
    if (n < 0 && errno == EINTR) continue;
    return IoStatus::kError;
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
  if (fd >= 0) ::close(fd);
  fd = -1;
}

IoStatus send_buffer(int fd, IoBuffer* in) {
  while (in->begin < in->end) {
    const ssize_t n = ::send(fd, in->data + in->begin, in->end - in->begin, MSG_NOSIGNAL);
    if (n > 0) {
      in->begin += static_cast<std::size_t>(n);
      continue;
    }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return IoStatus::kBlocked;
    if (n < 0 && errno == EINTR) continue;
    return IoStatus::kError;
  }
  return IoStatus::kDone;
}

long recv_into(int fd, IoBuffer* buf) {
  while (true) {
    const ssize_t n = ::recv(fd, buf->data + buf->end, IoBuffer::kSize - buf->end, 0);
    if (n > 0) {
      buf->end += static_cast<std::size_t>(n);
      return n;
    }
    if (n == 0) return 0;
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return -1;
    return -2;
  }
}

long receive(Endpoint& ep, BufferPool& pool, std::size_t& from) {
  if (ep.in == nullptr) ep.in = pool.acquire();
  from = ep.in->end;
  const long n = recv_into(ep.fd, ep.in);
  if (n == -1) release_if_drained(ep, pool);
  return n;
}

void release_if_drained(Endpoint& ep, BufferPool& pool) {
  if (ep.in != nullptr && ep.in->pending() == 0) {
    pool.release(ep.in);
    ep.in = nullptr;
  }
}

void set_socket_options(int fd, bool tcp) {
  if (!tcp) return;
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
}

}  // namespace pgkeel::proxy
