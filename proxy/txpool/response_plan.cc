#include "proxy/txpool/response_plan.h"

#include <algorithm>
#include <cstring>

#include "proxy/protocol/message.h"

namespace pgkeel::proxy {
namespace {

namespace be = protocol::be;
constexpr char kParseComplete = '1';
constexpr char kBindComplete = '2';
constexpr char kCloseComplete = '3';
constexpr char kParameterDescription = 't';
constexpr char kRowDescription = 'T';
constexpr char kNoData = 'n';
constexpr char kEmptyQuery = 'I';
constexpr char kPortalSuspended = 's';
constexpr char kCopyData = 'd';
constexpr char kCopyDone = 'c';

// A message with an empty body: type and length 4.
void append_empty(std::string& out, char type) {
  out += type;
  out.append("\0\0\0\4", 4);
}

}  // namespace

void ResponsePlan::add(Request r, Origin o, std::string statement) {
  if (skipping_) {
    // After an error the server ignores everything up to the next Sync, so would PostgreSQL.
    if (r != Request::kSync) {
      if (!statement.empty()) dropped_.push_back(std::move(statement));
      return;
    }
    skipping_ = false;
  }
  q_.push_back({r, o, false, std::move(statement)});
}

void ResponsePlan::ignore_syncs(int n) {
  for (auto it = q_.end(); n > 0 && it != q_.begin();) {
    --it;
    if (it->request == Request::kSync && it->origin == Origin::kClient) {
      it = q_.erase(it);
      --n;
    }
  }
}

void ResponsePlan::drop(Entry& e) {
  if (e.request == Request::kParse && !e.statement.empty()) dropped_.push_back(std::move(e.statement));
}

void ResponsePlan::answer_front(std::string& out) {
  while (!q_.empty() && q_.front().origin == Origin::kAnswered) {
    append_empty(out, q_.front().request == Request::kParse ? kParseComplete : kCloseComplete);
    q_.pop_front();
  }
}

std::string ResponsePlan::take_due() {
  std::string out;
  answer_front(out);
  return out;
}

// The front request failed: the server answers nothing more until the next Sync.
void ResponsePlan::error_skip() {
  const bool extended = q_.front().request != Request::kQuery && q_.front().request != Request::kFunctionCall;
  if (!extended) return;  // a Query ends at its ReadyForQuery; the caller keeps the entry
  drop(q_.front());
  q_.pop_front();
  while (!q_.empty() && q_.front().request != Request::kSync) {
    drop(q_.front());
    q_.pop_front();
  }
  if (q_.empty()) skipping_ = true;
}

ResponsePlan::Verdict ResponsePlan::on_server_message(char type) {
  Verdict v;
  if (type == be::kNoticeResponse || type == be::kParameterStatus || type == be::kNotificationResponse) {
    return v;  // may come at any time; the client gets them
  }
  answer_front(v.before);
  if (q_.empty() || lost_) {
    lost_ = lost_ || type != be::kErrorResponse;  // a FATAL at the end is expected; anything else is not
    return v;
  }
  Entry& e = q_.front();
  v.forward = e.origin == Origin::kClient;
  if (type == be::kErrorResponse) {
    if (e.origin == Origin::kInjected) injected_failed_ = true;
    v.forward = true;  // the client's next requests fail because of it: it must see why
    if (e.request == Request::kQuery || e.request == Request::kFunctionCall) return v;  // 'Z' ends it
    error_skip();
    answer_front(v.after);
    return v;
  }
  bool expected = true;
  switch (e.request) {
    case Request::kParse:
      expected = type == kParseComplete;
      if (expected) q_.pop_front();
      break;
    case Request::kBind:
      expected = type == kBindComplete;
      if (expected) q_.pop_front();
      break;
    case Request::kClose:
      expected = type == kCloseComplete;
      if (expected) q_.pop_front();
      break;
    case Request::kDescribeStatement:
      if (!e.described) {
        expected = type == kParameterDescription;
        e.described = expected;
      } else {
        expected = type == kRowDescription || type == kNoData;
        if (expected) q_.pop_front();
      }
      break;
    case Request::kDescribePortal:
      expected = type == kRowDescription || type == kNoData;
      if (expected) q_.pop_front();
      break;
    case Request::kExecute:
      if (type == be::kCommandComplete || type == kEmptyQuery || type == kPortalSuspended) {
        q_.pop_front();
      } else {
        expected = type == be::kDataRow || type == be::kCopyInResponse || type == be::kCopyOutResponse ||
                   type == be::kCopyBothResponse || type == kCopyData || type == kCopyDone;
      }
      break;
    case Request::kSync:
      expected = type == be::kReadyForQuery;
      if (expected) q_.pop_front();
      break;
    case Request::kQuery:
    case Request::kFunctionCall:
      if (type == be::kReadyForQuery) q_.pop_front();
      break;
  }
  if (!expected) {
    lost_ = true;
    v.forward = true;
  }
  answer_front(v.after);
  return v;
}

ResponseFilter::Result ResponseFilter::filter(const unsigned char* chunk, std::size_t n, ResponsePlan& plan,
                                              std::string& out) {
  // Until the first change, the chunk goes as it is and nothing is copied: this runs on every
  // read of a transaction-pooled server connection, and almost every chunk goes unchanged. At
  // the first change, what was kept so far (all of the chunk before it) is copied to `out`, and
  // from there on kept bytes and pgkeel's own answers are appended as they come.
  bool changed = false;
  auto change_at = [&](std::size_t at) {
    if (changed) return;
    changed = true;
    out.append(reinterpret_cast<const char*>(chunk), at);
  };
  auto insert = [&](std::size_t at, std::string&& bytes) {
    if (bytes.empty()) return;
    change_at(at);
    out += bytes;
  };
  auto take = [&](std::size_t off, std::size_t len) {
    if (len == 0) return;
    if (!forward_) {
      change_at(off);
    } else if (changed) {
      out.append(reinterpret_cast<const char*>(chunk + off), len);
    }
  };
  std::size_t pos = 0;
  while (pos < n) {
    if (remaining_ > 0) {
      const std::size_t len = std::min<std::size_t>(remaining_, n - pos);
      take(pos, len);
      pos += len;
      remaining_ -= static_cast<std::uint32_t>(len);
      if (remaining_ == 0) insert(pos, std::exchange(after_, {}));
      continue;
    }
    if (header_have_ == 0) {
      ResponsePlan::Verdict v = plan.on_server_message(static_cast<char>(chunk[pos]));
      insert(pos, std::move(v.before));
      forward_ = v.forward;
      after_ = std::move(v.after);
    }
    const std::size_t len = std::min<std::size_t>(5 - header_have_, n - pos);
    std::memcpy(header_ + header_have_, chunk + pos, len);
    take(pos, len);
    pos += len;
    header_have_ = static_cast<std::uint8_t>(header_have_ + len);
    if (header_have_ < 5) break;
    header_have_ = 0;
    const std::uint32_t length = protocol::read_u32(header_ + 1);
    if (length < 4) return Result::kMalformed;
    remaining_ = length - 4;
    if (remaining_ == 0) insert(pos, std::exchange(after_, {}));
  }
  return changed ? Result::kChanged : Result::kUnchanged;
}

}  // namespace pgkeel::proxy
