// RFC 3464 delivery status notifications, checked by hand and by Python's
// email package (a real MIME parser).
#include "lib/message/dsn.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>

#include "lib/message/received.h"

namespace smtpd::message {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

DsnReport sample(bool headers_only) {
  DsnReport r;
  r.reporting_mta = "mx.test";
  r.sender = "alice@x.test";
  r.envid = "ENV123";
  r.arrival_unix = 1796000000;
  r.now_unix = 1796000100;
  r.headers_only = headers_only;
  r.queue_id = "0006AB";
  DsnRecipient a;
  a.final_recipient = "bob@y.test";
  a.original_recipient = "rfc822;bob@y.test";
  a.status = "5.1.1";
  a.remote_mta = "mx.y.test";
  a.diagnostic = "550 5.1.1 <bob@y.test>: no such user\r\ninjected: header";
  a.last_attempt_unix = 1796000090;
  DsnRecipient b;
  b.final_recipient = "carol@y.test";
  b.action = DsnAction::kDelayed;
  b.status = "4.4.1";
  b.diagnostic = "connection refused";
  r.recipients = {a, b};
  r.original = "Subject: original\r\nFrom: alice@x.test\r\n\r\nbody line\r\n";
  return r;
}

TEST(Dsn, Structure) {
  const std::string m = build_dsn(sample(false));
  EXPECT_THAT(m, HasSubstr("To: <alice@x.test>\r\n"));
  EXPECT_THAT(m, HasSubstr("Auto-Submitted: auto-replied\r\n"));
  EXPECT_THAT(m, HasSubstr("Content-Type: multipart/report; report-type=delivery-status;"));
  EXPECT_THAT(m, HasSubstr("Reporting-MTA: dns; mx.test\r\n"));
  EXPECT_THAT(m, HasSubstr("Original-Envelope-Id: ENV123\r\n"));
  EXPECT_THAT(m, HasSubstr("Final-Recipient: rfc822; bob@y.test\r\nOriginal-Recipient: rfc822;bob@y.test\r\n"
                           "Action: failed\r\nStatus: 5.1.1\r\nRemote-MTA: dns; mx.y.test\r\n"));
  EXPECT_THAT(m, HasSubstr("Action: delayed\r\nStatus: 4.4.1\r\n"));
  EXPECT_THAT(m, Not(HasSubstr("\r\ninjected: header")));  // replies cannot add header lines
  EXPECT_THAT(m, HasSubstr("Content-Type: message/rfc822\r\n\r\nSubject: original\r\n"));
  EXPECT_THAT(m, HasSubstr("body line\r\n"));
  for (size_t i = 0; i < m.size(); ++i) {
    if (m[i] == '\n') {
      ASSERT_EQ(m[i - 1], '\r') << i;  // CRLF only
    }
  }
}

TEST(Dsn, HeadersOnly) {
  const std::string m = build_dsn(sample(true));
  EXPECT_THAT(m, HasSubstr("Content-Type: text/rfc822-headers\r\n\r\nSubject: original\r\nFrom: alice@x.test\r\n\r\n"));
  EXPECT_THAT(m, Not(HasSubstr("body line")));
}

TEST(Dsn, DelayOnlySubject) {
  DsnReport r = sample(true);
  r.recipients.erase(r.recipients.begin());
  EXPECT_THAT(build_dsn(r), HasSubstr("Subject: Delayed Mail (still being retried)\r\n"));
}

TEST(Dsn, GlobalTypesForSmtputf8) {
  DsnReport r = sample(false);
  r.utf8 = true;
  r.recipients[0].final_recipient = "j\xc3\xb6rg@y.test";
  const std::string m = build_dsn(r);
  EXPECT_THAT(m, HasSubstr("Content-Type: message/global-delivery-status\r\n"));
  EXPECT_THAT(m, HasSubstr("Final-Recipient: utf-8; j\xc3\xb6rg@y.test\r\n"));
  EXPECT_THAT(m, HasSubstr("Content-Type: message/global\r\n"));
  r.headers_only = true;
  EXPECT_THAT(build_dsn(r), HasSubstr("Content-Type: message/global-headers\r\n"));
}

// Found by tests/fuzz/fuzz_dsn: a value with a line break must not open a
// header line of its own.
TEST(Dsn, NoValueOpensAHeaderLine) {
  DsnReport r = sample(false);
  r.sender = "x@y>\r\nBcc: victim@example.com\r\nX-A: <z";
  r.recipients[0].remote_mta = "mx.test\r\nX-Injected: 1";
  r.recipients[0].diagnostic = "550 5.1.1 no\nX-Injected: 2";
  const std::string m = build_dsn(r);
  EXPECT_EQ(m.find("\r\nBcc:"), std::string::npos);
  EXPECT_EQ(m.find("\r\nX-Injected"), std::string::npos);
  EXPECT_NE(m.find("To: <x@y>  Bcc: victim@example.com  X-A: <z>\r\n"), std::string::npos);
}

TEST(Dsn, HeaderBlock) {
  EXPECT_EQ(header_block("A: 1\r\nB: 2\r\n\r\nbody\r\n"), "A: 1\r\nB: 2\r\n\r\n");
  EXPECT_EQ(header_block("A: 1\r\n"), "A: 1\r\n");
}

TEST(Dsn, ParsedByPythonEmail) {
  if (std::system("/usr/bin/python3 -c 'import email' 2>/dev/null") != 0) GTEST_SKIP() << "Debian's /usr/bin/python3 is not installed (scripts/dev test installs it); "
                    "the structure checks above still ran";
  char path[] = "/tmp/dsn_test.XXXXXX";
  const int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  close(fd);
  std::ofstream(path, std::ios::binary) << build_dsn(sample(false));
  const std::string script =
      "import email, email.policy, sys\n"
      "m = email.message_from_binary_file(open(sys.argv[1], 'rb'), policy=email.policy.default)\n"
      "assert m.get_content_type() == 'multipart/report', m.get_content_type()\n"
      "assert m.get_param('report-type') == 'delivery-status'\n"
      "parts = list(m.iter_parts())\n"
      "assert [p.get_content_type() for p in parts] == "
      "['text/plain', 'message/delivery-status', 'message/rfc822'], [p.get_content_type() for p in parts]\n"
      "blocks = parts[1].get_payload()\n"
      "assert blocks[0]['Reporting-MTA'] == 'dns; mx.test', blocks[0]['Reporting-MTA']\n"
      "assert blocks[1]['Status'] == '5.1.1' and blocks[1]['Action'] == 'failed'\n"
      "assert blocks[1]['Diagnostic-Code'].startswith('smtp; 550 5.1.1'), blocks[1]['Diagnostic-Code']\n"
      "assert blocks[2]['Status'] == '4.4.1'\n"
      "assert parts[2].get_payload()[0]['Subject'] == 'original'\n";
  char spath[] = "/tmp/dsn_check.XXXXXX";
  const int sfd = mkstemp(spath);
  ASSERT_GE(sfd, 0);
  close(sfd);
  std::ofstream(spath) << script;
  const int rc = std::system(("/usr/bin/python3 " + std::string(spath) + " " + path).c_str());
  std::remove(path);
  std::remove(spath);
  EXPECT_EQ(rc, 0);
}

}  // namespace
}  // namespace smtpd::message
