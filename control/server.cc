#include "control/server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>
#include <grpcpp/health_check_service_interface.h>
#include <openssl/evp.h>

#include <chrono>
#include <deque>
#include <fstream>
#include <sstream>
#include <thread>

#include "control/access.h"
#include "control/convert.h"
#include "control/idempotency.h"
#include "lib/message/mime.h"
#include "lib/message/received.h"
#include "lib/observe/log.h"
#include "lib/observe/metrics.h"
#include "smtpd/v1/policy.grpc.pb.h"
#include "smtpd/v1/queue.grpc.pb.h"
#include "smtpd/v1/submission.grpc.pb.h"

namespace smtpd::control {
namespace {

using observe::Level;
using observe::LogLine;

constexpr char kPolicyKey[] = "policy";
constexpr char kPolicyConfigHashKey[] = "policy-config-hash";
constexpr int64_t kIdempotencyRetentionMs = 24LL * 3600 * 1000;
constexpr size_t kWatchBuffer = 10000;  // events a slow watcher may fall behind

int64_t unix_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// smtpd_grpc_calls_total{method, code}: code as gRPC names it (NOT_FOUND).
void count_call(const char* method, const absl::Status& s) {
  std::string code = absl::StatusCodeToString(s.code());
  for (char& c : code) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  for (char& c : code) c = c == ' ' ? '_' : c;
  observe::Metrics::get().grpc_call(method, code.c_str());
}

grpc::Status to_grpc(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// "ipv4:127.0.0.1:5000" / "ipv6:[::1]:5000" -> the address.
std::string peer_address(const std::string& peer) {
  std::string s = peer.substr(peer.find(':') + 1);
  if (!s.empty() && s.front() == '[') return s.substr(1, s.find(']') - 1);
  const size_t colon = s.rfind(':');
  return colon == std::string::npos ? s : s.substr(0, colon);
}

// RFC 3461 4: xtext, for ENVID given as plain text.
std::string xtext(std::string_view s) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (char c : s) {
    const unsigned char u = static_cast<unsigned char>(c);
    if (u >= '!' && u <= '~' && c != '+' && c != '=') {
      out += c;
    } else {
      out += '+';
      out += kHex[u >> 4];
      out += kHex[u & 15];
    }
  }
  return out;
}

absl::StatusOr<smtp::Path> parse_address(const std::string& address, const std::string& field, bool allow_null) {
  smtp::Path p;
  if (allow_null && (address == "<>" || address.empty())) {
    p.null = true;
    return p;
  }
  std::string a = address;
  if (a.size() >= 2 && a.front() == '<' && a.back() == '>') a = a.substr(1, a.size() - 2);
  const smtp::PathParse parsed = smtp::parse_mailbox(a, true);
  if (parsed.error != smtp::PathError::kNone || parsed.path.postmaster) {
    return absl::InvalidArgumentError(field + ": '" + address + "' is not a valid address (RFC 5321 4.1.2)");
  }
  return parsed.path;
}

bool printable_key(const std::string& k) {
  if (k.empty() || k.size() > 200) return false;
  for (char c : k) {
    if (c < '!' || c > '~') return false;
  }
  return true;
}

}  // namespace

struct ControlServer::Impl {
  ControlDeps deps;
  AccessList access;
  bool mutual_tls = false;
  bool tls = false;
  IdempotencyStore idempotency;
  std::unique_ptr<grpc::Server> server;
  std::unique_ptr<grpc::Server> health_server;  // control.health_address: health only, plaintext
  int port = 0;
  int health_port = 0;
  std::unique_ptr<grpc::Service> submission, queue, policy;
  std::unique_ptr<grpc::Service> local_submission, local_queue, local_policy;
  std::unique_ptr<grpc::Server> local_server;  // control.local_address
  int local_port = 0;
  // Unary calls between their handler's start and their Finish: shutdown
  // lets them end before it cancels what is left (watch streams).
  std::atomic<int> calls_in_flight{0};
  struct CallGuard {
    explicit CallGuard(Impl& i) : impl(i) { ++impl.calls_in_flight; }
    ~CallGuard() { --impl.calls_in_flight; }
    Impl& impl;
  };

  explicit Impl(ControlDeps d) : deps(d), idempotency(*d.spool, kIdempotencyRetentionMs) {}

  absl::StatusOr<Caller> authorize(grpc::CallbackServerContext* ctx, Role needed, bool local) const {
    Caller caller;
    if (local) {
      caller.name = "loopback";  // control.local_address: only the host's own processes reach it
      caller.role = Role::kAdmin;
    } else if (access.empty()) {
      // No tokens: the embedded loopback default, or mutual TLS (the
      // certificate was verified against the client CA).
      caller.name = mutual_tls ? "client-certificate" : "loopback";
      caller.role = Role::kAdmin;
    } else {
      const auto& md = ctx->client_metadata();
      auto it = md.find("authorization");
      const std::string_view header = it == md.end() ? std::string_view()
                                                     : std::string_view(it->second.data(), it->second.size());
      auto found = access.authenticate(header);
      if (!found.ok()) return found.status();
      caller = *found;
    }
    if (absl::Status s = AccessList::permit(caller, needed); !s.ok()) return s;
    return caller;
  }

