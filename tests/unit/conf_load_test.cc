// Tests for conf/: pgkeel.toml and the users file -> Config, and every error naming file, line
// and key. Files live in a fresh folder under the system temp directory, removed afterwards.

#include <atomic>
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "conf/load.h"

namespace {

namespace fs = std::filesystem;
using pgkeel::conf::Config;
using pgkeel::conf::ConfigError;
using pgkeel::conf::LoadResult;
using pgkeel::conf::Millis;

// A scratch folder holding pgkeel.toml's neighbours (users.txt by default).
class ConfDir {
 public:
  ConfDir() {
    static std::atomic<int> counter{0};
    std::random_device rd;
    dir_ = fs::temp_directory_path() /
           ("pgkeel-conf-test-" + std::to_string(rd()) + "-" + std::to_string(++counter));
    fs::create_directories(dir_);
    write("users.txt", "\"app\" \"secret\"\n");
  }
  ~ConfDir() {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  ConfDir(const ConfDir&) = delete;
  ConfDir& operator=(const ConfDir&) = delete;

  fs::path path(const std::string& name) const { return dir_ / name; }
  std::string config_file() const { return path("pgkeel.toml").string(); }

  void write(const std::string& name, const std::string& text) const {
    std::ofstream out(dir_ / name, std::ios::binary);
    out << text;
  }

  LoadResult parse(const std::string& toml) const {
    return pgkeel::conf::parse_config(toml, config_file());
  }

 private:
  fs::path dir_;
};

// 1-based line of the first occurrence of `needle` in `text`; 0 if absent.
int line_of(std::string_view text, std::string_view needle) {
  const std::size_t at = text.find(needle);
  if (at == std::string_view::npos) {
    return 0;
  }
  int line = 1;
  for (std::size_t i = 0; i < at; ++i) {
    line += text[i] == '\n' ? 1 : 0;
  }
  return line;
}

const ConfigError* error_for(const LoadResult& r, const std::string& key) {
  for (const ConfigError& e : r.errors) {
    if (e.key == key) {
      return &e;
    }
  }
  return nullptr;
}

std::string all_errors(const LoadResult& r) {
  std::string out;
  for (const ConfigError& e : r.errors) {
    out += e.to_string() + "\n";
  }
  return out;
}

// The smallest valid file: everything else takes its default.
const std::string kMinimal = R"([general]
users_file = "users.txt"

[[listener]]
name = "rw"
port = 6432

[[node]]
name = "db1"
host = "10.0.0.11"
)";

std::string replace(std::string text, const std::string& from, const std::string& to) {
  const std::size_t at = text.find(from);
  REQUIRE(at != std::string::npos);
  return text.replace(at, from.size(), to);
}

}  // namespace

