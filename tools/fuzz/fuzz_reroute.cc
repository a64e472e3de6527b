// tools/fuzz/fuzz_reroute.cc — transaction pooling's edits on untrusted streams: client messages
// rewritten for a shared server connection (proxy/txpool/prepared.h), answered by a lost transaction
// (proxy/txpool/lost_transaction.h), and a server's answers sorted by the response plan
// (proxy/txpool/response_plan.h). Nothing may crash, hang or read out of bounds; rewritten requests
// are whole messages; and the filter gives the same bytes however the server stream is cut.
//
// Input: byte 0: the read size for the server stream (1 + low 6 bits); bytes 1-2: how many of
// the following bytes are the client stream; the rest: the server stream.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "proxy/txpool/lost_transaction.h"
#include "proxy/txpool/prepared.h"
#include "proxy/protocol/message.h"
#include "proxy/txpool/response_plan.h"

namespace {

using namespace pgkeel::proxy;

// Every message in `s` is whole: type, length, body.
void check_whole(const std::string& s) {
  std::size_t i = 0;
  while (i < s.size()) {
    if (s.size() - i < 5) std::abort();
    const std::uint32_t len = pgkeel::protocol::read_u32(reinterpret_cast<const unsigned char*>(s.data() + i + 1));
    if (len < 4 || s.size() - i - 1 < len) std::abort();
    i += 1 + len;
  }
}

std::string filtered(const std::string& server, std::size_t step, ResponsePlan plan, bool& malformed) {
  ResponseFilter filter;
  std::string seen;
  malformed = false;
  for (std::size_t at = 0; at < server.size(); at += step) {
    const std::size_t n = std::min(step, server.size() - at);
    std::string out;
    const auto* p = reinterpret_cast<const unsigned char*>(server.data() + at);
    switch (filter.filter(p, n, plan, out)) {
      case ResponseFilter::Result::kUnchanged: seen.append(server, at, n); break;
      case ResponseFilter::Result::kChanged: seen += out; break;
      case ResponseFilter::Result::kMalformed: malformed = true; return seen;
    }
    (void)plan.take_due();
  }
  return seen;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 3) return 0;
  const std::size_t step = 1 + (data[0] & 0x3f);
  const std::size_t client_len = std::min<std::size_t>(size - 3, (std::size_t{data[1]} << 8) | data[2]);
  const std::string client(reinterpret_cast<const char*>(data + 3), client_len);
  const std::string server(reinterpret_cast<const char*>(data + 3 + client_len), size - 3 - client_len);

  ClientStatements statements;
  ServerStatements shared(3);
  ResponsePlan plan;
  LostTransaction lost;
  std::string lost_out;
  (void)lost.begin(data[0] >> 6, (data[0] & 0x40) != 0, (data[0] & 0x80) != 0, false, lost_out);
  const LostTransaction::StatementText text = [&](std::string_view name) {
    const ClientStatements::Statement* st = statements.find(name);
    return st == nullptr ? std::string() : st->tail.substr(0, st->tail.find('\0'));
  };
  std::string to_server;
  std::size_t i = 0;
  while (client.size() - i >= 5) {
    const std::uint32_t len = pgkeel::protocol::read_u32(reinterpret_cast<const unsigned char*>(client.data() + i + 1));
    if (len < 4 || client.size() - i - 1 < len) break;
    const char type = client[i];
    const std::string_view body(client.data() + i + 5, len - 4);
    (void)rewrite_for_shared(type, body, statements, shared, plan, to_server);
    (void)lost.on_client_message(type, body, text, lost_out);
    i += 1 + len;
  }
  check_whole(to_server);
  check_whole(lost_out);
  if (shared.size() > 3) std::abort();

  bool malformed_whole = false;
  bool malformed_cut = false;
  const std::string whole = filtered(server, server.size() + 1, plan, malformed_whole);
  const std::string cut = filtered(server, step, plan, malformed_cut);
  if (malformed_whole != malformed_cut) std::abort();
  if (!malformed_whole && whole != cut) std::abort();
  return 0;
}
