// conf/internal.h — declarations shared by conf/'s translation units (not part of the API).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "conf/load.h"

namespace pgkeel::conf::internal {
// duration.cc: "500ms", "2s", "1.5s", "10min", "1h" -> out. Returns "" on success, else why not.
std::string parse_duration(std::string_view text, Millis& out);
// validate.cc: the checks that span fields, sections or the filesystem; loads the users file.
// `lines`: dotted key ("node[1].port"; a table: "node[1]") -> its line, for keys in the file.
void validate(Config& config, const std::map<std::string, int>& lines,
              std::vector<ConfigError>& errors);
// load.cc: reads a regular file of at most max_bytes into out. Returns "" on success, else why not.
std::string read_file(const std::string& path, std::uintmax_t max_bytes, std::string& out);
// load.cc: text fit for a one-line message: in double quotes, quotes and control bytes escaped.
std::string printable(std::string_view text);
}  // namespace pgkeel::conf::internal
