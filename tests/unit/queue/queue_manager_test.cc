// The delivery queue with a fake transport and a fake clock.
#include "lib/queue/queue_manager.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <condition_variable>
#include <filesystem>
#include <mutex>

namespace smtpd::queue {
namespace {

using ::testing::HasSubstr;

// Records requests; the test answers them.
class FakeTransport : public Transport {
 public:
  struct Call {
    DeliveryRequest request;
    DeliveryCallback done;
  };
  void deliver(DeliveryRequest request, DeliveryCallback done) override {
    calls.push_back({std::move(request), std::move(done)});
  }
  // Answers the oldest open call with one reply for every recipient.
  void answer(const smtp::Reply& r) {
    ASSERT_FALSE(calls.empty());
    Call c = std::move(calls.front());
    calls.erase(calls.begin());
    std::vector<AttemptOutcome> out(c.request.recipients.size(), AttemptOutcome::from_reply(r, "mx.remote.test"));
    c.done(out);
  }
  std::vector<Call> calls;
};

class QueueTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/queue_test.XXXXXX";
    dir_ = mkdtemp(tmpl);
    open_spool();
  }
  void TearDown() override {
    queue_.reset();
    spool_.reset();
    std::filesystem::remove_all(dir_);
  }
  void open_spool() {
    SpoolOptions o;
    o.path = dir_;
    o.commit_delay = std::chrono::microseconds(0);
    spool_ = *Spool::open(o);
  }
  void make_queue(std::chrono::milliseconds delay_warning = std::chrono::milliseconds(0)) {
    QueueOptions o;
    o.delay_warning = delay_warning;
    o.hostname = "mx.test";
    o.now_ms = [this] { return now_ms_; };
    o.seed = 42;
    o.lifetime = std::chrono::hours(1);
    o.per_destination = per_destination_;
    queue_ = std::make_unique<QueueManager>(*spool_, transport_, [this](const std::string& d) { return route(d); }, o);
  }
  std::string route(const std::string& domain) {
    if (domain == "localhost") return "maildir:/tmp/x";
    if (domain.find("mx") == 0) return "mx";
    return "relay:smarthost.test:25";
  }

  MessageRecord commit(std::vector<std::string> rcpts, std::string sender = "alice@x.test",
                       std::string body = "Subject: hi\r\n\r\nbody\r\n", uint8_t notify = 0) {
    auto w = *spool_->begin_message();
    EXPECT_TRUE(w->append(body).ok());
    MessageRecord rec;
    rec.arrival_unix_us = now_ms_ * 1000;
    if (sender.empty()) {
      rec.envelope.sender.null = true;
    } else {
      rec.envelope.sender.mailbox = {sender.substr(0, sender.find('@')), sender.substr(sender.find('@') + 1), false};
    }
    for (const std::string& r : rcpts) {
      smtp::Recipient rc;
      rc.path.mailbox = {r.substr(0, r.find('@')), r.substr(r.find('@') + 1), false};
      rc.notify = notify;
      rec.envelope.recipients.push_back(rc);
    }
    auto id = spool_->commit_and_wait(std::move(w), rec);
    EXPECT_TRUE(id.ok()) << id.status();
    return *spool_->get(*id);
  }

  std::vector<MessageRecord> spooled() {
    std::vector<MessageRecord> out;
    EXPECT_TRUE(spool_->for_each([&](const MessageRecord& r) { out.push_back(r); }).ok());
    return out;
  }

  std::string dir_;
  int64_t now_ms_ = 1796000000000;
  size_t per_destination_ = 20;
  std::unique_ptr<Spool> spool_;
  FakeTransport transport_;
  std::unique_ptr<QueueManager> queue_;
};

TEST_F(QueueTest, DeliveredMessageLeavesTheSpool) {
  make_queue();
  const MessageRecord m = commit({"bob@y.test", "carol@y.test"});
  queue_->enqueue(m);
  EXPECT_EQ(queue_->tick(), 1u);
  ASSERT_EQ(transport_.calls.size(), 1u);
  EXPECT_EQ(transport_.calls[0].request.route, "relay:smarthost.test:25");
  EXPECT_EQ(transport_.calls[0].request.recipients.size(), 2u);
  EXPECT_EQ(queue_->tick(), 0u);  // nothing is handed out twice
  transport_.answer(smtp::Reply(250, "2.0.0", "ok"));
  EXPECT_TRUE(spooled().empty());
  EXPECT_EQ(queue_->stats().messages, 0u);
}

