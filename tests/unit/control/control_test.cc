// The gRPC control plane end to end: a real channel to the real services
// over a real spool, queue and policy store; every method and its errors.
#include <grpcpp/grpcpp.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <thread>

#include "control/access.h"
#include "control/server.h"
#include "smtpd/v1/policy.grpc.pb.h"
#include "smtpd/v1/queue.grpc.pb.h"
#include "smtpd/v1/submission.grpc.pb.h"

namespace smtpd::control {
namespace {

using ::testing::HasSubstr;

class FakeTransport : public queue::Transport {
 public:
  void deliver(queue::DeliveryRequest request, queue::DeliveryCallback done) override {
    std::lock_guard<std::mutex> lock(mu);
    calls.push_back({std::move(request), std::move(done)});
  }
  void answer(const smtp::Reply& r) {
    queue::DeliveryCallback done;
    size_t n;
    {
      std::lock_guard<std::mutex> lock(mu);
      ASSERT_FALSE(calls.empty());
      done = std::move(calls.front().second);
      n = calls.front().first.recipients.size();
      calls.erase(calls.begin());
    }
    done(std::vector<queue::AttemptOutcome>(n, queue::AttemptOutcome::from_reply(r, "mx.remote.test")));
  }
  std::mutex mu;
  std::vector<std::pair<queue::DeliveryRequest, queue::DeliveryCallback>> calls;
};

constexpr char kAdmin[] = "admin-token-0123456789";
constexpr char kReader[] = "read-token-0123456789";
constexpr char kSubmitter[] = "submit-token-0123456789";

class ControlTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/control_test.XXXXXX";
    dir_ = mkdtemp(tmpl);
    cfg_.hostname = "mx.test";
    cfg_.control_address = "127.0.0.1:0";
    cfg_.spool_max_messages = 50;
    cfg_.policy.local_domains = {"localhost"};
    cfg_.policy.max_message_size = 100000;
    cfg_.policy.max_recipients = 5;
    open_all();
  }
  void TearDown() override {
    close_all();
    std::filesystem::remove_all(dir_);
  }
  void open_all() {
    queue::SpoolOptions so;
    so.path = dir_ + "/spool";
    so.max_messages = cfg_.spool_max_messages;
    so.min_free_bytes = 0;
    so.commit_delay = std::chrono::microseconds(0);
    so.on_committed = [this](const queue::MessageRecord& r) {
      if (queue_) queue_->enqueue(r);
    };
    spool_ = *queue::Spool::open(so);
    bool from_store = false;
    auto initial = start_policy(*spool_, cfg_.policy, &from_store);
    ASSERT_TRUE(initial.ok()) << initial.status();
    policy_ = std::make_unique<policy::PolicyStore>(*initial);
    queue::QueueOptions qo;
    qo.hostname = "mx.test";
    queue_ = std::make_unique<queue::QueueManager>(*spool_, transport_,
                                                   [](const std::string&) { return std::string("mx"); }, qo);
    ASSERT_TRUE(queue_->load().ok());
    auto server = ControlServer::start(
        {&cfg_, spool_.get(), queue_.get(), policy_.get(), [this] { return policy_hash(cfg_.policy); }});
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    channel_ = grpc::CreateChannel("127.0.0.1:" + std::to_string(server_->port()), grpc::InsecureChannelCredentials());
    submit_ = v1::Submission::NewStub(channel_);
    queue_api_ = v1::Queue::NewStub(channel_);
    policy_api_ = v1::Policy::NewStub(channel_);
  }
  void close_all() {
    server_.reset();
    spool_->close();
    queue_.reset();
    spool_.reset();
  }
  void restart() {
    close_all();
    open_all();
  }
  void use_tokens() {
    const std::string path = dir_ + "/tokens";
    std::ofstream(path) << "# role tokens\n"
                        << kAdmin << " admin ops\n"
                        << kReader << " read dashboard\n"
                        << kSubmitter << " submit billing\n";
    cfg_.control_tokens_file = path;
    restart();
  }

  std::unique_ptr<grpc::ClientContext> ctx(const char* token = nullptr) {
    auto c = std::make_unique<grpc::ClientContext>();
    c->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    if (token) c->AddMetadata("authorization", std::string("Bearer ") + token);
    return c;
  }

