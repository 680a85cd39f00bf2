// The client side of SMTP (RFC 5321) and LMTP (RFC 2033) as a sans-I/O
// state machine, for delivery to MX hosts, smarthosts and LMTP servers.
//
// The driver feeds received octets with feed() and calls next() until it
// returns kNeedInput, writing output() before each read. The machine reads
// the greeting, sends EHLO (HELO when EHLO is refused, RFC 5321 3.2),
// STARTTLS when offered and the policy wants it, AUTH when credentials are
// set, and then reports kReady. send() starts a transaction: MAIL, RCPT and
// DATA are pipelined when the server offers PIPELINING (RFC 2920); the body
// is pulled from the driver in chunks (kBody) and dot-stuffed, or sent with
// BDAT when the server offers CHUNKING (RFC 3030). kTransactionDone leaves
// one reply per recipient in results(); the connection can then carry the
// next message (connection reuse) or quit().
//
// Whatever ends the session early (a refused greeting, EHLO and HELO both
// refused, TLS required but not offered, AUTH refused, a malformed reply)
// is reported as kFailed with session_error(), which the driver applies to
// every recipient still pending.
#pragma once

#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "lib/smtp/envelope.h"
#include "lib/smtp/reply.h"
#include "lib/smtp/reply_parser.h"

namespace smtpd::smtp {

enum class TlsPolicy {
  kNone,     // never STARTTLS
  kMay,      // STARTTLS when offered (opportunistic)
  kEncrypt,  // STARTTLS required; defer when not offered
  kVerify,   // as kEncrypt; the driver also verifies the certificate
};

struct ClientSettings {
  std::string helo_name = "localhost";
  bool lmtp = false;
  TlsPolicy tls = TlsPolicy::kMay;
  bool implicit_tls = false;       // the connection is already inside TLS
  std::string auth_user;           // empty: no AUTH
  std::string auth_password;
  bool auth_without_tls = false;   // allow sending credentials in plaintext
};

struct ServerCapabilities {
  bool esmtp = false;
  bool pipelining = false;
  bool starttls = false;
  bool eightbitmime = false;
  bool smtputf8 = false;
  bool chunking = false;
  bool dsn = false;
  bool enhanced_codes = false;
  uint64_t size = 0;  // 0: no limit announced
  std::set<std::string> auth;  // upper-case mechanism names
};

// One message to send. The body is pulled through kBody events.
struct OutboundMessage {
  Path sender;
  std::vector<Recipient> recipients;
  uint64_t size = 0;           // octets of the body as stored
  bool eight_bit = false;      // BODY=8BITMIME
  bool smtputf8 = false;       // needs SMTPUTF8 (UTF-8 addresses or headers)
  DsnRet ret = DsnRet::kUnspecified;
  std::string envid;
};

enum class ClientEvent {
  kNeedInput,        // write output(), then read and feed()
  kStartTls,         // write output(), handshake, then tls_started()
  kReady,            // call send() or quit()
  kBody,             // call body(chunk, last) with the next piece of the body
  kTransactionDone,  // results() has one reply per recipient
  kFailed,           // session_error(); close the connection
  kClosed,           // QUIT done (or not needed): close the connection
};

class ClientSession {
 public:
  explicit ClientSession(ClientSettings settings);

  void feed(std::string_view bytes) { parser_.feed(bytes); }
  ClientEvent next();
  std::string& output() { return output_; }

  void tls_started();
  void send(OutboundMessage message);
  // Supplies body octets (as stored: CRLF line ends); `last` with the final
  // piece. Call only after kBody, once per kBody.
  void body(std::string_view chunk, bool last);
  void quit();

  const std::vector<Reply>& results() const { return results_; }
  const Reply& session_error() const { return session_error_; }
  const ServerCapabilities& capabilities() const { return caps_; }
  bool in_tls() const { return in_tls_; }
  // RFC 5321 4.5.3.2 timeout for the reply being awaited, in seconds.
  int timeout_seconds() const;

 private:
  enum class Step {
    kGreeting, kEhlo, kHelo, kStartTls, kAuth, kAuthLoginUser, kAuthLoginPass,
    kReady, kMail, kRcpt, kData, kBodyOut, kDataEnd, kBdat, kRset, kQuit, kDone,
  };
  // A command sent whose reply is still to come (pipelined in order).
  enum class Awaiting { kMail, kRcpt, kData, kDataEnd, kBdatChunk, kBdatLast, kRset };

  ClientEvent on_reply(const Reply& r);
  ClientEvent on_ehlo(const Reply& r);
  ClientEvent after_hello();
  ClientEvent begin_auth();
  ClientEvent on_transaction_reply(const Reply& r);
  ClientEvent fail(Reply r);
  ClientEvent finish_transaction();
  ClientEvent after_recipients();
  bool any_accepted() const;
  void command(const std::string& line) { output_ += line + "\r\n"; }
  void parse_ehlo(const Reply& r);
  void send_envelope_commands();
  std::string mail_command() const;
  std::string rcpt_command(const Recipient& r) const;
  void fail_all_pending(const Reply& r);
  void stuff(std::string_view chunk);

  ClientSettings settings_;
  ReplyParser parser_;
  std::string output_;
  Step step_ = Step::kGreeting;
  ServerCapabilities caps_;
  bool in_tls_ = false;
  bool tls_pending_ = false;
  bool tls_refused_ = false;   // STARTTLS failed under kMay: go on in plaintext
  bool authenticated_ = false;
  bool need_rset_ = false;
  Reply session_error_;

  OutboundMessage message_;
  std::vector<Reply> results_;
  std::vector<bool> accepted_;
  std::vector<bool> final_;     // recipient has its end-of-data reply
  bool done_pending_ = false;   // send() refused the message up front
  bool discard_data_end_ = false;
  std::vector<Awaiting> awaiting_;
  size_t rcpt_replies_ = 0;
  bool mail_ok_ = false;
  bool use_bdat_ = false;
  bool body_requested_ = false;
  bool at_line_start_ = true;
  bool last_was_cr_ = false;
  bool ended_with_crlf_ = true;
};

// RFC 3461 4: the xtext encoding of an address for ORCPT.
std::string xtext_encode(std::string_view s);

}  // namespace smtpd::smtp
