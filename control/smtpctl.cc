// smtpctl: the operator's client for smtpd's gRPC API (docs/SMTPCTL.md).
// Exit status: 0 success, 1 the server said no (or could not be reached),
// 2 usage errors. Data goes to stdout, errors to stderr.
#include <grpcpp/grpcpp.h>
#include <signal.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <thread>

#include "control/ctl_format.h"
#include "health.grpc.pb.h"
#include "smtpd/v1/policy.grpc.pb.h"
#include "smtpd/v1/queue.grpc.pb.h"
#include "smtpd/v1/submission.grpc.pb.h"

namespace {

using namespace smtpd;  // NOLINT
using control::human_age;
using control::render_table;
using control::to_json;

struct Globals {
  std::string server = "127.0.0.1:50051";
  std::string token;
  bool tls = false;
  std::string ca, cert, key;
  std::string timeout = "10s";
  std::string output = "table";
};

struct Usage : std::runtime_error {
  using std::runtime_error::runtime_error;
};

int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// "30s", "5m", "2h", "1d", "250ms".
int64_t parse_duration_ms(const std::string& s, const std::string& what) {
  size_t pos = 0;
  double n = 0;
  try {
    n = std::stod(s, &pos);
  } catch (const std::exception&) {
    throw Usage(what + ": '" + s + "' is not a duration (e.g. 30s, 5m, 2h, 1d)");
  }
  const std::string unit = s.substr(pos);
  double ms;
  if (unit == "ms") ms = n;
  else if (unit.empty() || unit == "s") ms = n * 1000;
  else if (unit == "m") ms = n * 60000;
  else if (unit == "h") ms = n * 3600000;
  else if (unit == "d") ms = n * 86400000;
  else throw Usage(what + ": '" + s + "' is not a duration (units ms, s, m, h, d)");
  if (n < 0) throw Usage(what + ": must not be negative");
  return static_cast<int64_t>(ms);
}

std::string read_file(const std::string& path, const std::string& what) {
  if (path == "-") {
    std::stringstream ss;
    ss << std::cin.rdbuf();
    return ss.str();
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Usage(what + ": cannot read '" + path + "'");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

const char* code_name(grpc::StatusCode c) {
  switch (c) {
    case grpc::OK: return "OK";
    case grpc::CANCELLED: return "CANCELLED";
    case grpc::UNKNOWN: return "UNKNOWN";
    case grpc::INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case grpc::DEADLINE_EXCEEDED: return "DEADLINE_EXCEEDED";
    case grpc::NOT_FOUND: return "NOT_FOUND";
    case grpc::ALREADY_EXISTS: return "ALREADY_EXISTS";
    case grpc::PERMISSION_DENIED: return "PERMISSION_DENIED";
    case grpc::RESOURCE_EXHAUSTED: return "RESOURCE_EXHAUSTED";
    case grpc::FAILED_PRECONDITION: return "FAILED_PRECONDITION";
    case grpc::ABORTED: return "ABORTED";
    case grpc::OUT_OF_RANGE: return "OUT_OF_RANGE";
    case grpc::UNIMPLEMENTED: return "UNIMPLEMENTED";
    case grpc::INTERNAL: return "INTERNAL";
    case grpc::UNAVAILABLE: return "UNAVAILABLE";
    case grpc::DATA_LOSS: return "DATA_LOSS";
    case grpc::UNAUTHENTICATED: return "UNAUTHENTICATED";
    default: return "UNKNOWN";
  }
}

// The server said no: its code and message on stderr, exit status 1.
struct Refused {
  grpc::Status status;
};

class Client {
 public:
  explicit Client(const Globals& g) : g_(g) {
    timeout_ms_ = parse_duration_ms(g.timeout, "--timeout");
    std::shared_ptr<grpc::ChannelCredentials> creds;
    if (g.tls || !g.ca.empty() || !g.cert.empty()) {
      grpc::SslCredentialsOptions o;
      if (!g.ca.empty()) o.pem_root_certs = read_file(g.ca, "--ca");
      if (g.cert.empty() != g.key.empty()) throw Usage("--cert and --key go together");
      if (!g.cert.empty()) {
        o.pem_cert_chain = read_file(g.cert, "--cert");
        o.pem_private_key = read_file(g.key, "--key");
      }
      creds = grpc::SslCredentials(o);
    } else {
      creds = grpc::InsecureChannelCredentials();
    }
    channel_ = grpc::CreateChannel(g.server, creds);
    submission = v1::Submission::NewStub(channel_);
    queue = v1::Queue::NewStub(channel_);
    policy = v1::Policy::NewStub(channel_);
    health = grpc::health::v1::Health::NewStub(channel_);
  }

  std::unique_ptr<grpc::ClientContext> ctx(bool stream = false) const {
    auto c = std::make_unique<grpc::ClientContext>();
    if (!stream) c->set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(timeout_ms_));
    if (!g_.token.empty()) c->AddMetadata("authorization", "Bearer " + g_.token);
    return c;
  }

  static void check(const grpc::Status& s) {
    if (!s.ok()) throw Refused{s};
  }

  std::unique_ptr<v1::Submission::Stub> submission;
  std::unique_ptr<v1::Queue::Stub> queue;
  std::unique_ptr<v1::Policy::Stub> policy;
  std::unique_ptr<grpc::health::v1::Health::Stub> health;

 private:
  const Globals& g_;
  int64_t timeout_ms_ = 10000;
  std::shared_ptr<grpc::Channel> channel_;
};

void print(const google::protobuf::Message& m, const std::string& output) {
  if (output == "json") {
    std::cout << to_json(m);
  } else {
    std::cout << control::json_to_yaml(to_json(m));
  }
}

struct FilterArgs {
  std::string state, sender, rcpt, domain, older_than;
  void add(CLI::App* cmd) {
    cmd->add_option("--state", state, "queued, deferred, held or delivering")
        ->check(CLI::IsMember({"queued", "deferred", "held", "delivering"}));
    cmd->add_option("--sender", sender, "envelope sender (exact; <> for bounces)");
    cmd->add_option("--rcpt", rcpt, "an envelope recipient (exact)");
    cmd->add_option("--domain", domain, "a recipient domain");
    cmd->add_option("--older-than", older_than, "arrived at least this long ago (30s, 5m, 2h, 1d)");
  }
  bool any() const { return !state.empty() || !sender.empty() || !rcpt.empty() || !domain.empty() || !older_than.empty(); }
  v1::Filter build() const {
    v1::Filter f;
    if (state == "queued") f.set_state(v1::MESSAGE_STATE_QUEUED);
    if (state == "deferred") f.set_state(v1::MESSAGE_STATE_DEFERRED);
    if (state == "held") f.set_state(v1::MESSAGE_STATE_HELD);
    if (state == "delivering") f.set_state(v1::MESSAGE_STATE_DELIVERING);
    f.set_sender(sender);
    f.set_recipient(rcpt);
    f.set_domain(domain);
    if (!older_than.empty()) f.set_older_than_seconds(parse_duration_ms(older_than, "--older-than") / 1000);
    return f;
  }
};

int queue_ls(Client& c, const Globals& g, const FilterArgs& fa) {
  v1::ListMessagesResponse all;
  v1::ListMessagesRequest req;
  *req.mutable_filter() = fa.build();
  req.set_page_size(1000);
  while (true) {
    v1::ListMessagesResponse page;
    Client::check(c.queue->ListMessages(c.ctx().get(), req, &page));
    for (auto& m : *page.mutable_messages()) *all.add_messages() = std::move(m);
    if (page.next_page_token().empty()) break;
    req.set_page_token(page.next_page_token());
  }
  if (g.output == "json" || g.output == "yaml") {
    print(all, g.output);
    return 0;
  }
  std::vector<v1::MessageSummary> ms(all.messages().begin(), all.messages().end());
  if (ms.empty()) {
    std::cerr << "No messages in the queue.\n";
    return 0;
  }
  std::cout << render_table(control::message_rows(ms, g.output == "wide", now_ms()));
  return 0;
}

int queue_show(Client& c, const Globals& g, const std::string& id, bool body) {
  v1::GetMessageRequest req;
  req.set_id(id);
  req.set_include_body(body);
  v1::Message m;
  Client::check(c.queue->GetMessage(c.ctx().get(), req, &m));
  if (g.output == "json" || g.output == "yaml") {
    print(m, g.output);
    return 0;
  }
  const v1::MessageSummary& s = m.summary();
  const int64_t now = now_ms();
  std::vector<std::vector<std::string>> head = {
      {"ID:", s.id()},
      {"State:", control::state_name(s.state())},
      {"From:", s.sender().empty() ? "<>" : s.sender()},
      {"Size:", std::to_string(s.size()) + " octets"},
      {"Age:", human_age((now - s.arrival_unix_ms()) / 1000)},
      {"Source:", m.source() + " (client " + m.client_address() + ", " + m.protocol() +
                      (m.auth_user().empty() ? "" : ", authenticated as " + m.auth_user()) + ")"},
  };
  if (!m.envelope_id().empty()) head.push_back({"Envelope-ID:", m.envelope_id()});
  if (m.smtputf8()) head.push_back({"SMTPUTF8:", "yes"});
  std::cout << render_table(head) << "Recipients:\n";
  std::vector<std::vector<std::string>> rr = {{"  ADDRESS", "STATE", "ATTEMPTS", "NEXT", "LAST REPLY"}};
  for (const auto& r : m.recipients()) {
    rr.push_back({"  " + r.address(), control::recipient_state_name(r.state()), std::to_string(r.attempts()),
                  control::human_next(r.next_attempt_unix_ms(), now), r.last_reply().empty() ? "-" : r.last_reply()});
  }
  std::cout << render_table(rr);
  if (m.attempts_size() > 0) {
    std::cout << "Attempts:\n";
    std::vector<std::vector<std::string>> ar = {{"  AGO", "RECIPIENT", "ROUTE", "HOST", "RESULT", "REPLY"}};
    for (const auto& a : m.attempts()) {
      const std::string rcpt = a.recipient() < m.recipients_size() ? m.recipients(a.recipient()).address() : "?";
      ar.push_back({"  " + human_age((now - a.unix_ms()) / 1000), rcpt, a.route(),
                    a.remote_host().empty() ? "-" : a.remote_host(), control::recipient_state_name(a.result()),
                    a.reply()});
    }
    std::cout << render_table(ar);
  }
  std::cout << "Headers:\n";
  for (const auto& h : m.headers()) std::cout << "  " << h.name() << ": " << h.value() << "\n";
  if (body) std::cout << "\n" << m.body();
  return 0;
}

int queue_action(Client& c, const Globals& g, const std::string& action, const std::vector<std::string>& ids,
                 bool all_matching, const FilterArgs& fa, bool bounce) {
  if (all_matching == !ids.empty()) throw Usage("give message IDs or --all-matching with filters, not both");
  if (all_matching && !fa.any() && action == "rm") {
    throw Usage("rm --all-matching needs at least one filter (--state, --sender, --rcpt, --domain, --older-than)");
  }
  std::vector<v1::Selector> selectors;
  if (all_matching) {
    v1::Selector s;
    *s.mutable_filter() = fa.build();
    selectors.push_back(s);
  } else {
    for (const auto& id : ids) {
      v1::Selector s;
      s.set_id(id);
      selectors.push_back(s);
    }
  }
  v1::ActionResponse merged;
  for (const auto& sel : selectors) {
    v1::ActionResponse resp;
    grpc::Status st;
    auto ctx = c.ctx();
    if (action == "retry") st = c.queue->Retry(ctx.get(), sel, &resp);
    else if (action == "hold") st = c.queue->Hold(ctx.get(), sel, &resp);
    else if (action == "release") st = c.queue->Release(ctx.get(), sel, &resp);
    else {
      v1::DeleteRequest dr;
      *dr.mutable_selector() = sel;
      dr.set_bounce(bounce);
      st = c.queue->Delete(ctx.get(), dr, &resp);
    }
    if (!st.ok() && !sel.id().empty() && resp.failures_size() == 0) {
      auto* f = resp.add_failures();  // one id: its error is the call's error
      f->set_id(sel.id());
      f->set_code(st.error_code());
      f->set_message(st.error_message());
    } else if (!st.ok()) {
      throw Refused{st};
    }
    for (const auto& id : resp.ids()) merged.add_ids(id);
    for (const auto& f : resp.failures()) *merged.add_failures() = f;
  }
  const char* done = action == "retry" ? "scheduled" : action == "hold" ? "held" : action == "release" ? "released"
                     : bounce ? "deleted (bounced)" : "deleted";
  if (g.output == "json" || g.output == "yaml") {
    print(merged, g.output);
  } else {
    for (const auto& id : merged.ids()) std::cout << id << " " << done << "\n";
  }
  for (const auto& f : merged.failures()) {
    std::cerr << "smtpctl: " << f.id() << ": " << code_name(static_cast<grpc::StatusCode>(f.code())) << ": "
              << f.message() << "\n";
  }
  return merged.failures_size() > 0 ? 1 : 0;
}

grpc::ClientContext* g_watch = nullptr;

int queue_watch(Client& c, const Globals& g, const FilterArgs& fa) {
  v1::WatchQueueRequest req;
  *req.mutable_filter() = fa.build();
  auto ctx = c.ctx(true);
  g_watch = ctx.get();
  // SIGINT/SIGTERM are blocked in every thread; this one waits for them
  // and ends the stream.
  std::thread stopper([] {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    int sig = 0;
    sigwait(&set, &sig);
    if (sig != 0 && g_watch) g_watch->TryCancel();
  });
  stopper.detach();
  auto reader = c.queue->WatchQueue(ctx.get(), req);
  // The server answers with its metadata once the watch is in place: from
  // then on no event is missed (the table's header says so).
  reader->WaitForInitialMetadata();
  v1::QueueEvent ev;
  const bool table = g.output == "table" || g.output == "wide";
  if (table) std::printf("%-24s %-10s %-16s %-32s %s\n", "TIME", "EVENT", "ID", "RECIPIENT", "REPLY");
  std::fflush(stdout);
  while (reader->Read(&ev)) {
    if (g.output == "json") {
      std::cout << to_json(ev, false) << "\n";
    } else if (g.output == "yaml") {
      std::cout << "---\n" << control::json_to_yaml(to_json(ev));
    } else {
      const time_t secs = static_cast<time_t>(ev.unix_ms() / 1000);
      char when[32];
      struct tm tm;
      gmtime_r(&secs, &tm);
      std::strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
      std::string kind = v1::QueueEvent::Kind_Name(ev.kind()).substr(5);
      for (char& ch : kind) ch = static_cast<char>(std::tolower(ch));
      std::printf("%-24s %-10s %-16s %-32s %s\n", when, kind.c_str(), ev.id().c_str(),
                  ev.recipient().empty() ? "-" : ev.recipient().c_str(), ev.reply().empty() ? "-" : ev.reply().c_str());
    }
    std::cout.flush();
    std::fflush(stdout);
  }
  const grpc::Status st = reader->Finish();
  if (st.error_code() == grpc::StatusCode::CANCELLED) return 0;  // interrupted
  Client::check(st);
  return 0;
}

std::string content_type_for(const std::string& path) {
  const std::string ext = path.substr(path.rfind('.') == std::string::npos ? path.size() : path.rfind('.') + 1);
  static const std::map<std::string, std::string> types = {
      {"txt", "text/plain"},  {"html", "text/html"},       {"csv", "text/csv"},        {"pdf", "application/pdf"},
      {"png", "image/png"},   {"jpg", "image/jpeg"},       {"jpeg", "image/jpeg"},     {"gif", "image/gif"},
      {"zip", "application/zip"}, {"json", "application/json"}, {"ics", "text/calendar"}};
  auto it = types.find(ext);
  return it == types.end() ? "application/octet-stream" : it->second;
}

struct SendArgs {
  std::string from, subject, text, text_file, html_file, raw, key;
  std::vector<std::string> to, cc, bcc, attach, headers;
};

int send(Client& c, const Globals& g, const SendArgs& a) {
  v1::SendMailRequest req;
  if (!a.key.empty()) req.set_idempotency_key(a.key);
  if (!a.raw.empty()) {
    if (a.from.empty() || a.to.empty()) throw Usage("send --raw needs --from and --to (the envelope)");
    if (!a.subject.empty() || !a.text.empty() || !a.text_file.empty() || !a.html_file.empty() || !a.attach.empty()) {
      throw Usage("send --raw takes the whole message from the file: no --subject, --text, --html-file or --attach");
    }
    req.mutable_raw()->set_data(read_file(a.raw, "--raw"));
    req.set_envelope_from(a.from);
    for (const auto& t : a.to) req.add_envelope_to(t);
    for (const auto& t : a.cc) req.add_envelope_to(t);
    for (const auto& t : a.bcc) req.add_envelope_to(t);
  } else {
    if (a.from.empty() || (a.to.empty() && a.cc.empty() && a.bcc.empty())) {
      throw Usage("send needs --from and at least one --to, --cc or --bcc");
    }
    if (!a.text.empty() && !a.text_file.empty()) throw Usage("give --text or --text-file, not both");
    auto* m = req.mutable_structured();
    m->mutable_from()->set_address(a.from);
    for (const auto& t : a.to) m->add_to()->set_address(t);
    for (const auto& t : a.cc) m->add_cc()->set_address(t);
    for (const auto& t : a.bcc) m->add_bcc()->set_address(t);
    m->set_subject(a.subject);
    m->set_text_body(a.text_file.empty() ? a.text : read_file(a.text_file, "--text-file"));
    if (!a.html_file.empty()) m->set_html_body(read_file(a.html_file, "--html-file"));
    for (const auto& path : a.attach) {
      auto* at = m->add_attachments();
      at->set_filename(path.substr(path.rfind('/') == std::string::npos ? 0 : path.rfind('/') + 1));
      at->set_content_type(content_type_for(path));
      at->set_content(read_file(path, "--attach"));
    }
    for (const auto& h : a.headers) {
      const size_t colon = h.find(':');
      if (colon == std::string::npos) throw Usage("--header: '" + h + "' is not \"Name: value\"");
      auto* hd = m->add_headers();
      hd->set_name(h.substr(0, colon));
      hd->set_value(h.substr(h.find_first_not_of(' ', colon + 1) == std::string::npos ? h.size()
                                                                                      : h.find_first_not_of(' ', colon + 1)));
    }
  }
  v1::SendMailResponse resp;
  Client::check(c.submission->SendMail(c.ctx().get(), req, &resp));
  if (g.output == "json" || g.output == "yaml") {
    print(resp, g.output);
  } else {
    std::cout << render_table({{"QUEUE ID", "MESSAGE ID", "DUPLICATE"},
                               {resp.queue_id(), resp.message_id(), resp.duplicate() ? "yes" : "no"}});
  }
  return 0;
}

v1::PolicySnapshot get_policy(Client& c) {
  v1::PolicySnapshot p;
  Client::check(c.policy->GetPolicy(c.ctx().get(), v1::GetPolicyRequest(), &p));
  return p;
}

v1::PolicySnapshot read_policy_file(const std::string& path) {
  v1::PolicySnapshot p;
  const absl::Status s = control::from_json_or_yaml(read_file(path, "policy file"), &p);
  if (!s.ok()) throw Usage("policy file " + path + ": " + std::string(s.message()));
  return p;
}

int policy_get(Client& c, const Globals& g) {
  const v1::PolicySnapshot p = get_policy(c);
  if (g.output == "json") {
    std::cout << to_json(p);
  } else {
    std::cout << control::json_to_yaml(to_json(p));  // the table form of a policy is its YAML
  }
  return 0;
}

int policy_set(Client& c, const Globals& g, const std::string& path, int64_t expected) {
  v1::UpdatePolicyRequest req;
  *req.mutable_policy() = read_policy_file(path);
  req.set_expected_version(expected < 0 ? 0 : static_cast<uint64_t>(expected));
  v1::PolicySnapshot p;
  Client::check(c.policy->UpdatePolicy(c.ctx().get(), req, &p));
  if (g.output == "json" || g.output == "yaml") {
    print(p, g.output);
  } else {
    std::cout << "policy version " << p.version() << " (by " << p.updated_by() << ")\n";
  }
  return 0;
}

int policy_diff(Client& c, const std::string& path) {
  v1::PolicySnapshot current = get_policy(c), wanted = read_policy_file(path);
  for (v1::PolicySnapshot* p : {&current, &wanted}) {
    p->clear_version();
    p->clear_updated_by();
    p->clear_updated_unix_ms();
  }
  const std::string d = control::line_diff(control::json_to_yaml(to_json(current)), control::json_to_yaml(to_json(wanted)));
  std::cout << (d.empty() ? "no changes\n" : d);
  return 0;
}

int stats(Client& c, const Globals& g) {
  v1::QueueStats s;
  Client::check(c.queue->GetStats(c.ctx().get(), v1::GetStatsRequest(), &s));
  if (g.output == "json" || g.output == "yaml") {
    print(s, g.output);
    return 0;
  }
  auto count = [](const google::protobuf::Map<std::string, uint64_t>& m, const std::string& k) {
    auto it = m.find(k);
    return std::to_string(it == m.end() ? 0 : it->second);
  };
  std::cout << render_table({{"MESSAGES", "QUEUED", "DEFERRED", "HELD", "DELIVERING", "OLDEST", "IN FLIGHT", "CAPACITY"},
                             {std::to_string(s.messages()), count(s.messages_by_state(), "queued"),
                              count(s.messages_by_state(), "deferred"), count(s.messages_by_state(), "held"),
                              count(s.messages_by_state(), "delivering"),
                              s.messages() ? human_age(s.oldest_age_seconds()) : "-",
                              std::to_string(s.deliveries_in_flight()), std::to_string(s.spool_capacity())}});
  if (!s.backlog_by_destination().empty()) {
    std::vector<std::vector<std::string>> rows = {{"DESTINATION", "PENDING RECIPIENTS"}};
    std::map<std::string, uint64_t> sorted(s.backlog_by_destination().begin(), s.backlog_by_destination().end());
    for (const auto& [d, n] : sorted) rows.push_back({d, std::to_string(n)});
    std::cout << "\n" << render_table(rows);
  }
  return 0;
}

int health(Client& c, const Globals& g) {
  grpc::health::v1::HealthCheckResponse r;
  Client::check(c.health->Check(c.ctx().get(), grpc::health::v1::HealthCheckRequest(), &r));
  if (g.output == "json" || g.output == "yaml") {
    print(r, g.output);
  } else {
    std::cout << grpc::health::v1::HealthCheckResponse::ServingStatus_Name(r.status()) << "\n";
  }
  return r.status() == grpc::health::v1::HealthCheckResponse::SERVING ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  // Before gRPC starts threads: only the watch's stopper thread takes
  // SIGINT/SIGTERM (other commands are short and keep the default).
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  const bool watching = argc >= 3 && std::string(argv[argc - 1]) != "--help" && [&] {
    for (int i = 1; i + 1 < argc; ++i) {
      if (std::string(argv[i]) == "queue" && std::string(argv[i + 1]) == "watch") return true;
    }
    return false;
  }();
  if (watching) pthread_sigmask(SIG_BLOCK, &set, nullptr);

  Globals g;
  if (const char* s = std::getenv("SMTPCTL_SERVER")) g.server = s;
  if (const char* t = std::getenv("SMTPCTL_TOKEN")) g.token = t;
  CLI::App app{"smtpctl: inspect and steer smtpd through its gRPC API"};
  app.fallthrough();
  app.require_subcommand(1);
  app.add_option("--server", g.server, "HOST:PORT of smtpd's control address (SMTPCTL_SERVER)");
  app.add_option("--token", g.token, "bearer token (SMTPCTL_TOKEN)");
  app.add_flag("--tls", g.tls, "use TLS (system CAs unless --ca)");
  app.add_option("--ca", g.ca, "CA certificate(s) to verify the server (implies --tls)");
  app.add_option("--cert", g.cert, "client certificate for mutual TLS");
  app.add_option("--key", g.key, "client key for mutual TLS");
  app.add_option("--timeout", g.timeout, "per call (e.g. 10s)");
  app.add_option("-o,--output", g.output, "table, wide, json or yaml")
      ->check(CLI::IsMember({"table", "wide", "json", "yaml"}));

  std::function<int(Client&)> run;
  auto* queue = app.add_subcommand("queue", "messages in the queue");
  queue->require_subcommand(1);
  FilterArgs ls_f, act_f, watch_f;
  auto* ls = queue->add_subcommand("ls", "list messages");
  ls_f.add(ls);
  ls->callback([&] { run = [&](Client& c) { return queue_ls(c, g, ls_f); }; });
  std::string show_id;
  bool show_body = false;
  auto* show = queue->add_subcommand("show", "one message in detail");
  show->add_option("ID", show_id, "queue id")->required();
  show->add_flag("--body", show_body, "also print the stored message");
  show->callback([&] { run = [&](Client& c) { return queue_show(c, g, show_id, show_body); }; });
  std::vector<std::string> act_ids;
  bool all_matching = false, bounce = false;
  for (const char* action : {"retry", "hold", "release", "rm"}) {
    const std::string name = action;
    auto* cmd = queue->add_subcommand(name, name == "retry"     ? "try now"
                                            : name == "hold"    ? "stop delivering"
                                            : name == "release" ? "deliver again"
                                                                : "delete");
    cmd->add_option("ID", act_ids, "queue ids");
    cmd->add_flag("--all-matching", all_matching, "every message matching the filters");
    act_f.add(cmd);
    if (name == "rm") cmd->add_flag("--bounce", bounce, "send the sender a DSN for recipients not yet delivered");
    cmd->callback([&, name] {
      run = [&, name](Client& c) { return queue_action(c, g, name, act_ids, all_matching, act_f, bounce); };
    });
  }
  auto* watch = queue->add_subcommand("watch", "print queue events until interrupted");
  watch_f.add(watch);
  watch->callback([&] { run = [&](Client& c) { return queue_watch(c, g, watch_f); }; });

  SendArgs sa;
  auto* sendc = app.add_subcommand("send", "submit a message");
  sendc->add_option("--from", sa.from, "sender address");
  sendc->add_option("--to", sa.to, "recipient (repeat)");
  sendc->add_option("--cc", sa.cc, "recipient (repeat)");
  sendc->add_option("--bcc", sa.bcc, "hidden recipient (repeat)");
  sendc->add_option("--subject", sa.subject, "subject (any Unicode)");
  sendc->add_option("--text", sa.text, "text body");
  sendc->add_option("--text-file", sa.text_file, "text body from a file (- for stdin)");
  sendc->add_option("--html-file", sa.html_file, "HTML body from a file");
  sendc->add_option("--attach", sa.attach, "attach a file (repeat)");
  sendc->add_option("--header", sa.headers, "extra header \"Name: value\" (repeat)");
  sendc->add_option("--raw", sa.raw, "send this RFC 5322 file as is (- for stdin)");
  sendc->add_option("--idempotency-key", sa.key, "a retried send with this key queues nothing new");
  sendc->callback([&] { run = [&](Client& c) { return send(c, g, sa); }; });

  auto* pol = app.add_subcommand("policy", "the runtime policy");
  pol->require_subcommand(1);
  pol->add_subcommand("get", "print the current policy")->callback([&] {
    run = [&](Client& c) { return policy_get(c, g); };
  });
  std::string policy_file;
  int64_t expected = -1;
  auto* pset = pol->add_subcommand("set", "replace the policy with a YAML or JSON file (- for stdin)");
  pset->add_option("FILE", policy_file, "policy file")->required();
  pset->add_option("--expected-version", expected, "refuse (ABORTED) unless this is the current version");
  pset->callback([&] { run = [&](Client& c) { return policy_set(c, g, policy_file, expected); }; });
  auto* pdiff = pol->add_subcommand("diff", "show what `policy set FILE` would change");
  pdiff->add_option("FILE", policy_file, "policy file")->required();
  pdiff->callback([&] { run = [&](Client& c) { return policy_diff(c, policy_file); }; });

  app.add_subcommand("stats", "queue counts")->callback([&] { run = [&](Client& c) { return stats(c, g); }; });
  app.add_subcommand("health", "grpc.health.v1 status (exit 1 unless SERVING)")->callback([&] {
    run = [&](Client& c) { return health(c, g); };
  });

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::cerr << "smtpctl: " << e.what() << "\n" << "Run with --help for more information.\n";
    return 2;
  }
  try {
    if (!g.ca.empty() || !g.cert.empty()) g.tls = true;
    Client client(g);
    return run(client);
  } catch (const Usage& e) {
    std::cerr << "smtpctl: " << e.what() << "\n";
    return 2;
  } catch (const Refused& r) {
    std::cerr << "smtpctl: " << code_name(r.status.error_code()) << ": " << r.status.error_message() << "\n";
    return 1;
  }
}
