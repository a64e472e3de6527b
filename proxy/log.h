// proxy/log.h — one line per event, `key=value` (or JSON), with a level and a component. Thread-safe:
// each line is formatted in a local buffer and written with a single write(2).
#pragma once

#include <atomic>
#include <cstdint>
#include <string>
#include <string_view>

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
  void emit();

 private:
  void append_json_string(std::string_view v);
  Line& raw(std::string_view key, std::string_view number);  // unquoted in JSON
  std::string buf_;
  bool on_;
  bool json_ = false;
};

inline Line debug(std::string_view component) { return Line(Level::kDebug, component); }
inline Line info(std::string_view component) { return Line(Level::kInfo, component); }
inline Line warning(std::string_view component) { return Line(Level::kWarning, component); }
inline Line error(std::string_view component) { return Line(Level::kError, component); }

}  // namespace pgkeel::log
