// DNS for MX routing (RFC 5321 5.1) with c-ares: MX records sorted by
// preference with equal preferences shuffled, the domain itself as an
// implicit MX when it has none, null MX (RFC 7505) recognised, and A/AAAA
// lookups of the hosts. Calls block (c-ares driven with poll(2), safe with
// any descriptor number): use them from worker threads only.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace smtpd::delivery {

struct MxAnswer {
  enum class Status {
    kOk,         // hosts holds the exchanges to try, in order
    kNullMx,     // RFC 7505: the domain accepts no mail
    kNoDomain,   // NXDOMAIN: permanent
    kTemporary,  // SERVFAIL, timeout, refused: try again later
  };
  Status status = Status::kTemporary;
  std::vector<std::string> hosts;
  bool implicit = false;  // no MX records: the domain itself (RFC 5321 5.1)
  std::string error;
};

class Resolver {
 public:
  // servers: "ip:port" entries; empty uses /etc/resolv.conf.
  explicit Resolver(std::vector<std::string> servers);
  MxAnswer mx(const std::string& domain, uint64_t seed) const;
  // Addresses of a host, IPv6 and IPv4, numeric strings; empty on failure
  // (error says why; temporary tells whether to try again later).
  std::vector<std::string> addresses(const std::string& host, std::string& error, bool& temporary) const;

 private:
  std::vector<std::string> servers_;
};

}  // namespace smtpd::delivery
