#include "lib/net/server.h"

#include <openssl/ssl.h>
#include <sys/socket.h>

#include <atomic>
#include <boost/asio.hpp>
#include <boost/asio/ssl.hpp>
#include <map>
#include <optional>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "lib/message/received.h"
#include "lib/net/auth.h"
#include "lib/net/tls.h"
#include "lib/observe/log.h"
#include "lib/observe/metrics.h"
#include "lib/policy/policy.h"
#include "lib/queue/spool.h"
#include "lib/smtp/server_session.h"

namespace smtpd::net {
namespace {

namespace asio = boost::asio;
namespace ssl = boost::asio::ssl;
using tcp = asio::ip::tcp;
using asio::awaitable;
using asio::use_awaitable;
using boost::system::error_code;
using observe::Level;
using observe::LogLine;
using Clock = std::chrono::steady_clock;

constexpr auto kFinalWriteGrace = std::chrono::seconds(10);

int64_t unix_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// Awaitable wrapper of Spool::commit: the flusher thread's callback is
// posted back to the session's io_context.
template <typename Token>
auto async_commit(queue::Spool& spool, std::unique_ptr<queue::SpoolWriter> writer,
                  queue::MessageRecord record, Token&& token) {
  auto initiation = [&spool](auto handler, std::unique_ptr<queue::SpoolWriter> w,
                             queue::MessageRecord rec) {
    auto work = asio::make_work_guard(asio::get_associated_executor(handler));
    spool.commit(std::move(w), std::move(rec),
                 [h = std::move(handler), work = std::move(work)](absl::StatusOr<std::string> r) mutable {
                   auto ex = work.get_executor();
                   asio::post(ex, [h = std::move(h), r = std::move(r)]() mutable {
                     std::move(h)(std::move(r));
                   });
                 });
  };
  return asio::async_initiate<Token, void(absl::StatusOr<std::string>)>(
      std::move(initiation), token, std::move(writer), std::move(record));
}

const char* mode_name(config::ListenerMode m) {
  switch (m) {
    case config::ListenerMode::kSmtp: return "smtp";
    case config::ListenerMode::kSubmission: return "submission";
    case config::ListenerMode::kSmtps: return "smtps";
  }
  return "smtp";
}

struct ListenerState {
  config::Listener config;
  std::optional<tcp::acceptor> acceptor;
};

}  // namespace

class Connection;

struct Server::Impl {
  explicit Impl(ServerDeps d)
      : deps(d), threads(d.config->threads > 0 ? d.config->threads
                                                : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()))),
        blocking(2) {
    // One single-threaded io_context per worker thread: a session lives on
    // one context for its whole life, which serialises it like a strand
    // without the strand's locking, and wakes fewer threads (profiled:
    // cross-thread wakeups of a shared scheduler cost ~5% of CPU).
    for (int i = 0; i < threads; ++i) {
      contexts.push_back(std::make_unique<asio::io_context>(1));
      guards.emplace_back(asio::make_work_guard(*contexts.back()));
    }
  }

  // Context 0 also runs the acceptors, signals and the drain.
  asio::io_context& control() { return *contexts.front(); }
  asio::io_context& next_context() { return *contexts[next_context_index++ % contexts.size()]; }

  ServerDeps deps;
  int threads;
  std::vector<std::unique_ptr<asio::io_context>> contexts;
  std::vector<asio::executor_work_guard<asio::io_context::executor_type>> guards;
  size_t next_context_index = 0;  // used on the control context only
  asio::thread_pool blocking;  // password hashing
  // The server certificate: replaced whole on reload; a session keeps the
  // context it started TLS with.
  absl::Mutex tls_mu;
  std::shared_ptr<ssl::context> tls ABSL_GUARDED_BY(tls_mu);
  std::shared_ptr<ssl::context> tls_context() {
    absl::MutexLock lock(&tls_mu);
    return tls;
  }
  std::vector<std::unique_ptr<ListenerState>> listeners;
  AuthThrottle throttle;
  policy::RateLimiter connection_rate;  // policy: connections per client per minute
  policy::RateLimiter sender_rate;      // policy: messages per sender per minute
  std::atomic<bool> draining{false};
  std::atomic<uint64_t> next_conn_id{1};

  absl::Mutex mu;
  uint64_t open_connections ABSL_GUARDED_BY(mu) = 0;
  std::map<std::string, uint64_t> per_client ABSL_GUARDED_BY(mu);
  std::map<uint64_t, std::weak_ptr<Connection>> connections ABSL_GUARDED_BY(mu);

  awaitable<void> accept_loop(ListenerState& l);
  void start_connection(tcp::socket socket, const tcp::endpoint& remote, const ListenerState& l);
  void begin_drain(int signal);
  void force_close_all();
  void wait_for_idle();
  smtp::SessionSettings settings_for(const config::Listener& l) const;
  void release(uint64_t id, const std::string& client);
};