TEST_CASE("a complete config loads with every key it sets", "[conf]") {
  ConfDir d;
  d.write("users.txt",
          "\"shop_app\" \"SCRAM-SHA-256$4096:c2FsdA==$a2V5:a2V5\"\n\"report\" \"md5"
          "0123456789abcdef0123456789abcdef\"\n");
  const std::string text = R"(# the retailer's proxy
[general]
workers = 4
max_client_conn = 2000
log_level = "warning"
users_file = "users.txt"
state_file = "pgkeel.state"
shutdown_timeout = "45s"
login_timeout = 2500

[cluster]
initial_primary = "db2"

[pool]
pool_size = 30
max_server_conn_per_node = 150
server_idle_timeout = "10min"
server_lifetime = "1.5h"
connect_timeout = "500ms"
wait_timeout = "1min"
reset_query = "DISCARD ALL; RESET ROLE"

[[listener]]
name = "rw"
host = "0.0.0.0"
port = 6432
intent = "read-write"
pool_mode = "session"

[[listener]]
name = "ro"
host = "0.0.0.0"
port = 6433
intent = "read-only"
pool_mode = "transaction"

[[node]]
name = "db1"
host = "10.0.0.11"
port = 5432
priority = 100

[[node]]
name = "db2"
host = "db2.internal"
port = 5433
priority = 50

[databases]
shop = { dbname = "shop_prod" }
"*" = {}
)";
  d.write("pgkeel.toml", text);
  const LoadResult r = pgkeel::conf::load_config(d.config_file());
  INFO(all_errors(r));
  REQUIRE(r.errors.empty());
  REQUIRE(r.config.has_value());
  const Config& c = *r.config;

  CHECK(c.source_file == d.config_file());
  CHECK(c.general.workers == 4);
  CHECK(c.general.max_client_conn == 2000);
  CHECK(c.general.log_level == pgkeel::conf::LogLevel::kWarning);
  CHECK(c.general.users_file == d.path("users.txt").lexically_normal().string());
  CHECK(c.general.state_file == d.path("pgkeel.state").lexically_normal().string());
  CHECK(c.general.shutdown_timeout == Millis{45000});
  CHECK(c.general.login_timeout == Millis{2500});  // a bare integer is milliseconds
  CHECK(c.cluster.initial_primary == "db2");

  CHECK(c.pool.pool_size == 30);
  CHECK(c.pool.max_server_conn_per_node == 150);
  CHECK(c.pool.server_idle_timeout == Millis{600000});
  CHECK(c.pool.server_lifetime == Millis{5400000});
  CHECK(c.pool.connect_timeout == Millis{500});
  CHECK(c.pool.wait_timeout == Millis{60000});
  CHECK(c.pool.reset_query == "DISCARD ALL; RESET ROLE");

  REQUIRE(c.listeners.size() == 2);
  CHECK(c.listeners[0].name == "rw");
  CHECK(c.listeners[0].host == "0.0.0.0");
  CHECK(c.listeners[0].port == 6432);
  CHECK(c.listeners[0].intent == pgkeel::routing::Intent::kReadWrite);
  CHECK(c.listeners[0].pool_mode == pgkeel::conf::PoolMode::kSession);
  CHECK(c.listeners[1].name == "ro");
  CHECK(c.listeners[1].intent == pgkeel::routing::Intent::kReadOnly);
  CHECK(c.listeners[1].pool_mode == pgkeel::conf::PoolMode::kTransaction);

  REQUIRE(c.nodes.size() == 2);
  CHECK(c.nodes[0].name == "db1");
  CHECK(c.nodes[0].host == "10.0.0.11");
  CHECK(c.nodes[0].port == 5432);
  CHECK(c.nodes[1].name == "db2");
  CHECK(c.nodes[1].host == "db2.internal");
  CHECK(c.nodes[1].port == 5433);
  CHECK(c.nodes[1].priority == 50);
  CHECK(c.node_index(c.cluster.initial_primary) == 1);

  REQUIRE(c.databases.size() == 2);  // in file order
  CHECK(c.databases[0].name == "shop");
  CHECK(c.databases[0].dbname == "shop_prod");
  CHECK(c.databases[1].name == "*");
  CHECK(c.databases[1].dbname.empty());

  REQUIRE(c.users.size() == 2);
  CHECK(c.users[0].name == "shop_app");
  CHECK(c.users[0].secret == "SCRAM-SHA-256$4096:c2FsdA==$a2V5:a2V5");
  CHECK(c.users[0].line == 1);
  CHECK(c.users[1].name == "report");
  CHECK(c.users[1].line == 2);
}

TEST_CASE("a minimal config takes the documented defaults", "[conf]") {
  ConfDir d;
  const LoadResult r = d.parse(kMinimal);
  INFO(all_errors(r));
  REQUIRE(r.config.has_value());
  const Config& c = *r.config;
  CHECK(c.general.workers == 0);
  CHECK(c.general.max_client_conn == 1000);
  CHECK(c.general.log_level == pgkeel::conf::LogLevel::kInfo);
  CHECK(c.general.state_file.empty());
  CHECK(c.general.shutdown_timeout == Millis{30000});
  CHECK(c.general.login_timeout == Millis{10000});
  CHECK(c.cluster.initial_primary == "db1");  // the first node
  CHECK(c.pool.pool_size == 20);
  CHECK(c.pool.max_server_conn_per_node == 100);
  CHECK(c.pool.server_idle_timeout == Millis{600000});
  CHECK(c.pool.server_lifetime == Millis{3600000});
  CHECK(c.pool.connect_timeout == Millis{5000});
  CHECK(c.pool.wait_timeout == Millis{30000});
  CHECK(c.pool.reset_query == "DISCARD ALL");
  REQUIRE(c.listeners.size() == 1);
  CHECK(c.listeners[0].host == "127.0.0.1");
  CHECK(c.listeners[0].unix_socket_dir.empty());
  CHECK(c.listeners[0].intent == pgkeel::routing::Intent::kReadWrite);
  CHECK(c.listeners[0].pool_mode == pgkeel::conf::PoolMode::kSession);
  REQUIRE(c.nodes.size() == 1);
  CHECK(c.nodes[0].port == 5432);
  CHECK(c.nodes[0].priority == 100);
  CHECK(c.databases.empty());  // no [databases]: every name passes through
  REQUIRE(c.users.size() == 1);
  CHECK(c.users[0].name == "app");
}

