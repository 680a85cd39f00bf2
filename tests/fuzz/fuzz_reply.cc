// The SMTP client's reply parser against a hostile server: codes in range,
// bounded replies, no crash, progress on every call.
#include <string>

#include "lib/smtp/reply_parser.h"
#include "tests/fuzz/fuzz_check.h"

using namespace smtpd::smtp;  // NOLINT

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  ReplyParser p;
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  for (size_t i = 0; i < input.size(); i += 17) {
    p.feed(input.substr(i, 17));
    for (int n = 0; n < 1000; ++n) {
      Reply r;
      const auto st = p.next(r);
      if (st == ReplyParser::Status::kError) return 0;  // the client drops the connection
      if (st == ReplyParser::Status::kNeedMore) break;
      FUZZ_CHECK(r.code >= 200 && r.code <= 599);
      FUZZ_CHECK(r.enhanced.empty() || r.enhanced[0] - '0' == r.code / 100);
    }
  }
  return 0;
}
