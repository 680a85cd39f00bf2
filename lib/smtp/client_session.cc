#include "lib/smtp/client_session.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>

#include "absl/strings/escaping.h"
#include "absl/strings/string_view.h"

namespace smtpd::smtp {
namespace {

std::string upper(std::string_view s) {
  std::string out(s);
  for (char& c : out) {
    if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 'a' + 'A');
  }
  return out;
}

std::string base64(std::string_view s) {
  std::string out;
  absl::Base64Escape(absl::string_view(s.data(), s.size()), &out);
  return out;
}

[[noreturn]] void crash(const char* what) {
  std::fprintf(stderr, "smtpd: impossible client state: %s\n", what);
  std::abort();
}

}  // namespace

std::string xtext_encode(std::string_view s) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 33 || u > 126 || c == '+' || c == '=') {
      out += '+';
      out += kHex[u >> 4];
      out += kHex[u & 15];
    } else {
      out += c;
    }
  }
  return out;
}

ClientSession::ClientSession(ClientSettings settings) : settings_(std::move(settings)) {
  in_tls_ = settings_.implicit_tls;
}

int ClientSession::timeout_seconds() const {
  switch (step_) {  // RFC 5321 4.5.3.2
    case Step::kData: return 120;     // DATA initiation
    case Step::kBodyOut:
    case Step::kBdat: return 180;     // data block
    case Step::kDataEnd: return 600;  // DATA termination
    default: return 300;
  }
}

ClientEvent ClientSession::next() {
  if (done_pending_) {
    done_pending_ = false;
    step_ = Step::kReady;
    return ClientEvent::kTransactionDone;
  }
  while (true) {
    switch (step_) {
      case Step::kDone:
        return ClientEvent::kClosed;
      case Step::kBodyOut:
        if (!body_requested_) {
          body_requested_ = true;
          return ClientEvent::kBody;
        }
        crash("next() before body() after kBody");
      case Step::kReady:
        if (parser_.empty()) return ClientEvent::kReady;
        break;  // unsolicited input (a 421 before closing): read it
      default:
        break;
    }
    if (tls_pending_) crash("next() before tls_started()");
    Reply r;
    const ReplyParser::Status st = parser_.next(r);
    if (st == ReplyParser::Status::kNeedMore) return ClientEvent::kNeedInput;
    if (st == ReplyParser::Status::kError) {
      output_.clear();
      step_ = Step::kDone;
      session_error_ = Reply(451, "4.5.0", "protocol error: " + parser_.error());
      fail_all_pending(session_error_);
      return ClientEvent::kFailed;
    }
    const ClientEvent e = on_reply(r);
    if (e != ClientEvent::kNeedInput) return e;
  }
}

ClientEvent ClientSession::fail(Reply r) {
  session_error_ = std::move(r);
  fail_all_pending(session_error_);
  command("QUIT");  // RFC 5321 3.1/4.1.1.10: be polite on the way out
  step_ = Step::kDone;
  return ClientEvent::kFailed;
}

void ClientSession::fail_all_pending(const Reply& r) {
  for (size_t i = 0; i < results_.size(); ++i) {
    if (results_[i].code == 0 || (accepted_[i] && !final_[i] && results_[i].code / 100 == 2)) results_[i] = r;
  }
}

