// proxy/conn.h — one socket end as clients and servers both have it: the fd, its read and
// write events, the bytes read from it still owed to the peer, and bytes pgkeel itself
// generated for it. Sends go straight to the socket; only a short send arms the write event.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "conf/config.h"
#include "proxy/buffer.h"
#include "proxy/handles.h"

typedef struct ssl_st SSL;

namespace pgkeel::proxy {

enum class IoStatus { kDone, kBlocked, kError };

struct Endpoint {
  int fd = -1;
  SSL* ssl = nullptr;      // set once a TLS handshake started; every read and write goes through it
  EventPtr rd;
  EventPtr wr;
  IoBuffer* in = nullptr;  // read from this fd, not yet fully sent to the peer
  std::string out;         // generated for this fd, not yet sent (goes before relayed bytes)
  std::size_t out_sent = 0;
  bool reading = false;
  bool writing = false;

  Endpoint() = default;
  Endpoint(const Endpoint&) = delete;
  Endpoint& operator=(const Endpoint&) = delete;

  void set_reading(bool on);
  void set_writing(bool on);
  // Sends `out` from out_sent; kDone when nothing generated remains.
  IoStatus flush_out();
  // Appends to `out` and tries to send at once; arms the write event if it could not.
  IoStatus send(std::string_view bytes);
  bool out_empty() const { return out_sent == out.size(); }
  void close();  // removes events, frees the TLS state, closes the fd; buffers are returned by the owner

  // One read: bytes read, 0 on EOF, -1 when nothing is there now, -2 on error. Over TLS,
  // decrypted bytes left inside OpenSSL re-arm the read event by themselves.
  long read(char* p, std::size_t n);
  // One write: bytes written (> 0), -1 when the socket is full, -2 on error.
  long write(const char* p, std::size_t n);
  // Drives a TLS handshake started by the owner; arms the read or write event it waits for.
  // kDone when finished; kError with `error` set.
  IoStatus handshake(std::string& error);
};

// Sends in->[begin, end) to `ep`, advancing in->begin. kDone when all went.
IoStatus send_buffer(Endpoint& ep, IoBuffer* in);

// Reads into the free tail of `buf`. Returns bytes read, 0 on EOF, -1 on EAGAIN, -2 on error.
long recv_into(Endpoint& ep, IoBuffer* buf);

// The relay's read: takes ep.in from `pool` if the endpoint holds none, receives into it and sets
// `from` to where the new bytes start. Returns as recv_into(); on -1 an empty buffer goes back.
long receive(Endpoint& ep, BufferPool& pool, std::size_t& from);

// Gives ep.in back to `pool` once everything in it was sent.
void release_if_drained(Endpoint& ep, BufferPool& pool);

// "c0-17" / "s1-4": a connection's name in logs and SHOW output (kind, worker, id).
std::string connection_name(char kind, unsigned worker, std::uint32_t id);

// TCP_NODELAY, keepalive (idle, interval, count) and TCP_USER_TIMEOUT from [general].
void set_socket_options(int fd, bool tcp, const conf::GeneralConfig& general);

}  // namespace pgkeel::proxy
