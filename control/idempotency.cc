#include "control/idempotency.h"

#include <charconv>
#include <optional>

namespace smtpd::control {
namespace {

constexpr char kPrefix[] = "idem/";

bool decode(const std::string& value, SendResult& r) {
  const size_t a = value.find('\n');
  const size_t b = a == std::string::npos ? a : value.find('\n', a + 1);
  if (b == std::string::npos) return false;
  r.queue_id = value.substr(0, a);
  r.message_id = value.substr(a + 1, b - a - 1);
  const char* first = value.data() + b + 1;
  return std::from_chars(first, value.data() + value.size(), r.created_unix_ms).ec == std::errc();
}

}  // namespace

IdempotencyStore::IdempotencyStore(queue::Spool& spool, int64_t retention_ms)
    : spool_(spool), retention_ms_(retention_ms) {}

absl::Status IdempotencyStore::load(int64_t now_ms) {
  std::vector<std::string> expired;
  absl::MutexLock lock(&mu_);
  absl::Status s = spool_.for_each_meta(kPrefix, [&](const std::string& key, const std::string& value) {
    SendResult r;
    const std::string k = key.substr(sizeof(kPrefix) - 1);
    if (!decode(value, r) || now_ms - r.created_unix_ms > retention_ms_) {
      expired.push_back(key);
      return;
    }
    Entry& e = entries_[k];
    e.done = true;
    e.result = r;
  });
  for (const std::string& key : expired) (void)spool_.delete_meta(key);
  swept_ms_ = now_ms;
  return s;
}

std::pair<std::string, std::string> IdempotencyStore::meta(const std::string& key, const SendResult& r) {
  return {kPrefix + key, r.queue_id + "\n" + r.message_id + "\n" + std::to_string(r.created_unix_ms)};
}

IdempotencyStore::Begin IdempotencyStore::begin(const std::string& key, int64_t now_ms, Waiter waiter) {
  if (now_ms - swept_ms_.load() > 600000) sweep(now_ms);  // every ten minutes
  std::optional<SendResult> known;
  {
    absl::MutexLock lock(&mu_);
    auto it = entries_.find(key);
    if (it != entries_.end() && it->second.done && now_ms - it->second.result.created_unix_ms > retention_ms_) {
      entries_.erase(it);
      it = entries_.end();
    }
    if (it == entries_.end()) {
      entries_[key];  // pending: a second call with this key waits for us
      return Begin::kNew;
    }
    if (!it->second.done) {
      it->second.waiters.push_back(std::move(waiter));
      return Begin::kJoined;
    }
    known = it->second.result;
  }
  waiter(*known);
  return Begin::kJoined;
}

void IdempotencyStore::finish(const std::string& key, absl::StatusOr<SendResult> result) {
  std::vector<Waiter> waiters;
  {
    absl::MutexLock lock(&mu_);
    auto it = entries_.find(key);
    if (it == entries_.end()) return;
    waiters.swap(it->second.waiters);
    if (result.ok()) {
      it->second.done = true;
      it->second.result = *result;
    } else {
      entries_.erase(it);  // nothing was queued: the next call tries afresh
    }
  }
  for (Waiter& w : waiters) w(result);
}

void IdempotencyStore::sweep(int64_t now_ms) {
  std::vector<std::string> expired;
  {
    absl::MutexLock lock(&mu_);
    swept_ms_ = now_ms;
    for (auto it = entries_.begin(); it != entries_.end();) {
      if (it->second.done && now_ms - it->second.result.created_unix_ms > retention_ms_) {
        expired.push_back(kPrefix + it->first);
        it = entries_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (const std::string& key : expired) (void)spool_.delete_meta(key);
}

size_t IdempotencyStore::size() {
  absl::MutexLock lock(&mu_);
  return entries_.size();
}

}  // namespace smtpd::control
