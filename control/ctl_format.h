// Output for smtpctl and kubectl-smtpd: aligned tables in the style of
// `kubectl get`, human durations and sizes, and stable JSON/YAML renderings
// of the API's messages (protobuf's JSON mapping with the .proto field
// names and every field printed).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "google/protobuf/message.h"
#include "smtpd/v1/queue.pb.h"

namespace smtpd::control {

// Columns padded to the widest cell, separated by three spaces; the last
// column is not padded.
std::string render_table(const std::vector<std::vector<std::string>>& rows);

// "45s", "12m", "3h", "6d" (kubectl's style); "-" for a time not given.
std::string human_age(int64_t seconds);
// "512", "1.5K", "23M".
std::string human_size(uint64_t octets);
// "in 3m", "now", "-" for 0.
std::string human_next(int64_t next_unix_ms, int64_t now_ms);

// JSON (one object, indented, stable field order) and YAML of a message.
std::string to_json(const google::protobuf::Message& m, bool multiline = true);
std::string json_to_yaml(const std::string& json);
// Reads a message from JSON or YAML text (YAML is turned into JSON first).
absl::Status from_json_or_yaml(const std::string& text, google::protobuf::Message* m);

std::string state_name(v1::MessageState s);       // "queued", "held", ...
std::string recipient_state_name(v1::RecipientState s);

// Rows (header first) for a message listing; `wide` keeps every
// recipient and the whole reply, otherwise they are shortened.
std::vector<std::vector<std::string>> message_rows(const std::vector<v1::MessageSummary>& messages, bool wide,
                                                   int64_t now_ms, const std::string& first_column = "",
                                                   const std::vector<std::string>& first_values = {});

// A line-by-line diff ("- old", "+ new", "  same") of two texts; empty when
// they are equal.
std::string line_diff(const std::string& before, const std::string& after);

}  // namespace smtpd::control
