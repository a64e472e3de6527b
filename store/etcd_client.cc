#include "store/etcd_client.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/dns.h>
#include <event2/http.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <utility>

namespace pgkeel::store {

void EvhttpConnDeleter::operator()(evhttp_connection* c) const { evhttp_connection_free(c); }
void EvdnsDeleter::operator()(evdns_base* d) const { evdns_base_free(d, 0); }

namespace {

constexpr const char* kAuthPath = "/v3/auth/authenticate";

timeval to_timeval(Millis d) {
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(d.count() / 1000);
  tv.tv_usec = static_cast<suseconds_t>((d.count() % 1000) * 1000);
  return tv;
}

std::string openssl_error() {
  const unsigned long e = ERR_get_error();
  if (e == 0) return "unknown OpenSSL error";
  char buf[256];
  ERR_error_string_n(e, buf, sizeof buf);
  return buf;
}

// A member that cannot serve now: the next one may. (A txn retried on the next member is safe
// for a compare-and-swap: it applies at most once, and the caller reads back when it fails.)
bool member_trouble(int status, const std::optional<ApiError>& e) {
  if (e) {
    return e->code == static_cast<int>(Code::kUnavailable) || e->code == static_cast<int>(Code::kDeadlineExceeded) ||
           e->message.find("no leader") != std::string::npos || e->message.find("leader changed") != std::string::npos ||
           e->message.find("timed out") != std::string::npos;
  }
  return status >= 500 || status == 0;
}

bool token_trouble(const std::optional<ApiError>& e) {
  return e && (e->code == static_cast<int>(Code::kUnauthenticated) ||
               e->message.find("invalid auth token") != std::string::npos);
}

}  // namespace

Client::Client(event_base* base, ClientOptions options) : base_(base), options_(std::move(options)) {
  dns_.reset(evdns_base_new(base_, EVDNS_BASE_INITIALIZE_NAMESERVERS));
  if (!dns_) dns_.reset(evdns_base_new(base_, 0));  // no resolv.conf: numeric hosts still work
  conns_.resize(options_.endpoints.size());
  const bool tls = !options_.endpoints.empty() && options_.endpoints.front().tls;
  if (tls) {
    ssl_ctx_.reset(SSL_CTX_new(TLS_client_method()));
    SSL_CTX* ctx = ssl_ctx_.get();
    if (ctx == nullptr) {
      setup_error_ = "TLS: " + openssl_error();
      return;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    const bool roots = options_.ca_file.empty() ? SSL_CTX_set_default_verify_paths(ctx) == 1
                                                : SSL_CTX_load_verify_locations(ctx, options_.ca_file.c_str(), nullptr) == 1;
    if (!roots) setup_error_ = "TLS: cannot load the trusted roots " + options_.ca_file + ": " + openssl_error();
    if (setup_error_.empty() && !options_.cert_file.empty()) {
      if (SSL_CTX_use_certificate_chain_file(ctx, options_.cert_file.c_str()) != 1 ||
          SSL_CTX_use_PrivateKey_file(ctx, options_.key_file.c_str(), SSL_FILETYPE_PEM) != 1 ||
          SSL_CTX_check_private_key(ctx) != 1) {
        setup_error_ = "TLS: client certificate " + options_.cert_file + ": " + openssl_error();
      }
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
  }
}

void Client::defer(std::function<void()> fn) {
  if (!deferred_event_) deferred_event_.reset(event_new(base_, -1, 0, &Client::on_deferred, this));
  deferred_.push_back(std::move(fn));
  event_active(deferred_event_.get(), EV_TIMEOUT, 0);
}

void Client::on_deferred(evutil_socket_t, short, void* arg) {
  auto* self = static_cast<Client*>(arg);
  std::vector<std::function<void()>> run;
  run.swap(self->deferred_);
  for (auto& fn : run) fn();  // what they defer in turn waits for the next turn
}

Client::~Client() {
  *alive_ = false;
  // What was deferred runs now (frees the connections it holds; posted callbacks see !alive_).
  deferred_event_.reset();
  while (!deferred_.empty()) {
    std::vector<std::function<void()>> run;
    run.swap(deferred_);
    for (auto& fn : run) fn();
  }
  for (Call& c : calls_) {
    if (c.req != nullptr) evhttp_cancel_request(c.req);
    c.req = nullptr;
  }
  calls_.clear();
  for (auto& c : conns_) {
    if (c && c->evcon) evhttp_connection_set_closecb(c->evcon.get(), nullptr, nullptr);
  }
  conns_.clear();
}

std::string Client::endpoint() const {
  return options_.endpoints.empty() ? std::string() : options_.endpoints[current_].text();
}

void Client::post(std::function<void()> fn) {
  std::weak_ptr<bool> alive = alive_;
  defer([alive, fn = std::move(fn)]() {
    if (auto a = alive.lock(); a && *a) fn();
  });
}

evhttp_connection* Client::make_connection(std::size_t i) {
  const conf::Endpoint& ep = options_.endpoints[i];
  evhttp_connection* evcon = nullptr;
  if (ep.tls) {
    if (!ssl_ctx_ || !setup_error_.empty()) return nullptr;
    SSL* ssl = SSL_new(ssl_ctx_.get());
    if (ssl == nullptr) return nullptr;
    SSL_set_tlsext_host_name(ssl, ep.host.c_str());
    // The member must prove the name (or address) it is reached by.
    X509_VERIFY_PARAM* param = SSL_get0_param(ssl);
    if (ep.host.find_first_not_of("0123456789.:") == std::string::npos) {
      X509_VERIFY_PARAM_set1_ip_asc(param, ep.host.c_str());
    } else {
      X509_VERIFY_PARAM_set1_host(param, ep.host.c_str(), 0);
    }
    bufferevent* bev = bufferevent_openssl_socket_new(base_, -1, ssl, BUFFEREVENT_SSL_CONNECTING,
                                                      BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
    if (bev == nullptr) {
      SSL_free(ssl);
      return nullptr;
    }
    bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
    evcon = evhttp_connection_base_bufferevent_new(base_, dns_.get(), bev, ep.host.c_str(), ep.port);
  } else {
    evcon = evhttp_connection_base_new(base_, dns_.get(), ep.host.c_str(), ep.port);
  }
  if (evcon == nullptr) return nullptr;
  evhttp_connection_set_retries(evcon, 0);
  const timeval tv = to_timeval(options_.request_timeout);
  evhttp_connection_set_timeout_tv(evcon, &tv);
  return evcon;
}

void Client::on_conn_close(evhttp_connection*, void* arg) {
  // TLS: a bufferevent whose session ended cannot start another; the next request gets a new one.
  static_cast<Conn*>(arg)->broken = true;
}

Client::Conn& Client::conn_for(std::size_t i) {
  std::unique_ptr<Conn>& c = conns_[i];
  if (c && c->broken && c->pending == 0) {
    // Not inside one of its own callbacks: freed at the loop's next turn.
    evhttp_connection_set_closecb(c->evcon.get(), nullptr, nullptr);
    defer([conn = std::make_shared<EvhttpConnHandle>(std::move(c->evcon))]() { conn->reset(); });
    c.reset();
  }
  if (!c) {
    c = std::make_unique<Conn>();
    c->evcon.reset(make_connection(i));
    if (c->evcon && options_.endpoints[i].tls) evhttp_connection_set_closecb(c->evcon.get(), &Client::on_conn_close, c.get());
  }
  return *c;
}

evhttp_request* Client::make_request(void (*cb)(evhttp_request*, void*), void* arg, std::size_t endpoint,
                                     const std::string& body, bool with_token) {
  evhttp_request* req = evhttp_request_new(cb, arg);
  if (req == nullptr) return nullptr;
  const conf::Endpoint& ep = options_.endpoints[endpoint];
  evkeyvalq* h = evhttp_request_get_output_headers(req);
  const std::string host = (ep.host.find(':') != std::string::npos ? "[" + ep.host + "]" : ep.host) + ":" + std::to_string(ep.port);
  evhttp_add_header(h, "Host", host.c_str());
  evhttp_add_header(h, "Content-Type", "application/json");
  if (with_token && !token_.empty()) evhttp_add_header(h, "Authorization", token_.c_str());
  evbuffer_add(evhttp_request_get_output_buffer(req), body.data(), body.size());
  return req;
}

void Client::call(std::string path, std::string body, std::function<void(Reply)> done) {
  calls_.emplace_back();
  CallIt it = std::prev(calls_.end());
  it->client = this;
  it->path = std::move(path);
  it->body = std::move(body);
  it->done = std::move(done);
  it->endpoint = current_;
  if (options_.endpoints.empty() || !setup_error_.empty()) {
    Reply r;
    r.error = options_.endpoints.empty() ? "no etcd endpoints" : setup_error_;
    post([this, it, r]() mutable { finish(it, std::move(r)); });
    return;
  }
  // Started at the loop's next turn, so `done` never runs inside call().
  post([this, it]() { attempt(it); });
}

void Client::attempt(CallIt it) {
  const bool need_token = !options_.username.empty() && token_.empty() && it->path != kAuthPath;
  if (need_token) {
    it->authenticating = true;
    send(it, kAuthPath, encode_authenticate(options_.username, options_.password), false);
  } else {
    it->authenticating = false;
    send(it, it->path, it->body, it->path != kAuthPath);
  }
}

void Client::send(CallIt it, const std::string& path, const std::string& body, bool with_token) {
  Conn& conn = conn_for(it->endpoint);
  if (!conn.evcon) {
    next_member(it, "cannot open a connection to " + options_.endpoints[it->endpoint].text());
    return;
  }
  evhttp_request* req = make_request(&Client::on_reply, &*it, it->endpoint, body, with_token);
  if (req == nullptr || evhttp_make_request(conn.evcon.get(), req, EVHTTP_REQ_POST, path.c_str()) != 0) {
    // evhttp_make_request frees the request when it fails.
    next_member(it, "cannot send a request to " + options_.endpoints[it->endpoint].text());
    return;
  }
  it->req = req;
  it->conn = &conn;
  ++conn.pending;
  it->timer.reset(evtimer_new(base_, &Client::on_timeout, &*it));
  const timeval tv = to_timeval(options_.request_timeout);
  evtimer_add(it->timer.get(), &tv);
}

void Client::on_timeout(evutil_socket_t, short, void* arg) {
  auto* call = static_cast<Call*>(arg);
  Client* self = call->client;
  CallIt it = self->calls_.begin();
  while (it != self->calls_.end() && &*it != call) ++it;
  if (it == self->calls_.end()) return;
  if (it->req != nullptr) {
    evhttp_cancel_request(it->req);  // no callback; the connection is reset
    it->req = nullptr;
    if (it->conn != nullptr) {
      --it->conn->pending;
      it->conn->broken = it->conn->broken || self->options_.endpoints[it->endpoint].tls;
    }
  }
  self->next_member(it, self->options_.endpoints[it->endpoint].text() + ": no answer within " +
                            std::to_string(self->options_.request_timeout.count()) + "ms");
}

void Client::on_reply(evhttp_request* req, void* arg) {
  auto* call = static_cast<Call*>(arg);
  Client* self = call->client;
  CallIt it = self->calls_.begin();
  while (it != self->calls_.end() && &*it != call) ++it;
  if (it == self->calls_.end()) return;
  it->req = nullptr;
  it->timer.reset();
  if (it->conn != nullptr) --it->conn->pending;
  const int status = req != nullptr ? evhttp_request_get_response_code(req) : 0;
  std::string body;
  if (req != nullptr && status != 0) {
    evbuffer* in = evhttp_request_get_input_buffer(req);
    body.resize(evbuffer_get_length(in));
    if (!body.empty()) evbuffer_remove(in, body.data(), body.size());
  }
  if (status == 0 && it->conn != nullptr && self->options_.endpoints[it->endpoint].tls) it->conn->broken = true;
  self->answered(it, status, std::move(body),
                 status == 0 ? "no answer from " + self->options_.endpoints[it->endpoint].text() + " (refused, reset or closed)" : "");
}

void Client::answered(CallIt it, int status, std::string body, const std::string& transport_error) {
  const std::string member = options_.endpoints[it->endpoint].text();
  if (status == 0) {
    next_member(it, transport_error);
    return;
  }
  std::optional<ApiError> err;
  if (status != 200 || body.find("\"error\"") != std::string::npos) err = decode_error(body);
  if (status == 200 && !err) {
    current_ = it->endpoint;
    if (it->authenticating) {
      AuthenticateResponse a;
      if (std::string e = decode(body, a); !e.empty()) {
        finish(it, Reply{status, std::move(body), "etcd authentication: " + e, std::nullopt, member});
        return;
      }
      token_ = a.token;
      attempt(it);
      return;
    }
    finish(it, Reply{status, std::move(body), {}, std::nullopt, member});
    return;
  }
  if (token_trouble(err) && !options_.username.empty() && !it->reauthenticated && !it->authenticating) {
    it->reauthenticated = true;  // the token expired (or the member restarted): once more with a new one
    token_.clear();
    attempt(it);
    return;
  }
  const std::string why = member + ": HTTP " + std::to_string(status) + (err ? ": " + err->message : std::string());
  if (member_trouble(status, err)) {
    next_member(it, why);
    return;
  }
  current_ = it->endpoint;
  finish(it, Reply{status, std::move(body), (it->authenticating ? "etcd authentication: " : "") + why, err, member});
}

void Client::next_member(CallIt it, const std::string& why) {
  it->last_error += (it->last_error.empty() ? "" : "; ") + why;
  it->timer.reset();
  ++it->tried;
  const std::size_t n = options_.endpoints.size();
  if (it->tried == n) {
    // Every member once: during a leader election (about a second) they all refuse or wait. One
    // more round after a pause rides it out; then the caller hears it.
    it->last_error += " [then again:]";
    it->endpoint = (it->endpoint + 1) % n;
    current_ = it->endpoint;
    std::weak_ptr<bool> alive = alive_;
    auto* heap = new std::function<void()>([this, it, alive]() {
      if (auto a = alive.lock(); a && *a) attempt(it);
    });
    const timeval pause = to_timeval(std::max(Millis{100}, options_.request_timeout / 4));
    if (event_base_once(
            base_, -1, EV_TIMEOUT,
            [](evutil_socket_t, short, void* arg) {
              std::unique_ptr<std::function<void()>> f(static_cast<std::function<void()>*>(arg));
              (*f)();
            },
            heap, &pause) != 0) {
      delete heap;
    }
    return;
  }
  if (it->tried >= 2 * n) {
    Reply r;
    r.error = "no etcd member answered: " + it->last_error;
    r.endpoint = options_.endpoints[it->endpoint].text();
    current_ = (it->endpoint + 1) % n;  // the next call starts elsewhere
    // Not inside the failed request's callback: its connection may still be unwinding.
    post([this, it, r]() mutable { finish(it, std::move(r)); });
    return;
  }
  it->endpoint = (it->endpoint + 1) % n;
  current_ = it->endpoint;
  post([this, it]() { attempt(it); });
}

void Client::finish(CallIt it, Reply reply) {
  std::function<void(Reply)> done = std::move(it->done);
  if (it->req != nullptr) evhttp_cancel_request(it->req);
  calls_.erase(it);
  if (done) done(std::move(reply));
}

namespace {
template <typename T>
std::function<void(Reply)> decoding(std::function<void(Result<T>)> done) {
  return [done = std::move(done)](Reply r) {
    Result<T> out;
    out.endpoint = r.endpoint;
    out.api_error = r.api_error;
    if (!r.ok()) {
      out.error = r.error;
    } else if (std::string e = decode(r.body, out.value); !e.empty()) {
      out.error = r.endpoint + ": " + e;
    }
    done(std::move(out));
  };
}
}  // namespace

void Client::range(const RangeRequest& r, std::function<void(Result<RangeResponse>)> done) {
  call("/v3/kv/range", encode(r), decoding(std::move(done)));
}

void Client::txn(const TxnRequest& t, std::function<void(Result<TxnResponse>)> done) {
  call("/v3/kv/txn", encode(t), decoding(std::move(done)));
}

void Client::lease_grant(std::int64_t ttl_seconds, std::function<void(Result<LeaseGrantResponse>)> done) {
  call("/v3/lease/grant", encode_lease_grant(ttl_seconds), decoding(std::move(done)));
}

void Client::lease_keepalive(std::int64_t id, std::function<void(Result<LeaseKeepAliveResponse>)> done) {
  call("/v3/lease/keepalive", encode_lease_keepalive(id), decoding(std::move(done)));
}

void Client::lease_revoke(std::int64_t id, std::function<void(Reply)> done) {
  call("/v3/lease/revoke", encode_lease_revoke(id), std::move(done));
}

// --- watch ----------------------------------------------------------------------------------

std::unique_ptr<Watch> Client::watch(const WatchRequest& w, Watch::OnResponse on_response, Watch::OnEnd on_end) {
  std::unique_ptr<Watch> out(new Watch(*this, encode(w), std::move(on_response), std::move(on_end)));
  out->endpoint_index_ = current_;
  Watch* raw = out.get();
  std::weak_ptr<bool> alive = raw->alive_;
  if (!options_.username.empty() && token_.empty()) {
    // The stream carries the token from its first byte: get one first.
    call(kAuthPath, encode_authenticate(options_.username, options_.password), [raw, alive](Reply r) {
      if (alive.expired()) return;
      if (!r.ok()) {
        raw->end("etcd authentication: " + r.error);
        return;
      }
      AuthenticateResponse a;
      if (std::string e = decode(r.body, a); !e.empty()) {
        raw->end("etcd authentication: " + e);
        return;
      }
      raw->client_.token_ = a.token;
      raw->start();
    });
  } else {
    post([raw, alive]() {
      if (!alive.expired()) raw->start();
    });
  }
  return out;
}

Watch::Watch(Client& client, std::string body, OnResponse on_response, OnEnd on_end)
    : client_(client), body_(std::move(body)), on_response_(std::move(on_response)), on_end_(std::move(on_end)) {
  link_->owner = this;
}

Watch::~Watch() {
  *alive_ = false;
  alive_.reset();
  // The request's callbacks reach this object through link_: cut, they find no one. The
  // connection (and the request on it) is freed at the next turn, and the link with it.
  link_->owner = nullptr;
  if (conn_) {
    evhttp_connection_set_closecb(conn_.get(), nullptr, nullptr);
    auto conn = std::make_shared<EvhttpConnHandle>(std::move(conn_));
    client_.defer([conn, link = link_]() { conn->reset(); });
  }
}

void Watch::start() {
  endpoint_ = client_.options_.endpoints[endpoint_index_].text();
  conn_.reset(client_.make_connection(endpoint_index_));
  if (!conn_) {
    end("cannot open a connection to " + endpoint_);
    return;
  }
  // A watch is quiet for as long as nothing changes: no read timeout worth the name. The owner
  // notices a silent member through its other requests and starts a new watch.
  const timeval tv{3600, 0};
  evhttp_connection_set_timeout_tv(conn_.get(), &tv);
  req_ = client_.make_request(&Watch::on_done, link_.get(), endpoint_index_, body_, true);
  if (req_ == nullptr) {
    end("cannot make a watch request");
    return;
  }
  evhttp_request_set_chunked_cb(req_, &Watch::on_chunk);
  evhttp_request_set_error_cb(req_, &Watch::on_error);
  if (evhttp_make_request(conn_.get(), req_, EVHTTP_REQ_POST, "/v3/watch") != 0) {
    req_ = nullptr;
    end("cannot send the watch request to " + endpoint_);
  }
}

void Watch::on_chunk(evhttp_request* req, void* arg) {
  Watch* self = static_cast<Link*>(arg)->owner;
  if (self == nullptr || self->ended_) return;
  evbuffer* in = evhttp_request_get_input_buffer(req);
  const std::size_t n = evbuffer_get_length(in);
  if (n > 0) {
    std::string bytes(n, '\0');
    evbuffer_remove(in, bytes.data(), n);
    if (evhttp_request_get_response_code(req) != 200) {
      self->error_body_ += bytes;
      return;
    }
    self->decoder_.feed(bytes);
  }
  std::weak_ptr<bool> alive = self->alive_;
  while (!alive.expired() && !self->ended_) {
    WatchStreamDecoder::Item item = self->decoder_.next();
    switch (item.status) {
      case WatchStreamDecoder::Status::kNeedMore:
        return;
      case WatchStreamDecoder::Status::kMessage:
        if (item.response.canceled) {
          self->end("etcd cancelled the watch" + (item.response.compact_revision != 0
                                                       ? ": revision compacted (now " + std::to_string(item.response.compact_revision) + ")"
                                                       : item.response.cancel_reason.empty() ? std::string() : ": " + item.response.cancel_reason));
          return;
        }
        self->on_response_(item.response);  // may destroy this watch: `alive` says
        break;
      case WatchStreamDecoder::Status::kError:
        self->end(self->endpoint_ + ": " + item.error.message);
        return;
      case WatchStreamDecoder::Status::kMalformed:
        self->end(self->endpoint_ + ": " + item.why);
        return;
    }
  }
}

void Watch::on_error(evhttp_request_error error, void* arg) {
  Watch* self = static_cast<Link*>(arg)->owner;
  if (self == nullptr) return;
  self->req_ = nullptr;
  const char* what = error == EVREQ_HTTP_TIMEOUT ? "timed out" : error == EVREQ_HTTP_EOF ? "closed by the member"
                     : error == EVREQ_HTTP_INVALID_HEADER ? "invalid answer" : "broke";
  self->end(self->endpoint_ + ": the watch stream " + what);
}

void Watch::on_done(evhttp_request* req, void* arg) {
  Watch* self = static_cast<Link*>(arg)->owner;
  if (self == nullptr) return;
  self->req_ = nullptr;
  if (self->ended_) return;
  const int status = req != nullptr ? evhttp_request_get_response_code(req) : 0;
  if (req != nullptr && status != 0) {
    on_chunk(req, arg);
    if (self->ended_) return;
  }
  std::string why = self->endpoint_ + ": the watch stream ended";
  if (status == 0) {
    why = self->endpoint_ + ": no answer to the watch (refused, reset or closed)";
  } else if (status != 200) {
    const std::optional<ApiError> e = decode_error(self->error_body_);
    why = self->endpoint_ + ": HTTP " + std::to_string(status) + (e ? ": " + e->message : std::string());
  }
  self->end(why);
}

void Watch::end(const std::string& why) {
  if (ended_) return;
  ended_ = true;
  // The next watch starts on the next member.
  const std::size_t n = client_.options_.endpoints.size();
  if (n > 0 && client_.current_ == endpoint_index_) client_.current_ = (endpoint_index_ + 1) % n;
  std::weak_ptr<bool> alive = alive_;
  client_.post([this, alive, why]() {
    if (alive.expired() || !on_end_) return;
    OnEnd cb = std::move(on_end_);
    cb(why);  // may destroy this watch
  });
}

}  // namespace pgkeel::store
