#include "lib/message/received.h"

#include <ctime>

namespace smtpd::message {
namespace {

// Keeps a client-supplied token safe inside a header comment: printable
// ASCII without parentheses, backslashes or quotes.
std::string header_safe(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    const auto u = static_cast<unsigned char>(c);
    out += (u > 32 && u < 127 && c != '(' && c != ')' && c != '\\' && c != '"') ? c : '?';
  }
  return out.empty() ? "unknown" : out;
}

}  // namespace

std::string rfc5322_date(int64_t unix_seconds) {
  const time_t t = static_cast<time_t>(unix_seconds);
  struct tm tm;
  gmtime_r(&t, &tm);
  static constexpr const char* kDays[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
  static constexpr const char* kMonths[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                            "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  char buf[128];
  std::snprintf(buf, sizeof buf, "%s, %02d %s %04d %02d:%02d:%02d +0000", kDays[tm.tm_wday],
                tm.tm_mday, kMonths[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min,
                tm.tm_sec);
  return buf;
}

std::string with_protocol(bool esmtp, bool tls, bool auth, bool smtputf8) {
  if (!esmtp) return "SMTP";
  std::string p = smtputf8 ? "UTF8SMTP" : "ESMTP";
  if (tls) p += "S";
  if (auth) p += "A";
  return p;
}

std::string received_header(const ReceivedInfo& info) {
  // RFC 5321 4.4: "from" Extended-Domain, "by", "with", "id", "for"; then
  // "; " date-time. Continuation lines start with a tab (RFC 5322 2.2.3).
  std::string h = "Received: from " + header_safe(info.helo) + " ([" +
                  header_safe(info.client_address) + "])\r\n";
  if (info.tls) {
    h += "\t(using " + header_safe(info.tls_version) + " with cipher " +
         header_safe(info.tls_cipher) + " (" + std::to_string(info.tls_bits) + "/" +
         std::to_string(info.tls_bits) + " bits))\r\n";
  }
  if (!info.auth_user.empty()) {
    h += "\t(Authenticated sender: " + header_safe(info.auth_user) + ")\r\n";
  }
  const std::string with = info.protocol.empty()
                               ? with_protocol(info.esmtp, info.tls, !info.auth_user.empty(), info.smtputf8)
                               : header_safe(info.protocol);
  h += "\tby " + info.by_host + " (smtpd) with " + with + " id " + info.queue_id + "\r\n";
  if (!info.single_recipient.empty()) {
    // The recipient may carry UTF-8 (SMTPUTF8 transactions); it is an
    // addr-spec that the session already validated.
    h += "\tfor <" + info.single_recipient + ">";
  } else {
    h += "\t";
  }
  h += "; " + rfc5322_date(info.unix_seconds) + "\r\n";
  return h;
}

}  // namespace smtpd::message
