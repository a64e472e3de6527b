// tests/integration/http_client.h — a tiny HTTP/1.1 client for the tests (one request per
// connection, to 127.0.0.1): the status port's pages, /metrics and /api/status.
#pragma once

#include <chrono>
#include <map>
#include <string>

namespace pgkeel::test {

struct HttpResponse {
  int code = 0;                                // 0 when there was no valid answer
  std::map<std::string, std::string> headers;  // names lower-cased
  std::string body;
  std::string error;

  std::string header(const std::string& name) const {
    auto it = headers.find(name);
    return it == headers.end() ? std::string() : it->second;
  }
};

// `headers`: more header lines, each ending in "\r\n".
HttpResponse http(int port, const std::string& method, const std::string& target,
                  std::chrono::milliseconds timeout = std::chrono::seconds(5), const std::string& headers = "");

}  // namespace pgkeel::test
