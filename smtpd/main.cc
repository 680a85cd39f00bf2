// smtpd: wires configuration, the spool, policy and the SMTP front end.
//
//   smtpd [--config FILE] [--set KEY=VALUE]...            run the server
//   smtpd ... --check-config | --print-config              validate / show config
//   smtpd ... spool ls | check | show ID                   read the spool offline
//   smtpd hash-password                                    Argon2id hash of stdin
//
// Exit status: 0 success, 1 runtime failure, 2 usage or configuration error.
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <chrono>
#include <cstdio>
#include <memory>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "control/server.h"
#include "lib/config/config.h"
#include "lib/net/auth.h"
#include "lib/net/server.h"
#include "lib/net/tls.h"
#include "lib/net/metrics_http.h"
#include "lib/observe/log.h"
#include "lib/observe/metrics.h"
#include "lib/policy/policy.h"
#include "lib/delivery/dispatcher.h"
#include "lib/queue/queue_manager.h"
#include "lib/queue/spool.h"

extern char** environ;

namespace {

using smtpd::observe::Level;
using smtpd::observe::LogLine;

struct Args {
  smtpd::config::Sources sources;
  bool check = false;
  bool print = false;
  std::vector<std::string> command;  // positional words
};

void usage() {
  std::fprintf(stderr,
               "usage: smtpd [--config FILE] [--set KEY=VALUE]... [--check-config|--print-config]\n"
               "       smtpd [--config FILE] [--set KEY=VALUE]... spool ls|check|show ID\n"
               "       smtpd hash-password   (reads the password from stdin)\n");
}

bool parse_args(int argc, char** argv, Args& a) {
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&](const std::string& flag, std::string& out) {
      const std::string prefix = flag + "=";
      if (arg.rfind(prefix, 0) == 0) {
        out = arg.substr(prefix.size());
        return true;
      }
      if (arg == flag && i + 1 < argc) {
        out = argv[++i];
        return true;
      }
      return false;
    };
    std::string v;
    if (value("--config", v)) {
      a.sources.file = v;
    } else if (value("--set", v)) {
      a.sources.overrides.push_back(v);
    } else if (arg == "--check-config") {
      a.check = true;
    } else if (arg == "--print-config") {
      a.print = true;
    } else if (arg == "-h" || arg == "--help") {
      usage();
      std::exit(0);
    } else if (!arg.empty() && arg[0] == '-') {
      std::fprintf(stderr, "smtpd: unknown flag %s\n", arg.c_str());
      return false;
    } else {
      a.command.push_back(arg);
    }
  }
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string kv = *e;
    const size_t eq = kv.find('=');
    if (kv.rfind("SMTPD_", 0) == 0 && eq != std::string::npos) a.sources.env[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  return true;
}

