// Trace information that smtpd adds to each message it accepts: the
// Received header of RFC 5321 4.4 (with the TLS and authentication comments
// Postfix writes) and the RFC 5322 3.3 date-time it carries.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace smtpd::message {

struct ReceivedInfo {
  std::string helo;            // the client's EHLO/HELO argument
  std::string client_address;  // numeric, without brackets
  std::string by_host;         // our host name
  std::string queue_id;
  bool esmtp = true;
  bool tls = false;
  std::string tls_version;     // "TLSv1.3"
  std::string tls_cipher;      // "TLS_AES_256_GCM_SHA384"
  int tls_bits = 0;
  std::string auth_user;       // empty: not authenticated
  bool smtputf8 = false;
  std::string single_recipient;  // "for <x>" only with exactly one recipient
  int64_t unix_seconds = 0;
  std::string protocol;  // "with" value; empty: computed by with_protocol()
};

// RFC 5322 3.3 date-time in UTC, e.g. "Fri, 04 Dec 2026 20:44:43 +0000".
std::string rfc5322_date(int64_t unix_seconds);

// The whole header field, folded, ending with CRLF.
std::string received_header(const ReceivedInfo& info);

// RFC 3848 / RFC 6531 "with" protocol name: ESMTP, ESMTPS, ESMTPSA,
// UTF8SMTPSA and so on.
std::string with_protocol(bool esmtp, bool tls, bool auth, bool smtputf8);

}  // namespace smtpd::message