  // SendMail without the gRPC plumbing: `done` gets the answer, maybe on
  // the spool's flusher thread.
  void send(grpc::CallbackServerContext* ctx, const v1::SendMailRequest& req, const Caller& caller,
            std::function<void(absl::StatusOr<v1::SendMailResponse>)> done);
};

namespace {

class SubmissionService final : public v1::Submission::CallbackService {
 public:
  // local: served on control.local_address (loopback, plaintext): callers
  // there are the pod's own tools and act as admin without a token.
  SubmissionService(ControlServer::Impl& impl, bool local) : impl_(impl), local_(local) {}

  grpc::ServerUnaryReactor* SendMail(grpc::CallbackServerContext* ctx, const v1::SendMailRequest* req,
                                     v1::SendMailResponse* resp) override {
    grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
    auto caller = impl_.authorize(ctx, Role::kSubmit, local_);
    if (!caller.ok()) {
      count_call("SendMail", caller.status());
      reactor->Finish(to_grpc(caller.status()));
      return reactor;
    }
    auto guard = std::make_shared<ControlServer::Impl::CallGuard>(impl_);  // until the commit answers
    impl_.send(ctx, *req, *caller, [reactor, resp, guard](absl::StatusOr<v1::SendMailResponse> r) {
      if (r.ok()) *resp = *std::move(r);
      count_call("SendMail", r.status());
      reactor->Finish(to_grpc(r.status()));
    });
    return reactor;
  }

 private:
  ControlServer::Impl& impl_;
  const bool local_;
};

// Sends queue events to one WatchQueue caller, from a bounded buffer. At
// most one write is in flight; StartWrite and Finish are called outside
// the lock (gRPC may run a reaction inline).
class Watcher final : public grpc::ServerWriteReactor<v1::QueueEvent> {
 public:
  Watcher(queue::QueueManager& q, v1::Filter filter) : queue_(q), filter_(std::move(filter)) {
    token_ = queue_.subscribe([this](const queue::QueueEvent& e) { push(e); });
    // Tells the client the watch is in place: events from now on reach it.
    StartSendInitialMetadata();
  }

  void OnWriteDone(bool ok) override {
    {
      absl::MutexLock lock(&mu_);
      buffer_.pop_front();
      writing_ = false;
      if (!ok) end_locked(grpc::Status(grpc::StatusCode::CANCELLED, "watcher went away"));
    }
    step();
  }
  void OnCancel() override {
    {
      absl::MutexLock lock(&mu_);
      end_locked(grpc::Status::CANCELLED);
    }
    step();
  }
  void OnDone() override {
    queue_.unsubscribe(token_);  // no callback runs after this returns
    delete this;
  }

 private:
  bool matches(const queue::QueueEvent& e) const {
    if (!filter_.sender().empty()) {
      const std::string want = filter_.sender() == "<>" ? "" : policy::lower_ascii(filter_.sender());
      if (policy::lower_ascii(e.sender) != want) return false;
    }
    if (filter_.recipient().empty() && filter_.domain().empty()) return true;
    for (const std::string& r : e.recipients) {
      const std::string l = policy::lower_ascii(r);
      const size_t at = l.rfind('@');
      const std::string domain = at == std::string::npos ? "" : l.substr(at + 1);
      if ((filter_.recipient().empty() || l == policy::lower_ascii(filter_.recipient())) &&
          (filter_.domain().empty() || domain == policy::lower_ascii(filter_.domain()))) {
        return true;
      }
    }
    return false;
  }

  void push(const queue::QueueEvent& e) {
    if (!matches(e)) return;
    {
      absl::MutexLock lock(&mu_);
      if (ended_) return;
      if (buffer_.size() >= kWatchBuffer) {
        end_locked(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                                "watcher fell more than " + std::to_string(kWatchBuffer) + " events behind"));
      } else {
        buffer_.push_back(event_to_proto(e));
      }
    }
    step();
  }

  void end_locked(grpc::Status s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (ended_) return;
    ended_ = true;
    finish_ = std::move(s);
  }

  // Starts the next write, or finishes once no write is in flight.
  void step() {
    const v1::QueueEvent* next = nullptr;
    std::optional<grpc::Status> finish;
    {
      absl::MutexLock lock(&mu_);
      if (writing_) return;
      if (ended_) {
        if (finish_) finish.swap(finish_);
      } else if (!buffer_.empty()) {
        writing_ = true;
        next = &buffer_.front();  // a deque keeps references across push_back
      }
    }
    if (next != nullptr) StartWrite(next);
    if (finish) Finish(*finish);
  }

  queue::QueueManager& queue_;
  v1::Filter filter_;
  uint64_t token_ = 0;
  absl::Mutex mu_;
  std::deque<v1::QueueEvent> buffer_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool ended_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<grpc::Status> finish_ ABSL_GUARDED_BY(mu_);  // to send once no write is in flight
};

class QueueService final : public v1::Queue::CallbackService {
 public:
  // local: served on control.local_address (loopback, plaintext): callers
  // there are the pod's own tools and act as admin without a token.
  QueueService(ControlServer::Impl& impl, bool local) : impl_(impl), local_(local) {}

  grpc::ServerUnaryReactor* ListMessages(grpc::CallbackServerContext* ctx, const v1::ListMessagesRequest* req,
                                         v1::ListMessagesResponse* resp) override {
    return unary(ctx, "ListMessages", Role::kRead, [&]() -> absl::Status {
      if (req->page_size() < 0 || req->page_size() > 1000) {
        return absl::InvalidArgumentError("page_size: must be 0..1000");
      }
      auto match = matcher(req->filter());
      if (!match.ok()) return match.status();
      const size_t limit = req->page_size() == 0 ? 100 : static_cast<size_t>(req->page_size());
      bool more = false;
      auto page = impl_.deps.queue->list(req->page_token(), limit, *match, &more);
      for (const queue::MessageView& v : page) summary_to_proto(v, resp->add_messages());
      if (more && !page.empty()) resp->set_next_page_token(page.back().record.id);
      return absl::OkStatus();
    });
  }

