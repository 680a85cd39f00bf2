#include "lib/smtp/address.h"

#include <arpa/inet.h>

#include <cstring>

namespace smtpd::smtp {
namespace {

constexpr size_t kMaxLocalPart = 64;   // RFC 5321 4.5.3.1.1
constexpr size_t kMaxDomain = 255;     // RFC 5321 4.5.3.1.2
constexpr size_t kMaxPath = 256;       // RFC 5321 4.5.3.1.3

bool is_alpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
bool is_digit(char c) { return c >= '0' && c <= '9'; }
bool is_let_dig(char c) { return is_alpha(c) || is_digit(c); }
bool is_non_ascii(char c) { return static_cast<unsigned char>(c) >= 0x80; }

// RFC 5322 atext.
bool is_atext(char c) {
  return is_let_dig(c) || (c != 0 && std::strchr("!#$%&'*+-/=?^_`{|}~", c) != nullptr);
}

// A cursor over the input that records the first error seen.
class Cursor {
 public:
  Cursor(std::string_view s, bool allow_utf8) : s_(s), allow_utf8_(allow_utf8) {}

  bool at_end() const { return pos_ >= s_.size(); }
  char peek() const { return at_end() ? '\0' : s_[pos_]; }
  size_t pos() const { return pos_; }
  bool utf8_seen() const { return utf8_seen_; }
  PathError error() const { return error_; }
  std::string_view slice(size_t from) const { return s_.substr(from, pos_ - from); }

  bool take(char c) {
    if (peek() != c || at_end()) return false;
    ++pos_;
    return true;
  }
  bool fail(PathError e = PathError::kSyntax) {
    if (error_ == PathError::kNone) error_ = e;
    return false;
  }
  // Consumes one UTF-8 non-ASCII character (RFC 6531 UTF8-non-ascii).
  bool take_utf8() {
    if (!is_non_ascii(peek())) return false;
    const size_t n = utf8_sequence_length(s_, pos_);
    if (n == 0) return fail();
    if (!allow_utf8_) return fail(PathError::kUtf8NotPermitted);
    utf8_seen_ = true;
    pos_ += n;
    return true;
  }
  void advance() { ++pos_; }

 private:
  std::string_view s_;
  bool allow_utf8_;
  size_t pos_ = 0;
  bool utf8_seen_ = false;
  PathError error_ = PathError::kNone;
};

// sub-domain = Let-dig [Ldh-str] (RFC 5321), or a U-label (RFC 6531).
bool parse_sub_domain(Cursor& c) {
  const size_t start = c.pos();
  char last = '\0';
  while (!c.at_end()) {
    const char ch = c.peek();
    if (is_let_dig(ch) || ch == '-') {
      if (ch == '-' && c.pos() == start) return c.fail();
      last = ch;
      c.advance();
    } else if (is_non_ascii(ch)) {
      if (!c.take_utf8()) return false;
      last = 'a';
    } else {
      break;
    }
  }
  if (c.pos() == start || last == '-') return c.fail();
  return true;
}

bool parse_domain(Cursor& c) {
  if (!parse_sub_domain(c)) return false;
  while (c.take('.')) {
    if (!parse_sub_domain(c)) return false;
  }
  return true;
}

// address-literal = "[" ( IPv4 / IPv6 / General-address-literal ) "]"
bool parse_address_literal(Cursor& c) {
  if (!c.take('[')) return c.fail();
  const size_t start = c.pos();
  while (!c.at_end() && c.peek() != ']') {
    const char ch = c.peek();
    // dcontent = %d33-90 / %d94-126
    if (ch < 33 || ch > 126 || ch == '[' || ch == '\\') return c.fail();
    c.advance();
  }
  const std::string inner(c.slice(start));
  if (!c.take(']')) return c.fail();
  unsigned char buf[16];
  if (inet_pton(AF_INET, inner.c_str(), buf) == 1) return true;
  const size_t colon = inner.find(':');
  if (colon == std::string::npos || colon == 0) return c.fail();
  const std::string tag = inner.substr(0, colon);
  if (tag == "IPv6" || tag == "ipv6" || tag == "IPV6") {
    return inet_pton(AF_INET6, inner.substr(colon + 1).c_str(), buf) == 1 || c.fail();
  }
  // General-address-literal: Standardized-tag ":" 1*dcontent.
  for (char ch : tag) {
    if (!is_let_dig(ch) && ch != '-') return c.fail();
  }
  return colon + 1 < inner.size() || c.fail();
}

// Local-part = Dot-string / Quoted-string
bool parse_local_part(Cursor& c) {
  if (c.take('"')) {
    while (!c.at_end() && c.peek() != '"') {
      const char ch = c.peek();
      if (ch == '\\') {
        c.advance();
        const char q = c.peek();
        if (c.at_end() || q < 32 || q > 126) return c.fail();  // quoted-pairSMTP
        c.advance();
      } else if (ch >= 32 && ch <= 126) {
        c.advance();  // qtextSMTP: %d32-33 / %d35-91 / %d93-126
      } else if (!c.take_utf8()) {
        return c.fail();
      }
    }
    return c.take('"') || c.fail();
  }
  bool need_atom = true;
  while (!c.at_end()) {
    const char ch = c.peek();
    if (is_atext(ch)) {
      c.advance();
      need_atom = false;
    } else if (is_non_ascii(ch)) {
      if (!c.take_utf8()) return false;
      need_atom = false;
    } else if (ch == '.' && !need_atom) {
      c.advance();
      need_atom = true;
    } else {
      break;
    }
  }
  return !need_atom || c.fail();
}

// Parses "local@domain" at the cursor into box.
bool parse_mailbox_at(Cursor& c, Mailbox& box, bool allow_bare_postmaster, bool& bare) {
  const size_t local_start = c.pos();
  if (!parse_local_part(c)) return false;
  box.local = std::string(c.slice(local_start));
  if (box.local.size() > kMaxLocalPart) return c.fail(PathError::kTooLong);
  if (allow_bare_postmaster && c.peek() != '@') {
    if (box.local.size() == 10 && strncasecmp(box.local.c_str(), "postmaster", 10) == 0) {
      bare = true;
      return true;
    }
  }
  if (!c.take('@')) return c.fail();
  const size_t domain_start = c.pos();
  if (c.peek() == '[') {
    if (!parse_address_literal(c)) return false;
    box.domain_is_literal = true;
  } else if (!parse_domain(c)) {
    return false;
  }
  box.domain = std::string(c.slice(domain_start));
  if (box.domain.size() > kMaxDomain) return c.fail(PathError::kTooLong);
  return true;
}

}  // namespace

std::string Mailbox::str() const {
  if (domain.empty()) return local;
  return local + "@" + domain;
}

std::string Mailbox::domain_lower() const {
  std::string d = domain;
  for (char& ch : d) {
    if (ch >= 'A' && ch <= 'Z') ch = static_cast<char>(ch - 'A' + 'a');
  }
  return d;
}

std::string Path::str() const { return null ? std::string() : mailbox.str(); }

size_t utf8_sequence_length(std::string_view s, size_t i) {
  const auto at = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char b0 = at(i);
  size_t n;
  unsigned char lo = 0x80, hi = 0xBF;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    n = 2;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    n = 3;
    if (b0 == 0xE0) lo = 0xA0;        // no overlong forms
    if (b0 == 0xED) hi = 0x9F;        // no surrogates
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    n = 4;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;        // not above U+10FFFF
  } else {
    return 0;
  }
  if (i + n > s.size()) return 0;
  if (at(i + 1) < lo || at(i + 1) > hi) return 0;
  for (size_t k = 2; k < n; ++k) {
    if (at(i + k) < 0x80 || at(i + k) > 0xBF) return 0;
  }
  return n;
}