// One SMTP connection: owns the socket (and TLS stream), the protocol
// machine and the message being stored. Runs on one single-threaded
// io_context for its whole life, so its state needs no locks.
class Connection : public std::enable_shared_from_this<Connection> {
 public:
  Connection(Server::Impl& server, tcp::socket socket, const config::Listener& listener,
             std::string client, uint64_t id)
      : server_(server), socket_(std::move(socket)), timer_(socket_.get_executor()),
        listener_(listener), client_(std::move(client)), id_(id) {}

  awaitable<void> run();
  void drain();
  // A policy update reaches sessions already open from their next
  // transaction on.
  void refresh_policy() {
    const auto snapshot = server_.deps.policy->current();
    if (snapshot->version == policy_version_) return;
    policy_version_ = snapshot->version;
    machine_->set_limits(snapshot->max_message_size, snapshot->max_recipients);
  }
  void force_close() {
    error_code ignored;
    socket_.close(ignored);
  }
  tcp::socket::executor_type socket_executor() { return socket_.get_executor(); }

 private:
  awaitable<bool> read_input();
  size_t drain_socket();
  awaitable<bool> flush();
  awaitable<bool> start_tls();
  void on_mail();
  void on_rcpt();
  void on_data_begin();
  awaitable<void> on_data_end();
  void on_data_abort();
  void abandon_message(const smtp::Reply& reply, const smtp::Envelope& env);
  awaitable<void> on_auth();
  void log_transaction(const smtp::Reply& reply, const std::string& queue_id, bool accepted,
                       const smtp::Envelope& env);

  void set_deadline(std::chrono::milliseconds d) {
    deadline_ = Clock::now() + d;
    // A shorter deadline (the TLS handshake's, after a long command
    // timeout) must not wait for the watchdog's earlier expiry.
    if (watchdog_armed_ && deadline_ < timer_.expiry()) arm_watchdog();
  }
  void arm_watchdog();

  Server::Impl& server_;
  tcp::socket socket_;
  std::shared_ptr<ssl::context> tls_context_;  // outlives tls_ (declared before it)
  std::unique_ptr<ssl::stream<tcp::socket&>> tls_;
  std::vector<char> tls_buffer_;
  char small_buffer_[512];
  asio::steady_timer timer_;
  Clock::time_point deadline_ = Clock::now();
  bool closed_ = false;
  bool timed_out_ = false;
  bool draining_ = false;
  bool waiting_for_command_ = false;
  bool watchdog_armed_ = false;
  config::Listener listener_;
  std::string client_;
  uint64_t policy_version_ = 0;
  uint64_t id_;
  std::optional<smtp::ServerSession> machine_;
  std::unique_ptr<queue::SpoolWriter> writer_;
  int64_t message_started_us_ = 0;
  uint64_t message_size_ = 0;
  std::string tls_version_, tls_cipher_;
  int tls_bits_ = 0;
  uint64_t transactions_ = 0;
  uint64_t bytes_in_ = 0;
};

void Connection::arm_watchdog() {
  watchdog_armed_ = true;
  timer_.expires_at(deadline_);  // cancels a pending wait (its handler sees operation_aborted)
  timer_.async_wait([self = shared_from_this()](error_code ec) {
    if (self->closed_ || ec == asio::error::operation_aborted) return;
    if (Clock::now() >= self->deadline_) {
      // RFC 5321 4.5.3.2: the peer took too long. Cancel the pending I/O;
      // the session loop answers 421 and closes within a short grace.
      self->timed_out_ = true;
      error_code ignored;
      self->socket_.cancel(ignored);
      self->deadline_ = Clock::now() + kFinalWriteGrace;
    }
    self->arm_watchdog();
  });
}

void Connection::drain() {
  draining_ = true;
  if (waiting_for_command_) {
    error_code ignored;
    socket_.cancel(ignored);
  }
}

