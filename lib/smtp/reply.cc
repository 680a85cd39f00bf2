#include "lib/smtp/reply.h"

namespace smtpd::smtp {

std::string Reply::summary() const {
  std::string s = std::to_string(code);
  if (!enhanced.empty()) s += " " + enhanced;
  if (!lines.empty()) s += " " + lines.front();
  return s;
}

void Reply::render(std::string& out) const {
  const std::string code_str = std::to_string(code);
  for (size_t i = 0; i < lines.size(); ++i) {
    out += code_str;
    out += (i + 1 < lines.size()) ? '-' : ' ';
    if (!enhanced.empty()) {
      out += enhanced;
      out += ' ';
    }
    out += lines[i];
    out += "\r\n";
  }
  if (lines.empty()) {
    out += code_str;
    out += "\r\n";
  }
}

}  // namespace smtpd::smtp
