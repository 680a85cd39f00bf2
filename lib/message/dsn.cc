#include "lib/message/dsn.h"

#include <openssl/rand.h>

#include "lib/message/received.h"

namespace smtpd::message {
namespace {

const char* action_name(DsnAction a) {
  switch (a) {
    case DsnAction::kFailed: return "failed";
    case DsnAction::kDelayed: return "delayed";
    case DsnAction::kDelivered: return "delivered";
  }
  return "failed";
}

std::string random_hex(size_t bytes) {
  unsigned char buf[32];
  RAND_bytes(buf, static_cast<int>(bytes));
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (size_t i = 0; i < bytes; ++i) {
    out += kHex[buf[i] >> 4];
    out += kHex[buf[i] & 15];
  }
  return out;
}

// A header value must not carry CR or LF from a remote reply.
std::string one_line(std::string_view s) {
  std::string out;
  for (char c : s) out += (c == '\r' || c == '\n') ? ' ' : c;
  return out;
}

std::string human_part(const DsnReport& r, bool failed) {
  std::string t = "This is the mail system at host " + r.reporting_mta + ".\r\n\r\n";
  if (failed) {
    t += "Your message could not be delivered to one or more recipients.\r\n"
         "It is attached below.\r\n\r\n";
  } else {
    t += "Your message has not been delivered yet to one or more recipients.\r\n"
         "The mail system will keep trying; this is only a warning.\r\n\r\n";
  }
  for (const DsnRecipient& rc : r.recipients) {
    t += "<" + one_line(rc.final_recipient) + ">: " + one_line(rc.diagnostic) + "\r\n";
  }
  return t;
}

}  // namespace

std::string_view header_block(std::string_view message) {
  const size_t end = message.find("\r\n\r\n");
  if (end == std::string_view::npos) return message;
  return message.substr(0, end + 4);
}

std::string build_dsn(const DsnReport& r) {
  bool any_failed = false;
  for (const DsnRecipient& rc : r.recipients) any_failed |= rc.action == DsnAction::kFailed;
  const std::string boundary = r.queue_id + "." + random_hex(8) + "/" + r.reporting_mta;
  std::string m;
  m += "From: Mail Delivery System <MAILER-DAEMON@" + r.reporting_mta + ">\r\n";
  m += "To: <" + one_line(r.sender) + ">\r\n";  // defence in depth: no value opens a header line
  m += any_failed ? "Subject: Undelivered Mail Returned to Sender\r\n"
                  : "Subject: Delayed Mail (still being retried)\r\n";
  m += "Date: " + rfc5322_date(r.now_unix) + "\r\n";
  m += "Message-ID: <" + r.queue_id + "." + random_hex(6) + "@" + r.reporting_mta + ">\r\n";
  m += "Auto-Submitted: auto-replied\r\n";  // RFC 3834 5: no replies to this
  m += "MIME-Version: 1.0\r\n";
  m += "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"" + boundary + "\"\r\n";
  m += "\r\nThis is a MIME-encapsulated message.\r\n\r\n";
  // 1. Human-readable part.
  m += "--" + boundary + "\r\n";
  m += "Content-Description: Notification\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n";
  m += human_part(r, any_failed) + "\r\n";
  // 2. message/delivery-status (RFC 3464 2.2 and 2.3).
  m += "--" + boundary + "\r\n";
  // RFC 6533 6: internationalised messages get the global types, whose
  // fields may carry UTF-8.
  m += std::string("Content-Description: Delivery report\r\nContent-Type: ") +
       (r.utf8 ? "message/global-delivery-status" : "message/delivery-status") + "\r\n\r\n";
  m += "Reporting-MTA: dns; " + r.reporting_mta + "\r\n";
  m += "X-Queue-ID: " + r.queue_id + "\r\n";
  if (!r.envid.empty()) m += "Original-Envelope-Id: " + one_line(r.envid) + "\r\n";
  if (r.arrival_unix > 0) m += "Arrival-Date: " + rfc5322_date(r.arrival_unix) + "\r\n";
  for (const DsnRecipient& rc : r.recipients) {
    m += "\r\n";
    m += std::string("Final-Recipient: ") + (r.utf8 ? "utf-8; " : "rfc822; ") + one_line(rc.final_recipient) +
         "\r\n";
    if (!rc.original_recipient.empty()) m += "Original-Recipient: " + one_line(rc.original_recipient) + "\r\n";
    m += std::string("Action: ") + action_name(rc.action) + "\r\n";
    m += "Status: " + one_line(rc.status) + "\r\n";
    if (!rc.remote_mta.empty()) m += "Remote-MTA: dns; " + one_line(rc.remote_mta) + "\r\n";
    if (!rc.diagnostic.empty()) m += "Diagnostic-Code: smtp; " + one_line(rc.diagnostic) + "\r\n";
    if (rc.last_attempt_unix > 0) m += "Last-Attempt-Date: " + rfc5322_date(rc.last_attempt_unix) + "\r\n";
  }
  m += "\r\n";
  // 3. The original: whole (RET=FULL) or its headers (RET=HDRS).
  m += "--" + boundary + "\r\n";
  if (r.headers_only) {
    m += std::string("Content-Description: Undelivered Message Headers\r\nContent-Type: ") +
         (r.utf8 ? "message/global-headers" : "text/rfc822-headers") + "\r\n\r\n";
    m += std::string(header_block(r.original));
  } else {
    m += std::string("Content-Description: Undelivered Message\r\nContent-Type: ") +
         (r.utf8 ? "message/global" : "message/rfc822") + "\r\n\r\n";
    m += std::string(r.original);
    if (!r.original.empty() && r.original.substr(r.original.size() - std::min<size_t>(2, r.original.size())) != "\r\n") {
      m += "\r\n";
    }
  }
  m += "\r\n--" + boundary + "--\r\n";
  return m;
}

}  // namespace smtpd::message