  grpc::ServerUnaryReactor* GetMessage(grpc::CallbackServerContext* ctx, const v1::GetMessageRequest* req,
                                       v1::Message* resp) override {
    return unary(ctx, "GetMessage", Role::kRead, [&]() -> absl::Status {
      auto v = impl_.deps.queue->get(req->id());
      if (!v) return absl::NotFoundError("no message " + req->id() + " in the queue");
      summary_to_proto(*v, resp->mutable_summary());
      const smtp::Envelope& env = v->record.envelope;
      for (size_t i = 0; i < v->states.size(); ++i) {
        v1::Recipient* r = resp->add_recipients();
        r->set_address(env.recipients[i].path.str());
        r->set_state(recipient_state(*v, i));
        r->set_attempts(v->states[i].attempts);
        if (!v->states[i].final() && !v->in_flight.count(i)) r->set_next_attempt_unix_ms(v->states[i].next_attempt_ms);
        r->set_last_reply(v->states[i].last_reply);
        std::string notify;
        const uint8_t n = env.recipients[i].notify;
        if (n & smtp::kNotifyNever) notify = "NEVER";
        if (n & smtp::kNotifySuccess) notify += std::string(notify.empty() ? "" : ",") + "SUCCESS";
        if (n & smtp::kNotifyFailure) notify += std::string(notify.empty() ? "" : ",") + "FAILURE";
        if (n & smtp::kNotifyDelay) notify += std::string(notify.empty() ? "" : ",") + "DELAY";
        r->set_notify(notify);
        r->set_orcpt(env.recipients[i].orcpt);
      }
      for (const queue::AttemptRecord& a : v->attempts) {
        v1::Attempt* p = resp->add_attempts();
        p->set_unix_ms(a.unix_ms);
        p->set_recipient(static_cast<int32_t>(a.recipient));
        p->set_route(a.route);
        p->set_remote_host(a.remote_host);
        p->set_result(a.result == queue::RecipientStatus::kDelivered ? v1::RECIPIENT_STATE_DELIVERED
                      : a.result == queue::RecipientStatus::kFailed  ? v1::RECIPIENT_STATE_FAILED
                                                                     : v1::RECIPIENT_STATE_DEFERRED);
        p->set_reply(a.reply);
      }
      resp->set_client_address(v->record.client_address);
      resp->set_helo(v->record.helo);
      resp->set_auth_user(v->record.auth_user);
      resp->set_protocol(v->record.protocol);
      resp->set_source(v->record.source);
      resp->set_held(v->held);
      resp->set_envelope_id(env.envid);
      resp->set_smtputf8(env.smtputf8);
      auto text = req->include_body() ? impl_.deps.spool->read_body(v->record)
                                      : impl_.deps.spool->read_prefix(v->record, 256 * 1024);
      if (!text.ok()) return absl::UnavailableError("spool: " + std::string(text.status().message()));
      for (auto& [name, value] : header_fields(*text)) {
        v1::HeaderField* h = resp->add_headers();
        h->set_name(name);
        h->set_value(value);
      }
      if (req->include_body()) resp->set_body(*std::move(text));
      return absl::OkStatus();
    });
  }

  grpc::ServerWriteReactor<v1::QueueEvent>* WatchQueue(grpc::CallbackServerContext* ctx,
                                                      const v1::WatchQueueRequest* req) override {
    auto caller = impl_.authorize(ctx, Role::kRead, local_);
    count_call("WatchQueue", caller.status());
    if (!caller.ok()) {
      class Refused final : public grpc::ServerWriteReactor<v1::QueueEvent> {
       public:
        explicit Refused(const grpc::Status& s) { Finish(s); }
        void OnDone() override { delete this; }
      };
      return new Refused(to_grpc(caller.status()));
    }
    return new Watcher(*impl_.deps.queue, req->filter());
  }

  grpc::ServerUnaryReactor* Retry(grpc::CallbackServerContext* ctx, const v1::Selector* req,
                                  v1::ActionResponse* resp) override {
    return action(ctx, "Retry", *req, resp, [this](const std::string& id) { return impl_.deps.queue->retry(id); });
  }
  grpc::ServerUnaryReactor* Hold(grpc::CallbackServerContext* ctx, const v1::Selector* req,
                                 v1::ActionResponse* resp) override {
    return action(ctx, "Hold", *req, resp, [this](const std::string& id) { return impl_.deps.queue->hold(id); });
  }
  grpc::ServerUnaryReactor* Release(grpc::CallbackServerContext* ctx, const v1::Selector* req,
                                    v1::ActionResponse* resp) override {
    return action(ctx, "Release", *req, resp, [this](const std::string& id) { return impl_.deps.queue->release(id); });
  }
  grpc::ServerUnaryReactor* Delete(grpc::CallbackServerContext* ctx, const v1::DeleteRequest* req,
                                   v1::ActionResponse* resp) override {
    const bool bounce = req->bounce();
    return action(ctx, "Delete", req->selector(), resp,
                  [this, bounce](const std::string& id) { return impl_.deps.queue->remove(id, bounce); });
  }

