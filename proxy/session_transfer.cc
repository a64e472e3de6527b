#include "proxy/session_transfer.h"

#include <charconv>
#include <cstring>

namespace pgkeel::proxy {
namespace {

constexpr std::string_view kMagic = "pgkeel-session 1\n";
constexpr std::size_t kMaxField = 64u << 20;  // a Parse body may be large; nothing is larger

// A field: "<tag> <length>\n" then the bytes. Pairs are "<a>\0<b>".
void put(std::string& out, std::string_view tag, std::string_view bytes) {
  out += tag;
  out += ' ';
  out += std::to_string(bytes.size());
  out += '\n';
  out += bytes;
}

std::string pair(std::string_view a, std::string_view b) {
  std::string s(a);
  s += '\0';
  s += b;
  return s;
}

template <typename Int>
std::optional<Int> number(std::string_view s) {
  Int v{};
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || end != s.data() + s.size() || s.empty()) return std::nullopt;
  return v;
}

std::string key_bytes(const auth::Key& k) { return std::string(reinterpret_cast<const char*>(k.data()), k.size()); }

}  // namespace

std::string encode(const SessionTransfer& t) {
  std::string out(kMagic);
  put(out, "listener", t.listener);
  put(out, "user", t.key.user);
  put(out, "database", t.key.database);
  put(out, "server_database", t.key.server_database);
  for (const auto& [k, v] : t.key.params) put(out, "param", pair(k, v));
  put(out, "cred_user", t.credential.user);
  if (!t.credential.md5_hash.empty()) put(out, "cred_md5", t.credential.md5_hash);
  if (!t.credential.password.empty()) put(out, "cred_password", t.credential.password);
  if (t.credential.scram) {
    if (t.credential.scram->password) put(out, "scram_password", *t.credential.scram->password);
    if (const auto& k = t.credential.scram->keys) {
      put(out, "scram_keys", key_bytes(k->client_key) + key_bytes(k->server_key) + std::to_string(k->iterations) + '\0' + k->salt);
    }
    if (!t.credential.scram->password && !t.credential.scram->keys) put(out, "scram_empty", "");
  }
  put(out, "cancel", std::to_string(t.cancel_pid) + " " + std::to_string(t.cancel_key));
  for (const auto& [k, v] : t.settings) put(out, "setting", pair(k, v));
  for (const auto& [k, v] : t.sql_prepared) put(out, "sql_prepared", pair(k, v));
  put(out, "unnamed", t.unnamed);
  for (const auto& [k, v] : t.statements) put(out, "statement", pair(k, v));
  put(out, "application_name", t.application_name);
  put(out, "write_lsn", std::to_string(t.write_lsn));
  put(out, "connected", std::to_string(t.connected_unix_ms));
  if (t.server) {
    put(out, "server_node", t.server->node);
    put(out, "server_backend", std::to_string(t.server->backend_pid) + " " + std::to_string(t.server->backend_key));
    put(out, "server_parameters", t.server->parameter_status);
    for (const std::string& n : t.server->shared_statements) put(out, "server_statement", n);
    if (!t.server->settings.empty()) put(out, "server_settings", t.server->settings);
  }
  if (!t.unreplayable.empty()) put(out, "unreplayable", t.unreplayable);
  return out;
}

