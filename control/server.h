// The gRPC control plane (DESIGN.md): Submission, Queue and Policy
// services on gRPC's callback API, the standard grpc.health.v1 service and
// server reflection. It calls the same spool, queue and policy code as the
// SMTP front end. gRPC headers stay in control/*.cc.
#pragma once

#include <functional>
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
  // The hash of the config file's policy now in effect (changes on reload);
  // stored with every policy update (see start_policy()).
  std::function<std::string()> config_hash;
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

// The policy last set through the API or a config reload, kept in the
// spool; nullopt when none was ever stored.
absl::StatusOr<std::optional<policy::PolicySnapshot>> load_stored_policy(const queue::Spool& spool);

// A stable hash (SHA-256, hex) of a policy's content (version and author
// left out).
std::string policy_hash(const policy::PolicySnapshot& p);
// Stores a policy, with the hash of the config file's policy it was made
// under, in the spool (synced).
absl::Status store_policy(queue::Spool& spool, const policy::PolicySnapshot& p, const std::string& config_hash);

// The policy to start with. The latest change wins: the stored policy
// (set through the API or a reload) while the config file's policy is the
// one it was stored under; the file's policy, one version up and stored,
// when the file changed since. `from_store` says which.
absl::StatusOr<policy::PolicySnapshot> start_policy(queue::Spool& spool, const policy::PolicySnapshot& configured,
                                                    bool* from_store);

}  // namespace smtpd::control