TEST_F(QueueTest, DeferredThenRetriedWithBackoff) {
  make_queue();
  const MessageRecord m = commit({"bob@y.test"});
  queue_->enqueue(m);
  queue_->tick();
  transport_.answer(smtp::Reply(451, "4.3.0", "try later"));
  auto st = queue_->states(m.id);
  ASSERT_EQ(st.size(), 1u);
  EXPECT_EQ(st[0].status, RecipientStatus::kDeferred);
  EXPECT_EQ(st[0].attempts, 1u);
  EXPECT_EQ(st[0].last_reply, "451 4.3.0 try later");
  const int64_t wait = st[0].next_attempt_ms - now_ms_;
  EXPECT_GE(wait, 48000);  // a minute, +-20%
  EXPECT_LE(wait, 72000);
  now_ms_ += 30000;
  EXPECT_EQ(queue_->tick(), 0u);
  now_ms_ += 50000;
  EXPECT_EQ(queue_->tick(), 1u);
  transport_.answer(smtp::Reply(250, "2.0.0", "ok"));
  EXPECT_TRUE(spooled().empty());
}

TEST_F(QueueTest, StateSurvivesRestart) {
  make_queue();
  const MessageRecord m = commit({"bob@y.test"});
  queue_->enqueue(m);
  queue_->tick();
  transport_.answer(smtp::Reply(421, "4.4.2", "busy"));
  const int64_t next = queue_->states(m.id)[0].next_attempt_ms;
  queue_.reset();
  make_queue();
  ASSERT_TRUE(queue_->load().ok());
  auto st = queue_->states(m.id);
  ASSERT_EQ(st.size(), 1u);
  EXPECT_EQ(st[0].attempts, 1u);
  EXPECT_EQ(st[0].next_attempt_ms, next);
  EXPECT_EQ(queue_->tick(), 0u);
  now_ms_ = next;
  EXPECT_EQ(queue_->tick(), 1u);
}

TEST_F(QueueTest, FailureSendsOneDsnToTheSender) {
  make_queue();
  const MessageRecord m = commit({"bob@y.test", "carol@y.test"});
  queue_->enqueue(m);
  queue_->tick();
  ASSERT_EQ(transport_.calls.size(), 1u);
  std::vector<AttemptOutcome> out = {AttemptOutcome::from_reply(smtp::Reply(250, "2.0.0", "ok")),
                                     AttemptOutcome::from_reply(smtp::Reply(550, "5.1.1", "no such user"), "mx.y.test")};
  DeliveryCallback done = std::move(transport_.calls[0].done);
  transport_.calls.clear();
  done(out);
  const auto left = spooled();
  ASSERT_EQ(left.size(), 1u);  // the original left; the DSN came in
  const MessageRecord& dsn = left[0];
  EXPECT_TRUE(dsn.envelope.sender.null);
  EXPECT_EQ(dsn.envelope.recipients[0].path.str(), "alice@x.test");
  const std::string body = *spool_->read_body(dsn);
  EXPECT_THAT(body, HasSubstr("Final-Recipient: rfc822; carol@y.test\r\nAction: failed\r\nStatus: 5.1.1\r\n"));
  EXPECT_THAT(body, HasSubstr("Remote-MTA: dns; mx.y.test"));
  EXPECT_THAT(body, HasSubstr("Diagnostic-Code: smtp; 550 5.1.1 no such user"));
  EXPECT_THAT(body, ::testing::Not(HasSubstr("bob@y.test")));  // delivered: not reported
  EXPECT_EQ(queue_->tick(), 1u);  // the DSN is itself queued for delivery
  EXPECT_EQ(transport_.calls[0].request.record.id, dsn.id);
}

TEST_F(QueueTest, NoDsnForNullSenderOrNotifyNever) {
  make_queue();
  queue_->enqueue(commit({"bob@y.test"}, ""));
  queue_->enqueue(commit({"bob@y.test"}, "alice@x.test", "Subject: x\r\n\r\nx\r\n", smtp::kNotifyNever));
  queue_->enqueue(commit({"bob@y.test"}, "alice@x.test", "Subject: x\r\n\r\nx\r\n", smtp::kNotifySuccess));
  EXPECT_EQ(queue_->tick(), 3u);
  for (int i = 0; i < 3; ++i) transport_.answer(smtp::Reply(550, "5.1.1", "no"));
  EXPECT_TRUE(spooled().empty());
}