  grpc::ServerUnaryReactor* GetStats(grpc::CallbackServerContext* ctx, const v1::GetStatsRequest*,
                                     v1::QueueStats* resp) override {
    return unary(ctx, "GetStats", Role::kRead, [&]() -> absl::Status {
      const queue::QueueStats s = impl_.deps.queue->stats();
      resp->set_messages(s.messages);
      for (const auto& [k, v] : s.messages_by_state) (*resp->mutable_messages_by_state())[k] = v;
      for (const auto& [k, v] : s.recipients_by_state) (*resp->mutable_recipients_by_state())[k] = v;
      for (const auto& [k, v] : s.backlog) (*resp->mutable_backlog_by_destination())[k] = v;
      resp->set_oldest_age_seconds(s.oldest_arrival_unix_us == 0
                                       ? 0
                                       : std::max<int64_t>(0, (unix_ms() - s.oldest_arrival_unix_us / 1000) / 1000));
      resp->set_deliveries_in_flight(s.in_flight);
      resp->set_spool_capacity(impl_.deps.config->spool_max_messages);
      return absl::OkStatus();
    });
  }

 private:
  template <typename Fn>
  grpc::ServerUnaryReactor* unary(grpc::CallbackServerContext* ctx, const char* method, Role role, Fn&& fn) {
    ControlServer::Impl::CallGuard guard(impl_);
    grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
    auto caller = impl_.authorize(ctx, role, local_);
    const absl::Status status = caller.ok() ? fn() : caller.status();
    count_call(method, status);
    reactor->Finish(to_grpc(status));
    return reactor;
  }

  absl::StatusOr<std::function<bool(const queue::MessageView&)>> matcher(const v1::Filter& f) {
    if (f.older_than_seconds() < 0 || f.newer_than_seconds() < 0) {
      return absl::InvalidArgumentError("filter: ages must not be negative");
    }
    const char* state = nullptr;
    switch (f.state()) {
      case v1::MESSAGE_STATE_UNSPECIFIED: break;
      case v1::MESSAGE_STATE_QUEUED: state = "queued"; break;
      case v1::MESSAGE_STATE_DEFERRED: state = "deferred"; break;
      case v1::MESSAGE_STATE_HELD: state = "held"; break;
      case v1::MESSAGE_STATE_DELIVERING: state = "delivering"; break;
      default: return absl::InvalidArgumentError("filter.state: unknown state");
    }
    const std::string sender = f.sender() == "<>" ? "" : policy::lower_ascii(f.sender());
    const bool any_sender = f.sender().empty();
    const std::string rcpt = policy::lower_ascii(f.recipient());
    const std::string domain = policy::lower_ascii(f.domain());
    const int64_t now = unix_ms();
    const int64_t older = f.older_than_seconds() * 1000, newer = f.newer_than_seconds() * 1000;
    return [=](const queue::MessageView& v) {
      if (state != nullptr && std::string_view(v.state()) != state) return false;
      if (!any_sender && policy::lower_ascii(v.record.envelope.sender.str()) != sender) return false;
      const int64_t age = now - v.record.arrival_unix_us / 1000;
      if (older > 0 && age < older) return false;
      if (newer > 0 && age >= newer) return false;
      if (rcpt.empty() && domain.empty()) return true;
      for (const smtp::Recipient& r : v.record.envelope.recipients) {
        if ((rcpt.empty() || policy::lower_ascii(r.path.str()) == rcpt) &&
            (domain.empty() || r.path.mailbox.domain_lower() == domain)) {
          return true;
        }
      }
      return false;
    };
  }

  grpc::ServerUnaryReactor* action(grpc::CallbackServerContext* ctx, const char* method, const v1::Selector& sel,
                                   v1::ActionResponse* resp, const std::function<absl::Status(const std::string&)>& fn) {
    return unary(ctx, method, Role::kAdmin, [&]() -> absl::Status {
      std::vector<std::string> ids;
      if (sel.has_filter()) {
        auto match = matcher(sel.filter());
        if (!match.ok()) return match.status();
        bool more = false;
        for (const queue::MessageView& v : impl_.deps.queue->list("", SIZE_MAX, *match, &more)) {
          ids.push_back(v.record.id);
        }
      } else if (!sel.id().empty()) {
        ids.push_back(sel.id());
      } else {
        return absl::InvalidArgumentError("selector: give an id or a filter");
      }
      for (const std::string& id : ids) {
        const absl::Status s = fn(id);
        if (s.ok()) {
          resp->add_ids(id);
        } else {
          auto* f = resp->add_failures();
          f->set_id(id);
          f->set_code(static_cast<int32_t>(s.code()));
          f->set_message(std::string(s.message()));
        }
      }
      // One message by id: its error is the call's error.
      if (!sel.has_filter() && resp->failures_size() == 1) {
        return absl::Status(static_cast<absl::StatusCode>(resp->failures(0).code()), resp->failures(0).message());
      }
      return absl::OkStatus();
    });
  }

  ControlServer::Impl& impl_;
  const bool local_;
};

class PolicyService final : public v1::Policy::CallbackService {
 public:
  // local: served on control.local_address (loopback, plaintext): callers
  // there are the pod's own tools and act as admin without a token.
  PolicyService(ControlServer::Impl& impl, bool local) : impl_(impl), local_(local) {}

