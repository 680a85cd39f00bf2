#include "lib/queue/spool.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <optional>
#include <filesystem>
#include <set>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "rocksdb/db.h"
#include "rocksdb/options.h"
#include "rocksdb/write_batch.h"

namespace smtpd::queue {
namespace {

constexpr char kMessagePrefix[] = "m/";
constexpr char kStatePrefix[] = "s/";
constexpr char kMetaPrefix[] = "x/";

absl::Status errno_status(const std::string& what, int err) {
  const std::string msg = what + ": " + std::strerror(err);
  // ENOSPC and EDQUOT are the "disk full" of RFC 3463's 4.3.1.
  if (err == ENOSPC || err == EDQUOT) return absl::ResourceExhaustedError(msg);
  return absl::UnavailableError(msg);
}

absl::Status from_rocks(const rocksdb::Status& s, const std::string& what) {
  if (s.ok()) return absl::OkStatus();
  if (s.IsNoSpace()) return absl::ResourceExhaustedError(what + ": " + s.ToString());
  if (s.IsNotFound()) return absl::NotFoundError(what + ": " + s.ToString());
  return absl::UnavailableError(what + ": " + s.ToString());
}

rocksdb::Options db_options() {
  rocksdb::Options o;
  o.create_if_missing = true;
  o.write_buffer_size = 8 << 20;  // short recovery after a crash (TOOLCHAIN.md)
  o.max_write_batch_group_size_bytes = 16 << 20;
  o.keep_log_file_num = 4;
  o.max_open_files = 256;
  return o;
}

absl::Status read_extents(const std::string& dir, const MessageRecord& r, std::string& out) {
  out.clear();
  out.reserve(r.size);
  int fd = -1;
  uint64_t fd_segment = 0;
  for (const Extent& x : r.extents) {
    if (fd < 0 || fd_segment != x.segment) {
      if (fd >= 0) ::close(fd);
      char name[32];
      std::snprintf(name, sizeof name, "/segments/%016llx.seg",
                    static_cast<unsigned long long>(x.segment));
      fd = ::open((dir + name).c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0) return errno_status("open segment", errno);
      fd_segment = x.segment;
    }
    const size_t at = out.size();
    out.resize(at + x.length);
    size_t done = 0;
    while (done < x.length) {
      const ssize_t n = ::pread(fd, out.data() + at + done, x.length - done,
                                static_cast<off_t>(x.offset + done));
      if (n <= 0) {
        const int err = n < 0 ? errno : EIO;
        ::close(fd);
        return n == 0 ? absl::DataLossError("segment shorter than its record")
                      : errno_status("read segment", err);
      }
      done += static_cast<size_t>(n);
    }
  }
  if (fd >= 0) ::close(fd);
  return absl::OkStatus();
}

absl::Status scan_records(rocksdb::DB* db, const std::function<void(const MessageRecord&)>& fn) {
  std::unique_ptr<rocksdb::Iterator> it(db->NewIterator(rocksdb::ReadOptions()));
  for (it->Seek(kMessagePrefix); it->Valid() && it->key().starts_with(kMessagePrefix); it->Next()) {
    auto rec = decode_record(std::string_view(it->value().data(), it->value().size()));
    if (!rec.ok()) return rec.status();
    fn(*rec);
  }
  const absl::Status s = from_rocks(it->status(), "scan spool");
  it.reset();  // before the DB may close (Debian's RocksDB asserts on this)
  return s;
}

absl::StatusOr<MessageRecord> get_record(rocksdb::DB* db, const std::string& id) {
  std::string value;
  const rocksdb::Status s = db->Get(rocksdb::ReadOptions(), kMessagePrefix + id, &value);
  if (s.IsNotFound()) return absl::NotFoundError("no message " + id);
  if (!s.ok()) return from_rocks(s, "read spool");
  return decode_record(value);
}

}  // namespace

// One append-only body file. Space is reserved with an atomic counter, so
// concurrent writers never share octets and write without a lock.
class Segment {
 public:
  Segment(uint64_t id, int fd, std::string path) : id_(id), fd_(fd), path_(std::move(path)) {}
  ~Segment() {
    ::close(fd_);
    if (unlink_on_close_) ::unlink(path_.c_str());
  }
  uint64_t id() const { return id_; }
  int fd() const { return fd_; }
  uint64_t reserve(uint64_t n) { return end_.fetch_add(n); }
  uint64_t end() const { return end_.load(); }
  void unlink_on_close() { unlink_on_close_ = true; }
  void keep() { unlink_on_close_ = false; }