awaitable<bool> Connection::read_input() {
  const config::Config& cfg = *server_.deps.config;
  const bool data = machine_->timeout_kind() == smtp::TimeoutKind::kData;
  if (data) {
    set_deadline(cfg.data_timeout);  // RFC 5321 4.5.3.2.5: for each block of data
  } else if (!machine_->mid_command_line()) {
    // RFC 5321 4.5.3.2.7: for the whole command line. A client that
    // trickles a line byte by byte does not get a new timeout per byte.
    set_deadline(cfg.command_timeout);
  }
  waiting_for_command_ = !data && !machine_->in_transaction();
  if (draining_ && waiting_for_command_) co_return false;
  size_t n = 0;
  error_code ec;
  if (tls_) {
    std::tie(ec, n) = co_await tls_->async_read_some(asio::buffer(tls_buffer_), asio::as_tuple(use_awaitable));
    if (!ec) machine_->feed(std::string_view(tls_buffer_.data(), n));
  } else {
    // A small read that waits: async_read_some stays on Asio's speculative
    // path (async_wait would cost an epoll_ctl per wait, profiled), and an
    // idle connection holds only this small buffer.
    std::tie(ec, n) = co_await socket_.async_read_some(asio::buffer(small_buffer_), asio::as_tuple(use_awaitable));
    if (!ec) {
      machine_->feed(std::string_view(small_buffer_, n));
      if (n == sizeof small_buffer_) n += drain_socket();
    }
  }
  waiting_for_command_ = false;
  bytes_in_ += n;
  refresh_policy();  // before the machine reads what just arrived
  co_return !ec;
}

// After a full small read more is usually waiting (message data): take it
// with non-blocking reads into a per-thread buffer, bounded per call so a
// fast sender cannot monopolise the thread.
size_t Connection::drain_socket() {
  thread_local char buffer[65536];
  size_t total = 0;
  for (int i = 0; i < 4; ++i) {
    const ssize_t got = ::recv(socket_.native_handle(), buffer, sizeof buffer, MSG_DONTWAIT);
    if (got <= 0) break;  // EAGAIN, EOF or error: the next async read reports it
    machine_->feed(std::string_view(buffer, static_cast<size_t>(got)));
    total += static_cast<size_t>(got);
    if (static_cast<size_t>(got) < sizeof buffer) break;
  }
  return total;
}

awaitable<bool> Connection::flush() {
  std::string& out = machine_->output();
  if (out.empty()) co_return true;
  set_deadline(server_.deps.config->command_timeout);
  error_code ec;
  if (tls_) {
    std::tie(ec, std::ignore) = co_await asio::async_write(*tls_, asio::buffer(out), asio::as_tuple(use_awaitable));
  } else {
    std::tie(ec, std::ignore) = co_await asio::async_write(socket_, asio::buffer(out), asio::as_tuple(use_awaitable));
  }
  out.clear();
  if (out.capacity() > 4096) out.shrink_to_fit();
  co_return !ec;
}

awaitable<bool> Connection::start_tls() {
  tls_context_ = server_.tls_context();
  tls_ = std::make_unique<ssl::stream<tcp::socket&>>(socket_, *tls_context_);
  set_deadline(server_.deps.config->tls_handshake_timeout);
  auto [ec] = co_await tls_->async_handshake(ssl::stream_base::server, asio::as_tuple(use_awaitable));
  if (ec) {
    LogLine(Level::kInfo, "tls_failed").add("conn", id_).add("client", client_).add("error", ec.message()).emit();
    observe::Metrics::get().tls_handshake(listener_.name, "failed");
    observe::Metrics::get().connection_refused(listener_.name, "tls");
    co_return false;
  }
  SSL* ssl = tls_->native_handle();
  tls_version_ = SSL_get_version(ssl);
  observe::Metrics::get().tls_handshake(listener_.name, tls_version_);
  tls_cipher_ = SSL_get_cipher_name(ssl);
  tls_bits_ = SSL_get_cipher_bits(ssl, nullptr);
  tls_buffer_.resize(16384);
  co_return true;
}

