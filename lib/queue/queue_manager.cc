#include "lib/queue/queue_manager.h"

#include <strings.h>

#include <algorithm>
#include <optional>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "lib/message/dsn.h"

namespace smtpd::queue {
namespace {

constexpr uint8_t kStateVersion = 2;
constexpr uint64_t kFullReturnLimit = 50000;  // RET unspecified: whole message up to this size

void put_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7F) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}

bool get_varint(std::string_view& in, uint64_t& v) {
  v = 0;
  for (int shift = 0; shift < 64 && !in.empty(); shift += 7) {
    const auto b = static_cast<uint8_t>(in.front());
    in.remove_prefix(1);
    v |= static_cast<uint64_t>(b & 0x7F) << shift;
    if (!(b & 0x80)) return true;
  }
  return false;
}

bool get_string(std::string_view& in, std::string& s) {
  uint64_t n;
  if (!get_varint(in, n) || n > in.size()) return false;
  s = std::string(in.substr(0, n));
  in.remove_prefix(n);
  return true;
}

// "550 5.1.1 text" -> "5.1.1"; a class-only code when the reply had none.
std::string status_of(const std::string& summary) {
  if (summary.size() >= 9 && summary[3] == ' ' && summary[5] == '.') {
    const size_t end = summary.find(' ', 4);
    return summary.substr(4, end == std::string::npos ? std::string::npos : end - 4);
  }
  return (!summary.empty() && summary[0] == '5') ? "5.0.0" : "4.0.0";
}

int64_t system_now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

bool wants_failure_dsn(const smtp::Recipient& r) {
  if (r.notify & smtp::kNotifyNever) return false;
  return r.notify == 0 || (r.notify & smtp::kNotifyFailure);  // RFC 3461 4.1 default
}

bool wants_delay_dsn(const smtp::Recipient& r) {
  if (r.notify & smtp::kNotifyNever) return false;
  return r.notify == 0 || (r.notify & smtp::kNotifyDelay);
}

const char* recipient_state_name(const RecipientState& st, bool in_flight) {
  if (in_flight) return "delivering";
  switch (st.status) {
    case RecipientStatus::kQueued: return "queued";
    case RecipientStatus::kDeferred: return "deferred";
    case RecipientStatus::kDelivered: return "delivered";
    case RecipientStatus::kFailed: return "failed";
  }
  return "queued";
}

std::vector<std::string> recipient_list(const MessageRecord& r) {
  std::vector<std::string> out;
  for (const smtp::Recipient& rc : r.envelope.recipients) out.push_back(rc.path.str());
  return out;
}


}  // namespace

std::string encode_state(const MessageState& state) {
  const std::vector<RecipientState>& states = state.recipients;
  std::string out(1, static_cast<char>(kStateVersion));
  out.push_back(state.held ? 1 : 0);
  put_varint(out, states.size());
  for (const RecipientState& s : states) {
    out.push_back(static_cast<char>(s.status));
    put_varint(out, s.attempts);
    put_varint(out, static_cast<uint64_t>(s.next_attempt_ms));
    put_varint(out, s.last_reply.size());
    out += s.last_reply;
    put_varint(out, s.remote_host.size());
    out += s.remote_host;
    out.push_back(s.delay_warned ? 1 : 0);
  }
  return out;
}

absl::StatusOr<MessageState> decode_state(std::string_view in, size_t count) {
  if (in.size() < 2 || static_cast<uint8_t>(in.front()) != kStateVersion) {
    return absl::DataLossError("delivery state: unknown version");
  }
  MessageState state;
  state.held = in[1] != 0;
  in.remove_prefix(2);
  uint64_t n;
  if (!get_varint(in, n) || n != count) return absl::DataLossError("delivery state: wrong recipient count");
  std::vector<RecipientState> out(n);
  for (RecipientState& s : out) {
    uint64_t attempts, next;
    if (in.empty()) return absl::DataLossError("delivery state: truncated");
    const auto status = static_cast<uint8_t>(in.front());
    in.remove_prefix(1);
    if (status > 3 || !get_varint(in, attempts) || !get_varint(in, next) || !get_string(in, s.last_reply) ||
        !get_string(in, s.remote_host) || in.empty()) {
      return absl::DataLossError("delivery state: truncated or corrupt");
    }
    s.status = static_cast<RecipientStatus>(status);
    s.attempts = static_cast<uint32_t>(attempts);
    s.next_attempt_ms = static_cast<int64_t>(next);
    s.delay_warned = in.front() != 0;
    in.remove_prefix(1);
  }
  if (!in.empty()) return absl::DataLossError("delivery state: trailing bytes");
  state.recipients = std::move(out);
  return state;
}