  grpc::ServerUnaryReactor* GetPolicy(grpc::CallbackServerContext* ctx, const v1::GetPolicyRequest*,
                                      v1::PolicySnapshot* resp) override {
    grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
    auto caller = impl_.authorize(ctx, Role::kRead, local_);
    if (caller.ok()) *resp = policy_to_proto(*impl_.deps.policy->current());
    count_call("GetPolicy", caller.status());
    reactor->Finish(to_grpc(caller.status()));
    return reactor;
  }

  grpc::ServerUnaryReactor* UpdatePolicy(grpc::CallbackServerContext* ctx, const v1::UpdatePolicyRequest* req,
                                         v1::PolicySnapshot* resp) override {
    grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
    auto caller = impl_.authorize(ctx, Role::kAdmin, local_);
    if (!caller.ok()) {
      count_call("UpdatePolicy", caller.status());
      reactor->Finish(to_grpc(caller.status()));
      return reactor;
    }
    auto next = policy_from_proto(req->policy());
    if (!next.ok()) {
      const absl::Status bad = absl::InvalidArgumentError("policy." + std::string(next.status().message()));
      count_call("UpdatePolicy", bad);
      reactor->Finish(to_grpc(bad));
      return reactor;
    }
    next->updated_by = caller->name;
    next->updated_unix_ms = unix_ms();
    queue::Spool* spool = impl_.deps.spool;
    const std::string config_hash = impl_.deps.config_hash ? impl_.deps.config_hash() : "";
    auto updated = impl_.deps.policy->update(*std::move(next), req->expected_version(),
                                             [spool, &config_hash](const policy::PolicySnapshot& p) {
                                               absl::Status s = store_policy(*spool, p, config_hash);
                                               return s.ok() ? s : absl::UnavailableError("spool: " + s.ToString());
                                             });
    if (updated.ok()) {
      *resp = policy_to_proto(**updated);
      LogLine(Level::kInfo, "policy_updated").add("version", (*updated)->version).add("by", caller->name).emit();
    }
    count_call("UpdatePolicy", updated.status());
    reactor->Finish(to_grpc(updated.status()));
    return reactor;
  }

 private:
  ControlServer::Impl& impl_;
  const bool local_;
};

}  // namespace