TEST_CASE("durations take ms, s, min and h, decimals, and bare integers as milliseconds",
          "[conf]") {
  ConfDir d;
  auto wait = [&](const std::string& value) {
    return d.parse(kMinimal + "[pool]\nwait_timeout = " + value + "\n");
  };
  const int wait_line = line_of(kMinimal, "[[node]]") + 4;  // after kMinimal's last line, [pool]
  SECTION("accepted forms") {
    const std::vector<std::pair<std::string, long long>> cases = {
        {"\"250ms\"", 250},    {"\"2s\"", 2000},    {"\"1.5s\"", 1500},  {"\"0.25s\"", 250},
        {"\"10min\"", 600000}, {"\"1h\"", 3600000}, {"\" 3 s \"", 3000}, {"750", 750}};
    for (const auto& [value, ms] : cases) {
      INFO(value);
      const LoadResult r = wait(value);
      INFO(all_errors(r));
      REQUIRE(r.config.has_value());
      CHECK(r.config->pool.wait_timeout == Millis{ms});
    }
  }
  SECTION("refused forms name the key, the line and why") {
    const std::vector<std::pair<std::string, std::string>> cases = {
        {"\"5 sec\"", "unknown unit"},
        {"\"10m\"", "ambiguous"},
        {"\"500\"", "missing unit"},
        {"\"-1s\"", "negative"},
        {"-5", "negative"},
        {"\"0s\"", "longer than zero"},
        {"0", "longer than zero"},
        {"\"1.5ms\"", "whole number of milliseconds"},
        {"\"1.0001s\"", "at most 3 decimal places"},
        {"\"9000h\"", "longer than a year"},
        {"\"\"", "needs a number and a unit"},
        {"2.5", "must be a duration"},
    };
    for (const auto& [value, why] : cases) {
      INFO(value);
      const LoadResult r = wait(value);
      CHECK_FALSE(r.config.has_value());
      REQUIRE(r.errors.size() == 1);
      CHECK(r.errors[0].key == "pool.wait_timeout");
      CHECK(r.errors[0].line == wait_line);
      CHECK_THAT(r.errors[0].message, Catch::Contains(why));
    }
  }
  SECTION("shutdown_timeout alone may be zero: close sessions at once") {
    const LoadResult r =
        d.parse(replace(kMinimal, "[general]\n", "[general]\nshutdown_timeout = 0\n"));
    INFO(all_errors(r));
    REQUIRE(r.config.has_value());
    CHECK(r.config->general.shutdown_timeout == Millis{0});
  }
}

TEST_CASE("an unknown key is reported with its line and a suggestion", "[conf]") {
  ConfDir d;
  const std::string text = kMinimal + "\n[pool]\npol_size = 5\n";
  const LoadResult r = d.parse(text);
  REQUIRE(r.errors.size() == 1);
  const ConfigError& e = r.errors[0];
  CHECK(e.file == d.config_file());
  CHECK(e.line == line_of(text, "pol_size"));
  CHECK(e.key == "pool.pol_size");
  CHECK_THAT(e.message, Catch::StartsWith("unknown key 'pol_size' in [pool]"));
  CHECK_THAT(e.message, Catch::Contains("did you mean 'pool_size'?"));
  CHECK(e.to_string() ==
        d.config_file() + ":" + std::to_string(e.line) + ": pool.pol_size: " + e.message);
}

TEST_CASE("unknown sections, and keys above the first section, are errors", "[conf]") {
  ConfDir d;
  const std::string text =
      "workers = 2\n" + kMinimal + "\n[[listeners]]\nname = \"x\"\n\n[helth]\nx = 1\n";
  const LoadResult r = d.parse(text);
  INFO(all_errors(r));
  REQUIRE(r.errors.size() == 3);
  CHECK(r.errors[0].key == "workers");
  CHECK(r.errors[0].line == 1);
  CHECK_THAT(r.errors[0].message, Catch::Contains("belongs under [general]"));
  CHECK(r.errors[1].key == "listeners");
  CHECK(r.errors[1].line == line_of(text, "[[listeners]]"));
  CHECK_THAT(r.errors[1].message, Catch::Contains("did you mean [[listener]]?"));
  CHECK(r.errors[2].key == "helth");
  CHECK(r.errors[2].line == line_of(text, "[helth]"));
  CHECK_THAT(r.errors[2].message, Catch::StartsWith("unknown section [helth]"));
}

