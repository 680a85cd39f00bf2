// The durable spool: commit, read back, recovery, removal, group commit.
#include "lib/queue/spool.h"

#include <dirent.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <thread>

namespace smtpd::queue {
namespace {

class SpoolTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/spool_test.XXXXXX";
    dir_ = mkdtemp(tmpl);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::unique_ptr<Spool> open(uint64_t max_messages = 1000, uint64_t segment_bytes = 64 << 20) {
    SpoolOptions o;
    o.path = dir_;
    o.max_messages = max_messages;
    o.segment_bytes = segment_bytes;
    o.writer_buffer = 1024;
    auto s = Spool::open(o);
    EXPECT_TRUE(s.ok()) << s.status();
    return *std::move(s);
  }

  // Commits a message and waits for the flusher's answer.
  absl::StatusOr<std::string> put(Spool& spool, const std::string& body, const std::string& rcpt = "b@y.test") {
    auto w = spool.begin_message();
    if (!w.ok()) return w.status();
    for (size_t i = 0; i < body.size(); i += 700) (void)(*w)->append(body.substr(i, 700));
    MessageRecord rec;
    rec.envelope.sender.mailbox = {"a", "x.test", false};
    smtp::Recipient r;
    r.path.mailbox = {rcpt.substr(0, rcpt.find('@')), rcpt.substr(rcpt.find('@') + 1), false};
    r.notify = smtp::kNotifyFailure;
    rec.envelope.recipients.push_back(r);
    rec.client_address = "192.0.2.1";
    return spool.commit_and_wait(std::move(*w), rec);
  }

  size_t segment_files() {
    size_t n = 0;
    for (auto& e : std::filesystem::directory_iterator(dir_ + "/segments")) n += e.path().extension() == ".seg";
    return n;
  }

