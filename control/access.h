// Who may call the control plane: bearer tokens from a file, each with a
// role. `submit` may call SendMail; `read` may list, get, watch, read stats
// and the policy; `admin` may do everything.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace smtpd::control {

enum class Role { kSubmit, kRead, kAdmin };
const char* to_string(Role r);

struct Caller {
  std::string name;  // the token's name, "loopback" or "client-certificate"
  Role role = Role::kAdmin;
};

class AccessList {
 public:
  // The tokens file: one "TOKEN ROLE [NAME]" per line, '#' comments. A
  // token has at least 16 characters.
  static absl::StatusOr<AccessList> load(const std::string& path);
  static absl::StatusOr<AccessList> parse(std::string_view text, const std::string& origin);

  bool empty() const { return tokens_.empty(); }
  // The caller for an "authorization" header value ("Bearer TOKEN");
  // UNAUTHENTICATED when missing or unknown. Compares in constant time.
  absl::StatusOr<Caller> authenticate(std::string_view authorization) const;
  // PERMISSION_DENIED unless `caller` may act as `needed`.
  static absl::Status permit(const Caller& caller, Role needed);

 private:
  struct Token {
    std::string secret;
    Caller caller;
  };
  std::vector<Token> tokens_;
};

}  // namespace smtpd::control
