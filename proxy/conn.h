// proxy/conn.h — one socket end as clients and servers both have it: the fd, its read and
// write events, the bytes read from it still owed to the peer, and bytes pgkeel itself
// generated for it. Sends go straight to the socket; only a short send arms the write event.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include "proxy/buffer.h"
#include "proxy/handles.h"

namespace pgkeel::proxy {

enum class IoStatus { kDone, kBlocked, kError };

struct Endpoint {
  int fd = -1;
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
  void close();  // removes events, closes the fd; buffers are returned by the owner
};

// Sends in->[begin, end) to `fd`, advancing in->begin. kDone when all went.
IoStatus send_buffer(int fd, IoBuffer* in);

// recv() into the free tail of `buf`. Returns bytes read, 0 on EOF, -1 on EAGAIN, -2 on error.
long recv_into(int fd, IoBuffer* buf);

// The relay's read: takes ep.in from `pool` if the endpoint holds none, receives into it and sets
// `from` to where the new bytes start. Returns as recv_into(); on -1 an empty buffer goes back.
long receive(Endpoint& ep, BufferPool& pool, std::size_t& from);

// Gives ep.in back to `pool` once everything in it was sent.
void release_if_drained(Endpoint& ep, BufferPool& pool);

void set_socket_options(int fd, bool tcp);

}  // namespace pgkeel::proxy