  v1::SendMailRequest structured(const std::string& to = "bob@remote.test") {
    v1::SendMailRequest req;
    auto* m = req.mutable_structured();
    m->mutable_from()->set_address("alice@localhost");
    m->mutable_from()->set_name("Alice");
    m->add_to()->set_address(to);
    m->set_subject("Grüße");
    m->set_text_body("hello\n");
    return req;
  }

  grpc::Status send(const v1::SendMailRequest& req, v1::SendMailResponse* resp, const char* token = nullptr) {
    return submit_->SendMail(ctx(token).get(), req, resp);
  }

  std::vector<queue::MessageRecord> spooled() {
    std::vector<queue::MessageRecord> out;
    EXPECT_TRUE(spool_->for_each([&](const queue::MessageRecord& r) { out.push_back(r); }).ok());
    return out;
  }

  std::string dir_;
  config::Config cfg_;
  FakeTransport transport_;
  std::unique_ptr<queue::Spool> spool_;
  std::unique_ptr<policy::PolicyStore> policy_;
  std::unique_ptr<queue::QueueManager> queue_;
  std::unique_ptr<ControlServer> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Submission::Stub> submit_;
  std::unique_ptr<v1::Queue::Stub> queue_api_;
  std::unique_ptr<v1::Policy::Stub> policy_api_;
};

TEST_F(ControlTest, SendMailStructuredIsDurableWithReceivedAndMime) {
  v1::SendMailResponse resp;
  auto req = structured();
  req.mutable_structured()->add_bcc()->set_address("hidden@remote.test");
  ASSERT_TRUE(send(req, &resp).ok());
  EXPECT_EQ(resp.queue_id().size(), 16u);
  EXPECT_FALSE(resp.duplicate());
  const auto records = spooled();
  ASSERT_EQ(records.size(), 1u);
  const queue::MessageRecord& r = records[0];
  EXPECT_EQ(r.id, resp.queue_id());
  EXPECT_EQ(r.source, "grpc");
  EXPECT_EQ(r.envelope.sender.str(), "alice@localhost");
  ASSERT_EQ(r.envelope.recipients.size(), 2u);  // to and bcc
  EXPECT_EQ(r.envelope.recipients[1].path.str(), "hidden@remote.test");
  const std::string body = *spool_->read_body(r);
  EXPECT_THAT(body, HasSubstr("Received: from loopback ([127.0.0.1])"));
  EXPECT_THAT(body, HasSubstr("by mx.test (smtpd) with HTTP id " + r.id));
  EXPECT_THAT(body, HasSubstr("Message-ID: " + resp.message_id() + "\r\n"));
  EXPECT_THAT(body, HasSubstr("Subject: =?UTF-8?B?R3LDvMOfZQ==?=\r\n"));
  EXPECT_THAT(body, ::testing::Not(HasSubstr("hidden@")));  // Bcc never in the header
  ASSERT_TRUE(queue_->get(r.id).has_value());  // handed to the queue
}

