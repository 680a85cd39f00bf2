// DATA decoding and BDAT content checks: the same input decoded whole and
// in random pieces gives the same message and the same end; output has
// only CRLF line ends; nothing past the end is consumed.
#include <fuzzer/FuzzedDataProvider.h>

#include <string>

#include "lib/smtp/data_decoder.h"
#include "tests/fuzz/fuzz_check.h"

using smtpd::smtp::ContentChecker;
using smtpd::smtp::DataDecoder;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  DataDecoder whole;
  std::string out_whole;
  const auto r = whole.feed(input, out_whole);
  FUZZ_CHECK(r.consumed <= input.size());
  if (r.status == DataDecoder::Status::kEnd) FUZZ_CHECK(crlf_only(out_whole));
  if (r.status == DataDecoder::Status::kMore) FUZZ_CHECK(r.consumed == input.size());
  // Split at pseudo-random points taken from the input itself.
  DataDecoder split;
  std::string out_split;
  size_t pos = 0, cut = size ? data[0] % 7 + 1 : 1;
  DataDecoder::Result last;
  while (pos < input.size()) {
    const size_t n = std::min(cut, input.size() - pos);
    last = split.feed(std::string_view(input).substr(pos, n), out_split);
    pos += last.consumed;
    if (last.status != DataDecoder::Status::kMore) break;
    cut = cut * 3 % 13 + 1;
  }
  if (r.status == DataDecoder::Status::kEnd) {
    FUZZ_CHECK(last.status == DataDecoder::Status::kEnd);
    FUZZ_CHECK(out_split == out_whole);
    FUZZ_CHECK(pos == r.consumed);
  }
  if (r.status == DataDecoder::Status::kBareNewline) FUZZ_CHECK(last.status == DataDecoder::Status::kBareNewline);
  // BDAT content rules, in pieces or whole: the same verdict.
  ContentChecker a, b;
  a.scan(input);
  a.finish();
  for (size_t i = 0; i < input.size(); i += 5) b.scan(std::string_view(input).substr(i, 5));
  b.finish();
  FUZZ_CHECK(a.flags().bare_cr_or_lf == b.flags().bare_cr_or_lf);
  FUZZ_CHECK(a.flags().nul == b.flags().nul);
  FUZZ_CHECK(a.flags().long_line == b.flags().long_line);
  if (!a.flags().bare_cr_or_lf) FUZZ_CHECK(crlf_only(input));
  return 0;
}
