#include "proxy/tls.h"

#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

namespace pgkeel::proxy::tls {
namespace {

std::string last_error(const std::string& what) {
  const unsigned long e = ERR_get_error();
  char buf[256] = "unknown error";
  if (e != 0) ERR_error_string_n(e, buf, sizeof buf);
  ERR_clear_error();
  return what + ": " + buf;
}

Context wrap(SSL_CTX* ctx) { return Context(ctx, [](SSL_CTX* c) { SSL_CTX_free(c); }); }

void common(SSL_CTX* ctx, const std::string& min_version) {
  SSL_CTX_set_min_proto_version(ctx, min_version == "TLSv1.3" ? TLS1_3_VERSION : TLS1_2_VERSION);
  // The relay retries a short write with the same bytes from a buffer that may have moved.
  SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_RELEASE_BUFFERS);
  SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
}

}  // namespace

Context make_server_context(const conf::TlsConfig& config, std::string& error) {
  error.clear();
  if (!config.enabled()) return nullptr;
  Context ctx = wrap(SSL_CTX_new(TLS_server_method()));
  if (!ctx) {
    error = last_error("SSL_CTX_new");
    return nullptr;
  }
  common(ctx.get(), config.min_version);
  // Idle TLS sessions cost memory per client; no session cache or tickets to keep.
  SSL_CTX_set_session_cache_mode(ctx.get(), SSL_SESS_CACHE_OFF);
  SSL_CTX_set_num_tickets(ctx.get(), 0);
  if (SSL_CTX_use_certificate_chain_file(ctx.get(), config.cert_file.c_str()) != 1) {
    error = last_error("tls.cert_file " + config.cert_file);
    return nullptr;
  }
  if (SSL_CTX_use_PrivateKey_file(ctx.get(), config.key_file.c_str(), SSL_FILETYPE_PEM) != 1) {
    error = last_error("tls.key_file " + config.key_file);
    return nullptr;
  }
  if (SSL_CTX_check_private_key(ctx.get()) != 1) {
    error = last_error("tls.key_file does not match tls.cert_file");
    return nullptr;
  }
  return ctx;
}

Context make_client_context(const conf::ServerTlsConfig& config, std::string& error) {
  error.clear();
  Context ctx = wrap(SSL_CTX_new(TLS_client_method()));
  if (!ctx) {
    error = last_error("SSL_CTX_new");
    return nullptr;
  }
  common(ctx.get(), "TLSv1.2");
  if (!config.ca_file.empty() && SSL_CTX_load_verify_locations(ctx.get(), config.ca_file.c_str(), nullptr) != 1) {
    error = last_error("server_tls.ca_file " + config.ca_file);
    return nullptr;
  }
  if (!config.cert_file.empty()) {
    if (SSL_CTX_use_certificate_chain_file(ctx.get(), config.cert_file.c_str()) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx.get(), config.key_file.c_str(), SSL_FILETYPE_PEM) != 1) {
      error = last_error("server_tls.cert_file/key_file");
      return nullptr;
    }
  }
  return ctx;
}

SSL* new_client_session(SSL_CTX* ctx, int fd, conf::SslMode mode, const std::string& host) {
  SSL* ssl = SSL_new(ctx);
  if (ssl == nullptr) return nullptr;
  SSL_set_fd(ssl, fd);
  SSL_set_connect_state(ssl);
  if (mode == conf::SslMode::kVerifyCa || mode == conf::SslMode::kVerifyFull) {
    SSL_set_verify(ssl, SSL_VERIFY_PEER, nullptr);
    if (mode == conf::SslMode::kVerifyFull) {
      X509_VERIFY_PARAM* param = SSL_get0_param(ssl);
      unsigned char ip[16];
      const bool is_ip = inet_pton(AF_INET, host.c_str(), ip) == 1 || inet_pton(AF_INET6, host.c_str(), ip) == 1;
      if (is_ip) {
        X509_VERIFY_PARAM_set1_ip_asc(param, host.c_str());
      } else {
        X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
        X509_VERIFY_PARAM_set1_host(param, host.c_str(), 0);
        SSL_set_tlsext_host_name(ssl, host.c_str());
      }
    }
  } else {
    SSL_set_verify(ssl, SSL_VERIFY_NONE, nullptr);  // prefer / require: encryption, no identity
  }
  return ssl;
}

SSL* new_server_session(SSL_CTX* ctx, int fd) {
  SSL* ssl = SSL_new(ctx);
  if (ssl == nullptr) return nullptr;
  SSL_set_fd(ssl, fd);
  SSL_set_accept_state(ssl);
  return ssl;
}

std::string describe(SSL* ssl) {
  if (ssl == nullptr) return "";
  return std::string(SSL_get_version(ssl)) + " " + SSL_get_cipher_name(ssl);
}

}  // namespace pgkeel::proxy::tls
