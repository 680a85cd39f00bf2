// The contract between the queue and the transports: a request to deliver
// some recipients of one message along one route, answered with one
// outcome per recipient. 2xx delivered, 4xx deferred, 5xx failed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "lib/queue/record.h"
#include "lib/smtp/reply.h"

namespace smtpd::queue {

enum class AttemptResult { kDelivered, kDeferred, kFailed };

struct AttemptOutcome {
  AttemptResult result = AttemptResult::kDeferred;
  smtp::Reply reply;
  std::string remote_host;  // who gave the reply, for DSNs and logs
  std::string remote_address;  // its IP address, when connected (logs)
  std::string tls;             // TLS version of the session ("TLSv1.3"), empty: none

  static AttemptOutcome from_reply(smtp::Reply r, std::string host = "") {
    AttemptOutcome o;
    o.result = r.code / 100 == 2 ? AttemptResult::kDelivered
               : r.code / 100 == 5 ? AttemptResult::kFailed
                                   : AttemptResult::kDeferred;
    o.reply = std::move(r);
    o.remote_host = std::move(host);
    return o;
  }
};

struct DeliveryRequest {
  std::string route;        // "maildir:PATH", "relay:HOST:PORT", "lmtp:HOST:PORT", "mx"
  std::string domain;       // the recipients' domain (lower case)
  MessageRecord record;
  std::vector<size_t> recipients;  // indexes into record.envelope.recipients
};

using DeliveryCallback = std::function<void(std::vector<AttemptOutcome>)>;

// Implemented by lib/delivery. deliver() must not block; `done` may run on
// any thread, exactly once, with one outcome per requested recipient.
class Transport {
 public:
  virtual ~Transport() = default;
  virtual void deliver(DeliveryRequest request, DeliveryCallback done) = 0;
};

// Chooses the route for a recipient domain (lower case).
using Router = std::function<std::string(const std::string& domain)>;

}  // namespace smtpd::queue