void Connection::on_mail() {
  if (!server_.deps.spool->accepting()) {
    // DESIGN.md backpressure: a full queue refuses new mail for now.
    machine_->decide(smtp::Reply(452, "4.3.1", "Insufficient system storage"));
    return;
  }
  const auto snapshot = server_.deps.policy->current();
  const std::string sender = machine_->envelope().sender.str();
  const policy::AccessRule* rule = policy::PolicySnapshot::match(snapshot->sender_access, sender);
  if (rule != nullptr && !rule->allow) {
    LogLine(Level::kInfo, "mail_rejected").add("conn", id_).add("client", client_).add("from", sender)
        .add("reason", "sender access " + rule->pattern).emit();
    machine_->decide(smtp::Reply(rule->code, rule->enhanced, "<" + sender + ">: " + rule->text));
    return;
  }
  if (rule == nullptr && !server_.sender_rate.allow(policy::lower_ascii(sender),
                                                    snapshot->messages_per_sender_per_minute, unix_ms())) {
    LogLine(Level::kInfo, "mail_rejected").add("conn", id_).add("client", client_).add("from", sender)
        .add("reason", "sender rate limit").emit();
    // RFC 5321 4.2.5: 450 is a temporary refusal of the mail transaction;
    // RFC 3463 4.7.1: delivery not authorized (for now).
    machine_->decide(smtp::Reply(450, "4.7.1", "<" + sender + ">: Sender rate limit exceeded, try again later"));
    return;
  }
  machine_->decide(std::nullopt);
}

void Connection::on_rcpt() {
  const smtp::Recipient& r = machine_->pending_recipient();
  const auto snapshot = server_.deps.policy->current();
  const policy::AccessRule* rule = policy::PolicySnapshot::match(snapshot->recipient_access, r.path.str());
  if (rule != nullptr && !rule->allow) {
    LogLine(Level::kInfo, "rcpt_rejected").add("conn", id_).add("client", client_)
        .add("from", machine_->envelope().sender.str()).add("to", r.path.str())
        .add("reason", "recipient access " + rule->pattern).emit();
    machine_->decide(smtp::Reply(rule->code, rule->enhanced, "<" + r.path.str() + ">: " + rule->text));
    return;
  }
  const policy::RelayDecision d = snapshot->decide_recipient(
      r.path.mailbox.domain_lower(), r.path.postmaster, machine_->authenticated(), client_);
  if (d == policy::RelayDecision::kDenied) {
    LogLine(Level::kInfo, "rcpt_rejected").add("conn", id_).add("client", client_)
        .add("from", machine_->envelope().sender.str()).add("to", r.path.str()).add("reason", "relay denied").emit();
    machine_->decide(smtp::Reply(554, "5.7.1", "<" + r.path.str() + ">: Relay access denied"));
    return;
  }
  machine_->decide(std::nullopt);
}

void Connection::on_data_begin() {
  auto writer = server_.deps.spool->begin_message();
  if (!writer.ok()) {
    LogLine(Level::kWarn, "spool_refused").add("conn", id_).add("error", writer.status().ToString()).emit();
    machine_->decide(smtp::Reply(452, "4.3.1", "Insufficient system storage"));
    return;
  }
  writer_ = *std::move(writer);
  const auto now = std::chrono::system_clock::now();
  message_started_us_ = std::chrono::duration_cast<std::chrono::microseconds>(now.time_since_epoch()).count();
  const smtp::Envelope& env = machine_->envelope();
  message::ReceivedInfo info;
  info.helo = machine_->helo_name();
  info.client_address = client_;
  info.by_host = server_.deps.config->hostname;
  info.queue_id = writer_->id();
  info.esmtp = machine_->esmtp();
  info.tls = machine_->in_tls();
  info.tls_version = tls_version_;
  info.tls_cipher = tls_cipher_;
  info.tls_bits = tls_bits_;
  info.auth_user = machine_->auth_user();
  info.smtputf8 = env.smtputf8;
  if (env.recipients.size() == 1) info.single_recipient = env.recipients[0].path.str();
  info.unix_seconds = message_started_us_ / 1000000;
  (void)writer_->append(message::received_header(info));  // errors resurface at commit
  machine_->decide(std::nullopt);
}