std::optional<SessionTransfer> decode_session(std::string_view in, std::string& err) {
  if (in.substr(0, kMagic.size()) != kMagic) {
    err = "not a pgkeel session";
    return std::nullopt;
  }
  in.remove_prefix(kMagic.size());
  SessionTransfer t;
  bool have_cancel = false;
  auto split_pair = [&](std::string_view v, std::string& a, std::string& b) {
    const std::size_t nul = v.find('\0');
    if (nul == std::string_view::npos) return false;
    a = std::string(v.substr(0, nul));
    b = std::string(v.substr(nul + 1));
    return true;
  };
  auto scram = [&t]() -> auth::ScramSecret& {
    if (!t.credential.scram) t.credential.scram.emplace();
    return *t.credential.scram;
  };
  while (!in.empty()) {
    const std::size_t sp = in.find(' ');
    const std::size_t nl = in.find('\n');
    if (sp == std::string_view::npos || nl == std::string_view::npos || sp > nl) {
      err = "a field without a header";
      return std::nullopt;
    }
    const std::string_view tag = in.substr(0, sp);
    const auto len = number<std::size_t>(in.substr(sp + 1, nl - sp - 1));
    if (!len || *len > kMaxField || in.size() - nl - 1 < *len) {
      err = "field " + std::string(tag) + ": bad length";
      return std::nullopt;
    }
    const std::string_view v = in.substr(nl + 1, *len);
    in.remove_prefix(nl + 1 + *len);
    std::string a;
    std::string b;
    bool ok = true;
    if (tag == "listener") {
      t.listener = std::string(v);
    } else if (tag == "user") {
      t.key.user = std::string(v);
    } else if (tag == "database") {
      t.key.database = std::string(v);
    } else if (tag == "server_database") {
      t.key.server_database = std::string(v);
    } else if (tag == "param") {
      ok = split_pair(v, a, b);
      if (ok) t.key.params.emplace_back(a, b);
    } else if (tag == "cred_user") {
      t.credential.user = std::string(v);
    } else if (tag == "cred_md5") {
      t.credential.md5_hash = std::string(v);
    } else if (tag == "cred_password") {
      t.credential.password = std::string(v);
    } else if (tag == "scram_password") {
      scram().password = std::string(v);
    } else if (tag == "scram_empty") {
      scram();
    } else if (tag == "scram_keys") {
      const std::size_t keys = 2 * auth::kKeyLen;
      const std::size_t nul = v.find('\0', keys);
      const auto iterations = nul == std::string_view::npos ? std::nullopt : number<int>(v.substr(keys, nul - keys));
      ok = v.size() > keys && iterations.has_value();
      if (ok) {
        auth::ScramKeys k;
        std::memcpy(k.client_key.data(), v.data(), auth::kKeyLen);
        std::memcpy(k.server_key.data(), v.data() + auth::kKeyLen, auth::kKeyLen);
        k.iterations = *iterations;
        k.salt = std::string(v.substr(nul + 1));
        scram().keys = std::move(k);
      }
    } else if (tag == "cancel") {
      const std::size_t gap = v.find(' ');
      const auto pid = gap == std::string_view::npos ? std::nullopt : number<std::int32_t>(v.substr(0, gap));
      const auto key = gap == std::string_view::npos ? std::nullopt : number<std::int32_t>(v.substr(gap + 1));
      ok = pid && key;
      if (ok) {
        t.cancel_pid = *pid;
        t.cancel_key = *key;
        have_cancel = true;
      }
    } else if (tag == "setting") {
      ok = split_pair(v, a, b);
      if (ok) t.settings[a] = b;
    } else if (tag == "sql_prepared") {
      ok = split_pair(v, a, b);
      if (ok) t.sql_prepared[a] = b;
    } else if (tag == "unnamed") {
      t.unnamed = std::string(v);
    } else if (tag == "statement") {
      ok = split_pair(v, a, b);
      if (ok) t.statements[a] = b;
    } else if (tag == "application_name") {
      t.application_name = std::string(v);
    } else if (tag == "write_lsn") {
      const auto n = number<std::uint64_t>(v);
      ok = n.has_value();
      if (ok) t.write_lsn = *n;
    } else if (tag == "connected") {
      const auto n = number<std::int64_t>(v);
      ok = n.has_value();
      if (ok) t.connected_unix_ms = *n;
    } else if (tag == "server_node") {
      if (!t.server) t.server.emplace();
      t.server->node = std::string(v);
    } else if (tag == "server_backend") {
      const std::size_t gap = v.find(' ');
      const auto pid = gap == std::string_view::npos ? std::nullopt : number<std::int32_t>(v.substr(0, gap));
      const auto key = gap == std::string_view::npos ? std::nullopt : number<std::int32_t>(v.substr(gap + 1));
      ok = pid && key;
      if (ok) {
        if (!t.server) t.server.emplace();
        t.server->backend_pid = *pid;
        t.server->backend_key = *key;
      }
    } else if (tag == "server_parameters") {
      if (!t.server) t.server.emplace();
      t.server->parameter_status = std::string(v);
    } else if (tag == "server_statement") {
      if (!t.server) t.server.emplace();
      t.server->shared_statements.emplace_back(v);
    } else if (tag == "server_settings") {
      if (!t.server) t.server.emplace();
      t.server->settings = std::string(v);
    } else if (tag == "unreplayable") {
      t.unreplayable = std::string(v);
    } else {
      err = "unknown field " + std::string(tag);
      return std::nullopt;
    }
    if (!ok) {
      err = "field " + std::string(tag) + ": malformed";
      return std::nullopt;
    }
  }
  if (t.server && t.server->node.empty()) {
    err = "a server without its node";
    return std::nullopt;
  }
  if (t.listener.empty() || t.key.user.empty() || t.key.database.empty() || !have_cancel) {
    err = "a session without its listener, user, database or cancel key";
    return std::nullopt;
  }
  return t;
}

}  // namespace pgkeel::proxy