ClientEvent ClientSession::on_reply(const Reply& r) {
  switch (step_) {
    case Step::kGreeting:
      if (r.code / 100 != 2) return fail(r);  // RFC 5321 3.1: 554 means no service
      command(std::string(settings_.lmtp ? "LHLO " : "EHLO ") + settings_.helo_name);
      step_ = Step::kEhlo;
      return ClientEvent::kNeedInput;
    case Step::kEhlo:
      return on_ehlo(r);
    case Step::kHelo:
      if (r.code / 100 != 2) return fail(r);
      caps_ = ServerCapabilities();
      return after_hello();
    case Step::kStartTls:
      if (r.code == 220) {
        // Anything the server sent after its 220 came in plaintext and
        // could be an injected reply: drop it before the handshake.
        parser_.discard();
        tls_pending_ = true;
        return ClientEvent::kStartTls;
      }
      if (settings_.tls == TlsPolicy::kEncrypt || settings_.tls == TlsPolicy::kVerify) {
        return fail(Reply(450, "4.7.4", "STARTTLS refused: " + r.summary()));
      }
      tls_refused_ = true;
      return after_hello();
    case Step::kAuth:
      if (r.code == 235) {
        authenticated_ = true;
        return after_hello();
      }
      // Bad credentials are our configuration's fault: defer, do not bounce.
      return fail(Reply(450, "4.7.8", "authentication failed: " + r.summary()));
    case Step::kAuthLoginUser:
    case Step::kAuthLoginPass:
      if (r.code != 334) return fail(Reply(450, "4.7.8", "authentication failed: " + r.summary()));
      command(base64(step_ == Step::kAuthLoginUser ? settings_.auth_user : settings_.auth_password));
      step_ = step_ == Step::kAuthLoginUser ? Step::kAuthLoginPass : Step::kAuth;
      return ClientEvent::kNeedInput;
    case Step::kReady:
      // Unsolicited: normally a 421 before the server closes.
      return fail(r.code / 100 == 4 ? r : Reply(421, "4.4.2", "server closed the session: " + r.summary()));
    case Step::kQuit:
      step_ = Step::kDone;
      return ClientEvent::kClosed;
    default:
      return on_transaction_reply(r);
  }
}

ClientEvent ClientSession::on_ehlo(const Reply& r) {
  if (r.code / 100 == 2) {
    parse_ehlo(r);
    return after_hello();
  }
  // RFC 5321 3.2: fall back to HELO when EHLO is not understood. LMTP has
  // no fallback (RFC 2033 4.1).
  if (r.code / 100 == 5 && !settings_.lmtp && !in_tls_) {
    command("HELO " + settings_.helo_name);
    step_ = Step::kHelo;
    return ClientEvent::kNeedInput;
  }
  return fail(r);
}

void ClientSession::parse_ehlo(const Reply& r) {
  caps_ = ServerCapabilities();
  caps_.esmtp = true;
  for (size_t i = 1; i < r.lines.size(); ++i) {
    const std::string line = upper(r.lines[i]);
    const size_t sp = line.find(' ');
    const std::string key = line.substr(0, sp);
    const std::string arg = sp == std::string::npos ? "" : line.substr(sp + 1);
    if (key == "PIPELINING") caps_.pipelining = true;
    else if (key == "STARTTLS") caps_.starttls = true;
    else if (key == "8BITMIME") caps_.eightbitmime = true;
    else if (key == "SMTPUTF8") caps_.smtputf8 = true;
    else if (key == "CHUNKING") caps_.chunking = true;
    else if (key == "DSN") caps_.dsn = true;
    else if (key == "ENHANCEDSTATUSCODES") caps_.enhanced_codes = true;
    else if (key == "SIZE") caps_.size = std::strtoull(arg.c_str(), nullptr, 10);
    else if (key == "AUTH") {
      size_t p = 0;
      while (p < arg.size()) {
        const size_t e = std::min(arg.find(' ', p), arg.size());
        if (e > p) caps_.auth.insert(arg.substr(p, e - p));
        p = e + 1;
      }
    }
  }
}

ClientEvent ClientSession::after_hello() {
  if (!in_tls_ && settings_.tls != TlsPolicy::kNone && caps_.starttls && !tls_refused_) {
    command("STARTTLS");
    step_ = Step::kStartTls;
    return ClientEvent::kNeedInput;
  }
  if (!in_tls_ && (settings_.tls == TlsPolicy::kEncrypt || settings_.tls == TlsPolicy::kVerify)) {
    return fail(Reply(450, "4.7.4", "TLS is required, but the server does not offer STARTTLS"));
  }
  if (!settings_.auth_user.empty() && !authenticated_) return begin_auth();
  step_ = Step::kReady;
  return ClientEvent::kReady;
}

