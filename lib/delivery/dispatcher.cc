#include "lib/delivery/dispatcher.h"

#include <random>

#include "absl/status/status.h"

namespace smtpd::delivery {
namespace {

std::vector<queue::AttemptOutcome> all(size_t n, smtp::Reply r) {
  return std::vector<queue::AttemptOutcome>(n, queue::AttemptOutcome::from_reply(std::move(r)));
}

}  // namespace

RouteDispatcher::RouteDispatcher(const queue::Spool& spool, std::string hostname, size_t threads,
                                 SmtpTransportOptions smtp)
    : spool_(spool), hostname_(std::move(hostname)), resolver_(smtp.dns_servers), mx_port_(smtp.mx_port),
      smtp_(spool, std::move(smtp)) {
  for (size_t i = 0; i < std::max<size_t>(1, threads); ++i) workers_.emplace_back([this] { worker(); });
}

RouteDispatcher::~RouteDispatcher() { stop(); }

void RouteDispatcher::deliver(queue::DeliveryRequest request, queue::DeliveryCallback done) {
  {
    std::lock_guard<std::mutex> l(mu_);
    if (!stopping_ && (request.route.rfind("relay:", 0) == 0 || request.route.rfind("lmtp:", 0) == 0)) {
      smtp_.deliver(std::move(request), std::move(done));  // asynchronous: no worker thread needed
      return;
    }
    if (!stopping_) {
      tasks_.push_back(Task{std::move(request), std::move(done)});
      cv_.notify_one();
      return;
    }
  }
  done(all(request.recipients.size(), smtp::Reply(421, "4.3.2", "delivery is shutting down")));
}

void RouteDispatcher::stop() {
  std::deque<Task> dropped;
  {
    std::lock_guard<std::mutex> l(mu_);
    if (stopping_ && workers_.empty()) return;
    stopping_ = true;
    dropped.swap(tasks_);
    cv_.notify_all();
  }
  for (Task& t : dropped) {
    t.done(all(t.request.recipients.size(), smtp::Reply(421, "4.3.2", "delivery is shutting down")));
  }
  for (std::thread& w : workers_) w.join();
  workers_.clear();
  smtp_.stop();
}

void RouteDispatcher::worker() {
  while (true) {
    Task task;
    {
      std::unique_lock<std::mutex> l(mu_);
      cv_.wait(l, [this] { return stopping_ || !tasks_.empty(); });
      if (tasks_.empty()) return;
      task = std::move(tasks_.front());
      tasks_.pop_front();
    }
    if (task.request.route == "mx") {
      // DNS here, on a worker thread; the SMTP conversation is asynchronous.
      smtp::Reply error;
      auto targets = mx_targets(task.request.domain, error);
      if (targets.empty()) {
        task.done(all(task.request.recipients.size(), error));
      } else {
        smtp_.deliver_to(std::move(task.request), std::move(targets), std::move(task.done));
      }
      continue;
    }
    task.done(run(task.request));
  }
}

std::vector<SmtpTransport::Target> RouteDispatcher::mx_targets(const std::string& domain, smtp::Reply& error) {
  const MxAnswer mx = resolver_.mx(domain, std::random_device{}());
  switch (mx.status) {
    case MxAnswer::Status::kNullMx:
      error = smtp::Reply(556, "5.1.10", "domain " + domain + " accepts no mail (null MX, RFC 7505)");
      return {};
    case MxAnswer::Status::kNoDomain:
      error = smtp::Reply(550, "5.4.4", "host or domain name not found: " + mx.error);
      return {};
    case MxAnswer::Status::kTemporary:
      error = smtp::Reply(451, "4.4.3", mx.error);
      return {};
    case MxAnswer::Status::kOk:
      break;
  }
  std::vector<SmtpTransport::Target> targets;
  bool any_temporary = false;
  std::string last;
  for (const std::string& host : mx.hosts) {
    bool temporary = false;
    std::string why;
    for (const std::string& addr : resolver_.addresses(host, why, temporary)) {
      targets.push_back(SmtpTransport::Target{host, addr, mx_port_});
    }
    if (!why.empty()) {
      any_temporary = any_temporary || temporary;
      last = why;
    }
  }
  if (targets.empty()) {
    error = any_temporary ? smtp::Reply(451, "4.4.3", last)
                          : smtp::Reply(550, "5.4.4", "no address for the mail hosts of " + domain + ": " + last);
  }
  return targets;
}

std::vector<queue::AttemptOutcome> RouteDispatcher::run(const queue::DeliveryRequest& request) {
  const std::string& route = request.route;
  if (route.rfind("maildir:", 0) == 0) return run_maildir(route.substr(8), request);
  return all(request.recipients.size(), smtp::Reply(451, "4.3.5", "route '" + route + "' is not known"));
}

std::vector<queue::AttemptOutcome> RouteDispatcher::run_maildir(const std::string& path,
                                                                const queue::DeliveryRequest& request) {
  auto body = spool_.read_body(request.record);
  if (!body.ok()) {
    return all(request.recipients.size(), smtp::Reply(451, "4.3.0", "cannot read the message from the spool"));
  }
  MaildirTransport maildir(path, hostname_);
  std::vector<queue::AttemptOutcome> out;
  const smtp::Envelope& env = request.record.envelope;
  for (size_t i : request.recipients) {
    const smtp::Recipient& r = env.recipients[i];
    MaildirMessage m;
    m.sender = env.sender.str();
    m.recipient = r.path.str();
    m.local_part = r.path.mailbox.local;
    m.body = *body;
    out.push_back(maildir.deliver(m));
  }
  return out;
}

}  // namespace smtpd::delivery
