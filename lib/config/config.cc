#include "lib/config/config.h"

#include <unistd.h>

#include <charconv>
#include <fstream>
#include <sstream>

#include "absl/status/status.h"
#include "yaml-cpp/yaml.h"

namespace smtpd::config {
namespace {

// The embedded defaults: loopback ports, local spool (DESIGN.md "Defaults").
constexpr const char* kDefaults = R"(
server:
  hostname: ""
  threads: 0
  drain_timeout: 30s
  config_watch_interval: 2s
listeners:
  - {name: mx, address: "127.0.0.1:2525", mode: smtp}
  - {name: submission, address: "127.0.0.1:2587", mode: submission}
  - {name: smtps, address: "127.0.0.1:2465", mode: smtps}
tls:
  cert_file: ""
  key_file: ""
spool:
  path: var/spool
  max_messages: 100000
  min_free_bytes: 67108864
  commit_delay: 1ms
control:
  address: "127.0.0.1:50051"
  health_address: ""
  local_address: ""
  tls_cert_file: ""
  tls_key_file: ""
  client_ca_file: ""
  tokens_file: ""
metrics:
  address: "127.0.0.1:9090"
auth:
  users_file: ""
  allow_plaintext: false
policy:
  local_domains: [localhost]
  relay_domains: []
  trusted_networks: []
  max_message_size: 26214400
  max_recipients: 100
  connections_per_client_per_minute: 0
  messages_per_sender_per_minute: 0
  sender_access: []
  recipient_access: []
  outbound_tls: {}
routes:
  localhost: "maildir:var/mail"
  "*": "mx"
delivery:
  paused: false
  threads: 2
  tls: may
  relay_user: ""
  relay_password: ""
  dns_servers: []
  mx_port: 25
queue:
  min_backoff: 1m
  max_backoff: 1h
  lifetime: 5d
  delay_warning: 0s
  max_received: 50
  per_destination: 20
  max_deliveries: 200
limits:
  max_connections: 10000
  max_connections_per_client: 100
  max_errors: 20
  auth_max_failures: 10
  command_timeout: 5m
  data_timeout: 5m
  tls_handshake_timeout: 1m
log:
  level: info
  format: json
)";

// Keys whose children are free-form (the routes table).
bool free_form(const std::string& path) { return path == "routes" || path == "policy.outbound_tls"; }

absl::Status key_error(const std::string& key, const std::string& problem) {
  return absl::InvalidArgumentError("config: " + key + ": " + problem);
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::string cur;
  std::istringstream in(s);
  while (std::getline(in, cur, sep)) {
    if (!cur.empty()) out.push_back(cur);
  }
  return out;
}

// Overlays `over` onto `base`: maps merge key by key, a list of named maps
// merges entry by entry (new names are appended), anything else replaces.
void merge(YAML::Node base, const YAML::Node& over) {
  if (!over.IsMap() || !base.IsMap()) return;
  for (const auto& kv : over) {
    const std::string key = kv.first.as<std::string>();
    YAML::Node child = base[key];
    if (child.IsMap() && kv.second.IsMap()) {
      merge(child, kv.second);
    } else {
      base[key] = YAML::Clone(kv.second);
    }
  }
}

// Finds the node for a dotted path, creating map entries for the last
// component only when `create` and the parent is a free-form map.
absl::StatusOr<YAML::Node> find(YAML::Node root, const std::string& path, const YAML::Node& defaults) {
  YAML::Node node = root;
  std::string so_far;
  std::vector<std::string> parts = split(path, '.');
  for (size_t i = 0; i < parts.size(); ++i) {
    if (free_form(so_far) && i + 1 < parts.size()) {
      // Keys of a free-form map are domains: "routes.mail.example.com".
      for (size_t j = i + 1; j < parts.size(); ++j) parts[i] += "." + parts[j];
      parts.resize(i + 1);
    }
    const std::string& part = parts[i];
    so_far += (so_far.empty() ? "" : ".") + part;
    if (node.IsSequence()) {
      YAML::Node found;
      bool matched = false;  // a default Node is a defined null, so track this
      for (YAML::Node entry : node) {
        if (entry.IsMap() && entry["name"] && entry["name"].as<std::string>() == part) {
          found.reset(entry);
          matched = true;
        }
      }
      if (!matched) return key_error(so_far, "no list entry named '" + part + "'");
      node.reset(found);  // operator= would assign into the node, not rebind
    } else if (node.IsMap()) {
      if (!node[part]) {
        const std::string parent = so_far.substr(0, so_far.size() - part.size() - (so_far.size() > part.size() ? 1 : 0));
        if (!free_form(parent)) return key_error(so_far, "unknown key");
        node[part] = "";
      }
      YAML::Node child = node[part];
      node.reset(child);
    } else {
      return key_error(so_far, "not a section");
    }
  }
  return node;
}

absl::Status set_value(YAML::Node root, const std::string& path, const std::string& value,
                       const YAML::Node& defaults) {
  auto node = find(root, path, defaults);
  if (!node.ok()) return node.status();
  YAML::Node n = *node;
  if (n.IsMap()) return key_error(path, "is a section; set one of its keys");
  if (n.IsSequence()) {
    if (n.size() > 0 && n[0].IsMap()) return key_error(path, "is a list of sections; set its entries by name");
    YAML::Node seq(YAML::NodeType::Sequence);
    for (const std::string& item : split(value, ',')) seq.push_back(item);
    n = seq;
    return absl::OkStatus();
  }
  n = value;
  return absl::OkStatus();
}

// Leaf paths of the tree, for environment lookups.
void leaves(const YAML::Node& node, const std::string& prefix, std::vector<std::string>& out) {
  if (node.IsMap()) {
    for (const auto& kv : node) {
      leaves(kv.second, prefix.empty() ? kv.first.as<std::string>() : prefix + "." + kv.first.as<std::string>(), out);
    }
  } else if (node.IsSequence() && node.size() > 0 && node[0].IsMap()) {
    for (const auto& entry : node) {
      if (entry["name"]) leaves(entry, prefix + "." + entry["name"].as<std::string>(), out);
    }
  } else {
    out.push_back(prefix);
  }
}

std::string env_name(const std::string& path) {
  std::string s = "SMTPD_";
  for (char c : path) {
    s += (c == '.' || c == '-') ? '_' : static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  }
  return s;
}

// Rejects keys that the defaults do not have.
absl::Status check_known(const YAML::Node& node, const YAML::Node& defaults, const std::string& prefix) {
  if (!node.IsMap()) return absl::OkStatus();
  for (const auto& kv : node) {
    const std::string key = kv.first.as<std::string>();
    const std::string path = prefix.empty() ? key : prefix + "." + key;
    if (free_form(prefix)) continue;
    if (!defaults.IsMap() || !defaults[key]) return key_error(path, "unknown key");
    if (key == "listeners") continue;  // checked entry by entry when converted
    if (absl::Status s = check_known(kv.second, defaults[key], path); !s.ok()) return s;
  }
  return absl::OkStatus();
}

template <typename T>
absl::StatusOr<T> scalar(const YAML::Node& root, const std::string& path) {
  auto node = find(root, path, root);
  if (!node.ok()) return node.status();
  if (!node->IsScalar()) return key_error(path, "must be a single value");
  try {
    return node->as<T>();
  } catch (const YAML::Exception&) {
    return key_error(path, "'" + node->Scalar() + "' is not a valid value");
  }
}

absl::StatusOr<std::chrono::milliseconds> duration(const YAML::Node& root, const std::string& path) {
  auto text = scalar<std::string>(root, path);
  if (!text.ok()) return text.status();
  const std::string& s = *text;
  double n = 0;
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), n);
  const std::string unit(ptr, s.data() + s.size());
  double ms;
  if (ec != std::errc() || n < 0) return key_error(path, "'" + s + "' is not a duration (e.g. 30s, 5m)");
  if (unit.empty() || unit == "s") ms = n * 1000;
  else if (unit == "ms") ms = n;
  else if (unit == "m") ms = n * 60000;
  else if (unit == "h") ms = n * 3600000;
  else if (unit == "d") ms = n * 86400000;
  else return key_error(path, "'" + s + "' is not a duration (units: ms, s, m, h, d)");
  return std::chrono::milliseconds(static_cast<int64_t>(ms));
}