TEST_F(ControlTest, SendMailRawAndItsErrors) {
  v1::SendMailResponse resp;
  v1::SendMailRequest req;
  req.mutable_raw()->set_data("From: a@localhost\nSubject: raw\n\nbody\n");
  auto s = send(req, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(s.error_message(), "envelope_from: required for a raw message");
  req.set_envelope_from("a@localhost");
  req.add_envelope_to("b@x.test");
  ASSERT_TRUE(send(req, &resp).ok());
  EXPECT_THAT(*spool_->read_body(spooled()[0]), HasSubstr("\r\nSubject: raw\r\n\r\nbody\r\n"));
  EXPECT_THAT(*spool_->read_body(spooled()[0]), HasSubstr("Message-ID: " + resp.message_id()));

  auto code = [&](const v1::SendMailRequest& r) { return send(r, &resp); };
  v1::SendMailRequest bad = req;
  bad.set_envelope_from("not an address");
  EXPECT_THAT(code(bad).error_message(), HasSubstr("envelope_from: 'not an address' is not a valid address"));
  bad = req;
  bad.add_envelope_to("x@@y");
  EXPECT_THAT(code(bad).error_message(), HasSubstr("envelope_to[1]:"));
  bad = req;
  bad.mutable_raw()->set_data("a\rb\r\n");
  EXPECT_EQ(code(bad).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  bad = req;
  bad.mutable_raw()->set_data(std::string(200000, 'x'));
  EXPECT_EQ(code(bad).error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  bad = req;
  bad.mutable_raw()->set_data("Subject: x\r\n\r\n" + std::string(99990, 'x'));  // fits alone, not with Received
  for (size_t i = 0; i < 98000; i += 990) bad.mutable_raw()->mutable_data()->replace(14 + i, 2, "\r\n");
  EXPECT_EQ(code(bad).error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  bad = req;
  for (int i = 0; i < 5; ++i) bad.add_envelope_to("r" + std::to_string(i) + "@x.test");
  EXPECT_EQ(code(bad).error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);  // 6 > max_recipients
  bad = v1::SendMailRequest();
  EXPECT_EQ(code(bad).error_message(), "message: give raw or structured");
  bad = structured();
  bad.mutable_structured()->add_headers()->set_name("Bad Name");
  EXPECT_THAT(code(bad).error_message(), HasSubstr("structured.headers[0].name"));
  bad = structured();
  bad.mutable_dsn()->add_notify("SOMETIMES");
  EXPECT_THAT(code(bad).error_message(), HasSubstr("dsn.notify"));
  bad = structured();
  bad.set_idempotency_key("has space");
  EXPECT_THAT(code(bad).error_message(), HasSubstr("idempotency_key"));
  // A request past gRPC's receive limit is refused before it is buffered.
  bad = req;
  bad.mutable_raw()->set_data(std::string(1 << 20, 'x'));
  EXPECT_EQ(code(bad).error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  // A deadline already passed.
  grpc::ClientContext late;
  late.set_deadline(std::chrono::system_clock::now() - std::chrono::seconds(1));
  EXPECT_EQ(submit_->SendMail(&late, req, &resp).error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_EQ(spooled().size(), 1u);  // nothing else was queued
}

TEST_F(ControlTest, IdempotencyKeyGivesOneMessageEvenAcrossRestarts) {
  auto req = structured();
  req.set_idempotency_key("order-4711");
  v1::SendMailResponse first, second, third;
  ASSERT_TRUE(send(req, &first).ok());
  ASSERT_TRUE(send(req, &second).ok());
  EXPECT_EQ(second.queue_id(), first.queue_id());
  EXPECT_EQ(second.message_id(), first.message_id());
  EXPECT_TRUE(second.duplicate());
  restart();
  ASSERT_TRUE(send(req, &third).ok());
  EXPECT_EQ(third.queue_id(), first.queue_id());
  EXPECT_EQ(spooled().size(), 1u);
  // Concurrent calls with one key: still one message.
  req.set_idempotency_key("burst");
  std::vector<std::thread> threads;
  std::vector<v1::SendMailResponse> answers(8);
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&, i] { EXPECT_TRUE(send(req, &answers[i]).ok()); });
  }
  for (auto& t : threads) t.join();
  for (const auto& a : answers) EXPECT_EQ(a.queue_id(), answers[0].queue_id());
  EXPECT_EQ(spooled().size(), 2u);
}

TEST_F(ControlTest, QueueFullIsResourceExhausted) {
  cfg_.spool_max_messages = 1;
  restart();
  v1::SendMailResponse resp;
  ASSERT_TRUE(send(structured(), &resp).ok());
  auto s = send(structured(), &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(s.error_message(), HasSubstr("queue full"));
}

TEST_F(ControlTest, ListGetAndManage) {
  std::vector<std::string> ids;
  for (int i = 0; i < 5; ++i) {
    v1::SendMailResponse resp;
    ASSERT_TRUE(send(structured(i == 4 ? "z@other.test" : "bob@remote.test"), &resp).ok());
    ids.push_back(resp.queue_id());
  }
  // Pages of two, in arrival order.
  v1::ListMessagesRequest lr;
  lr.set_page_size(2);
  std::vector<std::string> listed;
  for (int page = 0; page < 5; ++page) {
    v1::ListMessagesResponse lresp;
    ASSERT_TRUE(queue_api_->ListMessages(ctx().get(), lr, &lresp).ok());
    for (const auto& m : lresp.messages()) listed.push_back(m.id());
    if (lresp.next_page_token().empty()) break;
    lr.set_page_token(lresp.next_page_token());
  }
  EXPECT_EQ(listed, ids);
  lr = v1::ListMessagesRequest();
  lr.mutable_filter()->set_domain("OTHER.test");
  v1::ListMessagesResponse lresp;
  ASSERT_TRUE(queue_api_->ListMessages(ctx().get(), lr, &lresp).ok());
  ASSERT_EQ(lresp.messages_size(), 1);
  EXPECT_EQ(lresp.messages(0).id(), ids[4]);
  EXPECT_EQ(lresp.messages(0).state(), v1::MESSAGE_STATE_QUEUED);
  lr.set_page_size(5000);
  EXPECT_EQ(queue_api_->ListMessages(ctx().get(), lr, &lresp).error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  // Hold, retry of a held message, release, delete.
  v1::Selector one;
  one.set_id(ids[0]);
  v1::ActionResponse ar;
  ASSERT_TRUE(queue_api_->Hold(ctx().get(), one, &ar).ok());
  EXPECT_EQ(ar.ids(0), ids[0]);
  EXPECT_EQ(queue_api_->Retry(ctx().get(), one, &ar).error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  v1::GetMessageRequest gr;
  gr.set_id(ids[0]);
  gr.set_include_body(true);
  v1::Message msg;
  ASSERT_TRUE(queue_api_->GetMessage(ctx().get(), gr, &msg).ok());
  EXPECT_TRUE(msg.held());
  EXPECT_EQ(msg.summary().state(), v1::MESSAGE_STATE_HELD);
  EXPECT_EQ(msg.source(), "grpc");
  EXPECT_EQ(msg.recipients(0).address(), "bob@remote.test");
  EXPECT_EQ(msg.recipients(0).state(), v1::RECIPIENT_STATE_QUEUED);
  EXPECT_EQ(msg.headers(0).name(), "Received");
  EXPECT_THAT(msg.body(), HasSubstr("hello\r\n"));
  ar.Clear();
  ASSERT_TRUE(queue_api_->Release(ctx().get(), one, &ar).ok());
  // Delete by filter (no bounce), then NOT_FOUND.
  v1::DeleteRequest dr;
  dr.mutable_selector()->mutable_filter()->set_recipient("z@other.test");
  ar.Clear();
  ASSERT_TRUE(queue_api_->Delete(ctx().get(), dr, &ar).ok());
  ASSERT_EQ(ar.ids_size(), 1);
  EXPECT_EQ(ar.ids(0), ids[4]);
  gr.set_id(ids[4]);
  EXPECT_EQ(queue_api_->GetMessage(ctx().get(), gr, &msg).error_code(), grpc::StatusCode::NOT_FOUND);
  dr.mutable_selector()->set_id(ids[4]);
  EXPECT_EQ(queue_api_->Delete(ctx().get(), dr, &ar).error_code(), grpc::StatusCode::NOT_FOUND);
  dr.clear_selector();
  EXPECT_EQ(queue_api_->Delete(ctx().get(), dr, &ar).error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  // Deliveries in flight, a deferral, stats, then a delete with a bounce.
  queue_->tick();  // four messages handed to the transport
  v1::QueueStats st;
  ASSERT_TRUE(queue_api_->GetStats(ctx().get(), v1::GetStatsRequest(), &st).ok());
  EXPECT_EQ(st.messages(), 4u);
  EXPECT_EQ(st.messages_by_state().at("delivering"), 4u);
  EXPECT_EQ(st.backlog_by_destination().at("mx:remote.test"), 4u);
  EXPECT_EQ(st.spool_capacity(), 50u);
  dr.mutable_selector()->set_id(ids[1]);
  dr.set_bounce(true);
  EXPECT_EQ(queue_api_->Delete(ctx().get(), dr, &ar).error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  for (int i = 0; i < 4; ++i) transport_.answer(smtp::Reply(451, "4.2.1", "try later"));
  gr.set_id(ids[1]);
  gr.set_include_body(false);
  ASSERT_TRUE(queue_api_->GetMessage(ctx().get(), gr, &msg).ok());
  EXPECT_EQ(msg.summary().state(), v1::MESSAGE_STATE_DEFERRED);
  ASSERT_EQ(msg.attempts_size(), 1);
  EXPECT_EQ(msg.attempts(0).reply(), "451 4.2.1 try later");
  EXPECT_EQ(msg.attempts(0).remote_host(), "mx.remote.test");
  EXPECT_EQ(msg.body(), "");
  ar.Clear();
  ASSERT_TRUE(queue_api_->Delete(ctx().get(), dr, &ar).ok());
  // The bounce went to alice: a new message from <>.
  bool bounce = false;
  for (const auto& r : spooled()) bounce = bounce || (r.envelope.sender.null && r.envelope.recipients[0].path.str() == "alice@localhost");
  EXPECT_TRUE(bounce);
  v1::Selector all_deferred;
  all_deferred.mutable_filter()->set_state(v1::MESSAGE_STATE_DEFERRED);
  ar.Clear();
  ASSERT_TRUE(queue_api_->Retry(ctx().get(), all_deferred, &ar).ok());
  EXPECT_EQ(ar.ids_size(), 3);
}

TEST_F(ControlTest, WatchSeesQueuedAttemptDeferredFailedRemoved) {
  grpc::ClientContext wctx;
  auto reader = queue_api_->WatchQueue(&wctx, v1::WatchQueueRequest());
  reader->WaitForInitialMetadata();  // the watch is in place
  v1::SendMailResponse resp;
  ASSERT_TRUE(send(structured(), &resp).ok());
  const std::string id = resp.queue_id();
  queue_->tick();
  transport_.answer(smtp::Reply(451, "4.2.1", "busy"));
  ASSERT_TRUE(queue_->retry(id).ok());
  queue_->tick();
  transport_.answer(smtp::Reply(550, "5.1.1", "no such user"));
  std::vector<std::string> seen;
  v1::QueueEvent ev;
  for (int i = 0; i < 7 && reader->Read(&ev); ++i) {
    seen.push_back(v1::QueueEvent::Kind_Name(ev.kind()) + ":" + (ev.id() == id ? "m" : "dsn") + ":" + ev.recipient());
  }
  EXPECT_EQ(seen, (std::vector<std::string>{
                      "KIND_QUEUED:m:bob@remote.test", "KIND_ATTEMPT:m:bob@remote.test",
                      "KIND_DEFERRED:m:bob@remote.test", "KIND_ATTEMPT:m:bob@remote.test",
                      "KIND_FAILED:m:bob@remote.test", "KIND_QUEUED:dsn:alice@localhost",
                      "KIND_REMOVED:m:bob@remote.test"}));
  // A filtered watch sees only its sender's events.
  grpc::ClientContext fctx;
  v1::WatchQueueRequest fr;
  fr.mutable_filter()->set_sender("<>");
  auto bounces = queue_api_->WatchQueue(&fctx, fr);
  bounces->WaitForInitialMetadata();
  ASSERT_TRUE(send(structured(), &resp).ok());
  ASSERT_TRUE(reader->Read(&ev));
  EXPECT_EQ(ev.id(), resp.queue_id());
  queue_->tick();  // the DSN's first attempt
  ASSERT_TRUE(bounces->Read(&ev));
  EXPECT_EQ(ev.kind(), v1::QueueEvent::KIND_ATTEMPT);
  EXPECT_EQ(ev.sender(), "");
  wctx.TryCancel();
  fctx.TryCancel();
  while (reader->Read(&ev)) {
  }
  while (bounces->Read(&ev)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_EQ(bounces->Finish().error_code(), grpc::StatusCode::CANCELLED);
  while (!transport_.calls.empty()) transport_.answer(smtp::Reply(250, "2.0.0", "ok"));
}

TEST_F(ControlTest, PolicyCompareAndSetValidatedAndPersisted) {
  v1::PolicySnapshot p;
  ASSERT_TRUE(policy_api_->GetPolicy(ctx().get(), v1::GetPolicyRequest(), &p).ok());
  EXPECT_EQ(p.version(), 1u);
  EXPECT_EQ(p.max_recipients(), 5u);
  EXPECT_EQ(p.updated_by(), "config");
  v1::UpdatePolicyRequest ur;
  *ur.mutable_policy() = p;
  ur.mutable_policy()->add_relay_domains("partner.test");
  ur.mutable_policy()->set_max_message_size(50000);
  auto* rule = ur.mutable_policy()->add_sender_access();
  rule->set_pattern("spam.test");
  rule->set_action(v1::ACCESS_ACTION_DENY);
  rule->set_reply("550 5.7.1 No thanks");
  ur.set_expected_version(1);
  v1::PolicySnapshot updated;
  ASSERT_TRUE(policy_api_->UpdatePolicy(ctx().get(), ur, &updated).ok());
  EXPECT_EQ(updated.version(), 2u);
  EXPECT_EQ(updated.updated_by(), "loopback");
  EXPECT_TRUE(policy_->current()->is_relay("partner.test"));
  // A stale version is refused.
  auto s = policy_api_->UpdatePolicy(ctx().get(), ur, &updated);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::ABORTED);
  EXPECT_THAT(s.error_message(), HasSubstr("version is 2, not 1"));
  // A bad value names its field.
  ur.set_expected_version(2);
  ur.mutable_policy()->add_trusted_networks("10.0.0.0/99");
  s = policy_api_->UpdatePolicy(ctx().get(), ur, &updated);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("policy.trusted_networks[0]"));
  ur.mutable_policy()->clear_trusted_networks();
  (*ur.mutable_policy()->mutable_routes())["x.test"] = "carrier-pigeon";
  s = policy_api_->UpdatePolicy(ctx().get(), ur, &updated);
  EXPECT_THAT(s.error_message(), HasSubstr("policy.routes.x.test"));
  ur.mutable_policy()->mutable_routes()->erase("x.test");
  ur.mutable_policy()->mutable_sender_access(0)->set_reply("250 2.0.0 fine");
  s = policy_api_->UpdatePolicy(ctx().get(), ur, &updated);
  EXPECT_THAT(s.error_message(), HasSubstr("policy.sender_access[0].reply"));
  EXPECT_EQ(policy_->current()->version, 2u);
  // The new limits apply to SendMail at once, and the policy survives a restart.
  v1::SendMailRequest big;
  big.mutable_raw()->set_data("Subject: x\r\n\r\n" + std::string(60000, 'x').replace(900, 2, "\r\n"));
  big.set_envelope_from("a@localhost");
  big.add_envelope_to("b@x.test");
  v1::SendMailResponse resp;
  v1::SendMailRequest denied = structured();
  denied.mutable_structured()->mutable_from()->set_address("x@spam.test");
  EXPECT_EQ(send(denied, &resp).error_code(), grpc::StatusCode::PERMISSION_DENIED);
  restart();
  EXPECT_EQ(policy_->current()->version, 2u);
  EXPECT_TRUE(policy_->current()->is_relay("partner.test"));
  EXPECT_EQ(policy_->current()->max_message_size, 50000u);
  EXPECT_EQ(send(big, &resp).error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
}

TEST_F(ControlTest, LatestPolicyChangeWinsAtStart) {
  v1::PolicySnapshot p;
  ASSERT_TRUE(policy_api_->GetPolicy(ctx().get(), v1::GetPolicyRequest(), &p).ok());
  v1::UpdatePolicyRequest ur;
  *ur.mutable_policy() = p;
  ur.mutable_policy()->add_relay_domains("api.test");
  ASSERT_TRUE(policy_api_->UpdatePolicy(ctx().get(), ur, &p).ok());
  restart();  // same config file: the API's policy stays
  EXPECT_TRUE(policy_->current()->is_relay("api.test"));
  EXPECT_EQ(policy_->current()->version, 2u);
  cfg_.policy.relay_domains = {"file.test"};  // the file changed while smtpd was down
  restart();
  EXPECT_FALSE(policy_->current()->is_relay("api.test"));
  EXPECT_TRUE(policy_->current()->is_relay("file.test"));
  EXPECT_EQ(policy_->current()->version, 3u);
  EXPECT_EQ(policy_->current()->updated_by, "config");
  restart();  // and stays
  EXPECT_EQ(policy_->current()->version, 3u);
  EXPECT_EQ(policy_hash(cfg_.policy), policy_hash(cfg_.policy));
  policy::PolicySnapshot other = cfg_.policy;
  other.version = 9;
  other.updated_by = "someone";
  EXPECT_EQ(policy_hash(other), policy_hash(cfg_.policy));  // content only
  other.routes["x.test"] = "mx";
  EXPECT_NE(policy_hash(other), policy_hash(cfg_.policy));
}

TEST_F(ControlTest, TokensAndRoles) {
  use_tokens();
  v1::SendMailResponse resp;
  auto s = send(structured(), &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(send(structured(), &resp, "wrong-token-0123456789").error_code(), grpc::StatusCode::UNAUTHENTICATED);
  s = send(structured(), &resp, kReader);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(s.error_message(), HasSubstr("'dashboard'"));
  ASSERT_TRUE(send(structured(), &resp, kSubmitter).ok());
  ASSERT_TRUE(send(structured(), &resp, kAdmin).ok());
  v1::QueueStats st;
  EXPECT_EQ(queue_api_->GetStats(ctx(kSubmitter).get(), v1::GetStatsRequest(), &st).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  ASSERT_TRUE(queue_api_->GetStats(ctx(kReader).get(), v1::GetStatsRequest(), &st).ok());
  EXPECT_EQ(st.messages(), 2u);
  v1::Selector one;
  one.set_id(resp.queue_id());
  v1::ActionResponse ar;
  EXPECT_EQ(queue_api_->Hold(ctx(kReader).get(), one, &ar).error_code(), grpc::StatusCode::PERMISSION_DENIED);
  ASSERT_TRUE(queue_api_->Hold(ctx(kAdmin).get(), one, &ar).ok());
  v1::PolicySnapshot p;
  ASSERT_TRUE(policy_api_->GetPolicy(ctx(kReader).get(), v1::GetPolicyRequest(), &p).ok());
  v1::UpdatePolicyRequest ur;
  *ur.mutable_policy() = p;
  EXPECT_EQ(policy_api_->UpdatePolicy(ctx(kReader).get(), ur, &p).error_code(), grpc::StatusCode::PERMISSION_DENIED);
  ASSERT_TRUE(policy_api_->UpdatePolicy(ctx(kAdmin).get(), ur, &p).ok());
  EXPECT_EQ(p.updated_by(), "ops");
  // The watch stream checks too.
  grpc::ClientContext wctx;
  wctx.AddMetadata("authorization", std::string("Bearer ") + kSubmitter);
  auto reader = queue_api_->WatchQueue(&wctx, v1::WatchQueueRequest());
  v1::QueueEvent ev;
  EXPECT_FALSE(reader->Read(&ev));
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::PERMISSION_DENIED);
}

TEST(AccessList, FileFormat) {
  EXPECT_FALSE(AccessList::parse("short admin\n", "t").ok());
  EXPECT_THAT(std::string(AccessList::parse("0123456789abcdefgh boss\n", "t").status().message()),
              HasSubstr("t:1: role 'boss'"));
  EXPECT_FALSE(AccessList::parse("0123456789abcdefgh read a extra\n", "t").ok());
  EXPECT_FALSE(AccessList::parse("0123456789abcdefgh read\n0123456789abcdefgh admin\n", "t").ok());
  auto list = AccessList::parse("# c\n\n0123456789abcdefgh read\r\n", "t");
  ASSERT_TRUE(list.ok());
  EXPECT_EQ(list->authenticate("Bearer 0123456789abcdefgh")->name, "token-3");
  EXPECT_FALSE(list->authenticate("Bearer 0123456789abcdefg").ok());
  EXPECT_FALSE(list->authenticate("Basic 0123456789abcdefgh").ok());
}

}  // namespace
}  // namespace smtpd::control
