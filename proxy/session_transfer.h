// proxy/session_transfer.h — a client session as it moves to another pgkeel process at an idle
// point (the takeover's second step, issue 16): who it is, what a server logs in with on its
// behalf, the cancel key it was given, and what pgkeel replays on the next server (settings,
// SQL-prepared and protocol-prepared statements), the way a session already moves to another
// server after a failover. Its socket travels beside it (SCM_RIGHTS). Pure: bytes in and out.
//
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "proxy/pool.h"
#include "proxy/shared.h"

namespace pgkeel::proxy {

// A server connection moving with its session (SessionTransfer::server).
struct MovedServer {
  std::string node;
  std::int32_t backend_pid = 0;
  std::int32_t backend_key = 0;
  std::string parameter_status;  // its ParameterStatus messages, as pgkeel keeps them
  // Transaction pooling's edits on it: pgkeel's shared statements prepared there, and the
  // settings a client left there (SessionState::replay_sql()).
  std::vector<std::string> shared_statements;
  std::string settings;
  bool operator==(const MovedServer&) const = default;
};

struct SessionTransfer {
  std::string listener;          // by name: indices may differ in the new process
  SessionKey key;                // user, database, server database, startup parameters
  ServerCredential credential;   // what servers are logged in with (SCRAM keys from the client's proof)
  std::int32_t cancel_pid = 0;   // BackendKeyData the client holds
  std::int32_t cancel_key = 0;
  // SessionState at an idle point: settings, SQL PREPAREd statements, the unnamed statement.
  std::map<std::string, std::string> settings;
  std::map<std::string, std::string> sql_prepared;
  std::string unnamed;
  // ClientStatements: protocol-level named statements, name -> Parse body after the name.
  std::map<std::string, std::string> statements;
  std::string application_name;  // as the server last reported it
  std::uint64_t write_lsn = 0;   // read_your_writes
  std::int64_t connected_unix_ms = 0;
  // The server connection the session is attached to, moving with it (its socket is the second
  // descriptor): a session pinned to its server (LISTEN, temporary tables, ...), or one in
  // session pooling, keeps its backend. Absent: the next server gets the state replayed.
  std::optional<MovedServer> server;
  std::string unreplayable;  // why the session is pinned to that server (empty: it is not)

  bool operator==(const SessionTransfer&) const = default;
};

std::string encode(const SessionTransfer& t);
// nullopt, with `err`, for anything but what encode() writes.
std::optional<SessionTransfer> decode_session(std::string_view bytes, std::string& err);

}  // namespace pgkeel::proxy