absl::StatusOr<std::vector<std::string>> string_list(const YAML::Node& root, const std::string& path) {
  auto node = find(root, path, root);
  if (!node.ok()) return node.status();
  std::vector<std::string> out;
  if (node->IsNull()) return out;
  if (node->IsScalar()) {  // a single value, or comma-separated
    return node->Scalar().empty() ? out : split(node->Scalar(), ',');
  }
  if (!node->IsSequence()) return key_error(path, "must be a list");
  for (const auto& item : *node) {
    if (!item.IsScalar()) return key_error(path, "list items must be single values");
    out.push_back(item.Scalar());
  }
  return out;
}

#define SMTPD_ASSIGN(lhs, expr)          \
  do {                                   \
    auto _v = (expr);                    \
    if (!_v.ok()) return _v.status();    \
    lhs = *std::move(_v);                \
  } while (0)

absl::Status convert_listeners(const YAML::Node& root, Config& c) {
  const YAML::Node list = root["listeners"];
  if (!list.IsSequence()) return key_error("listeners", "must be a list");
  for (const auto& entry : list) {
    if (!entry.IsMap() || !entry["name"]) return key_error("listeners", "each entry needs a name");
    Listener l;
    l.name = entry["name"].as<std::string>();
    const std::string base = "listeners." + l.name;
    for (const auto& kv : entry) {
      const std::string k = kv.first.as<std::string>();
      if (k != "name" && k != "address" && k != "mode") return key_error(base + "." + k, "unknown key");
    }
    if (!entry["address"]) return key_error(base + ".address", "missing");
    l.address = entry["address"].as<std::string>();
    if (l.address.empty()) continue;  // an empty address disables the listener
    std::string host;
    uint16_t port;
    if (absl::Status s = split_host_port(l.address, host, port); !s.ok()) {
      return key_error(base + ".address", std::string(s.message()));
    }
    const std::string mode = entry["mode"] ? entry["mode"].as<std::string>() : "smtp";
    if (mode == "smtp") l.mode = ListenerMode::kSmtp;
    else if (mode == "submission") l.mode = ListenerMode::kSubmission;
    else if (mode == "smtps") l.mode = ListenerMode::kSmtps;
    else return key_error(base + ".mode", "'" + mode + "' is not one of smtp, submission, smtps");
    c.listeners.push_back(l);
  }
  return absl::OkStatus();
}

