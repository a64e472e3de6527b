// Tests for [store] (conf/): several pgkeel instances through etcd. Parsed, defaulted and
// validated with errors naming file, line and key; absent, pgkeel runs alone as before.

#include <atomic>
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <string_view>

#include "conf/endpoint.h"
#include "conf/load.h"

namespace {

namespace fs = std::filesystem;
using pgkeel::conf::ConfigError;
using pgkeel::conf::LoadResult;
using pgkeel::conf::Millis;

class StoreConfDir {
 public:
  StoreConfDir() {
    static std::atomic<int> counter{0};
    std::random_device rd;
    dir_ = fs::temp_directory_path() / ("pgkeel-store-conf-" + std::to_string(rd()) + "-" + std::to_string(++counter));
    fs::create_directories(dir_);
    write("users.txt", "\"app\" \"secret\"\n");
  }
  ~StoreConfDir() {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  StoreConfDir(const StoreConfDir&) = delete;
  StoreConfDir& operator=(const StoreConfDir&) = delete;
  void write(const std::string& name, const std::string& text) const {
    std::ofstream out(dir_ / name, std::ios::binary);
    out << text;
  }
  // kBase followed by `store` (a [store] section, or "").
  LoadResult parse(const std::string& store) const {
    return pgkeel::conf::parse_config(kBase + store, (dir_ / "pgkeel.toml").string());
  }
  static inline const std::string kBase = R"([general]
users_file = "users.txt"

[status]
port = 8080

[[listener]]
name = "rw"
host = "10.0.0.21"
port = 6432

[[node]]
name = "db1"
host = "10.0.0.11"
)";

 private:
  fs::path dir_;
};

const ConfigError* error_for(const LoadResult& r, const std::string& key) {
  for (const ConfigError& e : r.errors) {
    if (e.key == key) return &e;
  }
  return nullptr;
}

std::string all_errors(const LoadResult& r) {
  std::string out;
  for (const ConfigError& e : r.errors) out += e.to_string() + "\n";
  return out;
}

int line_of(std::string_view text, std::string_view needle) {
  const std::size_t at = text.find(needle);
  if (at == std::string_view::npos) return 0;
  int line = 1;
  for (std::size_t i = 0; i < at; ++i) line += text[i] == '\n' ? 1 : 0;
  return line;
}

const std::string kStore = R"(
[store]
endpoints = ["http://10.0.0.5:2379", "http://10.0.0.6:2379", "http://[fd00::7]:2379"]
prefix = "/pgkeel/erp"
name = "pk1"
)";

}  // namespace

TEST_CASE("without [store] pgkeel runs alone, as before", "[conf][store]") {
  StoreConfDir d;
  const LoadResult r = d.parse("");
  INFO(all_errors(r));
  REQUIRE(r.config);
  CHECK_FALSE(r.config->store.enabled());
  CHECK(r.config->store.endpoints.empty());
}

TEST_CASE("a [store] section takes its endpoints and the documented defaults", "[conf][store]") {
  StoreConfDir d;
  const LoadResult r = d.parse(kStore);
  INFO(all_errors(r));
  REQUIRE(r.config);
  const auto& s = r.config->store;
  CHECK(s.enabled());
  CHECK_FALSE(s.tls());
  CHECK(s.endpoints.size() == 3);
  CHECK(s.prefix == "/pgkeel/erp");
  CHECK(s.name == "pk1");
  CHECK(s.advertise_host == "10.0.0.21");  // the first listener's host
  CHECK(s.lease_ttl == Millis{10000});
  CHECK(s.request_timeout == Millis{1000});
  CHECK_FALSE(s.failsafe);
}

