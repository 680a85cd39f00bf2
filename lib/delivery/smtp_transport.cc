#include "lib/delivery/smtp_transport.h"

#include <boost/asio.hpp>
#include <boost/asio/ssl.hpp>
#include <map>
#include <optional>
#include <thread>

namespace smtpd::delivery {

namespace asio = boost::asio;
namespace ssl = boost::asio::ssl;
using tcp = asio::ip::tcp;
using asio::awaitable;
using asio::use_awaitable;
using boost::system::error_code;

struct SmtpTransport::Impl {
  Impl(const queue::Spool& s, SmtpTransportOptions o)
      : spool(s), options(std::move(o)), guard(asio::make_work_guard(ioc)), tls(ssl::context::tls_client) {
    tls.set_options(ssl::context::no_compression);
    SSL_CTX_set_min_proto_version(tls.native_handle(), TLS1_2_VERSION);
    // Verification is chosen per connection (the policy may ask for it per
    // domain); opportunistic TLS encrypts, it does not authenticate (RFC 7435).
    tls.set_default_verify_paths();
    tls.set_verify_mode(ssl::verify_none);
    thread = std::thread([this] { ioc.run(); });
  }

  const queue::Spool& spool;
  SmtpTransportOptions options;
  asio::io_context ioc{1};
  asio::executor_work_guard<asio::io_context::executor_type> guard;
  ssl::context tls;
  std::thread thread;

  // Idle connections by destination, for the next message (connection
  // reuse). Used on the I/O thread only.
  struct Connection {
    explicit Connection(asio::io_context& ioc, smtp::ClientSettings settings)
        : socket(ioc), session(std::move(settings)) {}
    tcp::socket socket;
    std::unique_ptr<ssl::stream<tcp::socket&>> tls;
    smtp::ClientSession session;
    std::chrono::steady_clock::time_point idle_since;
  };
  std::map<std::string, std::vector<std::shared_ptr<Connection>>> idle;
  static constexpr auto kIdleLimit = std::chrono::seconds(5);
  static constexpr size_t kIdlePerDestination = 32;
};

namespace {

constexpr size_t kBodyChunk = 64 * 1024;

using Connection = SmtpTransport::Impl::Connection;

// One delivery: one message to one or more candidate servers.
class Delivery : public std::enable_shared_from_this<Delivery> {
 public:
  Delivery(SmtpTransport::Impl& t, queue::DeliveryRequest req, std::vector<SmtpTransport::Target> targets,
           queue::DeliveryCallback done)
      : t_(t), timer_(t.ioc), req_(std::move(req)), targets_(std::move(targets)), done_(std::move(done)) {}

  awaitable<void> run();
  // Answers whatever is still owed (an exception or a stop).
  void finish_all(const smtp::Reply& r) {
    finish(std::vector<queue::AttemptOutcome>(req_.recipients.size(), queue::AttemptOutcome::from_reply(r, host_)));
  }

 private:
  // How one conversation ended.
  enum class Ended { kAnswered, kTryNext };

  smtp::ClientSettings settings() const {
    smtp::ClientSettings s;
    s.helo_name = t_.options.helo_name;
    s.lmtp = req_.route.rfind("lmtp:", 0) == 0;
    s.tls = tls_policy();
    if (req_.route.rfind("relay:", 0) == 0) {
      s.auth_user = t_.options.relay_user;
      s.auth_password = t_.options.relay_password;
    }
    return s;
  }
  smtp::TlsPolicy tls_policy() const {
    return t_.options.tls_for ? t_.options.tls_for(req_.domain) : t_.options.tls;
  }
  std::string pool_key(const SmtpTransport::Target& target) const {
    return req_.route + "|" + target.address + "|" + target.port + "|" + std::to_string(static_cast<int>(tls_policy()));
  }
  std::shared_ptr<Connection> take_idle(const std::string& key);
  void park(const std::string& key);
  smtp::OutboundMessage outbound(uint64_t size) const;
  awaitable<std::optional<smtp::Reply>> connect(const SmtpTransport::Target& target);
  awaitable<Ended> converse(const std::string& body, const std::string& key);
  awaitable<bool> flush();
  awaitable<bool> read_more();
  awaitable<bool> handshake();
  void arm(int seconds);
  void finish(std::vector<queue::AttemptOutcome> outcomes);
  void finish_results();

