// SMTP AUTH credentials: a users file of "user:hash" lines with Argon2
// hashes (libargon2, "$argon2id$..." encoded form), checked without
// revealing whether the user exists, and a per-client-address throttle
// that delays replies after repeated failures.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <string>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace smtpd::net {

class UserDatabase {
 public:
  // Parses the users file; blank lines and lines starting with '#' are
  // skipped. Every hash must be an Argon2 encoded hash.
  static absl::StatusOr<UserDatabase> load(const std::string& path);
  bool empty() const { return users_.empty(); }
  // Blocking (tens of milliseconds): call off the I/O threads.
  bool verify(const std::string& user, const std::string& password) const;

 private:
  std::map<std::string, std::string> users_;
};

// Hashes a password as Argon2id with OWASP's minimum parameters
// (19 MiB, 2 passes, 1 lane) and a random salt.
absl::StatusOr<std::string> hash_password(const std::string& password);

// Growing delay after failed AUTH attempts from one client address:
// 0 for the first failure, then 1 s, 2 s, 4 s ... up to 16 s. A success
// clears the address; entries expire after 15 minutes.
class AuthThrottle {
 public:
  std::chrono::milliseconds failure(const std::string& address);
  void success(const std::string& address);
  // After kLockoutFailures failures within kLockoutWindow, an address is
  // refused AUTH (without a password check) until the window passes.
  bool locked_out(const std::string& address);
  void set_lockout_failures(int n) { lockout_failures_ = n; }
  static constexpr std::chrono::minutes kLockoutWindow{15};

 private:
  struct Entry {
    int failures = 0;
    std::chrono::steady_clock::time_point last;
  };
  absl::Mutex mu_;
  std::map<std::string, Entry> entries_ ABSL_GUARDED_BY(mu_);
  std::atomic<int> lockout_failures_{10};
};

}  // namespace smtpd::net