ClientEvent ClientSession::begin_auth() {
  if (!in_tls_ && !settings_.auth_without_tls) {
    return fail(Reply(450, "4.7.0", "refusing to send credentials without TLS"));
  }
  if (caps_.auth.count("PLAIN")) {
    command("AUTH PLAIN " + base64(std::string("\0", 1) + settings_.auth_user + std::string("\0", 1) +
                                   settings_.auth_password));  // RFC 4616
    step_ = Step::kAuth;
    return ClientEvent::kNeedInput;
  }
  if (caps_.auth.count("LOGIN")) {
    command("AUTH LOGIN");
    step_ = Step::kAuthLoginUser;
    return ClientEvent::kNeedInput;
  }
  return fail(Reply(450, "4.7.0", "credentials configured, but the server offers no AUTH PLAIN or LOGIN"));
}

void ClientSession::tls_started() {
  if (!tls_pending_) crash("tls_started() without kStartTls");
  tls_pending_ = false;
  in_tls_ = true;
  // RFC 3207 4.2: forget what the server said before TLS and ask again.
  caps_ = ServerCapabilities();
  command(std::string(settings_.lmtp ? "LHLO " : "EHLO ") + settings_.helo_name);
  step_ = Step::kEhlo;
}

void ClientSession::send(OutboundMessage message) {
  if (step_ != Step::kReady) crash("send() when not ready");
  message_ = std::move(message);
  const size_t n = message_.recipients.size();
  results_.assign(n, Reply());
  accepted_.assign(n, false);
  final_.assign(n, false);
  awaiting_.clear();
  rcpt_replies_ = 0;
  mail_ok_ = false;
  body_requested_ = false;
  at_line_start_ = true;
  ended_with_crlf_ = true;
  // What the server cannot take is refused before anything is sent.
  std::optional<Reply> refuse;
  if (message_.smtputf8 && !caps_.smtputf8) {
    refuse = Reply(553, "5.6.7", "the server does not support SMTPUTF8 (RFC 6531 3.5)");
  } else if (message_.eight_bit && !caps_.eightbitmime) {
    refuse = Reply(554, "5.6.3", "8-bit message, but the server does not offer 8BITMIME (RFC 6152 3)");
  } else if (caps_.size > 0 && message_.size > caps_.size) {
    refuse = Reply(552, "5.3.4", "message size exceeds the server's fixed maximum (RFC 1870)");
  }
  if (refuse) {
    results_.assign(n, *refuse);
    step_ = Step::kDone;  // finish_transaction() puts it back to kReady
    done_pending_ = true;
    return;
  }
  use_bdat_ = caps_.chunking;
  step_ = Step::kMail;
  if (need_rset_) {
    command("RSET");
    awaiting_.push_back(Awaiting::kRset);
    return;  // the envelope follows the RSET reply
  }
  send_envelope_commands();
}

std::string ClientSession::mail_command() const {
  std::string c = "MAIL FROM:<" + message_.sender.str() + ">";
  if (caps_.size > 0 && message_.size > 0) c += " SIZE=" + std::to_string(message_.size);
  if (message_.eight_bit) c += " BODY=8BITMIME";
  if (message_.smtputf8) c += " SMTPUTF8";
  if (caps_.dsn) {
    if (message_.ret == DsnRet::kFull) c += " RET=FULL";
    if (message_.ret == DsnRet::kHdrs) c += " RET=HDRS";
    if (!message_.envid.empty()) c += " ENVID=" + message_.envid;
  }
  return c;
}