absl::Status convert_policy(const YAML::Node& root, Config& c) {
  policy::PolicySnapshot& p = c.policy;
  std::vector<std::string> list;
  SMTPD_ASSIGN(list, string_list(root, "policy.local_domains"));
  for (const auto& d : list) p.local_domains.insert(policy::lower_ascii(d));
  SMTPD_ASSIGN(list, string_list(root, "policy.relay_domains"));
  for (const auto& d : list) p.relay_domains.insert(policy::lower_ascii(d));
  SMTPD_ASSIGN(list, string_list(root, "policy.trusted_networks"));
  for (const auto& n : list) {
    auto net = policy::Network::parse(n);
    if (!net.ok()) return key_error("policy.trusted_networks", std::string(net.status().message()));
    p.trusted_networks.push_back(*net);
  }
  SMTPD_ASSIGN(p.max_message_size, scalar<uint64_t>(root, "policy.max_message_size"));
  if (p.max_message_size < 1024) return key_error("policy.max_message_size", "must be at least 1024");
  SMTPD_ASSIGN(p.max_recipients, scalar<size_t>(root, "policy.max_recipients"));
  // RFC 5321 4.5.3.1.8: at least 100 recipients must be accepted.
  if (p.max_recipients < 1) return key_error("policy.max_recipients", "must be at least 1");
  SMTPD_ASSIGN(p.connections_per_client_per_minute, scalar<uint32_t>(root, "policy.connections_per_client_per_minute"));
  SMTPD_ASSIGN(p.messages_per_sender_per_minute, scalar<uint32_t>(root, "policy.messages_per_sender_per_minute"));
  for (const char* key : {"policy.sender_access", "policy.recipient_access"}) {
    std::vector<policy::AccessRule>& rules =
        std::string(key) == "policy.sender_access" ? p.sender_access : p.recipient_access;
    SMTPD_ASSIGN(list, string_list(root, key));
    for (const std::string& entry : list) {
      // "PATTERN allow" or "PATTERN deny [REPLY]"
      std::istringstream in(entry);
      std::string pattern, action, reply;
      in >> pattern >> action;
      std::getline(in >> std::ws, reply);
      policy::AccessRule r;
      r.pattern = policy::lower_ascii(pattern);
      if (action == "allow" && reply.empty()) {
        r.allow = true;
      } else if (action == "deny") {
        if (!reply.empty()) {
          if (absl::Status s = r.set_reply(reply); !s.ok()) return key_error(key, std::string(s.message()));
        }
      } else {
        return key_error(key, "'" + entry + "' is not \"PATTERN allow\" or \"PATTERN deny [REPLY]\"");
      }
      rules.push_back(r);
    }
  }
  for (const auto& kv : root["policy"]["outbound_tls"]) {
    const std::string domain = policy::lower_ascii(kv.first.as<std::string>());
    auto mode = policy::parse_tls_mode(kv.second.IsScalar() ? kv.second.Scalar() : "");
    if (!mode.ok()) return key_error("policy.outbound_tls." + domain, std::string(mode.status().message()));
    p.outbound_tls[domain] = *mode;
  }
  p.routes.clear();
  for (const auto& kv : root["routes"]) {
    const std::string domain = policy::lower_ascii(kv.first.as<std::string>());
    const std::string route = kv.second.IsScalar() ? kv.second.Scalar() : "";
    if (absl::Status st = policy::check_route(route); !st.ok()) {
      return key_error("routes." + domain, std::string(st.message()));
    }
    p.routes[domain] = route;
  }
  if (!p.routes.count("*")) return key_error("routes", "needs a \"*\" entry for all other domains");
  if (absl::Status s = p.validate(); !s.ok()) return key_error("policy", std::string(s.message()));
  return absl::OkStatus();
}

