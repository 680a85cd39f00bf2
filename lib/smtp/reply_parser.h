// Incremental parser of SMTP server replies (RFC 5321 4.2): single and
// multi-line, with the RFC 3463 enhanced code split off when present. Used
// by the SMTP/LMTP client; bounded in line length and line count so that a
// hostile server cannot make it grow without limit.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include "lib/smtp/reply.h"

namespace smtpd::smtp {

class ReplyParser {
 public:
  enum class Status { kNeedMore, kReply, kError };

  void feed(std::string_view bytes) { buffer_.append(bytes); }
  // Takes the next complete reply out of the buffer. kError: the server
  // does not speak SMTP (bad code, mixed codes, line or reply too long);
  // the connection must be dropped.
  Status next(Reply& out);
  // Drops everything buffered (after STARTTLS: bytes a server pipelined
  // before the handshake must not be read as replies).
  void discard() {
    buffer_.clear();
    pos_ = 0;
  }
  bool empty() const { return pos_ >= buffer_.size(); }
  const std::string& error() const { return error_; }

 private:
  std::string buffer_;
  size_t pos_ = 0;
  std::string error_;
};

// Splits "X.Y.Z text" into enhanced code and text when the text starts
// with a well-formed RFC 3463 code whose class matches the reply's.
void split_enhanced(int code, std::string& text, std::string& enhanced);

}  // namespace smtpd::smtp
