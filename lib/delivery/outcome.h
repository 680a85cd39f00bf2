// What a transport says about one recipient: the queue's AttemptOutcome
// (delivered, deferred or failed, with the reply that explains it).
#pragma once

#include "lib/queue/delivery_types.h"

namespace smtpd::delivery {

using Result = queue::AttemptResult;
using DeliveryOutcome = queue::AttemptOutcome;

}  // namespace smtpd::delivery
