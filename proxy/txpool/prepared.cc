#include "proxy/txpool/prepared.h"

#include <openssl/evp.h>

#include <functional>

#include "proxy/protocol/message.h"

namespace pgkeel::proxy {
namespace {

namespace fe = protocol::fe;
using Request = ResponsePlan::Request;
using Origin = ResponsePlan::Origin;

void append_close_statement(std::string& out, std::string_view name) {
  protocol::Writer(out).begin(fe::kClose).i8('S').str(name).end();
}

// Evicted statements are closed on the server, as pgkeel's own requests.
void close_evicted(const std::vector<std::string>& evicted, ResponsePlan& plan, std::string& out) {
  for (const std::string& e : evicted) {
    append_close_statement(out, e);
    plan.add(Request::kClose, Origin::kInjected);
  }
}

// Makes sure the server has `st` before a request that uses it. A Close goes first: closing a
// statement the server does not have is not an error, and if pgkeel's record of the connection is
// ever behind (a Parse it thought failed), the Parse cannot collide.
void ensure_prepared(const ClientStatements::Statement& st, ServerStatements& server, ResponsePlan& plan,
                     std::string& out) {
  if (server.has(st.server_name)) {
    server.touch(st.server_name);
    return;
  }
  close_evicted(server.add(st.server_name), plan, out);
  append_close_statement(out, st.server_name);
  plan.add(Request::kClose, Origin::kInjected);
  protocol::Writer(out).begin(fe::kParse).str(st.server_name).bytes(st.tail).end();
  plan.add(Request::kParse, Origin::kInjected, st.server_name);
}

}  // namespace

std::string shared_statement_name(std::string_view parse_tail) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string name = "pgk_";
  unsigned char d[EVP_MAX_MD_SIZE];
  unsigned int d_len = 0;
  if (EVP_Digest(parse_tail.data(), parse_tail.size(), d, &d_len, EVP_sha256(), nullptr) != 1 || d_len < 16) {
    // No digest (OpenSSL refused): fall back to a name no other content can take.
    name += "x" + std::to_string(std::hash<std::string_view>{}(parse_tail)) + "_" + std::to_string(parse_tail.size());
    return name;
  }
  for (std::size_t i = 0; i < 16; ++i) {
    name += kHex[d[i] >> 4];
    name += kHex[d[i] & 0xf];
  }
  return name;
}

const ClientStatements::Statement& ClientStatements::define(std::string_view name, std::string_view tail) {
  Statement& st = by_name_[std::string(name)];
  if (st.tail != tail || st.server_name.empty()) {
    st.tail = std::string(tail);
    st.server_name = shared_statement_name(tail);
  }
  return st;
}

const ClientStatements::Statement* ClientStatements::find(std::string_view name) const {
  auto it = by_name_.find(std::string(name));
  return it == by_name_.end() ? nullptr : &it->second;
}

void ClientStatements::forget(std::string_view name) { by_name_.erase(std::string(name)); }

void ServerStatements::touch(std::string_view name) {
  auto it = where_.find(std::string(name));
  if (it != where_.end()) order_.splice(order_.begin(), order_, it->second);
}

std::vector<std::string> ServerStatements::add(const std::string& name) {
  std::vector<std::string> evicted;
  if (auto it = where_.find(name); it != where_.end()) {
    order_.splice(order_.begin(), order_, it->second);
    return evicted;
  }
  while (where_.size() >= cap_) {
    evicted.push_back(order_.back());
    where_.erase(order_.back());
    order_.pop_back();
  }
  order_.push_front(name);
  where_[name] = order_.begin();
  return evicted;
}

void ServerStatements::remove(std::string_view name) {
  auto it = where_.find(std::string(name));
  if (it == where_.end()) return;
  order_.erase(it->second);
  where_.erase(it);
}

void append_message(std::string& out, char type, std::string_view body) {
  protocol::Writer(out).begin(type).bytes(body).end();
}

