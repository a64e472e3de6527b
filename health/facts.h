// health/facts.h — what one probe round trip tells about a node (role, identity, timeline, WAL
// positions, replication), as plain data. The probe query and the parsing of its one row live
// here too, so both are tested without a server.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace pgkeel::health {

using Lsn = std::uint64_t;

// "16/B374D848" -> 0x16B374D848; nullopt when malformed.
std::optional<Lsn> parse_lsn(std::string_view text);
std::string format_lsn(Lsn lsn);

// A SQL string literal that means the same whatever standard_conforming_strings says: an escape
// string (E'...') when it holds a backslash.
std::string quote_literal(const std::string& s);

// The fields of a primary record as stored in the cluster (health/failover.h's PrimaryRecord).
struct RecordFields {
  std::uint64_t epoch = 0;
  std::string node;
  std::string system_identifier;
  std::uint32_t timeline = 0;
  Lsn lsn = 0;
};

struct ReplicaInfo {             // one row of the primary's pg_stat_replication
  std::string application_name;  // what the standby streams as ("walreceiver" unless named)
  std::string state;             // streaming, catchup, ...
  std::string sync_state;        // async, potential, sync, quorum
  Lsn flush_lsn = 0;
  std::string client_addr;       // the standby's address as the primary sees it; empty for Unix sockets
};

struct ProbeFacts {
  bool in_recovery = false;
  std::string system_identifier;
  std::uint32_t timeline = 0;  // primary: from its current WAL file name, right after promotion too
  Lsn current_lsn = 0;         // primary only
  Lsn receive_lsn = 0;         // standby only
  Lsn replay_lsn = 0;          // standby only
  std::optional<double> replay_age_s;  // now() - pg_last_xact_replay_timestamp(), standby
  // Standby's WAL receiver.
  bool receiver_streaming = false;
  std::string upstream_host;
  int upstream_port = 0;
  std::optional<double> receipt_age_s;  // now() - last_msg_receipt_time, on the node's clock
  // Primary's view of its standbys.
  std::vector<ReplicaInfo> replicas;
  std::string synchronous_standby_names;
  // The newest primary record pgkeel wrote into the cluster (pgkeel.primary_history), as this
  // node sees it; replicated, so standbys carry it too.
  std::optional<RecordFields> record;

  // The furthest WAL position this node is known to hold.
  Lsn wal_position() const { return in_recovery ? std::max(receive_lsn, replay_lsn) : current_lsn; }
};

// One round trip, valid on a primary and on a standby. Columns, in order, are what
// parse_probe_row() expects. pg_stat_replication's rows come as one text value: fields separated
// by the ASCII unit separator, rows by the record separator (PostgreSQL replaces non-printable
// characters in an application_name with '?', so neither can occur inside a name).
extern const char* const kProbeQuery;
inline constexpr int kProbeColumns = 14;

// Parses the probe's single row (text values; nullopt for SQL NULL). Returns nullopt and sets
// `error` when the row does not have the expected shape.
std::optional<ProbeFacts> parse_probe_row(const std::vector<std::optional<std::string>>& row,
                                          std::string& error);

}  // namespace pgkeel::health