 private:
  uint64_t id_;
  int fd_;
  std::string path_;
  std::atomic<uint64_t> end_{0};
  std::atomic<bool> unlink_on_close_{false};
};

SpoolWriter::SpoolWriter(Spool* spool, std::string id, size_t buffer_limit)
    : spool_(spool), id_(std::move(id)), buffer_limit_(buffer_limit) {}

SpoolWriter::~SpoolWriter() {
  if (spool_ != nullptr) spool_->in_flight_.fetch_sub(1);
}

absl::Status SpoolWriter::append(std::string_view bytes) {
  if (!status_.ok()) return status_;
  size_ += bytes.size();
  buffer_.append(bytes);
  if (buffer_.size() >= buffer_limit_) status_ = write_out();
  return status_;
}

absl::Status SpoolWriter::write_out() {
  if (buffer_.empty()) return absl::OkStatus();
  auto reserved = spool_->reserve(buffer_.size());
  if (!reserved.ok()) return reserved.status();
  auto& [segment, offset] = *reserved;
  size_t done = 0;
  while (done < buffer_.size()) {
    const ssize_t n = ::pwrite(segment->fd(), buffer_.data() + done, buffer_.size() - done,
                               static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno_status("write spool segment", errno);
    }
    done += static_cast<size_t>(n);
  }
  if (!extents_.empty() && extents_.back().segment == segment->id() &&
      extents_.back().offset + extents_.back().length == offset) {
    extents_.back().length += buffer_.size();
  } else {
    extents_.push_back({segment->id(), offset, buffer_.size()});
  }
  if (segments_.empty() || segments_.back() != segment) segments_.push_back(segment);
  buffer_.clear();
  if (buffer_.capacity() > buffer_limit_) buffer_.shrink_to_fit();
  return absl::OkStatus();
}

Spool::Spool(SpoolOptions options) : options_(std::move(options)) {}

Spool::~Spool() { close(); }

std::string Spool::segment_path(uint64_t id) const {
  char name[32];
  std::snprintf(name, sizeof name, "/segments/%016llx.seg", static_cast<unsigned long long>(id));
  return options_.path + name;
}

absl::StatusOr<std::unique_ptr<Spool>> Spool::open(const SpoolOptions& options) {
  std::unique_ptr<Spool> spool(new Spool(options));
  // The parents too: the default "var/spool" starts from an empty checkout.
  std::error_code fs_error;
  std::filesystem::create_directories(options.path + "/segments", fs_error);
  if (fs_error) return errno_status("create " + options.path + "/segments", fs_error.value());
  rocksdb::DB* db = nullptr;
  const rocksdb::Status s = rocksdb::DB::Open(db_options(), options.path + "/db", &db);
  if (!s.ok()) return from_rocks(s, "open spool database " + options.path + "/db");
  spool->db_ = db;
  if (absl::Status st = spool->recover(); !st.ok()) return st;
  spool->flusher_ = std::thread([p = spool.get()] { p->flusher_loop(); });
  return spool;
}

absl::Status Spool::recover() {
  uint64_t count = 0;
  uint64_t max_id = 0;
  std::map<uint64_t, uint64_t> live;
  absl::Status s = scan_records(db_, [&](const MessageRecord& r) {
    ++count;
    max_id = std::max<uint64_t>(max_id, std::strtoull(r.id.c_str(), nullptr, 16));
    std::set<uint64_t> segs;
    for (const Extent& x : r.extents) segs.insert(x.segment);
    for (uint64_t seg : segs) ++live[seg];
  });
  if (!s.ok()) return s;
  // Segments that no committed record refers to hold only messages that
  // were never acknowledged: drop them.
  uint64_t max_segment = 0;
  if (DIR* d = ::opendir((options_.path + "/segments").c_str())) {
    while (dirent* e = ::readdir(d)) {
      const std::string name = e->d_name;
      if (name.size() != 20 || name.substr(16) != ".seg") continue;
      const uint64_t seg = std::strtoull(name.c_str(), nullptr, 16);
      max_segment = std::max(max_segment, seg);
      if (!live.count(seg)) ::unlink(segment_path(seg).c_str());
    }
    ::closedir(d);
  }
  messages_ = count;
  last_id_ = max_id;
  absl::MutexLock lock(&segments_mu_);
  live_ = std::move(live);
  next_segment_id_ = max_segment + 1;
  return open_new_segment_locked();
}

absl::Status Spool::open_new_segment_locked() {
  const uint64_t id = next_segment_id_++;
  const std::string path = segment_path(id);
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
  if (fd < 0) return errno_status("create " + path, errno);
  // The new file's directory entry must survive a crash too.
  const int dfd = ::open((options_.path + "/segments").c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
  std::shared_ptr<Segment> old = std::move(active_);
  active_ = std::make_shared<Segment>(id, fd, path);
  for (auto it = open_.begin(); it != open_.end();) {
    it = it->second.expired() ? open_.erase(it) : std::next(it);
  }
  open_[id] = active_;
  if (old && !live_.count(old->id())) retire_segment_locked(old->id());
  return absl::OkStatus();
}

absl::StatusOr<std::pair<std::shared_ptr<Segment>, uint64_t>> Spool::reserve(uint64_t length) {
  absl::MutexLock lock(&segments_mu_);
  if (active_->end() + length > options_.segment_bytes && active_->end() > 0) {
    if (absl::Status s = open_new_segment_locked(); !s.ok()) return s;
  }
  return std::make_pair(active_, active_->reserve(length));
}

std::string Spool::next_id() {
  // Microseconds since the epoch, bumped to stay unique and increasing; in
  // hex it sorts by arrival. Recovery starts above every stored id.
  const uint64_t now = static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::microseconds>(
                                                 std::chrono::system_clock::now().time_since_epoch())
                                                 .count());
  uint64_t last = last_id_.load();
  uint64_t id;
  do {
    id = std::max(now, last + 1);
  } while (!last_id_.compare_exchange_weak(last, id));
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llX", static_cast<unsigned long long>(id));
  return buf;
}

absl::Status Spool::check_space() {
  struct statvfs st;
  if (::statvfs(options_.path.c_str(), &st) != 0) return errno_status("statvfs " + options_.path, errno);
  const uint64_t free_bytes = static_cast<uint64_t>(st.f_bavail) * st.f_frsize;
  const bool low = free_bytes < options_.min_free_bytes;
  low_space_.store(low);
  space_checked_ms_.store(std::chrono::duration_cast<std::chrono::milliseconds>(
                              std::chrono::steady_clock::now().time_since_epoch())
                              .count());
  if (low) {
    return absl::ResourceExhaustedError("spool file system has " + std::to_string(free_bytes) +
                                        " bytes free, below spool.min_free_bytes");
  }
  return absl::OkStatus();
}

bool Spool::accepting() {
  if (closed_.load() || db_broken_.load()) return false;
  if (messages_.load() + in_flight_.load() >= options_.max_messages) return false;
  // The flusher refreshes the free-space state on every batch; refresh it
  // here too when it is older than a quarter second (an idle spool).
  const int64_t now_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                             std::chrono::steady_clock::now().time_since_epoch())
                             .count();
  if (now_ms - space_checked_ms_.load() > 250) (void)check_space();
  return !low_space_.load();
}

