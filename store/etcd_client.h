// store/etcd_client.h — an asynchronous etcd v3 client on a libevent loop, through etcd's JSON
// gateway with libevent's HTTP client (evhttp), TLS through an OpenSSL bufferevent. Unary calls
// go to one member at a time and move on to the next when a member does not answer, answers too
// late, or cannot serve (no leader, no quorum); a watch streams on a connection of its own. Never
// blocks: names are resolved with evdns. Nothing here knows what pgkeel keeps in etcd.
#pragma once

#include <event2/event.h>
#include <event2/http.h>
#include <openssl/ssl.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "conf/endpoint.h"
#include "store/etcd_api.h"

struct evdns_base;

namespace pgkeel::store {

using Millis = std::chrono::milliseconds;

struct EvhttpConnDeleter {
  void operator()(evhttp_connection* c) const;
};
struct EvdnsDeleter {
  void operator()(evdns_base* d) const;
};
struct EventDeleter {
  void operator()(event* e) const { event_free(e); }
};
struct SslCtxDeleter {
  void operator()(SSL_CTX* c) const { SSL_CTX_free(c); }
};
using EvhttpConnHandle = std::unique_ptr<evhttp_connection, EvhttpConnDeleter>;
using EvdnsHandle = std::unique_ptr<evdns_base, EvdnsDeleter>;
using EventHandle = std::unique_ptr<event, EventDeleter>;
using SslCtxHandle = std::unique_ptr<SSL_CTX, SslCtxDeleter>;

struct ClientOptions {
  std::vector<conf::Endpoint> endpoints;
  std::string ca_file;  // https: trusted roots (empty: the system's)
  std::string cert_file;
  std::string key_file;
  std::string username;  // empty: no authentication
  std::string password;
  Millis request_timeout{1000};  // per member tried
};

// The answer to one call.
struct Reply {
  int http_status = 0;  // 0: no HTTP answer from any member
  std::string body;
  std::string error;  // empty when http_status is 200
  std::optional<ApiError> api_error;
  std::string endpoint;  // the member that answered, or the last one tried
  bool ok() const { return error.empty(); }
};

template <typename T>
struct Result {
  std::string error;  // empty: `value` holds the answer
  std::optional<ApiError> api_error;
  std::string endpoint;
  T value;
  bool ok() const { return error.empty(); }
};

class Client;

// A watch on one member: created, then events until it ends (the member went away, the stream
// broke, etcd cancelled it). It does not restart itself: the owner starts a new one from the
// revision after the last it saw, and the client starts it on another member.
class Watch {
 public:
  using OnResponse = std::function<void(const WatchResponse&)>;
  using OnEnd = std::function<void(const std::string& why)>;
  ~Watch();
  Watch(const Watch&) = delete;
  Watch& operator=(const Watch&) = delete;
  const std::string& endpoint() const { return endpoint_; }

 private:
  friend class Client;
  Watch(Client& client, std::string body, OnResponse on_response, OnEnd on_end);
  void start();
  static void on_chunk(evhttp_request* req, void* arg);
  static void on_done(evhttp_request* req, void* arg);
  static void on_error(evhttp_request_error error, void* arg);
  void end(const std::string& why);

  // What the request's callbacks hold: outlives the Watch until its connection is freed.
  struct Link {
    Watch* owner = nullptr;
  };

  Client& client_;
  std::shared_ptr<Link> link_ = std::make_shared<Link>();
  std::string body_;
  std::string error_body_;  // a refused watch's answer
  OnResponse on_response_;
  OnEnd on_end_;
  std::size_t endpoint_index_ = 0;
  std::string endpoint_;
  EvhttpConnHandle conn_;
  evhttp_request* req_ = nullptr;  // owned by conn_ while it runs
  WatchStreamDecoder decoder_;
  bool ended_ = false;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

class Client {
 public:
  Client(event_base* base, ClientOptions options);
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // TLS setup problems (unreadable CA, key that does not match); empty when usable.
  const std::string& setup_error() const { return setup_error_; }

  // POST `path` (e.g. "/v3/kv/range") with a JSON body, to each member in turn until one
  // answers, in two rounds at most (the second after a short pause, to ride out an election).
  // `done` runs on the loop, never inside call(), and may start new calls; it must not destroy
  // the client.
  void call(std::string path, std::string body, std::function<void(Reply)> done);

  void range(const RangeRequest& r, std::function<void(Result<RangeResponse>)> done);
  void txn(const TxnRequest& t, std::function<void(Result<TxnResponse>)> done);
  void lease_grant(std::int64_t ttl_seconds, std::function<void(Result<LeaseGrantResponse>)> done);
  void lease_keepalive(std::int64_t id, std::function<void(Result<LeaseKeepAliveResponse>)> done);
  void lease_revoke(std::int64_t id, std::function<void(Reply)> done);

  // Starts a watch on the current member. Destroying the Watch cancels it (no callback after).
  std::unique_ptr<Watch> watch(const WatchRequest& w, Watch::OnResponse on_response, Watch::OnEnd on_end);

  // The member calls start with ("http://127.0.0.1:2379").
  std::string endpoint() const;

 private:
  friend class Watch;
  // Runs `fn` at the loop's next turn (never inside the caller); a client destroyed first runs
  // what is still pending itself, so nothing deferred outlives it (freed connections included).
  void defer(std::function<void()> fn);
  static void on_deferred(evutil_socket_t, short, void* arg);
  std::vector<std::function<void()>> deferred_;
  EventHandle deferred_event_;  // made active by defer(); runs what is queued
  struct Conn {
    EvhttpConnHandle evcon;
    int pending = 0;
    bool broken = false;  // TLS: closed once; replaced before the next request
  };
  struct Call {
    std::string path;
    std::string body;
    std::function<void(Reply)> done;
    std::size_t endpoint = 0;  // the member tried now
    std::size_t tried = 0;     // members tried so far
    bool reauthenticated = false;
    bool authenticating = false;  // this attempt is the /v3/auth/authenticate before the call
    evhttp_request* req = nullptr;
    Conn* conn = nullptr;
    EventHandle timer;
    std::string last_error;
    Client* client = nullptr;
  };
  using CallIt = std::list<Call>::iterator;

  void attempt(CallIt it);
  void send(CallIt it, const std::string& path, const std::string& body, bool with_token);
  static void on_reply(evhttp_request* req, void* arg);
  static void on_timeout(evutil_socket_t, short, void* arg);
  void answered(CallIt it, int status, std::string body, const std::string& transport_error);
  void next_member(CallIt it, const std::string& why);
  void finish(CallIt it, Reply reply);
  void post(std::function<void()> fn);  // runs fn on the loop, soon
  // A connection for endpoint `i`: kept per member, or made anew (TLS after a close).
  Conn& conn_for(std::size_t i);
  evhttp_connection* make_connection(std::size_t i);
  evhttp_request* make_request(void (*cb)(evhttp_request*, void*), void* arg, std::size_t endpoint,
                               const std::string& body, bool with_token);
  static void on_conn_close(evhttp_connection* c, void* arg);

  event_base* base_;
  ClientOptions options_;
  std::string setup_error_;
  EvdnsHandle dns_;
  SslCtxHandle ssl_ctx_;
  std::vector<std::unique_ptr<Conn>> conns_;  // per endpoint
  std::list<Call> calls_;
  std::size_t current_ = 0;
  std::string token_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace pgkeel::store
