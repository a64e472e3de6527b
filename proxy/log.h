// proxy/log.h — one line per event, `key=value` (or JSON), with a level and a component. Thread-safe:
// each line is formatted in a local buffer and written with a single write(2). The same component
// and event more than RateLimiter::kPerWindow times a second is suppressed, and a later line says
// how many were.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "conf/config.h"

namespace pgkeel::log {

using Level = conf::LogLevel;

enum class Format : std::uint8_t { kText, kJson };

void set_level(Level level);
// kText: `ts level=… component=… key=value …`; kJson: one JSON object per line with the same keys.
void set_format(Format format);
bool enabled(Level level);

// Builds one log line. Usage:
//   log::Line(Level::kInfo, "client").kv("event", "login").kv("conn", id).emit();
class Line {
 public:
  Line(Level level, std::string_view component);
  Line& kv(std::string_view key, std::string_view value);
  Line& kv(std::string_view key, const std::string& value) { return kv(key, std::string_view(value)); }
  Line& kv(std::string_view key, const char* value) { return kv(key, std::string_view(value)); }
  Line& kv(std::string_view key, std::int64_t value);
  Line& kv(std::string_view key, std::uint64_t value);
  Line& kv(std::string_view key, int value) { return kv(key, static_cast<std::int64_t>(value)); }
  Line& kv(std::string_view key, unsigned value) { return kv(key, static_cast<std::uint64_t>(value)); }
  Line& kv(std::string_view key, double value);
  // This line is never suppressed by the rate limit: lines that happen once per worker or once
  // per process (start-up, an epoch applied), whose every copy matters.
  Line& unlimited() {
    limited_ = false;
    return *this;
  }
  void emit();

 private:
  void append_json_string(std::string_view v);
  Line& raw(std::string_view key, std::string_view number);  // unquoted in JSON
  std::string buf_;
  std::string component_;
  std::string limit_key_;  // component '\0' event
  bool on_;
  bool json_ = false;
  bool limited_ = true;
};

// Lines of one key (component and event) beyond kPerWindow within a window of kWindow are
// suppressed and counted; the count is reported once the window has passed, when that key logs
// again or at the next flush(). Pure: time is an argument; not thread-safe (log.cc locks).
class RateLimiter {
 public:
  using Clock = std::chrono::steady_clock;
  static constexpr std::uint32_t kPerWindow = 20;
  static constexpr std::chrono::seconds kWindow{1};

  struct Suppressed {
    std::string key;             // component '\0' event
    std::uint64_t lines = 0;     // suppressed
    Clock::duration over{};      // from the window's first line to its last suppressed one
  };

  explicit RateLimiter(std::uint32_t per_window = kPerWindow, Clock::duration window = kWindow)
      : per_window_(per_window), window_(window) {}

  // Whether a line of `key` may be written at `now`. When this line opens a new window and the
  // previous one suppressed lines, `ended` receives their count (ended->lines > 0): report it
  // before this line.
  bool admit(std::string_view key, Clock::time_point now, Suppressed* ended);
  // The counts of every window that has passed with lines suppressed; keys whose window passed
  // are forgotten, so the table holds only the keys of the last second.
  std::vector<Suppressed> flush(Clock::time_point now);
  std::size_t keys() const { return windows_.size(); }

 private:
  struct Window {
    Clock::time_point start;
    Clock::time_point last_suppressed;
    std::uint32_t written = 0;
    std::uint64_t suppressed = 0;
  };
  std::uint32_t per_window_;
  Clock::duration window_;
  std::unordered_map<std::string, Window> windows_;
};

// Writes the lines that say how many lines were suppressed, for windows that have passed. Called
// from every worker's tick, so that a count is reported even when its key goes quiet.
void flush_suppressed();

inline Line debug(std::string_view component) { return Line(Level::kDebug, component); }
inline Line info(std::string_view component) { return Line(Level::kInfo, component); }
inline Line warning(std::string_view component) { return Line(Level::kWarning, component); }
inline Line error(std::string_view component) { return Line(Level::kError, component); }

}  // namespace pgkeel::log