absl::StatusOr<std::unique_ptr<SpoolWriter>> Spool::begin_message() {
  if (closed_.load()) return absl::UnavailableError("spool is closed");
  if (db_broken_.load()) return absl::UnavailableError("spool database failed earlier");
  if (messages_.load() + in_flight_.load() >= options_.max_messages) {
    return absl::ResourceExhaustedError("queue is full");
  }
  if (!accepting()) return absl::ResourceExhaustedError("spool file system is low on space");
  in_flight_.fetch_add(1);
  return std::unique_ptr<SpoolWriter>(new SpoolWriter(this, next_id(), options_.writer_buffer));
}

void Spool::commit(std::unique_ptr<SpoolWriter> writer, MessageRecord record, CommitCallback done) {
  commit(std::move(writer), std::move(record), Meta(), std::move(done));
}

void Spool::commit(std::unique_ptr<SpoolWriter> writer, MessageRecord record, Meta meta, CommitCallback done) {
  if (writer->status_.ok()) writer->status_ = writer->write_out();
  if (!writer->status_.ok()) {
    done(writer->status_);
    return;
  }
  record.id = writer->id_;
  record.size = writer->size_;
  record.extents = writer->extents_;
  absl::MutexLock lock(&pending_mu_);
  if (stopping_) {
    done(absl::UnavailableError("spool is closing"));
    return;
  }
  pending_.push_back(Pending{std::move(writer), std::move(record), std::move(done), std::move(meta)});
}

