// RFC 5321 4.1.2 / RFC 6531 address grammar.
#include "lib/smtp/address.h"

#include <gtest/gtest.h>

namespace smtpd::smtp {
namespace {

PathError parse_error(const std::string& s, PathOptions o = {}) { return parse_path(s, o).error; }

TEST(Address, Valid) {
  PathOptions o;
  for (const char* s : {"<a@b.c>", "<first.last@example.com>", "<\"quoted local\"@x.test>", "<\"a\\\"b\"@x.test>",
                        "<user+tag@sub-domain.x.test>", "<a@[127.0.0.1]>", "<a@[IPv6:::1]>",
                        "<a@[IPv6:2001:db8::1]>", "<a@[x-tag:abc]>", "<!#$%&'*+-/=?^_`{|}~@x.test>",
                        "<@hop1.test,@hop2.test:a@b.test>", "<a%b@x.test>", "<\"a@b\"@x.test>"}) {
    const PathParse p = parse_path(s, o);
    EXPECT_EQ(p.error, PathError::kNone) << s;
    EXPECT_EQ(p.consumed, std::string(s).size()) << s;
  }
}

TEST(Address, Fields) {
  const PathParse p = parse_path("<@r.test:Bob@Example.COM> SIZE=1", {});
  ASSERT_EQ(p.error, PathError::kNone);
  EXPECT_EQ(p.path.mailbox.local, "Bob");
  EXPECT_EQ(p.path.mailbox.domain, "Example.COM");
  EXPECT_EQ(p.path.mailbox.domain_lower(), "example.com");
  EXPECT_EQ(p.path.str(), "Bob@Example.COM");
  EXPECT_EQ(p.consumed, 25u);
  const PathParse lit = parse_path("<a@[10.0.0.1]>", {});
  EXPECT_TRUE(lit.path.mailbox.domain_is_literal);
}

TEST(Address, Invalid) {
  for (const char* s : {"a@b.c", "<a@b.c", "<a>", "<@b.c>", "<a@>", "<a@@b.c>", "<.a@b.c>", "<a.@b.c>",
                        "<a..b@c.d>", "<a@-b.c>", "<a@b-.c>", "<a@b..c>", "<a@[300.1.1.1]>", "<a@[IPv6:zz]>",
                        "<a@[1.2.3.4>", "<\"unterminated@x.test>", "<a b@c.d>", "<a@b.c >", "<a@b_c.d>",
                        "<@hop.test:>", "<@hop.test,a@b.c>", "<a\x01@b.c>"}) {
    EXPECT_NE(parse_error(s), PathError::kNone) << s;
  }
}

TEST(Address, NullAndPostmaster) {
  EXPECT_EQ(parse_error("<>"), PathError::kSyntax);
  PathOptions o;
  o.allow_null = true;
  EXPECT_TRUE(parse_path("<>", o).path.null);
  EXPECT_EQ(parse_error("<postmaster>"), PathError::kSyntax);
  o.allow_postmaster = true;
  EXPECT_TRUE(parse_path("<PostMaster>", o).path.postmaster);
  EXPECT_EQ(parse_error("<bob>", o), PathError::kSyntax);
}

TEST(Address, Lengths) {
  EXPECT_EQ(parse_error("<" + std::string(64, 'a') + "@x.test>"), PathError::kNone);
  EXPECT_EQ(parse_error("<" + std::string(65, 'a') + "@x.test>"), PathError::kTooLong);
  std::string domain;
  while (domain.size() < 250) domain += std::string(60, 'd') + ".";
  domain += "test";
  EXPECT_EQ(parse_error("<a@" + domain + ">"), PathError::kTooLong);
}

TEST(Address, Utf8) {
  const std::string addr = "<j\xc3\xb6rg@\xc3\xa9x.test>";
  EXPECT_EQ(parse_error(addr), PathError::kUtf8NotPermitted);
  PathOptions o;
  o.allow_utf8 = true;
  const PathParse p = parse_path(addr, o);
  EXPECT_EQ(p.error, PathError::kNone);
  EXPECT_TRUE(p.path.utf8);
  // Overlong, surrogate and truncated sequences are not UTF-8.
  for (const char* bad : {"<\xc0\xaf@x.test>", "<\xed\xa0\x80@x.test>", "<\xe2\x82@x.test>", "<\xff@x.test>"}) {
    EXPECT_EQ(parse_path(bad, o).error, PathError::kSyntax) << bad;
  }
}

TEST(Address, BareMailbox) {
  EXPECT_EQ(parse_mailbox("a@b.test", false).error, PathError::kNone);
  EXPECT_EQ(parse_mailbox("<a@b.test>", false).error, PathError::kSyntax);
  EXPECT_EQ(parse_mailbox("a@b.test x", false).error, PathError::kSyntax);
}

TEST(Xtext, Rules) {
  EXPECT_TRUE(is_xtext("abc+2B+3D"));
  EXPECT_TRUE(is_xtext(""));
  EXPECT_FALSE(is_xtext("a+2"));
  EXPECT_FALSE(is_xtext("a+zz"));
  EXPECT_FALSE(is_xtext("a=b"));
  EXPECT_FALSE(is_xtext("a b"));
}

}  // namespace
}  // namespace smtpd::smtp
