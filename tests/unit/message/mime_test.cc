#include "lib/message/mime.h"

#include <gtest/gtest.h>

#include "absl/strings/escaping.h"

namespace smtpd::message {
namespace {

std::vector<std::string> lines(const std::string& s) {
  std::vector<std::string> out;
  size_t pos = 0;
  while (pos < s.size()) {
    size_t eol = s.find("\r\n", pos);
    EXPECT_NE(eol, std::string::npos) << "every line ends with CRLF";
    if (eol == std::string::npos) break;
    out.push_back(s.substr(pos, eol - pos));
    pos = eol + 2;
  }
  return out;
}

TEST(QuotedPrintable, Rules) {
  EXPECT_EQ(quoted_printable("plain text\r\n"), "plain text\r\n");
  EXPECT_EQ(quoted_printable("a=b\r\n"), "a=3Db\r\n");
  EXPECT_EQ(quoted_printable("caf\xc3\xa9\r\n"), "caf=C3=A9\r\n");
  EXPECT_EQ(quoted_printable("trailing \r\n"), "trailing=20\r\n");  // RFC 2045 6.7 (3)
  const std::string q = quoted_printable(std::string(200, 'x') + "\r\n");
  for (const std::string& l : lines(q)) EXPECT_LE(l.size(), 76u);
  // An encoded octet is never split by a soft break.
  const std::string q2 = quoted_printable(std::string(74, 'x') + "\xc3\xa9\xc3\xa9\r\n");
  EXPECT_EQ(q2, std::string(74, 'x') + "=\r\n=C3=A9=C3=A9\r\n");
}

TEST(Base64Lines, WrappedAt76) {
  const std::string data(1000, '\x01');
  const std::string b = base64_lines(data);
  std::string joined;
  for (const std::string& l : lines(b)) {
    EXPECT_LE(l.size(), 76u);
    joined += l;
  }
  std::string back;
  ASSERT_TRUE(absl::Base64Unescape(joined, &back));
  EXPECT_EQ(back, data);
}

TEST(EncodedWords, ShortAndWhole) {
  const std::string s = "Grüße aus Köln, ein recht langer Betreff mit Umlauten: äöü ÄÖÜ ß — und mehr 日本語";
  const std::string enc = encode_words(s, 9);
  std::string decoded;
  size_t pos = 0;
  bool first = true;
  for (const std::string& l : lines(enc + "\r\n")) {
    std::string w = first ? l : l.substr(1);  // continuation lines start with a space
    EXPECT_LE(w.size(), 75u);
    if (first) {
      EXPECT_LE(9 + w.size(), 76u);
    }
    first = false;
    ASSERT_EQ(w.substr(0, 10), "=?UTF-8?B?");
    std::string part;
    ASSERT_TRUE(absl::Base64Unescape(w.substr(10, w.size() - 12), &part));
    // Every word holds whole UTF-8 characters (RFC 2047 5(3)).
    EXPECT_NE(static_cast<unsigned char>(part[0]) & 0xC0, 0x80);
    decoded += part;
    pos++;
  }
  EXPECT_EQ(decoded, s);
  EXPECT_GT(pos, 1u);
}

MimeMessage sample() {
  MimeMessage m;
  m.from = {"alice@example.test", "Alice Example"};
  m.to = {{"bob@example.test", ""}, {"carol@example.test", "Carol \"C\" Q"}};
  m.subject = "Hello";
  m.hostname = "mx.test";
  m.unix_seconds = 1780000000;
  return m;
}

TEST(BuildMessage, TextOnly) {
  MimeMessage m = sample();
  m.text = "Hi Bob\nsecond line\n";
  auto b = build_message(m);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_NE(b->data.find("From: Alice Example <alice@example.test>\r\n"), std::string::npos);
  EXPECT_NE(b->data.find("To: bob@example.test, \"Carol \\\"C\\\" Q\" <carol@example.test>\r\n"), std::string::npos);
  EXPECT_NE(b->data.find("Message-ID: " + b->message_id + "\r\n"), std::string::npos);
  EXPECT_NE(b->data.find("Date: "), std::string::npos);
  EXPECT_NE(b->data.find("Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 7bit\r\n\r\n"
                         "Hi Bob\r\nsecond line\r\n"),
            std::string::npos);
  EXPECT_EQ(b->data.find("multipart"), std::string::npos);
  EXPECT_FALSE(b->utf8);
  for (const std::string& l : lines(b->data)) EXPECT_LE(l.size(), 78u) << l;
}

TEST(BuildMessage, AlternativeInsideMixed) {
  MimeMessage m = sample();
  m.subject = "Prüfung";
  m.text = "Grüße";
  m.html = "<p>Grüße</p>";
  m.attachments = {{"report.pdf", "application/pdf", std::string("%PDF\0\xff", 6), ""},
                   {"bild ä.png", "image/png", "png", "logo@x.test"}};
  auto b = build_message(m);
  ASSERT_TRUE(b.ok()) << b.status();
  const std::string& d = b->data;
  EXPECT_NE(d.find("Subject: =?UTF-8?B?"), std::string::npos);
  EXPECT_NE(d.find("Content-Type: multipart/mixed;"), std::string::npos);
  EXPECT_NE(d.find("Content-Type: multipart/alternative;"), std::string::npos);
  EXPECT_NE(d.find("Content-Transfer-Encoding: quoted-printable\r\n\r\nGr=C3=BC=C3=9Fe\r\n"), std::string::npos);
  EXPECT_NE(d.find("filename=\"report.pdf\""), std::string::npos);
  EXPECT_NE(d.find("filename*=UTF-8''bild%20%C3%A4.png"), std::string::npos);
  EXPECT_NE(d.find("Content-ID: <logo@x.test>\r\nContent-Disposition: inline"), std::string::npos);
  EXPECT_NE(d.find(base64_lines(std::string("%PDF\0\xff", 6))), std::string::npos);
  for (const std::string& l : lines(d)) {
    EXPECT_LE(l.size(), 78u) << l;
    for (char c : l) EXPECT_LT(static_cast<unsigned char>(c), 0x80) << "everything is 7bit: " << l;
  }
}

TEST(BuildMessage, RefusesWhatCannotBeSent) {
  auto field = [](MimeMessage m) { return std::string(build_message(m).status().message()); };
  MimeMessage m = sample();
  m.from.address = "not an address";
  EXPECT_EQ(field(m).substr(0, 13), "from.address:");
  m = sample();
  m.to[1].address = "x@@y";
  EXPECT_EQ(field(m).substr(0, 14), "to[1].address:");
  m = sample();
  m.subject = "two\r\nBcc: injected@x.test";
  EXPECT_EQ(field(m).substr(0, 8), "subject:");
  m = sample();
  m.headers = {{"X-Ok", "fine"}, {"Bad Name", "x"}};
  EXPECT_EQ(field(m).substr(0, 16), "headers[1].name:");
  m.headers = {{"Content-Type", "text/evil"}};
  EXPECT_EQ(field(m).substr(0, 16), "headers[0].name:");
  m.headers = {{"X-Ok", "a\nb"}};
  EXPECT_EQ(field(m).substr(0, 17), "headers[0].value:");
  m = sample();
  m.attachments = {{"a", "text", "x", ""}};
  EXPECT_EQ(field(m).substr(0, 28), "attachments[0].content_type:");
  m.attachments = {{"a", "multipart/mixed", "x", ""}};
  EXPECT_EQ(field(m).substr(0, 28), "attachments[0].content_type:");
  m.attachments = {{"a", "", "x", "no-at-sign"}};
  EXPECT_EQ(field(m).substr(0, 26), "attachments[0].content_id:");
  m = sample();
  m.text = "\xff\xfe not utf-8";
  EXPECT_EQ(field(m).substr(0, 10), "text_body:");
}

TEST(BuildMessage, Utf8AddressNeedsSmtputf8) {
  MimeMessage m = sample();
  m.to = {{"jürgen@bücher.test", "Jürgen"}};
  auto b = build_message(m);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_TRUE(b->utf8);
  EXPECT_NE(b->data.find("To: =?UTF-8?B?"), std::string::npos);
  EXPECT_NE(b->data.find(" <jürgen@bücher.test>"), std::string::npos);
}

TEST(PrepareRaw, FixesAndRefuses) {
  auto r = prepare_raw("Subject: x\nFrom: a@b.test\n\nbody\n", "mx.test", 1780000000);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->data.substr(0, 6), "Date: ");
  EXPECT_NE(r->data.find("Message-ID: " + r->message_id + "\r\nSubject: x\r\nFrom: a@b.test\r\n\r\nbody\r\n"),
            std::string::npos);
  EXPECT_FALSE(r->eight_bit);
  r = prepare_raw("Date: Fri, 04 Dec 2026 20:44:43 +0000\r\nMessage-ID:\r\n <kept@x.test>\r\n\r\nMessage-ID: <body@x>\r\n\xc3\xa9",
                  "mx.test", 1);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->message_id, "<kept@x.test>");
  EXPECT_EQ(r->data.substr(0, 5), "Date:");  // nothing added
  EXPECT_TRUE(r->eight_bit);
  EXPECT_EQ(std::string(prepare_raw("a\rb\r\n", "h", 1).status().message()), "raw.data: contains a bare CR");
  EXPECT_FALSE(prepare_raw(std::string("a\0b\r\n", 5), "h", 1).ok());
  EXPECT_FALSE(prepare_raw("X: " + std::string(996, 'x') + "\r\n", "h", 1).ok());
  EXPECT_TRUE(prepare_raw("X: " + std::string(995, 'x') + "\r\n", "h", 1).ok());
  EXPECT_FALSE(prepare_raw("", "h", 1).ok());
}

}  // namespace
}  // namespace smtpd::message
