// The delivery queue: an in-memory index of every message in the spool
// with per-recipient state, and a scheduler that hands due recipients to
// transports grouped by destination.
//
// - Due times live in a min-heap, so a tick never scans the whole queue.
// - Each destination (route and domain) has a concurrency limit; jobs
//   beyond it wait in that destination's FIFO.
// - Deferred recipients retry with exponential backoff and jitter, capped
//   at max_backoff, until the queue lifetime expires (then 4.4.7 failed).
// - Every outcome is stored durably (Spool::put_state) before the queue
//   acts on it. When all recipients are final, failed ones get a DSN to the
//   sender (never for <>, and as NOTIFY allows), the DSN is committed as a
//   new message, and only then does the original leave the spool.
// - A message with too many Received headers fails before its first
//   attempt (5.4.6 loop); the scheduler thread reads it for that, never
//   the spool's flusher.
#pragma once

#include <atomic>
#include <chrono>
#include <deque>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <queue>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "lib/queue/delivery_types.h"
#include "lib/queue/spool.h"

namespace smtpd::queue {

enum class RecipientStatus : uint8_t { kQueued = 0, kDeferred = 1, kDelivered = 2, kFailed = 3 };

struct RecipientState {
  RecipientStatus status = RecipientStatus::kQueued;
  uint32_t attempts = 0;
  int64_t next_attempt_ms = 0;  // unix milliseconds
  std::string last_reply;       // summary of the last reply
  std::string remote_host;
  bool delay_warned = false;
  bool final() const { return status == RecipientStatus::kDelivered || status == RecipientStatus::kFailed; }
};

// The durable delivery state of a message: held or not, and each
// recipient's state.
struct MessageState {
  bool held = false;
  std::vector<RecipientState> recipients;
};

std::string encode_state(const MessageState& state);
absl::StatusOr<MessageState> decode_state(std::string_view bytes, size_t count);

struct QueueOptions {
  std::string hostname = "localhost";
  std::chrono::milliseconds min_backoff{60000};
  std::chrono::milliseconds max_backoff{3600000};
  std::chrono::milliseconds lifetime{5LL * 24 * 3600 * 1000};
  std::chrono::milliseconds delay_warning{0};  // 0: no delay warnings
  int max_received = 50;
  size_t per_destination = 20;
  size_t total_in_flight = 200;
  std::function<int64_t()> now_ms;  // unix milliseconds; the system clock if empty
  uint64_t seed = 0;                // jitter; 0: random
  // Observers (logs, metrics): each attempt's outcome for one recipient,
  // and each DSN queued (original id, DSN id, "failed" or "delayed").
  std::function<void(const MessageRecord&, size_t recipient, const std::string& route, const AttemptOutcome&,
                     const RecipientState&)>
      on_attempt;
  std::function<void(const std::string& id, const std::string& dsn_id, const char* action)> on_dsn;
};

struct QueueStats {
  size_t messages = 0;
  size_t held = 0;
  size_t in_flight = 0;  // jobs handed to transports
  size_t waiting = 0;    // jobs waiting for a destination slot
  // Messages by state ("queued", "deferred", "held", "delivering") and
  // recipients by state ("queued", "deferred", "delivering", "delivered",
  // "failed").
  std::map<std::string, uint64_t> messages_by_state;
  std::map<std::string, uint64_t> recipients_by_state;
  int64_t oldest_arrival_unix_us = 0;  // 0: empty
  // Recipients not yet final per destination (a route, or "mx:DOMAIN").
  std::map<std::string, uint64_t> backlog;
};

// One delivery attempt for one recipient, kept in memory for the control
// plane (the durable state keeps the count and the last reply).
struct AttemptRecord {
  int64_t unix_ms = 0;
  size_t recipient = 0;
  std::string route;
  std::string remote_host;
  RecipientStatus result = RecipientStatus::kDeferred;
  std::string reply;
};

// A copy of one queued message and its delivery state.
struct MessageView {
  MessageRecord record;
  std::vector<RecipientState> states;
  std::set<size_t> in_flight;
  bool held = false;
  std::vector<AttemptRecord> attempts;  // oldest first, since start (at most 100)
  // "held", "delivering", "deferred" or "queued", in that order of precedence.
  const char* state() const;
};

// What happens in the queue, for watchers (the control plane's WatchQueue).
struct QueueEvent {
  enum class Kind { kQueued, kAttempt, kDelivered, kDeferred, kFailed, kRemoved, kHeld, kReleased };
  Kind kind = Kind::kQueued;
  std::string id;
  int64_t unix_ms = 0;
  std::string sender;
  std::vector<std::string> recipients;  // the message's (kQueued, kRemoved, kHeld, kReleased) or the ones concerned
  std::string reply;                    // delivered/deferred/failed: the reply; removed: why
  std::string route;                    // attempt and its outcomes
};
const char* to_string(QueueEvent::Kind k);

class QueueManager {
 public:
  QueueManager(Spool& spool, Transport& transport, Router router, QueueOptions options);
  ~QueueManager();

