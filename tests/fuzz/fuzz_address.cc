// The address grammar (RFC 5321 4.1.2, RFC 6531): no crash, consumption
// within the input, a parsed path printed and parsed again is the same.
#include <string>

#include "lib/smtp/address.h"
#include "tests/fuzz/fuzz_check.h"

using namespace smtpd::smtp;  // NOLINT

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  for (int mode = 0; mode < 4; ++mode) {
    PathOptions o;
    o.allow_null = mode & 1;
    o.allow_postmaster = !(mode & 1);
    o.allow_utf8 = mode & 2;
    const PathParse p = parse_path(input, o);
    FUZZ_CHECK(p.consumed <= input.size());
    if (p.error != PathError::kNone || p.path.null || p.path.postmaster) continue;
    const std::string again = "<" + p.path.str() + ">";
    const PathParse q = parse_path(again, o);
    FUZZ_CHECK(q.error == PathError::kNone);
    FUZZ_CHECK(q.path.str() == p.path.str());
  }
  const PathParse m = parse_mailbox(input, true);
  FUZZ_CHECK(m.consumed <= input.size());
  return 0;
}
