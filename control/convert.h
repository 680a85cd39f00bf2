// Between the API's messages (smtpd.v1) and the library types they show.
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "lib/policy/policy.h"
#include "lib/queue/queue_manager.h"
#include "smtpd/v1/policy.pb.h"
#include "smtpd/v1/queue.pb.h"

namespace smtpd::control {

// INVALID_ARGUMENT naming the field for anything the policy cannot hold.
absl::StatusOr<policy::PolicySnapshot> policy_from_proto(const v1::PolicySnapshot& p);
v1::PolicySnapshot policy_to_proto(const policy::PolicySnapshot& s);

v1::MessageState message_state(const queue::MessageView& v);
v1::RecipientState recipient_state(const queue::MessageView& v, size_t i);
void summary_to_proto(const queue::MessageView& v, v1::MessageSummary* out);
v1::QueueEvent event_to_proto(const queue::QueueEvent& e);

// The header fields of a message, unfolded, in order.
std::vector<std::pair<std::string, std::string>> header_fields(std::string_view message);

}  // namespace smtpd::control