TEST_CASE("a value of the wrong type names its key and both types", "[conf]") {
  ConfDir d;
  SECTION("a string where an integer belongs") {
    const std::string text = kMinimal + "[pool]\npool_size = \"20\"\n";
    const LoadResult r = d.parse(text);
    REQUIRE(r.errors.size() == 1);
    CHECK(r.errors[0].key == "pool.pool_size");
    CHECK(r.errors[0].line == line_of(text, "pool_size"));
    CHECK(r.errors[0].message == "must be an integer, not a string");
  }
  SECTION("[listener] written as a table instead of [[listener]]") {
    const std::string text = replace(kMinimal, "[[listener]]", "[listener]");
    const LoadResult r = d.parse(text);
    REQUIRE(r.errors.size() == 2);  // ...and so there is no listener
    CHECK(r.errors[0].key == "listener");
    CHECK(r.errors[0].line == line_of(text, "[listener]"));
    CHECK_THAT(r.errors[0].message, Catch::Contains("[[listener]]"));
    CHECK(r.errors[1].key == "listener");
    CHECK(r.errors[1].line == 0);
  }
  SECTION("an enum outside its spellings") {
    const std::string text =
        replace(kMinimal, "port = 6432\n", "port = 6432\nintent = \"write\"\n");
    const LoadResult r = d.parse(text);
    REQUIRE(r.errors.size() == 1);
    CHECK(r.errors[0].key == "listener[0].intent");
    CHECK(r.errors[0].line == line_of(text, "intent"));
    CHECK(r.errors[0].message == "\"write\" is not one of: read-write, read-only");
  }
}

TEST_CASE("integers outside their range are refused", "[conf]") {
  ConfDir d;
  const std::string text = replace(replace(kMinimal, "port = 6432", "port = 70000"), "[general]\n",
                                   "[general]\nworkers = 257\n") +
                           "[pool]\npool_size = 0\n";
  const LoadResult r = d.parse(text);
  INFO(all_errors(r));
  REQUIRE(r.errors.size() == 3);
  CHECK(r.errors[0].key == "general.workers");
  CHECK(r.errors[0].message == "257 is out of range: must be between 0 and 256");
  CHECK(r.errors[1].key == "listener[0].port");
  CHECK(r.errors[1].line == line_of(text, "70000"));
  CHECK(r.errors[1].message == "70000 is out of range: must be between 1 and 65535");
  CHECK(r.errors[2].key == "pool.pool_size");
  CHECK(r.errors[2].message == "0 is out of range: must be at least 1");
}

TEST_CASE("a config without a listener or a node says so", "[conf]") {
  ConfDir d;
  const LoadResult r = d.parse("[general]\nusers_file = \"users.txt\"\n");
  REQUIRE(r.errors.size() == 2);
  CHECK(r.errors[0].key == "listener");
  CHECK(r.errors[0].line == 0);
  CHECK_THAT(r.errors[0].message, Catch::StartsWith("at least one [[listener]] is required"));
  CHECK(r.errors[0].to_string() ==
        d.config_file() + ": listener: " + r.errors[0].message);  // no line to name
  CHECK(r.errors[1].key == "node");
  CHECK_THAT(r.errors[1].message, Catch::StartsWith("at least one [[node]] is required"));
}

TEST_CASE("a missing required key points at the table that should hold it", "[conf]") {
  ConfDir d;
  const std::string text = replace(kMinimal, "host = \"10.0.0.11\"\n", "") +
                           "\n[[node]]\nname = \"db2\"\nhost = \"10.0.0.12\"\n";
  const LoadResult r = d.parse(text);
  REQUIRE(r.errors.size() == 1);
  CHECK(r.errors[0].key == "node[0].host");
  CHECK(r.errors[0].line == line_of(text, "[[node]]"));
  CHECK(r.errors[0].message == "is required: the node's address");
}

TEST_CASE("a duplicate node name names the second node and the first one's line", "[conf]") {
  ConfDir d;
  const std::string text = kMinimal + "\n[[node]]\nname = \"db1\"\nhost = \"10.0.0.12\"\n";
  const LoadResult r = d.parse(text);
  REQUIRE(r.errors.size() == 1);
  CHECK(r.errors[0].key == "node[1].name");
  CHECK(r.errors[0].line == line_of(text, "name = \"db1\"\nhost = \"10.0.0.12\""));
  CHECK(r.errors[0].message == "\"db1\" is already the name of node[0] (line " +
                                   std::to_string(line_of(text, "[[node]]")) + ")");
}