bool rewrite_for_shared(char type, std::string_view body, ClientStatements& client, ServerStatements& server,
                        ResponsePlan& plan, std::string& out) {
  protocol::Reader r(body);
  switch (type) {
    case fe::kParse: {
      const std::string_view name = r.str();
      if (r.failed()) return false;
      const std::string_view tail = r.rest();
      if (name.empty()) {
        append_message(out, type, body);
        plan.add(Request::kParse, Origin::kClient);
        return true;
      }
      const ClientStatements::Statement& st = client.define(name, tail);
      if (server.has(st.server_name)) {
        // The connection has it already: pgkeel answers ParseComplete itself, in its place.
        server.touch(st.server_name);
        plan.add(Request::kParse, Origin::kAnswered);
        return true;
      }
      close_evicted(server.add(st.server_name), plan, out);
      append_close_statement(out, st.server_name);
      plan.add(Request::kClose, Origin::kInjected);
      protocol::Writer(out).begin(fe::kParse).str(st.server_name).bytes(tail).end();
      plan.add(Request::kParse, Origin::kClient, st.server_name);
      return true;
    }
    case fe::kBind: {
      const std::string_view portal = r.str();
      const std::string_view name = r.str();
      if (r.failed()) return false;
      const ClientStatements::Statement* st = name.empty() ? nullptr : client.find(name);
      if (st == nullptr) {
        // Unnamed, or unknown: the server answers as PostgreSQL does ("does not exist").
        append_message(out, type, body);
      } else {
        ensure_prepared(*st, server, plan, out);
        protocol::Writer(out).begin(fe::kBind).str(portal).str(st->server_name).bytes(r.rest()).end();
      }
      plan.add(Request::kBind, Origin::kClient);
      return true;
    }
    case fe::kDescribe: {
      const char kind = static_cast<char>(r.i8());
      const std::string_view name = r.str();
      if (r.failed() || (kind != 'S' && kind != 'P')) return false;
      const ClientStatements::Statement* st = kind == 'S' && !name.empty() ? client.find(name) : nullptr;
      if (st == nullptr) {
        append_message(out, type, body);
      } else {
        ensure_prepared(*st, server, plan, out);
        protocol::Writer(out).begin(fe::kDescribe).i8('S').str(st->server_name).end();
      }
      plan.add(kind == 'S' ? Request::kDescribeStatement : Request::kDescribePortal, Origin::kClient);
      return true;
    }
    case fe::kClose: {
      const char kind = static_cast<char>(r.i8());
      const std::string_view name = r.str();
      if (r.failed() || (kind != 'S' && kind != 'P')) return false;
      if (kind == 'S' && !name.empty() && client.find(name) != nullptr) {
        // The server statement may serve other clients: it stays; the client's name goes.
        client.forget(name);
        plan.add(Request::kClose, Origin::kAnswered);
        return true;
      }
      append_message(out, type, body);
      plan.add(Request::kClose, Origin::kClient);
      return true;
    }
    case fe::kExecute:
      append_message(out, type, body);
      plan.add(Request::kExecute, Origin::kClient);
      return true;
    case fe::kSync:
      append_message(out, type, body);
      plan.add(Request::kSync, Origin::kClient);
      return true;
    case fe::kQuery:
      append_message(out, type, body);
      plan.add(Request::kQuery, Origin::kClient);
      return true;
    case fe::kFunctionCall:
      append_message(out, type, body);
      plan.add(Request::kFunctionCall, Origin::kClient);
      return true;
    default:
      // Flush, CopyData, CopyDone, CopyFail: no answer of their own.
      append_message(out, type, body);
      return true;
  }
}

std::size_t rewrite_head_for_shared(char type, std::string_view head, std::size_t body_len, ClientStatements& client,
                                    ServerStatements& server, ResponsePlan& plan, std::string& out) {
  const auto header = [&](std::size_t new_body_len) {
    const auto n = static_cast<std::uint32_t>(new_body_len + 4);
    out += type;
    for (int shift = 24; shift >= 0; shift -= 8) out += static_cast<char>((n >> shift) & 0xff);
  };
  protocol::Reader r(head);
  switch (type) {
    case fe::kBind: {
      const std::string_view portal = r.str();
      const std::string_view name = r.str();
      if (r.failed()) return std::string_view::npos;
      const ClientStatements::Statement* st = name.empty() ? nullptr : client.find(name);
      if (st == nullptr) {
        header(body_len);
        plan.add(Request::kBind, Origin::kClient);
        return 0;
      }
      ensure_prepared(*st, server, plan, out);
      header(body_len - name.size() + st->server_name.size());
      out.append(portal).append(1, '\0').append(st->server_name).append(1, '\0');
      plan.add(Request::kBind, Origin::kClient);
      return portal.size() + name.size() + 2;
    }
    case fe::kDescribe: {
      const char kind = static_cast<char>(r.i8());
      plan.add(kind == 'S' ? Request::kDescribeStatement : Request::kDescribePortal, Origin::kClient);
      break;
    }
    case fe::kParse: plan.add(Request::kParse, Origin::kClient); break;
    case fe::kClose: plan.add(Request::kClose, Origin::kClient); break;
    case fe::kExecute: plan.add(Request::kExecute, Origin::kClient); break;
    case fe::kSync: plan.add(Request::kSync, Origin::kClient); break;
    case fe::kQuery: plan.add(Request::kQuery, Origin::kClient); break;
    case fe::kFunctionCall: plan.add(Request::kFunctionCall, Origin::kClient); break;
    default: break;  // CopyData and the like: no answer of their own
  }
  header(body_len);
  return 0;
}

}  // namespace pgkeel::proxy
