// The durable spool: every message smtpd acknowledges lives here until it
// is delivered or bounced.
//
// Bodies stream into append-only segment files while DATA/BDAT arrive
// (SpoolWriter, unsynced page-cache writes). At the end of data the session
// hands the writer and the envelope to commit(); one flusher thread takes
// every commit pending at that moment, runs fdatasync on the segments they
// touched, then writes all their envelope records in one RocksDB batch with
// sync=true, and only then calls each commit's completion. Concurrent
// sessions so share one disk flush (group commit), and no acknowledgement is
// ever given for bytes that are not on stable storage.
//
// A segment file is deleted once no committed message refers to it and it
// is no longer the one being appended to. Recovery at open() rebuilds the
// per-segment reference counts from the records and deletes segments that
// hold only incomplete messages.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "lib/queue/record.h"

namespace rocksdb {
class DB;
}

namespace smtpd::queue {

class Segment;
class Spool;

struct SpoolOptions {
  std::string path;                       // directory; created if missing
  uint64_t max_messages = 100000;         // past this, new mail gets 452 4.3.1
  uint64_t segment_bytes = 64ull << 20;   // rotate the append file past this size
  size_t writer_buffer = 64 << 10;        // octets a writer holds before writing
  // New mail is refused (452 4.3.1) while the spool's file system has less
  // free space than this, so that RocksDB never meets a full disk (see
  // Spool::flush_batch). Like Postfix's queue_minfree.
  uint64_t min_free_bytes = 64ull << 20;
  // Group commit: when other messages are still being received, the
  // flusher waits up to this long for them to join its batch before it
  // syncs (like PostgreSQL's commit_delay with commit_siblings). Zero
  // syncs at once. A lone session never waits.
  std::chrono::microseconds commit_delay{1000};
  // Called once if the envelope database fails a write: that RocksDB
  // handle must not be used again (its WAL writer is in error), and the
  // process should restart; everything acknowledged is already durable.
  std::function<void(const absl::Status&)> on_fatal;
  // Called on the flusher thread for every committed message, before its
  // commit callback (the delivery queue takes it from here). Must be quick:
  // it delays every acknowledgement of the batch.
  std::function<void(const MessageRecord&)> on_committed;
  // Called after each group-commit batch is durable: how many messages it
  // carried and how long the syncs took (metrics).
  std::function<void(size_t messages, double seconds)> on_batch;
};

// One message body being received. Not thread-safe: owned by one session.
class SpoolWriter {
 public:
  ~SpoolWriter();
  SpoolWriter(const SpoolWriter&) = delete;
  SpoolWriter& operator=(const SpoolWriter&) = delete;

  const std::string& id() const { return id_; }
  // Appends body octets. Errors are sticky and reported again by commit.
  absl::Status append(std::string_view bytes);
  uint64_t size() const { return size_; }
  const absl::Status& status() const { return status_; }

 private:
  friend class Spool;
  SpoolWriter(Spool* spool, std::string id, size_t buffer_limit);
  absl::Status write_out();

  Spool* spool_;
  std::string id_;
  size_t buffer_limit_;
  std::string buffer_;
  uint64_t size_ = 0;
  absl::Status status_;
  std::vector<Extent> extents_;
  std::vector<std::shared_ptr<Segment>> segments_;  // kept open until commit
};

using CommitCallback = absl::AnyInvocable<void(absl::StatusOr<std::string>)>;

class Spool {
 public:
  // Opens (creating if needed) and recovers the spool, then starts the
  // flusher thread. Takes RocksDB's lock: one process per spool.
  static absl::StatusOr<std::unique_ptr<Spool>> open(const SpoolOptions& options);
  ~Spool();

  // True when the spool takes new mail: below max_messages, enough free
  // space, database healthy.
  bool accepting();
  // Starts a message; fails with RESOURCE_EXHAUSTED when the spool is full.
  absl::StatusOr<std::unique_ptr<SpoolWriter>> begin_message();
  // Makes the message durable. `done` runs on the flusher thread with the
  // queue id once the body and the record are synced, or with an error
  // (nothing was acknowledged). The record's id, size and extents are
  // filled in from the writer.
  void commit(std::unique_ptr<SpoolWriter> writer, MessageRecord record, CommitCallback done);
  // commit() that also stores small values (see put_meta) in the same
  // synced batch as the record: both are durable, or neither.
  using Meta = std::vector<std::pair<std::string, std::string>>;
  void commit(std::unique_ptr<SpoolWriter> writer, MessageRecord record, Meta meta, CommitCallback done);
  // commit() that waits for the outcome: for threads that may block (the
  // delivery queue, tools, tests), never for I/O threads.
  absl::StatusOr<std::string> commit_and_wait(std::unique_ptr<SpoolWriter> writer, MessageRecord record);
  // Removes a message (and its delivery state) and releases its segment
  // space.
  absl::Status remove(const std::string& id);

