#include "lib/delivery/maildir.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>

namespace smtpd::delivery {
namespace {

std::atomic<uint64_t> g_counter{0};

smtp::Reply io_error(const std::string& what, int err) {
  // A full disk or quota is temporary (RFC 3463 4.2.2 / 4.3.1); so is any
  // other local I/O problem, which an operator can fix.
  if (err == ENOSPC || err == EDQUOT) return smtp::Reply(452, "4.2.2", what + ": " + std::strerror(err));
  return smtp::Reply(451, "4.3.0", what + ": " + std::strerror(err));
}

bool make_dir(const std::string& path) { return ::mkdir(path.c_str(), 0700) == 0 || errno == EEXIST; }

bool sync_dir(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return false;
  const bool ok = ::fsync(fd) == 0;
  ::close(fd);
  return ok;
}

bool write_all(int fd, std::string_view data) {
  while (!data.empty()) {
    const ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

// CRLF -> LF, in bounded pieces.
bool write_lf(int fd, std::string_view body) {
  std::string buf;
  buf.reserve(64 * 1024);
  for (size_t i = 0; i < body.size(); ++i) {
    if (body[i] == '\r' && i + 1 < body.size() && body[i + 1] == '\n') continue;
    buf += body[i];
    if (buf.size() >= 64 * 1024) {
      if (!write_all(fd, buf)) return false;
      buf.clear();
    }
  }
  return write_all(fd, buf);
}

}  // namespace

MaildirTransport::MaildirTransport(std::string root, std::string hostname)
    : root_(std::move(root)), hostname_(std::move(hostname)) {
  for (char& c : hostname_) {
    if (c == '/' || c == ':') c = '_';  // Maildir name rules
  }
}

std::string MaildirTransport::mailbox_name(std::string_view local_part) {
  std::string name;
  for (char c : local_part) {
    if (c == '/' || c == '\0' || c == '"' || c == '\\') return "";
    name += (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
  }
  if (name.empty() || name[0] == '.') return "";  // no "", ".", "..", hidden folders
  return name;
}

std::string MaildirTransport::unique_name(size_t size) {
  // time.MusecPpidQcounter.host,S=size (Maildir++ size field)
  const auto now = std::chrono::system_clock::now().time_since_epoch();
  const auto us = std::chrono::duration_cast<std::chrono::microseconds>(now).count();
  return std::to_string(us / 1000000) + ".M" + std::to_string(us % 1000000) + "P" + std::to_string(::getpid()) +
         "Q" + std::to_string(g_counter.fetch_add(1)) + "." + hostname_ + ",S=" + std::to_string(size);
}

DeliveryOutcome MaildirTransport::deliver(const MaildirMessage& m) {
  const std::string box = mailbox_name(m.local_part);
  if (box.empty()) {
    return DeliveryOutcome::from_reply(smtp::Reply(550, "5.1.3", "local part cannot name a mailbox"));
  }
  const std::string dir = root_ + "/" + box;
  std::error_code fs_error;
  std::filesystem::create_directories(root_, fs_error);  // parents too (default var/mail)
  if (fs_error) return DeliveryOutcome::from_reply(io_error("create " + root_, fs_error.value()));
  // new/ last: a Maildir that has new/ is complete for any reader.
  for (const std::string& d : {dir, dir + "/tmp", dir + "/cur", dir + "/new"}) {
    if (!make_dir(d)) return DeliveryOutcome::from_reply(io_error("create " + d, errno));
  }
  const std::string headers = "Return-Path: <" + m.sender + ">\nDelivered-To: " + m.recipient + "\n";
  const std::string name = unique_name(headers.size() + m.body.size());
  const std::string tmp = dir + "/tmp/" + name;
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) return DeliveryOutcome::from_reply(io_error("create " + tmp, errno));
  bool ok = write_all(fd, headers) && write_lf(fd, m.body) && ::fsync(fd) == 0;
  const int err = errno;
  ok = (::close(fd) == 0) && ok;
  if (!ok) {
    ::unlink(tmp.c_str());
    return DeliveryOutcome::from_reply(io_error("write " + tmp, err));
  }
  const std::string final_path = dir + "/new/" + name;
  if (::rename(tmp.c_str(), final_path.c_str()) != 0 || !sync_dir(dir + "/new")) {
    const int e = errno;
    ::unlink(tmp.c_str());
    return DeliveryOutcome::from_reply(io_error("deliver into " + dir + "/new", e));
  }
  return DeliveryOutcome::from_reply(smtp::Reply(250, "2.0.0", "delivered to maildir " + box));
}

}  // namespace smtpd::delivery
