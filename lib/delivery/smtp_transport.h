// Network delivery for "relay:HOST:PORT" (a smarthost, with optional AUTH)
// and "lmtp:HOST:PORT" (RFC 2033) routes: an Asio coroutine per delivery
// that connects, drives the sans-I/O smtp::ClientSession and reports one
// outcome per recipient. Runs on its own I/O thread; every read, write,
// connect and handshake is raced against the RFC 5321 4.5.3.2 timeouts.
// Asio stays in smtp_transport.cc.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "lib/queue/delivery_types.h"
#include "lib/queue/spool.h"
#include "lib/smtp/client_session.h"

namespace smtpd::delivery {

struct SmtpTransportOptions {
  std::string helo_name = "localhost";
  smtp::TlsPolicy tls = smtp::TlsPolicy::kMay;
  // Per recipient domain (the policy's outbound TLS rules); empty: `tls`.
  std::function<smtp::TlsPolicy(const std::string& domain)> tls_for;
  std::string relay_user;       // AUTH for relay: routes; empty: none
  std::string relay_password;
  int connect_timeout_seconds = 30;
  // MX routing: DNS servers ("ip:port"; empty: /etc/resolv.conf) and the
  // port MX hosts are reached on (25; tests use a free port).
  std::vector<std::string> dns_servers;
  std::string mx_port = "25";
};

class SmtpTransport {
 public:
  SmtpTransport(const queue::Spool& spool, SmtpTransportOptions options);
  ~SmtpTransport();
  // route is "relay:HOST:PORT" or "lmtp:HOST:PORT". Never blocks.
  void deliver(queue::DeliveryRequest request, queue::DeliveryCallback done);

  // One server to try: its name (for SNI, certificate checks and DSNs),
  // and an address or name to connect to.
  struct Target {
    std::string name;
    std::string address;
    std::string port;
  };
  // Tries the targets in order (MX hosts and their addresses): the next
  // one only when a target could not be reached or refused the session
  // before any transaction. Never blocks.
  void deliver_to(queue::DeliveryRequest request, std::vector<Target> targets, queue::DeliveryCallback done);
  // Cancels deliveries in flight (they report 4.3.2 and are retried) and
  // joins the I/O thread.
  void stop();

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace smtpd::delivery
