#include "lib/net/auth.h"

#include <argon2.h>
#include <openssl/rand.h>

#include <fstream>

namespace smtpd::net {
namespace {

constexpr uint32_t kTimeCost = 2;
constexpr uint32_t kMemoryKiB = 19 * 1024;
constexpr uint32_t kLanes = 1;
constexpr size_t kSaltLength = 16;
constexpr size_t kHashLength = 32;

bool hash_type(const std::string& hash, argon2_type& type) {
  if (hash.rfind("$argon2id$", 0) == 0) type = Argon2_id;
  else if (hash.rfind("$argon2i$", 0) == 0) type = Argon2_i;
  else if (hash.rfind("$argon2d$", 0) == 0) type = Argon2_d;
  else return false;
  return true;
}

}  // namespace

absl::StatusOr<UserDatabase> UserDatabase::load(const std::string& path) {
  UserDatabase db;
  std::ifstream in(path);
  if (!in) return absl::InvalidArgumentError("auth.users_file: cannot read " + path);
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    ++n;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty() || line[0] == '#') continue;
    const size_t colon = line.find(':');
    argon2_type type;
    if (colon == std::string::npos || colon == 0 || !hash_type(line.substr(colon + 1), type)) {
      return absl::InvalidArgumentError("auth.users_file: " + path + " line " + std::to_string(n) +
                                        ": expected user:$argon2id$... (see smtpd hash-password)");
    }
    db.users_[line.substr(0, colon)] = line.substr(colon + 1);
  }
  return db;
}

bool UserDatabase::verify(const std::string& user, const std::string& password) const {
  // A fixed hash for unknown users costs the same time as a real check.
  static const std::string kDummy = [] {
    auto h = hash_password("not a password");
    return h.ok() ? *h : std::string();
  }();
  auto it = users_.find(user);
  const std::string& hash = it == users_.end() ? kDummy : it->second;
  argon2_type type;
  if (!hash_type(hash, type)) return false;
  const bool ok = argon2_verify(hash.c_str(), password.data(), password.size(), type) == ARGON2_OK;
  return ok && it != users_.end();
}

absl::StatusOr<std::string> hash_password(const std::string& password) {
  unsigned char salt[kSaltLength];
  if (RAND_bytes(salt, sizeof salt) != 1) return absl::InternalError("no random salt");
  const size_t len = argon2_encodedlen(kTimeCost, kMemoryKiB, kLanes, kSaltLength, kHashLength, Argon2_id);
  std::string encoded(len, '\0');
  const int rc = argon2id_hash_encoded(kTimeCost, kMemoryKiB, kLanes, password.data(), password.size(),
                                       salt, sizeof salt, kHashLength, encoded.data(), len);
  if (rc != ARGON2_OK) return absl::InternalError(argon2_error_message(rc));
  encoded.resize(std::strlen(encoded.c_str()));
  return encoded;
}

std::chrono::milliseconds AuthThrottle::failure(const std::string& address) {
  const auto now = std::chrono::steady_clock::now();
  absl::MutexLock lock(&mu_);
  for (auto it = entries_.begin(); it != entries_.end();) {
    it = now - it->second.last > kLockoutWindow ? entries_.erase(it) : std::next(it);
  }
  Entry& e = entries_[address];
  e.last = now;
  const int n = ++e.failures;
  if (n <= 1) return std::chrono::milliseconds(0);
  return std::chrono::milliseconds(1000LL << std::min(n - 2, 4));
}

bool AuthThrottle::locked_out(const std::string& address) {
  const auto now = std::chrono::steady_clock::now();
  absl::MutexLock lock(&mu_);
  auto it = entries_.find(address);
  return it != entries_.end() && it->second.failures >= lockout_failures_.load() &&
         now - it->second.last < kLockoutWindow;
}

void AuthThrottle::success(const std::string& address) {
  absl::MutexLock lock(&mu_);
  entries_.erase(address);
}

}  // namespace smtpd::net
