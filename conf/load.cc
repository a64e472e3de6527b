// conf/load.cc — the file edge of conf/: reading files from disk, and how an error is printed.
// The TOML mapping is in config_toml.cc (the only file that includes toml11).

#include "conf/internal.h"
#include "conf/load.h"

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>


namespace pgkeel::conf {

namespace {

// A real pgkeel.toml is a few KiB; toml11's parser slows down quadratically on huge inputs.
constexpr std::uintmax_t kMaxConfigBytes = std::uintmax_t{256} * 1024;

}  // namespace

std::string ConfigError::to_string() const {
  std::string out = file;
  if (line > 0) {
    out += ':' + std::to_string(line);
  }
  out += ": ";
  if (!key.empty()) {
    out += key + ": ";
  }
  out += message;
  return out;
}

LoadResult load_config(const std::string& path) {
  std::string text;
  if (std::string why = internal::read_file(path, kMaxConfigBytes, text); !why.empty()) {
    LoadResult result;
    result.errors.push_back({path, 0, "", why});
    return result;
  }
  return parse_config(text, path);
}

namespace internal {

std::string read_file(const std::string& path, std::uintmax_t max_bytes, std::string& out) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (ec || !fs::exists(st)) {
    return "cannot open: " + (ec ? ec.message() : std::string("no such file"));
  }
  // Not a FIFO or a device: reading those could block or never end.
  if (!fs::is_regular_file(st)) {
    return "is not a regular file";
  }
  const std::uintmax_t size = fs::file_size(path, ec);
  if (ec) {
    return "cannot read: " + ec.message();
  }
  if (size > max_bytes) {
    return "is " + std::to_string(size) + " bytes; the limit is " + std::to_string(max_bytes);
  }
  errno = 0;
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return std::string("cannot open: ") + (errno != 0 ? std::strerror(errno) : "unknown error");
  }
  std::string text;
  text.reserve(static_cast<std::size_t>(size));
  text.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  if (in.bad()) {
    return "cannot read: I/O error";
  }
  if (text.size() > max_bytes) {
    return "grew past " + std::to_string(max_bytes) + " bytes while read";
  }
  out = std::move(text);
  return "";
}

std::string printable(std::string_view text) {
  std::string out = "\"";
  for (const char c : text) {
    const auto u = static_cast<unsigned char>(c);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (u < 0x20 || u == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", u);
      out += buf;
    } else {
      out += c;
    }
  }
  out += '"';
  return out;
}

}  // namespace internal

}  // namespace pgkeel::conf