absl::StatusOr<std::string> Spool::commit_and_wait(std::unique_ptr<SpoolWriter> writer, MessageRecord record) {
  absl::Mutex mu;
  std::optional<absl::StatusOr<std::string>> result;
  commit(std::move(writer), std::move(record), [&](absl::StatusOr<std::string> id) {
    absl::MutexLock lock(&mu);
    result = std::move(id);
  });
  absl::MutexLock lock(&mu);
  mu.Await(absl::Condition(+[](std::optional<absl::StatusOr<std::string>>* r) { return r->has_value(); }, &result));
  return *std::move(result);
}

void Spool::flusher_loop() {
  std::vector<Pending> batch;
  while (true) {
    {
      absl::MutexLock lock(&pending_mu_);
      pending_mu_.Await(absl::Condition(
          +[](Spool* s) ABSL_NO_THREAD_SAFETY_ANALYSIS { return s->stopping_ || !s->pending_.empty(); },
          this));
      if (pending_.empty() && stopping_) return;
      batch.swap(pending_);
    }
    gather_siblings(batch);
    flush_batch(batch);
    batch.clear();
  }
}

// Waits (bounded by commit_delay) for messages that are still being
// received to reach commit, so that one sync covers them too. Writers in
// flight that are not in this batch are the siblings worth waiting for.
void Spool::gather_siblings(std::vector<Pending>& batch) {
  if (options_.commit_delay.count() <= 0) return;
  const absl::Time deadline = absl::Now() + absl::FromChrono(options_.commit_delay);
  absl::MutexLock lock(&pending_mu_);
  while (!stopping_) {
    const uint64_t in_flight = in_flight_.load();
    if (in_flight <= batch.size() + pending_.size()) break;  // nobody else is coming
    struct Args {
      Spool* spool;
      size_t want;
    } args{this, static_cast<size_t>(in_flight - batch.size())};
    const bool all_here = pending_mu_.AwaitWithDeadline(
        absl::Condition(+[](Args* a) ABSL_NO_THREAD_SAFETY_ANALYSIS {
          return a->spool->stopping_ || a->spool->pending_.size() >= a->want;
        }, &args),
        deadline);
    for (Pending& p : pending_) batch.push_back(std::move(p));
    pending_.clear();
    if (!all_here) break;  // the delay is spent
  }
  for (Pending& p : pending_) batch.push_back(std::move(p));
  pending_.clear();
}

