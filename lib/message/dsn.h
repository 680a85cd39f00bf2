// Delivery status notifications (RFC 3464 multipart/report with
// message/delivery-status, RFC 3461 RET/ENVID/ORCPT honoured): the bounce
// or delay warning sent to the envelope sender. Never build one for a null
// sender (RFC 5321 6.1); the caller checks that.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace smtpd::message {

enum class DsnAction { kFailed, kDelayed, kDelivered };

struct DsnRecipient {
  std::string final_recipient;     // address as delivered to
  std::string original_recipient;  // ORCPT "addr-type;xtext" as received, or empty
  DsnAction action = DsnAction::kFailed;
  std::string status;              // RFC 3463 code, e.g. "5.1.1"
  std::string remote_mta;          // host name that gave the reply, or empty
  std::string diagnostic;          // the reply, e.g. "550 5.1.1 No such user"
  int64_t last_attempt_unix = 0;   // 0: not given
};

struct DsnReport {
  std::string reporting_mta;       // our host name
  std::string sender;              // envelope sender the report goes to
  std::string envid;               // ENVID (xtext) or empty
  int64_t arrival_unix = 0;
  int64_t now_unix = 0;
  bool headers_only = false;       // RET=HDRS (and the default for large messages)
  bool utf8 = false;               // the original was an SMTPUTF8 message (RFC 6533)
  std::string queue_id;
  std::vector<DsnRecipient> recipients;
  std::string_view original;       // the stored message (CRLF line ends)
};

// The whole message, CRLF line ends, ready to queue with sender <>.
std::string build_dsn(const DsnReport& report);

// The header block of a message (up to and including the empty line).
std::string_view header_block(std::string_view message);

}  // namespace smtpd::message
