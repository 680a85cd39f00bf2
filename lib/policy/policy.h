// Mail policy as an immutable, versioned snapshot: which domains are ours,
// which we relay for, which networks may relay, and message limits. Readers
// take a shared_ptr to the current snapshot and never lock; an update swaps
// in a new snapshot atomically (the control plane does that at runtime).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace smtpd::policy {

// An IPv4 or IPv6 network in CIDR notation; IPv4-mapped IPv6 client
// addresses match IPv4 networks.
class Network {
 public:
  static absl::StatusOr<Network> parse(std::string_view cidr);
  bool contains(std::string_view address) const;
  const std::string& text() const { return text_; }

 private:
  bool v6_ = false;
  unsigned char bytes_[16] = {};
  int prefix_ = 0;
  std::string text_;
};

enum class RelayDecision {
  kLocal,          // one of our domains (or <postmaster>)
  kRelayDomain,    // a domain we relay for
  kAuthenticated,  // any domain: the client authenticated
  kTrusted,        // any domain: the client is in a trusted network
  kDenied,         // 554 5.7.1 relay access denied
};

struct PolicySnapshot {
  uint64_t version = 1;
  std::set<std::string> local_domains;  // lower case
  std::set<std::string> relay_domains;  // lower case; ".example.com" matches subdomains
  std::vector<Network> trusted_networks;
  uint64_t max_message_size = 26214400;
  size_t max_recipients = 100;

  bool is_local(std::string_view domain) const;
  bool is_relay(std::string_view domain) const;
  bool trusted(std::string_view client_address) const;
  // RFC 5321 3.6.2: no relaying unless the recipient is ours, a relay
  // domain, or the client is authorised.
  RelayDecision decide_recipient(std::string_view domain, bool postmaster, bool authenticated,
                                 std::string_view client_address) const;
};

const char* to_string(RelayDecision d);

class PolicyStore {
 public:
  explicit PolicyStore(PolicySnapshot initial);
  std::shared_ptr<const PolicySnapshot> current() const { return current_.load(); }
  void replace(PolicySnapshot next);

 private:
  std::atomic<std::shared_ptr<const PolicySnapshot>> current_;
};

std::string lower_ascii(std::string_view s);

}  // namespace smtpd::policy
