// proxy/protocol/message.h — PostgreSQL v3 message vocabulary: type bytes, a writer that
// builds messages, a reader that parses fields without trusting lengths, and the startup
// packets (protocol docs §55.2 "Message Flow" and §55.7 "Message Formats").
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace pgkeel::protocol {

// Frontend (client -> server) message types, §55.7.
namespace fe {
inline constexpr char kBind = 'B';
inline constexpr char kClose = 'C';
inline constexpr char kCopyData = 'd';
inline constexpr char kCopyDone = 'c';
inline constexpr char kCopyFail = 'f';
inline constexpr char kDescribe = 'D';
inline constexpr char kExecute = 'E';
inline constexpr char kFlush = 'H';
inline constexpr char kFunctionCall = 'F';
inline constexpr char kParse = 'P';
inline constexpr char kPassword = 'p';  // also SASLInitialResponse, SASLResponse
inline constexpr char kQuery = 'Q';
inline constexpr char kSync = 'S';
inline constexpr char kTerminate = 'X';
}  // namespace fe

// Backend (server -> client) message types, §55.7.
namespace be {
inline constexpr char kAuthentication = 'R';
inline constexpr char kBackendKeyData = 'K';
inline constexpr char kCommandComplete = 'C';
inline constexpr char kCopyInResponse = 'G';
inline constexpr char kCopyOutResponse = 'H';
inline constexpr char kCopyBothResponse = 'W';
inline constexpr char kDataRow = 'D';
inline constexpr char kErrorResponse = 'E';
inline constexpr char kNegotiateProtocolVersion = 'v';
inline constexpr char kNoticeResponse = 'N';
inline constexpr char kNotificationResponse = 'A';
inline constexpr char kParameterStatus = 'S';
inline constexpr char kReadyForQuery = 'Z';
}  // namespace be

// Authentication request codes carried by 'R'.
enum class AuthCode : std::int32_t {
  kOk = 0,
  kCleartextPassword = 3,
  kMD5Password = 5,
  kSASL = 10,
  kSASLContinue = 11,
  kSASLFinal = 12,
};

// Special startup request codes (§55.7 CancelRequest, SSLRequest, GSSENCRequest).
inline constexpr std::int32_t kProtocolVersion3 = 196608;  // 3.0
inline constexpr std::int32_t kCancelRequestCode = 80877102;
inline constexpr std::int32_t kSSLRequestCode = 80877103;
inline constexpr std::int32_t kGSSENCRequestCode = 80877104;

// PostgreSQL refuses messages over 1 GB - 1 (PQ_LARGE_MESSAGE_LIMIT); so do we.
inline constexpr std::uint32_t kMaxMessageLength = 0x3fffffff;
// A startup packet is small; PostgreSQL caps it at 10000 bytes (MAX_STARTUP_PACKET_LENGTH).
inline constexpr std::uint32_t kMaxStartupLength = 10000;

inline std::uint32_t read_u32(const unsigned char* p) {
  return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) |
         std::uint32_t{p[3]};
}
inline void write_u32(unsigned char* p, std::uint32_t v) {
  p[0] = static_cast<unsigned char>(v >> 24);
  p[1] = static_cast<unsigned char>(v >> 16);
  p[2] = static_cast<unsigned char>(v >> 8);
  p[3] = static_cast<unsigned char>(v);
}

// Appends complete messages to a std::string. begin() writes the type and a length placeholder;
// end() patches the length.
class Writer {
 public:
  explicit Writer(std::string& out) : out_(out) {}
  Writer& begin(char type);
  Writer& begin_untyped();  // startup-style packets: length only
  Writer& i8(std::uint8_t v);
  Writer& i16(std::int16_t v);
  Writer& i32(std::int32_t v);
  Writer& str(std::string_view s);  // NUL-terminated
  Writer& bytes(std::string_view s);
  void end();

 private:
  std::string& out_;
  std::size_t start_ = 0;
};

// Reads fields from a message body; any overrun sets failed() instead of reading past the end.
class Reader {
 public:
  explicit Reader(std::string_view body) : data_(body) {}
  std::uint8_t i8();
  std::int16_t i16();
  std::int32_t i32();
  std::string_view str();           // up to the next NUL (consumed); fails if none
  std::string_view bytes(std::size_t n);
  std::string_view rest();
  bool failed() const { return failed_; }
  bool done() const { return pos_ == data_.size(); }

 private:
  std::string_view data_;
  std::size_t pos_ = 0;
  bool failed_ = false;
};

// ErrorResponse / NoticeResponse fields (§55.8). Severity "FATAL" closes the connection.
struct ErrorFields {
  std::string_view severity = "ERROR";
  std::string_view sqlstate;
  std::string_view message;
  std::string_view detail;
  std::string_view hint;
};
void append_error(std::string& out, const ErrorFields& fields);
void append_ready_for_query(std::string& out, char tx_status);
void append_parameter_status(std::string& out, std::string_view name, std::string_view value);
void append_backend_key_data(std::string& out, std::int32_t pid, std::int32_t key);
void append_auth(std::string& out, AuthCode code, std::string_view payload = {});

// A parsed ErrorResponse (fields point into the message body).
struct ParsedError {
  std::string_view severity;
  std::string_view sqlstate;
  std::string_view message;
};
ParsedError parse_error(std::string_view body);

// The first packet of a connection. Lengths and codes are validated; nothing is trusted.
struct StartupPacket {
  enum class Kind { kStartup, kSSLRequest, kGSSENCRequest, kCancel };
  Kind kind = Kind::kStartup;
  std::int32_t version = 0;
  std::vector<std::pair<std::string, std::string>> params;  // in the client's order
  std::int32_t cancel_pid = 0;
  std::int32_t cancel_key = 0;

  const std::string* param(std::string_view name) const;
};

struct StartupParse {
  enum class Status { kNeedMore, kOk, kMalformed };
  Status status = Status::kNeedMore;
  std::size_t consumed = 0;   // bytes of the packet, when kOk
  std::string error;          // reason, when kMalformed
  StartupPacket packet;
};

// Parses one startup-phase packet from the start of `data`.
StartupParse parse_startup(std::string_view data);

}  // namespace pgkeel::protocol