TEST_CASE("listeners need distinct names and addresses; nodes distinct servers", "[conf]") {
  ConfDir d;
  const std::string text = kMinimal +
                           "\n[[listener]]\nname = \"rw\"\nhost = \"0.0.0.0\"\nport = 6432\n"
                           "\n[[node]]\nname = \"db1-again\"\nhost = \"10.0.0.11\"\n"
                           "\n[[node]]\nname = \"bad name\"\nhost = \"10.0.0.13\"\n";
  const LoadResult r = d.parse(text);
  INFO(all_errors(r));
  REQUIRE(r.errors.size() == 4);
  CHECK(r.errors[0].key == "listener[1].name");
  CHECK(r.errors[1].key == "listener[1].port");
  CHECK_THAT(r.errors[1].message, Catch::Contains("0.0.0.0:6432 collides with listener[0]"));
  CHECK(r.errors[2].key == "node[1].port");  // same host:port as db1, with the default port
  CHECK_THAT(r.errors[2].message, Catch::Contains("10.0.0.11:5432 is also node[0] (db1)"));
  CHECK(r.errors[3].key == "node[2].name");
  CHECK_THAT(r.errors[3].message, Catch::Contains("only letters, digits, '_' and '-'"));
}

TEST_CASE("initial_primary must name a node", "[conf]") {
  ConfDir d;
  const std::string text = kMinimal + "\n[cluster]\ninitial_primary = \"db9\"\n";
  const LoadResult r = d.parse(text);
  REQUIRE(r.errors.size() == 1);
  CHECK(r.errors[0].key == "cluster.initial_primary");
  CHECK(r.errors[0].line == line_of(text, "initial_primary"));
  CHECK(r.errors[0].message == "\"db9\" names no [[node]]; the nodes are db1");
}

TEST_CASE("pool_size cannot exceed max_server_conn_per_node", "[conf]") {
  ConfDir d;
  const std::string text = kMinimal + "[pool]\npool_size = 50\nmax_server_conn_per_node = 10\n";
  const LoadResult r = d.parse(text);
  REQUIRE(r.errors.size() == 1);
  CHECK(r.errors[0].key == "pool.pool_size");
  CHECK(r.errors[0].line == line_of(text, "pool_size = 50"));
}

TEST_CASE("a TOML syntax error becomes one error with its line", "[conf]") {
  ConfDir d;
  SECTION("a value missing after '='") {
    const std::string text = replace(kMinimal, "port = 6432", "port =");
    const LoadResult r = d.parse(text);
    REQUIRE(r.errors.size() == 1);
    CHECK(r.errors[0].line == line_of(text, "port ="));
    CHECK_THAT(r.errors[0].message, Catch::StartsWith("TOML syntax error: "));
    CHECK_THAT(r.errors[0].message, Catch::Contains("missing value"));
  }
  SECTION("an unterminated table header") {
    const std::string text = kMinimal + "\n[pool\npool_size = 3\n";
    const LoadResult r = d.parse(text);
    REQUIRE(r.errors.size() == 1);
    CHECK(r.errors[0].line == line_of(text, "[pool"));
  }
  SECTION("a table defined twice") {
    const std::string text = kMinimal + "\n[pool]\npool_size = 3\n\n[pool]\nwait_timeout = 1\n";
    const LoadResult r = d.parse(text);
    REQUIRE(r.errors.size() == 1);
    CHECK(r.errors[0].line == line_of(text, "[pool]\nwait_timeout"));
    CHECK_THAT(r.errors[0].message, Catch::Contains("already exists"));
  }
}

TEST_CASE("several errors are reported together, in line order", "[conf]") {
  ConfDir d;
  const std::string text = R"([general]
workers = -1
users_file = "missing-users.txt"
log_level = "loud"

[pool]
pool_size = "many"
connect_timeout = "5 seconds"

[[listener]]
name = "rw"

[[node]]
name = "db1"
host = "10.0.0.11"

[[node]]
name = "db1"
host = "10.0.0.12"

[cluster]
initial_primary = "db3"
)";
  const LoadResult r = d.parse(text);
  CHECK_FALSE(r.config.has_value());
  INFO(all_errors(r));
  std::vector<std::string> keys;
  for (const ConfigError& e : r.errors) {
    keys.push_back(e.key);
  }
  CHECK(keys == std::vector<std::string>{"general.workers", "general.users_file",
                                         "general.log_level", "pool.pool_size",
                                         "pool.connect_timeout", "listener[0].port", "node[1].name",
                                         "cluster.initial_primary"});
  for (const ConfigError& e : r.errors) {
    CHECK(e.file == d.config_file());
    CHECK(e.line > 0);
  }
  CHECK(error_for(r, "listener[0].port")->line == line_of(text, "[[listener]]"));
  CHECK_THAT(error_for(r, "general.users_file")->message, Catch::Contains("missing-users.txt"));
}