void ControlServer::Impl::send(grpc::CallbackServerContext* ctx, const v1::SendMailRequest& req,
                               const Caller& caller, std::function<void(absl::StatusOr<v1::SendMailResponse>)> done) {
  const std::string key = req.idempotency_key();
  if (!key.empty() && !printable_key(key)) {
    return done(absl::InvalidArgumentError("idempotency_key: 1-200 printable ASCII characters"));
  }
  if (ctx->deadline() <= std::chrono::system_clock::now()) {
    return done(absl::DeadlineExceededError("deadline passed before the message was queued"));
  }
  const auto snapshot = deps.policy->current();
  const int64_t now_ms = unix_ms();
  const std::string& hostname = deps.config->hostname;
  // The message.
  std::string data, message_id;
  smtp::Envelope env;
  std::vector<std::string> default_rcpts;
  std::string default_sender;
  if (req.has_structured()) {
    const v1::StructuredMessage& s = req.structured();
    message::MimeMessage m;
    auto mailbox = [](const v1::Mailbox& mb) { return message::Mailbox{mb.address(), mb.name()}; };
    m.from = mailbox(s.from());
    for (const auto& x : s.to()) m.to.push_back(mailbox(x));
    for (const auto& x : s.cc()) m.cc.push_back(mailbox(x));
    for (const auto& x : s.reply_to()) m.reply_to.push_back(mailbox(x));
    m.subject = s.subject();
    m.text = s.text_body();
    m.html = s.html_body();
    for (const auto& a : s.attachments()) m.attachments.push_back({a.filename(), a.content_type(), a.content(), a.content_id()});
    for (const auto& h : s.headers()) m.headers.emplace_back(h.name(), h.value());
    m.hostname = hostname;
    m.unix_seconds = now_ms / 1000;
    if (s.to_size() + s.cc_size() + s.bcc_size() == 0 && req.envelope_to().empty()) {
      return done(absl::InvalidArgumentError("structured.to: no recipients (to, cc, bcc or envelope_to)"));
    }
    auto built = message::build_message(m);
    if (!built.ok()) return done(absl::InvalidArgumentError("structured." + std::string(built.status().message())));
    data = std::move(built->data);
    message_id = built->message_id;
    env.body = smtp::BodyType::k7Bit;
    default_sender = s.from().address();
    for (const auto* list : {&s.to(), &s.cc(), &s.bcc()}) {
      for (const auto& x : *list) default_rcpts.push_back(x.address());
    }
    for (int i = 0; i < s.bcc_size(); ++i) {
      if (!parse_address(s.bcc(i).address(), "structured.bcc[" + std::to_string(i) + "].address", false).ok()) {
        return done(absl::InvalidArgumentError("structured.bcc[" + std::to_string(i) + "].address: '" +
                                               s.bcc(i).address() + "' is not a valid address"));
      }
    }
  } else if (req.has_raw()) {
    if (req.envelope_from().empty()) return done(absl::InvalidArgumentError("envelope_from: required for a raw message"));
    if (req.envelope_to().empty()) return done(absl::InvalidArgumentError("envelope_to: required for a raw message"));
    if (req.raw().data().size() > snapshot->max_message_size) {
      return done(absl::ResourceExhaustedError("message size exceeds the limit of " +
                                               std::to_string(snapshot->max_message_size) + " octets"));
    }
    auto raw = message::prepare_raw(req.raw().data(), hostname, now_ms / 1000);
    if (!raw.ok()) return done(raw.status());
    data = std::move(raw->data);
    message_id = raw->message_id;
    env.body = raw->eight_bit ? smtp::BodyType::k8BitMime : smtp::BodyType::k7Bit;
  } else {
    return done(absl::InvalidArgumentError("message: give raw or structured"));
  }
  // The envelope.
  auto sender = parse_address(req.envelope_from().empty() ? default_sender : req.envelope_from(), "envelope_from", true);
  if (!sender.ok()) return done(sender.status());
  env.sender = *sender;
  env.smtputf8 = sender->utf8;
  std::vector<std::string> rcpts(req.envelope_to().begin(), req.envelope_to().end());
  if (rcpts.empty()) rcpts = default_rcpts;
  std::set<std::string> seen;
  uint8_t notify = 0;
  for (const std::string& n : req.dsn().notify()) {
    if (n == "NEVER") notify |= smtp::kNotifyNever;
    else if (n == "SUCCESS") notify |= smtp::kNotifySuccess;
    else if (n == "FAILURE") notify |= smtp::kNotifyFailure;
    else if (n == "DELAY") notify |= smtp::kNotifyDelay;
    else return done(absl::InvalidArgumentError("dsn.notify: '" + n + "' is not SUCCESS, FAILURE, DELAY or NEVER"));
  }
  if ((notify & smtp::kNotifyNever) && notify != smtp::kNotifyNever) {
    return done(absl::InvalidArgumentError("dsn.notify: NEVER excludes the others (RFC 3461 4.1)"));
  }
  for (size_t i = 0; i < rcpts.size(); ++i) {
    auto p = parse_address(rcpts[i], "envelope_to[" + std::to_string(i) + "]", false);
    if (!p.ok()) return done(p.status());
    if (!seen.insert(policy::lower_ascii(p->str())).second) continue;  // once per address
    smtp::Recipient r;
    r.path = *p;
    r.notify = notify;
    env.smtputf8 = env.smtputf8 || p->utf8;
    env.recipients.push_back(std::move(r));
  }
  env.ret = req.dsn().return_full() ? smtp::DsnRet::kFull : smtp::DsnRet::kUnspecified;
  env.envid = xtext(req.dsn().envelope_id());
  if (env.recipients.size() > snapshot->max_recipients) {
    return done(absl::ResourceExhaustedError("too many recipients: the limit is " +
                                             std::to_string(snapshot->max_recipients)));
  }
  // The same access rules as SMTP.
  if (const policy::AccessRule* r = policy::PolicySnapshot::match(snapshot->sender_access, env.sender.str());
      r != nullptr && !r->allow) {
    return done(absl::PermissionDeniedError("sender <" + env.sender.str() + ">: " + r->reply_text()));
  }
  for (const smtp::Recipient& rc : env.recipients) {
    if (const policy::AccessRule* r = policy::PolicySnapshot::match(snapshot->recipient_access, rc.path.str());
        r != nullptr && !r->allow) {
      return done(absl::PermissionDeniedError("recipient <" + rc.path.str() + ">: " + r->reply_text()));
    }
  }
  // Idempotency: a key seen before answers with the first result.
  if (!key.empty()) {
    auto joined = idempotency.begin(key, now_ms, [done](absl::StatusOr<SendResult> r) {
      if (!r.ok()) return done(r.status());
      v1::SendMailResponse resp;
      resp.set_queue_id(r->queue_id);
      resp.set_message_id(r->message_id);
      resp.set_duplicate(true);
      done(resp);
    });
    if (joined == IdempotencyStore::Begin::kJoined) return;
  }
  auto fail = [this, key, done](absl::Status s) {
    if (!key.empty()) idempotency.finish(key, s);
    done(s);
  };
  if (!deps.spool->accepting()) return fail(absl::ResourceExhaustedError("queue full: try again later"));
  auto writer = deps.spool->begin_message();
  if (!writer.ok()) {
    return fail(absl::IsResourceExhausted(writer.status()) ? writer.status()
                                                           : absl::UnavailableError(writer.status().ToString()));
  }
  message::ReceivedInfo info;
  info.helo = caller.name;
  info.client_address = peer_address(ctx->peer());
  info.by_host = hostname;
  info.queue_id = (*writer)->id();
  info.auth_user = caller.name;
  info.smtputf8 = env.smtputf8;
  info.protocol = tls ? "HTTPS" : "HTTP";  // gRPC runs over HTTP/2
  if (env.recipients.size() == 1) info.single_recipient = env.recipients[0].path.str();
  info.unix_seconds = now_ms / 1000;
  const std::string received = message::received_header(info);
  if (received.size() + data.size() > snapshot->max_message_size) {
    return fail(absl::ResourceExhaustedError("message size " + std::to_string(received.size() + data.size()) +
                                             " exceeds the limit of " + std::to_string(snapshot->max_message_size) +
                                             " octets"));
  }
  (void)(*writer)->append(received);
  (void)(*writer)->append(data);  // errors resurface at commit
  queue::MessageRecord rec;
  rec.arrival_unix_us = now_ms * 1000;
  rec.envelope = env;
  rec.client_address = info.client_address;
  rec.helo = caller.name;
  rec.auth_user = caller.name;
  rec.protocol = info.protocol;
  rec.source = "grpc";
  SendResult result{info.queue_id, message_id, now_ms};
  queue::Spool::Meta meta;
  if (!key.empty()) meta.push_back(IdempotencyStore::meta(key, result));
  std::vector<std::string> to;
  for (const auto& r : env.recipients) to.push_back(r.path.str());
  const uint64_t size = received.size() + data.size();
  deps.spool->commit(
      *std::move(writer), std::move(rec), std::move(meta),
      [this, key, result, done, sender = env.sender.str(), to, size, client = info.client_address,
       who = caller.name](absl::StatusOr<std::string> id) {
        LogLine(id.ok() ? Level::kInfo : Level::kError, "transaction")
            .add("queue_id", result.queue_id).add("listener", "grpc").add("client", client).add("auth_user", who)
            .add("from", sender).add("to", to).add("size", size).add("message_id", result.message_id)
            .add("result", id.ok() ? "accepted" : "rejected")
            .add("reply", id.ok() ? "OK" : id.status().ToString()).emit();
        if (!id.ok()) {
          const absl::Status s = absl::UnavailableError("spool: " + std::string(id.status().message()));
          if (!key.empty()) idempotency.finish(key, s);
          return done(s);
        }
        if (!key.empty()) idempotency.finish(key, result);
        v1::SendMailResponse resp;
        resp.set_queue_id(result.queue_id);
        resp.set_message_id(result.message_id);
        done(resp);
      });
}

