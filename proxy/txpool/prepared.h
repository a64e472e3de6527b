// proxy/txpool/prepared.h — named prepared statements across server connections. In transaction
// pooling a client's next transaction may run on any server connection, and two clients may both
// call their first statement "S_1" (pgJDBC does). So a client's statement names are its own:
// pgkeel keeps what each one means (the Parse it came from) and prepares it, once and on demand,
// on whichever server connection runs the client's next transaction, under a name derived from
// its content (the same query text and parameter types share one server statement, whichever
// client asked). Each server connection keeps at most `cap` of them, least recently used out.
// Pure: messages in, messages and response plans out.
#pragma once

#include <cstddef>
#include <list>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "proxy/txpool/response_plan.h"

namespace pgkeel::proxy {

// "pgk_" and 32 hex digits of SHA-256 over a Parse body after the statement name (query text and
// parameter types). A collision would run one client's statement for another; 128 bits make it
// as unlikely as guessing a key.
std::string shared_statement_name(std::string_view parse_tail);

// One client's statements: its name -> what it means.
class ClientStatements {
 public:
  struct Statement {
    std::string server_name;  // shared_statement_name(tail)
    std::string tail;         // the Parse body after the name
  };
  const Statement& define(std::string_view name, std::string_view tail);
  const Statement* find(std::string_view name) const;
  void forget(std::string_view name);
  void clear() { by_name_.clear(); }
  std::size_t size() const { return by_name_.size(); }
  const std::unordered_map<std::string, Statement>& all() const { return by_name_; }

 private:
  std::unordered_map<std::string, Statement> by_name_;
};

// The shared statements one server connection has, least recently used first out.
class ServerStatements {
 public:
  explicit ServerStatements(std::size_t cap = 256) : cap_(cap == 0 ? 1 : cap) {}
  bool has(std::string_view name) const { return where_.count(std::string(name)) != 0; }
  void touch(std::string_view name);
  // Records `name` as prepared there; returns the names that fell out (to Close on the server).
  std::vector<std::string> add(const std::string& name);
  void remove(std::string_view name);
  void clear() {
    order_.clear();
    where_.clear();
  }
  std::size_t size() const { return where_.size(); }
  // Least recently used first: add()ing them in this order rebuilds the same order.
  std::vector<std::string> names() const { return std::vector<std::string>(order_.rbegin(), order_.rend()); }

 private:
  std::size_t cap_;
  std::list<std::string> order_;  // most recently used at the front
  std::unordered_map<std::string, std::list<std::string>::iterator> where_;
};

// Rewrites one complete client message (type, body) for a server connection shared between
// clients: appends to `out` what to send instead, and records in `plan` what the server will
// answer and what pgkeel answers itself. Statement names in Parse, Bind, Describe and Close are
// mapped; a statement the connection lacks is prepared first (Close, Parse: pgkeel's own
// requests). Returns false for a malformed message (nothing appended).
bool rewrite_for_shared(char type, std::string_view body, ClientStatements& client, ServerStatements& server,
                        ResponsePlan& plan, std::string& out);

// A client message too long to hold whole (`body_len` bytes, `head` its first bytes), for a shared
// server connection: appends pgkeel's own requests it needs first (a statement prepared on
// demand), then the message's header with its new length and its rewritten opening, and records
// the request in `plan`. Returns how many bytes of `head` that opening replaced: the caller sends
// the rest of the body as it comes. Only a Bind's opening changes (its statement name; portal and
// name must lie in `head`); a named Parse is not mapped (its text would have to be kept whole to
// prepare it elsewhere): the caller pins the session and it goes as it is. npos: malformed.
std::size_t rewrite_head_for_shared(char type, std::string_view head, std::size_t body_len, ClientStatements& client,
                                    ServerStatements& server, ResponsePlan& plan, std::string& out);

// A message as the client sent it (type, body), for the messages passed on unchanged.
void append_message(std::string& out, char type, std::string_view body);

}  // namespace pgkeel::proxy
