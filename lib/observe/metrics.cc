#include "lib/observe/metrics.h"

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <mutex>

namespace smtpd::observe {

using prometheus::BuildCounter;
using prometheus::BuildGauge;
using prometheus::BuildHistogram;

struct Metrics::Impl {
  std::shared_ptr<prometheus::Registry> registry = std::make_shared<prometheus::Registry>();
  prometheus::Family<prometheus::Gauge>& connections_open =
      BuildGauge().Name("smtpd_connections_open").Help("SMTP connections open now, per listener").Register(*registry);
  prometheus::Family<prometheus::Counter>& connections =
      BuildCounter().Name("smtpd_connections_total").Help("SMTP connections accepted, per listener").Register(*registry);
  prometheus::Family<prometheus::Counter>& refused =
      BuildCounter().Name("smtpd_connections_refused_total")
          .Help("SMTP connections refused: connection limits (limit), the policy's rate limit (policy), a failed TLS handshake (tls)")
          .Register(*registry);
  prometheus::Family<prometheus::Counter>& transactions =
      BuildCounter().Name("smtpd_transactions_total")
          .Help("Ended mail transactions by listener, reply class (2xx accepted, 4xx/5xx rejected) and RFC 3463 code")
          .Register(*registry);
  prometheus::Family<prometheus::Counter>& bytes =
      BuildCounter().Name("smtpd_received_bytes_total").Help("Octets received from SMTP clients").Register(*registry);
  prometheus::Family<prometheus::Counter>& auths =
      BuildCounter().Name("smtpd_auth_total").Help("AUTH attempts by result (success, failure)").Register(*registry);
  prometheus::Family<prometheus::Counter>& tls =
      BuildCounter().Name("smtpd_tls_handshakes_total").Help("TLS handshakes by protocol version (or failed)")
          .Register(*registry);
  prometheus::Histogram& commit_seconds =
      BuildHistogram().Name("smtpd_spool_commit_duration_seconds")
          .Help("Time to make one group-commit batch durable (fdatasync of bodies and synced envelope records)")
          .Register(*registry)
          .Add({}, prometheus::Histogram::BucketBoundaries{0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05,
                                                            0.1, 0.25, 0.5, 1});
  prometheus::Histogram& batch_size =
      BuildHistogram().Name("smtpd_spool_commit_batch_messages")
          .Help("Messages made durable by one group-commit sync").Register(*registry)
          .Add({}, prometheus::Histogram::BucketBoundaries{1, 2, 4, 8, 16, 32, 64, 128, 256});
  prometheus::Family<prometheus::Counter>& attempts =
      BuildCounter().Name("smtpd_delivery_attempts_total")
          .Help("Delivery attempts per recipient by transport and result (delivered, deferred, failed)")
          .Register(*registry);
  prometheus::Family<prometheus::Histogram>& delivery_seconds =
      BuildHistogram().Name("smtpd_delivery_duration_seconds")
          .Help("Time from a message's arrival to a recipient's final state, by result").Register(*registry);
  prometheus::Family<prometheus::Counter>& dsns =
      BuildCounter().Name("smtpd_dsn_total").Help("Delivery status notifications queued, by action (failed, delayed)")
          .Register(*registry);
  prometheus::Family<prometheus::Counter>& grpc_calls =
      BuildCounter().Name("smtpd_grpc_calls_total").Help("gRPC calls by method and status code").Register(*registry);