std::string ClientSession::rcpt_command(const Recipient& r) const {
  std::string c = "RCPT TO:<" + r.path.str() + ">";
  if (caps_.dsn) {
    if (r.notify & kNotifyNever) {
      c += " NOTIFY=NEVER";
    } else if (r.notify != 0) {
      std::string list;
      if (r.notify & kNotifySuccess) list += ",SUCCESS";
      if (r.notify & kNotifyFailure) list += ",FAILURE";
      if (r.notify & kNotifyDelay) list += ",DELAY";
      c += " NOTIFY=" + list.substr(1);
    }
    if (!r.orcpt.empty()) c += " ORCPT=" + r.orcpt;
  }
  return c;
}

void ClientSession::send_envelope_commands() {
  command(mail_command());
  awaiting_.push_back(Awaiting::kMail);
  if (!caps_.pipelining) return;  // RCPTs follow the MAIL reply
  // RFC 2920 3.1: MAIL, RCPT... and DATA may go out as one group; BDAT
  // waits for the RCPT replies so that no body is sent for nobody.
  for (const Recipient& r : message_.recipients) {
    command(rcpt_command(r));
    awaiting_.push_back(Awaiting::kRcpt);
  }
  if (!use_bdat_) {
    command("DATA");
    awaiting_.push_back(Awaiting::kData);
  }
}

bool ClientSession::any_accepted() const {
  for (bool a : accepted_) {
    if (a) return true;
  }
  return false;
}

// After the last RCPT reply: on to the body, or done when nobody took it.
ClientEvent ClientSession::after_recipients() {
  if (!any_accepted()) {
    need_rset_ = true;
    if (!awaiting_.empty()) return ClientEvent::kNeedInput;  // a pipelined DATA reply is due
    return finish_transaction();
  }
  if (use_bdat_) {
    step_ = Step::kBodyOut;
    body_requested_ = false;
    return ClientEvent::kNeedInput;  // next() hands out kBody
  }
  if (!caps_.pipelining) {
    command("DATA");
    awaiting_.push_back(Awaiting::kData);
    step_ = Step::kData;
  }
  return ClientEvent::kNeedInput;
}

ClientEvent ClientSession::on_transaction_reply(const Reply& r) {
  if (awaiting_.empty()) return fail(Reply(451, "4.5.0", "protocol error: unexpected reply " + r.summary()));
  const Awaiting what = awaiting_.front();
  awaiting_.erase(awaiting_.begin());
  switch (what) {
    case Awaiting::kRset:
      need_rset_ = false;
      send_envelope_commands();
      return ClientEvent::kNeedInput;
    case Awaiting::kMail:
      mail_ok_ = r.code / 100 == 2;
      if (!mail_ok_) {
        results_.assign(results_.size(), r);
        need_rset_ = true;
        if (!awaiting_.empty()) return ClientEvent::kNeedInput;  // pipelined replies still to come
        return finish_transaction();
      }
      if (!caps_.pipelining) {
        command(rcpt_command(message_.recipients[0]));
        awaiting_.push_back(Awaiting::kRcpt);
        step_ = Step::kRcpt;
      }
      return ClientEvent::kNeedInput;
    case Awaiting::kRcpt: {
      const size_t i = rcpt_replies_++;
      if (mail_ok_) {
        results_[i] = r;
        accepted_[i] = r.code / 100 == 2;
      }
      if (i + 1 < message_.recipients.size()) {
        if (!caps_.pipelining) {
          command(rcpt_command(message_.recipients[i + 1]));
          awaiting_.push_back(Awaiting::kRcpt);
        }
        return ClientEvent::kNeedInput;
      }
      if (!mail_ok_) return awaiting_.empty() ? finish_transaction() : ClientEvent::kNeedInput;
      return after_recipients();
    }
    case Awaiting::kData:
      if (r.code == 354) {
        if (!mail_ok_ || !any_accepted()) {
          // RFC 2920 3.1: a 354 although no recipient was accepted: send
          // an empty message and ignore the outcome.
          output_ += ".\r\n";
          awaiting_.push_back(Awaiting::kDataEnd);
          discard_data_end_ = true;
          step_ = Step::kDataEnd;
          return ClientEvent::kNeedInput;
        }
        step_ = Step::kBodyOut;
        body_requested_ = false;
        return ClientEvent::kNeedInput;
      }
      if (mail_ok_) {
        for (size_t i = 0; i < results_.size(); ++i) {
          if (accepted_[i]) results_[i] = r;
        }
      }
      need_rset_ = true;
      return finish_transaction();
    case Awaiting::kBdatChunk:
      if (r.code / 100 != 2) {
        for (size_t i = 0; i < results_.size(); ++i) {
          if (accepted_[i]) results_[i] = r;
        }
        need_rset_ = true;
        return finish_transaction();
      }
      step_ = Step::kBodyOut;
      body_requested_ = false;
      return ClientEvent::kNeedInput;
    case Awaiting::kDataEnd:
    case Awaiting::kBdatLast:
      if (discard_data_end_) {
        discard_data_end_ = false;
        need_rset_ = true;
        return finish_transaction();
      }
      // SMTP: one reply for every accepted recipient. LMTP (RFC 2033 4.2):
      // one reply per accepted recipient, in RCPT order.
      for (size_t i = 0; i < results_.size(); ++i) {
        if (!accepted_[i] || results_[i].code / 100 != 2 || final_[i]) continue;
        results_[i] = r;
        final_[i] = true;
        if (settings_.lmtp) break;
      }
      if (!awaiting_.empty()) return ClientEvent::kNeedInput;
      if (r.code / 100 != 2 && !settings_.lmtp) need_rset_ = true;
      return finish_transaction();
  }
  crash("unknown awaited reply");
}