QueueManager::QueueManager(Spool& spool, Transport& transport, Router router, QueueOptions options)
    : spool_(spool), transport_(transport), router_(std::move(router)), options_(std::move(options)),
      rng_(options_.seed ? options_.seed : std::random_device{}()) {}

QueueManager::~QueueManager() { stop(); }

int64_t QueueManager::now() const { return options_.now_ms ? options_.now_ms() : system_now_ms(); }

absl::Status QueueManager::load() {
  std::vector<MessageRecord> records;
  absl::Status s = spool_.for_each([&](const MessageRecord& r) { records.push_back(r); });
  if (!s.ok()) return s;
  std::vector<std::string> settle_now;
  {
    absl::MutexLock lock(&mu_);
    const int64_t t = now();
    for (MessageRecord& r : records) {
      Entry e;
      const size_t n = r.envelope.recipients.size();
      e.states.assign(n, RecipientState{RecipientStatus::kQueued, 0, t, "", "", false});
      auto stored = spool_.get_state(r.id);
      if (stored.ok()) {
        auto decoded = decode_state(*stored, n);
        if (decoded.ok()) {
          e.states = std::move(decoded->recipients);
          e.held = decoded->held;
          e.loop_checked = true;  // it was planned (or held) before
        }
      }
      const std::string id = r.id;
      e.record = std::move(r);
      int64_t next = INT64_MAX;
      for (const RecipientState& st : e.states) {
        if (!st.final()) next = std::min(next, st.next_attempt_ms);
      }
      entries_[id] = std::move(e);
      if (next == INT64_MAX) {
        settle_now.push_back(id);  // all final: the crash came before removal
      } else {
        schedule_locked(id, next);
      }
    }
  }
  for (const std::string& id : settle_now) settle(id);
  return absl::OkStatus();
}

bool QueueManager::loop_detected(const MessageRecord& r) {
  auto body = spool_.read_prefix(r, 256 * 1024);  // the headers are at the start
  if (!body.ok()) return false;
  const std::string_view headers = message::header_block(*body);
  int count = 0;
  size_t pos = 0;
  while (pos < headers.size()) {
    if (headers.size() - pos >= 9 && strncasecmp(headers.data() + pos, "Received:", 9) == 0) ++count;
    const size_t eol = headers.find('\n', pos);
    if (eol == std::string_view::npos) break;
    pos = eol + 1;
  }
  return count > options_.max_received;
}

void QueueManager::enqueue(const MessageRecord& record) {
  // Cheap: runs on the spool's flusher thread for every commit. The loop
  // check reads the message, so the scheduler does it (tick()).
  {
    absl::MutexLock lock(&mu_);
    if (entries_.count(record.id)) return;  // already known (a DSN is announced twice)
    Entry e;
    e.record = record;
    const int64_t t = now();
    e.states.assign(record.envelope.recipients.size(), RecipientState{RecipientStatus::kQueued, 0, t, "", "", false});
    entries_[record.id] = std::move(e);
    // Announced before the scheduler can see it, so that watchers always
    // get "queued" before "attempt" (lock order: mu_, then watchers_mu_).
    if (has_watchers_.load(std::memory_order_relaxed)) {
      QueueEvent ev;
      ev.kind = QueueEvent::Kind::kQueued;
      ev.id = record.id;
      ev.sender = record.envelope.sender.str();
      ev.recipients = recipient_list(record);
      emit(std::move(ev));
    }
    schedule_locked(record.id, t);
    wake_ = true;
  }
}