  SmtpTransport::Impl& t_;
  asio::steady_timer timer_;
  std::shared_ptr<Connection> conn_;
  queue::DeliveryRequest req_;
  std::vector<SmtpTransport::Target> targets_;
  queue::DeliveryCallback done_;
  std::string host_;
  smtp::Reply last_error_;
  std::string tls_error_;
  bool timed_out_ = false;
  bool parked_ = false;
  char buffer_[16384];
};

std::shared_ptr<Connection> Delivery::take_idle(const std::string& key) {
  auto it = t_.idle.find(key);
  if (it == t_.idle.end()) return nullptr;
  auto& list = it->second;
  const auto now = std::chrono::steady_clock::now();
  while (!list.empty()) {
    std::shared_ptr<Connection> c = std::move(list.back());
    list.pop_back();
    if (now - c->idle_since < SmtpTransport::Impl::kIdleLimit && c->socket.is_open()) return c;
    error_code ignored;
    c->socket.close(ignored);  // stale: the server has likely timed it out
  }
  return nullptr;
}

void Delivery::park(const std::string& key) {
  auto& list = t_.idle[key];
  if (list.size() >= SmtpTransport::Impl::kIdlePerDestination) return;  // closed when conn_ goes
  conn_->idle_since = std::chrono::steady_clock::now();
  list.push_back(conn_);
  parked_ = true;
}

void Delivery::arm(int seconds) {
  timed_out_ = false;
  timer_.expires_after(std::chrono::seconds(seconds));
  timer_.async_wait([self = shared_from_this()](error_code ec) {
    if (ec || !self->conn_) return;  // re-armed or cancelled
    self->timed_out_ = true;
    error_code ignored;
    self->conn_->socket.cancel(ignored);
  });
}

void Delivery::finish(std::vector<queue::AttemptOutcome> outcomes) {
  if (!done_) return;
  if (conn_) {  // for the delivery log: where it went, and how
    error_code ec;
    const auto ep = conn_->socket.remote_endpoint(ec);
    const std::string tls = conn_->tls ? SSL_get_version(conn_->tls->native_handle()) : "";
    for (queue::AttemptOutcome& o : outcomes) {
      if (!ec) o.remote_address = ep.address().to_string();
      o.tls = tls;
    }
  }
  auto done = std::move(done_);
  done_ = nullptr;
  done(std::move(outcomes));
}

void Delivery::finish_results() {
  std::vector<queue::AttemptOutcome> out;
  for (const smtp::Reply& r : conn_->session.results()) out.push_back(queue::AttemptOutcome::from_reply(r, host_));
  if (out.size() != req_.recipients.size()) {
    finish_all(conn_->session.session_error());
  } else {
    finish(std::move(out));
  }
}

smtp::OutboundMessage Delivery::outbound(uint64_t size) const {
  const smtp::Envelope& env = req_.record.envelope;
  smtp::OutboundMessage m;
  m.sender = env.sender;
  for (size_t i : req_.recipients) m.recipients.push_back(env.recipients[i]);
  m.size = size;
  m.eight_bit = env.body == smtp::BodyType::k8BitMime;
  m.smtputf8 = env.smtputf8;
  m.ret = env.ret;
  m.envid = env.envid;
  return m;
}

awaitable<std::optional<smtp::Reply>> Delivery::connect(const SmtpTransport::Target& target) {
  tcp::resolver resolver(t_.ioc);
  arm(t_.options.connect_timeout_seconds);
  auto [rec, endpoints] = co_await resolver.async_resolve(target.address, target.port, asio::as_tuple(use_awaitable));
  if (rec) {
    timer_.cancel();
    co_return smtp::Reply(451, "4.4.3", "cannot resolve " + target.address + ": " + rec.message());
  }
  auto [cec, ep] = co_await asio::async_connect(conn_->socket, endpoints, asio::as_tuple(use_awaitable));
  timer_.cancel();
  if (cec) {
    co_return smtp::Reply(451, "4.4.1", "connect to " + target.address + ":" + target.port + ": " +
                                            (timed_out_ ? std::string("timed out") : cec.message()));
  }
  error_code ignored;
  conn_->socket.set_option(tcp::no_delay(true), ignored);
  co_return std::nullopt;
}

awaitable<bool> Delivery::flush() {
  std::string& out = conn_->session.output();
  if (out.empty()) co_return true;
  arm(300);
  error_code ec;
  if (conn_->tls) {
    std::tie(ec, std::ignore) = co_await asio::async_write(*conn_->tls, asio::buffer(out), asio::as_tuple(use_awaitable));
  } else {
    std::tie(ec, std::ignore) =
        co_await asio::async_write(conn_->socket, asio::buffer(out), asio::as_tuple(use_awaitable));
  }
  timer_.cancel();
  out.clear();
  co_return !ec;
}

awaitable<bool> Delivery::read_more() {
  arm(conn_->session.timeout_seconds());
  error_code ec;
  size_t n = 0;
  if (conn_->tls) {
    std::tie(ec, n) = co_await conn_->tls->async_read_some(asio::buffer(buffer_), asio::as_tuple(use_awaitable));
  } else {
    std::tie(ec, n) = co_await conn_->socket.async_read_some(asio::buffer(buffer_), asio::as_tuple(use_awaitable));
  }
  timer_.cancel();
  if (ec) co_return false;
  conn_->session.feed(std::string_view(buffer_, n));
  co_return true;
}

awaitable<bool> Delivery::handshake() {
  conn_->tls = std::make_unique<ssl::stream<tcp::socket&>>(conn_->socket, t_.tls);
  SSL_set_tlsext_host_name(conn_->tls->native_handle(), host_.c_str());  // SNI
  if (tls_policy() == smtp::TlsPolicy::kVerify) {
    conn_->tls->set_verify_mode(ssl::verify_peer);
    conn_->tls->set_verify_callback(ssl::host_name_verification(host_));
  }
  arm(60);
  auto [ec] = co_await conn_->tls->async_handshake(ssl::stream_base::client, asio::as_tuple(use_awaitable));
  timer_.cancel();
  if (ec) {
    // Say why: a certificate that does not verify is the usual reason.
    const long verify = SSL_get_verify_result(conn_->tls->native_handle());
    tls_error_ = verify != X509_V_OK ? std::string("certificate verification failed: ") +
                                           X509_verify_cert_error_string(verify)
                                     : ec.message();
  }
  co_return !ec;
}

// One conversation. Before MAIL nothing is at stake, so trouble there lets
// the caller try again elsewhere; after it, the outcome stands (a lost
// connection defers, never "delivered").
awaitable<Delivery::Ended> Delivery::converse(const std::string& body, const std::string& key) {
  size_t body_pos = 0;
  bool sent = false;
  smtp::ClientSession& session = conn_->session;
  while (true) {
    switch (session.next()) {
      case smtp::ClientEvent::kNeedInput:
        if (!co_await flush() || !co_await read_more()) {
          last_error_ = smtp::Reply(451, "4.4.2", std::string(timed_out_ ? "timed out" : "connection lost") +
                                                      " talking to " + host_);
          if (!sent) co_return Ended::kTryNext;
          finish_all(last_error_);
          co_return Ended::kAnswered;
        }
        break;
      case smtp::ClientEvent::kStartTls:
        if (!co_await flush() || !co_await handshake()) {
          last_error_ = smtp::Reply(451, "4.7.5", "TLS handshake with " + host_ + " failed: " + tls_error_);
          co_return Ended::kTryNext;
        }
        session.tls_started();
        break;
      case smtp::ClientEvent::kReady:
        if (sent) {
          park(key);  // kept for the next message to this destination
          if (parked_) co_return Ended::kAnswered;
          session.quit();
        } else {
          sent = true;
          session.send(outbound(body.size()));
        }
        break;
      case smtp::ClientEvent::kBody: {
        const size_t n = std::min(kBodyChunk, body.size() - body_pos);
        session.body(std::string_view(body).substr(body_pos, n), body_pos + n >= body.size());
        body_pos += n;
        if (!co_await flush()) {
          last_error_ = smtp::Reply(451, "4.4.2", "connection lost sending to " + host_);
          finish_all(last_error_);
          co_return Ended::kAnswered;
        }
        break;
      }
      case smtp::ClientEvent::kTransactionDone:
        finish_results();
        break;  // kReady follows: park or QUIT
      case smtp::ClientEvent::kFailed:
        co_await flush();
        if (!sent) {
          last_error_ = session.session_error();
          co_return Ended::kTryNext;
        }
        finish_results();
        co_return Ended::kAnswered;
      case smtp::ClientEvent::kClosed:
        co_await flush();
        co_return Ended::kAnswered;
    }
  }
}

awaitable<void> Delivery::run() {
  auto self = shared_from_this();
  auto body = t_.spool.read_body(req_.record);
  if (!body.ok()) {
    finish_all(smtp::Reply(451, "4.3.0", "cannot read the message from the spool"));
    co_return;
  }
  last_error_ = smtp::Reply(451, "4.4.1", "no server to try");
  for (const SmtpTransport::Target& target : targets_) {
    host_ = target.name;
    const std::string key = pool_key(target);
    // A parked connection first; if it has died meanwhile, a fresh one to
    // the same server (nothing was at stake on the old one).
    for (int fresh = 0; fresh < 2; ++fresh) {
      conn_ = fresh == 0 ? take_idle(key) : nullptr;
      if (fresh == 0 && !conn_) continue;
      if (!conn_) {
        conn_ = std::make_shared<Connection>(t_.ioc, settings());
        if (auto err = co_await connect(target)) {
          last_error_ = *err;
          break;  // next target
        }
      }
      const Ended ended = co_await converse(*body, key);
      if (ended == Ended::kAnswered) {
        if (!parked_) {
          error_code ignored;
          conn_->socket.close(ignored);
        }
        conn_.reset();
        co_return;
      }
      error_code ignored;
      conn_->socket.close(ignored);
      if (fresh == 1) break;  // a fresh connection failed too: next target
    }
  }
  conn_.reset();
  finish_all(last_error_);  // every server failed before a transaction
}

}  // namespace

SmtpTransport::SmtpTransport(const queue::Spool& spool, SmtpTransportOptions options)
    : impl_(std::make_unique<Impl>(spool, std::move(options))) {}

SmtpTransport::~SmtpTransport() { stop(); }

void SmtpTransport::deliver(queue::DeliveryRequest request, queue::DeliveryCallback done) {
  const std::string target = request.route.substr(request.route.find(':') + 1);  // HOST:PORT
  const size_t colon = target.rfind(':');
  const std::string host = target.substr(0, colon);
  deliver_to(std::move(request), {Target{host, host, target.substr(colon + 1)}}, std::move(done));
}

void SmtpTransport::deliver_to(queue::DeliveryRequest request, std::vector<Target> targets,
                               queue::DeliveryCallback done) {
  auto d = std::make_shared<Delivery>(*impl_, std::move(request), std::move(targets), std::move(done));
  asio::co_spawn(impl_->ioc, d->run(), [d](std::exception_ptr e) {
    // Whatever happened, every recipient gets an answer exactly once.
    d->finish_all(smtp::Reply(451, "4.3.0", e ? "delivery failed unexpectedly" : "delivery ended without a result"));
  });
}

void SmtpTransport::stop() {
  if (!impl_->thread.joinable()) return;
  impl_->guard.reset();
  impl_->ioc.stop();  // deliveries in flight are destroyed unanswered: retried after restart
  impl_->thread.join();
}

}  // namespace smtpd::delivery