TEST_CASE("the users file is resolved beside the config and its errors name it", "[conf]") {
  ConfDir d;
  SECTION("a line in the users file is malformed") {
    d.write("users.txt", "\"app\" \"secret\"\n\nbob secret\n");
    const LoadResult r = d.parse(kMinimal);
    REQUIRE(r.errors.size() == 1);
    CHECK(r.errors[0].file == d.path("users.txt").string());
    CHECK(r.errors[0].line == 3);
  }
  SECTION("the users file holds nobody") {
    d.write("users.txt", "# nobody yet\n");
    const LoadResult r = d.parse(kMinimal);
    REQUIRE(r.errors.size() == 1);
    CHECK(r.errors[0].key == "general.users_file");
    CHECK_THAT(r.errors[0].message, Catch::Contains("holds no users"));
  }
  SECTION("users_file is required") {
    const LoadResult r = d.parse(replace(kMinimal, "users_file = \"users.txt\"\n", ""));
    REQUIRE(r.errors.size() == 1);
    CHECK(r.errors[0].key == "general.users_file");
    CHECK(r.errors[0].line == 1);  // [general]
  }
}

TEST_CASE("users file lines are quoted pairs with \"\" for a quote", "[conf][users]") {
  std::vector<ConfigError> errors;
  const std::string text =
      "# generated from pg_authid\r\n"
      "\"alice\" \"SCRAM-SHA-256$4096:c2FsdA==$a2V5:a2V5\"\r\n"
      "\n"
      "   \"bob\"\t\"md50123456789abcdef0123456789abcdef\"   # trailing comment\n"
      "\"o\"\"brien\" \"pa\"\"ss word\"\n"
      "\"svc\" \"#not a comment\"";
  const auto users = pgkeel::conf::parse_users(text, "users.txt", errors);
  CHECK(errors.empty());
  REQUIRE(users.size() == 4);
  CHECK(users[0].name == "alice");
  CHECK(users[0].secret == "SCRAM-SHA-256$4096:c2FsdA==$a2V5:a2V5");
  CHECK(users[0].line == 2);
  CHECK(users[1].name == "bob");
  CHECK(users[1].secret == "md50123456789abcdef0123456789abcdef");
  CHECK(users[1].line == 4);
  CHECK(users[2].name == "o\"brien");
  CHECK(users[2].secret == "pa\"ss word");
  CHECK(users[3].secret == "#not a comment");
  CHECK(users[3].line == 6);
}

TEST_CASE("users file errors name the file and the line, and parsing goes on", "[conf][users]") {
  std::vector<ConfigError> errors;
  const std::string text =
      "\"alice\" \"one\"\n"     // 1
      "\"alice\" \"two\"\n"     // 2: duplicate
      "alice \"three\"\n"       // 3: unquoted name
      "\"carol\" \"unclosed\n"  // 4
      "\"dave\"\"x\"\n"         // 5: name 'dave"x', then no secret
      "\"erin\" \"s\" extra\n"  // 6
      "\"\" \"secret\"\n"       // 7: empty name
      "\"frank\" \"\"\n"        // 8: empty secret
      "\"grace\" \"ok\"\n";     // 9
  const auto users = pgkeel::conf::parse_users(text, "/etc/pgkeel/users.txt", errors);
  REQUIRE(users.size() == 2);
  CHECK(users[0].name == "alice");
  CHECK(users[0].secret == "one");
  CHECK(users[1].name == "grace");
  REQUIRE(errors.size() == 7);
  std::vector<int> lines;
  for (const ConfigError& e : errors) {
    CHECK(e.file == "/etc/pgkeel/users.txt");
    lines.push_back(e.line);
  }
  CHECK(lines == std::vector<int>{2, 3, 4, 5, 6, 7, 8});
  CHECK(errors[0].message == "user \"alice\" is already defined on line 1");
  CHECK(errors[0].to_string() ==
        "/etc/pgkeel/users.txt:2: user \"alice\" is already defined on line 1");
  CHECK_THAT(errors[1].message, Catch::Contains("double quotes"));
  CHECK_THAT(errors[2].message, Catch::Contains("no closing quote"));
  CHECK_THAT(errors[4].message, Catch::Contains("unexpected text after the secret"));
}