void QueueManager::schedule_locked(const std::string& id, int64_t when) { due_.push({when, id}); }

void QueueManager::plan_locked(const std::string& id, std::vector<Job>& jobs) {
  auto it = entries_.find(id);
  if (it == entries_.end()) return;
  Entry& e = it->second;
  if (e.held) return;  // release() schedules it again
  const int64_t t = now();
  std::map<std::string, Job> by_destination;
  for (size_t i = 0; i < e.states.size(); ++i) {
    const RecipientState& st = e.states[i];
    if (st.final() || e.in_flight.count(i) || st.next_attempt_ms > t) continue;
    const smtp::Recipient& r = e.record.envelope.recipients[i];
    const std::string domain = r.path.postmaster ? "localhost" : r.path.mailbox.domain_lower();
    const std::string route = router_(domain);
    // One connection per route carries every domain for relay, LMTP and
    // Maildir; MX routes split by domain (each has its own MX hosts).
    const std::string destination = route == "mx" ? "mx:" + domain : route;
    Job& job = by_destination[destination];
    if (job.request.recipients.empty()) {
      job.destination = destination;
      job.request.route = route;
      job.request.domain = domain;
      job.request.record = e.record;
    }
    job.request.recipients.push_back(i);
    e.in_flight.insert(i);
  }
  for (auto& [dest, job] : by_destination) jobs.push_back(std::move(job));
}

void QueueManager::dispatch_locked(std::vector<Job>& planned, std::vector<Job>& start) {
  for (Job& job : planned) {
    if (active_[job.destination] < options_.per_destination && total_active_ < options_.total_in_flight) {
      ++active_[job.destination];
      ++total_active_;
      start.push_back(std::move(job));
    } else {
      waiting_[job.destination].push_back(std::move(job));
    }
  }
  planned.clear();
}

size_t QueueManager::tick() {
  std::vector<Job> start;
  std::vector<std::string> to_settle;
  std::vector<MessageRecord> to_check;
  {
    absl::MutexLock lock(&mu_);
    const int64_t t = now();
    std::vector<Job> planned;
    while (!due_.empty() && due_.top().first <= t) {
      const std::string id = due_.top().second;
      due_.pop();
      auto it = entries_.find(id);
      if (it == entries_.end()) continue;
      bool all_final = it->second.in_flight.empty();
      for (const RecipientState& s : it->second.states) all_final = all_final && s.final();
      if (all_final) {
        to_settle.push_back(id);  // an earlier settle could not finish
        continue;
      }
      if (!it->second.loop_checked) {
        to_check.push_back(it->second.record);  // first time due: read it outside the lock
        continue;
      }
      plan_locked(id, planned);
    }
    dispatch_locked(planned, start);
  }
  if (!to_check.empty()) {
    std::vector<bool> loops;
    for (const MessageRecord& r : to_check) loops.push_back(loop_detected(r));
    std::vector<QueueEvent> failed;
    {
      absl::MutexLock lock(&mu_);
      std::vector<Job> planned;
      for (size_t k = 0; k < to_check.size(); ++k) {
        auto it = entries_.find(to_check[k].id);
        if (it == entries_.end()) continue;
        Entry& e = it->second;
        e.loop_checked = true;
        if (!loops[k]) {
          plan_locked(e.record.id, planned);
          continue;
        }
        // RFC 5321 6.3: too many trace headers means a mail loop.
        for (size_t i = 0; i < e.states.size(); ++i) {
          if (e.states[i].final()) continue;
          e.states[i].status = RecipientStatus::kFailed;
          e.states[i].last_reply = "554 5.4.6 Too many Received headers: mail loop";
          QueueEvent ev;
          ev.kind = QueueEvent::Kind::kFailed;
          ev.id = e.record.id;
          ev.sender = e.record.envelope.sender.str();
          ev.recipients = {e.record.envelope.recipients[i].path.str()};
          ev.reply = e.states[i].last_reply;
          failed.push_back(std::move(ev));
        }
        to_settle.push_back(e.record.id);
      }
      dispatch_locked(planned, start);
    }
    for (QueueEvent& ev : failed) emit(std::move(ev));
  }
  for (const std::string& id : to_settle) settle(id);
  for (Job& job : start) start_job(std::move(job));
  return start.size();
}