ControlServer::ControlServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ControlServer::~ControlServer() { shutdown(); }

absl::StatusOr<std::unique_ptr<ControlServer>> ControlServer::start(ControlDeps deps) {
  auto impl = std::make_unique<Impl>(deps);
  const config::Config& c = *deps.config;
  if (!c.control_tokens_file.empty()) {
    auto list = AccessList::load(c.control_tokens_file);
    if (!list.ok()) return list.status();
    impl->access = *std::move(list);
  }
  if (absl::Status s = impl->idempotency.load(unix_ms()); !s.ok()) return s;
  std::shared_ptr<grpc::ServerCredentials> creds;
  if (!c.control_tls_cert_file.empty()) {
    grpc::SslServerCredentialsOptions opts;
    opts.pem_key_cert_pairs.push_back({read_file(c.control_tls_key_file), read_file(c.control_tls_cert_file)});
    if (opts.pem_key_cert_pairs[0].private_key.empty() || opts.pem_key_cert_pairs[0].cert_chain.empty()) {
      return absl::InvalidArgumentError("control.tls_cert_file/tls_key_file: cannot read the certificate or key");
    }
    if (!c.control_client_ca_file.empty()) {
      opts.pem_root_certs = read_file(c.control_client_ca_file);
      if (opts.pem_root_certs.empty()) return absl::InvalidArgumentError("control.client_ca_file: cannot read it");
      opts.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
      impl->mutual_tls = true;
    }
    creds = grpc::SslServerCredentials(opts);
    impl->tls = true;
  } else {
    creds = grpc::InsecureServerCredentials();
  }
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(c.control_address, creds, &impl->port);
  // Requests larger than the message limit are refused by gRPC from the
  // frame's length prefix, before they are buffered (RESOURCE_EXHAUSTED).
  // Structured messages grow by base64 (4/3) when built; the built size is
  // checked against the current limit again.
  const uint64_t limit = deps.policy->current()->max_message_size + 64 * 1024;
  builder.SetMaxReceiveMessageSize(static_cast<int>(std::min<uint64_t>(limit, INT32_MAX)));
  impl->submission = std::make_unique<SubmissionService>(*impl, false);
  impl->queue = std::make_unique<QueueService>(*impl, false);
  impl->policy = std::make_unique<PolicyService>(*impl, false);
  builder.RegisterService(impl->submission.get());
  builder.RegisterService(impl->queue.get());
  builder.RegisterService(impl->policy.get());
  impl->server = builder.BuildAndStart();
  if (!impl->server || impl->port == 0) {
    return absl::UnavailableError("control: cannot listen on " + c.control_address);
  }
  impl->server->GetHealthCheckService()->SetServingStatus(true);
  if (!c.control_local_address.empty()) {
    grpc::ServerBuilder lb;
    lb.AddListeningPort(c.control_local_address, grpc::InsecureServerCredentials(), &impl->local_port);
    lb.SetMaxReceiveMessageSize(static_cast<int>(std::min<uint64_t>(limit, INT32_MAX)));
    impl->local_submission = std::make_unique<SubmissionService>(*impl, true);
    impl->local_queue = std::make_unique<QueueService>(*impl, true);
    impl->local_policy = std::make_unique<PolicyService>(*impl, true);
    lb.RegisterService(impl->local_submission.get());
    lb.RegisterService(impl->local_queue.get());
    lb.RegisterService(impl->local_policy.get());
    impl->local_server = lb.BuildAndStart();
    if (!impl->local_server || impl->local_port == 0) {
      impl->server->Shutdown(std::chrono::system_clock::now());
      return absl::UnavailableError("control: cannot listen on " + c.control_local_address);
    }
    impl->local_server->GetHealthCheckService()->SetServingStatus(true);
    const std::string lhost = c.control_local_address.substr(0, c.control_local_address.rfind(':'));
    LogLine(Level::kInfo, "listening").add("listener", "control-local").add("mode", "grpc")
        .add("address", lhost + ":" + std::to_string(impl->local_port)).emit();
  }
  if (!c.control_health_address.empty()) {
    grpc::ServerBuilder hb;  // the default health service is its only service
    hb.AddListeningPort(c.control_health_address, grpc::InsecureServerCredentials(), &impl->health_port);
    impl->health_server = hb.BuildAndStart();
    if (!impl->health_server || impl->health_port == 0) {
      impl->server->Shutdown(std::chrono::system_clock::now());
      return absl::UnavailableError("control: cannot listen on " + c.control_health_address);
    }
    impl->health_server->GetHealthCheckService()->SetServingStatus(true);
    const std::string hhost = c.control_health_address.substr(0, c.control_health_address.rfind(':'));
    LogLine(Level::kInfo, "listening").add("listener", "health").add("mode", "grpc-health")
        .add("address", hhost + ":" + std::to_string(impl->health_port)).emit();
  }
  const std::string host = c.control_address.substr(0, c.control_address.rfind(':'));
  LogLine(Level::kInfo, "listening").add("listener", "control")
      .add("mode", impl->mutual_tls ? "grpc+mtls" : impl->tls ? "grpc+tls" : "grpc")
      .add("address", host + ":" + std::to_string(impl->port)).add("tokens", !impl->access.empty()).emit();
  return std::unique_ptr<ControlServer>(new ControlServer(std::move(impl)));
}

