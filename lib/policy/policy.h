// Mail policy as an immutable, versioned snapshot: which domains are ours,
// which we relay for, which networks may relay, and message limits. Readers
// take a shared_ptr to the current snapshot and never lock; an update swaps
// in a new snapshot atomically (the control plane does that at runtime).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
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

// A sender or recipient access rule. Patterns: "user@example.com",
// "@example.com" or "example.com" (the domain), ".example.com" (its
// subdomains), "user@" (the local part anywhere), "*" (anything). The
// first rule that matches decides.
struct AccessRule {
  std::string pattern;  // lower case
  bool allow = false;
  // For deny: the reply (RFC 5321 4.2 code, RFC 3463 enhanced code, text).
  int code = 554;
  std::string enhanced = "5.7.1";
  std::string text = "Access denied";

  bool matches(std::string_view address) const;
  // "554 5.7.1 Access denied" form, for display and the API.
  std::string reply_text() const;
  // Parses a "5XX X.Y.Z text" or "4XX X.Y.Z text" reply into this rule.
  absl::Status set_reply(std::string_view reply);
};

// Outbound TLS for a recipient domain (delivery): kDefault follows the
// configured delivery.tls.
enum class TlsMode { kDefault, kNone, kMay, kEncrypt, kVerify };
const char* to_string(TlsMode m);
absl::StatusOr<TlsMode> parse_tls_mode(std::string_view s);

// Delivery route syntax: "mx", "maildir:PATH", "relay:HOST:PORT",
// "lmtp:HOST:PORT".
absl::Status check_route(std::string_view route);

struct PolicySnapshot {
  uint64_t version = 1;
  std::set<std::string> local_domains;  // lower case
  std::set<std::string> relay_domains;  // lower case; ".example.com" matches subdomains
  std::vector<Network> trusted_networks;
  uint64_t max_message_size = 26214400;
  size_t max_recipients = 100;
  // Rate limits (0: none): new connections per client address per minute,
  // messages per envelope sender per minute.
  uint32_t connections_per_client_per_minute = 0;
  uint32_t messages_per_sender_per_minute = 0;
  std::vector<AccessRule> sender_access;
  std::vector<AccessRule> recipient_access;
  // Recipient domain (lower case) -> route; "*" for every other domain.
  std::map<std::string, std::string> routes{{"*", "mx"}};
  // Recipient domain (lower case; ".example.com" for subdomains) -> mode.
  std::map<std::string, TlsMode> outbound_tls;
  std::string updated_by = "config";
  int64_t updated_unix_ms = 0;

  bool is_local(std::string_view domain) const;
  bool is_relay(std::string_view domain) const;
  bool trusted(std::string_view client_address) const;
  // RFC 5321 3.6.2: no relaying unless the recipient is ours, a relay
  // domain, or the client is authorised.
  RelayDecision decide_recipient(std::string_view domain, bool postmaster, bool authenticated,
                                 std::string_view client_address) const;
  // The first access rule matching `address` ("local@domain", or "" for
  // the null sender), or null.
  static const AccessRule* match(const std::vector<AccessRule>& rules, std::string_view address);
  // The route for a recipient domain (lower case): exact match, else "*".
  const std::string& route_for(const std::string& domain) const;
  // The TLS mode for a recipient domain: exact, then parent ".domain"
  // rules, else kDefault.
  TlsMode tls_for(const std::string& domain) const;
  // Checks every field; INVALID_ARGUMENT naming the field ("routes.x.test:
  // ...", "max_recipients: ...").
  absl::Status validate() const;
};

const char* to_string(RelayDecision d);

class PolicyStore {
 public:
  explicit PolicyStore(PolicySnapshot initial);
  std::shared_ptr<const PolicySnapshot> current() const { return current_.load(); }
  void replace(PolicySnapshot next);
  // Compare-and-set: installs `next` with version current+1 when the
  // current version is `expected` (0: any). ABORTED on a mismatch. The
  // `persist` step runs under the update lock with the numbered snapshot
  // before it is installed; its error cancels the update.
  absl::StatusOr<std::shared_ptr<const PolicySnapshot>> update(
      PolicySnapshot next, uint64_t expected,
      const std::function<absl::Status(const PolicySnapshot&)>& persist);

 private:
  std::atomic<std::shared_ptr<const PolicySnapshot>> current_;
  std::mutex update_mu_;
};

// Sliding-window rate limiter over one-minute windows (the previous
// window's count weighted by how much of it still overlaps), keyed by
// client address or sender. Thread-safe; memory is bounded by the keys
// seen in the last two minutes.
class RateLimiter {
 public:
  // Counts one event for `key` and says whether it is within
  // `per_minute` (0: unlimited, nothing is counted).
  bool allow(const std::string& key, uint32_t per_minute, int64_t now_ms);
  size_t keys();

 private:
  struct Window {
    int64_t start_ms = 0;
    uint32_t current = 0;
    uint32_t previous = 0;
  };
  static constexpr size_t kShards = 16;
  struct Shard {
    std::mutex mu;
    std::unordered_map<std::string, Window> windows;
    int64_t swept_ms = 0;
  };
  Shard shards_[kShards];
};

std::string lower_ascii(std::string_view s);

}  // namespace smtpd::policy
