// The SMTP front end: listeners for the smtp, submission and smtps modes on
// a pool of I/O threads (one single-threaded io_context each), one
// coroutine per connection that stays on its context (an implicit strand),
// driving a lib/smtp ServerSession. Asio stays inside server.cc so that
// this header is cheap to include.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "lib/config/config.h"

namespace smtpd::queue {
class Spool;
}
namespace smtpd::policy {
class PolicyStore;
}

namespace smtpd::net {

class UserDatabase;

struct ServerDeps {
  const config::Config* config = nullptr;
  queue::Spool* spool = nullptr;
  policy::PolicyStore* policy = nullptr;
  const UserDatabase* users = nullptr;  // may be empty: AUTH not offered
  // Called once when a drain begins (SIGTERM/SIGINT), before the
  // listeners close: the control plane's health goes NOT_SERVING.
  std::function<void()> on_drain;
  // Called on SIGHUP (on the control thread; it should hand the work off).
  std::function<void()> on_reload;
};

class Server {
 public:
  explicit Server(ServerDeps deps);
  ~Server();

  // Binds every listener (logging the bound address of each) and starts
  // accepting; returns the first bind or TLS error.
  absl::Status start();
  // Runs the I/O threads until stopped; handles SIGTERM/SIGINT with a
  // graceful drain: stop accepting, 421 to idle sessions, let transactions
  // in flight finish within server.drain_timeout, then close the rest.
  void run();
  // A new server certificate for sessions that start TLS from now on
  // (empty files: a new self-signed one). The old one stays on error.
  absl::Status reload_tls(const std::string& cert_file, const std::string& key_file, const std::string& hostname);

  struct Impl;  // public so that server.cc's connection class can name it

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace smtpd::net