int ControlServer::port() const { return impl_->port; }

void ControlServer::set_serving(bool serving) {
  if (impl_->server) impl_->server->GetHealthCheckService()->SetServingStatus(serving);
  if (impl_->health_server) impl_->health_server->GetHealthCheckService()->SetServingStatus(serving);
  if (impl_->local_server) impl_->local_server->GetHealthCheckService()->SetServingStatus(serving);
}

void ControlServer::shutdown() {
  if (!impl_ || !impl_->server) return;
  impl_->server->GetHealthCheckService()->Shutdown();  // NOT_SERVING for good
  // Unary calls in flight finish (a SendMail waits for its commit, a few
  // milliseconds); then everything left, watch streams and idle client
  // connections, is cut at once. (A deadline alone would wait it out in
  // full for an idle client connection.)
  const auto limit = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (impl_->calls_in_flight.load() > 0 && std::chrono::steady_clock::now() < limit) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  impl_->server->Shutdown(std::chrono::system_clock::now());
  if (impl_->local_server) {
    impl_->local_server->GetHealthCheckService()->Shutdown();
    impl_->local_server->Shutdown(std::chrono::system_clock::now());
    impl_->local_server->Wait();
    impl_->local_server.reset();
  }
  if (impl_->health_server) {
    impl_->health_server->GetHealthCheckService()->Shutdown();
    impl_->health_server->Shutdown(std::chrono::system_clock::now());
    impl_->health_server->Wait();
    impl_->health_server.reset();
  }
  impl_->server->Wait();
  impl_->server.reset();
}

std::string policy_hash(const policy::PolicySnapshot& p) {
  v1::PolicySnapshot proto = policy_to_proto(p);
  proto.clear_version();
  proto.clear_updated_by();
  proto.clear_updated_unix_ms();
  std::string bytes;
  {
    google::protobuf::io::StringOutputStream sos(&bytes);
    google::protobuf::io::CodedOutputStream cos(&sos);
    cos.SetSerializationDeterministic(true);  // map fields in key order
    proto.SerializeToCodedStream(&cos);
  }
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(bytes.data(), bytes.size(), md, &len, EVP_sha256(), nullptr);
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (unsigned int i = 0; i < len; ++i) {
    out += kHex[md[i] >> 4];
    out += kHex[md[i] & 15];
  }
  return out;
}

absl::Status store_policy(queue::Spool& spool, const policy::PolicySnapshot& p, const std::string& config_hash) {
  std::string bytes;
  policy_to_proto(p).SerializeToString(&bytes);
  if (absl::Status s = spool.put_meta(kPolicyConfigHashKey, config_hash); !s.ok()) return s;
  return spool.put_meta(kPolicyKey, bytes);
}

absl::StatusOr<policy::PolicySnapshot> start_policy(queue::Spool& spool, const policy::PolicySnapshot& configured,
                                                    bool* from_store) {
  *from_store = false;
  auto stored = load_stored_policy(spool);
  if (!stored.ok()) return stored.status();
  const std::string hash = policy_hash(configured);
  if (!*stored) return configured;  // nothing stored: the file's, version 1
  auto stored_hash = spool.get_meta(kPolicyConfigHashKey);
  if (stored_hash.ok() && *stored_hash == hash) {
    *from_store = true;
    return **stored;
  }
  // The file changed since the stored policy was made: it wins.
  policy::PolicySnapshot next = configured;
  next.version = (*stored)->version + 1;
  next.updated_by = "config";
  next.updated_unix_ms = unix_ms();
  if (absl::Status s = store_policy(spool, next, hash); !s.ok()) return s;
  return next;
}

absl::StatusOr<std::optional<policy::PolicySnapshot>> load_stored_policy(const queue::Spool& spool) {
  auto bytes = spool.get_meta(kPolicyKey);
  if (absl::IsNotFound(bytes.status())) return std::optional<policy::PolicySnapshot>();
  if (!bytes.ok()) return bytes.status();
  v1::PolicySnapshot p;
  if (!p.ParseFromString(*bytes)) return absl::DataLossError("stored policy: cannot parse");
  auto s = policy_from_proto(p);
  if (!s.ok()) return absl::DataLossError("stored policy: " + std::string(s.status().message()));
  s->version = p.version();
  s->updated_by = p.updated_by();
  s->updated_unix_ms = p.updated_unix_ms();
  return std::optional<policy::PolicySnapshot>(*std::move(s));
}

}  // namespace smtpd::control
