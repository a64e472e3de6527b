// proxy/buffer.h — fixed-size I/O buffers, lent by a per-worker pool only while bytes are in
// flight, so an idle connection holds none and the data path never allocates per message.
#pragma once

#include <cstddef>
#include <vector>

namespace pgkeel::proxy {

struct IoBuffer {
  static constexpr std::size_t kSize = 32 * 1024;
  std::size_t begin = 0;  // first unsent byte
  std::size_t end = 0;    // one past the last received byte
  IoBuffer* next_free = nullptr;
  unsigned char data[kSize];

  std::size_t pending() const { return end - begin; }
  void clear() { begin = end = 0; }
};

// Not thread-safe: one per worker.
class BufferPool {
 public:
  explicit BufferPool(std::size_t max_cached = 256) : max_cached_(max_cached) {}
  BufferPool(const BufferPool&) = delete;
  BufferPool& operator=(const BufferPool&) = delete;
  ~BufferPool() {
    while (free_ != nullptr) {
      IoBuffer* b = free_;
      free_ = b->next_free;
      delete b;
    }
  }

  IoBuffer* acquire() {
    IoBuffer* b = free_;
    if (b != nullptr) {
      free_ = b->next_free;
      --cached_;
    } else {
      b = new IoBuffer;
    }
    b->clear();
    b->next_free = nullptr;
    ++in_use_;
    return b;
  }

  void release(IoBuffer* b) {
    if (b == nullptr) return;
    --in_use_;
    if (cached_ >= max_cached_) {
      delete b;
      return;
    }
    b->next_free = free_;
    free_ = b;
    ++cached_;
  }

  std::size_t in_use() const { return in_use_; }
  std::size_t cached() const { return cached_; }

 private:
  IoBuffer* free_ = nullptr;
  std::size_t cached_ = 0;
  std::size_t in_use_ = 0;
  std::size_t max_cached_;
};

}  // namespace pgkeel::proxy