awaitable<void> Connection::on_data_end() {
  queue::MessageRecord rec;
  rec.arrival_unix_us = message_started_us_;
  rec.envelope = machine_->envelope();
  rec.client_address = client_;
  rec.helo = machine_->helo_name();
  rec.auth_user = machine_->auth_user();
  rec.protocol = message::with_protocol(machine_->esmtp(), machine_->in_tls(), machine_->authenticated(),
                                        rec.envelope.smtputf8);
  rec.source = listener_.name;
  const std::string id = writer_->id();
  message_size_ = writer_->size();
  auto result = co_await async_commit(*server_.deps.spool, std::move(writer_), std::move(rec), use_awaitable);
  smtp::Reply reply;
  if (result.ok()) {
    reply = smtp::Reply(250, "2.0.0", "Ok: queued as " + *result);
  } else {
    // DESIGN.md: disk full or spool error is 452 4.3.1, never a 250.
    LogLine(Level::kError, "spool_commit_failed").add("conn", id_).add("queue_id", id)
        .add("error", result.status().ToString()).emit();
    reply = smtp::Reply(452, "4.3.1", "Insufficient system storage");
  }
  ++transactions_;
  log_transaction(reply, id, result.ok(), machine_->envelope());
  machine_->decide(reply);
}

void Connection::on_data_abort() {
  // The machine has reset its transaction; log the one that just ended.
  abandon_message(machine_->last_reply(), machine_->last_envelope());
}

void Connection::abandon_message(const smtp::Reply& reply, const smtp::Envelope& env) {
  const std::string id = writer_ ? writer_->id() : std::string();
  ++transactions_;
  log_transaction(reply, id, false, env);
  writer_.reset();  // never acknowledged: its segment space is reclaimed
}

void Connection::log_transaction(const smtp::Reply& reply, const std::string& queue_id, bool accepted,
                                 const smtp::Envelope& env) {
  std::vector<std::string> rcpts;
  for (const auto& r : env.recipients) rcpts.push_back(r.path.str());
  observe::Metrics::get().transaction(listener_.name, reply.code, reply.enhanced);
  LogLine(Level::kInfo, "transaction")
      .add("conn", id_)
      .add("queue_id", queue_id)
      .add("listener", listener_.name)
      .add("client", client_)
      .add("helo", machine_->helo_name())
      .add("tls", tls_version_)
      .add("tls_cipher", tls_cipher_)
      .add("auth_user", machine_->auth_user())
      .add("from", env.sender.str())
      .add("to", rcpts)
      .add("size", writer_ ? writer_->size() : message_size_)
      .add("result", accepted ? "accepted" : "rejected")
      .add("reply", reply.summary())
      .emit();
}

awaitable<void> Connection::on_auth() {
  const smtp::AuthRequest& req = machine_->auth_request();
  const UserDatabase* users = server_.deps.users;
  if (server_.throttle.locked_out(client_)) {
    // Too many failures from this address: no more guesses for a while
    // (RFC 4954 6: 454 4.7.0 temporary authentication failure).
    LogLine(Level::kWarn, "auth_locked_out").add("conn", id_).add("client", client_).add("user", req.username).emit();
    observe::Metrics::get().auth(listener_.name, false);
    machine_->auth_refused(smtp::Reply(454, "4.7.0", "Too many failed authentication attempts, try again later"));
    co_return;
  }
  bool ok = false;
  if (users != nullptr && !users->empty() && (req.authzid.empty() || req.authzid == req.username)) {
    // Argon2 takes tens of milliseconds: verify on the blocking pool.
    auto verify = [users, user = req.username, password = req.password]() -> awaitable<bool> {
      co_return users->verify(user, password);
    };
    ok = co_await asio::co_spawn(server_.blocking, std::move(verify), use_awaitable);
  }
  LogLine(Level::kInfo, ok ? "auth_success" : "auth_failure")
      .add("conn", id_).add("client", client_).add("mechanism", req.mechanism).add("user", req.username).emit();
  if (ok) {
    server_.throttle.success(client_);
  } else {
    const auto delay = server_.throttle.failure(client_);
    if (delay.count() > 0) {
      asio::steady_timer t(socket_.get_executor(), delay);
      co_await t.async_wait(asio::as_tuple(use_awaitable));
    }
  }
  observe::Metrics::get().auth(listener_.name, ok);
  machine_->auth_result(ok);
}

