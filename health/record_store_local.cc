// health/record_store_local.cc — the record as pgkeel alone keeps it: a state file written
// atomically, and a row of pgkeel.primary_history on the new primary, so the record replicates
// with the data and a pgkeel that lost its state file finds it.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include "health/record_store.h"

namespace pgkeel::health {

std::string LocalRecordStore::history_insert_sql(const PrimaryRecord& rec) {
  return "BEGIN; SET LOCAL synchronous_commit = local; "
         "CREATE SCHEMA IF NOT EXISTS pgkeel; "
         "CREATE TABLE IF NOT EXISTS pgkeel.primary_history (epoch bigint NOT NULL, node text NOT NULL, "
         "system_identifier text NOT NULL, timeline int NOT NULL, lsn pg_lsn, recorded_at timestamptz NOT NULL DEFAULT now()); "
         "ALTER TABLE pgkeel.primary_history ADD COLUMN IF NOT EXISTS how text; "
         "INSERT INTO pgkeel.primary_history (epoch, node, system_identifier, timeline, lsn, how) VALUES (" +
         std::to_string(rec.epoch) + ", " + quote_literal(rec.node) + ", " + quote_literal(rec.system_identifier) + ", " +
         std::to_string(rec.timeline) + ", " + quote_literal(format_lsn(rec.lsn)) + ", " +
         (rec.how.empty() ? std::string("NULL") : quote_literal(rec.how)) + "); COMMIT";
}

void LocalRecordStore::load(const std::vector<FoundRecord>& in_cluster, LoadDone done) {
  // The newest of the state file and every node's history decides.
  std::vector<FoundRecord> found;
  if (std::optional<PrimaryRecord> r = read_state_file()) found.push_back({*r, "state file"});
  found.insert(found.end(), in_cluster.begin(), in_cluster.end());
  std::optional<FoundRecord> newest = newest_record(found);
  if (!newest) {
    done(std::nullopt);
    return;
  }
  done(StoredRecord{newest->record, newest->source, 0});
}

void LocalRecordStore::publish(const std::optional<StoredRecord>&, const PrimaryRecord& next, PublishDone done) {
  std::string err;
  if (!file_read_) remember(parse_state_file(state_file_));
  file_record_ = next;
  if (!state_file_.empty() && !write_state_file(err)) {
    if (hooks_.problem) hooks_.problem("record_failed", next.node, "state file: " + err);
  } else if (hooks_.written) {
    hooks_.written();
  }
  StoredRecord stored{next, state_file_.empty() ? "cluster record on " + next.node : "state file", 0};
  // Alone, the record counts once it is in memory: the copies are best effort, each failure an
  // event that stays on /health until a record is written.
  cluster_sql_(next.node, history_insert_sql(next),
               [hooks = hooks_, node = next.node, stored, done = std::move(done)](bool ok, const std::string& error) {
                 if (!ok && hooks.problem) hooks.problem("record_failed", node, "cluster record: " + error);
                 done(PublishOutcome{true, {}, stored});
               });
}

void LocalRecordStore::routing_epoch(std::uint64_t epoch) {
  if (state_file_.empty()) return;
  if (!file_read_) remember(parse_state_file(state_file_));
  if (epoch <= std::max(routing_epoch_, file_record_ ? file_record_->epoch : 0)) return;
  routing_epoch_ = epoch;
  if (!file_record_ && file_unreadable_) return;  // left as it is for whoever reads it: load() said so
  std::string err;
  if (!write_state_file(err) && hooks_.problem) hooks_.problem("record_failed", "", "state file: " + err);
}

bool LocalRecordStore::write_state_file(std::string& error) const {
  // Written to a temporary file, fsynced, renamed over the old one, and the folder fsynced:
  // after a crash the file holds the old record or the new one, never half of either.
  const std::string tmp = state_file_ + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) {
    error = tmp + ": " + std::strerror(errno);
    return false;
  }
  const std::uint64_t record_epoch = file_record_ ? file_record_->epoch : 0;
  std::string text = file_record_ ? file_record_->serialize() + "\n" : std::string();
  if (routing_epoch_ > record_epoch) text += "routing_epoch=" + std::to_string(routing_epoch_) + "\n";
  const bool ok = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()) && ::fsync(fd) == 0;
  ::close(fd);
  if (!ok || ::rename(tmp.c_str(), state_file_.c_str()) != 0) {
    error = state_file_ + ": " + std::strerror(errno);
    return false;
  }
  std::string dir = state_file_;
  const std::size_t slash = dir.rfind('/');
  dir = slash == std::string::npos ? "." : dir.substr(0, slash == 0 ? 1 : slash);
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
  return true;
}

LocalRecordStore::StateFile LocalRecordStore::parse_state_file(const std::string& path) {
  StateFile f;
  if (path.empty()) return f;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    constexpr std::string_view kRouting = "routing_epoch=";
    if (line.rfind(kRouting, 0) == 0) {
      f.routing_epoch = std::max<std::uint64_t>(f.routing_epoch, std::strtoull(line.c_str() + kRouting.size(), nullptr, 10));
    } else if (!f.record && !f.unreadable) {
      f.record = PrimaryRecord::parse(line);
      f.unreadable = !f.record;
    }
  }
  return f;
}

std::uint64_t LocalRecordStore::epoch_floor(const std::string& state_file) {
  const StateFile f = parse_state_file(state_file);
  return std::max(f.routing_epoch, f.record ? f.record->epoch : 0);
}

std::optional<PrimaryRecord> LocalRecordStore::read_state_file() {
  StateFile f = parse_state_file(state_file_);
  if (f.unreadable && hooks_.problem) hooks_.problem("record_unreadable", "", state_file_ + " does not hold a primary record");
  if (!file_read_) remember(f);
  return f.record;
}

void LocalRecordStore::remember(const StateFile& f) {
  file_read_ = true;
  file_record_ = f.record;
  file_unreadable_ = f.unreadable;
  routing_epoch_ = std::max(routing_epoch_, f.routing_epoch);
}

}  // namespace pgkeel::health