std::string format_time(int64_t unix_us) {
  const time_t t = static_cast<time_t>(unix_us / 1000000);
  struct tm tm;
  gmtime_r(&t, &tm);
  char buf[64];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

void print_record(const smtpd::queue::MessageRecord& r) {
  std::printf("id: %s\narrival: %s\nfrom: <%s>\n", r.id.c_str(), format_time(r.arrival_unix_us).c_str(),
              r.envelope.sender.str().c_str());
  for (const auto& rc : r.envelope.recipients) std::printf("to: <%s>\n", rc.path.str().c_str());
  std::printf("size: %llu\nclient: %s\nhelo: %s\nprotocol: %s\nlistener: %s\n",
              static_cast<unsigned long long>(r.size), r.client_address.c_str(), r.helo.c_str(),
              r.protocol.c_str(), r.source.c_str());
  if (!r.auth_user.empty()) std::printf("auth_user: %s\n", r.auth_user.c_str());
  if (r.envelope.smtputf8) std::printf("smtputf8: yes\n");
  if (!r.envelope.envid.empty()) std::printf("envid: %s\n", r.envelope.envid.c_str());
}

int spool_command(const smtpd::config::Config& cfg, const std::vector<std::string>& cmd) {
  if (cmd.size() < 2 || (cmd[1] == "show" && cmd.size() != 3) ||
      (cmd[1] != "ls" && cmd[1] != "show" && cmd[1] != "check")) {
    usage();
    return 2;
  }
  auto reader = smtpd::queue::SpoolReader::open(cfg.spool_path);
  if (!reader.ok()) {
    std::fprintf(stderr, "smtpd: %s\n", std::string(reader.status().message()).c_str());
    return 1;
  }
  if (cmd[1] == "check") {
    // Reads every message back: each body must have its recorded size.
    uint64_t good = 0, bad = 0;
    absl::Status s = (*reader)->for_each([&](const smtpd::queue::MessageRecord& r) {
      auto body = (*reader)->read_body(r);
      if (body.ok() && body->size() == r.size) {
        ++good;
      } else {
        ++bad;
        std::printf("BAD %s: %s\n", r.id.c_str(),
                    body.ok() ? "size mismatch" : std::string(body.status().message()).c_str());
      }
    });
    std::printf("messages: %llu ok, %llu bad\n", static_cast<unsigned long long>(good),
                static_cast<unsigned long long>(bad));
    return (s.ok() && bad == 0) ? 0 : 1;
  }
  if (cmd[1] == "ls") {
    std::printf("%-16s  %-20s  %10s  %-30s  %s\n", "ID", "ARRIVAL", "SIZE", "FROM", "TO");
    absl::Status s = (*reader)->for_each([](const smtpd::queue::MessageRecord& r) {
      std::string to;
      for (const auto& rc : r.envelope.recipients) to += (to.empty() ? "" : ",") + rc.path.str();
      std::printf("%-16s  %-20s  %10llu  %-30s  %s\n", r.id.c_str(), format_time(r.arrival_unix_us).c_str(),
                  static_cast<unsigned long long>(r.size), ("<" + r.envelope.sender.str() + ">").c_str(),
                  to.c_str());
    });
    if (!s.ok()) {
      std::fprintf(stderr, "smtpd: %s\n", std::string(s.message()).c_str());
      return 1;
    }
    return 0;
  }
  auto rec = (*reader)->get(cmd[2]);
  if (!rec.ok()) {
    std::fprintf(stderr, "smtpd: %s\n", std::string(rec.status().message()).c_str());
    return 1;
  }
  auto body = (*reader)->read_body(*rec);
  if (!body.ok()) {
    std::fprintf(stderr, "smtpd: %s\n", std::string(body.status().message()).c_str());
    return 1;
  }
  print_record(*rec);
  std::printf("\n");
  std::fwrite(body->data(), 1, body->size(), stdout);
  return 0;
}

int hash_password_command() {
  std::string password;
  std::getline(std::cin, password);
  if (!password.empty() && password.back() == '\r') password.pop_back();
  if (password.empty()) {
    std::fprintf(stderr, "smtpd: empty password on stdin\n");
    return 2;
  }
  auto h = smtpd::net::hash_password(password);
  if (!h.ok()) {
    std::fprintf(stderr, "smtpd: %s\n", std::string(h.status().message()).c_str());
    return 1;
  }
  std::printf("%s\n", h->c_str());
  return 0;
}

void raise_fd_limit() {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
}

smtpd::observe::Level parse_level(const std::string& s) {
  if (s == "debug") return Level::kDebug;
  if (s == "warn") return Level::kWarn;
  if (s == "error") return Level::kError;
  return Level::kInfo;
}

const char* status_name(smtpd::queue::RecipientStatus s) {
  switch (s) {
    case smtpd::queue::RecipientStatus::kQueued: return "queued";
    case smtpd::queue::RecipientStatus::kDeferred: return "deferred";
    case smtpd::queue::RecipientStatus::kDelivered: return "delivered";
    case smtpd::queue::RecipientStatus::kFailed: return "failed";
  }
  return "unknown";
}

std::unique_ptr<smtpd::queue::QueueManager> make_queue(const smtpd::config::Config& cfg, smtpd::queue::Spool& spool,
                                                        smtpd::queue::Transport& transport,
                                                        const smtpd::policy::PolicyStore& policy) {
  smtpd::queue::QueueOptions qo;
  qo.hostname = cfg.hostname;
  qo.min_backoff = cfg.queue_min_backoff;
  qo.max_backoff = cfg.queue_max_backoff;
  qo.lifetime = cfg.queue_lifetime;
  qo.delay_warning = cfg.queue_delay_warning;
  qo.max_received = cfg.queue_max_received;
  qo.per_destination = cfg.queue_per_destination;
  qo.total_in_flight = cfg.queue_max_deliveries;
  qo.on_attempt = [](const smtpd::queue::MessageRecord& r, size_t i, const std::string& route,
                     const smtpd::queue::AttemptOutcome& o, const smtpd::queue::RecipientState& st) {
    const int64_t now_us = std::chrono::duration_cast<std::chrono::microseconds>(
                               std::chrono::system_clock::now().time_since_epoch()).count();
    LogLine(Level::kInfo, "delivery")
        .add("queue_id", r.id).add("to", r.envelope.recipients[i].path.str()).add("route", route)
        .add("remote_host", o.remote_host).add("remote_address", o.remote_address).add("tls", o.tls)
        .add("status", status_name(st.status)).add("attempt", static_cast<uint64_t>(st.attempts))
        .add("reply", o.reply.summary()).add("delay_s", static_cast<double>(now_us - r.arrival_unix_us) / 1e6).emit();
    auto& m = smtpd::observe::Metrics::get();
    m.delivery_attempt(smtpd::observe::transport_of(route), status_name(st.status));
    if (st.final()) m.delivery_final(status_name(st.status), static_cast<double>(now_us - r.arrival_unix_us) / 1e6);
  };
  qo.on_dsn = [](const std::string& id, const std::string& dsn_id, const char* action) {
    LogLine(Level::kInfo, "dsn").add("queue_id", id).add("dsn_queue_id", dsn_id).add("action", action).emit();
    smtpd::observe::Metrics::get().dsn(action);
  };
  return std::make_unique<smtpd::queue::QueueManager>(
      spool, transport, [&policy](const std::string& domain) { return policy.current()->route_for(domain); }, qo);
}

// Reload without restart: on SIGHUP, and when the config file or the TLS
// certificate files change (Kubernetes swaps a symlink to update a mounted
// ConfigMap or Secret), the config is read again and validated; a bad one
// is refused with a log line and everything stays as it was. What takes
// effect: the policy and routes (when the file's policy changed), the
// server certificate (for new connections) and the log level. Other keys
// need a restart (logged).
class Reloader {
 public:
  Reloader(smtpd::config::Sources sources, const smtpd::config::Loaded& loaded, smtpd::queue::Spool& spool,
           smtpd::policy::PolicyStore& policy)
      : sources_(std::move(sources)), spool_(spool), policy_(policy), current_(loaded.config),
        effective_yaml_(loaded.effective_yaml),
        hash_(smtpd::control::policy_hash(loaded.config.policy)), watched_(fingerprint(loaded.config)) {}

  std::string config_hash() {
    std::lock_guard<std::mutex> lock(mu_);
    return hash_;
  }

  void start(smtpd::net::Server* server) {
    server_ = server;
    thread_ = std::thread([this] { loop(); });
  }
  void stop() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }
  void request(const char* why) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      pending_ = why;
    }
    cv_.notify_all();
  }

 private:
  // What identifies the watched files' contents: inode, size and mtime of
  // each (following symlinks).
  std::string fingerprint(const smtpd::config::Config& c) const {
    std::string f;
    for (const std::string& path : {sources_.file, c.tls_cert_file, c.tls_key_file}) {
      struct stat st {};
      if (path.empty()) continue;
      if (::stat(path.c_str(), &st) != 0) {
        f += path + ":missing;";
        continue;
      }
      f += path + ":" + std::to_string(st.st_ino) + ":" + std::to_string(st.st_size) + ":" +
           std::to_string(st.st_mtim.tv_sec) + "." + std::to_string(st.st_mtim.tv_nsec) + ";";
    }
    return f;
  }

  void loop() {
    std::unique_lock<std::mutex> lock(mu_);
    while (!stopping_) {
      cv_.wait_for(lock, current_.config_watch_interval.count() > 0 ? current_.config_watch_interval
                                                                     : std::chrono::milliseconds(3600000));
      if (stopping_) break;
      std::string why = pending_;
      pending_.clear();
      if (why.empty() && current_.config_watch_interval.count() > 0) {
        const std::string now = fingerprint(current_);
        if (now != watched_) why = "file changed";
      }
      if (why.empty()) continue;
      lock.unlock();
      reload(why);
      lock.lock();
    }
  }

  // Sections that only a restart applies.
  static std::string restart_sections(const std::string& effective_yaml) {
    YAML::Node n = YAML::Load(effective_yaml);
    for (const char* k : {"policy", "routes", "tls", "log"}) n.remove(k);
    if (n["server"]) n["server"].remove("config_watch_interval");
    YAML::Emitter e;
    e << n;
    return e.c_str();
  }

  void reload(const std::string& why) {
    // Taken before reading: a change made while we read is seen next time.
    const std::string fp_after = [&] {
      std::lock_guard<std::mutex> lock(mu_);
      return fingerprint(current_);
    }();
    auto loaded = smtpd::config::load(sources_);
    if (!loaded.ok()) {
      std::lock_guard<std::mutex> lock(mu_);
      watched_ = fp_after;  // do not retry the same bad file every interval
      LogLine(Level::kError, "config_reload_failed").add("trigger", why)
          .add("error", std::string(loaded.status().message())).add("action", "kept the running config").emit();
      return;
    }
    const smtpd::config::Config& next = loaded->config;
    if (absl::Status s = server_->reload_tls(next.tls_cert_file, next.tls_key_file, next.hostname); !s.ok()) {
      std::lock_guard<std::mutex> lock(mu_);
      watched_ = fp_after;
      LogLine(Level::kError, "config_reload_failed").add("trigger", why).add("error", std::string(s.message()))
          .add("action", "kept the running config").emit();
      return;
    }
    const std::string hash = smtpd::control::policy_hash(next.policy);
    uint64_t version = policy_.current()->version;
    std::string restart;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (hash != hash_) {
        // The file's policy changed: it becomes the next version (stored,
        // so that it also wins after a restart).
        smtpd::policy::PolicySnapshot p = next.policy;
        p.updated_by = "config";
        p.updated_unix_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                                std::chrono::system_clock::now().time_since_epoch()).count();
        auto updated = policy_.update(p, 0, [this, &hash](const smtpd::policy::PolicySnapshot& s) {
          return smtpd::control::store_policy(spool_, s, hash);
        });
        if (!updated.ok()) {
          LogLine(Level::kError, "config_reload_failed").add("trigger", why)
              .add("error", updated.status().ToString()).add("action", "kept the running policy").emit();
        } else {
          hash_ = hash;
          version = (*updated)->version;
          LogLine(Level::kInfo, "policy_updated").add("version", version).add("by", "config").emit();
        }
      }
      if (restart_sections(loaded->effective_yaml) != restart_sections(effective_yaml_)) {
        restart = "listeners, spool, queue, delivery, limits, auth, control or server settings changed: they "
                  "take effect at the next restart";
      }
      effective_yaml_ = loaded->effective_yaml;
      watched_ = fp_after;
      current_.tls_cert_file = next.tls_cert_file;
      current_.tls_key_file = next.tls_key_file;
      current_.config_watch_interval = next.config_watch_interval;
    }
    smtpd::observe::set_min_level(parse_level(next.log_level));
    smtpd::observe::set_text_format(next.log_format == "text");
    LogLine line(Level::kInfo, "config_reloaded");
    line.add("trigger", why).add("policy_version", version);
    if (!restart.empty()) line.add("restart_needed", restart);
    line.emit();
  }

  smtpd::config::Sources sources_;
  smtpd::queue::Spool& spool_;
  smtpd::policy::PolicyStore& policy_;
  smtpd::net::Server* server_ = nullptr;
  std::mutex mu_;
  std::condition_variable cv_;
  smtpd::config::Config current_;  // the files watched and the interval
  std::string effective_yaml_;  // of the config in effect (for what only a restart applies)
  std::string hash_;
  std::string watched_;
  std::string pending_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace

