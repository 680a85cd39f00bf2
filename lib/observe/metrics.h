// Prometheus metrics (prometheus-cpp), process-wide. Every name starts with
// smtpd_, counters end in _total, units are in the names; labels only take
// values from small fixed sets (listener names, reasons, reply codes,
// transports), never a client address, domain or recipient.
// Prometheus headers stay in metrics.cc.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace smtpd::observe {

// A gauge value computed at scrape time (queue sizes, ages, versions).
struct GaugeSample {
  std::string name;  // smtpd_...
  std::string help;
  std::map<std::string, std::string> labels;
  double value = 0;
};

class Metrics {
 public:
  static Metrics& get();
  // Creates the series known in advance (per listener, per transport and
  // result...) at zero, so that dashboards and alerts see them from the start.
  void init(const std::vector<std::string>& listeners);

  // SMTP front end.
  void connection_opened(const std::string& listener);
  void connection_closed(const std::string& listener);
  void connection_refused(const std::string& listener, const char* reason);  // limit, policy, tls
  void transaction(const std::string& listener, int code, const std::string& enhanced);
  void bytes_received(const std::string& listener, uint64_t octets);
  void auth(const std::string& listener, bool ok);
  void tls_handshake(const std::string& listener, const std::string& version);  // "TLSv1.3"; "failed"
  // Spool group commit: one batch of `messages`, synced in `seconds`.
  void spool_batch(size_t messages, double seconds);
  // Delivery: one attempt's result for one recipient ("delivered",
  // "deferred", "failed") by transport ("mx", "relay", "lmtp", "maildir").
  void delivery_attempt(const std::string& transport, const char* result);
  // A recipient reached a final state this long after the message arrived.
  void delivery_final(const char* result, double seconds_since_arrival);
  void dsn(const char* action);  // "failed", "delayed"
  void grpc_call(const std::string& method, const char* code);

  // Gauges computed when scraped.
  void set_gauges(std::function<std::vector<GaugeSample>()> fn);
  // The whole exposition, text format 0.0.4.
  std::string scrape();

  struct Impl;

 private:
  Metrics();
  std::unique_ptr<Impl> impl_;
};

// "relay:HOST:PORT" -> "relay"; "mx" -> "mx".
std::string transport_of(const std::string& route);

}  // namespace smtpd::observe
