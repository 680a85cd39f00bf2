#include "lib/smtp/data_decoder.h"

namespace smtpd::smtp {
namespace {
constexpr size_t kMaxTextLine = 998;  // RFC 5321 4.5.3.1.6, without CRLF
}

void ContentChecker::scan(std::string_view bytes) {
  for (char ch : bytes) {
    if (after_cr_) {
      after_cr_ = false;
      if (ch == '\n') {
        line_length_ = 0;
        continue;
      }
      flags_.bare_cr_or_lf = true;
    }
    if (ch == '\r') {
      after_cr_ = true;
    } else if (ch == '\n') {
      flags_.bare_cr_or_lf = true;
    } else {
      if (ch == '\0') flags_.nul = true;
      if (++line_length_ > kMaxTextLine) flags_.long_line = true;
    }
  }
}

void ContentChecker::finish() {
  if (after_cr_) flags_.bare_cr_or_lf = true;
  after_cr_ = false;
}

DataDecoder::Result DataDecoder::feed(std::string_view input, std::string& out) {
  Result r;
  size_t i = 0;
  // Runs of ordinary octets are appended in one go.
  size_t run_start = 0;
  auto flush_run = [&](size_t end) {
    if (end > run_start) out.append(input.data() + run_start, end - run_start);
  };
  for (; i < input.size(); ++i) {
    const char ch = input[i];
    switch (state_) {
      case State::kLineStart:
        if (ch == '.') {
          flush_run(i);
          run_start = i + 1;  // the dot is held back
          state_ = State::kDot;
          continue;
        }
        [[fallthrough]];
      case State::kInLine:
        if (ch == '\r') {
          state_ = State::kCr;
        } else if (ch == '\n') {
          flush_run(i);
          r.status = Status::kBareNewline;
          r.consumed = i + 1;
          return r;
        } else {
          if (ch == '\0') nul_ = true;
          if (++line_length_ > kMaxTextLine) long_line_ = true;
          state_ = State::kInLine;
        }
        break;
      case State::kCr:
        if (ch != '\n') {
          flush_run(i);
          r.status = Status::kBareNewline;
          r.consumed = i + 1;
          return r;
        }
        line_length_ = 0;
        state_ = State::kLineStart;
        break;
      case State::kDot:
        if (ch == '\r') {
          state_ = State::kDotCr;
          run_start = i + 1;
          continue;
        }
        // A stuffed line: the leading dot is removed (RFC 5321 4.5.2).
        run_start = i;
        state_ = State::kInLine;
        --i;  // reprocess this octet as line content
        continue;
      case State::kDotCr:
        if (ch == '\n') {
          r.status = Status::kEnd;
          r.consumed = i + 1;
          return r;
        }
        // "." CR followed by something else: CR is bare.
        r.status = Status::kBareNewline;
        r.consumed = i + 1;
        return r;
    }
  }
  // Octets of a pending "." or ".\r" are not yet output; they are not part of
  // the run (run_start was moved past them).
  if (state_ != State::kDot && state_ != State::kDotCr) flush_run(i);
  r.consumed = i;
  return r;
}

}  // namespace smtpd::smtp