ClientEvent ClientSession::finish_transaction() {
  step_ = Step::kReady;
  awaiting_.clear();
  return ClientEvent::kTransactionDone;
}

void ClientSession::stuff(std::string_view chunk) {
  // RFC 5321 4.5.2: a line that starts with "." gets another one.
  size_t start = 0;
  for (size_t i = 0; i < chunk.size(); ++i) {
    if (at_line_start_ && chunk[i] == '.') {
      output_.append(chunk.data() + start, i - start);
      output_ += '.';
      start = i;
    }
    at_line_start_ = chunk[i] == '\n';
  }
  output_.append(chunk.data() + start, chunk.size() - start);
  if (!chunk.empty()) {
    ended_with_crlf_ = chunk.size() >= 2 ? chunk.substr(chunk.size() - 2) == "\r\n"
                                         : (last_was_cr_ && chunk[0] == '\n');
    last_was_cr_ = chunk.back() == '\r';
  }
}

void ClientSession::body(std::string_view chunk, bool last) {
  if (step_ != Step::kBodyOut || !body_requested_) crash("body() without kBody");
  body_requested_ = false;
  const size_t accepted = static_cast<size_t>(std::count(accepted_.begin(), accepted_.end(), true));
  if (use_bdat_) {
    if (chunk.empty() && !last) return;  // nothing to send; ask again
    // RFC 3030 2: BDAT size [LAST], then exactly size octets.
    output_ += "BDAT " + std::to_string(chunk.size()) + (last ? " LAST" : "") + "\r\n";
    output_.append(chunk);
    if (last) {
      for (size_t i = 0; i < (settings_.lmtp ? accepted : 1); ++i) awaiting_.push_back(Awaiting::kBdatLast);
      step_ = Step::kDataEnd;
    } else {
      awaiting_.push_back(Awaiting::kBdatChunk);
      step_ = Step::kBdat;
    }
    return;
  }
  stuff(chunk);
  if (!last) return;
  if (!ended_with_crlf_) output_ += "\r\n";
  output_ += ".\r\n";
  for (size_t i = 0; i < (settings_.lmtp ? accepted : 1); ++i) awaiting_.push_back(Awaiting::kDataEnd);
  step_ = Step::kDataEnd;
}

void ClientSession::quit() {
  if (step_ == Step::kDone) return;
  command("QUIT");
  step_ = Step::kQuit;
}

}  // namespace smtpd::smtp
