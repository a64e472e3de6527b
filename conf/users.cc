// conf/users.cc — the users file, in PgBouncer's auth_file format: `"name" "secret"` per line,
// `""` inside quotes for a literal quote. What a secret means (SCRAM verifier, md5 hash or
// plaintext) is for proxy/auth to decide; here it is only text.

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "conf/internal.h"
#include "conf/load.h"


namespace pgkeel::conf {

namespace {

bool is_blank(char c) { return c == ' ' || c == '\t'; }

void skip_blanks(std::string_view& s) {
  while (!s.empty() && is_blank(s.front())) {
    s.remove_prefix(1);
  }
}

// Reads one double-quoted field from the front of `s` into `out`. Returns "" or why not.
std::string read_quoted(std::string_view& s, const char* what, std::string& out) {
  if (s.empty() || s.front() != '"') {
    return std::string("expected the ") + what + " in double quotes, as in \"name\" \"secret\"";
  }
  s.remove_prefix(1);
  out.clear();
  while (!s.empty()) {
    const char c = s.front();
    s.remove_prefix(1);
    if (c != '"') {
      out += c;
      continue;
    }
    if (!s.empty() && s.front() == '"') {  // "" is one literal quote
      out += '"';
      s.remove_prefix(1);
      continue;
    }
    return "";
  }
  return std::string("the ") + what + " has no closing quote (write \"\" for a quote inside)";
}

}  // namespace

std::vector<UserEntry> parse_users(std::string_view text, const std::string& filename,
                                   std::vector<ConfigError>& errors) {
  std::vector<UserEntry> users;
  std::unordered_map<std::string, int> first_line;  // user name -> line of its entry
  if (text.substr(0, 3) == "\xEF\xBB\xBF") {
    text.remove_prefix(3);  // UTF-8 byte order mark
  }

  int line_no = 0;
  while (!text.empty()) {
    ++line_no;
    const std::size_t eol = text.find('\n');
    std::string_view line = text.substr(0, eol);
    text.remove_prefix(eol == std::string_view::npos ? text.size() : eol + 1);
    if (!line.empty() && line.back() == '\r') {
      line.remove_suffix(1);
    }

    skip_blanks(line);
    if (line.empty() || line.front() == '#') {
      continue;
    }

    auto fail = [&](std::string message) {
      errors.push_back({filename, line_no, "", std::move(message)});
    };
    UserEntry entry;
    entry.line = line_no;
    if (std::string why = read_quoted(line, "user name", entry.name); !why.empty()) {
      fail(why);
      continue;
    }
    if (line.empty() || !is_blank(line.front())) {
      fail("expected a blank, then the secret in double quotes, after the user name");
      continue;
    }
    skip_blanks(line);
    if (std::string why = read_quoted(line, "secret", entry.secret); !why.empty()) {
      fail(why);
      continue;
    }
    skip_blanks(line);
    if (!line.empty() && line.front() != '#') {
      fail("unexpected text after the secret: " + internal::printable(line));
      continue;
    }

    if (entry.name.empty()) {
      fail("the user name is empty");
      continue;
    }
    if (entry.name.find('\0') != std::string::npos ||
        entry.secret.find('\0') != std::string::npos) {
      fail("user " + internal::printable(entry.name) +
           ": a NUL byte cannot be part of a name or secret");
      continue;
    }
    if (entry.secret.empty()) {
      fail("user " + internal::printable(entry.name) +
           " has an empty secret; PostgreSQL accepts no empty password");
      continue;
    }
    const auto [it, inserted] = first_line.emplace(entry.name, line_no);
    if (!inserted) {
      fail("user " + internal::printable(entry.name) + " is already defined on line " +
           std::to_string(it->second));
      continue;
    }
    users.push_back(std::move(entry));
  }
  return users;
}

}  // namespace pgkeel::conf