absl::Status convert(const YAML::Node& root, Config& c) {
  SMTPD_ASSIGN(c.hostname, scalar<std::string>(root, "server.hostname"));
  if (c.hostname.empty()) {
    char buf[256] = {};
    ::gethostname(buf, sizeof buf - 1);
    c.hostname = buf[0] ? buf : "localhost";
  }
  SMTPD_ASSIGN(c.threads, scalar<int>(root, "server.threads"));
  if (c.threads < 0 || c.threads > 256) return key_error("server.threads", "must be 0..256");
  SMTPD_ASSIGN(c.drain_timeout, duration(root, "server.drain_timeout"));
  SMTPD_ASSIGN(c.config_watch_interval, duration(root, "server.config_watch_interval"));
  if (absl::Status s = convert_listeners(root, c); !s.ok()) return s;
  SMTPD_ASSIGN(c.tls_cert_file, scalar<std::string>(root, "tls.cert_file"));
  SMTPD_ASSIGN(c.tls_key_file, scalar<std::string>(root, "tls.key_file"));
  if (c.tls_cert_file.empty() != c.tls_key_file.empty()) {
    return key_error("tls.key_file", "tls.cert_file and tls.key_file must be set together");
  }
  SMTPD_ASSIGN(c.spool_path, scalar<std::string>(root, "spool.path"));
  if (c.spool_path.empty()) return key_error("spool.path", "must not be empty");
  SMTPD_ASSIGN(c.spool_max_messages, scalar<uint64_t>(root, "spool.max_messages"));
  SMTPD_ASSIGN(c.spool_min_free_bytes, scalar<uint64_t>(root, "spool.min_free_bytes"));
  SMTPD_ASSIGN(c.spool_commit_delay, duration(root, "spool.commit_delay"));
  if (c.spool_commit_delay > std::chrono::milliseconds(100)) {
    return key_error("spool.commit_delay", "must be at most 100ms (it delays every 250)");
  }
  SMTPD_ASSIGN(c.control_address, scalar<std::string>(root, "control.address"));
  SMTPD_ASSIGN(c.metrics_address, scalar<std::string>(root, "metrics.address"));
  SMTPD_ASSIGN(c.auth_users_file, scalar<std::string>(root, "auth.users_file"));
  SMTPD_ASSIGN(c.auth_allow_plaintext, scalar<bool>(root, "auth.allow_plaintext"));
  SMTPD_ASSIGN(c.control_local_address, scalar<std::string>(root, "control.local_address"));
  if (!c.control_local_address.empty()) {
    std::string host;
    uint16_t port;
    if (absl::Status s = split_host_port(c.control_local_address, host, port); !s.ok()) {
      return key_error("control.local_address", std::string(s.message()));
    }
    if (host != "127.0.0.1" && host != "::1" && host != "localhost") {
      return key_error("control.local_address", "must be a loopback address (it needs no TLS and no token)");
    }
  }
  SMTPD_ASSIGN(c.control_health_address, scalar<std::string>(root, "control.health_address"));
  if (!c.control_health_address.empty()) {
    std::string host;
    uint16_t port;
    if (absl::Status s = split_host_port(c.control_health_address, host, port); !s.ok()) {
      return key_error("control.health_address", std::string(s.message()));
    }
  }
  SMTPD_ASSIGN(c.control_tls_cert_file, scalar<std::string>(root, "control.tls_cert_file"));
  SMTPD_ASSIGN(c.control_tls_key_file, scalar<std::string>(root, "control.tls_key_file"));
  SMTPD_ASSIGN(c.control_client_ca_file, scalar<std::string>(root, "control.client_ca_file"));
  SMTPD_ASSIGN(c.control_tokens_file, scalar<std::string>(root, "control.tokens_file"));
  if (c.control_tls_cert_file.empty() != c.control_tls_key_file.empty()) {
    return key_error("control.tls_key_file", "control.tls_cert_file and control.tls_key_file must be set together");
  }
  if (!c.control_client_ca_file.empty() && c.control_tls_cert_file.empty()) {
    return key_error("control.client_ca_file", "mutual TLS needs control.tls_cert_file and control.tls_key_file");
  }
  if (!c.control_address.empty()) {
    std::string host;
    uint16_t port;
    if (absl::Status s = split_host_port(c.control_address, host, port); !s.ok()) {
      return key_error("control.address", std::string(s.message()));
    }
    // DESIGN.md security defaults: plaintext gRPC without tokens only on
    // loopback.
    const bool loopback = host == "127.0.0.1" || host == "::1" || host == "localhost";
    if (!loopback && (c.control_tls_cert_file.empty() ||
                      (c.control_tokens_file.empty() && c.control_client_ca_file.empty()))) {
      return key_error("control.address", "'" + c.control_address +
                                              "' is not loopback: set control.tls_cert_file and control.tls_key_file, "
                                              "and control.tokens_file or control.client_ca_file");
    }
  }
  if (absl::Status s = convert_policy(root, c); !s.ok()) return s;
  SMTPD_ASSIGN(c.delivery_paused, scalar<bool>(root, "delivery.paused"));
  SMTPD_ASSIGN(c.delivery_threads, scalar<int>(root, "delivery.threads"));
  SMTPD_ASSIGN(c.delivery_tls, scalar<std::string>(root, "delivery.tls"));
  if (c.delivery_tls != "none" && c.delivery_tls != "may" && c.delivery_tls != "encrypt" && c.delivery_tls != "verify") {
    return key_error("delivery.tls", "'" + c.delivery_tls + "' is not one of none, may, encrypt, verify");
  }
  SMTPD_ASSIGN(c.delivery_relay_user, scalar<std::string>(root, "delivery.relay_user"));
  SMTPD_ASSIGN(c.delivery_relay_password, scalar<std::string>(root, "delivery.relay_password"));
  SMTPD_ASSIGN(c.delivery_dns_servers, string_list(root, "delivery.dns_servers"));
  for (const std::string& server : c.delivery_dns_servers) {
    std::string host;
    uint16_t port;
    if (!split_host_port(server, host, port).ok()) {
      return key_error("delivery.dns_servers", "'" + server + "' is not ip:port");
    }
  }
  SMTPD_ASSIGN(c.delivery_mx_port, scalar<uint16_t>(root, "delivery.mx_port"));
  if (c.delivery_threads < 1 || c.delivery_threads > 64) return key_error("delivery.threads", "must be 1..64");
  SMTPD_ASSIGN(c.queue_min_backoff, duration(root, "queue.min_backoff"));
  SMTPD_ASSIGN(c.queue_max_backoff, duration(root, "queue.max_backoff"));
  if (c.queue_min_backoff.count() < 100 || c.queue_max_backoff < c.queue_min_backoff) {
    return key_error("queue.max_backoff", "needs 100ms <= queue.min_backoff <= queue.max_backoff");
  }
  SMTPD_ASSIGN(c.queue_lifetime, duration(root, "queue.lifetime"));
  SMTPD_ASSIGN(c.queue_delay_warning, duration(root, "queue.delay_warning"));
  SMTPD_ASSIGN(c.queue_max_received, scalar<int>(root, "queue.max_received"));
  if (c.queue_max_received < 10) return key_error("queue.max_received", "must be at least 10");
  SMTPD_ASSIGN(c.queue_per_destination, scalar<uint64_t>(root, "queue.per_destination"));
  SMTPD_ASSIGN(c.queue_max_deliveries, scalar<uint64_t>(root, "queue.max_deliveries"));
  if (c.queue_per_destination < 1 || c.queue_max_deliveries < 1) {
    return key_error("queue.per_destination", "queue.per_destination and queue.max_deliveries must be at least 1");
  }
  SMTPD_ASSIGN(c.max_connections, scalar<uint64_t>(root, "limits.max_connections"));
  SMTPD_ASSIGN(c.max_connections_per_client, scalar<uint64_t>(root, "limits.max_connections_per_client"));
  SMTPD_ASSIGN(c.max_errors, scalar<int>(root, "limits.max_errors"));
  SMTPD_ASSIGN(c.auth_max_failures, scalar<int>(root, "limits.auth_max_failures"));
  if (c.auth_max_failures < 1) return key_error("limits.auth_max_failures", "must be at least 1");
  if (c.max_errors < 1) return key_error("limits.max_errors", "must be at least 1");
  SMTPD_ASSIGN(c.command_timeout, duration(root, "limits.command_timeout"));
  SMTPD_ASSIGN(c.data_timeout, duration(root, "limits.data_timeout"));
  SMTPD_ASSIGN(c.tls_handshake_timeout, duration(root, "limits.tls_handshake_timeout"));
  SMTPD_ASSIGN(c.log_level, scalar<std::string>(root, "log.level"));
  if (c.log_level != "debug" && c.log_level != "info" && c.log_level != "warn" && c.log_level != "error") {
    return key_error("log.level", "'" + c.log_level + "' is not one of debug, info, warn, error");
  }
  SMTPD_ASSIGN(c.log_format, scalar<std::string>(root, "log.format"));
  if (c.log_format != "json" && c.log_format != "text") {
    return key_error("log.format", "'" + c.log_format + "' is not json or text");
  }
  return absl::OkStatus();
}

}  // namespace


