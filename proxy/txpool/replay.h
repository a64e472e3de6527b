// proxy/txpool/replay.h — what pgkeel sends a server connection so that it carries a client's session:
// the client's SETs, and, for a session resumed on a new server, its named prepared statements.
// pgkeel's own requests, recorded in a ResponsePlan so that their answers never reach the client.
// Pure: session state in, messages out.
#pragma once

#include <string>

#include "proxy/txpool/prepared.h"
#include "proxy/txpool/response_plan.h"
#include "proxy/txpool/session_state.h"

namespace pgkeel::proxy {

// Transaction pooling, before a client's transaction on a connection last used with settings
// `server_settings` (SessionState::replay_sql() of its last client; empty: as it logged in):
// when they differ, one Query that resets the connection and applies the client's settings, and
// `server_settings` becomes them. Returns whether it appended that Query.
bool append_settings_restore(const SessionState& client, std::string& server_settings, ResponsePlan& plan,
                             std::string& out);

// A session moved to a fresh server connection (the old one died with the primary): its SETs,
// then every named prepared statement under the client's own name, then a Sync. Nothing when the
// session has neither.
void append_session_replay(const SessionState& client, const ClientStatements& statements, ResponsePlan& plan,
                           std::string& out);

}  // namespace pgkeel::proxy