awaitable<void> Connection::run() {
  auto self = shared_from_this();
  error_code ignored;
  socket_.set_option(tcp::no_delay(true), ignored);
  machine_.emplace(server_.settings_for(listener_));
  policy_version_ = server_.deps.policy->current()->version;
  LogLine(Level::kInfo, "connect").add("conn", id_).add("listener", listener_.name).add("client", client_).emit();
  const auto started = Clock::now();
  set_deadline(server_.deps.config->command_timeout);
  arm_watchdog();
  bool running = true;
  if (listener_.mode == config::ListenerMode::kSmtps) running = co_await start_tls();
  while (running) {
    switch (machine_->next()) {
      case smtp::EventKind::kNeedInput:
        if (!co_await flush()) {
          running = false;
        } else if (!co_await read_input()) {
          if (timed_out_) {
            timed_out_ = false;
            machine_->timeout();
          } else if (draining_ && socket_.is_open()) {
            machine_->shutdown();
          } else {
            running = false;  // the client went away
          }
        }
        break;
      case smtp::EventKind::kFlush:
        running = co_await flush();
        break;
      case smtp::EventKind::kMail:
        on_mail();
        break;
      case smtp::EventKind::kRcpt:
        on_rcpt();
        break;
      case smtp::EventKind::kDataBegin:
        on_data_begin();
        break;
      case smtp::EventKind::kDataChunk:
        if (writer_) (void)writer_->append(machine_->data_chunk());
        break;
      case smtp::EventKind::kDataEnd:
        co_await on_data_end();
        break;
      case smtp::EventKind::kDataAbort:
        on_data_abort();
        break;
      case smtp::EventKind::kAuth:
        co_await on_auth();
        break;
      case smtp::EventKind::kStartTls:
        running = (co_await flush()) && (co_await start_tls());
        if (running) machine_->tls_started();
        break;
      case smtp::EventKind::kClose:
        co_await flush();
        running = false;
        break;
    }
  }
  if (writer_) {
    // The client vanished mid-message: nothing was acknowledged.
    abandon_message(smtp::Reply(421, "4.4.0", "connection lost during message data"), machine_->envelope());
  }
  closed_ = true;
  timer_.cancel();
  socket_.close(ignored);
  // The one line per connection (RFC 5321 sessions can be long: the
  // duration says how long).
  observe::Metrics::get().bytes_received(listener_.name, bytes_in_);
  LogLine(Level::kInfo, "disconnect").add("conn", id_).add("listener", listener_.name).add("client", client_)
      .add("helo", machine_->helo_name()).add("tls", tls_version_).add("auth_user", machine_->auth_user())
      .add("transactions", transactions_).add("bytes_in", bytes_in_)
      .add("duration_ms", static_cast<int64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                                   Clock::now() - started).count()))
      .emit();
}

smtp::SessionSettings Server::Impl::settings_for(const config::Listener& l) const {
  const config::Config& c = *deps.config;
  const auto snapshot = deps.policy->current();
  smtp::SessionSettings s;
  s.hostname = c.hostname;
  s.max_message_size = snapshot->max_message_size;
  s.max_recipients = snapshot->max_recipients;
  s.max_errors = c.max_errors;
  s.tls_available = true;
  s.auth_available = deps.users != nullptr && !deps.users->empty();
  s.auth_without_tls = c.auth_allow_plaintext;
  switch (l.mode) {
    case config::ListenerMode::kSmtp:
      break;
    case config::ListenerMode::kSubmission:  // RFC 6409 4.3, RFC 3207
      s.require_auth = true;
      s.require_tls = !c.auth_allow_plaintext;
      break;
    case config::ListenerMode::kSmtps:  // RFC 8314 3.3
      s.implicit_tls = true;
      s.require_auth = true;
      break;
  }
  return s;
}

void Server::Impl::release(uint64_t id, const std::string& client) {
  absl::MutexLock lock(&mu);
  connections.erase(id);
  --open_connections;
  auto it = per_client.find(client);
  if (it != per_client.end() && --it->second == 0) per_client.erase(it);
}

