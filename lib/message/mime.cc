#include "lib/message/mime.h"

#include <openssl/rand.h>

#include <strings.h>

#include <algorithm>

#include "absl/strings/escaping.h"
#include "lib/message/received.h"
#include "lib/smtp/address.h"

namespace smtpd::message {
namespace {

constexpr size_t kMaxLine = 78;  // RFC 5322 2.1.1 SHOULD

std::string random_hex(size_t bytes) {
  unsigned char buf[32];
  RAND_bytes(buf, static_cast<int>(std::min<size_t>(bytes, sizeof buf)));
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (size_t i = 0; i < bytes && i < sizeof buf; ++i) {
    out += kHex[buf[i] >> 4];
    out += kHex[buf[i] & 15];
  }
  return out;
}

bool is_ascii(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return static_cast<unsigned char>(c) < 0x80; });
}

// No line breaks or other controls in a header value (tab is fine).
bool has_controls(std::string_view s) {
  return std::any_of(s.begin(), s.end(), [](char c) {
    const unsigned char u = static_cast<unsigned char>(c);
    return (u < 0x20 && u != '\t') || u == 0x7f;
  });
}

bool valid_utf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    const size_t n = smtp::utf8_sequence_length(s, i);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

absl::Status bad(const std::string& field, const std::string& problem) {
  return absl::InvalidArgumentError(field + ": " + problem);
}

// RFC 5322 3.2.3 atext.
bool is_atext(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
         std::string_view("!#$%&'*+-/=?^_`{|}~").find(c) != std::string_view::npos;
}

// A display name as a phrase: atoms, a quoted string, or encoded words.
std::string phrase(std::string_view name, size_t used) {
  if (!is_ascii(name)) return encode_words(name, used);
  bool atoms = !name.empty() && name.front() != ' ' && name.back() != ' ' && name.find("  ") == std::string_view::npos;
  for (char c : name) atoms = atoms && (is_atext(c) || c == ' ');
  if (atoms) return std::string(name);
  std::string q = "\"";
  for (char c : name) {
    if (c == '"' || c == '\\') q += '\\';
    q += c;
  }
  return q + "\"";
}

// Header "Name: value" folded at white space near 78 octets (ASCII).
std::string fold_ascii(const std::string& name, std::string_view value) {
  std::string out = name + ": ";
  size_t line = out.size();
  size_t i = 0;
  while (i < value.size()) {
    // The next word with the white space before it.
    size_t j = i;
    while (j < value.size() && (value[j] == ' ' || value[j] == '\t')) ++j;
    while (j < value.size() && value[j] != ' ' && value[j] != '\t') ++j;
    const std::string_view word = value.substr(i, j - i);
    if (line + word.size() > kMaxLine && line > name.size() + 2 && (word.front() == ' ' || word.front() == '\t')) {
      out += "\r\n";  // fold before the white space (RFC 5322 2.2.3)
      line = 0;
    }
    out += word;
    line += word.size();
    i = j;
  }
  return out + "\r\n";
}

// An unstructured header field (Subject, extra fields).
std::string unstructured(const std::string& name, std::string_view value) {
  if (is_ascii(value)) {
    bool long_word = false;
    size_t run = 0;
    for (char c : value) {
      run = (c == ' ' || c == '\t') ? 0 : run + 1;
      long_word = long_word || run > 900;
    }
    if (!long_word) return fold_ascii(name, value);
  }
  return name + ": " + encode_words(value, name.size() + 2) + "\r\n";
}

absl::Status check_mailbox(const Mailbox& m, const std::string& field, bool& utf8) {
  const smtp::PathParse p = smtp::parse_mailbox(m.address, true);
  if (m.address.empty()) return bad(field + ".address", "missing");
  if (p.error != smtp::PathError::kNone || p.path.postmaster) {
    return bad(field + ".address", "'" + m.address + "' is not a valid address (RFC 5321 4.1.2)");
  }
  if (p.path.utf8) utf8 = true;
  if (has_controls(m.name) || !valid_utf8(m.name)) return bad(field + ".name", "must be one line of UTF-8 text");
  return absl::OkStatus();
}

