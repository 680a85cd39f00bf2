#include "lib/smtp/reply_parser.h"

namespace smtpd::smtp {
namespace {
constexpr size_t kMaxLine = 4096;   // RFC 5321 4.5.3.1.5 says 512; be generous
constexpr size_t kMaxLines = 200;

bool digits(std::string_view s) {
  if (s.empty() || s.size() > 3) return false;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
  }
  return true;
}
}  // namespace

void split_enhanced(int code, std::string& text, std::string& enhanced) {
  // class "." subject "." detail: 1 digit, 1-3 digits, 1-3 digits.
  const size_t sp = text.find(' ');
  const std::string_view first = std::string_view(text).substr(0, sp);
  const size_t d1 = first.find('.');
  const size_t d2 = d1 == std::string_view::npos ? d1 : first.find('.', d1 + 1);
  if (d2 == std::string_view::npos || d1 != 1) return;
  if (!digits(first.substr(0, 1)) || !digits(first.substr(2, d2 - 2)) || !digits(first.substr(d2 + 1))) return;
  if (first[0] - '0' != code / 100) return;
  enhanced = std::string(first);
  text = sp == std::string::npos ? std::string() : text.substr(sp + 1);
}

ReplyParser::Status ReplyParser::next(Reply& out) {
  Reply r;
  size_t p = pos_;
  while (true) {
    const size_t lf = buffer_.find('\n', p);
    if (lf == std::string::npos) {
      if (buffer_.size() - p > kMaxLine) {
        error_ = "reply line too long";
        return Status::kError;
      }
      if (pos_ > 0 && pos_ > buffer_.size() / 2) {
        buffer_.erase(0, pos_);
        pos_ = 0;
      }
      return Status::kNeedMore;
    }
    std::string_view line(buffer_.data() + p, lf - p);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);  // lenient with bare LF
    if (line.size() > kMaxLine || r.lines.size() >= kMaxLines) {
      error_ = "reply too long";
      return Status::kError;
    }
    if (line.size() < 3 || !digits(line.substr(0, 3)) || line[0] < '2' || line[0] > '5' ||
        (line.size() > 3 && line[3] != ' ' && line[3] != '-')) {
      error_ = "malformed reply line: " + std::string(line.substr(0, 80));
      return Status::kError;
    }
    const int code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
    if (!r.lines.empty() && code != r.code) {
      error_ = "reply lines with different codes";
      return Status::kError;
    }
    r.code = code;
    std::string text(line.size() > 4 ? line.substr(4) : std::string_view());
    const bool more = line.size() > 3 && line[3] == '-';
    p = lf + 1;
    r.lines.push_back(std::move(text));
    if (!more) break;
  }
  pos_ = p;
  // The enhanced code of the first line stands for the reply.
  std::string enhanced;
  split_enhanced(r.code, r.lines.front(), enhanced);
  if (!enhanced.empty()) {
    for (size_t i = 1; i < r.lines.size(); ++i) {
      std::string ignored;
      split_enhanced(r.code, r.lines[i], ignored);
    }
  }
  r.enhanced = enhanced;
  out = std::move(r);
  return Status::kReply;
}

}  // namespace smtpd::smtp
