// SendMail idempotency keys: a retried call with the same key gets the
// first call's answer instead of queueing the message again. Each key's
// answer is stored in the spool in the same synced batch as its message
// (both are durable, or neither) and kept for at least `retention`.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "lib/queue/spool.h"

namespace smtpd::control {

struct SendResult {
  std::string queue_id;
  std::string message_id;
  int64_t created_unix_ms = 0;
};

class IdempotencyStore {
 public:
  IdempotencyStore(queue::Spool& spool, int64_t retention_ms);
  // Reads the keys kept in the spool (and forgets expired ones).
  absl::Status load(int64_t now_ms);

  using Waiter = std::function<void(absl::StatusOr<SendResult>)>;
  enum class Begin { kNew, kJoined };
  // kNew: the caller sends the message, then calls finish(). kJoined: the
  // key is known or in flight, and `waiter` gets (or got) its answer.
  Begin begin(const std::string& key, int64_t now_ms, Waiter waiter);
  // The spool key/value for a result, to commit with the message.
  static std::pair<std::string, std::string> meta(const std::string& key, const SendResult& r);
  // The message was committed (or not): answers everyone waiting on `key`.
  void finish(const std::string& key, absl::StatusOr<SendResult> result);
  // Drops keys older than the retention (memory and spool).
  void sweep(int64_t now_ms);
  size_t size();

 private:
  struct Entry {
    bool done = false;
    SendResult result;
    std::vector<Waiter> waiters;
  };
  queue::Spool& spool_;
  const int64_t retention_ms_;
  absl::Mutex mu_;
  std::map<std::string, Entry> entries_ ABSL_GUARDED_BY(mu_);
  std::atomic<int64_t> swept_ms_{0};
};

}  // namespace smtpd::control