void QueueManager::start_job(Job job) {
  const std::string destination = job.destination;
  const std::string id = job.request.record.id;
  const std::string route = job.request.route;
  std::vector<size_t> rcpts = job.request.recipients;
  if (has_watchers_.load(std::memory_order_relaxed)) {
    QueueEvent ev;
    ev.kind = QueueEvent::Kind::kAttempt;
    ev.id = id;
    ev.sender = job.request.record.envelope.sender.str();
    for (size_t i : rcpts) ev.recipients.push_back(job.request.record.envelope.recipients[i].path.str());
    ev.route = route;
    emit(std::move(ev));
  }
  transport_.deliver(std::move(job.request),
                     [this, destination, id, route, rcpts](std::vector<AttemptOutcome> outcomes) {
                       on_done(destination, id, route, rcpts, std::move(outcomes));
                     });
}

int64_t QueueManager::backoff_ms(uint32_t attempts) {
  // min_backoff, doubling per attempt, capped; +-20% jitter so that a
  // destination that comes back is not hit by everything at once.
  double b = static_cast<double>(options_.min_backoff.count());
  for (uint32_t i = 1; i < attempts && b < options_.max_backoff.count(); ++i) b *= 2;
  b = std::min(b, static_cast<double>(options_.max_backoff.count()));
  std::uniform_real_distribution<double> jitter(0.8, 1.2);
  return static_cast<int64_t>(b * jitter(rng_));
}

void QueueManager::on_done(const std::string& destination, const std::string& id, const std::string& route,
                           std::vector<size_t> rcpts, std::vector<AttemptOutcome> outcomes) {
  std::optional<Job> next_job;
  std::vector<std::pair<size_t, RecipientState>> observed;
  MessageRecord record_copy;
  {
    absl::MutexLock lock(&mu_);
    --active_[destination];
    --total_active_;
    auto w = waiting_.find(destination);
    if (w != waiting_.end() && !w->second.empty()) {
      next_job = std::move(w->second.front());
      w->second.pop_front();
      ++active_[destination];
      ++total_active_;
    }
    auto it = entries_.find(id);
    if (it != entries_.end()) {
      Entry& e = it->second;
      const int64_t t = now();
      const int64_t arrival_ms = e.record.arrival_unix_us / 1000;
      for (size_t k = 0; k < rcpts.size(); ++k) {
        const size_t i = rcpts[k];
        e.in_flight.erase(i);
        AttemptOutcome o = k < outcomes.size()
                               ? outcomes[k]
                               : AttemptOutcome::from_reply(smtp::Reply(451, "4.3.0", "transport gave no result"));
        RecipientState& st = e.states[i];
        ++st.attempts;
        st.last_reply = o.reply.summary();
        st.remote_host = o.remote_host;
        if (o.result == AttemptResult::kDelivered) {
          st.status = RecipientStatus::kDelivered;
        } else if (o.result == AttemptResult::kFailed) {
          st.status = RecipientStatus::kFailed;
        } else if (t - arrival_ms >= options_.lifetime.count()) {
          st.status = RecipientStatus::kFailed;  // RFC 3463 4.4.7: delivery time expired
          st.last_reply = "450 4.4.7 Message expired in queue; last reply: " + st.last_reply;
        } else {
          st.status = RecipientStatus::kDeferred;
          st.next_attempt_ms = t + backoff_ms(st.attempts);
        }
        e.attempts.push_back({t, i, route, o.remote_host, st.status, st.last_reply});
        if (e.attempts.size() > 100) e.attempts.pop_front();
        observed.emplace_back(k, st);
      }
      record_copy = e.record;
    }
  }
  for (auto& [k, st] : observed) {
    const AttemptOutcome o = k < outcomes.size() ? outcomes[k] : AttemptOutcome();
    if (options_.on_attempt) options_.on_attempt(record_copy, rcpts[k], route, o, st);
    QueueEvent ev;
    ev.kind = st.status == RecipientStatus::kDelivered ? QueueEvent::Kind::kDelivered
              : st.status == RecipientStatus::kFailed  ? QueueEvent::Kind::kFailed
                                                       : QueueEvent::Kind::kDeferred;
    ev.id = id;
    ev.sender = record_copy.envelope.sender.str();
    ev.recipients = {record_copy.envelope.recipients[rcpts[k]].path.str()};
    ev.reply = st.last_reply;
    ev.route = route;
    emit(std::move(ev));
  }
  settle(id);
  if (next_job) start_job(std::move(*next_job));
}

