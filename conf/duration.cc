// conf/duration.cc — duration strings in the config: "500ms", "2s", "1.5s", "10min", "1h".
// A bare TOML integer (no quotes) means milliseconds; config_toml.cc hands it here as "<n>ms".

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "conf/internal.h"
#include "conf/load.h"


namespace pgkeel::conf::internal {

namespace {

// Nothing pgkeel waits for is measured in years; a longer value is a typo (a unit too big, or
// digits too many), and keeping durations this small means now() + timeout never overflows.
constexpr std::int64_t kMaxMillis = 365LL * 24 * 3600 * 1000;
constexpr int kMaxFractionDigits = 3;

bool is_digit(char c) { return c >= '0' && c <= '9'; }

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) {
    s.remove_prefix(1);
  }
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) {
    s.remove_suffix(1);
  }
  return s;
}

}  // namespace

std::string parse_duration(std::string_view text, Millis& out) {
  std::string_view s = trim(text);
  if (s.empty()) {
    return "a duration needs a number and a unit, e.g. \"30s\"";
  }
  if (s.front() == '-') {
    return "a duration cannot be negative";
  }
  if (s.front() == '+') {
    s.remove_prefix(1);
  }
  if (s.empty() || !is_digit(s.front())) {
    return "a duration starts with a number, e.g. \"30s\" or \"500ms\"";
  }

  // Whole part. Bounded well below overflow: anything past kMaxMillis is refused anyway.
  std::int64_t whole = 0;
  while (!s.empty() && is_digit(s.front())) {
    whole = whole * 10 + (s.front() - '0');
    if (whole > kMaxMillis) {
      return "longer than a year; check the unit and the digits";
    }
    s.remove_prefix(1);
  }
  // Fraction: at most kMaxFractionDigits digits, and the total must be whole milliseconds.
  std::int64_t fraction = 0;
  std::int64_t scale = 1;
  if (!s.empty() && s.front() == '.') {
    s.remove_prefix(1);
    if (s.empty() || !is_digit(s.front())) {
      return "a decimal point must be followed by digits";
    }
    int digits = 0;
    while (!s.empty() && is_digit(s.front())) {
      if (++digits > kMaxFractionDigits) {
        return "at most 3 decimal places";
      }
      fraction = fraction * 10 + (s.front() - '0');
      scale *= 10;
      s.remove_prefix(1);
    }
  }

  const std::string_view unit = trim(s);
  std::int64_t unit_ms = 0;
  if (unit == "ms") {
    unit_ms = 1;
  } else if (unit == "s") {
    unit_ms = 1000;
  } else if (unit == "min") {
    unit_ms = std::int64_t{60} * 1000;
  } else if (unit == "h") {
    unit_ms = std::int64_t{3600} * 1000;
  } else if (unit.empty()) {
    return "missing unit (ms, s, min or h); a number of milliseconds is written without quotes";
  } else if (unit == "m") {
    return "unit 'm' is ambiguous: write 'min' for minutes or 'ms' for milliseconds";
  } else {
    return "unknown unit " + printable(unit) + "; use ms, s, min or h";
  }

  if (whole > kMaxMillis / unit_ms) {
    return "longer than a year; check the unit and the digits";
  }
  // whole * unit_ms <= kMaxMillis (~3.2e10) and scale <= 1000: no overflow below.
  const std::int64_t scaled = (whole * scale + fraction) * unit_ms;
  if (scaled % scale != 0) {
    return "not a whole number of milliseconds";
  }
  const std::int64_t ms = scaled / scale;
  if (ms > kMaxMillis) {
    return "longer than a year; check the unit and the digits";
  }
  out = Millis{ms};
  return "";
}

}  // namespace pgkeel::conf::internal
