#include "lib/net/metrics_http.h"

#include <boost/asio.hpp>
#include <thread>

#include "lib/config/config.h"
#include "lib/observe/metrics.h"

namespace smtpd::net {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using boost::system::error_code;

struct MetricsHttp::Impl {
  asio::io_context ioc{1};
  tcp::acceptor acceptor{ioc};
  std::function<bool()> ready;
  std::thread thread;
  int port = 0;

  asio::awaitable<void> serve(tcp::socket socket) {
    // Read the request head (bounded), answer, close.
    std::string head;
    char buf[2048];
    asio::steady_timer deadline(ioc, std::chrono::seconds(10));
    deadline.async_wait([&socket](error_code ec) {
      if (!ec) socket.close();
    });
    while (head.find("\r\n\r\n") == std::string::npos && head.size() < 8192) {
      auto [ec, n] = co_await socket.async_read_some(asio::buffer(buf), asio::as_tuple(asio::use_awaitable));
      if (ec) co_return;
      head.append(buf, n);
    }
    const std::string line = head.substr(0, head.find("\r\n"));
    std::string status = "200 OK", type = "text/plain; charset=utf-8", body;
    const size_t sp1 = line.find(' '), sp2 = line.find(' ', sp1 + 1);
    const std::string method = line.substr(0, sp1);
    std::string path = sp1 == std::string::npos ? "" : line.substr(sp1 + 1, sp2 - sp1 - 1);
    path = path.substr(0, path.find('?'));
    if (method != "GET" && method != "HEAD") {
      status = "405 Method Not Allowed";
      body = "only GET\n";
    } else if (path == "/metrics") {
      type = "text/plain; version=0.0.4; charset=utf-8";
      body = observe::Metrics::get().scrape();
    } else if (path == "/healthz") {
      body = "ok\n";
    } else if (path == "/readyz") {
      if (ready && ready()) {
        body = "ready\n";
      } else {
        status = "503 Service Unavailable";
        body = "not serving (draining)\n";
      }
    } else {
      status = "404 Not Found";
      body = "try /metrics, /healthz or /readyz\n";
    }
    std::string out = "HTTP/1.1 " + status + "\r\nContent-Type: " + type +
                      "\r\nContent-Length: " + std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n";
    if (method != "HEAD") out += body;
    co_await asio::async_write(socket, asio::buffer(out), asio::as_tuple(asio::use_awaitable));
    deadline.cancel();
    error_code ignored;
    socket.shutdown(tcp::socket::shutdown_both, ignored);
  }

  asio::awaitable<void> accept_loop() {
    while (true) {
      auto [ec, socket] = co_await acceptor.async_accept(asio::as_tuple(asio::use_awaitable));
      if (ec) {
        if (ec == asio::error::operation_aborted || !acceptor.is_open()) co_return;
        continue;
      }
      asio::co_spawn(ioc, serve(std::move(socket)), asio::detached);
    }
  }
};

MetricsHttp::MetricsHttp(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

MetricsHttp::~MetricsHttp() { stop(); }

absl::StatusOr<std::unique_ptr<MetricsHttp>> MetricsHttp::start(const std::string& address,
                                                               std::function<bool()> ready) {
  auto impl = std::make_unique<Impl>();
  impl->ready = std::move(ready);
  std::string host;
  uint16_t port = 0;
  if (absl::Status s = config::split_host_port(address, host, port); !s.ok()) return s;
  error_code ec;
  const auto addr = asio::ip::make_address(host, ec);
  if (ec) return absl::InvalidArgumentError("metrics.address: '" + host + "' is not an IP address");
  const tcp::endpoint ep(addr, port);
  impl->acceptor.open(ep.protocol(), ec);
  if (!ec) impl->acceptor.set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec) impl->acceptor.bind(ep, ec);
  if (!ec) impl->acceptor.listen(128, ec);
  if (ec) return absl::UnavailableError("metrics: cannot listen on " + address + ": " + ec.message());
  impl->port = impl->acceptor.local_endpoint(ec).port();
  Impl* raw = impl.get();
  asio::co_spawn(raw->ioc, raw->accept_loop(), asio::detached);
  raw->thread = std::thread([raw] { raw->ioc.run(); });
  return std::unique_ptr<MetricsHttp>(new MetricsHttp(std::move(impl)));
}

int MetricsHttp::port() const { return impl_->port; }

void MetricsHttp::stop() {
  if (!impl_ || !impl_->thread.joinable()) return;
  asio::post(impl_->ioc, [this] {
    error_code ignored;
    impl_->acceptor.close(ignored);
  });
  impl_->ioc.stop();
  impl_->thread.join();
}

}  // namespace smtpd::net
