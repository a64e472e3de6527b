// proxy/pool.h — per worker, the warm server connections of one pool key (node, user,
// database, normalized startup parameters) and the clients waiting for one.
#pragma once

#include <deque>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "proxy/intern.h"
#include "proxy/shared.h"
#include "routing/node.h"

namespace pgkeel::proxy {

class Client;
class Server;
class Worker;

using StartupParams = std::vector<std::pair<std::string, std::string>>;

// Who a logged-in client is, and what its server connections log in as. Immutable and shared
// (Interned::sessions): the clients of one application hold one copy.
struct SessionKey {
  std::string user;
  std::string database;         // as the client asked
  std::string server_database;  // on the server
  StartupParams params;         // normalized startup parameters

  bool operator==(const SessionKey&) const = default;
};

// Per worker: the shared copies its clients and servers point to.
struct Interned {
  Interner<SessionKey> sessions;             // by make_session_text()
  Interner<ServerCredential> credentials;    // by user
  Interner<std::string> parameter_statuses;  // by pool key: a server's ParameterStatus messages
};

struct Pool {
  std::string key;
  routing::NodeId node = 0;
  std::vector<Server*> idle;     // most recently used last: reuse it first, warmest cache
  std::deque<Client*> waiters;   // in arrival order
  int total = 0;                 // this worker's servers in this pool, any state
  int connecting = 0;            // of which still logging in
  std::string blocked_by;        // which limit kept the last waiter from a new connection
};

// Pool key: server connections are interchangeable only when all of these match, so a warm
// connection never carries one client's `options` or `application_name` to another.
std::string make_pool_key(routing::NodeId node, const SessionKey& session);
// Everything in `session`, as text: its slot in Interned::sessions.
std::string make_session_text(const SessionKey& session);

// Startup parameters forwarded to the server: the client's, minus those pgkeel owns (user,
// database, replication), sorted by name so equal sets give equal keys.
StartupParams normalize_params(const StartupParams& client_params);

// The client asks for a server: an idle one now, a new one if the caps allow, or a place in
// the queue. The client is called back with on_server_ready() or on_server_failed().
void request_server(Worker& w, Client& c);
// Starts connections for waiters that have none on its way, as far as the caps allow.
void feed_waiters(Worker& w, Pool& p);
// A client stopped waiting (it left or timed out).
void cancel_wait(Worker& w, Client& c);
// A server finished its login or its reset and can serve: hand it to a waiter or keep it idle.
void server_available(Worker& w, Server& s);
// A server's connect or login failed: the first waiter gets `error_response` (the server's own
// ErrorResponse, or pgkeel's), then the server is gone.
// A transport failure to the writer holds the waiter instead (a failover may be starting) and
// tells the keeper, which probes that node at once.
void server_login_failed(Worker& w, Server& s, const std::string& error_response, bool transport);
// A server is gone: free its slot, and let a waiter try a new connection.
void server_gone(Worker& w, Server& s);

}  // namespace pgkeel::proxy
