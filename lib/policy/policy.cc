#include "lib/policy/policy.h"

#include <arpa/inet.h>

#include <charconv>
#include <cstring>

namespace smtpd::policy {

std::string lower_ascii(std::string_view s) {
  std::string out(s);
  for (char& c : out) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return out;
}

absl::StatusOr<Network> Network::parse(std::string_view cidr) {
  Network n;
  n.text_ = std::string(cidr);
  const size_t slash = cidr.find('/');
  const std::string addr(cidr.substr(0, slash));
  if (inet_pton(AF_INET, addr.c_str(), n.bytes_) == 1) {
    n.v6_ = false;
    n.prefix_ = 32;
  } else if (inet_pton(AF_INET6, addr.c_str(), n.bytes_) == 1) {
    n.v6_ = true;
    n.prefix_ = 128;
  } else {
    return absl::InvalidArgumentError("not an IP network: '" + n.text_ + "'");
  }
  if (slash != std::string_view::npos) {
    const std::string_view p = cidr.substr(slash + 1);
    int prefix = -1;
    auto [ptr, ec] = std::from_chars(p.data(), p.data() + p.size(), prefix);
    if (ec != std::errc() || ptr != p.data() + p.size() || prefix < 0 || prefix > n.prefix_) {
      return absl::InvalidArgumentError("bad prefix length in '" + n.text_ + "'");
    }
    n.prefix_ = prefix;
  }
  return n;
}

bool Network::contains(std::string_view address) const {
  unsigned char a[16] = {};
  const std::string s(address);
  bool v6;
  if (inet_pton(AF_INET, s.c_str(), a) == 1) {
    v6 = false;
  } else if (inet_pton(AF_INET6, s.c_str(), a) == 1) {
    v6 = true;
    static const unsigned char kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (!v6_ && std::memcmp(a, kMapped, 12) == 0) {
      std::memmove(a, a + 12, 4);
      v6 = false;
    }
  } else {
    return false;
  }
  if (v6 != v6_) return false;
  const int full = prefix_ / 8, rest = prefix_ % 8;
  if (std::memcmp(a, bytes_, full) != 0) return false;
  if (rest == 0) return true;
  const unsigned char mask = static_cast<unsigned char>(0xff << (8 - rest));
  return (a[full] & mask) == (bytes_[full] & mask);
}

bool PolicySnapshot::is_local(std::string_view domain) const {
  return local_domains.count(lower_ascii(domain)) > 0;
}

bool PolicySnapshot::is_relay(std::string_view domain) const {
  const std::string d = lower_ascii(domain);
  if (relay_domains.count(d)) return true;
  for (size_t dot = d.find('.'); dot != std::string::npos; dot = d.find('.', dot + 1)) {
    if (relay_domains.count(d.substr(dot))) return true;
  }
  return false;
}

bool PolicySnapshot::trusted(std::string_view client_address) const {
  for (const Network& n : trusted_networks) {
    if (n.contains(client_address)) return true;
  }
  return false;
}

RelayDecision PolicySnapshot::decide_recipient(std::string_view domain, bool postmaster,
                                               bool authenticated,
                                               std::string_view client_address) const {
  if (postmaster || is_local(domain)) return RelayDecision::kLocal;
  if (is_relay(domain)) return RelayDecision::kRelayDomain;
  if (authenticated) return RelayDecision::kAuthenticated;
  if (trusted(client_address)) return RelayDecision::kTrusted;
  return RelayDecision::kDenied;
}

const char* to_string(RelayDecision d) {
  switch (d) {
    case RelayDecision::kLocal: return "local";
    case RelayDecision::kRelayDomain: return "relay_domain";
    case RelayDecision::kAuthenticated: return "authenticated";
    case RelayDecision::kTrusted: return "trusted_network";
    case RelayDecision::kDenied: return "denied";
  }
  return "unknown";
}

PolicyStore::PolicyStore(PolicySnapshot initial)
    : current_(std::make_shared<const PolicySnapshot>(std::move(initial))) {}

void PolicyStore::replace(PolicySnapshot next) {
  current_.store(std::make_shared<const PolicySnapshot>(std::move(next)));
}

}  // namespace smtpd::policy