void Spool::flush_batch(std::vector<Pending>& batch) {
  const auto started = std::chrono::steady_clock::now();
  absl::Status status;
  // 1. Bodies: one fdatasync per segment touched by the batch.
  std::set<Segment*> synced;
  for (Pending& p : batch) {
    for (const auto& seg : p.writer->segments_) {
      if (!status.ok() || !synced.insert(seg.get()).second) continue;
      if (::fdatasync(seg->fd()) != 0) status = errno_status("sync spool segment", errno);
    }
  }
  // 2. Envelopes: one synced RocksDB batch. RocksDB must never meet a full
  // disk: after a failed WAL write this RocksDB (7.8, built with
  // assertions) aborts on the next WAL operation and Resume() does not
  // help, so the batch is refused while free space is below the reserve.
  if (status.ok() && db_broken_.load()) status = absl::UnavailableError("spool database failed earlier");
  if (status.ok()) status = check_space();
  if (status.ok()) {
    rocksdb::WriteBatch wb;
    for (const Pending& p : batch) {
      wb.Put(kMessagePrefix + p.record.id, encode_record(p.record));
      for (const auto& [key, value] : p.meta) wb.Put(kMetaPrefix + key, value);
    }
    rocksdb::WriteOptions wo;
    wo.sync = true;
    status = from_rocks(db_->Write(wo, &wb), "commit spool records");
    if (!status.ok() && !db_broken_.exchange(true) && options_.on_fatal) options_.on_fatal(status);
  }
  if (status.ok()) {
    absl::MutexLock lock(&segments_mu_);
    for (const Pending& p : batch) {
      for (const auto& seg : p.writer->segments_) {
        ++live_[seg->id()];
        seg->keep();
      }
    }
  }
  if (status.ok()) {
    messages_.fetch_add(batch.size());
    commits_.fetch_add(batch.size());
    batches_.fetch_add(1);
    if (options_.on_batch) {
      options_.on_batch(batch.size(),
                        std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
    }
  }
  // The queue learns of each message before its sender hears OK, so that
  // an acknowledged id is always known to the queue (and its API).
  if (status.ok() && options_.on_committed) {
    for (const Pending& p : batch) options_.on_committed(p.record);
  }
  for (Pending& p : batch) {
    p.writer.reset();  // counted in messages_ now (or failed)
    if (status.ok()) {
      p.done(p.record.id);
    } else {
      p.done(status);
    }
  }
}

absl::Status Spool::remove(const std::string& id) {
  auto rec = get(id);
  if (!rec.ok()) return rec.status();
  // Not synced: a removal lost in a crash only repeats a delivery, which
  // at-least-once allows; a sync per removal would cost a disk flush per
  // message (Postfix, too, unlinks queue files without fsync).
  rocksdb::WriteOptions wo;
  wo.sync = false;
  rocksdb::WriteBatch wb;
  wb.Delete(kMessagePrefix + id);
  wb.Delete(kStatePrefix + id);
  if (absl::Status s = from_rocks(db_->Write(wo, &wb), "remove message"); !s.ok()) return s;
  messages_.fetch_sub(1);
  release_segments(rec->extents);
  return absl::OkStatus();
}

void Spool::release_segments(const std::vector<Extent>& extents) {
  std::set<uint64_t> segs;
  for (const Extent& x : extents) segs.insert(x.segment);
  absl::MutexLock lock(&segments_mu_);
  for (uint64_t seg : segs) {
    auto it = live_.find(seg);
    if (it == live_.end() || --it->second > 0) continue;
    live_.erase(it);
    if (active_ && active_->id() == seg) continue;
    retire_segment_locked(seg);
  }
}

void Spool::retire_segment_locked(uint64_t id) {
  auto it = open_.find(id);
  if (it != open_.end()) {
    if (auto seg = it->second.lock()) {
      seg->unlink_on_close();  // a writer still holds it
      return;
    }
  }
  ::unlink(segment_path(id).c_str());
}

absl::StatusOr<MessageRecord> Spool::get(const std::string& id) const { return get_record(db_, id); }

absl::Status Spool::put_state(const std::string& id, std::string_view state) {
  if (db_broken_.load()) return absl::UnavailableError("spool database failed earlier");
  if (absl::Status s = check_space(); !s.ok()) return s;  // RocksDB must not meet a full disk
  rocksdb::WriteOptions wo;
  wo.sync = true;  // an outcome is durable before anything acts on it
  const absl::Status s = from_rocks(db_->Put(wo, kStatePrefix + id, rocksdb::Slice(state.data(), state.size())),
                                    "store delivery state");
  if (!s.ok() && !db_broken_.exchange(true) && options_.on_fatal) options_.on_fatal(s);
  return s;
}

absl::StatusOr<std::string> Spool::get_state(const std::string& id) const {
  std::string value;
  const rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), kStatePrefix + id, &value);
  if (s.IsNotFound()) return absl::NotFoundError("no state for " + id);
  if (!s.ok()) return from_rocks(s, "read delivery state");
  return value;
}