TEST_CASE("every [store] key is read, TLS files resolved beside the config", "[conf][store]") {
  StoreConfDir d;
  d.write("ca.pem", "x");
  d.write("pk1.pem", "x");
  d.write("pk1.key", "x");
  const LoadResult r = d.parse(R"(
[store]
endpoints = ["https://etcd1.example:2379", "https://etcd2.example:2379"]
ca_file = "ca.pem"
cert_file = "pk1.pem"
key_file = "pk1.key"
username = "pgkeel"
password = "s3cret"
prefix = "/pgkeel/erp"
name = "pk1"
advertise_host = "pk1.example"
lease_ttl = "15s"
request_timeout = "2s"
failsafe = false
)");
  INFO(all_errors(r));
  REQUIRE(r.config);
  const auto& s = r.config->store;
  CHECK(s.tls());
  CHECK(fs::path(s.ca_file).is_absolute());
  CHECK(fs::path(s.ca_file).filename() == "ca.pem");
  CHECK(s.username == "pgkeel");
  CHECK(s.password == "s3cret");
  CHECK(s.advertise_host == "pk1.example");
  CHECK(s.lease_ttl == Millis{15000});
  CHECK(s.request_timeout == Millis{2000});
  CHECK_FALSE(s.failsafe);
}

TEST_CASE("a [store] without endpoints, prefix or name says what is required, at the section's line", "[conf][store]") {
  StoreConfDir d;
  const LoadResult r = d.parse("\n[store]\nlease_ttl = \"10s\"\n");
  const std::string text = StoreConfDir::kBase + "\n[store]\nlease_ttl = \"10s\"\n";
  const ConfigError* e = error_for(r, "store.endpoints");
  REQUIRE(e);
  CHECK(e->line == line_of(text, "[store]"));
  CHECK(e->message.find("is required") != std::string::npos);

  const LoadResult r2 = d.parse("\n[store]\nendpoints = [\"http://10.0.0.5:2379\"]\n");
  CHECK(error_for(r2, "store.prefix"));
  CHECK(error_for(r2, "store.name"));
}