TEST_F(QueueTest, ExpiryFailsWith447) {
  make_queue();
  const MessageRecord m = commit({"bob@y.test"});
  queue_->enqueue(m);
  for (int attempt = 0; attempt < 50 && !queue_->states(m.id).empty(); ++attempt) {
    if (queue_->tick() == 0) {
      now_ms_ += 10 * 60 * 1000;
      continue;
    }
    transport_.answer(smtp::Reply(451, "4.4.1", "connection refused"));
  }
  EXPECT_TRUE(queue_->states(m.id).empty());
  const auto left = spooled();
  ASSERT_EQ(left.size(), 1u);
  const std::string body = *spool_->read_body(left[0]);
  EXPECT_THAT(body, HasSubstr("Status: 4.4.7\r\n"));
  EXPECT_THAT(body, HasSubstr("Message expired in queue; last reply: 451 4.4.1 connection refused"));
}

TEST_F(QueueTest, PerDestinationLimitAndGrouping) {
  per_destination_ = 2;
  make_queue();
  for (int i = 0; i < 5; ++i) queue_->enqueue(commit({"bob@y.test"}));
  queue_->enqueue(commit({"a@mx1.test", "b@mx2.test", "c@mx1.test"}));
  // relay: 2 of 5 start; the MX message splits by domain: 2 jobs.
  EXPECT_EQ(queue_->tick(), 4u);
  EXPECT_EQ(queue_->stats().waiting, 3u);
  size_t mx_jobs = 0;
  for (const auto& c : transport_.calls) {
    if (c.request.route == "mx") {
      ++mx_jobs;
      EXPECT_EQ(c.request.recipients.size(), c.request.domain == "mx1.test" ? 2u : 1u);
    }
  }
  EXPECT_EQ(mx_jobs, 2u);
  // Answering a relay job lets a waiting one start.
  for (size_t i = 0; i < transport_.calls.size(); ++i) {
    if (transport_.calls[i].request.route != "mx") {
      std::swap(transport_.calls[0], transport_.calls[i]);
      break;
    }
  }
  transport_.answer(smtp::Reply(250, "2.0.0", "ok"));
  EXPECT_EQ(queue_->stats().waiting, 2u);
  EXPECT_EQ(transport_.calls.size(), 4u);
}

TEST_F(QueueTest, MailLoopFailsAt546) {
  make_queue();
  std::string body;
  for (int i = 0; i < 51; ++i) body += "Received: from hop" + std::to_string(i) + "\r\n";
  body += "Subject: loop\r\n\r\nx\r\n";
  queue_->enqueue(commit({"bob@y.test"}, "alice@x.test", body));
  EXPECT_EQ(queue_->tick(), 0u);  // checked before its first attempt: failed, never sent
  EXPECT_EQ(queue_->tick(), 1u);  // only the DSN goes anywhere
  ASSERT_EQ(transport_.calls.size(), 1u);
  EXPECT_TRUE(transport_.calls[0].request.record.envelope.sender.null);
  const auto left = spooled();
  ASSERT_EQ(left.size(), 1u);
  EXPECT_THAT(*spool_->read_body(left[0]), HasSubstr("Status: 5.4.6"));
}

TEST_F(QueueTest, BackoffGrowsAndIsCapped) {
  make_queue();
  const MessageRecord m = commit({"bob@y.test"});
  queue_->enqueue(m);
  int64_t previous = 0;
  for (int attempt = 1; attempt <= 10; ++attempt) {
    ASSERT_EQ(queue_->tick(), 1u) << attempt;
    transport_.answer(smtp::Reply(451, "4.3.0", "later"));
    const int64_t wait = queue_->states(m.id)[0].next_attempt_ms - now_ms_;
    EXPECT_LE(wait, 3600000 * 12 / 10) << attempt;
    if (attempt <= 5) {
      EXPECT_GT(wait, previous) << attempt;
    }
    previous = wait;
    now_ms_ += wait;
    if (now_ms_ - m.arrival_unix_us / 1000 > 3000000) break;  // stay inside the lifetime
  }
}

