// The envelope of one SMTP transaction as the session collected it: reverse
// path, forward paths and their ESMTP parameters (RFC 1870, 6152, 6531, 3461).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "lib/smtp/address.h"

namespace smtpd::smtp {

enum class BodyType { kUnspecified, k7Bit, k8BitMime };
enum class DsnRet { kUnspecified, kFull, kHdrs };

// RFC 3461 NOTIFY as a bit set; zero means not given.
enum DsnNotify : uint8_t {
  kNotifyNever = 1,
  kNotifySuccess = 2,
  kNotifyFailure = 4,
  kNotifyDelay = 8,
};

struct Recipient {
  Path path;
  uint8_t notify = 0;  // DsnNotify bits
  std::string orcpt;   // "addr-type;xtext" as given, empty if absent
};

struct Envelope {
  Path sender;
  std::vector<Recipient> recipients;
  std::optional<uint64_t> declared_size;  // SIZE=
  BodyType body = BodyType::kUnspecified;
  bool smtputf8 = false;
  DsnRet ret = DsnRet::kUnspecified;
  std::string envid;      // ENVID= (xtext), empty if absent
  std::string auth_param; // AUTH= on MAIL (RFC 4954 5), empty if absent
};

}  // namespace smtpd::smtp