  // Delivery state of a message (opaque bytes, owned by the queue
  // manager), stored durably next to its record.
  absl::Status put_state(const std::string& id, std::string_view state);
  absl::StatusOr<std::string> get_state(const std::string& id) const;  // NOT_FOUND: none yet

  // Small durable values beside the messages, in their own key space (the
  // control plane's policy and idempotency keys). put_meta syncs;
  // delete_meta does not (a lost delete only keeps a value longer).
  absl::Status put_meta(const std::string& key, std::string_view value);
  absl::StatusOr<std::string> get_meta(const std::string& key) const;  // NOT_FOUND
  absl::Status delete_meta(const std::string& key);
  absl::Status for_each_meta(const std::string& prefix,
                             const std::function<void(const std::string& key, const std::string& value)>& fn) const;

  absl::StatusOr<MessageRecord> get(const std::string& id) const;
  absl::StatusOr<std::string> read_body(const MessageRecord& record) const;
  // At most `limit` octets from the start of the body (headers, mostly).
  absl::StatusOr<std::string> read_prefix(const MessageRecord& record, size_t limit) const;
  // Calls fn for each message in id (arrival) order.
  absl::Status for_each(const std::function<void(const MessageRecord&)>& fn) const;

  uint64_t message_count() const { return messages_.load(std::memory_order_relaxed); }
  // Commit batches flushed and messages committed since open (for tests
  // and metrics).
  uint64_t batches() const { return batches_.load(std::memory_order_relaxed); }
  uint64_t commits() const { return commits_.load(std::memory_order_relaxed); }

  // Finishes pending commits and stops the flusher. Idempotent.
  void close();

 private:
  friend class SpoolWriter;
  struct Pending {
    std::unique_ptr<SpoolWriter> writer;
    MessageRecord record;
    CommitCallback done;
    Meta meta;
  };

  explicit Spool(SpoolOptions options);
  absl::Status recover();
  absl::Status open_new_segment_locked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(segments_mu_);
  // Reserves `length` octets in the active segment.
  absl::StatusOr<std::pair<std::shared_ptr<Segment>, uint64_t>> reserve(uint64_t length);
  std::string next_id();
  void flusher_loop();
  void gather_siblings(std::vector<Pending>& batch);
  void flush_batch(std::vector<Pending>& batch);
  void release_segments(const std::vector<Extent>& extents);
  void retire_segment_locked(uint64_t id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(segments_mu_);
  std::string segment_path(uint64_t id) const;

  SpoolOptions options_;
  rocksdb::DB* db_ = nullptr;

  absl::Mutex segments_mu_;
  std::shared_ptr<Segment> active_ ABSL_GUARDED_BY(segments_mu_);
  uint64_t next_segment_id_ ABSL_GUARDED_BY(segments_mu_) = 1;
  // Committed messages per segment; a segment leaves when its count is 0
  // and it is not active.
  std::map<uint64_t, uint64_t> live_ ABSL_GUARDED_BY(segments_mu_);
  // Segment files still open (active, or held by writers in flight). A file
  // whose count falls to 0 while a writer holds it is unlinked when the last
  // holder lets go, unless a commit into it arrives first.
  std::map<uint64_t, std::weak_ptr<Segment>> open_ ABSL_GUARDED_BY(segments_mu_);

  absl::Mutex pending_mu_;
  std::vector<Pending> pending_ ABSL_GUARDED_BY(pending_mu_);
  bool stopping_ ABSL_GUARDED_BY(pending_mu_) = false;
  std::thread flusher_;
  absl::Status check_space();

  std::atomic<bool> low_space_{false};
  std::atomic<int64_t> space_checked_ms_{0};
  std::atomic<bool> db_broken_{false};

  std::atomic<uint64_t> messages_{0};
  std::atomic<uint64_t> in_flight_{0};
  std::atomic<uint64_t> batches_{0};
  std::atomic<uint64_t> commits_{0};
  std::atomic<uint64_t> last_id_{0};
  std::atomic<bool> closed_{false};
};

// Read-only access for `smtpd spool ls|show` while a server may be running.
class SpoolReader {
 public:
  static absl::StatusOr<std::unique_ptr<SpoolReader>> open(const std::string& path);
  ~SpoolReader();
  absl::Status for_each(const std::function<void(const MessageRecord&)>& fn) const;
  absl::StatusOr<MessageRecord> get(const std::string& id) const;
  absl::StatusOr<std::string> read_body(const MessageRecord& record) const;

 private:
  SpoolReader() = default;
  std::string path_;
  rocksdb::DB* db_ = nullptr;
};

}  // namespace smtpd::queue