TEST_F(QueueTest, OneDelayWarningThenDelivery) {
  make_queue(std::chrono::minutes(10));
  const MessageRecord m = commit({"bob@y.test"});
  queue_->enqueue(m);
  int warnings = 0;
  for (int round = 0; round < 40; ++round) {
    if (queue_->tick() == 0) {
      now_ms_ += 60000;
      continue;
    }
    // Answer the original with 4xx; a DSN job (to alice) is accepted.
    const bool is_dsn = transport_.calls.front().request.record.envelope.sender.null;
    if (is_dsn) {
      ++warnings;
      const std::string body = *spool_->read_body(transport_.calls.front().request.record);
      EXPECT_THAT(body, HasSubstr("Action: delayed\r\nStatus: 4.2.1\r\n"));
      EXPECT_THAT(body, HasSubstr("Subject: Delayed Mail (still being retried)"));
      transport_.answer(smtp::Reply(250, "2.0.0", "ok"));
    } else {
      transport_.answer(smtp::Reply(451, "4.2.1", "busy"));
    }
  }
  EXPECT_EQ(warnings, 1);
  EXPECT_EQ(queue_->states(m.id)[0].status, RecipientStatus::kDeferred);
  EXPECT_TRUE(queue_->states(m.id)[0].delay_warned);
}

TEST_F(QueueTest, HoldAndRelease) {
  make_queue();
  const MessageRecord m = commit({"bob@y.test"});
  queue_->enqueue(m);
  ASSERT_TRUE(queue_->hold(m.id).ok());
  EXPECT_EQ(queue_->tick(), 0u);
  EXPECT_EQ(queue_->stats().held, 1u);
  EXPECT_TRUE(absl::IsNotFound(queue_->hold("nope")));
  // Held survives a restart.
  queue_.reset();
  make_queue();
  ASSERT_TRUE(queue_->load().ok());
  EXPECT_TRUE(queue_->held(m.id));
  EXPECT_EQ(queue_->tick(), 0u);
  ASSERT_TRUE(queue_->release(m.id).ok());
  EXPECT_EQ(queue_->tick(), 1u);
  transport_.answer(smtp::Reply(250, "2.0.0", "ok"));
  EXPECT_TRUE(spooled().empty());
}

TEST_F(QueueTest, RetryMakesDeferredRecipientsDueNow) {
  make_queue();
  const MessageRecord m = commit({"bob@y.test"});
  queue_->enqueue(m);
  EXPECT_EQ(queue_->tick(), 1u);
  transport_.answer(smtp::Reply(451, "4.2.1", "busy"));
  EXPECT_EQ(queue_->tick(), 0u);  // backing off
  ASSERT_TRUE(queue_->retry(m.id).ok());
  EXPECT_EQ(queue_->tick(), 1u);
  transport_.answer(smtp::Reply(250, "2.0.0", "ok"));
  EXPECT_TRUE(absl::IsNotFound(queue_->retry(m.id)));
  const MessageRecord h = commit({"bob@y.test"});
  queue_->enqueue(h);
  ASSERT_TRUE(queue_->hold(h.id).ok());
  EXPECT_TRUE(absl::IsFailedPrecondition(queue_->retry(h.id)));
}

TEST_F(QueueTest, RemoveSilentlyOrWithBounce) {
  make_queue();
  const MessageRecord quiet = commit({"bob@y.test"});
  const MessageRecord loud = commit({"carol@y.test", "dave@y.test"});
  queue_->enqueue(quiet);
  queue_->enqueue(loud);
  EXPECT_EQ(queue_->tick(), 2u);
  EXPECT_TRUE(absl::IsFailedPrecondition(queue_->remove(quiet.id, false)));  // in flight
  transport_.answer(smtp::Reply(451, "4.2.1", "busy"));
  transport_.answer(smtp::Reply(451, "4.2.1", "busy"));
  ASSERT_TRUE(queue_->remove(quiet.id, false).ok());
  ASSERT_TRUE(queue_->remove(loud.id, true).ok());
  EXPECT_TRUE(absl::IsNotFound(queue_->remove(loud.id, true)));
  // Only the bounce is left: one DSN to alice for both of loud's recipients.
  const auto left = spooled();
  ASSERT_EQ(left.size(), 1u);
  EXPECT_TRUE(left[0].envelope.sender.null);
  const std::string body = *spool_->read_body(left[0]);
  EXPECT_THAT(body, HasSubstr("Final-Recipient: rfc822; carol@y.test"));
  EXPECT_THAT(body, HasSubstr("Final-Recipient: rfc822; dave@y.test"));
  EXPECT_THAT(body, HasSubstr("Status: 5.0.0"));
  EXPECT_THAT(body, HasSubstr("deleted by the queue administrator"));
}