  std::mutex gauges_mu;
  std::function<std::vector<GaugeSample>()> gauges;
};

Metrics& Metrics::get() {
  static Metrics* m = new Metrics();  // never destroyed: threads may count until exit
  return *m;
}

Metrics::Metrics() : impl_(std::make_unique<Impl>()) {}

namespace {
const prometheus::Histogram::BucketBoundaries& delivery_buckets() {
  static const prometheus::Histogram::BucketBoundaries b{0.1, 0.5, 1, 5, 30, 60, 300, 900, 3600, 14400, 86400, 432000};
  return b;
}
}  // namespace

void Metrics::init(const std::vector<std::string>& listeners) {
  Impl& m = *impl_;
  for (const std::string& l : listeners) {
    m.connections_open.Add({{"listener", l}});
    m.connections.Add({{"listener", l}});
    m.bytes.Add({{"listener", l}});
    for (const char* r : {"limit", "policy", "tls"}) m.refused.Add({{"listener", l}, {"reason", r}});
    for (const char* r : {"success", "failure"}) m.auths.Add({{"listener", l}, {"result", r}});
    m.tls.Add({{"listener", l}, {"version", "failed"}});
  }
  for (const char* t : {"mx", "relay", "lmtp", "maildir"}) {
    for (const char* r : {"delivered", "deferred", "failed"}) m.attempts.Add({{"transport", t}, {"result", r}});
  }
  for (const char* r : {"delivered", "failed"}) m.delivery_seconds.Add({{"result", r}}, delivery_buckets());
  for (const char* a : {"failed", "delayed"}) m.dsns.Add({{"action", a}});
}

void Metrics::connection_opened(const std::string& listener) {
  impl_->connections_open.Add({{"listener", listener}}).Increment();
  impl_->connections.Add({{"listener", listener}}).Increment();
}

void Metrics::connection_closed(const std::string& listener) {
  impl_->connections_open.Add({{"listener", listener}}).Decrement();
}

void Metrics::connection_refused(const std::string& listener, const char* reason) {
  impl_->refused.Add({{"listener", listener}, {"reason", reason}}).Increment();
}

void Metrics::transaction(const std::string& listener, int code, const std::string& enhanced) {
  const std::string klass = std::to_string(code / 100) + "xx";
  impl_->transactions.Add({{"listener", listener}, {"class", klass}, {"code", enhanced.empty() ? "none" : enhanced}})
      .Increment();
}

void Metrics::bytes_received(const std::string& listener, uint64_t octets) {
  impl_->bytes.Add({{"listener", listener}}).Increment(static_cast<double>(octets));
}

void Metrics::auth(const std::string& listener, bool ok) {
  impl_->auths.Add({{"listener", listener}, {"result", ok ? "success" : "failure"}}).Increment();
}

void Metrics::tls_handshake(const std::string& listener, const std::string& version) {
  impl_->tls.Add({{"listener", listener}, {"version", version}}).Increment();
}

void Metrics::spool_batch(size_t messages, double seconds) {
  impl_->commit_seconds.Observe(seconds);
  impl_->batch_size.Observe(static_cast<double>(messages));
}

void Metrics::delivery_attempt(const std::string& transport, const char* result) {
  impl_->attempts.Add({{"transport", transport}, {"result", result}}).Increment();
}

void Metrics::delivery_final(const char* result, double seconds_since_arrival) {
  impl_->delivery_seconds.Add({{"result", result}}, delivery_buckets()).Observe(seconds_since_arrival);
}

void Metrics::dsn(const char* action) { impl_->dsns.Add({{"action", action}}).Increment(); }

void Metrics::grpc_call(const std::string& method, const char* code) {
  impl_->grpc_calls.Add({{"method", method}, {"code", code}}).Increment();
}

void Metrics::set_gauges(std::function<std::vector<GaugeSample>()> fn) {
  std::lock_guard<std::mutex> lock(impl_->gauges_mu);
  impl_->gauges = std::move(fn);
}

std::string Metrics::scrape() {
  std::vector<prometheus::MetricFamily> families = impl_->registry->Collect();
  std::function<std::vector<GaugeSample>()> fn;
  {
    std::lock_guard<std::mutex> lock(impl_->gauges_mu);
    fn = impl_->gauges;
  }
  if (fn) {
    std::map<std::string, prometheus::MetricFamily> by_name;
    for (const GaugeSample& g : fn()) {
      prometheus::MetricFamily& f = by_name[g.name];
      f.name = g.name;
      f.help = g.help;
      f.type = prometheus::MetricType::Gauge;
      prometheus::ClientMetric m;
      for (const auto& [k, v] : g.labels) m.label.push_back({k, v});
      m.gauge.value = g.value;
      f.metric.push_back(std::move(m));
    }
    for (auto& [name, f] : by_name) families.push_back(std::move(f));
  }
  return prometheus::TextSerializer().Serialize(families);
}

std::string transport_of(const std::string& route) { return route.substr(0, route.find(':')); }

}  // namespace smtpd::observe
