#include "proxy/txpool/replay.h"

#include <cctype>

#include "proxy/protocol/message.h"

namespace pgkeel::proxy {

namespace fe = protocol::fe;
using Request = ResponsePlan::Request;
using Origin = ResponsePlan::Origin;

bool append_settings_restore(const SessionState& client, std::string& server_settings, ResponsePlan& plan,
                             std::string& out) {
  const std::string& want = client.replay_sql();
  if (want == server_settings) return false;
  protocol::Writer(out).begin(fe::kQuery).str("RESET ALL;" + want).end();
  plan.add(Request::kQuery, Origin::kInjected);
  server_settings = want;
  return true;
}

void append_session_replay(const SessionState& client, const ClientStatements& statements, ResponsePlan& plan,
                           std::string& out) {
  std::string sets = client.replay_sql();
  // SQL-level PREPARE (the session state keeps the statement itself; protocol-level statements
  // follow under their own names below).
  for (const auto& [name, text] : client.prepared()) {
    if (statements.find(name) != nullptr || text.size() < 8) continue;
    std::string head = text.substr(0, 8);
    for (char& ch : head) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    if (head == "prepare " || head == "prepare\t" || head == "prepare\n") sets += text + ";";
  }
  if (!sets.empty()) {
    protocol::Writer(out).begin(fe::kQuery).str(sets).end();
    plan.add(Request::kQuery, Origin::kInjected);
  }
  if (statements.size() == 0) return;
  for (const auto& [name, st] : statements.all()) {
    protocol::Writer(out).begin(fe::kParse).str(name).bytes(st.tail).end();
    plan.add(Request::kParse, Origin::kInjected);
  }
  protocol::Writer(out).begin(fe::kSync).end();
  plan.add(Request::kSync, Origin::kInjected);
}

}  // namespace pgkeel::proxy
