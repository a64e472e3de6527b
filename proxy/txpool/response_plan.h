// proxy/txpool/response_plan.h — which server responses answer which request, on a server connection
// whose request stream pgkeel edits (transaction pooling; a session resumed on another server).
// Requests pgkeel added itself have their responses swallowed; requests pgkeel answered without
// the server (a Parse of a statement the connection already has, a Close of a statement it keeps)
// get their answer inserted exactly where PostgreSQL would have sent it. Pure: request kinds in,
// one verdict per server message out.
//
// PostgreSQL answers requests in order (protocol docs §55.2.3): Parse '1', Bind '2', Close '3',
// Describe statement 't' then 'T' or 'n', Describe portal 'T' or 'n', Execute rows then 'C', 'I'
// or 's' (a COPY in between), Sync 'Z', Query and FunctionCall everything up to 'Z'. After an
// ErrorResponse in the extended protocol it answers nothing until the next Sync; NoticeResponse,
// ParameterStatus and NotificationResponse may come at any time.
#pragma once

#include <cstdint>
#include <deque>
#include <string>
#include <utility>
#include <vector>

namespace pgkeel::proxy {

class ResponsePlan {
 public:
  enum class Request : std::uint8_t {
    kParse, kBind, kClose, kDescribeStatement, kDescribePortal, kExecute, kSync, kQuery, kFunctionCall,
  };
  enum class Origin : std::uint8_t {
    kClient,    // forwarded: its responses go to the client
    kInjected,  // pgkeel's own: its responses are swallowed (an error is still passed on)
    kAnswered,  // not sent: pgkeel answers it (Parse: ParseComplete, Close: CloseComplete)
  };

  // Records a request, in the order the server sees them (kAnswered: where the server would have).
  // A Parse may carry the server-side statement name it creates: if the server ends up not
  // creating it (an error, or skipped after one), the name is reported by take_dropped().
  void add(Request r, Origin o, std::string statement = {});

  struct Verdict {
    bool forward = true;  // send this server message on to the client
    std::string before;   // pgkeel's answers due before it (when take_due() was not called)
    std::string after;    // pgkeel's answers due right after it
  };
  Verdict on_server_message(char type);

  // PostgreSQL ignored the client's last `n` Syncs: they reached it in copy-in mode (§55.2.6), so
  // no ReadyForQuery answers them.
  void ignore_syncs(int n);

  // Answers due now, with nothing outstanding in front of them (call after add()).
  std::string take_due();

  // Nothing outstanding: the next server message starts a new request's response.
  bool idle() const { return q_.empty(); }
  // A server message did not fit the plan; from here on everything is forwarded, and the
  // connection must not be reused (its state is unknown).
  bool lost() const { return lost_; }
  // One of pgkeel's own requests failed (e.g. restoring the session's settings).
  bool injected_failed() const { return injected_failed_; }
  // Waiting for the client's Sync after an error: its requests until then get no answer.
  bool skipping() const { return skipping_; }
  std::size_t outstanding() const { return q_.size(); }
  // Statements named in add(kParse, ...) that the server did not create after all.
  std::vector<std::string> take_dropped() { return std::exchange(dropped_, {}); }

 private:
  struct Entry {
    Request request;
    Origin origin;
    bool described = false;  // kDescribeStatement: ParameterDescription seen
    std::string statement;   // kParse: the server-side name it creates, if pgkeel tracks it
  };
  void drop(Entry& e);
  void answer_front(std::string& out);
  void error_skip();

  std::deque<Entry> q_;
  bool skipping_ = false;
  bool lost_ = false;
  bool injected_failed_ = false;
  std::vector<std::string> dropped_;
};

// Applies a ResponsePlan to a server's byte stream as it arrives, chunk by chunk: frames the
// messages (a header may straddle chunks), asks the plan about each at its type byte, and drops
// or keeps its bytes, with pgkeel's own answers inserted in place.
class ResponseFilter {
 public:
  enum class Result { kUnchanged, kChanged, kMalformed };
  // kUnchanged: the chunk goes to the client as it is (`out` untouched). kChanged: send `out`
  // (appended) instead. kMalformed: a length field below 4; the stream cannot be followed.
  Result filter(const unsigned char* chunk, std::size_t n, ResponsePlan& plan, std::string& out);
  // Between messages (nothing of a message still to come).
  bool at_boundary() const { return header_have_ == 0 && remaining_ == 0; }

 private:
  std::uint32_t remaining_ = 0;  // body bytes of the current message still to come
  unsigned char header_[5] = {};
  std::uint8_t header_have_ = 0;
  bool forward_ = true;          // the current message's verdict
  std::string after_;            // inserted once the current message ends
};

}  // namespace pgkeel::proxy