// "To: a <x@y>, b <z@w>" folded between addresses.
std::string address_field(const std::string& name, const std::vector<Mailbox>& list) {
  std::string out = name + ":";
  size_t line = out.size();
  for (size_t i = 0; i < list.size(); ++i) {
    std::string item = list[i].name.empty() ? list[i].address
                                            : phrase(list[i].name, 0) + " <" + list[i].address + ">";
    if (i + 1 < list.size()) item += ",";
    if (line + 1 + item.size() > kMaxLine && i > 0) {
      out += "\r\n";
      line = 0;
    }
    out += " " + item;
    const size_t nl = item.rfind('\n');  // encoded words may have folded
    line = nl == std::string::npos ? line + 1 + item.size() : item.size() - nl - 1;
  }
  return out + "\r\n";
}

// Text with CRLF line ends (bare LF or CR become CRLF), ending in CRLF.
std::string crlf_text(std::string_view text) {
  std::string out;
  out.reserve(text.size() + text.size() / 32 + 2);
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (c == '\r') {
      out += "\r\n";
      if (i + 1 < text.size() && text[i + 1] == '\n') ++i;
    } else if (c == '\n') {
      out += "\r\n";
    } else {
      out += c;
    }
  }
  if (out.size() < 2 || out.compare(out.size() - 2, 2, "\r\n") != 0) out += "\r\n";
  return out;
}

// 7bit when every line is short ASCII without controls (RFC 2045 2.7).
bool sevenbit_ok(std::string_view crlf) {
  size_t line = 0;
  for (size_t i = 0; i < crlf.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(crlf[i]);
    if (c == '\r' && i + 1 < crlf.size() && crlf[i + 1] == '\n') {
      line = 0;
      ++i;
      continue;
    }
    if (c >= 0x80 || c == 0 || c == '\r' || c == '\n' || ++line > 998) return false;
  }
  return true;
}

struct Part {
  std::string headers;  // Content-* fields, each ending CRLF
  std::string body;     // ends with CRLF
};

Part text_part(std::string_view text, const char* subtype) {
  Part p;
  std::string crlf = crlf_text(text);
  p.headers = std::string("Content-Type: text/") + subtype + "; charset=utf-8\r\n";
  if (sevenbit_ok(crlf)) {
    p.headers += "Content-Transfer-Encoding: 7bit\r\n";
    p.body = std::move(crlf);
  } else {
    p.headers += "Content-Transfer-Encoding: quoted-printable\r\n";
    p.body = quoted_printable(crlf);
  }
  return p;
}

// RFC 2045 5.1 token.
bool is_token(std::string_view s) {
  if (s.empty() || s.size() > 127) return false;
  for (char c : s) {
    const unsigned char u = static_cast<unsigned char>(c);
    if (u <= 0x20 || u >= 0x7f || std::string_view("()<>@,;:\\\"/[]?=").find(c) != std::string_view::npos) return false;
  }
  return true;
}

// A MIME parameter: quoted string for ASCII, RFC 2231 for UTF-8.
std::string parameter(const std::string& attribute, std::string_view value) {
  if (is_ascii(value) && value.size() <= 60) {
    std::string q = attribute + "=\"";
    for (char c : value) {
      if (c == '"' || c == '\\') q += '\\';
      q += c;
    }
    return q + "\"";
  }
  std::string v = attribute + "*=UTF-8''";
  static constexpr char kHex[] = "0123456789ABCDEF";
  for (char c : value) {
    const unsigned char u = static_cast<unsigned char>(c);
    // RFC 2231 7: attribute-char is a token char except * ' %.
    if (u < 0x80 && is_token(std::string_view(&c, 1)) && c != '*' && c != '\'' && c != '%') {
      v += c;
    } else {
      v += '%';
      v += kHex[u >> 4];
      v += kHex[u & 15];
    }
  }
  return v;
}

