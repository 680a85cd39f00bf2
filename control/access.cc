#include "control/access.h"

#include <openssl/crypto.h>

#include <fstream>
#include <sstream>

namespace smtpd::control {

const char* to_string(Role r) {
  switch (r) {
    case Role::kSubmit: return "submit";
    case Role::kRead: return "read";
    case Role::kAdmin: return "admin";
  }
  return "admin";
}

absl::StatusOr<AccessList> AccessList::load(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::InvalidArgumentError("control.tokens_file: cannot read '" + path + "'");
  std::stringstream ss;
  ss << in.rdbuf();
  return parse(ss.str(), path);
}

absl::StatusOr<AccessList> AccessList::parse(std::string_view text, const std::string& origin) {
  AccessList list;
  std::istringstream in{std::string(text)};
  std::string line;
  for (int n = 1; std::getline(in, line); ++n) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    const size_t start = line.find_first_not_of(" \t");
    if (start == std::string::npos || line[start] == '#') continue;
    std::istringstream fields(line);
    std::string secret, role, name, extra;
    fields >> secret >> role >> name >> extra;
    const std::string where = "control.tokens_file: " + origin + ":" + std::to_string(n) + ": ";
    if (!extra.empty()) return absl::InvalidArgumentError(where + "expected \"TOKEN ROLE [NAME]\"");
    if (secret.size() < 16) return absl::InvalidArgumentError(where + "a token needs at least 16 characters");
    Token t;
    t.secret = secret;
    if (role == "submit") {
      t.caller.role = Role::kSubmit;
    } else if (role == "read") {
      t.caller.role = Role::kRead;
    } else if (role == "admin") {
      t.caller.role = Role::kAdmin;
    } else {
      return absl::InvalidArgumentError(where + "role '" + role + "' is not one of submit, read, admin");
    }
    t.caller.name = name.empty() ? "token-" + std::to_string(n) : name;
    for (const Token& other : list.tokens_) {
      if (other.secret == secret) return absl::InvalidArgumentError(where + "the same token appears twice");
    }
    list.tokens_.push_back(std::move(t));
  }
  return list;
}

absl::StatusOr<Caller> AccessList::authenticate(std::string_view authorization) const {
  constexpr std::string_view kBearer = "Bearer ";
  if (authorization.size() <= kBearer.size() || authorization.substr(0, kBearer.size()) != kBearer) {
    return absl::UnauthenticatedError("missing \"authorization: Bearer TOKEN\" metadata");
  }
  const std::string_view presented = authorization.substr(kBearer.size());
  const Caller* found = nullptr;
  for (const Token& t : tokens_) {
    // Every token is compared, each in constant time: no timing oracle.
    const bool same = t.secret.size() == presented.size() &&
                      CRYPTO_memcmp(t.secret.data(), presented.data(), presented.size()) == 0;
    if (same) found = &t.caller;
  }
  if (found == nullptr) return absl::UnauthenticatedError("unknown token");
  return *found;
}

absl::Status AccessList::permit(const Caller& caller, Role needed) {
  if (caller.role == Role::kAdmin || caller.role == needed) return absl::OkStatus();
  return absl::PermissionDeniedError(std::string("role '") + to_string(caller.role) + "' of '" + caller.name +
                                     "' may not do this (needs '" + to_string(needed) + "')");
}

}  // namespace smtpd::control
