// SMTP replies as values: a three-digit code, an RFC 3463 enhanced status
// code and human text. Rendering produces the wire form (multi-line replies
// use "code-" continuation lines, RFC 5321 4.2.1).
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace smtpd::smtp {

struct Reply {
  int code = 0;
  // "2.0.0" and the like; empty for replies that RFC 2034 section 4 exempts
  // from enhanced codes (the greeting and the EHLO/HELO response).
  std::string enhanced;
  // One entry per line; at least one.
  std::vector<std::string> lines;

  Reply() = default;
  Reply(int c, std::string_view enh, std::string_view text)
      : code(c), enhanced(enh), lines{std::string(text)} {}

  bool positive() const { return code >= 200 && code < 400; }
  bool transient() const { return code >= 400 && code < 500; }
  bool permanent() const { return code >= 500; }
  // The first line's text with the enhanced code, for logs.
  std::string summary() const;
  // Appends the CRLF-terminated wire form to out.
  void render(std::string& out) const;
};

}  // namespace smtpd::smtp
