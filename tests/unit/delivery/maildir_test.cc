// Maildir delivery: layout, headers, line ends, names, and I/O failures.
#include "lib/delivery/maildir.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

namespace smtpd::delivery {
namespace {

namespace fs = std::filesystem;

class MaildirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/maildir_test.XXXXXX";
    dir_ = mkdtemp(tmpl);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::vector<fs::path> files(const fs::path& p) {
    std::vector<fs::path> out;
    if (fs::exists(p)) {
      for (auto& e : fs::directory_iterator(p)) out.push_back(e.path());
    }
    return out;
  }
  static std::string read(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }
  std::string dir_;
};

TEST_F(MaildirTest, DeliversIntoNew) {
  MaildirTransport t(dir_ + "/var/mail", "mx.test");  // parents are created
  const std::string body = "Received: from x\r\nSubject: hi\r\n\r\nline one\r\nline two\r\n";
  const DeliveryOutcome o = t.deliver({"a@x.test", "Bob@localhost", "Bob", body});
  ASSERT_EQ(o.result, Result::kDelivered) << o.reply.summary();
  EXPECT_EQ(o.reply.code, 250);
  const auto delivered = files(dir_ + "/var/mail/bob/new");
  ASSERT_EQ(delivered.size(), 1u);
  EXPECT_TRUE(files(dir_ + "/var/mail/bob/tmp").empty());
  EXPECT_TRUE(fs::is_directory(dir_ + "/var/mail/bob/cur"));
  EXPECT_EQ(read(delivered[0]),
            "Return-Path: <a@x.test>\nDelivered-To: Bob@localhost\nReceived: from x\nSubject: hi\n\n"
            "line one\nline two\n");
  EXPECT_NE(delivered[0].filename().string().find(".mx.test,S="), std::string::npos);
}

TEST_F(MaildirTest, NullSenderAndUniqueNames) {
  MaildirTransport t(dir_, "mx.test");
  for (int i = 0; i < 20; ++i) {
    ASSERT_EQ(t.deliver({"", "x@localhost", "x", "Subject: n\r\n\r\nb\r\n"}).result, Result::kDelivered);
  }
  const auto delivered = files(dir_ + "/x/new");
  ASSERT_EQ(delivered.size(), 20u);
  EXPECT_EQ(read(delivered[0]).rfind("Return-Path: <>\n", 0), 0u);
}

TEST_F(MaildirTest, BadMailboxNamesFail) {
  MaildirTransport t(dir_, "mx.test");
  for (const char* bad : {"", ".", "..", "../etc", "a/b", ".hidden", "\"q\"", "a\\b"}) {
    const DeliveryOutcome o = t.deliver({"a@x.test", "x@localhost", bad, "x\r\n"});
    EXPECT_EQ(o.result, Result::kFailed) << bad;
    EXPECT_EQ(o.reply.enhanced, "5.1.3") << bad;
  }
  EXPECT_EQ(MaildirTransport::mailbox_name("Alice.Smith+tag"), "alice.smith+tag");
  EXPECT_TRUE(files(dir_).empty());
}

TEST_F(MaildirTest, IoErrorsDefer) {
  std::ofstream(dir_ + "/not-a-dir") << "x";
  MaildirTransport t(dir_ + "/not-a-dir/mail", "mx.test");
  const DeliveryOutcome o = t.deliver({"a@x.test", "b@localhost", "b", "x\r\n"});
  EXPECT_EQ(o.result, Result::kDeferred);
  EXPECT_EQ(o.reply.code, 451);
}

TEST(Outcome, FromReply) {
  EXPECT_EQ(DeliveryOutcome::from_reply(smtp::Reply(250, "2.0.0", "ok")).result, Result::kDelivered);
  EXPECT_EQ(DeliveryOutcome::from_reply(smtp::Reply(451, "4.3.0", "later")).result, Result::kDeferred);
  EXPECT_EQ(DeliveryOutcome::from_reply(smtp::Reply(550, "5.1.1", "no")).result, Result::kFailed);
}

}  // namespace
}  // namespace smtpd::delivery