  // Loads every message and its state from the spool (call before start).
  absl::Status load();
  // A message just committed (SMTP or another source): schedule it now.
  void enqueue(const MessageRecord& record);
  // Starts the scheduler thread; stop() waits for it (jobs in flight are
  // not waited for: their outcomes are dropped and retried after restart,
  // as at-least-once delivery allows).
  void start();
  void stop();
  // Dispatches everything due now; returns how many jobs started. The
  // scheduler thread calls it; tests with a fake clock call it directly.
  size_t tick();
  // Counts over the whole queue. `backlog` also groups pending recipients
  // by destination (a route lookup each: the control plane's GetStats
  // wants it, a metrics scrape does not).
  QueueStats stats(bool backlog = true);
  // For tests and the control plane: the state of one message.
  std::vector<RecipientState> states(const std::string& id);
  // Holds a message: nothing of it is delivered until release(); it still
  // expires at the end of the queue lifetime (when next tried). NOT_FOUND
  // for an unknown id.
  absl::Status hold(const std::string& id);
  absl::Status release(const std::string& id);
  bool held(const std::string& id);
  // Makes the pending recipients due now. NOT_FOUND; FAILED_PRECONDITION
  // for a held message.
  absl::Status retry(const std::string& id);
  // Removes a message. With `bounce`, recipients not yet final fail
  // (5.0.0, deleted by the administrator) and the sender gets a DSN as
  // NOTIFY allows; without, it goes silently. NOT_FOUND;
  // FAILED_PRECONDITION while a delivery of it is in flight.
  absl::Status remove(const std::string& id, bool bounce);

  // Copies for the control plane. list(): messages in id (arrival) order
  // after `after` (exclusive; "" from the start) for which `match` is true,
  // at most `limit`; `more` says whether others match beyond them.
  std::optional<MessageView> get(const std::string& id);
  std::vector<MessageView> list(const std::string& after, size_t limit,
                                const std::function<bool(const MessageView&)>& match, bool* more);

  // Event watchers: called on queue threads, synchronously (sometimes with
  // the queue's lock held), so they must be quick and never block or call
  // back into the queue.
  uint64_t subscribe(std::function<void(const QueueEvent&)> watcher);
  void unsubscribe(uint64_t token);

 private:
  struct Entry {
    MessageRecord record;
    std::vector<RecipientState> states;
    std::set<size_t> in_flight;  // recipient indexes handed to a transport ("delivering")
    bool held = false;
    bool loop_checked = false;  // the Received count is checked before the first attempt
    std::deque<AttemptRecord> attempts;
  };
  struct Job {
    std::string destination;
    DeliveryRequest request;
  };
  using Due = std::pair<int64_t, std::string>;  // (when, id)

  int64_t now() const;
  void schedule_locked(const std::string& id, int64_t when) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void plan_locked(const std::string& id, std::vector<Job>& jobs) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Starts planned jobs within the concurrency limits; queues the rest.
  void dispatch_locked(std::vector<Job>& planned, std::vector<Job>& start) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void start_job(Job job);
  void on_done(const std::string& destination, const std::string& id, const std::string& route,
               std::vector<size_t> rcpts, std::vector<AttemptOutcome> outcomes);
  // Persists, then decides what next: retry, DSN, removal.
  void settle(const std::string& id);
  int64_t backoff_ms(uint32_t attempts);
  bool loop_detected(const MessageRecord& r);
  absl::Status set_held(const std::string& id, bool held);
  // Queues a DSN about `which` recipients; false when it could not be
  // committed (the caller tries again later).
  bool send_dsn(const Entry& e, bool delay_only, const std::vector<size_t>& which);
  void scheduler_loop();
  void emit(QueueEvent event);
  static MessageView view_of(const Entry& e);

  Spool& spool_;
  Transport& transport_;
  Router router_;
  QueueOptions options_;

  // Settling one message (persist, DSN, removal) must not interleave with
  // another settle of the same message; they are short, so one lock
  // serialises them all. Recursive: a DSN's enqueue may settle.
  std::recursive_mutex settle_mu_;
  absl::Mutex mu_;
  std::map<std::string, Entry> entries_ ABSL_GUARDED_BY(mu_);
  std::priority_queue<Due, std::vector<Due>, std::greater<Due>> due_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, size_t> active_ ABSL_GUARDED_BY(mu_);           // destination -> jobs running
  std::map<std::string, std::deque<Job>> waiting_ ABSL_GUARDED_BY(mu_);  // destination -> jobs waiting
  size_t total_active_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool wake_ ABSL_GUARDED_BY(mu_) = false;
  std::mt19937_64 rng_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;

  absl::Mutex watchers_mu_;
  std::map<uint64_t, std::function<void(const QueueEvent&)>> watchers_ ABSL_GUARDED_BY(watchers_mu_);
  uint64_t next_watcher_ ABSL_GUARDED_BY(watchers_mu_) = 1;
  std::vector<uint64_t> removed_watchers_ ABSL_GUARDED_BY(watchers_mu_);  // unsubscribed from inside emit()
  std::atomic<bool> has_watchers_{false};
};

}  // namespace smtpd::queue