bool is_xtext(std::string_view s) {
  for (size_t i = 0; i < s.size(); ++i) {
    const char ch = s[i];
    if (ch == '+') {
      if (i + 2 >= s.size()) return false;  // needs two hex digits after '+'
      for (size_t k = 1; k <= 2; ++k) {
        const char h = s[i + k];
        if (!is_digit(h) && !(h >= 'A' && h <= 'F')) return false;
      }
      i += 2;
    } else if (ch < '!' || ch > '~' || ch == '=') {
      return false;
    }
  }
  return true;
}

PathParse parse_path(std::string_view input, const PathOptions& options) {
  PathParse result;
  Cursor c(input, options.allow_utf8);
  if (!c.take('<')) {
    result.error = PathError::kSyntax;
    return result;
  }
  if (c.peek() == '>' && !c.at_end()) {
    c.advance();
    result.error = options.allow_null ? PathError::kNone : PathError::kSyntax;
    result.path.null = true;
    result.consumed = c.pos();
    return result;
  }
  // A-d-l = At-domain *( "," At-domain ) ":"  -- accepted and ignored.
  if (c.peek() == '@') {
    do {
      if (!c.take('@') || !parse_domain(c)) {
        result.error = c.error() == PathError::kNone ? PathError::kSyntax : c.error();
        return result;
      }
    } while (c.take(','));
    if (!c.take(':')) {
      result.error = PathError::kSyntax;
      return result;
    }
  }
  bool bare = false;
  if (!parse_mailbox_at(c, result.path.mailbox, options.allow_postmaster, bare) || !c.take('>')) {
    result.error = c.error() == PathError::kNone ? PathError::kSyntax : c.error();
    return result;
  }
  result.path.postmaster = bare;
  result.path.utf8 = c.utf8_seen();
  result.consumed = c.pos();
  if (result.path.mailbox.str().size() + 2 > kMaxPath) result.error = PathError::kTooLong;
  return result;
}

PathParse parse_mailbox(std::string_view input, bool allow_utf8) {
  PathParse result;
  Cursor c(input, allow_utf8);
  bool bare = false;
  if (!parse_mailbox_at(c, result.path.mailbox, false, bare) || !c.at_end()) {
    result.error = c.error() == PathError::kNone ? PathError::kSyntax : c.error();
    return result;
  }
  result.path.utf8 = c.utf8_seen();
  result.consumed = c.pos();
  if (result.path.mailbox.str().size() + 2 > kMaxPath) result.error = PathError::kTooLong;
  return result;
}

}  // namespace smtpd::smtp
