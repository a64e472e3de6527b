// Tests for health/record_store.h's local store: the state file and the cluster's history, as
// pgkeel alone keeps them.

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "health/record_store.h"

using namespace pgkeel::health;
namespace fs = std::filesystem;

namespace {

struct TempDir {
  fs::path dir;
  TempDir() {
    std::random_device rd;
    dir = fs::temp_directory_path() / ("pgkeel-record-store-" + std::to_string(rd()));
    fs::create_directories(dir);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
};

struct Recorder {
  std::vector<std::string> statements;  // node: sql
  std::vector<std::string> problems;    // kind node: text
  int written = 0;
  bool cluster_ok = true;
  ClusterSql sql() {
    return [this](const std::string& node, const std::string& s, std::function<void(bool, const std::string&)> done) {
      statements.push_back(node + ": " + s);
      done(cluster_ok, cluster_ok ? "" : "connection refused");
    };
  }
  RecordStoreHooks hooks() {
    RecordStoreHooks h;
    h.problem = [this](const std::string& kind, const std::string& node, const std::string& text) {
      problems.push_back(kind + " " + node + ": " + text);
    };
    h.written = [this]() { ++written; };
    return h;
  }
};

std::string read_text(const fs::path& file) {
  std::ifstream in(file);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

PrimaryRecord rec(std::uint64_t epoch, const std::string& node, std::uint32_t timeline) {
  return PrimaryRecord{epoch, node, "7300", timeline, 0x3000100, "failover"};
}

}  // namespace

TEST_CASE("local store: a published record is in the state file and appended to the cluster's history", "[health][record]") {
  TempDir d;
  Recorder r;
  const std::string file = (d.dir / "pgkeel.state").string();
  LocalRecordStore store(file, r.sql(), r.hooks());
  CHECK(store.leader());
  std::optional<PublishOutcome> out;
  store.publish(std::nullopt, rec(4, "db2", 2), [&](PublishOutcome o) { out = o; });
  REQUIRE(out);
  CHECK(out->recorded);
  CHECK(r.written == 1);
  REQUIRE(r.statements.size() == 1);
  CHECK(r.statements[0].rfind("db2: BEGIN; SET LOCAL synchronous_commit = local;", 0) == 0);
  CHECK(r.statements[0].find("VALUES (4, 'db2', '7300', 2, '0/3000100', 'failover'); COMMIT") != std::string::npos);
  std::ifstream in(file);
  std::string line;
  std::getline(in, line);
  CHECK(line == rec(4, "db2", 2).serialize());

  // The newest of the state file and the nodes' histories decides at the next start.
  std::optional<std::optional<StoredRecord>> loaded;
  store.load({{rec(3, "db1", 1), "cluster record on db1"}}, [&](std::optional<StoredRecord> s) { loaded = s; });
  REQUIRE(loaded);
  REQUIRE(loaded->has_value());
  CHECK((*loaded)->record.epoch == 4);
  CHECK((*loaded)->source == "state file");
  loaded.reset();
  store.load({{rec(5, "db3", 3), "cluster record on db3"}}, [&](std::optional<StoredRecord> s) { loaded = s; });
  REQUIRE(loaded->has_value());
  CHECK((*loaded)->source == "cluster record on db3");
}

TEST_CASE("local store: copies that cannot be written are problems, and the record still counts", "[health][record]") {
  TempDir d;
  Recorder r;
  r.cluster_ok = false;
  LocalRecordStore store((d.dir / "missing-dir" / "pgkeel.state").string(), r.sql(), r.hooks());
  std::optional<PublishOutcome> out;
  store.publish(std::nullopt, rec(2, "db2", 2), [&](PublishOutcome o) { out = o; });
  REQUIRE(out);
  CHECK(out->recorded);
  CHECK(r.written == 0);
  REQUIRE(r.problems.size() == 2);
  CHECK(r.problems[0].rfind("record_failed db2: state file: ", 0) == 0);
  CHECK(r.problems[1] == "record_failed db2: cluster record: connection refused");
}

TEST_CASE("local store: no record anywhere is the first start; an unreadable state file is said", "[health][record]") {
  TempDir d;
  Recorder r;
  const fs::path file = d.dir / "pgkeel.state";
  LocalRecordStore store(file.string(), r.sql(), r.hooks());
  std::optional<std::optional<StoredRecord>> loaded;
  store.load({}, [&](std::optional<StoredRecord> s) { loaded = s; });
  REQUIRE(loaded);
  CHECK_FALSE(loaded->has_value());
  std::ofstream(file) << "garbage\n";
  loaded.reset();
  store.load({}, [&](std::optional<StoredRecord> s) { loaded = s; });
  CHECK_FALSE(loaded->has_value());
  REQUIRE(r.problems.size() == 1);
  CHECK(r.problems[0].find("record_unreadable") == 0);
}

TEST_CASE("local store: the fence before a promotion has no other instance to wait for, and writes nothing", "[health][record]") {
  TempDir d;
  Recorder r;
  const fs::path file = d.dir / "pgkeel.state";
  LocalRecordStore store(file.string(), r.sql(), r.hooks());
  PrimaryRecord fenced = rec(5, "db1", 1);
  fenced.how = "fenced";
  bool called = false;
  store.fence(StoredRecord{rec(4, "db1", 1), "state file", 0}, fenced,
              [&](bool ok, const std::string& why, std::optional<StoredRecord> stored) {
                called = true;
                CHECK(ok);
                CHECK(why.empty());
                CHECK_FALSE(stored);
              });
  CHECK(called);  // at once, inside the call: the failover sequence goes on as it always did
  CHECK(r.statements.empty());
  CHECK_FALSE(fs::exists(file));  // alone, a fenced record would read as the primary to route to
}

TEST_CASE("local store: the highest routing epoch is kept beside the record, and the next start begins above it", "[health][record]") {
  TempDir d;
  Recorder r;
  const fs::path file = d.dir / "pgkeel.state";
  const std::string path = file.string();
  CHECK(LocalRecordStore::epoch_floor(path) == 0);  // no state file yet
  {
    LocalRecordStore store(path, r.sql(), r.hooks());
    store.routing_epoch(3);  // before the first record there is nothing to keep it beside...
    CHECK(LocalRecordStore::epoch_floor(path) == 3);  // ...but it is kept
    std::optional<PublishOutcome> out;
    store.publish(std::nullopt, rec(4, "db1", 1), [&](PublishOutcome o) { out = o; });
    REQUIRE(out);
    CHECK(LocalRecordStore::epoch_floor(path) == 4);
    store.routing_epoch(4);  // the publication naming the record: nothing new to write
    CHECK(read_text(file) == rec(4, "db1", 1).serialize() + "\n");
    store.routing_epoch(6);  // a table with another reader, say: not a record
    store.routing_epoch(5);  // never backwards
    CHECK(read_text(file) == rec(4, "db1", 1).serialize() + "\nrouting_epoch=6\n");
  }
  CHECK(LocalRecordStore::epoch_floor(path) == 6);
  // The next run reads the record as before, and keeps the routing epoch when its own first
  // record is written.
  LocalRecordStore store(path, r.sql(), r.hooks());
  std::optional<std::optional<StoredRecord>> loaded;
  store.load({}, [&](std::optional<StoredRecord> s) { loaded = s; });
  REQUIRE(loaded->has_value());
  CHECK((*loaded)->record.epoch == 4);
  store.publish(std::nullopt, rec(5, "db2", 2), [](PublishOutcome) {});
  CHECK(LocalRecordStore::epoch_floor(path) == 6);
  store.publish(std::nullopt, rec(7, "db1", 3), [](PublishOutcome) {});
  CHECK(read_text(file) == rec(7, "db1", 3).serialize() + "\n");
  CHECK(r.problems.empty());
}

TEST_CASE("local store: a state file that holds no record is not overwritten by routing epochs", "[health][record]") {
  TempDir d;
  Recorder r;
  const fs::path file = d.dir / "pgkeel.state";
  std::ofstream(file) << "garbage\n";
  LocalRecordStore store(file.string(), r.sql(), r.hooks());
  store.routing_epoch(9);
  CHECK(read_text(file) == "garbage\n");
  CHECK(LocalRecordStore::epoch_floor(file.string()) == 0);
  // Without a state file the epochs between records are kept nowhere, and nothing fails.
  LocalRecordStore none("", r.sql(), r.hooks());
  none.routing_epoch(9);
  CHECK(r.problems.empty());
}