TEST_CASE("bad endpoints are refused one by one, with the reason", "[conf][store]") {
  StoreConfDir d;
  auto with = [&](const std::string& endpoints) {
    return d.parse("\n[store]\nendpoints = " + endpoints + "\nprefix = \"/pgkeel/erp\"\nname = \"pk1\"\n");
  };
  auto message = [&](const std::string& endpoints) {
    const LoadResult r = with(endpoints);
    const ConfigError* e = error_for(r, "store.endpoints");
    return e ? e->message : std::string("(no error)");
  };
  CHECK(message(R"(["10.0.0.5:2379"])").find("must start with http:// or https://") != std::string::npos);
  CHECK(message(R"(["http://10.0.0.5"])").find("needs a port") != std::string::npos);
  CHECK(message(R"(["http://10.0.0.5:99999"])").find("no valid port") != std::string::npos);
  CHECK(message(R"(["http://10.0.0.5:2379/v3"])").find("no path") != std::string::npos);
  CHECK(message(R"(["http://user@10.0.0.5:2379"])").find("no path, query or user") != std::string::npos);
  CHECK(message(R"(["http://fd00::7:2379"])").find("[addr]:port") != std::string::npos);
  CHECK(message(R"(["http://10.0.0.5:2379", "https://10.0.0.6:2379"])").find("mixes") != std::string::npos);
  CHECK(message(R"(["http://10.0.0.5:2379", "http://10.0.0.5:2379"])").find("listed twice") != std::string::npos);
  CHECK(message(R"(42)").find("array of strings") != std::string::npos);
  // One string is one endpoint.
  const LoadResult one = with(R"("http://10.0.0.5:2379/")");
  INFO(all_errors(one));
  REQUIRE(one.config);
  CHECK(one.config->store.endpoints.size() == 1);
}

TEST_CASE("TLS files need https, and certificate and key go together, as do username and password", "[conf][store]") {
  StoreConfDir d;
  d.write("ca.pem", "x");
  d.write("pk1.pem", "x");
  const LoadResult r = d.parse(kStore + "ca_file = \"ca.pem\"\nusername = \"pgkeel\"\n");
  CHECK(error_for(r, "store.ca_file"));
  CHECK(error_for(r, "store.password"));
  const LoadResult r2 = d.parse(R"(
[store]
endpoints = ["https://10.0.0.5:2379"]
prefix = "/pgkeel/erp"
name = "pk1"
cert_file = "pk1.pem"
ca_file = "missing.pem"
)");
  CHECK(error_for(r2, "store.key_file"));
  const ConfigError* missing = error_for(r2, "store.ca_file");
  REQUIRE(missing);
  CHECK(missing->message.find("not a readable file") != std::string::npos);
}

TEST_CASE("the prefix and the instance name are checked", "[conf][store]") {
  StoreConfDir d;
  for (const char* bad : {"pgkeel/erp", "/pgkeel/erp/", "/pgkeel//erp", "/", "/pgkeel erp", "/pgkeel/\xc3\xa9"}) {
    INFO(bad);
    const LoadResult r = d.parse(std::string("\n[store]\nendpoints = [\"http://10.0.0.5:2379\"]\nname = \"pk1\"\nprefix = \"") + bad + "\"\n");
    CHECK(error_for(r, "store.prefix"));
  }
  const LoadResult r = d.parse("\n[store]\nendpoints = [\"http://10.0.0.5:2379\"]\nprefix = \"/p\"\nname = \"pk 1\"\n");
  CHECK(error_for(r, "store.name"));
}

TEST_CASE("lease_ttl is whole seconds and leaves room for a failed renewal", "[conf][store]") {
  StoreConfDir d;
  CHECK(error_for(d.parse(kStore + "lease_ttl = \"2500ms\"\n"), "store.lease_ttl"));
  CHECK(error_for(d.parse(kStore + "lease_ttl = \"2s\"\n"), "store.lease_ttl"));
  CHECK(error_for(d.parse(kStore + "lease_ttl = \"2h\"\n"), "store.lease_ttl"));
  CHECK(error_for(d.parse(kStore + "lease_ttl = \"3s\"\nrequest_timeout = \"1500ms\"\n"), "store.request_timeout"));
  const LoadResult ok = d.parse(kStore + "lease_ttl = \"3s\"\nrequest_timeout = \"1s\"\n");
  INFO(all_errors(ok));
  CHECK(ok.config);
}

TEST_CASE("a wildcard listener needs advertise_host; failsafe = true is refused with the reason", "[conf][store]") {
  StoreConfDir d;
  std::string base = StoreConfDir::kBase;
  base.replace(base.find("10.0.0.21"), 9, "0.0.0.0");
  base.replace(base.find("[status]\nport = 8080\n"), 21, "");
  const LoadResult r = pgkeel::conf::parse_config(base + kStore + "failsafe = true\n", "/nonexistent-dir/pgkeel.toml");
  const ConfigError* a = error_for(r, "store.advertise_host");
  REQUIRE(a);
  CHECK(a->message.find("0.0.0.0") != std::string::npos);
  const ConfigError* f = error_for(r, "store.failsafe");
  REQUIRE(f);
  CHECK(f->message.find("not offered") != std::string::npos);
}

TEST_CASE("unknown [store] keys are caught with a suggestion", "[conf][store]") {
  StoreConfDir d;
  const LoadResult r = d.parse(kStore + "lease_tll = \"10s\"\n");
  const ConfigError* e = error_for(r, "store.lease_tll");
  REQUIRE(e);
  CHECK(e->message.find("did you mean 'lease_ttl'") != std::string::npos);
  CHECK(e->line == line_of(StoreConfDir::kBase + kStore + "lease_tll = \"10s\"\n", "lease_tll"));
}

TEST_CASE("endpoints parse into scheme, host and port", "[conf][store]") {
  std::string why;
  auto e = pgkeel::conf::parse_endpoint("https://[::1]:2379", why);
  REQUIRE(e);
  CHECK(e->tls);
  CHECK(e->host == "::1");
  CHECK(e->port == 2379);
  CHECK(e->text() == "https://[::1]:2379");
  e = pgkeel::conf::parse_endpoint("http://etcd1:12379", why);
  REQUIRE(e);
  CHECK_FALSE(e->tls);
  CHECK(e->text() == "http://etcd1:12379");
  CHECK_FALSE(pgkeel::conf::parse_endpoint("http://:2379", why));
  CHECK_FALSE(pgkeel::conf::parse_endpoint("http://h:0", why));
  CHECK_FALSE(pgkeel::conf::parse_endpoint("http://h:23x", why));
}