absl::Status Spool::put_meta(const std::string& key, std::string_view value) {
  if (db_broken_.load()) return absl::UnavailableError("spool database failed earlier");
  if (absl::Status s = check_space(); !s.ok()) return s;
  rocksdb::WriteOptions wo;
  wo.sync = true;
  const absl::Status s =
      from_rocks(db_->Put(wo, kMetaPrefix + key, rocksdb::Slice(value.data(), value.size())), "store " + key);
  if (!s.ok() && !db_broken_.exchange(true) && options_.on_fatal) options_.on_fatal(s);
  return s;
}

absl::StatusOr<std::string> Spool::get_meta(const std::string& key) const {
  std::string value;
  const rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), kMetaPrefix + key, &value);
  if (s.IsNotFound()) return absl::NotFoundError("no " + key);
  if (!s.ok()) return from_rocks(s, "read " + key);
  return value;
}

absl::Status Spool::delete_meta(const std::string& key) {
  if (db_broken_.load()) return absl::UnavailableError("spool database failed earlier");
  if (absl::Status s = check_space(); !s.ok()) return s;
  rocksdb::WriteOptions wo;
  wo.sync = false;
  const absl::Status s = from_rocks(db_->Delete(wo, kMetaPrefix + key), "delete " + key);
  if (!s.ok() && !db_broken_.exchange(true) && options_.on_fatal) options_.on_fatal(s);
  return s;
}

absl::Status Spool::for_each_meta(const std::string& prefix,
                                  const std::function<void(const std::string&, const std::string&)>& fn) const {
  const std::string start = kMetaPrefix + prefix;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  for (it->Seek(start); it->Valid() && it->key().starts_with(start); it->Next()) {
    fn(it->key().ToString().substr(sizeof(kMetaPrefix) - 1), it->value().ToString());
  }
  return from_rocks(it->status(), "scan " + prefix);
}

absl::StatusOr<std::string> Spool::read_body(const MessageRecord& record) const {
  std::string out;
  if (absl::Status s = read_extents(options_.path, record, out); !s.ok()) return s;
  return out;
}

absl::StatusOr<std::string> Spool::read_prefix(const MessageRecord& record, size_t limit) const {
  MessageRecord head = record;
  head.extents.clear();
  uint64_t left = limit;
  for (const Extent& x : record.extents) {
    if (left == 0) break;
    Extent part = x;
    part.length = std::min<uint64_t>(x.length, left);
    left -= part.length;
    head.extents.push_back(part);
  }
  head.size = limit - left;
  std::string out;
  if (absl::Status s = read_extents(options_.path, head, out); !s.ok()) return s;
  return out;
}

absl::Status Spool::for_each(const std::function<void(const MessageRecord&)>& fn) const {
  return scan_records(db_, fn);
}

void Spool::close() {
  if (closed_.exchange(true)) return;
  {
    absl::MutexLock lock(&pending_mu_);
    stopping_ = true;
  }
  if (flusher_.joinable()) flusher_.join();
  {
    absl::MutexLock lock(&segments_mu_);
    if (active_ && !live_.count(active_->id())) active_->unlink_on_close();
    active_.reset();
  }
  if (db_ != nullptr) {
    db_->Close();
    delete db_;
    db_ = nullptr;
  }
}

absl::StatusOr<std::unique_ptr<SpoolReader>> SpoolReader::open(const std::string& path) {
  std::unique_ptr<SpoolReader> r(new SpoolReader());
  r->path_ = path;
  rocksdb::Options o;
  const rocksdb::Status s = rocksdb::DB::OpenForReadOnly(o, path + "/db", &r->db_);
  if (!s.ok()) return from_rocks(s, "open spool " + path);
  return r;
}

SpoolReader::~SpoolReader() { delete db_; }

absl::Status SpoolReader::for_each(const std::function<void(const MessageRecord&)>& fn) const {
  return scan_records(db_, fn);
}

absl::StatusOr<MessageRecord> SpoolReader::get(const std::string& id) const {
  return get_record(db_, id);
}

absl::StatusOr<std::string> SpoolReader::read_body(const MessageRecord& record) const {
  std::string out;
  if (absl::Status s = read_extents(path_, record, out); !s.ok()) return s;
  return out;
}

}  // namespace smtpd::queue
