// The DSN builder with hostile values (a remote server's reply text, an
// ORCPT, an ENVID): the report is CRLF-only and no value breaks out of its
// field into a new header line.
#include <fuzzer/FuzzedDataProvider.h>

#include <string>

#include "lib/message/dsn.h"
#include "tests/fuzz/fuzz_check.h"

using namespace smtpd::message;  // NOLINT

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider fdp(data, size);
  DsnReport r;
  r.reporting_mta = "mx.test";
  r.sender = fdp.ConsumeRandomLengthString(80);
  r.envid = fdp.ConsumeRandomLengthString(60);
  r.arrival_unix = 1780000000;
  r.now_unix = 1780000100;
  r.headers_only = fdp.ConsumeBool();
  r.utf8 = fdp.ConsumeBool();
  r.queue_id = "000661D7A72A4E18";
  for (int i = fdp.ConsumeIntegralInRange(1, 3); i > 0; --i) {
    DsnRecipient d;
    d.final_recipient = fdp.ConsumeRandomLengthString(80);
    d.original_recipient = fdp.ConsumeRandomLengthString(80);
    d.action = static_cast<DsnAction>(fdp.ConsumeIntegralInRange(0, 2));
    d.status = fdp.ConsumeRandomLengthString(10);
    d.remote_mta = fdp.ConsumeRandomLengthString(60);
    d.diagnostic = fdp.ConsumeRandomLengthString(300);
    d.last_attempt_unix = 1780000050;
    r.recipients.push_back(std::move(d));
  }
  const std::string original = fdp.ConsumeRemainingBytesAsString();
  r.original = original;
  const std::string dsn = build_dsn(r);
  // The report's own text is CRLF-only up to the returned original.
  const size_t returned = dsn.find("Content-Type: message/");
  const std::string_view head(dsn.data(), returned == std::string::npos ? dsn.size() : returned);
  FUZZ_CHECK(crlf_only(head));
  // A value cannot start a header line of its own in the top header.
  const size_t end = dsn.find("\r\n\r\n");
  FUZZ_CHECK(end != std::string::npos);
  const std::string_view top(dsn.data(), end);
  size_t subjects = 0;
  for (size_t pos = 0; (pos = top.find("\r\nSubject:", pos)) != std::string_view::npos; ++pos) ++subjects;
  FUZZ_CHECK(subjects + (top.rfind("Subject:", 0) == 0 ? 1 : 0) == 1);
  return 0;
}
