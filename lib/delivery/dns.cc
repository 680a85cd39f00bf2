#include "lib/delivery/dns.h"

#include <arpa/inet.h>
#include <ares.h>
#include <netdb.h>
#include <poll.h>

#include <algorithm>
#include <mutex>
#include <random>

namespace smtpd::delivery {
namespace {

std::once_flag g_init;

// A c-ares channel for one lookup, driven to completion with poll(2).
class Channel {
 public:
  explicit Channel(const std::vector<std::string>& servers) {
    std::call_once(g_init, [] { ares_library_init(ARES_LIB_INIT_ALL); });
    ares_options o{};
    o.timeout = 2000;
    o.tries = 2;
    ok_ = ares_init_options(&ch_, &o, ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES) == ARES_SUCCESS;
    if (ok_ && !servers.empty()) {
      std::string csv;
      for (const auto& s : servers) csv += (csv.empty() ? "" : ",") + s;
      ok_ = ares_set_servers_ports_csv(ch_, csv.c_str()) == ARES_SUCCESS;
    }
  }
  ~Channel() {
    if (ok_) ares_destroy(ch_);
  }
  bool ok() const { return ok_; }
  ares_channel get() { return ch_; }

  void run() {
    while (true) {
      ares_socket_t socks[ARES_GETSOCK_MAXNUM];
      const int bits = ares_getsock(ch_, socks, ARES_GETSOCK_MAXNUM);
      std::vector<pollfd> fds;
      for (int i = 0; i < ARES_GETSOCK_MAXNUM; ++i) {
        short ev = 0;
        if (ARES_GETSOCK_READABLE(bits, i)) ev |= POLLIN;
        if (ARES_GETSOCK_WRITABLE(bits, i)) ev |= POLLOUT;
        if (ev) fds.push_back(pollfd{socks[i], ev, 0});
      }
      if (fds.empty()) return;  // nothing pending: done
      timeval tv{}, max{5, 0};
      timeval* t = ares_timeout(ch_, &max, &tv);
      const int ms = static_cast<int>(t->tv_sec * 1000 + t->tv_usec / 1000);
      const int n = ::poll(fds.data(), fds.size(), ms);
      if (n <= 0) {
        ares_process_fd(ch_, ARES_SOCKET_BAD, ARES_SOCKET_BAD);  // timeouts
        continue;
      }
      for (const pollfd& p : fds) {
        ares_process_fd(ch_, (p.revents & (POLLIN | POLLERR | POLLHUP)) ? p.fd : ARES_SOCKET_BAD,
                        (p.revents & POLLOUT) ? p.fd : ARES_SOCKET_BAD);
      }
    }
  }

 private:
  ares_channel ch_{};
  bool ok_ = false;
};

struct MxResult {
  int status = ARES_ENOTFOUND;
  std::vector<std::pair<int, std::string>> records;
};

void on_mx(void* arg, int status, int, unsigned char* abuf, int alen) {
  auto* r = static_cast<MxResult*>(arg);
  r->status = status;
  if (status != ARES_SUCCESS) return;
  ares_mx_reply* mx = nullptr;
  r->status = ares_parse_mx_reply(abuf, alen, &mx);
  for (ares_mx_reply* p = mx; p != nullptr; p = p->next) r->records.emplace_back(p->priority, p->host);
  if (mx) ares_free_data(mx);
}

struct AddrResult {
  int status = ARES_ENOTFOUND;
  std::vector<std::string> addresses;
};

void on_addr(void* arg, int status, int, ares_addrinfo* res) {
  auto* r = static_cast<AddrResult*>(arg);
  r->status = status;
  if (status != ARES_SUCCESS || res == nullptr) return;
  for (ares_addrinfo_node* n = res->nodes; n != nullptr; n = n->ai_next) {
    char buf[INET6_ADDRSTRLEN] = {};
    const void* a = n->ai_family == AF_INET6 ? static_cast<const void*>(&reinterpret_cast<sockaddr_in6*>(n->ai_addr)->sin6_addr)
                                             : static_cast<const void*>(&reinterpret_cast<sockaddr_in*>(n->ai_addr)->sin_addr);
    if (inet_ntop(n->ai_family, a, buf, sizeof buf)) {
      std::string s = buf;
      if (std::find(r->addresses.begin(), r->addresses.end(), s) == r->addresses.end()) r->addresses.push_back(s);
    }
  }
  ares_freeaddrinfo(res);
}

bool temporary_status(int status) {
  return status != ARES_ENOTFOUND && status != ARES_ENODATA && status != ARES_EBADNAME;
}

}  // namespace

Resolver::Resolver(std::vector<std::string> servers) : servers_(std::move(servers)) {}

MxAnswer Resolver::mx(const std::string& domain, uint64_t seed) const {
  MxAnswer a;
  Channel ch(servers_);
  if (!ch.ok()) {
    a.error = "cannot set up the DNS resolver";
    return a;
  }
  MxResult r;
  ares_query(ch.get(), domain.c_str(), 1 /* C_IN */, 15 /* T_MX */, on_mx, &r);
  ch.run();
  if (r.status == ARES_ENOTFOUND) {
    a.status = MxAnswer::Status::kNoDomain;
    a.error = "domain " + domain + " does not exist (NXDOMAIN)";
    return a;
  }
  if (r.status == ARES_ENODATA || (r.status == ARES_SUCCESS && r.records.empty())) {
    a.status = MxAnswer::Status::kOk;  // RFC 5321 5.1: the domain is its own MX
    a.implicit = true;
    a.hosts = {domain};
    return a;
  }
  if (r.status != ARES_SUCCESS) {
    a.error = std::string("MX lookup for ") + domain + ": " + ares_strerror(r.status);
    return a;
  }
  // RFC 7505: a single MX of "." means the domain takes no mail.
  if (r.records.size() == 1 && (r.records[0].second.empty() || r.records[0].second == ".")) {
    a.status = MxAnswer::Status::kNullMx;
    return a;
  }
  // Sort by preference; shuffle within equal preferences (RFC 5321 5.1).
  std::mt19937_64 rng(seed);
  std::shuffle(r.records.begin(), r.records.end(), rng);
  std::stable_sort(r.records.begin(), r.records.end(),
                   [](const auto& x, const auto& y) { return x.first < y.first; });
  a.status = MxAnswer::Status::kOk;
  for (auto& [pref, host] : r.records) {
    if (!host.empty() && host != ".") a.hosts.push_back(host);
  }
  return a;
}

std::vector<std::string> Resolver::addresses(const std::string& host, std::string& error, bool& temporary) const {
  temporary = true;
  // A literal address needs no lookup.
  unsigned char buf[16];
  if (inet_pton(AF_INET, host.c_str(), buf) == 1 || inet_pton(AF_INET6, host.c_str(), buf) == 1) return {host};
  Channel ch(servers_);
  if (!ch.ok()) {
    error = "cannot set up the DNS resolver";
    return {};
  }
  AddrResult r;
  ares_addrinfo_hints hints{};
  hints.ai_family = AF_UNSPEC;
  ares_getaddrinfo(ch.get(), host.c_str(), nullptr, &hints, on_addr, &r);
  ch.run();
  if (r.status != ARES_SUCCESS || r.addresses.empty()) {
    temporary = temporary_status(r.status);
    error = "address lookup for " + host + ": " + ares_strerror(r.status);
    return {};
  }
  return r.addresses;
}

}  // namespace smtpd::delivery