void QueueManager::settle(const std::string& id) {
  std::lock_guard<std::recursive_mutex> serial(settle_mu_);
  std::optional<Entry> copy;
  {
    absl::MutexLock lock(&mu_);
    auto it = entries_.find(id);
    if (it == entries_.end()) return;
    copy = it->second;
  }
  Entry& e = *copy;
  // When every recipient is delivered, the removal below is the record of
  // it: no state write needed (the common case costs one delete).
  bool all_delivered = e.in_flight.empty();
  for (const RecipientState& st : e.states) all_delivered = all_delivered && st.status == RecipientStatus::kDelivered;
  if (absl::Status s = all_delivered ? absl::OkStatus() : spool_.put_state(id, encode_state({e.held, e.states}));
      !s.ok()) {
    absl::MutexLock lock(&mu_);  // try again later; nothing was lost
    schedule_locked(id, now() + options_.min_backoff.count());
    return;
  }
  bool all_final = e.in_flight.empty();
  int64_t next = INT64_MAX;
  std::vector<size_t> failed, delayed;
  const int64_t t = now();
  for (size_t i = 0; i < e.states.size(); ++i) {
    const RecipientState& st = e.states[i];
    const smtp::Recipient& r = e.record.envelope.recipients[i];
    if (!st.final()) {
      all_final = false;
      if (!e.in_flight.count(i)) next = std::min(next, st.next_attempt_ms);
      if (options_.delay_warning.count() > 0 && !st.delay_warned && st.status == RecipientStatus::kDeferred &&
          t - e.record.arrival_unix_us / 1000 >= options_.delay_warning.count() && wants_delay_dsn(r)) {
        delayed.push_back(i);
      }
    } else if (st.status == RecipientStatus::kFailed && wants_failure_dsn(r)) {
      failed.push_back(i);
    }
  }
  const bool null_sender = e.record.envelope.sender.null;
  if (!all_final) {
    if (!delayed.empty() && !null_sender) {
      send_dsn(e, true, delayed);
      absl::MutexLock lock(&mu_);
      auto it = entries_.find(id);
      if (it != entries_.end()) {
        for (size_t i : delayed) it->second.states[i].delay_warned = true;
      }
    }
    absl::MutexLock lock(&mu_);
    if (next != INT64_MAX) schedule_locked(id, next);
    wake_ = true;
    return;
  }
  // Every recipient is final: bounce what failed, then let the message go.
  if (!failed.empty() && !null_sender && !send_dsn(e, false, failed)) {
    absl::MutexLock lock(&mu_);
    schedule_locked(id, now() + options_.min_backoff.count());  // the DSN could not be queued yet
    return;
  }
  if (!spool_.remove(id).ok()) {
    absl::MutexLock lock(&mu_);
    schedule_locked(id, now() + options_.min_backoff.count());
    return;
  }
  {
    absl::MutexLock lock(&mu_);
    entries_.erase(id);
  }
  QueueEvent ev;
  ev.kind = QueueEvent::Kind::kRemoved;
  ev.id = id;
  ev.sender = e.record.envelope.sender.str();
  ev.recipients = recipient_list(e.record);
  size_t delivered = 0;
  for (const RecipientState& st : e.states) delivered += st.status == RecipientStatus::kDelivered ? 1 : 0;
  ev.reply = std::to_string(delivered) + " delivered, " + std::to_string(e.states.size() - delivered) + " failed";
  emit(std::move(ev));
}

