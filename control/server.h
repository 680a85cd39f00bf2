// The gRPC control plane (DESIGN.md): Submission, Queue and Policy
// services on gRPC's callback API, the standard grpc.health.v1 service and
// server reflection. It calls the same spool, queue and policy code as the
// SMTP front end. gRPC headers stay in control/*.cc.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "lib/config/config.h"
#include "lib/policy/policy.h"
#include "lib/queue/queue_manager.h"
#include "lib/queue/spool.h"

namespace smtpd::control {

struct ControlDeps {
  const config::Config* config = nullptr;
  queue::Spool* spool = nullptr;
  queue::QueueManager* queue = nullptr;
  policy::PolicyStore* policy = nullptr;
};

class ControlServer {
 public:
  // Binds control.address (logging the bound port) and starts serving.
  static absl::StatusOr<std::unique_ptr<ControlServer>> start(ControlDeps deps);
  ~ControlServer();

  int port() const;
  // grpc.health.v1: SERVING or NOT_SERVING (while draining).
  void set_serving(bool serving);
  // Ends every call (watch streams included) and stops. Never call it on a
  // gRPC thread.
  void shutdown();

  struct Impl;

 private:
  explicit ControlServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// The policy last set through the API, kept in the spool; nullopt when
// none was ever set.
absl::StatusOr<std::optional<policy::PolicySnapshot>> load_stored_policy(const queue::Spool& spool);

}  // namespace smtpd::control