TEST_F(QueueTest, ListGetAndStats) {
  make_queue();
  const MessageRecord a = commit({"bob@y.test"});
  const MessageRecord b = commit({"x@mx1.test", "y@mx1.test"}, "other@x.test");
  const MessageRecord c = commit({"z@y.test"});
  for (const auto& m : {a, b, c}) queue_->enqueue(m);
  ASSERT_TRUE(queue_->hold(c.id).ok());
  EXPECT_EQ(queue_->tick(), 2u);
  transport_.answer(smtp::Reply(451, "4.2.1", "busy"));  // a: deferred; b still in flight
  bool more = false;
  auto page = queue_->list("", 2, nullptr, &more);
  ASSERT_EQ(page.size(), 2u);
  EXPECT_TRUE(more);
  EXPECT_EQ(page[0].record.id, a.id);
  EXPECT_STREQ(page[0].state(), "deferred");
  EXPECT_STREQ(page[1].state(), "delivering");
  page = queue_->list(page[1].record.id, 2, nullptr, &more);
  ASSERT_EQ(page.size(), 1u);
  EXPECT_FALSE(more);
  EXPECT_STREQ(page[0].state(), "held");
  auto only_other = queue_->list("", 10, [](const MessageView& v) {
    return v.record.envelope.sender.str() == "other@x.test";
  }, &more);
  ASSERT_EQ(only_other.size(), 1u);
  EXPECT_EQ(only_other[0].record.id, b.id);
  auto v = queue_->get(a.id);
  ASSERT_TRUE(v.has_value());
  ASSERT_EQ(v->attempts.size(), 1u);
  EXPECT_EQ(v->attempts[0].reply, "451 4.2.1 busy");
  EXPECT_EQ(v->attempts[0].route, "relay:smarthost.test:25");
  EXPECT_FALSE(queue_->get("nope").has_value());
  const QueueStats st = queue_->stats();
  EXPECT_EQ(st.messages, 3u);
  EXPECT_EQ(st.messages_by_state.at("deferred"), 1u);
  EXPECT_EQ(st.messages_by_state.at("delivering"), 1u);
  EXPECT_EQ(st.messages_by_state.at("held"), 1u);
  EXPECT_EQ(st.recipients_by_state.at("delivering"), 2u);
  EXPECT_EQ(st.backlog.at("mx:mx1.test"), 2u);
  EXPECT_EQ(st.backlog.at("relay:smarthost.test:25"), 2u);
  EXPECT_EQ(st.oldest_arrival_unix_us, now_ms_ * 1000);
  transport_.answer(smtp::Reply(250, "2.0.0", "ok"));
}

TEST_F(QueueTest, WatchersSeeEveryStep) {
  make_queue();
  std::vector<std::string> seen;
  const uint64_t token = queue_->subscribe([&](const QueueEvent& e) {
    seen.push_back(std::string(to_string(e.kind)) + (e.recipients.empty() ? "" : ":" + e.recipients[0]));
  });
  const MessageRecord m = commit({"bob@y.test"});
  queue_->enqueue(m);
  queue_->tick();
  transport_.answer(smtp::Reply(451, "4.2.1", "busy"));
  ASSERT_TRUE(queue_->retry(m.id).ok());
  queue_->tick();
  transport_.answer(smtp::Reply(550, "5.1.1", "no such user"));
  EXPECT_EQ(seen, (std::vector<std::string>{"queued:bob@y.test", "attempt:bob@y.test", "deferred:bob@y.test",
                                            "attempt:bob@y.test", "failed:bob@y.test", "queued:alice@x.test",
                                            "removed:bob@y.test"}));
  queue_->unsubscribe(token);
  const MessageRecord n = commit({"bob@y.test"});
  queue_->enqueue(n);
  EXPECT_EQ(seen.size(), 7u);
}

TEST(States, RoundTrip) {
  std::vector<RecipientState> s(2);
  s[0].status = RecipientStatus::kDeferred;
  s[0].attempts = 3;
  s[0].next_attempt_ms = 123456789;
  s[0].last_reply = "451 4.3.0 later";
  s[1].status = RecipientStatus::kDelivered;
  s[1].delay_warned = true;
  const std::string enc = encode_state({true, s});
  auto back = decode_state(enc, 2);
  ASSERT_TRUE(back.ok());
  EXPECT_TRUE(back->held);
  EXPECT_EQ(encode_state(*back), enc);
  EXPECT_FALSE(decode_state(enc, 3).ok());
  for (size_t cut = 0; cut < enc.size(); ++cut) EXPECT_FALSE(decode_state(enc.substr(0, cut), 2).ok()) << cut;
}

}  // namespace
}  // namespace smtpd::queue