TEST_CASE("hostile input is refused with an error, never a crash", "[conf]") {
  ConfDir d;
  SECTION("arrays nested deeper than any config needs") {
    const LoadResult r = d.parse("a = " + std::string(100000, '['));
    REQUIRE(r.errors.size() == 1);
    CHECK(r.errors[0].line == 1);
    CHECK_THAT(r.errors[0].message, Catch::Contains("nested more than"));
  }
  SECTION("a dotted key of thousands of parts") {
    std::string key = "a";
    for (int i = 0; i < 5000; ++i) {
      key += ".a";
    }
    const LoadResult r = d.parse("\n" + key + " = 1\n");
    REQUIRE(r.errors.size() == 1);
    CHECK(r.errors[0].line == 2);
  }
  SECTION("brackets inside strings are only text") {
    const std::string text =
        replace(kMinimal, "[general]\n", "[general]\n# [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\n") +
        "[pool]\nreset_query = \"SELECT '[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[['\"\n";
    const LoadResult r = d.parse(text);
    INFO(all_errors(r));
    CHECK(r.errors.empty());
  }
  SECTION("invalid UTF-8, which toml11 3.7 mishandles inside strings") {
    // Found by tools/fuzz/fuzz_config: an out-of-bounds read in toml11's error path.
    const std::vector<std::pair<std::string, int>> cases = {
        {"'\xff'\n", 1},               // a lone byte in a literal string
        {"a = \"\xc0\xaf\"\n", 1},     // an overlong '/'
        {"\n\n# \xed\xa0\x80\n", 3}};  // a UTF-16 surrogate, even in a comment
    for (const auto& [text, line] : cases) {
      const LoadResult r = d.parse(text);
      REQUIRE(r.errors.size() == 1);
      CHECK(r.errors[0].line == line);
      CHECK_THAT(r.errors[0].message, Catch::Contains("not valid UTF-8"));
    }
    const LoadResult ok = d.parse(
        replace(kMinimal, "name = \"rw\"\n", "name = \"rw\" # caf\xc3\xa9 \xf0\x9f\x90\x98\n"));
    INFO(all_errors(ok));
    CHECK(ok.errors.empty());
  }
  SECTION("binary junk") {
    std::string junk;
    std::mt19937 rng(42);
    for (int i = 0; i < 2000; ++i) {
      junk += static_cast<char>(rng() & 0xff);
    }
    const LoadResult r = d.parse(junk);
    CHECK_FALSE(r.errors.empty());
    CHECK_FALSE(r.config.has_value());
  }
}

TEST_CASE("load_config reports a file it cannot read as one error", "[conf]") {
  ConfDir d;
  const LoadResult r = pgkeel::conf::load_config(d.path("absent.toml").string());
  REQUIRE(r.errors.size() == 1);
  CHECK(r.errors[0].file == d.path("absent.toml").string());
  CHECK(r.errors[0].line == 0);
  CHECK_THAT(r.errors[0].message, Catch::StartsWith("cannot open"));
}

TEST_CASE("the example config and users file are valid", "[conf]") {
  // This file is tests/unit/conf_load_test.cc; the examples are in conf/.
  const fs::path conf_dir = fs::path(__FILE__).parent_path().parent_path().parent_path() / "conf";
  const fs::path example = conf_dir / "pgkeel.example.toml";
  const fs::path users = conf_dir / "users.example.txt";
  if (!fs::exists(example) || !fs::exists(users)) {
    WARN("conf/ examples not found beside " << __FILE__ << "; skipped");
    return;
  }
  std::ifstream in(example);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());

  std::vector<ConfigError> errors;
  std::ifstream uin(users);
  const std::string users_text((std::istreambuf_iterator<char>(uin)),
                               std::istreambuf_iterator<char>());
  pgkeel::conf::parse_users(users_text, users.string(), errors);
  CHECK(errors.empty());

  // The example names users.txt beside it; give it one, as a deployment would.
  ConfDir d;
  const LoadResult r = d.parse(text);
  INFO(all_errors(r));
  REQUIRE(r.config.has_value());
  CHECK(r.config->listeners.at(0).name == "rw");
  CHECK(r.config->listeners.at(0).port == 6432);
  CHECK(r.config->nodes.size() == 2);
  CHECK(r.config->cluster.initial_primary == "db1");
}