bool QueueManager::send_dsn(const Entry& e, bool delay_only, const std::vector<size_t>& which) {
  auto body = spool_.read_body(e.record);
  message::DsnReport report;
  report.reporting_mta = options_.hostname;
  report.sender = e.record.envelope.sender.str();
  report.envid = e.record.envelope.envid;
  report.arrival_unix = e.record.arrival_unix_us / 1000000;
  report.now_unix = now() / 1000;
  report.queue_id = e.record.id;
  report.utf8 = e.record.envelope.smtputf8;
  const smtp::DsnRet ret = e.record.envelope.ret;
  report.headers_only = ret == smtp::DsnRet::kHdrs || (ret == smtp::DsnRet::kUnspecified && e.record.size > kFullReturnLimit);
  if (body.ok()) report.original = *body;
  for (size_t i : which) {
    const RecipientState& st = e.states[i];
    const smtp::Recipient& r = e.record.envelope.recipients[i];
    message::DsnRecipient d;
    d.final_recipient = r.path.str();
    d.original_recipient = r.orcpt;
    d.action = delay_only ? message::DsnAction::kDelayed : message::DsnAction::kFailed;
    d.status = status_of(st.last_reply);
    d.remote_mta = st.remote_host;
    d.diagnostic = st.last_reply;
    d.last_attempt_unix = now() / 1000;
    report.recipients.push_back(std::move(d));
  }
  const std::string dsn = message::build_dsn(report);
  auto writer = spool_.begin_message();
  if (!writer.ok() || !(*writer)->append(dsn).ok()) return false;
  MessageRecord rec;
  rec.arrival_unix_us = now() * 1000;
  rec.envelope.sender.null = true;  // RFC 5321 6.1: DSNs are sent with <>
  smtp::Recipient to;
  to.path = e.record.envelope.sender;
  to.notify = smtp::kNotifyNever;
  rec.envelope.recipients.push_back(to);
  rec.protocol = "local";
  rec.source = "dsn";
  // This runs on the scheduler or a transport's completion thread, never on
  // an I/O thread: waiting for the commit is fine.
  auto result = spool_.commit_and_wait(std::move(*writer), rec);
  if (!result.ok()) return false;
  auto stored = spool_.get(*result);
  if (!stored.ok()) return false;
  if (options_.on_dsn) options_.on_dsn(e.record.id, stored->id, delay_only ? "delayed" : "failed");
  enqueue(*stored);
  return true;
}

void QueueManager::scheduler_loop() {
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      const int64_t next = due_.empty() ? now() + 1000 : due_.top().first;
      const absl::Time deadline = absl::Now() + absl::Milliseconds(std::max<int64_t>(0, std::min<int64_t>(next - now(), 1000)));
      mu_.AwaitWithDeadline(absl::Condition(+[](QueueManager* q) ABSL_NO_THREAD_SAFETY_ANALYSIS {
                                              return q->stopping_ || q->wake_;
                                            }, this),
                            deadline);
      wake_ = false;
      if (stopping_) return;
    }
    tick();
  }
}

void QueueManager::start() {
  thread_ = std::thread([this] { scheduler_loop(); });
}

void QueueManager::stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

absl::Status QueueManager::hold(const std::string& id) { return set_held(id, true); }

absl::Status QueueManager::release(const std::string& id) { return set_held(id, false); }

absl::Status QueueManager::set_held(const std::string& id, bool held) {
  std::lock_guard<std::recursive_mutex> serial(settle_mu_);
  std::string state;
  QueueEvent ev;
  {
    absl::MutexLock lock(&mu_);
    auto it = entries_.find(id);
    if (it == entries_.end()) return absl::NotFoundError("no message " + id + " in the queue");
    it->second.held = held;
    state = encode_state({held, it->second.states});
    if (!held) {
      schedule_locked(id, now());
      wake_ = true;
    }
    ev.kind = held ? QueueEvent::Kind::kHeld : QueueEvent::Kind::kReleased;
    ev.id = id;
    ev.sender = it->second.record.envelope.sender.str();
    ev.recipients = recipient_list(it->second.record);
  }
  absl::Status s = spool_.put_state(id, state);
  if (s.ok()) emit(std::move(ev));
  return s;
}

