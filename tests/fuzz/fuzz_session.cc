// The SMTP server state machine fed arbitrary bytes in arbitrary pieces,
// with every event answered. Invariants: every reply line is "DDD" then
// space or dash and ends with CRLF; a stored message never holds a bare CR
// or LF; the machine stops after kClose.
#include <fuzzer/FuzzedDataProvider.h>

#include <string>

#include "lib/smtp/server_session.h"
#include "tests/fuzz/fuzz_check.h"

using namespace smtpd::smtp;  // NOLINT

static void check_replies(const std::string& out) {
  FUZZ_CHECK(crlf_only(out));
  size_t pos = 0;
  while (pos < out.size()) {
    const size_t eol = out.find("\r\n", pos);
    FUZZ_CHECK(eol != std::string::npos);
    const std::string_view line(out.data() + pos, eol - pos);
    FUZZ_CHECK(line.size() >= 3);
    for (int i = 0; i < 3; ++i) FUZZ_CHECK(line[i] >= '0' && line[i] <= '9');
    FUZZ_CHECK(line.size() == 3 || line[3] == ' ' || line[3] == '-');
    FUZZ_CHECK(line.size() <= 512);  // RFC 5321 4.5.3.1.5
    pos = eol + 2;
  }
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider fdp(data, size);
  SessionSettings settings;
  settings.hostname = "mx.test";
  settings.max_message_size = 4096;
  settings.max_recipients = 5;
  settings.auth_available = true;
  settings.auth_without_tls = fdp.ConsumeBool();
  ServerSession s(settings);
  std::string stored;
  bool closed = false;
  int steps = 0;
  while (!closed && ++steps < 100000) {
    const EventKind e = s.next();
    switch (e) {
      case EventKind::kNeedInput: {
        check_replies(s.output());
        s.output().clear();
        if (fdp.remaining_bytes() == 0) return 0;
        const std::string piece = fdp.ConsumeRandomLengthString(600);
        s.feed(piece);
        break;
      }
      case EventKind::kFlush:
        check_replies(s.output());
        s.output().clear();
        break;
      case EventKind::kMail:
      case EventKind::kRcpt:
      case EventKind::kDataBegin:
        s.decide(std::nullopt);
        break;
      case EventKind::kDataChunk:
        stored += s.data_chunk();
        break;
      case EventKind::kDataEnd:
        FUZZ_CHECK(crlf_only(stored));  // RFC 5321 2.3.8: no bare CR or LF gets stored
        stored.clear();
        s.decide(Reply(250, "2.0.0", "Ok: queued"));
        break;
      case EventKind::kDataAbort:
        stored.clear();
        break;
      case EventKind::kAuth:
        s.auth_result(s.auth_request().password == "secret");
        break;
      case EventKind::kStartTls:
        check_replies(s.output());
        s.output().clear();
        s.tls_started();
        break;
      case EventKind::kClose:
        check_replies(s.output());
        closed = true;
        break;
    }
  }
  return 0;
}
