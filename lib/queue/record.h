// The durable record of one queued message: envelope, trace facts and
// where its body lies in the segment files. Encoded as a small versioned
// binary record stored in RocksDB under "m/<id>".
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "lib/smtp/envelope.h"

namespace smtpd::queue {

// A contiguous run of body octets in one segment file.
struct Extent {
  uint64_t segment = 0;
  uint64_t offset = 0;
  uint64_t length = 0;
};

struct MessageRecord {
  std::string id;
  int64_t arrival_unix_us = 0;
  smtp::Envelope envelope;
  std::string client_address;
  std::string helo;
  std::string auth_user;
  std::string protocol;   // "ESMTPSA" and the like
  std::string source;     // listener name, or "grpc"
  uint64_t size = 0;      // body octets stored, trace header included
  std::vector<Extent> extents;
};

std::string encode_record(const MessageRecord& r);
absl::StatusOr<MessageRecord> decode_record(std::string_view bytes);

}  // namespace smtpd::queue