absl::StatusOr<Part> attachment_part(const Attachment& a, const std::string& field) {
  std::string type = a.content_type.empty() ? "application/octet-stream" : a.content_type;
  std::transform(type.begin(), type.end(), type.begin(), [](char c) { return static_cast<char>(std::tolower(c)); });
  const size_t slash = type.find('/');
  if (slash == std::string::npos || !is_token(type.substr(0, slash)) || !is_token(type.substr(slash + 1))) {
    return bad(field + ".content_type", "'" + a.content_type + "' is not type/subtype");
  }
  if (type.rfind("multipart/", 0) == 0 || type.rfind("message/", 0) == 0) {
    return bad(field + ".content_type", "composite types cannot be sent as base64 (RFC 2045 6.4)");
  }
  if (has_controls(a.filename) || !valid_utf8(a.filename)) {
    return bad(field + ".filename", "must be one line of UTF-8 text");
  }
  Part p;
  p.headers = "Content-Type: " + type;
  if (!a.filename.empty()) p.headers += ";\r\n " + parameter("name", a.filename);
  p.headers += "\r\nContent-Transfer-Encoding: base64\r\n";
  if (!a.content_id.empty()) {
    std::string_view id = a.content_id;
    if (id.size() >= 2 && id.front() == '<' && id.back() == '>') id = id.substr(1, id.size() - 2);
    const bool ok = id.find('@') != std::string_view::npos &&
                    std::all_of(id.begin(), id.end(), [](char c) { return c == '@' || c == '.' || is_atext(c); });
    if (!ok) return bad(field + ".content_id", "'" + a.content_id + "' is not id-left@id-right (RFC 5322 3.6.4)");
    p.headers += "Content-ID: <" + std::string(id) + ">\r\nContent-Disposition: inline";
  } else {
    p.headers += "Content-Disposition: attachment";
  }
  if (!a.filename.empty()) p.headers += ";\r\n " + parameter("filename", a.filename);
  p.headers += "\r\n";
  p.body = base64_lines(a.content);
  return p;
}

std::string new_boundary() { return "=_smtpd_" + random_hex(12); }

Part multipart(const char* subtype, const std::vector<Part>& parts) {
  std::string boundary;
  bool clash;
  do {  // 7bit text could, in theory, contain the boundary
    boundary = new_boundary();
    clash = false;
    for (const Part& p : parts) clash = clash || p.body.find(boundary) != std::string::npos;
  } while (clash);
  Part out;
  out.headers = std::string("Content-Type: multipart/") + subtype + ";\r\n boundary=\"" + boundary + "\"\r\n";
  for (const Part& p : parts) {
    // RFC 2046 5.1.1: the CRLF before "--boundary" belongs to the
    // delimiter, so a body's own last line break is kept by adding one.
    out.body += "--" + boundary + "\r\n" + p.headers + "\r\n" + p.body + "\r\n";
  }
  out.body += "--" + boundary + "--\r\n";
  return out;
}

const char* const kReservedFields[] = {"from", "to", "cc", "bcc", "reply-to", "subject", "date", "message-id",
                                       "mime-version", "received", "return-path", "sender"};

bool reserved_field(std::string_view name) {
  std::string lower(name);
  std::transform(lower.begin(), lower.end(), lower.begin(), [](char c) { return static_cast<char>(std::tolower(c)); });
  if (lower.rfind("content-", 0) == 0) return true;
  return std::find(std::begin(kReservedFields), std::end(kReservedFields), lower) != std::end(kReservedFields);
}

}  // namespace

std::string encode_words(std::string_view utf8, size_t first_line_used) {
  // RFC 2047 2: an encoded word is at most 75 octets; "=?UTF-8?B?" and
  // "?=" take 12, so at most 63 base64 characters: 45 octets (15 groups).
  std::string out;
  size_t i = 0;
  size_t budget = first_line_used + 12 + 4 < 76 ? (76 - first_line_used - 12) / 4 * 3 : 3;
  budget = std::min<size_t>(budget, 45);
  bool first = true;
  while (i < utf8.size() || first) {
    size_t end = i;
    while (end < utf8.size()) {
      const unsigned char c = static_cast<unsigned char>(utf8[end]);
      size_t n = c < 0x80 ? 1 : smtp::utf8_sequence_length(utf8, end);
      if (n == 0) n = 1;  // not UTF-8: carried as is
      if (end + n - i > budget && end > i) break;
      end += n;
    }
    if (!first) out += "\r\n ";
    out += "=?UTF-8?B?" + absl::Base64Escape(std::string(utf8.substr(i, end - i))) + "?=";
    i = end;
    first = false;
    budget = 45;
  }
  return out;
}

