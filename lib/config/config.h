// smtpd's configuration: embedded defaults, then a YAML file, then SMTPD_*
// environment variables, then --set KEY=VALUE overrides, validated into a
// typed Config. Every error names the key and the problem in one line.
//
// Keys are dotted paths ("policy.max_recipients"); list entries that have a
// name are addressed by it ("listeners.mx.address"). Lists of scalars take
// comma-separated values in --set and the environment. The environment name
// of a key is SMTPD_ + the path in upper case with "_" for "." (and for "-").
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "lib/policy/policy.h"

namespace smtpd::config {

enum class ListenerMode { kSmtp, kSubmission, kSmtps };

struct Listener {
  std::string name;
  std::string address;  // "host:port", "[v6]:port"; port 0 picks a free port
  ListenerMode mode = ListenerMode::kSmtp;
};

struct Config {
  std::string hostname;
  int threads = 0;  // 0: one per core
  std::chrono::milliseconds drain_timeout{30000};
  // How often the config file and TLS files are checked for changes (a
  // change reloads them); 0: only on SIGHUP.
  std::chrono::milliseconds config_watch_interval{2000};
  std::vector<Listener> listeners;
  std::string tls_cert_file, tls_key_file;
  std::string spool_path;
  uint64_t spool_max_messages = 100000;
  uint64_t spool_min_free_bytes = 64ull << 20;
  std::chrono::milliseconds spool_commit_delay{1};
  std::string control_address;
  // Plaintext gRPC serving only grpc.health.v1 (for kubelet's gRPC probes,
  // which cannot do TLS or tokens); empty: off.
  std::string control_health_address;
  // A second API listener, plaintext and without tokens, for the host's own
  // tools (smtpctl in the pod) when control.address needs TLS; loopback only.
  std::string control_local_address;
  // gRPC: server TLS (both or neither), a client CA for mutual TLS, and
  // the bearer tokens file ("token role [name]" per line).
  std::string control_tls_cert_file, control_tls_key_file;
  std::string control_client_ca_file;
  std::string control_tokens_file;
  std::string metrics_address;
  std::string auth_users_file;
  bool auth_allow_plaintext = false;
  policy::PolicySnapshot policy;  // includes the routes table
  // Delivery queue (issue 3).
  bool delivery_paused = false;
  int delivery_threads = 2;
  std::string delivery_tls = "may";  // none, may, encrypt, verify
  std::string delivery_relay_user;
  std::string delivery_relay_password;
  std::vector<std::string> delivery_dns_servers;  // "ip:port"; empty: /etc/resolv.conf
  uint16_t delivery_mx_port = 25;
  std::chrono::milliseconds queue_min_backoff{60000};
  std::chrono::milliseconds queue_max_backoff{3600000};
  std::chrono::milliseconds queue_lifetime{5LL * 24 * 3600 * 1000};
  std::chrono::milliseconds queue_delay_warning{0};
  int queue_max_received = 50;
  uint64_t queue_per_destination = 20;
  uint64_t queue_max_deliveries = 200;
  uint64_t max_connections = 10000;
  uint64_t max_connections_per_client = 100;
  int max_errors = 20;
  // AUTH failures from one address (within 15 minutes) before it is
  // refused AUTH for the rest of those 15 minutes.
  int auth_max_failures = 10;
  std::chrono::milliseconds command_timeout{300000};  // RFC 5321 4.5.3.2.7
  std::chrono::milliseconds data_timeout{300000};
  std::chrono::milliseconds tls_handshake_timeout{60000};
  std::string log_level = "info";
  std::string log_format = "json";  // json, or text (a Postfix-like line)
};

struct Sources {
  std::string file;                         // empty: no file
  std::vector<std::string> overrides;       // "key=value" from --set
  std::map<std::string, std::string> env;   // SMTPD_* variables
};

// The merged configuration tree as YAML text (for --print-config) and the
// validated Config.
struct Loaded {
  Config config;
  std::string effective_yaml;
};

absl::StatusOr<Loaded> load(const Sources& sources);

// Parses "host:port" or "[v6addr]:port".
absl::Status split_host_port(const std::string& address, std::string& host, uint16_t& port);

}  // namespace smtpd::config
