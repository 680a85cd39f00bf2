// Local delivery into Maildir folders (the convention of qmail, Dovecot and
// Postfix's local(8)): one mailbox per local part under a root directory,
// written to tmp/, synced, then renamed into new/ so that readers never see
// a partial message. Return-Path and Delivered-To are prepended and CRLF
// line ends become LF, as local delivery agents store mail.
#pragma once

#include <string>
#include <string_view>

#include "lib/delivery/outcome.h"

namespace smtpd::delivery {

struct MaildirMessage {
  std::string sender;     // reverse path without brackets; empty for <>
  std::string recipient;  // local@domain as received
  std::string local_part; // selects the mailbox
  std::string_view body;  // the stored message (CRLF line ends)
};

class MaildirTransport {
 public:
  // root: the directory holding one Maildir per mailbox (created as needed).
  MaildirTransport(std::string root, std::string hostname);

  // Blocking (file writes and fsync): call off the I/O threads.
  DeliveryOutcome deliver(const MaildirMessage& m);

  // The mailbox directory name for a local part, or empty when the local
  // part cannot name a directory safely ("..", "/", NUL, empty).
  static std::string mailbox_name(std::string_view local_part);

 private:
  std::string unique_name(size_t size);

  std::string root_;
  std::string hostname_;
};

}  // namespace smtpd::delivery
