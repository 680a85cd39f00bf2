// Every command, reply code, limit and error path of the server session.
#include "lib/smtp/server_session.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/unit/smtp/session_harness.h"

namespace smtpd::smtp {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;
using testing::Harness;

SessionSettings plain() {
  SessionSettings s;
  s.hostname = "mx.test";
  s.max_message_size = 10000;
  s.max_recipients = 3;
  s.max_errors = 50;
  return s;
}

std::string ready(Harness& h) { return h.run("EHLO client.test\r\n"); }

// MAIL, RCPT and DATA, up to the 354.
void open_data(Harness& h) {
  EXPECT_THAT(h.run("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n"),
              ::testing::EndsWith("354 End data with <CR><LF>.<CR><LF>\r\n"));
}

TEST(Greeting, Is220WithHostname) {
  Harness h(plain());
  EXPECT_EQ(h.out, "220 mx.test ESMTP smtpd\r\n");
}

TEST(Ehlo, AdvertisesExtensions) {
  Harness h(plain());
  const std::string r = ready(h);
  EXPECT_THAT(r, StartsWith("250-mx.test\r\n"));
  for (const char* ext : {"PIPELINING", "SIZE 10000", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES",
                          "CHUNKING", "DSN", "STARTTLS"}) {
    EXPECT_THAT(r, HasSubstr(ext)) << ext;
  }
  EXPECT_THAT(r, Not(HasSubstr("AUTH")));  // no users configured
  EXPECT_THAT(r, HasSubstr("250 "));        // last line
}

TEST(Ehlo, AuthOnlyAfterTls) {
  SessionSettings s = plain();
  s.auth_available = true;
  Harness h(s);
  EXPECT_THAT(ready(h), Not(HasSubstr("AUTH")));
  h.run("STARTTLS\r\n");
  const std::string r = h.run("EHLO client.test\r\n");
  EXPECT_THAT(r, HasSubstr("AUTH PLAIN LOGIN"));
  EXPECT_THAT(r, Not(HasSubstr("STARTTLS")));
}

TEST(Ehlo, AuthInPlaintextWhenAllowed) {
  SessionSettings s = plain();
  s.auth_available = true;
  s.auth_without_tls = true;
  Harness h(s);
  EXPECT_THAT(ready(h), HasSubstr("AUTH PLAIN LOGIN"));
}

TEST(Ehlo, NeedsArgument) {
  Harness h(plain());
  EXPECT_EQ(h.run("EHLO\r\n"), "501 5.5.4 Syntax: EHLO hostname\r\n");
  EXPECT_EQ(h.run("HELO\r\n"), "501 5.5.4 Syntax: HELO hostname\r\n");
  EXPECT_EQ(h.run("EHLO a b\r\n"), "501 5.5.4 Syntax: EHLO hostname\r\n");
}

TEST(Helo, PlainReply) {
  Harness h(plain());
  EXPECT_EQ(h.run("HELO client\r\n"), "250 mx.test\r\n");
  EXPECT_FALSE(h.session.esmtp());
}

TEST(Ehlo, ResetsTransaction) {
  Harness h(plain());
  ready(h);
  h.run("MAIL FROM:<a@x.test>\r\n");
  EXPECT_TRUE(h.session.in_transaction());
  ready(h);
  EXPECT_FALSE(h.session.in_transaction());
}

TEST(Mail, RequiresHelo) {
  Harness h(plain());
  EXPECT_EQ(h.run("MAIL FROM:<a@x.test>\r\n"), "503 5.5.1 Send HELO/EHLO first\r\n");
}

TEST(Mail, AcceptsAndNests) {
  Harness h(plain());
  ready(h);
  EXPECT_EQ(h.run("MAIL FROM:<a@x.test>\r\n"), "250 2.1.0 Ok\r\n");
  EXPECT_EQ(h.run("MAIL FROM:<a@x.test>\r\n"), "503 5.5.1 Nested MAIL command\r\n");
}

TEST(Mail, NullSenderAndSpaceAfterColon) {
  Harness h(plain());
  ready(h);
  EXPECT_EQ(h.run("mail from: <>\r\n"), "250 2.1.0 Ok\r\n");
  EXPECT_TRUE(h.session.envelope().sender.null);
}

TEST(Mail, SyntaxErrors) {
  Harness h(plain());
  ready(h);
  EXPECT_EQ(h.run("MAIL\r\n"), "501 5.5.4 Syntax: MAIL FROM:<address>\r\n");
  EXPECT_EQ(h.run("MAIL TO:<a@b>\r\n"), "501 5.5.4 Syntax: MAIL FROM:<address>\r\n");
  EXPECT_EQ(h.run("MAIL FROM:a@x.test\r\n"), "501 5.1.7 Bad sender address syntax\r\n");
  EXPECT_EQ(h.run("MAIL FROM:<a@@x.test>\r\n"), "501 5.1.7 Bad sender address syntax\r\n");
  EXPECT_EQ(h.run("MAIL FROM:<a@x.test>junk\r\n"), "501 5.1.7 Bad sender address syntax\r\n");
  EXPECT_EQ(h.run("MAIL FROM:<" + std::string(65, 'a') + "@x.test>\r\n"), "501 5.1.7 Path too long\r\n");
}

TEST(Mail, SizeParameter) {
  Harness h(plain());
  ready(h);
  EXPECT_EQ(h.run("MAIL FROM:<a@x.test> SIZE=10001\r\n"),
            "552 5.3.4 Message size exceeds fixed maximum message size\r\n");
  EXPECT_EQ(h.run("MAIL FROM:<a@x.test> SIZE=999999999999999999999999\r\n"),
            "552 5.3.4 Message size exceeds fixed maximum message size\r\n");
  EXPECT_EQ(h.run("MAIL FROM:<a@x.test> SIZE=abc\r\n"),
            "552 5.3.4 Message size exceeds fixed maximum message size\r\n");
  EXPECT_EQ(h.run("MAIL FROM:<a@x.test> SIZE=100\r\n"), "250 2.1.0 Ok\r\n");
  EXPECT_EQ(*h.session.envelope().declared_size, 100u);
}

TEST(Timeouts, CommandLineInPieces) {
  Harness h(plain());
  ready(h);
  EXPECT_FALSE(h.session.mid_command_line());
  EXPECT_EQ(h.run("NO"), "");
  EXPECT_TRUE(h.session.mid_command_line());  // the command timeout keeps running
  EXPECT_EQ(h.run("OP\r\n"), "250 2.0.0 Ok\r\n");
  EXPECT_FALSE(h.session.mid_command_line());
  EXPECT_EQ(h.run(std::string(600, 'x')), "");  // an over-long line being skipped
  EXPECT_TRUE(h.session.mid_command_line());
}

TEST(Mail, NewLimitsApplyFromTheNextTransaction) {
  Harness h(plain());
  ready(h);
  EXPECT_EQ(h.run("MAIL FROM:<a@x.test> SIZE=5000\r\n"), "250 2.1.0 Ok\r\n");
  h.session.set_limits(2000, 1);  // a policy update mid-transaction
  EXPECT_EQ(h.run("RCPT TO:<b@x.test>\r\n"), "250 2.1.5 Ok\r\n");
  EXPECT_EQ(h.run("RCPT TO:<c@x.test>\r\n"), "250 2.1.5 Ok\r\n");  // the old limit still holds
  EXPECT_EQ(h.run("RSET\r\n"), "250 2.0.0 Ok\r\n");
  EXPECT_EQ(h.run("MAIL FROM:<a@x.test> SIZE=5000\r\n"),
            "552 5.3.4 Message size exceeds fixed maximum message size\r\n");
  EXPECT_EQ(h.run("MAIL FROM:<a@x.test> SIZE=1000\r\n"), "250 2.1.0 Ok\r\n");
  EXPECT_EQ(h.run("RCPT TO:<b@x.test>\r\n"), "250 2.1.5 Ok\r\n");
  EXPECT_EQ(h.run("RCPT TO:<c@x.test>\r\n"), "452 4.5.3 Too many recipients\r\n");
  h.session.set_limits(3000, 5);  // between transactions: at once, EHLO shows it
  EXPECT_EQ(h.run("RSET\r\n"), "250 2.0.0 Ok\r\n");
  EXPECT_NE(h.run("EHLO c.test\r\n").find("250-SIZE 3000\r\n"), std::string::npos);
}

TEST(Mail, Parameters) {
  Harness h(plain());
  ready(h);
  EXPECT_EQ(h.run("MAIL FROM:<a@x.test> FOO=1\r\n"), "555 5.5.4 Unsupported MAIL parameter\r\n");
  EXPECT_EQ(h.run("MAIL FROM:<a@x.test> BODY=BINARYMIME\r\n"), "555 5.5.4 Unsupported BODY type\r\n");
  EXPECT_EQ(h.run("MAIL FROM:<a@x.test> SIZE=1 SIZE=2\r\n"), "501 5.5.4 Bad SIZE parameter\r\n");
  EXPECT_EQ(h.run("MAIL FROM:<a@x.test> SMTPUTF8=yes\r\n"), "501 5.5.4 Bad SMTPUTF8 parameter\r\n");
  EXPECT_EQ(h.run("MAIL FROM:<a@x.test> RET=ALL\r\n"), "501 5.5.4 Bad RET parameter\r\n");
  EXPECT_EQ(h.run("MAIL FROM:<a@x.test> ENVID=a+ZZ\r\n"), "501 5.5.4 Bad ENVID parameter\r\n");
  EXPECT_EQ(h.run("MAIL FROM:<a@x.test> =x\r\n"), "501 5.5.4 Syntax error in parameters\r\n");
  EXPECT_EQ(h.run("MAIL FROM:<a@x.test> BODY=8BITMIME RET=HDRS ENVID=abc+2B1 AUTH=<> SMTPUTF8\r\n"),
            "250 2.1.0 Ok\r\n");
  const Envelope& e = h.session.envelope();
  EXPECT_EQ(e.body, BodyType::k8BitMime);
  EXPECT_EQ(e.ret, DsnRet::kHdrs);
  EXPECT_EQ(e.envid, "abc+2B1");
  EXPECT_EQ(e.auth_param, "<>");
  EXPECT_TRUE(e.smtputf8);
}

TEST(Mail, ParameterKeywordGrammar) {
  Harness h(plain());
  ready(h);
  EXPECT_EQ(h.run("MAIL FROM:<a@x.test> -SIZE=1\r\n"), "501 5.5.4 Syntax error in parameters\r\n");
  EXPECT_EQ(h.run("MAIL FROM:<a@x.test> X_Y=1\r\n"), "501 5.5.4 Syntax error in parameters\r\n");
  EXPECT_EQ(h.run("MAIL FROM:<a@x.test> X-Y=1\r\n"), "555 5.5.4 Unsupported MAIL parameter\r\n");
}

TEST(Mail, Utf8NeedsSmtputf8) {
  Harness h(plain());
  ready(h);
  EXPECT_EQ(h.run("MAIL FROM:<j\xc3\xb6rg@x.test>\r\n"), "553 5.6.7 Non-ASCII address requires SMTPUTF8\r\n");
  EXPECT_EQ(h.run("MAIL FROM:<j\xc3\xb6rg@x.test> SMTPUTF8\r\n"), "250 2.1.0 Ok\r\n");
  EXPECT_EQ(h.run("RCPT TO:<b@\xc3\xa9xample.test>\r\n"), "250 2.1.5 Ok\r\n");
}

TEST(Mail, RejectedByDriver) {
  Harness h(plain());
  h.mail_reply = Reply(452, "4.3.1", "Insufficient system storage");
  ready(h);
  EXPECT_EQ(h.run("MAIL FROM:<a@x.test>\r\n"), "452 4.3.1 Insufficient system storage\r\n");
  EXPECT_FALSE(h.session.in_transaction());
}

TEST(Rcpt, Sequence) {
  Harness h(plain());
  ready(h);
  EXPECT_EQ(h.run("RCPT TO:<b@y.test>\r\n"), "503 5.5.1 Need MAIL command\r\n");
}

TEST(Rcpt, SyntaxAndForms) {
  Harness h(plain());
  ready(h);
  h.run("MAIL FROM:<a@x.test>\r\n");
  EXPECT_EQ(h.run("RCPT TO:<>\r\n"), "501 5.1.3 Bad recipient address syntax\r\n");
  EXPECT_EQ(h.run("RCPT TO:b@y.test\r\n"), "501 5.1.3 Bad recipient address syntax\r\n");
  EXPECT_EQ(h.run("RCPT FROM:<b@y.test>\r\n"), "501 5.5.4 Syntax: RCPT TO:<address>\r\n");
  EXPECT_EQ(h.run("RCPT TO:<Postmaster>\r\n"), "250 2.1.5 Ok\r\n");
  EXPECT_TRUE(h.session.envelope().recipients.back().path.postmaster);
  EXPECT_EQ(h.run("RCPT TO:<@relay.test,@r2.test:b@y.test>\r\n"), "250 2.1.5 Ok\r\n");
  EXPECT_EQ(h.session.envelope().recipients.back().path.str(), "b@y.test");
}

TEST(Rcpt, DsnParameters) {
  Harness h(plain());
  ready(h);
  h.run("MAIL FROM:<a@x.test>\r\n");
  EXPECT_EQ(h.run("RCPT TO:<b@y.test> NOTIFY=NEVER,SUCCESS\r\n"), "501 5.5.4 NOTIFY=NEVER cannot be combined\r\n");
  EXPECT_EQ(h.run("RCPT TO:<b@y.test> NOTIFY=SOMETIMES\r\n"), "501 5.5.4 Bad NOTIFY parameter\r\n");
  EXPECT_EQ(h.run("RCPT TO:<b@y.test> ORCPT=nosemicolon\r\n"), "501 5.5.4 Bad ORCPT parameter\r\n");
  EXPECT_EQ(h.run("RCPT TO:<b@y.test> XYZ\r\n"), "555 5.5.4 Unsupported RCPT parameter\r\n");
  EXPECT_EQ(h.run("RCPT TO:<b@y.test> NOTIFY=SUCCESS,FAILURE,DELAY ORCPT=rfc822;b+40y.test\r\n"),
            "250 2.1.5 Ok\r\n");
  const Recipient& r = h.session.envelope().recipients.back();
  EXPECT_EQ(r.notify, kNotifySuccess | kNotifyFailure | kNotifyDelay);
  EXPECT_EQ(r.orcpt, "rfc822;b+40y.test");
}

TEST(Rcpt, PolicyRejectAndTooMany) {
  Harness h(plain());
  h.rcpt_policy = [](const Recipient& r) -> std::optional<Reply> {
    if (r.path.mailbox.domain == "far.test") return Reply(554, "5.7.1", "Relay access denied");
    return std::nullopt;
  };
  ready(h);
  h.run("MAIL FROM:<a@x.test>\r\n");
  EXPECT_EQ(h.run("RCPT TO:<b@far.test>\r\n"), "554 5.7.1 Relay access denied\r\n");
  EXPECT_EQ(h.run("RCPT TO:<1@y.test>\r\nRCPT TO:<2@y.test>\r\nRCPT TO:<3@y.test>\r\nRCPT TO:<4@y.test>\r\n"),
            "250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n452 4.5.3 Too many recipients\r\n");
  EXPECT_EQ(h.session.envelope().recipients.size(), 3u);
}

TEST(Data, Sequence) {
  Harness h(plain());
  ready(h);
  EXPECT_EQ(h.run("DATA\r\n"), "503 5.5.1 Need MAIL command\r\n");
  h.run("MAIL FROM:<a@x.test>\r\n");
  EXPECT_EQ(h.run("DATA\r\n"), "503 5.5.1 Need RCPT command\r\n");
  EXPECT_EQ(h.run("DATA now\r\n"), "501 5.5.4 Syntax: DATA\r\n");
}

TEST(Data, NoValidRecipients) {
  Harness h(plain());
  h.rcpt_policy = [](const Recipient&) -> std::optional<Reply> { return Reply(554, "5.7.1", "Relay access denied"); };
  ready(h);
  EXPECT_EQ(h.run("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n"),
            "250 2.1.0 Ok\r\n554 5.7.1 Relay access denied\r\n554 5.5.1 No valid recipients\r\n");
}

TEST(Data, StoresUnstuffedMessage) {
  Harness h(plain());
  ready(h);
  EXPECT_EQ(h.run("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n"),
            "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n");
  EXPECT_EQ(h.run("Subject: hi\r\n\r\n..dot\r\n.\r\n"), "250 2.0.0 Ok: queued as TESTID\r\n");
  EXPECT_EQ(h.committed, "Subject: hi\r\n\r\n.dot\r\n");
  EXPECT_FALSE(h.session.in_transaction());
}

TEST(Data, PipelinedTransactionInOneRead) {
  Harness h(plain());
  const std::string r = h.run(
      "EHLO c\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<c@y.test>\r\nDATA\r\n");
  EXPECT_THAT(r, HasSubstr("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n354 "));
  EXPECT_EQ(h.run("x\r\n.\r\nMAIL FROM:<a@x.test>\r\nQUIT\r\n"),
            "250 2.0.0 Ok: queued as TESTID\r\n250 2.1.0 Ok\r\n221 2.0.0 Bye\r\n");
  EXPECT_TRUE(h.closed);
}

TEST(Data, CommitFailureIsPassedOn) {
  Harness h(plain());
  h.end_reply = Reply(452, "4.3.1", "Insufficient system storage");
  ready(h);
  EXPECT_THAT(h.run("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\nx\r\n.\r\n"),
              HasSubstr("452 4.3.1 Insufficient system storage\r\n"));
}

TEST(Data, BeginRefused) {
  Harness h(plain());
  h.begin_reply = Reply(452, "4.3.1", "Insufficient system storage");
  ready(h);
  EXPECT_THAT(h.run("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n"),
              HasSubstr("452 4.3.1 Insufficient system storage\r\n"));
  EXPECT_EQ(h.run("NOOP\r\n"), "250 2.0.0 Ok\r\n");
}

TEST(Data, BareLfEndsSession) {
  for (const char* smuggle : {"x\n.\nMAIL FROM:<e@x.test>\r\n", "x\r\n.\nRCPT\r\n", "x\n.\r\n", "x\r.\r\n",
                              "x\r\n.\r\r\n", "a\rb\r\n.\r\n"}) {
    Harness h(plain());
    ready(h);
    open_data(h);
    const std::string r = h.run(smuggle);
    EXPECT_THAT(r, StartsWith("521 5.5.2")) << smuggle;
    EXPECT_TRUE(h.closed) << smuggle;
    EXPECT_EQ(h.commits, 0) << smuggle;
    EXPECT_EQ(h.aborts, 1) << smuggle;
  }
}

TEST(Data, NulAndLongLinesRefused) {
  Harness h(plain());
  ready(h);
  open_data(h);
  EXPECT_EQ(h.run(std::string("a\0b\r\n.\r\n", 8)), "554 5.6.0 Message contains NUL octets (RFC 5322 2.3)\r\n");
  open_data(h);
  EXPECT_EQ(h.run(std::string(999, 'x') + "\r\n.\r\n"),
            "554 5.6.0 Message has a line over 998 octets (RFC 5321 4.5.3.1.6)\r\n");
  open_data(h);
  EXPECT_EQ(h.run(std::string(998, 'x') + "\r\n.\r\n"), "250 2.0.0 Ok: queued as TESTID\r\n");
  EXPECT_EQ(h.commits, 1);
  EXPECT_EQ(h.aborts, 2);
}

TEST(Data, TooBig) {
  Harness h(plain());
  ready(h);
  open_data(h);
  std::string body;
  for (int i = 0; i < 200; ++i) body += std::string(80, 'y') + "\r\n";
  EXPECT_EQ(h.run(body + ".\r\n"), "552 5.3.4 Message size exceeds fixed maximum message size\r\n");
  EXPECT_EQ(h.commits, 0);
  EXPECT_EQ(h.run("NOOP\r\n"), "250 2.0.0 Ok\r\n");
}

TEST(Data, ByteAtATime) {
  Harness h(plain());
  ready(h);
  const std::string in = "MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\nl1\r\n..\r\n.x\r\n.\r\nQUIT\r\n";
  std::string replies;
  for (char c : in) replies += h.run(std::string(1, c));
  EXPECT_THAT(replies, HasSubstr("250 2.0.0 Ok: queued as TESTID\r\n221 2.0.0 Bye\r\n"));
  EXPECT_EQ(h.committed, "l1\r\n.\r\nx\r\n");
}

TEST(Bdat, SingleAndMultipleChunks) {
  Harness h(plain());
  ready(h);
  h.run("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n");
  EXPECT_EQ(h.run("BDAT 5\r\nab\r\n"), "");  // chunk incomplete
  EXPECT_EQ(h.run("c"), "250 2.0.0 Chunk received\r\n");
  EXPECT_EQ(h.run("BDAT 4 LAST\r\nd\r\n."), "250 2.0.0 Ok: queued as TESTID\r\n");
  EXPECT_EQ(h.committed, "ab\r\ncd\r\n.");  // no unstuffing in BDAT
}

TEST(Bdat, ZeroLast) {
  Harness h(plain());
  ready(h);
  h.run("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n");
  EXPECT_EQ(h.run("BDAT 3\r\nx\r\nBDAT 0 LAST\r\n"), "250 2.0.0 Chunk received\r\n250 2.0.0 Ok: queued as TESTID\r\n");
}

TEST(Bdat, WithoutTransactionConsumesChunk) {
  Harness h(plain());
  ready(h);
  EXPECT_EQ(h.run("BDAT 12 LAST\r\nQUIT\r\nQUIT\r\nNOOP\r\n"), "503 5.5.1 Need MAIL command\r\n250 2.0.0 Ok\r\n");
  EXPECT_FALSE(h.closed);
}

TEST(Bdat, SyntaxErrorCloses) {
  Harness h(plain());
  ready(h);
  EXPECT_THAT(h.run("BDAT x\r\n"), StartsWith("501 5.5.4"));
  EXPECT_TRUE(h.closed);
}

TEST(Bdat, DataAfterBdatRefused) {
  Harness h(plain());
  ready(h);
  h.run("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nBDAT 2\r\nab");
  EXPECT_EQ(h.run("DATA\r\n"), "503 5.5.1 DATA not allowed after BDAT\r\n");
}

TEST(Bdat, TooBigAndBareLf) {
  Harness h(plain());
  ready(h);
  h.run("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n");
  EXPECT_EQ(h.run("BDAT 10001\r\n" + std::string(10001, 'x')),
            "552 5.3.4 Message size exceeds fixed maximum message size\r\n");
  EXPECT_EQ(h.commits, 0);
  EXPECT_EQ(h.aborts, 1);
  h.run("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n");
  EXPECT_EQ(h.run("BDAT 3 LAST\r\na\nb"), "554 5.6.0 Message contains bare <CR> or <LF> (RFC 5321 2.3.8)\r\n");
  EXPECT_EQ(h.commits, 0);
}

TEST(Bdat, BeginRefusedConsumesAndFailsLater) {
  Harness h(plain());
  h.begin_reply = Reply(452, "4.3.1", "Insufficient system storage");
  ready(h);
  h.run("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n");
  EXPECT_EQ(h.run("BDAT 3\r\nabc"), "452 4.3.1 Insufficient system storage\r\n");
  EXPECT_EQ(h.run("BDAT 2 LAST\r\nde"), "503 5.5.1 Previous BDAT failed; send RSET\r\n");
  EXPECT_EQ(h.run("RSET\r\n"), "250 2.0.0 Ok\r\n");
}

TEST(Commands, Simple) {
  Harness h(plain());
  ready(h);
  EXPECT_EQ(h.run("NOOP\r\n"), "250 2.0.0 Ok\r\n");
  EXPECT_EQ(h.run("NOOP anything\r\n"), "250 2.0.0 Ok\r\n");
  EXPECT_EQ(h.run("RSET\r\n"), "250 2.0.0 Ok\r\n");
  EXPECT_EQ(h.run("RSET x\r\n"), "501 5.5.4 Syntax: RSET\r\n");
  EXPECT_EQ(h.run("VRFY bob\r\n"),
            "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery\r\n");
  EXPECT_EQ(h.run("VRFY\r\n"), "501 5.5.4 Syntax: VRFY address\r\n");
  EXPECT_THAT(h.run("HELP\r\n"), StartsWith("214 2.0.0 "));
  EXPECT_EQ(h.run("EXPN list\r\n"),
            "502 5.5.1 EXPN is not offered: list membership is not disclosed (RFC 5321 7.3)\r\n");
  EXPECT_EQ(h.run("ETRN x\r\n"), "502 5.5.1 ETRN is not offered: the queue retries by itself (RFC 1985)\r\n");
  for (const char* v : {"TURN", "ATRN x", "SEND FROM:<a@b>", "SOML FROM:<a@b>", "SAML FROM:<a@b>"}) {
    EXPECT_THAT(h.run(std::string(v) + "\r\n"), StartsWith("502 5.5.1 ")) << v;
  }
  EXPECT_EQ(h.run("FOO\r\n"), "500 5.5.2 Command unrecognized\r\n");
  EXPECT_EQ(h.run("QUIT now\r\n"), "501 5.5.4 Syntax: QUIT\r\n");
  EXPECT_EQ(h.run("quit\r\n"), "221 2.0.0 Bye\r\n");
  EXPECT_TRUE(h.closed);
}

TEST(Commands, RsetEndsTransaction) {
  Harness h(plain());
  ready(h);
  h.run("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nRSET\r\n");
  EXPECT_EQ(h.run("DATA\r\n"), "503 5.5.1 Need MAIL command\r\n");
}

TEST(Lines, TooLong) {
  Harness h(plain());
  ready(h);
  EXPECT_EQ(h.run("NOOP " + std::string(600, 'x') + "\r\n"), "500 5.5.2 Line too long (RFC 5321 4.5.3.1.4)\r\n");
  // A line longer than any buffer: refused once, discarded up to its end.
  EXPECT_EQ(h.run(std::string(20000, 'y')), "500 5.5.2 Line too long (RFC 5321 4.5.3.1.4)\r\n");
  EXPECT_EQ(h.run(std::string(20000, 'y')), "");
  EXPECT_EQ(h.run("zz\r\nNOOP\r\n"), "250 2.0.0 Ok\r\n");
}

TEST(Lines, MailMayExceed512) {
  Harness h(plain());
  ready(h);
  const std::string envid(100, 'e');
  EXPECT_EQ(h.run("MAIL FROM:<" + std::string(60, 'a') + "@" + std::string(180, 'b') + ".test> ENVID=" + envid +
                  " RET=FULL SIZE=1000 BODY=8BITMIME SMTPUTF8 AUTH=" + std::string(200, 'c') + "\r\n"),
            "250 2.1.0 Ok\r\n");
}

TEST(Lines, BareLfAndCrInCommands) {
  {
    Harness h(plain());
    EXPECT_THAT(h.run("EHLO x\n"), StartsWith("521 5.5.2"));
    EXPECT_TRUE(h.closed);
  }
  {
    Harness h(plain());
    EXPECT_THAT(h.run("EHLO x\rNOOP\r\n"), StartsWith("521 5.5.2"));
    EXPECT_TRUE(h.closed);
  }
}

TEST(Lines, NulInCommand) {
  Harness h(plain());
  EXPECT_EQ(h.run(std::string("NO\0OP\r\n", 7)), "500 5.5.2 NUL octet in command\r\n");
}

TEST(Errors, BudgetEndsSession) {
  SessionSettings s = plain();
  s.max_errors = 3;
  Harness h(s);
  EXPECT_EQ(h.run("X\r\nY\r\nZ\r\nNOOP\r\n"),
            "500 5.5.2 Command unrecognized\r\n500 5.5.2 Command unrecognized\r\n"
            "500 5.5.2 Command unrecognized\r\n421 4.7.0 mx.test Error: too many errors\r\n");
  EXPECT_TRUE(h.closed);
}

TEST(StartTls, DiscardsPipelinedPlaintext) {
  Harness h(plain());
  ready(h);
  // CVE-2011-0411: the MAIL injected after STARTTLS must not be executed.
  EXPECT_EQ(h.run("STARTTLS\r\nMAIL FROM:<evil@x.test>\r\n"), "220 2.0.0 Ready to start TLS\r\n");
  EXPECT_EQ(h.tls_handshakes, 1);
  EXPECT_TRUE(h.session.in_tls());
  EXPECT_FALSE(h.session.in_transaction());
  EXPECT_EQ(h.run("MAIL FROM:<a@x.test>\r\n"), "503 5.5.1 Send HELO/EHLO first\r\n");
  ready(h);
  EXPECT_EQ(h.run("STARTTLS\r\n"), "503 5.5.1 TLS already active\r\n");
}

TEST(StartTls, ArgumentsAndUnavailable) {
  SessionSettings s = plain();
  s.tls_available = false;
  Harness h(s);
  EXPECT_THAT(ready(h), Not(HasSubstr("STARTTLS")));
  EXPECT_EQ(h.run("STARTTLS x\r\n"), "501 5.5.4 Syntax: STARTTLS\r\n");
  EXPECT_EQ(h.run("STARTTLS\r\n"), "502 5.5.1 STARTTLS not available\r\n");
}

SessionSettings with_auth() {
  SessionSettings s = plain();
  s.auth_available = true;
  return s;
}

void tls_ready(Harness& h) {
  h.run("EHLO c\r\nSTARTTLS\r\n");
  h.run("EHLO c\r\n");
}

TEST(Auth, RequiresTls) {
  Harness h(with_auth());
  ready(h);
  EXPECT_EQ(h.run("AUTH PLAIN AGJvYgBzZWNyZXQ=\r\n"),
            "538 5.7.11 Encryption required for requested authentication mechanism\r\n");
}

TEST(Auth, NotAvailable) {
  Harness h(plain());
  tls_ready(h);
  EXPECT_EQ(h.run("AUTH PLAIN AGJvYgBzZWNyZXQ=\r\n"), "502 5.5.1 AUTH not available\r\n");
}

TEST(Auth, PlainInitialResponse) {
  Harness h(with_auth());
  tls_ready(h);
  EXPECT_EQ(h.run("AUTH PLAIN AGJvYgBzZWNyZXQ=\r\n"), "235 2.7.0 Authentication successful\r\n");  // \0bob\0secret
  EXPECT_EQ(h.last_auth.username, "bob");
  EXPECT_EQ(h.last_auth.password, "secret");
  EXPECT_EQ(h.session.auth_user(), "bob");
  EXPECT_EQ(h.run("AUTH PLAIN AGJvYgBzZWNyZXQ=\r\n"), "503 5.5.1 Already authenticated\r\n");
}

TEST(Auth, PlainChallenge) {
  Harness h(with_auth());
  tls_ready(h);
  EXPECT_EQ(h.run("AUTH PLAIN\r\n"), "334 \r\n");
  EXPECT_EQ(h.run("Ym9iAGJvYgBzZWNyZXQ=\r\n"), "235 2.7.0 Authentication successful\r\n");  // bob\0bob\0secret
  EXPECT_EQ(h.last_auth.authzid, "bob");
}

TEST(Auth, Login) {
  Harness h(with_auth());
  tls_ready(h);
  EXPECT_EQ(h.run("AUTH LOGIN\r\n"), "334 VXNlcm5hbWU6\r\n");
  EXPECT_EQ(h.run("Ym9i\r\n"), "334 UGFzc3dvcmQ6\r\n");
  EXPECT_EQ(h.run("c2VjcmV0\r\n"), "235 2.7.0 Authentication successful\r\n");
  EXPECT_EQ(h.last_auth.username, "bob");
  EXPECT_EQ(h.last_auth.mechanism, "LOGIN");
}

TEST(Auth, LoginInitialResponse) {
  Harness h(with_auth());
  tls_ready(h);
  EXPECT_EQ(h.run("AUTH LOGIN Ym9i\r\n"), "334 UGFzc3dvcmQ6\r\n");
  EXPECT_EQ(h.run("c2VjcmV0\r\n"), "235 2.7.0 Authentication successful\r\n");
}

TEST(Auth, Failures) {
  Harness h(with_auth());
  h.auth_ok = false;
  tls_ready(h);
  EXPECT_EQ(h.run("AUTH PLAIN AGJvYgB3cm9uZw==\r\n"), "535 5.7.8 Authentication credentials invalid\r\n");
  EXPECT_FALSE(h.session.authenticated());
  EXPECT_EQ(h.run("AUTH CRAM-MD5\r\n"), "504 5.5.4 Unrecognized authentication mechanism\r\n");
  EXPECT_EQ(h.run("AUTH PLAIN !!!\r\n"), "501 5.5.2 Invalid base64 data\r\n");
  EXPECT_EQ(h.run("AUTH PLAIN Ym9i\r\n"), "501 5.5.2 Invalid PLAIN response\r\n");
  EXPECT_EQ(h.run("AUTH LOGIN\r\n"), "334 VXNlcm5hbWU6\r\n");
  EXPECT_EQ(h.run("*\r\n"), "501 5.0.0 Authentication cancelled\r\n");
  h.run("MAIL FROM:<a@x.test>\r\n");
  EXPECT_EQ(h.run("AUTH PLAIN AGJvYgBzZWNyZXQ=\r\n"), "503 5.5.1 AUTH not permitted during a mail transaction\r\n");
}

TEST(Auth, NeedsEhlo) {
  Harness h(with_auth());
  h.run("EHLO c\r\nSTARTTLS\r\n");
  h.run("HELO c\r\n");
  EXPECT_EQ(h.run("AUTH PLAIN AGJvYgBzZWNyZXQ=\r\n"), "503 5.5.1 Send EHLO first\r\n");
}

TEST(Submission, RequiresTlsThenAuth) {
  SessionSettings s = with_auth();
  s.require_tls = true;
  s.require_auth = true;
  Harness h(s);
  ready(h);
  EXPECT_EQ(h.run("MAIL FROM:<a@x.test>\r\n"), "530 5.7.0 Must issue a STARTTLS command first\r\n");
  h.run("STARTTLS\r\n");
  h.run("EHLO c\r\n");
  EXPECT_EQ(h.run("MAIL FROM:<a@x.test>\r\n"), "530 5.7.0 Authentication required\r\n");
  h.run("AUTH PLAIN AGJvYgBzZWNyZXQ=\r\n");
  EXPECT_EQ(h.run("MAIL FROM:<a@x.test>\r\n"), "250 2.1.0 Ok\r\n");
}

TEST(Smtps, StartsInTls) {
  SessionSettings s = with_auth();
  s.implicit_tls = true;
  Harness h(s);
  const std::string r = ready(h);
  EXPECT_THAT(r, HasSubstr("AUTH PLAIN LOGIN"));
  EXPECT_THAT(r, Not(HasSubstr("STARTTLS")));
}

TEST(Ending, Timeout) {
  Harness h(plain());
  ready(h);
  h.session.timeout();
  EXPECT_EQ(h.pump(), "421 4.4.2 mx.test Error: timeout exceeded\r\n");
  EXPECT_TRUE(h.closed);
}

TEST(Ending, ShutdownMidData) {
  Harness h(plain());
  ready(h);
  h.run("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\npartial");
  h.session.shutdown();
  EXPECT_EQ(h.pump(), "421 4.3.2 mx.test Service shutting down\r\n");
  EXPECT_EQ(h.aborts, 1);
  EXPECT_EQ(h.commits, 0);
  EXPECT_TRUE(h.closed);
}

TEST(Ending, AbortedTransactionIsReported) {
  // Whatever ends a message in progress, the driver can log the envelope
  // and the reply of that transaction, not of an earlier one.
  for (int how = 0; how < 3; ++how) {
    Harness h(plain());
    ready(h);
    h.run("MAIL FROM:<first@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\nx\r\n.\r\n");
    h.run("MAIL FROM:<second@x.test>\r\nRCPT TO:<c@y.test>\r\nDATA\r\npartial");
    if (how == 0) h.session.timeout();
    if (how == 1) h.session.shutdown();
    h.run(how == 2 ? "bare\nLF" : "");
    EXPECT_EQ(h.aborts, 1) << how;
    EXPECT_EQ(h.session.last_envelope().sender.str(), "second@x.test") << how;
    EXPECT_EQ(h.session.last_reply().code, how == 2 ? 521 : 421) << how;
  }
}

TEST(Ending, FlushWhenOutputGrows) {
  Harness h(plain());
  ready(h);
  std::string many;
  for (int i = 0; i < 3000; ++i) many += "NOOP\r\n";
  h.run(many);
  EXPECT_NE(h.events.find('f'), std::string::npos);
}

}  // namespace
}  // namespace smtpd::smtp
