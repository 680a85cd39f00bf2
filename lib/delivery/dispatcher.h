// The transport the queue talks to: chooses the implementation by the
// route's scheme and runs blocking deliveries (Maildir: file writes and
// fsync) on its own worker threads, never on the queue's or an I/O thread.
//
// Routes: "maildir:PATH" delivers locally; "relay:HOST:PORT" and
// "lmtp:HOST:PORT" go through SmtpTransport; "mx" looks up the domain's MX
// hosts (DNS on a worker thread) and hands SmtpTransport the addresses to
// try in order.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "lib/delivery/dns.h"
#include "lib/delivery/maildir.h"
#include "lib/delivery/smtp_transport.h"
#include "lib/queue/delivery_types.h"
#include "lib/queue/spool.h"

namespace smtpd::delivery {

class RouteDispatcher : public queue::Transport {
 public:
  RouteDispatcher(const queue::Spool& spool, std::string hostname, size_t threads, SmtpTransportOptions smtp);
  ~RouteDispatcher() override;

  void deliver(queue::DeliveryRequest request, queue::DeliveryCallback done) override;
  // Finishes the deliveries running now; queued ones are answered
  // "deferred" at once (they are retried after restart).
  void stop();

 private:
  struct Task {
    queue::DeliveryRequest request;
    queue::DeliveryCallback done;
  };
  void worker();
  std::vector<queue::AttemptOutcome> run(const queue::DeliveryRequest& request);
  std::vector<queue::AttemptOutcome> run_maildir(const std::string& path, const queue::DeliveryRequest& request);
  // Resolves the MX targets; an empty list comes with the reply to give.
  std::vector<SmtpTransport::Target> mx_targets(const std::string& domain, smtp::Reply& error);

  const queue::Spool& spool_;
  std::string hostname_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Task> tasks_;
  bool stopping_ = false;
  std::vector<std::thread> workers_;
  Resolver resolver_;
  std::string mx_port_;
  SmtpTransport smtp_;
};

}  // namespace smtpd::delivery