absl::Status split_host_port(const std::string& address, std::string& host, uint16_t& port) {
  size_t colon;
  if (!address.empty() && address.front() == '[') {
    const size_t close = address.find(']');
    if (close == std::string::npos || close + 1 >= address.size() || address[close + 1] != ':') {
      return absl::InvalidArgumentError("'" + address + "' is not [address]:port");
    }
    host = address.substr(1, close - 1);
    colon = close + 1;
  } else {
    colon = address.rfind(':');
    if (colon == std::string::npos) return absl::InvalidArgumentError("'" + address + "' is not host:port");
    host = address.substr(0, colon);
  }
  const std::string p = address.substr(colon + 1);
  unsigned value = 0;
  auto [ptr, ec] = std::from_chars(p.data(), p.data() + p.size(), value);
  if (p.empty() || ec != std::errc() || ptr != p.data() + p.size() || value > 65535) {
    return absl::InvalidArgumentError("'" + p + "' is not a port number");
  }
  port = static_cast<uint16_t>(value);
  return absl::OkStatus();
}

absl::StatusOr<Loaded> load(const Sources& sources) {
  YAML::Node defaults = YAML::Load(kDefaults);
  YAML::Node root = YAML::Clone(defaults);
  if (!sources.file.empty()) {
    YAML::Node file;
    try {
      file = YAML::LoadFile(sources.file);
    } catch (const YAML::BadFile&) {
      return absl::InvalidArgumentError("config: cannot read " + sources.file);
    } catch (const YAML::Exception& e) {
      return absl::InvalidArgumentError("config: " + sources.file + ": " + e.what());
    }
    if (!file.IsNull()) {
      if (!file.IsMap()) return absl::InvalidArgumentError("config: " + sources.file + ": not a mapping");
      if (absl::Status s = check_known(file, defaults, ""); !s.ok()) return s;
      merge(root, file);
    }
  }
  std::vector<std::string> paths;
  leaves(root, "", paths);
  for (const std::string& path : paths) {
    auto it = sources.env.find(env_name(path));
    if (it == sources.env.end()) continue;
    if (absl::Status s = set_value(root, path, it->second, defaults); !s.ok()) return s;
  }
  for (const std::string& kv : sources.overrides) {
    const size_t eq = kv.find('=');
    if (eq == std::string::npos || eq == 0) {
      return absl::InvalidArgumentError("config: --set " + kv + ": expected KEY=VALUE");
    }
    if (absl::Status s = set_value(root, kv.substr(0, eq), kv.substr(eq + 1), defaults); !s.ok()) return s;
  }
  Loaded out;
  if (absl::Status s = convert(root, out.config); !s.ok()) return s;
  // Secrets never leave through --print-config.
  if (!out.config.delivery_relay_password.empty()) root["delivery"]["relay_password"] = "<redacted>";
  YAML::Emitter em;
  em << root;
  out.effective_yaml = std::string(em.c_str()) + "\n";
  return out;
}

}  // namespace smtpd::config
