#include "proxy/log.h"

#include <sys/time.h>
#include <unistd.h>

#include <cstdio>
#include <ctime>
#include <mutex>

namespace pgkeel::log {
namespace {

std::atomic<int> g_level{static_cast<int>(Level::kInfo)};
std::atomic<bool> g_json{false};

std::string_view level_name(Level level) {
  switch (level) {
    case Level::kDebug: return "debug";
    case Level::kInfo: return "info";
    case Level::kWarning: return "warning";
    case Level::kError: return "error";
  }
  return "info";
}

std::mutex g_limit_mu;
// Guarded by g_limit_mu; never destroyed, so a line logged during exit still finds it.
RateLimiter& limiter() {
  static auto* l = new RateLimiter();
  return *l;
}

bool needs_quotes(std::string_view v) {
  if (v.empty()) return true;
  for (char c : v) {
    if (c == ' ' || c == '"' || c == '=' || c == '\\' || static_cast<unsigned char>(c) < 0x20) return true;
  }
  return false;
}

}  // namespace

void set_format(Format format) { g_json.store(format == Format::kJson, std::memory_order_relaxed); }
void set_level(Level level) { g_level.store(static_cast<int>(level), std::memory_order_relaxed); }
bool enabled(Level level) { return static_cast<int>(level) >= g_level.load(std::memory_order_relaxed); }

Line::Line(Level level, std::string_view component) : on_(enabled(level)) {
  if (!on_) return;
  component_ = component;
  buf_.reserve(192);
  timeval tv{};
  gettimeofday(&tv, nullptr);
  tm t{};
  gmtime_r(&tv.tv_sec, &t);
  char ts[48];
  std::snprintf(ts, sizeof ts, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", t.tm_year + 1900, t.tm_mon + 1,
                t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec, static_cast<int>(tv.tv_usec / 1000));
  json_ = g_json.load(std::memory_order_relaxed);
  if (json_) {
    buf_ += "{\"ts\":\"";
    buf_ += ts;
    buf_ += "\",\"level\":\"";
    buf_ += level_name(level);
    buf_ += "\",\"component\":";
    append_json_string(component);
    return;
  }
  buf_ += ts;
  buf_ += " level=";
  buf_ += level_name(level);
  buf_ += " component=";
  buf_ += component;
}

void Line::append_json_string(std::string_view v) {
  static constexpr char kHex[] = "0123456789abcdef";
  buf_ += '"';
  for (char c : v) {
    const auto u = static_cast<unsigned char>(c);
    if (c == '"' || c == '\\') {
      buf_ += '\\';
      buf_ += c;
    } else if (c == '\n') {
      buf_ += "\\n";
    } else if (u < 0x20) {
      buf_ += "\\u00";
      buf_ += kHex[u >> 4];
      buf_ += kHex[u & 15];
    } else {
      buf_ += c;  // UTF-8 passes through
    }
  }
  buf_ += '"';
}

Line& Line::kv(std::string_view key, std::string_view value) {
  if (!on_) return *this;
  if (key == "event" && limit_key_.empty()) {
    limit_key_.reserve(component_.size() + 1 + value.size());
    limit_key_ = component_;
    limit_key_ += '\0';
    limit_key_ += value;
  }
  if (json_) {
    buf_ += ',';
    append_json_string(key);
    buf_ += ':';
    append_json_string(value);
    return *this;
  }
  buf_ += ' ';
  buf_ += key;
  buf_ += '=';
  if (!needs_quotes(value)) {
    buf_ += value;
    return *this;
  }
  buf_ += '"';
  for (char c : value) {
    if (c == '"' || c == '\\') {
      buf_ += '\\';
      buf_ += c;
    } else if (c == '\n') {
      buf_ += "\\n";
    } else if (static_cast<unsigned char>(c) < 0x20) {
      buf_ += ' ';
    } else {
      buf_ += c;
    }
  }
  buf_ += '"';
  return *this;
}

Line& Line::raw(std::string_view key, std::string_view number) {
  if (!json_) return kv(key, number);
  buf_ += ',';
  append_json_string(key);
  buf_ += ':';
  buf_ += number;
  return *this;
}

Line& Line::kv(std::string_view key, std::int64_t value) {
  if (!on_) return *this;
  return raw(key, std::to_string(value));
}

Line& Line::kv(std::string_view key, std::uint64_t value) {
  if (!on_) return *this;
  return raw(key, std::to_string(value));
}

Line& Line::kv(std::string_view key, double value) {
  if (!on_) return *this;
  char tmp[32];
  std::snprintf(tmp, sizeof tmp, "%.3f", value);
  return raw(key, tmp);
}

namespace {

void write_line(const std::string& line) {
  const char* p = line.data();
  std::size_t left = line.size();
  while (left > 0) {
    ssize_t n = ::write(STDERR_FILENO, p, left);
    if (n <= 0) return;  // logging must never take the process down
    p += n;
    left -= static_cast<std::size_t>(n);
  }
}

void report_suppressed(const RateLimiter::Suppressed& s) {
  const std::size_t nul = s.key.find('\0');
  Line(Level::kWarning, "log")
      .kv("event", "suppressed")
      .kv("of_component", std::string_view(s.key).substr(0, nul))
      .kv("of_event", nul == std::string::npos ? std::string_view() : std::string_view(s.key).substr(nul + 1))
      .kv("lines", s.lines)
      .kv("over_s", std::chrono::duration<double>(s.over).count())
      .unlimited()
      .emit();
}

}  // namespace

bool RateLimiter::admit(std::string_view key, Clock::time_point now, Suppressed* ended) {
  auto it = windows_.find(std::string(key));
  if (it == windows_.end()) it = windows_.emplace(std::string(key), Window{now, now, 0, 0}).first;
  Window& w = it->second;
  if (now - w.start >= window_) {
    if (w.suppressed > 0 && ended != nullptr) *ended = {it->first, w.suppressed, w.last_suppressed - w.start};
    w = Window{now, now, 0, 0};
  }
  if (w.written < per_window_) {
    ++w.written;
    return true;
  }
  ++w.suppressed;
  w.last_suppressed = now;
  return false;
}

std::vector<RateLimiter::Suppressed> RateLimiter::flush(Clock::time_point now) {
  std::vector<Suppressed> out;
  for (auto it = windows_.begin(); it != windows_.end();) {
    const Window& w = it->second;
    if (now - w.start < window_) {
      ++it;
      continue;
    }
    if (w.suppressed > 0) out.push_back({it->first, w.suppressed, w.last_suppressed - w.start});
    it = windows_.erase(it);
  }
  return out;
}

void flush_suppressed() {
  std::vector<RateLimiter::Suppressed> ended;
  {
    std::lock_guard lock(g_limit_mu);
    if (limiter().keys() == 0) return;
    ended = limiter().flush(RateLimiter::Clock::now());
  }
  for (const RateLimiter::Suppressed& s : ended) report_suppressed(s);
}

void Line::emit() {
  if (!on_) return;
  if (limited_) {
    RateLimiter::Suppressed ended;
    bool admitted = false;
    {
      std::lock_guard lock(g_limit_mu);
      admitted = limiter().admit(limit_key_.empty() ? component_ : limit_key_, RateLimiter::Clock::now(), &ended);
    }
    if (ended.lines > 0) report_suppressed(ended);
    if (!admitted) return;
  }
  if (json_) buf_ += '}';
  buf_ += '\n';
  write_line(buf_);
}

}  // namespace pgkeel::log