bool QueueManager::held(const std::string& id) {
  absl::MutexLock lock(&mu_);
  auto it = entries_.find(id);
  return it != entries_.end() && it->second.held;
}


const char* MessageView::state() const {
  if (held) return "held";
  if (!in_flight.empty()) return "delivering";
  for (const RecipientState& st : states) {
    if (st.status == RecipientStatus::kDeferred) return "deferred";
  }
  return "queued";
}

const char* to_string(QueueEvent::Kind k) {
  switch (k) {
    case QueueEvent::Kind::kQueued: return "queued";
    case QueueEvent::Kind::kAttempt: return "attempt";
    case QueueEvent::Kind::kDelivered: return "delivered";
    case QueueEvent::Kind::kDeferred: return "deferred";
    case QueueEvent::Kind::kFailed: return "failed";
    case QueueEvent::Kind::kRemoved: return "removed";
    case QueueEvent::Kind::kHeld: return "held";
    case QueueEvent::Kind::kReleased: return "released";
  }
  return "unknown";
}

MessageView QueueManager::view_of(const Entry& e) {
  MessageView v;
  v.record = e.record;
  v.states = e.states;
  v.in_flight = e.in_flight;
  v.held = e.held;
  v.attempts.assign(e.attempts.begin(), e.attempts.end());
  return v;
}

QueueStats QueueManager::stats(bool backlog) {
  absl::MutexLock lock(&mu_);
  QueueStats s;
  s.messages = entries_.size();
  s.in_flight = total_active_;
  for (auto& [d, q] : waiting_) s.waiting += q.size();
  for (auto& [id, e] : entries_) {
    s.held += e.held ? 1 : 0;
    if (s.oldest_arrival_unix_us == 0 || e.record.arrival_unix_us < s.oldest_arrival_unix_us) {
      s.oldest_arrival_unix_us = e.record.arrival_unix_us;
    }
    const char* mstate = "queued";
    if (e.held) {
      mstate = "held";
    } else if (!e.in_flight.empty()) {
      mstate = "delivering";
    }
    for (size_t i = 0; i < e.states.size(); ++i) {
      const RecipientState& st = e.states[i];
      ++s.recipients_by_state[recipient_state_name(st, e.in_flight.count(i) > 0)];
      if (st.status == RecipientStatus::kDeferred && std::string_view(mstate) == "queued") mstate = "deferred";
      if (st.final() || !backlog) continue;
      const smtp::Recipient& r = e.record.envelope.recipients[i];
      const std::string domain = r.path.postmaster ? "localhost" : r.path.mailbox.domain_lower();
      const std::string route = router_(domain);
      ++s.backlog[route == "mx" ? "mx:" + domain : route];
    }
    ++s.messages_by_state[mstate];
  }
  return s;
}

std::optional<MessageView> QueueManager::get(const std::string& id) {
  absl::MutexLock lock(&mu_);
  auto it = entries_.find(id);
  if (it == entries_.end()) return std::nullopt;
  return view_of(it->second);
}

std::vector<MessageView> QueueManager::list(const std::string& after, size_t limit,
                                            const std::function<bool(const MessageView&)>& match, bool* more) {
  std::vector<MessageView> out;
  if (more) *more = false;
  absl::MutexLock lock(&mu_);
  for (auto it = after.empty() ? entries_.begin() : entries_.upper_bound(after); it != entries_.end(); ++it) {
    MessageView v = view_of(it->second);
    if (match && !match(v)) continue;
    if (out.size() == limit) {
      if (more) *more = true;
      break;
    }
    out.push_back(std::move(v));
  }
  return out;
}