std::string quoted_printable(std::string_view text) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  size_t start = 0;
  while (start < text.size()) {
    size_t eol = text.find("\r\n", start);
    const bool has_eol = eol != std::string_view::npos;
    if (!has_eol) eol = text.size();
    const std::string_view line = text.substr(start, eol - start);
    size_t len = 0;
    for (size_t i = 0; i < line.size(); ++i) {
      const unsigned char c = static_cast<unsigned char>(line[i]);
      const bool last = i + 1 == line.size();
      std::string enc;
      if ((c >= 33 && c <= 126 && c != '=') || ((c == ' ' || c == '\t') && !last)) {
        enc = static_cast<char>(c);
      } else {  // RFC 2045 6.7 (1), (3): '=', controls, 8-bit, trailing white space
        enc = {'=', kHex[c >> 4], kHex[c & 15]};
      }
      // Rule (5): at most 76 characters including the soft break's '='.
      if (len + enc.size() > 75) {
        out += "=\r\n";
        len = 0;
      }
      out += enc;
      len += enc.size();
    }
    if (has_eol) out += "\r\n";
    start = eol + 2;
  }
  return out;
}

std::string base64_lines(std::string_view data) {
  const std::string b64 = absl::Base64Escape(std::string(data));
  std::string out;
  out.reserve(b64.size() + b64.size() / 76 * 2 + 2);
  for (size_t i = 0; i < b64.size(); i += 76) {
    out.append(b64, i, 76);
    out += "\r\n";
  }
  return out;
}

std::string make_message_id(const std::string& hostname, int64_t unix_seconds) {
  return "<" + random_hex(10) + "." + std::to_string(unix_seconds) + "@" + hostname + ">";
}

absl::StatusOr<BuiltMessage> build_message(const MimeMessage& m) {
  BuiltMessage built;
  if (absl::Status s = check_mailbox(m.from, "from", built.utf8); !s.ok()) return s;
  for (const auto& [list, name] : {std::pair{&m.to, "to"}, std::pair{&m.cc, "cc"}, std::pair{&m.reply_to, "reply_to"}}) {
    for (size_t i = 0; i < list->size(); ++i) {
      if (absl::Status s = check_mailbox((*list)[i], std::string(name) + "[" + std::to_string(i) + "]", built.utf8);
          !s.ok()) {
        return s;
      }
    }
  }
  if (has_controls(m.subject) || !valid_utf8(m.subject)) return bad("subject", "must be one line of UTF-8 text");
  if (!valid_utf8(m.text)) return bad("text_body", "is not UTF-8");
  if (!valid_utf8(m.html)) return bad("html_body", "is not UTF-8");
  std::string h;
  built.message_id = make_message_id(m.hostname, m.unix_seconds);
  h += "Date: " + rfc5322_date(m.unix_seconds) + "\r\n";
  h += address_field("From", {m.from});
  if (!m.to.empty()) h += address_field("To", m.to);
  if (!m.cc.empty()) h += address_field("Cc", m.cc);
  if (!m.reply_to.empty()) h += address_field("Reply-To", m.reply_to);
  h += unstructured("Subject", m.subject);
  h += "Message-ID: " + built.message_id + "\r\n";
  for (size_t i = 0; i < m.headers.size(); ++i) {
    const auto& [name, value] = m.headers[i];
    const std::string field = "headers[" + std::to_string(i) + "]";
    // RFC 5322 3.6.8: field-name = 1*ftext (printable ASCII but ':').
    const bool name_ok = !name.empty() && name.size() <= 76 && std::all_of(name.begin(), name.end(), [](char c) {
      return c >= 33 && c <= 126 && c != ':';
    });
    if (!name_ok) return bad(field + ".name", "'" + name + "' is not a header field name");
    if (reserved_field(name)) return bad(field + ".name", "'" + name + "' is written by smtpd; use the message's own field");
    if (has_controls(value) || !valid_utf8(value)) return bad(field + ".value", "must be one line of UTF-8 text");
    h += unstructured(name, value);
  }
  h += "MIME-Version: 1.0\r\n";

  std::vector<Part> bodies;
  if (!m.text.empty() || m.html.empty()) bodies.push_back(text_part(m.text, "plain"));
  if (!m.html.empty()) bodies.push_back(text_part(m.html, "html"));
  Part top = bodies.size() == 1 ? bodies[0] : multipart("alternative", bodies);
  if (!m.attachments.empty()) {
    std::vector<Part> parts{top};
    for (size_t i = 0; i < m.attachments.size(); ++i) {
      auto p = attachment_part(m.attachments[i], "attachments[" + std::to_string(i) + "]");
      if (!p.ok()) return p.status();
      parts.push_back(*std::move(p));
    }
    top = multipart("mixed", parts);
  }
  built.data = h + top.headers + "\r\n";
  if (top.headers.find("multipart/") != std::string::npos) built.data += "This is a multi-part message in MIME format.\r\n\r\n";
  built.data += top.body;
  return built;
}