  std::string dir_;
};

TEST_F(SpoolTest, CreatesMissingParents) {
  SpoolOptions o;
  o.path = dir_ + "/var/deep/spool";  // like the default relative "var/spool" in a fresh checkout
  auto s = Spool::open(o);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_TRUE(std::filesystem::is_directory(dir_ + "/var/deep/spool/segments"));
}

TEST_F(SpoolTest, CommitAndReadBack) {
  auto spool = open();
  const std::string body = std::string(5000, 'x') + "\r\nend\r\n";
  auto id = put(*spool, body);
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(id->size(), 16u);
  auto rec = spool->get(*id);
  ASSERT_TRUE(rec.ok());
  EXPECT_EQ(rec->size, body.size());
  EXPECT_EQ(rec->envelope.recipients[0].path.str(), "b@y.test");
  EXPECT_EQ(rec->envelope.recipients[0].notify, smtp::kNotifyFailure);
  EXPECT_EQ(rec->client_address, "192.0.2.1");
  EXPECT_EQ(*spool->read_body(*rec), body);
  EXPECT_EQ(spool->message_count(), 1u);
}

TEST_F(SpoolTest, SurvivesReopenAndIdsIncrease) {
  std::string first;
  {
    auto spool = open();
    first = *put(*spool, "one\r\n");
    ASSERT_TRUE(put(*spool, "two\r\n").ok());
  }
  auto spool = open();
  EXPECT_EQ(spool->message_count(), 2u);
  auto third = put(*spool, "three\r\n");
  EXPECT_GT(*third, first);
  std::vector<std::string> bodies;
  ASSERT_TRUE(spool->for_each([&](const MessageRecord& r) { bodies.push_back(*spool->read_body(r)); }).ok());
  EXPECT_EQ(bodies, (std::vector<std::string>{"one\r\n", "two\r\n", "three\r\n"}));
}

TEST_F(SpoolTest, MetaValuesCommitWithTheMessageAndSurviveReopen) {
  {
    auto spool = open();
    ASSERT_TRUE(spool->put_meta("policy", "v1").ok());
    auto w = *spool->begin_message();
    ASSERT_TRUE(w->append("x\r\n").ok());
    MessageRecord rec;
    rec.envelope.sender.null = true;
    auto id = spool->commit_and_wait(std::move(w), rec);  // without meta
    ASSERT_TRUE(id.ok());
    w = *spool->begin_message();
    ASSERT_TRUE(w->append("y\r\n").ok());
    absl::Mutex mu;
    bool done = false;
    spool->commit(std::move(w), rec, {{"idem/k1", "with the message"}}, [&](absl::StatusOr<std::string> r) {
      EXPECT_TRUE(r.ok());
      absl::MutexLock lock(&mu);
      done = true;
    });
    absl::MutexLock lock(&mu);
    mu.Await(absl::Condition(&done));
  }
  auto spool = open();
  EXPECT_EQ(*spool->get_meta("policy"), "v1");
  EXPECT_EQ(*spool->get_meta("idem/k1"), "with the message");
  EXPECT_TRUE(absl::IsNotFound(spool->get_meta("idem/k2").status()));
  ASSERT_TRUE(spool->put_meta("idem/k2", "two").ok());
  std::vector<std::string> keys;
  ASSERT_TRUE(spool->for_each_meta("idem/", [&](const std::string& k, const std::string&) { keys.push_back(k); }).ok());
  EXPECT_EQ(keys, (std::vector<std::string>{"idem/k1", "idem/k2"}));
  ASSERT_TRUE(spool->delete_meta("idem/k1").ok());
  EXPECT_TRUE(absl::IsNotFound(spool->get_meta("idem/k1").status()));
  EXPECT_EQ(spool->message_count(), 2u);  // meta values are not messages
}

TEST_F(SpoolTest, UncommittedWritesAreDiscardedAtRecovery) {
  {
    auto spool = open();
    auto w = spool->begin_message();
    (void)(*w)->append(std::string(4096, 'z'));  // never committed
    ASSERT_TRUE(put(*spool, "kept\r\n").ok());
  }
  auto spool = open();
  EXPECT_EQ(spool->message_count(), 1u);
}

TEST_F(SpoolTest, RemoveReleasesSegments) {
  auto spool = open(1000, 4096);
  std::vector<std::string> ids;
  for (int i = 0; i < 6; ++i) ids.push_back(*put(*spool, std::string(3000, 'a' + i)));
  EXPECT_GE(segment_files(), 4u);
  for (const auto& id : ids) ASSERT_TRUE(spool->remove(id).ok());
  EXPECT_EQ(spool->message_count(), 0u);
  EXPECT_EQ(segment_files(), 1u);  // only the active one
  EXPECT_TRUE(absl::IsNotFound(spool->remove(ids[0])));
}

TEST_F(SpoolTest, FullQueueRefuses) {
  auto spool = open(2);
  ASSERT_TRUE(put(*spool, "1\r\n").ok());
  auto w = spool->begin_message();
  ASSERT_TRUE(w.ok());
  EXPECT_FALSE(spool->accepting());  // one stored + one in flight
  auto refused = spool->begin_message();
  EXPECT_TRUE(absl::IsResourceExhausted(refused.status()));
}

TEST_F(SpoolTest, ConcurrentCommitsShareSyncs) {
  auto spool = open(100000);
  constexpr int kThreads = 16, kEach = 40;
  std::atomic<int> ok{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kEach; ++i) ok += put(*spool, "m" + std::to_string(t * 1000 + i) + "\r\n").ok();
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(ok.load(), kThreads * kEach);
  EXPECT_EQ(spool->message_count(), static_cast<uint64_t>(kThreads * kEach));
  EXPECT_LT(spool->batches(), static_cast<uint64_t>(kThreads * kEach));  // group commit happened
}

TEST_F(SpoolTest, ReaderSeesCommittedMessages) {
  auto spool = open();
  auto id = put(*spool, "hello\r\n");
  auto reader = SpoolReader::open(dir_);
  ASSERT_TRUE(reader.ok()) << reader.status();
  auto rec = (*reader)->get(*id);
  ASSERT_TRUE(rec.ok());
  EXPECT_EQ(*(*reader)->read_body(*rec), "hello\r\n");
}

TEST(Record, RoundTripAndCorruption) {
  MessageRecord r;
  r.id = "0123456789ABCDEF";
  r.arrival_unix_us = 1234567;
  r.envelope.sender.null = true;
  r.envelope.declared_size = 77;
  r.envelope.envid = "e+2B";
  r.envelope.smtputf8 = true;
  smtp::Recipient rc;
  rc.path.mailbox = {"\"q\"", "[127.0.0.1]", true};
  rc.orcpt = "rfc822;x";
  r.envelope.recipients.push_back(rc);
  r.extents = {{1, 0, 10}, {2, 5, 20}};
  r.size = 30;
  const std::string enc = encode_record(r);
  auto back = decode_record(enc);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(encode_record(*back), enc);
  EXPECT_EQ(back->envelope.recipients[0].path.mailbox.domain, "[127.0.0.1]");
  for (size_t cut = 0; cut < enc.size(); ++cut) {
    EXPECT_FALSE(decode_record(enc.substr(0, cut)).ok()) << cut;
  }
}

}  // namespace
}  // namespace smtpd::queue
