// The metrics port (metrics.address): GET /metrics (Prometheus text
// exposition from observe::Metrics), /healthz (200 while the process runs)
// and /readyz (200 while serving, 503 once a drain began: the same state as
// grpc.health.v1). A minimal HTTP/1.1 responder on its own thread and
// io_context; one request per connection. Asio stays in the .cc file.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace smtpd::net {

class MetricsHttp {
 public:
  // Binds `address` (host:port; port 0 picks one) and starts serving.
  static absl::StatusOr<std::unique_ptr<MetricsHttp>> start(const std::string& address,
                                                           std::function<bool()> ready);
  ~MetricsHttp();
  int port() const;
  void stop();

  struct Impl;

 private:
  explicit MetricsHttp(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace smtpd::net
