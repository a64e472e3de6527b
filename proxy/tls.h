// proxy/tls.h — the OpenSSL contexts pgkeel uses: one as a server toward clients ([tls]), one as
// a client toward PostgreSQL nodes ([server_tls]). Built at start and again at each reload (new
// certificates take effect for new connections; running ones keep theirs).
#pragma once

#include <memory>
#include <string>

#include "conf/config.h"

typedef struct ssl_ctx_st SSL_CTX;
typedef struct ssl_st SSL;

namespace pgkeel::proxy::tls {

using Context = std::shared_ptr<SSL_CTX>;

// Toward clients; nullptr and `error` set when the certificate or key cannot be used. An
// unconfigured [tls] gives nullptr with `error` empty.
Context make_server_context(const conf::TlsConfig& config, std::string& error);

// Toward nodes: verification per sslmode happens per connection (verify_node()).
Context make_client_context(const conf::ServerTlsConfig& config, std::string& error);

// A new SSL for a connected socket. `host` is the node's address, checked against the
// certificate for verify-full (as a DNS name or an IP address).
SSL* new_client_session(SSL_CTX* ctx, int fd, conf::SslMode mode, const std::string& host);
SSL* new_server_session(SSL_CTX* ctx, int fd);

// The negotiated protocol and cipher, for logs and SHOW CLIENTS.
std::string describe(SSL* ssl);

}  // namespace pgkeel::proxy::tls
