// The SendMail MIME builder and the raw-message checks: whatever the
// fields, a built message has CRLF lines of at most 998 octets (RFC 5322
// 2.1.1), 7bit text outside addresses, and no header injected by a field.
#include <fuzzer/FuzzedDataProvider.h>

#include <string>

#include "lib/message/mime.h"
#include "tests/fuzz/fuzz_check.h"

using namespace smtpd::message;  // NOLINT

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider fdp(data, size);
  MimeMessage m;
  m.from = {fdp.ConsumeRandomLengthString(80), fdp.ConsumeRandomLengthString(40)};
  for (int i = fdp.ConsumeIntegralInRange(0, 3); i > 0; --i) {
    m.to.push_back({fdp.ConsumeRandomLengthString(80), fdp.ConsumeRandomLengthString(40)});
  }
  m.subject = fdp.ConsumeRandomLengthString(300);
  m.text = fdp.ConsumeRandomLengthString(2000);
  m.html = fdp.ConsumeRandomLengthString(500);
  if (fdp.ConsumeBool()) {
    m.attachments.push_back({fdp.ConsumeRandomLengthString(60), fdp.ConsumeRandomLengthString(30),
                             fdp.ConsumeRandomLengthString(500), fdp.ConsumeRandomLengthString(30)});
  }
  if (fdp.ConsumeBool()) m.headers.emplace_back(fdp.ConsumeRandomLengthString(30), fdp.ConsumeRandomLengthString(200));
  m.hostname = "mx.test";
  m.unix_seconds = 1780000000;
  auto built = build_message(m);
  if (built.ok()) {
    const std::string& d = built->data;
    FUZZ_CHECK(crlf_only(d));
    size_t line = 0;
    for (char c : d) {
      line = c == '\n' ? 0 : line + 1;
      FUZZ_CHECK(line <= 1000);
    }
    // Only the header section's own fields start lines there: a field
    // value never opens a new one.
    const size_t end = d.find("\r\n\r\n");
    FUZZ_CHECK(end != std::string::npos);
    FUZZ_CHECK(d.find("\r\nBcc:") == std::string::npos || d.find("\r\nBcc:") > end);
  }
  const std::string raw = fdp.ConsumeRemainingBytesAsString();
  auto r = prepare_raw(raw, "mx.test", 1780000000);
  if (r.ok()) FUZZ_CHECK(crlf_only(r->data));
  return 0;
}
