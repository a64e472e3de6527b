// proxy/intern.h — one shared copy of equal immutable values (a session's identity, a user's
// server credential, a server's ParameterStatus set) among a worker's connections, so that
// 10,000 clients of one application hold one copy, not 10,000. Not thread-safe: one per worker.
#pragma once

#include <algorithm>
#include <cstddef>
#include <iterator>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>

namespace pgkeel::proxy {

template <class T>
class Interner {
 public:
  // The shared copy of `value`. `key` names the slot: it need not describe the value completely
  // (a user name for that user's credential), since the value is compared too; a different value
  // under the same key takes the slot over, and holders of the old one keep theirs.
  std::shared_ptr<const T> intern(const std::string& key, T&& value) {
    auto it = slots_.find(key);
    if (it != slots_.end()) {
      if (std::shared_ptr<const T> held = it->second.lock(); held != nullptr && *held == value) return held;
    }
    auto made = std::make_shared<const T>(std::move(value));
    if (it != slots_.end()) {
      it->second = made;
    } else {
      if (slots_.size() >= sweep_at_) sweep();
      slots_.emplace(key, made);
    }
    return made;
  }

  std::size_t size() const { return slots_.size(); }

 private:
  // Drops slots nobody holds any more; amortized over the insertions that filled the table.
  void sweep() {
    for (auto it = slots_.begin(); it != slots_.end();) {
      it = it->second.expired() ? slots_.erase(it) : std::next(it);
    }
    sweep_at_ = std::max<std::size_t>(kMinSweep, 2 * slots_.size());
  }

  static constexpr std::size_t kMinSweep = 64;
  std::unordered_map<std::string, std::weak_ptr<const T>> slots_;
  std::size_t sweep_at_ = kMinSweep;
};

}  // namespace pgkeel::proxy