void Server::Impl::start_connection(tcp::socket socket, const tcp::endpoint& remote, const ListenerState& l) {
  error_code ec;
  auto addr = remote.address();
  if (addr.is_v6() && addr.to_v6().is_v4_mapped()) addr = asio::ip::make_address_v4(asio::ip::v4_mapped, addr.to_v6());
  const std::string client = addr.to_string();
  const uint64_t id = next_conn_id.fetch_add(1);
  const config::Config& c = *deps.config;
  std::string refused;
  const auto snapshot = deps.policy->current();
  if (!connection_rate.allow(client, snapshot->connections_per_client_per_minute, unix_ms())) {
    refused = "connection rate limit";
  } else {
    absl::MutexLock lock(&mu);
    if (open_connections >= c.max_connections) {
      refused = "global connection limit";
    } else if (per_client[client] >= c.max_connections_per_client) {
      refused = "per-client connection limit";
    } else {
      ++open_connections;
      ++per_client[client];
    }
    if (!refused.empty() && per_client[client] == 0) per_client.erase(client);
  }
  if (!refused.empty()) {
    LogLine(Level::kWarn, "connection_refused").add("client", client).add("listener", l.config.name)
        .add("reason", refused).emit();
    observe::Metrics::get().connection_refused(l.config.name, refused == "connection rate limit" ? "policy" : "limit");
    // RFC 5321 3.1 allows a 421 in place of the greeting. A short blocking
    // write on a fresh socket: the kernel buffer always takes it.
    const std::string msg = "421 4.7.0 " + c.hostname + " Error: too many connections\r\n";  // RFC 3463 4.7.0
    socket.write_some(asio::buffer(msg), ec);
    socket.close(ec);
    return;
  }
  auto conn = std::make_shared<Connection>(*this, std::move(socket), l.config, client, id);
  {
    absl::MutexLock lock(&mu);
    connections[id] = conn;
  }
  observe::Metrics::get().connection_opened(l.config.name);
  auto ex = conn->socket_executor();
  // The coroutine starts later on its context: the completion handler owns
  // the connection until the coroutine has finished.
  asio::co_spawn(ex, conn->run(), [this, id, client, conn, name = l.config.name](std::exception_ptr e) {
    if (e) {
      try {
        std::rethrow_exception(e);
      } catch (const std::exception& ex) {
        LogLine(Level::kError, "session_exception").add("conn", id).add("error", ex.what()).emit();
      }
    }
    release(id, client);
    observe::Metrics::get().connection_closed(name);
  });
}

awaitable<void> Server::Impl::accept_loop(ListenerState& l) {
  while (!draining.load()) {
    // The peer address comes with accept(2): no getpeername per connection.
    tcp::socket socket(next_context());
    tcp::endpoint remote;
    auto [ec] = co_await l.acceptor->async_accept(socket, remote, asio::as_tuple(use_awaitable));
    if (ec) {
      if (ec == asio::error::operation_aborted || draining.load()) break;
      LogLine(Level::kWarn, "accept_failed").add("listener", l.config.name).add("error", ec.message()).emit();
      asio::steady_timer t(control(), std::chrono::milliseconds(100));  // e.g. EMFILE
      co_await t.async_wait(asio::as_tuple(use_awaitable));
      continue;
    }
    start_connection(std::move(socket), remote, l);
  }
}

void Server::Impl::begin_drain(int signal) {
  if (draining.exchange(true)) return;
  if (deps.on_drain) deps.on_drain();
  LogLine(Level::kInfo, "draining").add("signal", signal).add("timeout_ms",
      static_cast<int64_t>(deps.config->drain_timeout.count())).emit();
  for (auto& l : listeners) {
    error_code ignored;
    l->acceptor->close(ignored);
  }
  std::vector<std::shared_ptr<Connection>> all;
  {
    absl::MutexLock lock(&mu);
    for (auto& [id, weak] : connections) {
      if (auto c = weak.lock()) all.push_back(std::move(c));
    }
  }
  for (auto& c : all) asio::post(c->socket_executor(), [c] { c->drain(); });
  const auto deadline = Clock::now() + deps.config->drain_timeout;
  asio::co_spawn(control(), [this, deadline]() -> awaitable<void> {
    asio::steady_timer t(control());
    bool forced = false;
    while (true) {
      {
        absl::MutexLock lock(&mu);
        if (open_connections == 0) break;
      }
      if (!forced && Clock::now() >= deadline) {
        forced = true;
        force_close_all();
      }
      t.expires_after(std::chrono::milliseconds(20));
      co_await t.async_wait(asio::as_tuple(use_awaitable));
    }
    LogLine(Level::kInfo, "drained").emit();
    guards.clear();
    for (auto& c : contexts) c->stop();
  }, asio::detached);
}