absl::StatusOr<RawResult> prepare_raw(std::string_view data, const std::string& hostname, int64_t unix_seconds) {
  RawResult r;
  std::string out;
  out.reserve(data.size() + 128);
  size_t line = 0;
  for (size_t i = 0; i < data.size(); ++i) {
    const char c = data[i];
    if (c == '\0') return bad("raw.data", "contains a NUL octet");
    if (c == '\r') {
      if (i + 1 >= data.size() || data[i + 1] != '\n') return bad("raw.data", "contains a bare CR");
      continue;  // the LF writes the line end
    }
    if (c == '\n') {
      out += "\r\n";
      line = 0;
      continue;
    }
    if (static_cast<unsigned char>(c) >= 0x80) r.eight_bit = true;
    if (++line > 998) return bad("raw.data", "has a line longer than 998 octets (RFC 5322 2.1.1)");
    out += c;
  }
  if (out.empty()) return bad("raw.data", "is empty");
  if (out.size() < 2 || out.compare(out.size() - 2, 2, "\r\n") != 0) out += "\r\n";
  // The header section ends at the first empty line.
  const std::string_view all(out);
  const size_t sep = all.find("\r\n\r\n");
  const std::string_view headers = all.starts_with("\r\n")        ? std::string_view()
                                   : sep == std::string_view::npos ? all
                                                                   : all.substr(0, sep + 2);
  bool has_date = false;
  for (size_t pos = 0; pos < headers.size();) {
    size_t eol = headers.find("\r\n", pos);
    if (eol == std::string_view::npos) eol = headers.size();
    const std::string_view l = headers.substr(pos, eol - pos);
    auto starts = [&](std::string_view name) {
      return l.size() >= name.size() && strncasecmp(l.data(), name.data(), name.size()) == 0;
    };
    if (starts("date:")) has_date = true;
    if (starts("message-id:") && r.message_id.empty()) {
      std::string v(l.substr(11));
      // Unfold continuation lines.
      size_t next = eol + 2;
      while (next < headers.size() && (headers[next] == ' ' || headers[next] == '\t')) {
        size_t e = headers.find("\r\n", next);
        if (e == std::string_view::npos) e = headers.size();
        v += headers.substr(next, e - next);
        next = e + 2;
      }
      const size_t a = v.find('<'), b = v.find('>', a == std::string::npos ? 0 : a);
      if (a != std::string::npos && b != std::string::npos) r.message_id = v.substr(a, b - a + 1);
    }
    pos = eol + 2;
  }
  std::string prefix;
  if (!has_date) prefix += "Date: " + rfc5322_date(unix_seconds) + "\r\n";
  if (r.message_id.empty()) {
    r.message_id = make_message_id(hostname, unix_seconds);
    prefix += "Message-ID: " + r.message_id + "\r\n";
  }
  r.data = prefix + out;
  return r;
}

}  // namespace smtpd::message
