// Messages built from structured fields (gRPC SendMail): RFC 5322 headers
// with RFC 2047 encoded words for non-ASCII text, and a MIME body (RFC
// 2045-2049): text/plain, text/html, multipart/alternative for both,
// multipart/mixed with attachments. Text parts are 7bit when they can be,
// quoted-printable otherwise; attachments are base64. Also the checks and
// fixes for a raw message handed over whole.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace smtpd::message {

struct Mailbox {
  std::string address;  // addr-spec: "alice@example.com"
  std::string name;     // display name, UTF-8; may be empty
};

struct Attachment {
  std::string filename;      // UTF-8
  std::string content_type;  // "type/subtype"; empty: application/octet-stream
  std::string content;       // octets
  std::string content_id;    // non-empty: inline, with this Content-ID
};

struct MimeMessage {
  Mailbox from;
  std::vector<Mailbox> to, cc, reply_to;  // Bcc is never written
  std::string subject;
  std::string text;  // text/plain body, UTF-8
  std::string html;  // text/html body, UTF-8
  std::vector<Attachment> attachments;
  std::vector<std::pair<std::string, std::string>> headers;  // extra fields
  std::string hostname;  // right side of the Message-ID
  int64_t unix_seconds = 0;
};

struct BuiltMessage {
  std::string data;        // the whole message, CRLF line ends
  std::string message_id;  // "<...>"
  bool utf8 = false;       // an address is not ASCII: needs SMTPUTF8
};

// INVALID_ARGUMENT naming the field ("from.address", "headers[2].name",
// "attachments[0].content_type") for anything that cannot be sent.
absl::StatusOr<BuiltMessage> build_message(const MimeMessage& m);

// A raw RFC 5322 message: bare LF becomes CRLF; bare CR, NUL and lines
// over 998 octets (RFC 5322 2.1.1) are refused; Date and Message-ID are
// added when missing (RFC 6409 8.2, 8.3). `eight_bit` tells whether any
// octet is above 127 (BODY=8BITMIME).
struct RawResult {
  std::string data;
  std::string message_id;
  bool eight_bit = false;
};
absl::StatusOr<RawResult> prepare_raw(std::string_view data, const std::string& hostname, int64_t unix_seconds);

// Encoders, exposed for tests.
// RFC 2047 "B" encoded words for an unstructured value, folded: each
// encoded word at most 75 octets, never splitting a UTF-8 character.
std::string encode_words(std::string_view utf8, size_t first_line_used);
// RFC 2045 6.7 quoted-printable of text with CRLF line ends: lines at most
// 76 octets, soft breaks, trailing white space encoded.
std::string quoted_printable(std::string_view text);
// Base64 in lines of 76 characters, each ending CRLF (RFC 2045 6.8).
std::string base64_lines(std::string_view data);
// "<random.unix@host>"
std::string make_message_id(const std::string& hostname, int64_t unix_seconds);

}  // namespace smtpd::message