int main(int argc, char** argv) {
  Args args;
  if (!parse_args(argc, argv, args)) {
    usage();
    return 2;
  }
  if (!args.command.empty() && args.command[0] == "hash-password") return hash_password_command();
  auto loaded = smtpd::config::load(args.sources);
  if (!loaded.ok()) {
    std::fprintf(stderr, "smtpd: %s\n", std::string(loaded.status().message()).c_str());
    return 2;
  }
  const smtpd::config::Config& cfg = loaded->config;
  if (args.print) {
    std::fwrite(loaded->effective_yaml.data(), 1, loaded->effective_yaml.size(), stdout);
    return 0;
  }
  smtpd::net::UserDatabase users;
  if (!cfg.auth_users_file.empty()) {
    auto db = smtpd::net::UserDatabase::load(cfg.auth_users_file);
    if (!db.ok()) {
      std::fprintf(stderr, "smtpd: config: %s\n", std::string(db.status().message()).c_str());
      return 2;
    }
    users = *std::move(db);
  }
  if (args.check) {
    // Load the certificate and key too: a bad pair should fail here, before
    // a deployment, not at start.
    if (!cfg.tls_cert_file.empty()) {
      auto ctx = smtpd::net::make_server_tls_context(cfg.tls_cert_file, cfg.tls_key_file, cfg.hostname);
      if (!ctx.ok()) {
        std::fprintf(stderr, "smtpd: config: %s\n", std::string(ctx.status().message()).c_str());
        return 2;
      }
      SSL_CTX_free(*ctx);
    }
    std::printf("config ok\n");
    return 0;
  }
  if (!args.command.empty()) {
    if (args.command[0] == "spool") return spool_command(cfg, args.command);
    usage();
    return 2;
  }
  smtpd::observe::set_min_level(parse_level(cfg.log_level));
  smtpd::observe::set_text_format(cfg.log_format == "text");
  raise_fd_limit();
  smtpd::queue::SpoolOptions so;
  so.path = cfg.spool_path;
  so.max_messages = cfg.spool_max_messages;
  so.min_free_bytes = cfg.spool_min_free_bytes;
  so.commit_delay = cfg.spool_commit_delay;
  // Every committed message goes to the delivery queue, once it exists.
  std::atomic<smtpd::queue::QueueManager*> queue_ptr{nullptr};
  so.on_committed = [&queue_ptr](const smtpd::queue::MessageRecord& r) {
    if (auto* q = queue_ptr.load()) q->enqueue(r);
  };
  so.on_batch = [](size_t messages, double seconds) {
    smtpd::observe::Metrics::get().spool_batch(messages, seconds);
  };
  so.on_fatal = [](const absl::Status& s) {
    // Every acknowledged message is durable; a restart recovers the
    // database. Mail in flight was never acknowledged and will be retried.
    LogLine(Level::kError, "spool_database_failed").add("error", s.ToString()).add("action", "exit 75").emit();
    std::_Exit(75);
  };
  auto spool = smtpd::queue::Spool::open(so);
  if (!spool.ok()) {
    LogLine(Level::kError, "spool_open_failed").add("error", spool.status().ToString()).emit();
    return 1;
  }
  LogLine(Level::kInfo, "spool_recovered").add("path", cfg.spool_path).add("messages", (*spool)->message_count()).emit();
  // The policy: the latest change wins, whether it came through the API
  // (kept in the spool) or the config file (control::start_policy).
  bool from_store = false;
  auto initial = smtpd::control::start_policy(**spool, cfg.policy, &from_store);
  if (!initial.ok()) {
    LogLine(Level::kError, "policy_load_failed").add("error", initial.status().ToString()).emit();
    return 1;
  }
  LogLine(Level::kInfo, "policy").add("version", initial->version).add("by", initial->updated_by)
      .add("source", from_store ? "stored (set through the API or a reload)" : "config file").emit();
  smtpd::policy::PolicyStore policy(*initial);
  Reloader reloader(args.sources, *loaded, **spool, policy);
  smtpd::delivery::SmtpTransportOptions smtp_out;
  smtp_out.helo_name = cfg.hostname;
  smtp_out.tls = cfg.delivery_tls == "none"      ? smtpd::smtp::TlsPolicy::kNone
                 : cfg.delivery_tls == "encrypt" ? smtpd::smtp::TlsPolicy::kEncrypt
                 : cfg.delivery_tls == "verify"  ? smtpd::smtp::TlsPolicy::kVerify
                                                 : smtpd::smtp::TlsPolicy::kMay;
  smtp_out.tls_for = [&policy, fallback = smtp_out.tls](const std::string& domain) {
    switch (policy.current()->tls_for(domain)) {
      case smtpd::policy::TlsMode::kNone: return smtpd::smtp::TlsPolicy::kNone;
      case smtpd::policy::TlsMode::kMay: return smtpd::smtp::TlsPolicy::kMay;
      case smtpd::policy::TlsMode::kEncrypt: return smtpd::smtp::TlsPolicy::kEncrypt;
      case smtpd::policy::TlsMode::kVerify: return smtpd::smtp::TlsPolicy::kVerify;
      case smtpd::policy::TlsMode::kDefault: break;
    }
    return fallback;
  };
  smtp_out.relay_user = cfg.delivery_relay_user;
  smtp_out.relay_password = cfg.delivery_relay_password;
  smtp_out.dns_servers = cfg.delivery_dns_servers;
  smtp_out.mx_port = std::to_string(cfg.delivery_mx_port);
  smtpd::delivery::RouteDispatcher dispatcher(**spool, cfg.hostname, static_cast<size_t>(cfg.delivery_threads),
                                              smtp_out);
  auto queue = make_queue(cfg, **spool, dispatcher, policy);
  if (absl::Status s = queue->load(); !s.ok()) {
    LogLine(Level::kError, "queue_load_failed").add("error", s.ToString()).emit();
    return 1;
  }
  queue_ptr = queue.get();
  if (cfg.delivery_paused) {
    LogLine(Level::kWarn, "delivery_paused").add("messages", static_cast<uint64_t>(queue->stats().messages)).emit();
  } else {
    queue->start();
  }
  {
    std::vector<std::string> names;
    for (const auto& l : cfg.listeners) names.push_back(l.name);
    smtpd::observe::Metrics::get().init(names);
  }
  // Gauges read when /metrics is scraped.
  smtpd::observe::Metrics::get().set_gauges([&queue, &policy, spool = spool->get()] {
    std::vector<smtpd::observe::GaugeSample> g;
    const smtpd::queue::QueueStats st = queue->stats(/*backlog=*/false);  // no route lookups per scrape
    for (const char* state : {"queued", "deferred", "held", "delivering"}) {
      auto it = st.messages_by_state.find(state);
      g.push_back({"smtpd_queue_messages", "Messages in the queue by state", {{"state", state}},
                   static_cast<double>(it == st.messages_by_state.end() ? 0 : it->second)});
    }
    for (const char* state : {"queued", "deferred", "delivering"}) {
      auto it = st.recipients_by_state.find(state);
      g.push_back({"smtpd_queue_recipients", "Recipients not yet final by state", {{"state", state}},
                   static_cast<double>(it == st.recipients_by_state.end() ? 0 : it->second)});
    }
    const int64_t now_us = std::chrono::duration_cast<std::chrono::microseconds>(
                               std::chrono::system_clock::now().time_since_epoch()).count();
    g.push_back({"smtpd_queue_oldest_message_age_seconds", "Age of the oldest message in the queue (0: empty)", {},
                 st.oldest_arrival_unix_us ? static_cast<double>(now_us - st.oldest_arrival_unix_us) / 1e6 : 0.0});
    g.push_back({"smtpd_deliveries_in_flight", "Deliveries handed to transports now", {},
                 static_cast<double>(st.in_flight)});
    g.push_back({"smtpd_spool_messages", "Messages stored in the spool", {},
                 static_cast<double>(spool->message_count())});
    g.push_back({"smtpd_policy_version", "Version of the policy in effect", {},
                 static_cast<double>(policy.current()->version)});
    return g;
  });
  // A listener that cannot start: stop what runs, exit 1.
  auto start_failed = [&](const absl::Status& s) {
    LogLine(Level::kError, "start_failed").add("error", s.ToString()).emit();
    queue->stop();
    dispatcher.stop();
    (*spool)->close();
    return 1;
  };
  std::atomic<bool> serving{true};
  std::unique_ptr<smtpd::net::MetricsHttp> metrics_http;
  if (!cfg.metrics_address.empty()) {
    auto started = smtpd::net::MetricsHttp::start(cfg.metrics_address, [&serving] { return serving.load(); });
    if (!started.ok()) return start_failed(started.status());
    metrics_http = *std::move(started);
    const std::string host = cfg.metrics_address.substr(0, cfg.metrics_address.rfind(':'));
    LogLine(Level::kInfo, "listening").add("listener", "metrics").add("mode", "http")
        .add("address", host + ":" + std::to_string(metrics_http->port())).emit();
  }
  std::unique_ptr<smtpd::control::ControlServer> control;
  if (!cfg.control_address.empty()) {
    auto started = smtpd::control::ControlServer::start(
        {&cfg, spool->get(), queue.get(), &policy, [&reloader] { return reloader.config_hash(); }});
    if (!started.ok()) return start_failed(started.status());
    control = *std::move(started);
  }
  smtpd::net::ServerDeps deps{&cfg, spool->get(), &policy, &users,
                              [&control, &serving] {
                                serving = false;  // /readyz and grpc.health.v1 first, then the listeners
                                if (control) control->set_serving(false);
                              },
                              [&reloader] { reloader.request("SIGHUP"); }};
  int rc = 0;
  {
    smtpd::net::Server server(deps);
    if (absl::Status s = server.start(); !s.ok()) {
      LogLine(Level::kError, "start_failed").add("error", s.ToString()).emit();
      rc = 1;
    } else {
      reloader.start(&server);
      server.run();
      reloader.stop();
    }
  }
  // No more API calls (watch streams end) before the queue goes away.
  if (control) control->shutdown();
  if (metrics_http) metrics_http->stop();
  smtpd::observe::Metrics::get().set_gauges(nullptr);
  // The queue stops handing out work, running deliveries finish (their
  // outcomes are recorded), then nothing else touches the spool.
  queue->stop();
  dispatcher.stop();
  // Closing the spool joins its flusher, the one thread that may still be
  // inside queue->enqueue() (for a DSN committed a moment ago); only then
  // may the queue go.
  (*spool)->close();
  queue_ptr = nullptr;
  queue.reset();
  LogLine(Level::kInfo, "stopped").add("exit_code", rc).add("commits", (*spool)->commits())
      .add("commit_batches", (*spool)->batches()).emit();
  return rc;
}