TEST_CASE("[health], [failover] and [console] load, and their typos are caught", "[conf][failover]") {
  ConfDir dir;
  const std::string text = kMinimal + R"(
[health]
probe_interval = "250ms"
probe_timeout = "750ms"
timeouts_to_down = 4
user = "pgkeel"
password = "pw"
[failover]
mode = "manual"
synchronous_mode = "strict"
max_lag_on_failover = 1048576
hold_timeout = "5s"
fence_command = "/bin/true"
fence_required = false
replication_password = "rp"
[console]
port = 6499
admin_users = ["pgkeel"]
monitor_users = ["nagios", "grafana"]
)";
  LoadResult r = dir.parse(text);
  INFO(all_errors(r));
  REQUIRE(r.config);
  const Config& c = *r.config;
  CHECK(c.health.probe_interval == Millis{250});
  CHECK(c.health.probe_timeout == Millis{750});
  CHECK(c.health.timeouts_to_down == 4);
  CHECK(c.health.user == "pgkeel");
  CHECK_FALSE(c.failover.automatic);
  CHECK(c.failover.synchronous_mode == pgkeel::conf::SyncMode::kStrict);
  CHECK(c.failover.max_lag_on_failover == 1048576u);
  CHECK(c.failover.hold_timeout == Millis{5000});
  CHECK_FALSE(c.failover.fence_required);
  CHECK(c.console.port == 6499);
  CHECK(c.console.monitor_users == std::vector<std::string>{"nagios", "grafana"});

  SECTION("a misspelt key names its section and line") {
    const std::string bad = kMinimal + "\n[failover]\nsynchronous_mod = \"on\"\n";
    LoadResult b = dir.parse(bad);
    const ConfigError* e = error_for(b, "failover.synchronous_mod");
    REQUIRE(e != nullptr);
    CHECK(e->line == line_of(bad, "synchronous_mod"));
    CHECK(e->message.find("synchronous_mode") != std::string::npos);
  }
  SECTION("a mode that does not exist is refused") {
    LoadResult b = dir.parse(kMinimal + "\n[failover]\nsynchronous_mode = \"sometimes\"\n");
    REQUIRE(error_for(b, "failover.synchronous_mode") != nullptr);
  }
}


TEST_CASE("the limits on work before authentication load, with defaults, and bad values name file, line and key",
          "[conf][preauth]") {
  ConfDir dir;
  SECTION("defaults") {
    const LoadResult r = dir.parse(kMinimal);
    INFO(all_errors(r));
    REQUIRE(r.config);
    CHECK(r.config->auth.negative_cache_lifetime == Millis{5000});
    CHECK(r.config->auth.max_queued_lookups == 100);
    CHECK(r.config->console.max_connections == 32);
    CHECK(r.config->status.max_connections == 64);
  }
  SECTION("set") {
    const LoadResult r = dir.parse(kMinimal + R"(
[auth]
negative_cache_lifetime = "0s"
max_queued_lookups = 7
[console]
port = 6499
max_connections = 5
[status]
port = 6490
max_connections = 9
)");
    INFO(all_errors(r));
    REQUIRE(r.config);
    CHECK(r.config->auth.negative_cache_lifetime == Millis{0});  // off
    CHECK(r.config->auth.max_queued_lookups == 7);
    CHECK(r.config->console.max_connections == 5);
    CHECK(r.config->status.max_connections == 9);
  }
  SECTION("out of range or of the wrong type") {
    const std::string text = kMinimal + R"(
[auth]
negative_cache_lifetime = -5
max_queued_lookups = 0
[console]
port = 6499
max_connections = 0
[status]
port = 6490
max_connections = "many"
)";
    const LoadResult r = dir.parse(text);
    INFO(all_errors(r));
    CHECK_FALSE(r.config);
    const ConfigError* neg = error_for(r, "auth.negative_cache_lifetime");
    REQUIRE(neg != nullptr);
    CHECK(neg->file == dir.config_file());
    CHECK(neg->line == line_of(text, "negative_cache_lifetime"));
    CHECK(neg->message == "-5: a duration cannot be negative");
    const ConfigError* queued = error_for(r, "auth.max_queued_lookups");
    REQUIRE(queued != nullptr);
    CHECK(queued->line == line_of(text, "max_queued_lookups"));
    CHECK(queued->message == "0 is out of range: must be between 1 and 100000");
    const ConfigError* console = error_for(r, "console.max_connections");
    REQUIRE(console != nullptr);
    CHECK(console->line == line_of(text, "max_connections = 0"));
    CHECK(console->message == "0 is out of range: must be between 1 and 100000");
    const ConfigError* status = error_for(r, "status.max_connections");
    REQUIRE(status != nullptr);
    CHECK(status->line == line_of(text, "max_connections = \"many\""));
    CHECK(status->message.find("an integer") != std::string::npos);
  }
  SECTION("a misspelt key suggests the right one") {
    const std::string text = kMinimal + "\n[console]\nport = 6499\nmax_conections = 4\n";
    const LoadResult r = dir.parse(text);
    const ConfigError* e = error_for(r, "console.max_conections");
    REQUIRE(e != nullptr);
    CHECK(e->message.find("max_connections") != std::string::npos);
  }
}
