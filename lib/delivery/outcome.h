// What a transport says about one recipient: delivered, deferred (try
// again later) or failed (bounce), with the reply that explains it. 2xx is
// delivered, 4xx deferred, 5xx failed (RFC 5321 4.2.1).
#pragma once

#include "lib/smtp/reply.h"

namespace smtpd::delivery {

enum class Result { kDelivered, kDeferred, kFailed };

struct DeliveryOutcome {
  Result result = Result::kDeferred;
  smtp::Reply reply;

  static DeliveryOutcome from_reply(smtp::Reply r) {
    DeliveryOutcome o;
    o.result = r.code / 100 == 2 ? Result::kDelivered : r.code / 100 == 5 ? Result::kFailed : Result::kDeferred;
    o.reply = std::move(r);
    return o;
  }
};

}  // namespace smtpd::delivery
