// DATA dot-unstuffing and end-of-data recognition (RFC 5321 4.5.2, 2.3.8).
#include "lib/smtp/data_decoder.h"

#include <gtest/gtest.h>

namespace smtpd::smtp {
namespace {

struct Decoded {
  DataDecoder::Status status;
  std::string out;
  size_t consumed;
};

Decoded decode(const std::string& in) {
  DataDecoder d;
  Decoded r{DataDecoder::Status::kMore, "", 0};
  auto res = d.feed(in, r.out);
  r.status = res.status;
  r.consumed = res.consumed;
  return r;
}

TEST(DataDecoder, EndsAtCrlfDotCrlf) {
  const Decoded d = decode("Subject: x\r\n\r\nbody\r\n.\r\nMAIL FROM");
  EXPECT_EQ(d.status, DataDecoder::Status::kEnd);
  EXPECT_EQ(d.out, "Subject: x\r\n\r\nbody\r\n");
  EXPECT_EQ(d.consumed, 23u);
}

TEST(DataDecoder, EmptyMessage) {
  const Decoded d = decode(".\r\n");
  EXPECT_EQ(d.status, DataDecoder::Status::kEnd);
  EXPECT_EQ(d.out, "");
}

TEST(DataDecoder, Unstuffing) {
  EXPECT_EQ(decode("..\r\n.\r\n").out, ".\r\n");
  EXPECT_EQ(decode("...x\r\n.\r\n").out, "..x\r\n");
  EXPECT_EQ(decode(".x\r\n.\r\n").out, "x\r\n");
  EXPECT_EQ(decode("a.\r\n.b\r\n.\r\n").out, "a.\r\nb\r\n");
}

TEST(DataDecoder, SmugglingVariantsAreBareNewlines) {
  // Every end-of-data variant that some server has accepted at one time.
  for (const char* s : {"a\n.\n", "a\n.\r\n", "a\r\n.\n", "a\r.\r", "a\r\n.\rx", "a\n", "a\rb",
                        "\n.\r\n", "a\r\n.\n\r\n"}) {
    EXPECT_EQ(decode(s).status, DataDecoder::Status::kBareNewline) << s;
  }
}

TEST(DataDecoder, IncompleteEnd) {
  for (const char* s : {"a\r\n", "a\r\n.", "a\r\n.\r", "a\r"}) {
    EXPECT_EQ(decode(s).status, DataDecoder::Status::kMore) << s;
  }
}

TEST(DataDecoder, EverySplitGivesTheSameResult) {
  const std::string msg = "H: v\r\n\r\n..a\r\n..\r\nb.\r\n...\r\n\r\n.\r\n";
  const std::string expected = "H: v\r\n\r\n.a\r\n.\r\nb.\r\n..\r\n\r\n";
  for (size_t i = 0; i <= msg.size(); ++i) {
    for (size_t j = i; j <= msg.size(); ++j) {
      DataDecoder d;
      std::string out;
      auto a = d.feed(msg.substr(0, i), out);
      if (i == msg.size()) {
        EXPECT_EQ(a.status, DataDecoder::Status::kEnd);
        EXPECT_EQ(out, expected);
        continue;
      }
      ASSERT_EQ(a.status, DataDecoder::Status::kMore) << i;
      auto b = d.feed(msg.substr(i, j - i), out);
      if (b.status == DataDecoder::Status::kEnd) {
        EXPECT_EQ(i + b.consumed, msg.size());
      } else {
        auto c = d.feed(msg.substr(j), out);
        ASSERT_EQ(c.status, DataDecoder::Status::kEnd) << i << "," << j;
      }
      EXPECT_EQ(out, expected) << i << "," << j;
    }
  }
}

TEST(DataDecoder, Flags) {
  DataDecoder d;
  std::string out;
  d.feed(std::string("a\0b\r\n", 5), out);
  EXPECT_TRUE(d.nul_seen());
  EXPECT_FALSE(d.long_line_seen());
  d.feed(std::string(999, 'x') + "\r\n.\r\n", out);
  EXPECT_TRUE(d.long_line_seen());
}

TEST(ContentChecker, Flags) {
  ContentChecker c;
  c.scan("ok\r\nline\r");
  c.scan("\nmore\r\n");
  c.finish();
  EXPECT_FALSE(c.flags().any());
  ContentChecker lf;
  lf.scan("a\nb");
  EXPECT_TRUE(lf.flags().bare_cr_or_lf);
  ContentChecker cr;
  cr.scan("a\r");
  cr.finish();
  EXPECT_TRUE(cr.flags().bare_cr_or_lf);
}

}  // namespace
}  // namespace smtpd::smtp
