// The config loader: arbitrary YAML files and --set overrides either load
// into a Config or fail with "config: KEY: problem" (never a crash, never
// another exception).
#include <fuzzer/FuzzedDataProvider.h>
#include <unistd.h>

#include <fstream>
#include <string>

#include "lib/config/config.h"
#include "tests/fuzz/fuzz_check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider fdp(data, size);
  smtpd::config::Sources s;
  for (int i = fdp.ConsumeIntegralInRange(0, 4); i > 0; --i) s.overrides.push_back(fdp.ConsumeRandomLengthString(80));
  if (fdp.ConsumeBool()) s.env["SMTPD_" + fdp.ConsumeRandomLengthString(20)] = fdp.ConsumeRandomLengthString(40);
  static const std::string path = "/tmp/fuzz_config." + std::to_string(::getpid()) + ".yaml";
  const std::string yaml = fdp.ConsumeRemainingBytesAsString();
  if (!yaml.empty()) {
    std::ofstream(path, std::ios::trunc | std::ios::binary) << yaml;
    s.file = path;
  }
  auto loaded = smtpd::config::load(s);
  if (!loaded.ok()) {
    const std::string msg(loaded.status().message());
    FUZZ_CHECK(!msg.empty());
  } else {
    FUZZ_CHECK(!loaded->config.policy.routes.empty());
  }
  if (!yaml.empty()) ::unlink(path.c_str());
  return 0;
}
