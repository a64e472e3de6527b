// tools/fuzz/fuzz_config.cc — untrusted text into parse_config and parse_users. Neither may crash,
// hang or throw; a config comes back exactly when there are no errors; every error names a file
// and says something; users that parse survive being written out and parsed again.
//
// The first byte picks how the rest is used: alone, or spliced into a valid config (so the
// fuzzer reaches validation without first having to invent a whole file).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "conf/load.h"

namespace {

namespace fs = std::filesystem;

// A folder with a valid users file, so configs naming "users.txt" load fully. libFuzzer exits
// without running atexit handlers, so the folder is fixed and reused rather than removed: every
// process (parallel jobs too) writes the same file, atomically, and at most one is left behind.
const fs::path& scratch_dir() {
  static const fs::path dir = [] {
    fs::path d = fs::temp_directory_path() / "pgkeel-fuzz-config";
    fs::create_directories(d);
    const fs::path tmp = d / ("users.txt." + std::to_string(std::random_device{}()));
    std::ofstream(tmp) << "\"app\" \"secret\"\n";
    fs::rename(tmp, d / "users.txt");
    return d;
  }();
  return dir;
}

constexpr std::string_view kHead = R"([general]
users_file = "users.txt"
[[listener]]
name = "rw"
port = 6432
)";
constexpr std::string_view kTail = R"(
[[node]]
name = "db1"
host = "10.0.0.11"
)";

void check_config(std::string_view text, const std::string& filename) {
  const pgkeel::conf::LoadResult r = pgkeel::conf::parse_config(text, filename);
  if (r.config.has_value() == !r.errors.empty()) {
    std::abort();
  }
  for (const pgkeel::conf::ConfigError& e : r.errors) {
    if (e.file.empty() || e.message.empty() || e.line < 0) {
      std::abort();
    }
    (void)e.to_string();
  }
  if (r.config) {
    const pgkeel::conf::Config& c = *r.config;
    if (c.listeners.empty() || c.nodes.empty() || c.users.empty()) {
      std::abort();
    }
    if (c.node_index(c.cluster.initial_primary) < 0) {
      std::abort();
    }
  }
}

std::string quote(const std::string& s) {
  std::string out = "\"";
  for (const char ch : s) {
    out += ch == '"' ? std::string("\"\"") : std::string(1, ch);
  }
  return out + "\"";
}

void check_users(std::string_view text) {
  std::vector<pgkeel::conf::ConfigError> errors;
  const auto users = pgkeel::conf::parse_users(text, "users.txt", errors);
  int last_line = 0;
  std::string again;
  for (const pgkeel::conf::UserEntry& u : users) {
    if (u.name.empty() || u.secret.empty() || u.line <= last_line) {
      std::abort();
    }
    last_line = u.line;
    again += quote(u.name) + " " + quote(u.secret) + "\n";
  }
  for (const pgkeel::conf::ConfigError& e : errors) {
    if (e.line <= 0 || e.message.empty()) {
      std::abort();
    }
  }
  std::vector<pgkeel::conf::ConfigError> errors_again;
  const auto users_again = pgkeel::conf::parse_users(again, "users.txt", errors_again);
  if (!errors_again.empty() || users_again.size() != users.size()) {
    std::abort();
  }
  for (std::size_t i = 0; i < users.size(); ++i) {
    if (users_again[i].name != users[i].name || users_again[i].secret != users[i].secret) {
      std::abort();
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string filename = (scratch_dir() / "pgkeel.toml").string();
  const std::string_view all(reinterpret_cast<const char*>(data), size);
  check_users(all);
  if (size == 0) {
    check_config(all, filename);
    return 0;
  }
  const std::string_view rest = all.substr(1);
  switch (data[0] % 3) {
    case 0:  // the text alone
      check_config(rest, filename);
      break;
    case 1:  // more keys or sections after a valid [[listener]]
      check_config(std::string(kHead) + std::string(rest) + std::string(kTail), filename);
      break;
    default:  // after a complete valid config
      check_config(std::string(kHead) + std::string(kTail) + std::string(rest), filename);
      break;
  }
  return 0;
}