absl::Status QueueManager::retry(const std::string& id) {
  absl::MutexLock lock(&mu_);
  auto it = entries_.find(id);
  if (it == entries_.end()) return absl::NotFoundError("no message " + id + " in the queue");
  Entry& e = it->second;
  if (e.held) return absl::FailedPreconditionError("message " + id + " is held: release it first");
  const int64_t t = now();
  for (size_t i = 0; i < e.states.size(); ++i) {
    if (!e.states[i].final() && !e.in_flight.count(i)) e.states[i].next_attempt_ms = t;
  }
  schedule_locked(id, t);
  wake_ = true;
  return absl::OkStatus();
}

absl::Status QueueManager::remove(const std::string& id, bool bounce) {
  std::lock_guard<std::recursive_mutex> serial(settle_mu_);
  QueueEvent ev;
  {
    absl::MutexLock lock(&mu_);
    auto it = entries_.find(id);
    if (it == entries_.end()) return absl::NotFoundError("no message " + id + " in the queue");
    Entry& e = it->second;
    if (!e.in_flight.empty()) {
      return absl::FailedPreconditionError("message " + id + " is being delivered; try again in a moment");
    }
    if (bounce) {
      for (RecipientState& st : e.states) {
        if (st.final()) continue;
        st.status = RecipientStatus::kFailed;
        st.last_reply = "550 5.0.0 Message deleted by the queue administrator";  // RFC 3463 X.0.0: other
        st.remote_host.clear();
      }
      e.held = false;
    }
    ev.kind = QueueEvent::Kind::kRemoved;
    ev.id = id;
    ev.sender = e.record.envelope.sender.str();
    ev.recipients = recipient_list(e.record);
    ev.reply = bounce ? "deleted by the administrator, bounced" : "deleted by the administrator";
  }
  if (bounce) {
    // settle() persists the failures, sends the DSN and removes the message
    // (or leaves it scheduled to try again when the spool refuses).
    settle(id);
    absl::MutexLock lock(&mu_);
    if (entries_.count(id)) return absl::UnavailableError("spool error: the bounce will be retried");
    return absl::OkStatus();
  }
  if (absl::Status s = spool_.remove(id); !s.ok()) return absl::UnavailableError(s.ToString());
  {
    absl::MutexLock lock(&mu_);
    entries_.erase(id);
  }
  emit(std::move(ev));
  return absl::OkStatus();
}

uint64_t QueueManager::subscribe(std::function<void(const QueueEvent&)> watcher) {
  absl::MutexLock lock(&watchers_mu_);
  const uint64_t token = next_watcher_++;
  watchers_[token] = std::move(watcher);
  has_watchers_ = true;
  return token;
}

namespace {
// Set while this thread runs watchers inside emit(): a watcher that ends
// itself there (and unsubscribes) must not take the lock again.
thread_local bool tl_in_emit = false;
}  // namespace

void QueueManager::unsubscribe(uint64_t token) {
  if (tl_in_emit) {
    watchers_mu_.AssertHeld();
    removed_watchers_.push_back(token);  // emit() erases it when its loop is done
    return;
  }
  absl::MutexLock lock(&watchers_mu_);
  watchers_.erase(token);
  has_watchers_ = !watchers_.empty();
}

void QueueManager::emit(QueueEvent event) {
  if (!has_watchers_.load(std::memory_order_relaxed)) return;
  if (event.unix_ms == 0) event.unix_ms = now();
  absl::MutexLock lock(&watchers_mu_);
  tl_in_emit = true;
  for (auto& [token, w] : watchers_) {
    if (std::find(removed_watchers_.begin(), removed_watchers_.end(), token) == removed_watchers_.end()) w(event);
  }
  tl_in_emit = false;
  for (uint64_t token : removed_watchers_) watchers_.erase(token);
  removed_watchers_.clear();
  has_watchers_ = !watchers_.empty();
}

std::vector<RecipientState> QueueManager::states(const std::string& id) {
  absl::MutexLock lock(&mu_);
  auto it = entries_.find(id);
  return it == entries_.end() ? std::vector<RecipientState>() : it->second.states;
}

}  // namespace smtpd::queue
