#include "lib/policy/policy.h"

#include <arpa/inet.h>

#include <algorithm>
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

namespace smtpd::policy {

namespace {

bool valid_domain_pattern(std::string_view d) {
  if (d.empty() || d.size() > 255) return false;
  for (char c : d) {
    const unsigned char u = static_cast<unsigned char>(c);
    if (u <= ' ' || c == '@' || c == ',' || c == '<' || c == '>' || u == 0x7f) return false;
  }
  return true;
}

}  // namespace

bool AccessRule::matches(std::string_view address) const {
  if (pattern == "*") return true;
  const std::string a = lower_ascii(address);
  const size_t at = a.rfind('@');
  const std::string_view local = at == std::string::npos ? std::string_view(a) : std::string_view(a).substr(0, at);
  const std::string_view domain = at == std::string::npos ? std::string_view() : std::string_view(a).substr(at + 1);
  if (pattern.front() == '@') return domain == std::string_view(pattern).substr(1);
  if (pattern.back() == '@') return at != std::string::npos && local == std::string_view(pattern).substr(0, pattern.size() - 1);
  if (pattern.find('@') != std::string::npos) return a == pattern;
  if (pattern.front() == '.') return domain.size() > pattern.size() && domain.ends_with(pattern);
  return domain == pattern;
}

std::string AccessRule::reply_text() const {
  return std::to_string(code) + " " + enhanced + " " + text;
}

absl::Status AccessRule::set_reply(std::string_view reply) {
  // RFC 5321 4.2: Reply-code = %x32-35 %x30-35 %x30-39; an access refusal
  // is 4xx (try later) or 5xx (never). RFC 3463: class.subject.detail with
  // the same class digit.
  if (reply.size() < 10 || (reply[0] != '4' && reply[0] != '5') || reply[1] < '0' || reply[1] > '5' ||
      reply[2] < '0' || reply[2] > '9' || reply[3] != ' ') {
    return absl::InvalidArgumentError("'" + std::string(reply) + "' is not \"4XX|5XX X.Y.Z text\"");
  }
  const std::string_view rest = reply.substr(4);
  const size_t sp = rest.find(' ');
  const std::string_view enh = rest.substr(0, sp);
  int dots = 0;
  bool ok = !enh.empty() && enh[0] == reply[0] && enh.size() >= 5 && enh.size() <= 9;
  for (size_t i = 1; ok && i < enh.size(); ++i) {
    if (enh[i] == '.') {
      ok = enh[i - 1] != '.';
      ++dots;
    } else {
      ok = enh[i] >= '0' && enh[i] <= '9';
    }
  }
  if (!ok || dots != 2 || enh.back() == '.' || enh[1] != '.') {
    return absl::InvalidArgumentError("'" + std::string(reply) + "' needs an enhanced code of the reply's class (RFC 3463)");
  }
  const std::string_view txt = sp == std::string_view::npos ? std::string_view() : rest.substr(sp + 1);
  if (txt.empty()) return absl::InvalidArgumentError("'" + std::string(reply) + "' has no text");
  for (char c : txt) {
    const unsigned char u = static_cast<unsigned char>(c);
    if (u < ' ' || u >= 0x7f) return absl::InvalidArgumentError("reply text must be printable ASCII");
  }
  code = (reply[0] - '0') * 100 + (reply[1] - '0') * 10 + (reply[2] - '0');
  enhanced = std::string(enh);
  text = std::string(txt);
  return absl::OkStatus();
}

const char* to_string(TlsMode m) {
  switch (m) {
    case TlsMode::kDefault: return "default";
    case TlsMode::kNone: return "none";
    case TlsMode::kMay: return "may";
    case TlsMode::kEncrypt: return "encrypt";
    case TlsMode::kVerify: return "verify";
  }
  return "default";
}

absl::StatusOr<TlsMode> parse_tls_mode(std::string_view s) {
  for (TlsMode m : {TlsMode::kNone, TlsMode::kMay, TlsMode::kEncrypt, TlsMode::kVerify}) {
    if (s == to_string(m)) return m;
  }
  return absl::InvalidArgumentError("'" + std::string(s) + "' is not one of none, may, encrypt, verify");
}

absl::Status check_route(std::string_view route) {
  const std::string r(route);
  if (r == "mx") return absl::OkStatus();
  if (r.rfind("maildir:", 0) == 0 && r.size() > 8) return absl::OkStatus();
  for (const std::string scheme : {"relay:", "lmtp:"}) {
    if (r.rfind(scheme, 0) != 0) continue;
    const std::string rest = r.substr(scheme.size());
    const size_t colon = rest.rfind(':');
    const bool ok = colon != std::string::npos && colon > 0 && colon + 1 < rest.size() && rest.size() - colon <= 6 &&
                    rest.find_first_not_of("0123456789", colon + 1) == std::string::npos &&
                    std::stoul(rest.substr(colon + 1)) <= 65535;
    if (ok) return absl::OkStatus();
    return absl::InvalidArgumentError("'" + r + "' is not " + scheme + "HOST:PORT");
  }
  return absl::InvalidArgumentError("'" + r + "' is not one of mx, maildir:PATH, relay:HOST:PORT, lmtp:HOST:PORT");
}

const AccessRule* PolicySnapshot::match(const std::vector<AccessRule>& rules, std::string_view address) {
  for (const AccessRule& r : rules) {
    if (r.matches(address)) return &r;
  }
  return nullptr;
}

const std::string& PolicySnapshot::route_for(const std::string& domain) const {
  auto it = routes.find(domain);
  if (it != routes.end()) return it->second;
  static const std::string kMx = "mx";
  it = routes.find("*");
  return it != routes.end() ? it->second : kMx;
}

TlsMode PolicySnapshot::tls_for(const std::string& domain) const {
  if (outbound_tls.empty()) return TlsMode::kDefault;
  auto it = outbound_tls.find(domain);
  if (it != outbound_tls.end()) return it->second;
  for (size_t dot = domain.find('.'); dot != std::string::npos; dot = domain.find('.', dot + 1)) {
    it = outbound_tls.find(domain.substr(dot));
    if (it != outbound_tls.end()) return it->second;
  }
  return TlsMode::kDefault;
}

absl::Status PolicySnapshot::validate() const {
  auto field = [](const std::string& name, std::string_view problem) {
    return absl::InvalidArgumentError(name + ": " + std::string(problem));
  };
  for (const std::string& d : local_domains) {
    if (!valid_domain_pattern(d)) return field("local_domains", "'" + d + "' is not a domain");
  }
  for (const std::string& d : relay_domains) {
    if (!valid_domain_pattern(d)) return field("relay_domains", "'" + d + "' is not a domain");
  }
  if (max_message_size < 1024) return field("max_message_size", "must be at least 1024");
  if (max_message_size > (4ull << 30)) return field("max_message_size", "must be at most 4 GiB");
  if (max_recipients < 1 || max_recipients > 10000) return field("max_recipients", "must be 1..10000");
  for (const auto* rules : {&sender_access, &recipient_access}) {
    const std::string name = rules == &sender_access ? "sender_access" : "recipient_access";
    for (size_t i = 0; i < rules->size(); ++i) {
      const AccessRule& r = (*rules)[i];
      const std::string f = name + "[" + std::to_string(i) + "]";
      if (r.pattern.empty()) return field(f + ".pattern", "must not be empty");
      const size_t at = r.pattern.rfind('@');
      const std::string local = at == std::string::npos ? "" : r.pattern.substr(0, at);
      const bool local_ok = std::none_of(local.begin(), local.end(), [](char c) {
        return static_cast<unsigned char>(c) <= ' ' || c == '<' || c == '>';
      });
      const bool ok = r.pattern == "*" ||
                      (at == std::string::npos ? valid_domain_pattern(r.pattern)
                       : at + 1 == r.pattern.size()
                           ? !local.empty() && local_ok
                           : local_ok && valid_domain_pattern(r.pattern.substr(at + 1)));
      if (!ok) {
        return field(f + ".pattern", "'" + r.pattern + "' is not an address, @domain, domain, .domain, local@ or *");
      }
      if (!r.allow) {
        AccessRule probe;
        if (absl::Status s = probe.set_reply(r.reply_text()); !s.ok()) return field(f + ".reply", std::string(s.message()));
      }
    }
  }
  if (!routes.count("*")) return field("routes", "needs a \"*\" entry for all other domains");
  for (const auto& [domain, route] : routes) {
    if (domain != "*" && !valid_domain_pattern(domain)) return field("routes", "'" + domain + "' is not a domain");
    if (absl::Status s = check_route(route); !s.ok()) return field("routes." + domain, std::string(s.message()));
  }
  for (const auto& [domain, mode] : outbound_tls) {
    if (!valid_domain_pattern(domain)) return field("outbound_tls", "'" + domain + "' is not a domain");
    if (mode == TlsMode::kDefault) return field("outbound_tls." + domain, "needs a mode (none, may, encrypt, verify)");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<const PolicySnapshot>> PolicyStore::update(
    PolicySnapshot next, uint64_t expected, const std::function<absl::Status(const PolicySnapshot&)>& persist) {
  if (absl::Status s = next.validate(); !s.ok()) return s;
  std::lock_guard<std::mutex> lock(update_mu_);
  const auto cur = current_.load();
  if (expected != 0 && expected != cur->version) {
    return absl::AbortedError("policy version is " + std::to_string(cur->version) + ", not " +
                              std::to_string(expected));
  }
  next.version = cur->version + 1;
  if (persist) {
    if (absl::Status s = persist(next); !s.ok()) return s;
  }
  auto snap = std::make_shared<const PolicySnapshot>(std::move(next));
  current_.store(snap);
  return snap;
}

bool RateLimiter::allow(const std::string& key, uint32_t per_minute, int64_t now_ms) {
  if (per_minute == 0) return true;
  constexpr int64_t kWindow = 60000;
  Shard& shard = shards_[std::hash<std::string>()(key) % kShards];
  std::lock_guard<std::mutex> lock(shard.mu);
  if (now_ms - shard.swept_ms > kWindow) {
    // Keys idle for two windows carry no weight any more: forget them.
    for (auto it = shard.windows.begin(); it != shard.windows.end();) {
      it = now_ms - it->second.start_ms >= 2 * kWindow ? shard.windows.erase(it) : std::next(it);
    }
    shard.swept_ms = now_ms;
  }
  Window& w = shard.windows[key];
  const int64_t start = now_ms - now_ms % kWindow;
  if (w.start_ms != start) {
    w.previous = w.start_ms == start - kWindow ? w.current : 0;
    w.current = 0;
    w.start_ms = start;
  }
  // Weighted estimate of the events in the last 60 seconds.
  const double overlap = 1.0 - static_cast<double>(now_ms - start) / kWindow;
  const double estimate = w.previous * overlap + w.current;
  if (estimate + 1 > per_minute) return false;
  ++w.current;
  return true;
}

size_t RateLimiter::keys() {
  size_t n = 0;
  for (Shard& s : shards_) {
    std::lock_guard<std::mutex> lock(s.mu);
    n += s.windows.size();
  }
  return n;
}

}  // namespace smtpd::policy
