// Incremental decoding of DATA content (RFC 5321 4.1.1.4, 4.5.2): removes
// dot-stuffing, recognises only CRLF "." CRLF as the end of data, and reports
// bare CR or bare LF at once, because accepting them is what makes SMTP
// smuggling possible (RFC 5321 2.3.8). Also checks the content rules that
// apply to BDAT chunks (RFC 3030) when BINARYMIME is not offered.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace smtpd::smtp {

// Line and octet rules that every message body must meet here, whatever
// command carried it.
struct ContentFlags {
  bool bare_cr_or_lf = false;
  bool nul = false;
  bool long_line = false;  // a line over 998 octets plus CRLF (RFC 5321 4.5.3.1.6)
  bool any() const { return bare_cr_or_lf || nul || long_line; }
};

// Scans message octets for ContentFlags, across calls.
class ContentChecker {
 public:
  void scan(std::string_view bytes);
  // Call at the end of the message: a trailing lone CR is bare.
  void finish();
  const ContentFlags& flags() const { return flags_; }

 private:
  ContentFlags flags_;
  bool after_cr_ = false;
  size_t line_length_ = 0;
};

class DataDecoder {
 public:
  enum class Status {
    kMore,        // all input consumed, end not yet seen
    kEnd,         // CRLF.CRLF seen; `consumed` stops right after it
    kBareNewline, // bare CR or LF: the session must end (RFC 5321 2.3.8)
  };
  struct Result {
    Status status = Status::kMore;
    size_t consumed = 0;
  };

  // Decodes input, appending message octets (CRLF line ends, unstuffed) to
  // out. The final CRLF before the dot belongs to the message.
  Result feed(std::string_view input, std::string& out);

  bool nul_seen() const { return nul_; }
  bool long_line_seen() const { return long_line_; }
  void reset() { *this = DataDecoder(); }

 private:
  enum class State { kLineStart, kInLine, kCr, kDot, kDotCr };
  State state_ = State::kLineStart;
  size_t line_length_ = 0;
  bool nul_ = false;
  bool long_line_ = false;
};

}  // namespace smtpd::smtp
