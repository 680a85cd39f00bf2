// The SMTP/LMTP client state machine against scripted server replies.
#include "lib/smtp/client_session.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "lib/smtp/reply_parser.h"

namespace smtpd::smtp {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

const char* kEhloFull =
    "250-mx.test\r\n250-PIPELINING\r\n250-SIZE 1000000\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n"
    "250-ENHANCEDSTATUSCODES\r\n250-DSN\r\n250 STARTTLS\r\n";

Recipient rcpt(const std::string& local, const std::string& domain, uint8_t notify = 0) {
  Recipient r;
  r.path.mailbox = {local, domain, false};
  r.notify = notify;
  return r;
}

OutboundMessage message(size_t recipients = 1) {
  OutboundMessage m;
  m.sender.mailbox = {"a", "x.test", false};
  for (size_t i = 0; i < recipients; ++i) m.recipients.push_back(rcpt("r" + std::to_string(i), "y.test"));
  m.size = 100;
  return m;
}

// Drives the machine: server replies in, client commands out.
struct Fake {
  explicit Fake(ClientSettings s = ClientSettings()) : c(std::move(s)) {}
  // Feeds server text and runs until the machine needs more input or has
  // something else to say; returns what the client wrote meanwhile.
  std::string server(const std::string& text) {
    c.feed(text);
    return run();
  }
  std::string run() {
    std::string written;
    while (true) {
      last = c.next();
      written += c.output();
      c.output().clear();
      if (last == ClientEvent::kBody) {
        const bool final_piece = body_pos + chunk >= body.size();
        c.body(std::string_view(body).substr(body_pos, chunk), final_piece);
        body_pos += chunk;
        continue;
      }
      if (last == ClientEvent::kStartTls && auto_tls) {
        written += "<TLS>";
        c.tls_started();
        continue;
      }
      return written;
    }
  }
  ClientSession c;
  ClientEvent last = ClientEvent::kNeedInput;
  std::string body = "Subject: t\r\n\r\nhello\r\n";
  size_t body_pos = 0;
  size_t chunk = 1 << 20;
  bool auto_tls = true;
};

ClientSettings no_tls() {
  ClientSettings s;
  s.helo_name = "client.test";
  s.tls = TlsPolicy::kNone;
  return s;
}

TEST(ReplyParser, SingleMultiAndEnhanced) {
  ReplyParser p;
  p.feed("250-first\r\n250-second\r\n250 2.1.0 last\r\n550 5.1.1 No such user\r\n421\r\n");
  Reply r;
  ASSERT_EQ(p.next(r), ReplyParser::Status::kReply);
  EXPECT_EQ(r.code, 250);
  EXPECT_EQ(r.lines.size(), 3u);
  ASSERT_EQ(p.next(r), ReplyParser::Status::kReply);
  EXPECT_EQ(r.enhanced, "5.1.1");
  EXPECT_EQ(r.lines.front(), "No such user");
  ASSERT_EQ(p.next(r), ReplyParser::Status::kReply);
  EXPECT_EQ(r.code, 421);
  EXPECT_EQ(p.next(r), ReplyParser::Status::kNeedMore);
}

TEST(ReplyParser, EnhancedCodeMustMatchClass) {
  ReplyParser p;
  p.feed("550 4.1.1 mismatched\r\n");
  Reply r;
  ASSERT_EQ(p.next(r), ReplyParser::Status::kReply);
  EXPECT_EQ(r.enhanced, "");
}

TEST(ReplyParser, Errors) {
  for (const char* bad : {"hello\r\n", "250-a\r\n251 b\r\n", "2x0 a\r\n", "600 x\r\n", "250x\r\n"}) {
    ReplyParser p;
    p.feed(bad);
    Reply r;
    EXPECT_EQ(p.next(r), ReplyParser::Status::kError) << bad;
  }
  ReplyParser p;
  p.feed(std::string(10000, '2'));
  Reply r;
  EXPECT_EQ(p.next(r), ReplyParser::Status::kError);
}

TEST(Client, PipelinedTransaction) {
  Fake f(no_tls());
  EXPECT_EQ(f.server("220 mx.test ESMTP\r\n"), "EHLO client.test\r\n");
  EXPECT_EQ(f.server(kEhloFull), "");
  EXPECT_EQ(f.last, ClientEvent::kReady);
  EXPECT_TRUE(f.c.capabilities().pipelining);
  EXPECT_EQ(f.c.capabilities().size, 1000000u);
  f.c.send(message(2));
  EXPECT_EQ(f.run(), "MAIL FROM:<a@x.test> SIZE=100\r\nRCPT TO:<r0@y.test>\r\nRCPT TO:<r1@y.test>\r\nDATA\r\n");
  f.body = "Subject: t\r\n\r\n.dot\r\nlast";
  EXPECT_EQ(f.server("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n550 5.1.1 no\r\n354 go\r\n"),
            "Subject: t\r\n\r\n..dot\r\nlast\r\n.\r\n");
  EXPECT_EQ(f.server("250 2.0.0 queued as X\r\n"), "");
  EXPECT_EQ(f.last, ClientEvent::kTransactionDone);
  ASSERT_EQ(f.c.results().size(), 2u);
  EXPECT_EQ(f.c.results()[0].code, 250);
  EXPECT_EQ(f.c.results()[0].enhanced, "2.0.0");
  EXPECT_EQ(f.c.results()[1].code, 550);
  EXPECT_EQ(f.c.results()[1].enhanced, "5.1.1");
  // The connection carries the next message (no RSET after success).
  EXPECT_EQ(f.run(), "");
  EXPECT_EQ(f.last, ClientEvent::kReady);
  f.c.send(message(1));
  EXPECT_THAT(f.run(), ::testing::StartsWith("MAIL FROM:"));
  f.c.quit();
}

TEST(Client, WithoutPipeliningOneCommandAtATime) {
  Fake f(no_tls());
  f.server("220 mx\r\n");
  f.server("250-mx\r\n250 8BITMIME\r\n");
  f.c.send(message(2));
  EXPECT_EQ(f.run(), "MAIL FROM:<a@x.test>\r\n");
  EXPECT_EQ(f.server("250 ok\r\n"), "RCPT TO:<r0@y.test>\r\n");
  EXPECT_EQ(f.server("250 ok\r\n"), "RCPT TO:<r1@y.test>\r\n");
  EXPECT_EQ(f.server("250 ok\r\n"), "DATA\r\n");
  EXPECT_THAT(f.server("354 go\r\n"), HasSubstr("hello\r\n.\r\n"));
  f.server("250 ok\r\n");
  EXPECT_EQ(f.last, ClientEvent::kTransactionDone);
}

TEST(Client, HeloFallback) {
  Fake f(no_tls());
  f.server("220 old\r\n");
  EXPECT_EQ(f.server("502 5.5.1 what?\r\n"), "HELO client.test\r\n");
  f.server("250 old\r\n");
  EXPECT_EQ(f.last, ClientEvent::kReady);
  EXPECT_FALSE(f.c.capabilities().esmtp);
  f.c.send(message());
  EXPECT_EQ(f.run(), "MAIL FROM:<a@x.test>\r\n");  // no SIZE without the extension
}

TEST(Client, RefusedGreeting) {
  Fake f(no_tls());
  EXPECT_EQ(f.server("554 5.7.1 go away\r\n"), "QUIT\r\n");
  EXPECT_EQ(f.last, ClientEvent::kFailed);
  EXPECT_EQ(f.c.session_error().code, 554);
}

TEST(Client, StartTlsDropsInjectedReplies) {
  ClientSettings s;
  s.helo_name = "c";
  Fake f(s);
  f.server("220 mx\r\n");
  EXPECT_EQ(f.server(kEhloFull), "STARTTLS\r\n");
  // A malicious server pipelines a fake reply behind its 220: dropped.
  EXPECT_EQ(f.server("220 go ahead\r\n250 fake reply injected in plaintext\r\n"), "<TLS>EHLO c\r\n");
  EXPECT_TRUE(f.c.in_tls());
  f.server("250-mx\r\n250 PIPELINING\r\n");
  EXPECT_EQ(f.last, ClientEvent::kReady);
}

TEST(Client, TlsRequiredButNotOffered) {
  ClientSettings s;
  s.tls = TlsPolicy::kEncrypt;
  Fake f(s);
  f.server("220 mx\r\n");
  f.server("250-mx\r\n250 PIPELINING\r\n");
  EXPECT_EQ(f.last, ClientEvent::kFailed);
  EXPECT_EQ(f.c.session_error().enhanced, "4.7.4");
}

TEST(Client, StartTlsRefusedIsOpportunistic) {
  Fake f{ClientSettings()};
  f.server("220 mx\r\n");
  f.server(kEhloFull);
  f.server("454 4.7.0 TLS not available\r\n");
  EXPECT_EQ(f.last, ClientEvent::kReady);
  EXPECT_FALSE(f.c.in_tls());
}

TEST(Client, AuthPlainAfterTls) {
  ClientSettings s;
  s.auth_user = "bob";
  s.auth_password = "secret";
  Fake f(s);
  f.server("220 mx\r\n");
  f.server(kEhloFull);
  f.server("220 go\r\n");
  EXPECT_EQ(f.server("250-mx\r\n250 AUTH PLAIN LOGIN\r\n"), "AUTH PLAIN AGJvYgBzZWNyZXQ=\r\n");
  f.server("235 2.7.0 ok\r\n");
  EXPECT_EQ(f.last, ClientEvent::kReady);
}

TEST(Client, AuthLoginAndFailure) {
  ClientSettings s;
  s.auth_user = "bob";
  s.auth_password = "secret";
  s.implicit_tls = true;
  Fake f(s);
  f.server("220 mx\r\n");
  EXPECT_EQ(f.server("250-mx\r\n250 AUTH LOGIN\r\n"), "AUTH LOGIN\r\n");
  EXPECT_EQ(f.server("334 VXNlcm5hbWU6\r\n"), "Ym9i\r\n");
  EXPECT_EQ(f.server("334 UGFzc3dvcmQ6\r\n"), "c2VjcmV0\r\n");
  f.server("535 5.7.8 bad\r\n");
  EXPECT_EQ(f.last, ClientEvent::kFailed);
  EXPECT_EQ(f.c.session_error().code, 450);  // our configuration: defer, never bounce
}

TEST(Client, NoCredentialsInPlaintext) {
  ClientSettings s = no_tls();
  s.auth_user = "bob";
  s.auth_password = "secret";
  Fake f(s);
  f.server("220 mx\r\n");
  EXPECT_EQ(f.server("250-mx\r\n250 AUTH PLAIN\r\n"), "QUIT\r\n");
  EXPECT_EQ(f.last, ClientEvent::kFailed);
}

TEST(Client, RefusedBeforeSending) {
  Fake f(no_tls());
  f.server("220 mx\r\n");
  f.server("250-mx\r\n250 SIZE 50\r\n");
  OutboundMessage utf8 = message();
  utf8.smtputf8 = true;
  f.c.send(utf8);
  EXPECT_EQ(f.run(), "");
  EXPECT_EQ(f.last, ClientEvent::kTransactionDone);
  EXPECT_EQ(f.c.results()[0].enhanced, "5.6.7");
  f.run();
  OutboundMessage eight = message();
  eight.eight_bit = true;
  f.c.send(eight);
  f.run();
  EXPECT_EQ(f.c.results()[0].enhanced, "5.6.3");
  f.run();
  f.c.send(message());  // 100 octets > SIZE 50
  f.run();
  EXPECT_EQ(f.c.results()[0].enhanced, "5.3.4");
}

TEST(Client, MailRefusedThenRset) {
  Fake f(no_tls());
  f.server("220 mx\r\n");
  f.server(kEhloFull);
  f.c.send(message(2));
  f.run();
  EXPECT_EQ(f.server("451 4.3.0 try later\r\n503 5.5.1 no MAIL\r\n503 5.5.1 no MAIL\r\n503 5.5.1 no\r\n"), "");
  EXPECT_EQ(f.last, ClientEvent::kTransactionDone);
  EXPECT_EQ(f.c.results()[0].code, 451);
  EXPECT_EQ(f.c.results()[1].code, 451);
  f.run();
  f.c.send(message());
  EXPECT_EQ(f.run(), "RSET\r\n");
  EXPECT_THAT(f.server("250 ok\r\n"), ::testing::StartsWith("MAIL FROM:"));
}

TEST(Client, AllRecipientsRefused) {
  Fake f(no_tls());
  f.server("220 mx\r\n");
  f.server(kEhloFull);
  f.c.send(message(1));
  f.run();
  EXPECT_EQ(f.server("250 ok\r\n550 5.1.1 unknown\r\n554 5.5.1 no valid recipients\r\n"), "");
  EXPECT_EQ(f.last, ClientEvent::kTransactionDone);
  EXPECT_EQ(f.c.results()[0].enhanced, "5.1.1");
}

TEST(Client, Chunking) {
  Fake f(no_tls());
  f.chunk = 10;
  f.body = "0123456789abcdefghij..xyz";
  f.server("220 mx\r\n");
  f.server("250-mx\r\n250-PIPELINING\r\n250 CHUNKING\r\n");
  f.c.send(message(1));
  EXPECT_EQ(f.run(), "MAIL FROM:<a@x.test>\r\nRCPT TO:<r0@y.test>\r\n");
  EXPECT_EQ(f.server("250 ok\r\n250 ok\r\n"), "BDAT 10\r\n0123456789");
  EXPECT_EQ(f.server("250 ok\r\n"), "BDAT 10\r\nabcdefghij");
  EXPECT_EQ(f.server("250 ok\r\n"), "BDAT 5 LAST\r\n..xyz");
  f.server("250 2.0.0 done\r\n");
  EXPECT_EQ(f.last, ClientEvent::kTransactionDone);
  EXPECT_EQ(f.c.results()[0].code, 250);
}

TEST(Client, DotStuffingAcrossChunks) {
  Fake f(no_tls());
  f.chunk = 3;
  f.body = "a\r\n.b\r\n..c";
  f.server("220 mx\r\n");
  f.server("250-mx\r\n250 PIPELINING\r\n");
  f.c.send(message(1));
  f.run();
  EXPECT_EQ(f.server("250 ok\r\n250 ok\r\n354 go\r\n"), "a\r\n..b\r\n...c\r\n.\r\n");
}

TEST(Client, DsnParametersOnlyWhenOffered) {
  OutboundMessage m = message(1);
  m.recipients[0].notify = kNotifyFailure | kNotifyDelay;
  m.recipients[0].orcpt = "rfc822;r0+40y.test";
  m.ret = DsnRet::kHdrs;
  m.envid = "ID1";
  {
    Fake f(no_tls());
    f.server("220 mx\r\n");
    f.server(kEhloFull);
    f.c.send(m);
    EXPECT_EQ(f.run(),
              "MAIL FROM:<a@x.test> SIZE=100 RET=HDRS ENVID=ID1\r\n"
              "RCPT TO:<r0@y.test> NOTIFY=FAILURE,DELAY ORCPT=rfc822;r0+40y.test\r\nDATA\r\n");
  }
  {
    Fake f(no_tls());
    f.server("220 mx\r\n");
    f.server("250-mx\r\n250 PIPELINING\r\n");
    f.c.send(m);
    EXPECT_EQ(f.run(), "MAIL FROM:<a@x.test>\r\nRCPT TO:<r0@y.test>\r\nDATA\r\n");
  }
}

TEST(Client, LmtpRepliesPerRecipient) {
  ClientSettings s = no_tls();
  s.lmtp = true;
  Fake f(s);
  EXPECT_EQ(f.server("220 lmtp\r\n"), "LHLO client.test\r\n");
  f.server("250-lmtp\r\n250 PIPELINING\r\n");
  f.c.send(message(3));
  f.run();
  f.server("250 ok\r\n250 ok\r\n550 5.1.1 unknown\r\n250 ok\r\n354 go\r\n");
  EXPECT_EQ(f.server("250 2.0.0 r0 delivered\r\n"), "");
  EXPECT_EQ(f.last, ClientEvent::kNeedInput);  // one more reply is due
  f.server("452 4.2.2 r2 mailbox full\r\n");
  EXPECT_EQ(f.last, ClientEvent::kTransactionDone);
  EXPECT_EQ(f.c.results()[0].lines.front(), "r0 delivered");
  EXPECT_EQ(f.c.results()[1].code, 550);
  EXPECT_EQ(f.c.results()[2].code, 452);
}

TEST(Client, LmtpHasNoHeloFallback) {
  ClientSettings s = no_tls();
  s.lmtp = true;
  Fake f(s);
  f.server("220 lmtp\r\n");
  f.server("500 what\r\n");
  EXPECT_EQ(f.last, ClientEvent::kFailed);
}

TEST(Client, MalformedReplyFailsSession) {
  Fake f(no_tls());
  f.server("220 mx\r\n");
  f.server(kEhloFull);
  f.c.send(message(1));
  f.run();
  f.server("HTTP/1.1 400 Bad Request\r\n");
  EXPECT_EQ(f.last, ClientEvent::kFailed);
  EXPECT_EQ(f.c.results()[0].enhanced, "4.5.0");
}

TEST(Client, UnsolicitedCloseWhileIdle) {
  Fake f(no_tls());
  f.server("220 mx\r\n");
  f.server(kEhloFull);
  EXPECT_EQ(f.last, ClientEvent::kReady);
  f.server("421 4.4.2 idle timeout\r\n");
  EXPECT_EQ(f.last, ClientEvent::kFailed);
  EXPECT_EQ(f.c.session_error().code, 421);
}

TEST(Client, DataRefusedAfterAccept) {
  Fake f(no_tls());
  f.server("220 mx\r\n");
  f.server(kEhloFull);
  f.c.send(message(1));
  f.run();
  f.server("250 ok\r\n250 ok\r\n354 go\r\n");
  f.server("554 5.6.0 content rejected\r\n");
  EXPECT_EQ(f.last, ClientEvent::kTransactionDone);
  EXPECT_EQ(f.c.results()[0].code, 554);
}

TEST(Client, Quit) {
  Fake f(no_tls());
  f.server("220 mx\r\n");
  f.server(kEhloFull);
  f.c.quit();
  EXPECT_EQ(f.run(), "QUIT\r\n");
  f.server("221 bye\r\n");
  EXPECT_EQ(f.last, ClientEvent::kClosed);
}

TEST(Xtext, Encode) { EXPECT_EQ(xtext_encode("a+b=c d\xc3\xa9"), "a+2Bb+3Dc+20d+C3+A9"); }

}  // namespace
}  // namespace smtpd::smtp