void Server::Impl::force_close_all() {
  std::vector<std::shared_ptr<Connection>> all;
  {
    absl::MutexLock lock(&mu);
    for (auto& [id, weak] : connections) {
      if (auto c = weak.lock()) all.push_back(std::move(c));
    }
  }
  LogLine(Level::kWarn, "drain_timeout").add("closing", static_cast<uint64_t>(all.size())).emit();
  for (auto& c : all) asio::post(c->socket_executor(), [c] { c->force_close(); });
}

Server::Server(ServerDeps deps) : impl_(std::make_unique<Impl>(deps)) {}

Server::~Server() {
  impl_->blocking.join();
}

absl::Status Server::start() {
  Impl& s = *impl_;
  const config::Config& c = *s.deps.config;
  if (absl::Status st = reload_tls(c.tls_cert_file, c.tls_key_file, c.hostname); !st.ok()) return st;
  s.throttle.set_lockout_failures(c.auth_max_failures);
  for (const config::Listener& l : c.listeners) {
    std::string host;
    uint16_t port = 0;
    if (absl::Status st = config::split_host_port(l.address, host, port); !st.ok()) return st;
    error_code ec;
    asio::ip::address addr = asio::ip::make_address(host, ec);
    if (ec) {
      tcp::resolver resolver(s.control());
      auto results = resolver.resolve(host, std::to_string(port), tcp::resolver::passive, ec);
      if (ec || results.empty()) return absl::InvalidArgumentError("listeners." + l.name + ".address: cannot resolve " + host);
      addr = results.begin()->endpoint().address();
    }
    auto state = std::make_unique<ListenerState>();
    state->config = l;
    state->acceptor.emplace(s.control());
    tcp::endpoint ep(addr, port);
    state->acceptor->open(ep.protocol(), ec);
    if (!ec) state->acceptor->set_option(tcp::acceptor::reuse_address(true), ec);
    if (!ec && addr.is_v6()) state->acceptor->set_option(asio::ip::v6_only(true), ec);
    if (!ec) state->acceptor->bind(ep, ec);
    if (!ec) state->acceptor->listen(asio::socket_base::max_listen_connections, ec);
    if (ec) return absl::UnavailableError("listeners." + l.name + ": cannot listen on " + l.address + ": " + ec.message());
    const tcp::endpoint bound = state->acceptor->local_endpoint(ec);
    const std::string shown = (addr.is_v6() ? "[" + bound.address().to_string() + "]" : bound.address().to_string()) +
                              ":" + std::to_string(bound.port());
    LogLine(Level::kInfo, "listening").add("listener", l.name).add("mode", mode_name(l.mode))
        .add("address", shown).emit();
    s.listeners.push_back(std::move(state));
  }
  for (auto& l : s.listeners) {
    ListenerState* ls = l.get();
    asio::co_spawn(s.control(), s.accept_loop(*ls), [name = ls->config.name](std::exception_ptr e) {
      if (e) LogLine(Level::kError, "accept_loop_failed").add("listener", name).emit();
    });
  }
  return absl::OkStatus();
}

absl::Status Server::reload_tls(const std::string& cert_file, const std::string& key_file,
                                const std::string& hostname) {
  auto ctx = make_server_tls_context(cert_file, key_file, hostname);
  if (!ctx.ok()) return ctx.status();
  auto next = std::make_shared<ssl::context>(*ctx);
  absl::MutexLock lock(&impl_->tls_mu);
  impl_->tls = std::move(next);
  return absl::OkStatus();
}

void Server::run() {
  Impl& s = *impl_;
  asio::signal_set signals(s.control(), SIGINT, SIGTERM);
  signals.async_wait([&s](error_code ec, int signal) {
    if (!ec) s.begin_drain(signal);
  });
  // SIGHUP: reload (re-armed after each one) until the drain begins.
  asio::signal_set hangups(s.control(), SIGHUP);
  std::function<void(error_code, int)> on_hup = [&](error_code ec, int) {
    if (ec || s.draining.load()) return;
    if (s.deps.on_reload) s.deps.on_reload();
    hangups.async_wait(on_hup);
  };
  hangups.async_wait(on_hup);
  LogLine(Level::kInfo, "started").add("threads", s.threads).emit();
  std::vector<std::thread> workers;
  for (int i = 1; i < s.threads; ++i) workers.emplace_back([&s, i] { s.contexts[i]->run(); });
  s.control().run();
  for (auto& t : workers) t.join();
}

}  // namespace smtpd::net
