// conf/load.h — reads pgkeel.toml and the users file into a validated Config. Every error is
// collected (not just the first) and names the file, the line and the key.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "conf/config.h"

namespace pgkeel::conf {

struct ConfigError {
  std::string file;
  int line = 0;          // 0 when the error is not tied to one line
  std::string key;       // dotted TOML path, e.g. "pool.pool_size" or "node[1].port"
  std::string message;

  std::string to_string() const;  // "file:line: key: message"
};

struct LoadResult {
  std::optional<Config> config;   // set only when errors is empty
  std::vector<ConfigError> errors;
};

// Reads and validates the TOML file at `path`, then the users file it names.
LoadResult load_config(const std::string& path);

// Same, from text; `filename` is used in errors and to resolve relative paths.
LoadResult parse_config(std::string_view toml_text, const std::string& filename);

// Parses a users file: one `"name" "secret"` pair per line; '#' starts a comment.
std::vector<UserEntry> parse_users(std::string_view text, const std::string& filename,
                                   std::vector<ConfigError>& errors);

}  // namespace pgkeel::conf
