#include "lib/smtp/server_session.h"

#include <strings.h>

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <cstdlib>

#include "absl/strings/escaping.h"
#include "absl/strings/string_view.h"

namespace smtpd::smtp {
namespace {

// RFC 5321 4.5.3.1.4: 512 octets including CRLF. Extensions raise it for the
// commands they add parameters to: RFC 1870 (SIZE), RFC 3461 section 5 (RET,
// ENVID +100 on MAIL; NOTIFY, ORCPT +500 on RCPT), RFC 6531 (UTF-8 paths),
// and RFC 4954 section 4 (AUTH initial responses, 12288 octets).
constexpr size_t kMaxCommandLine = 512;
constexpr size_t kMaxMailRcptLine = 2048;
constexpr size_t kMaxAuthLine = 12288;
constexpr size_t kFlushThreshold = 16384;
constexpr size_t kMaxEnvid = 100;  // RFC 3461 4.4
constexpr size_t kMaxOrcpt = 500;  // RFC 3461 4.2

[[noreturn]] void crash(const char* what) {
  std::fprintf(stderr, "smtpd: impossible session state: %s\n", what);
  std::abort();
}

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && strncasecmp(a.data(), b.data(), a.size()) == 0;
}

bool istarts_with(std::string_view s, std::string_view prefix) {
  return s.size() >= prefix.size() && iequals(s.substr(0, prefix.size()), prefix);
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// Parses 1*DIGIT into a uint64; false on syntax or overflow.
bool parse_u64(std::string_view s, uint64_t& out) {
  if (s.empty() || s.size() > 20) return false;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
  }
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc() && ptr == s.data() + s.size();
}

bool base64_decode(std::string_view in, std::string& out) {
  if (in == "=") {  // RFC 4954 4: "=" is an empty initial response
    out.clear();
    return true;
  }
  return absl::Base64Unescape(absl::string_view(in.data(), in.size()), &out);
}

struct Param {
  std::string_view key;
  std::string_view value;
  bool has_value = false;
};

// esmtp-param = esmtp-keyword ["=" esmtp-value] (RFC 5321 4.1.2), separated
// by SP. Returns false on a malformed keyword or value.
bool split_params(std::string_view s, std::vector<Param>& out) {
  while (true) {
    while (!s.empty() && s.front() == ' ') s.remove_prefix(1);
    if (s.empty()) return true;
    const size_t end = std::min(s.find(' '), s.size());
    std::string_view token = s.substr(0, end);
    s.remove_prefix(end);
    Param p;
    const size_t eq = token.find('=');
    p.key = token.substr(0, eq);
    if (eq != std::string_view::npos) {
      p.value = token.substr(eq + 1);
      p.has_value = true;
      if (p.value.empty()) return false;
      for (char c : p.value) {
        const auto u = static_cast<unsigned char>(c);
        if (u < 33 || u == '=' || u == 127) return false;  // esmtp-value
      }
    }
    // esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")
    if (p.key.empty()) return false;
    for (size_t i = 0; i < p.key.size(); ++i) {
      const char c = p.key[i];
      const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                      (c == '-' && i > 0);
      if (!ok) return false;
    }
    out.push_back(p);
  }
}

}  // namespace

ServerSession::ServerSession(SessionSettings settings) : settings_(std::move(settings)) {
  in_tls_ = settings_.implicit_tls;
  // RFC 5321 4.2 greeting; RFC 2034 4 exempts it from enhanced codes.
  reply(220, "", settings_.hostname + " ESMTP smtpd");
}

void ServerSession::feed(std::string_view bytes) { input_.append(bytes); }

bool ServerSession::mid_command_line() const {
  switch (mode_) {
    case Mode::kDiscardLine:
      return true;
    case Mode::kCommand:
    case Mode::kAuthPlain:
    case Mode::kAuthLoginUser:
    case Mode::kAuthLoginPass:
      return input_pos_ < input_.size();
    default:
      return false;
  }
}

void ServerSession::compact_input() {
  if (input_pos_ == 0) return;
  input_.erase(0, input_pos_);
  input_pos_ = 0;
}

TimeoutKind ServerSession::timeout_kind() const {
  return (mode_ == Mode::kData || mode_ == Mode::kBdat) ? TimeoutKind::kData : TimeoutKind::kCommand;
}

void ServerSession::reply(int code, std::string_view enhanced, std::string_view text) {
  reply(Reply(code, enhanced, text));
}

void ServerSession::reply(const Reply& r) { r.render(output_); }

std::optional<EventKind> ServerSession::error(int code, std::string_view enhanced,
                                              std::string_view text) {
  reply(code, enhanced, text);
  if (code >= 500 && ++errors_ >= settings_.max_errors) {
    return close_with(421, "4.7.0", settings_.hostname + " Error: too many errors");
  }
  return std::nullopt;
}

EventKind ServerSession::close_with(int code, std::string_view enhanced, std::string_view text) {
  reply(code, enhanced, text);
  chunk_.clear();
  if (data_started_) {
    abort_transaction(Reply(code, enhanced, text));
    mode_ = Mode::kClosing;
    return EventKind::kDataAbort;
  }
  mode_ = Mode::kClosed;
  return EventKind::kClose;
}

EventKind ServerSession::wait_for(Pending p, EventKind e) {
  pending_ = p;
  resume_mode_ = mode_;
  mode_ = Mode::kWaitDecision;
  return e;
}

// Ends a transaction whose message was being stored: the driver sees
// kDataAbort and logs last_reply()/last_envelope().
void ServerSession::abort_transaction(const Reply& r) {
  last_reply_ = r;
  reset_transaction();
}

void ServerSession::reset_transaction() {
  if (has_sender_) last_envelope_ = envelope_;
  has_sender_ = false;
  if (next_limits_) {
    settings_.max_message_size = next_limits_->first;
    settings_.max_recipients = next_limits_->second;
    next_limits_.reset();
  }
  envelope_ = Envelope();
  pending_rcpt_ = Recipient();
  rcpt_attempted_ = false;
  data_started_ = false;
  bdat_used_ = false;
  bdat_last_ = false;
  bdat_remaining_ = 0;
  message_size_ = 0;
  too_big_ = false;
  chunk_failed_.reset();
  decoder_.reset();
  bdat_checker_ = ContentChecker();
}

bool ServerSession::auth_offered() const {
  return settings_.auth_available && (in_tls_ || settings_.auth_without_tls);
}

EventKind ServerSession::next() {
  chunk_.clear();
  while (true) {
    if (abort_pending_) {
      abort_pending_ = false;
      return EventKind::kDataAbort;
    }
    switch (mode_) {
      case Mode::kClosing:
        mode_ = Mode::kClosed;
        return EventKind::kClose;
      case Mode::kClosed:
        return EventKind::kClose;
      case Mode::kWaitDecision:
        crash("next() called while a decision is pending");
      default:
        break;
    }
    if (output_.size() > kFlushThreshold) return EventKind::kFlush;
    std::optional<EventKind> e;
    switch (mode_) {
      case Mode::kData:
        e = step_data();
        break;
      case Mode::kDataDone:
        e = finish_message();
        break;
      case Mode::kBdat:
        e = step_bdat();
        break;
      default:
        e = step_command();
        break;
    }
    if (e) return *e;
  }
}

std::optional<EventKind> ServerSession::step_command() {
  const std::string_view in = std::string_view(input_).substr(input_pos_);
  const size_t lf = in.find('\n');
  // The buffer bound is the longest line any command may have; per-verb
  // limits are checked once the line is complete.
  const size_t limit = kMaxAuthLine;
  if (lf == std::string_view::npos) {
    if (mode_ == Mode::kDiscardLine) {
      input_.clear();
      input_pos_ = 0;
      return EventKind::kNeedInput;
    }
    if (in.size() > limit) {
      input_.clear();
      input_pos_ = 0;
      mode_ = Mode::kDiscardLine;
      return error(500, "5.5.2", "Line too long (RFC 5321 4.5.3.1.4)");
    }
    compact_input();
    return EventKind::kNeedInput;
  }
  input_pos_ += lf + 1;
  if (mode_ == Mode::kDiscardLine) {
    mode_ = Mode::kCommand;
    return std::nullopt;
  }
  // Only CRLF ends a line; a bare LF or CR is refused and ends the session,
  // as Postfix's smtpd_forbid_bare_newline does (RFC 5321 2.3.8).
  std::string_view line = in.substr(0, lf);
  if (line.empty() || line.back() != '\r') {
    return close_with(521, "5.5.2", settings_.hostname + " Error: bare <LF> received");
  }
  line.remove_suffix(1);
  if (line.find('\r') != std::string_view::npos) {
    return close_with(521, "5.5.2", settings_.hostname + " Error: bare <CR> received");
  }
  if (mode_ == Mode::kAuthPlain || mode_ == Mode::kAuthLoginUser ||
      mode_ == Mode::kAuthLoginPass) {
    return handle_auth_line(line);
  }
  return handle_line(line);
}

std::optional<EventKind> ServerSession::handle_line(std::string_view line) {
  if (line.find('\0') != std::string_view::npos) {
    return error(500, "5.5.2", "NUL octet in command");
  }
  const size_t sp = std::min(line.find(' '), line.size());
  const std::string_view verb = line.substr(0, sp);
  const std::string_view args = sp < line.size() ? line.substr(sp + 1) : std::string_view();
  size_t limit = kMaxCommandLine;
  if (iequals(verb, "MAIL") || iequals(verb, "RCPT")) limit = kMaxMailRcptLine;
  if (iequals(verb, "AUTH")) limit = kMaxAuthLine;
  if (line.size() + 2 > limit) return error(500, "5.5.2", "Line too long (RFC 5321 4.5.3.1.4)");
  return dispatch(verb, args);
}

std::optional<EventKind> ServerSession::dispatch(std::string_view verb, std::string_view args) {
  if (iequals(verb, "EHLO")) return cmd_helo(args, true);
  if (iequals(verb, "HELO")) return cmd_helo(args, false);
  if (iequals(verb, "MAIL")) return cmd_mail(args);
  if (iequals(verb, "RCPT")) return cmd_rcpt(args);
  if (iequals(verb, "DATA")) return cmd_data(args);
  if (iequals(verb, "BDAT")) return cmd_bdat(args);
  if (iequals(verb, "AUTH")) return cmd_auth(args);
  if (iequals(verb, "STARTTLS")) return cmd_starttls(args);
  if (iequals(verb, "RSET")) {
    if (!trim(args).empty()) return error(501, "5.5.4", "Syntax: RSET");
    reset_transaction();
    reply(250, "2.0.0", "Ok");
    return std::nullopt;
  }
  if (iequals(verb, "NOOP")) {  // RFC 5321 4.1.1.9: arguments are ignored
    reply(250, "2.0.0", "Ok");
    return std::nullopt;
  }
  if (iequals(verb, "QUIT")) {
    if (!trim(args).empty()) return error(501, "5.5.4", "Syntax: QUIT");
    reply(221, "2.0.0", "Bye");
    mode_ = Mode::kClosing;
    return std::nullopt;
  }
  if (iequals(verb, "VRFY")) {
    if (trim(args).empty()) return error(501, "5.5.4", "Syntax: VRFY address");
    // RFC 5321 3.5.3: 252 when the server will not verify.
    reply(252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery");
    return std::nullopt;
  }
  if (iequals(verb, "HELP")) {
    reply(214, "2.0.0",
          "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS AUTH");
    return std::nullopt;
  }
  // Commands smtpd recognises and refuses on purpose: 502 (RFC 5321 4.2.4)
  // with the reason, so that neither client nor operator mistakes them for
  // missing work.
  struct Refused {
    const char* verb;
    const char* why;
  };
  static constexpr Refused kRefused[] = {
      {"EXPN", "EXPN is not offered: list membership is not disclosed (RFC 5321 7.3)"},
      {"TURN", "TURN is not offered: it hands mail to an unauthenticated client (RFC 5321 F.1)"},
      {"ATRN", "ATRN (RFC 2645 on-demand relay) is not offered"},
      {"ETRN", "ETRN is not offered: the queue retries by itself (RFC 1985)"},
      {"SEND", "SEND was removed from SMTP (RFC 5321 F.6)"},
      {"SOML", "SOML was removed from SMTP (RFC 5321 F.6)"},
      {"SAML", "SAML was removed from SMTP (RFC 5321 F.6)"},
  };
  for (const Refused& r : kRefused) {
    if (iequals(verb, r.verb)) return error(502, "5.5.1", r.why);
  }
  return error(500, "5.5.2", "Command unrecognized");
}

std::optional<EventKind> ServerSession::cmd_helo(std::string_view args, bool extended) {
  const std::string_view name = trim(args);
  if (name.empty() || name.find(' ') != std::string_view::npos || name.size() > 255) {
    return error(501, "5.5.4", extended ? "Syntax: EHLO hostname" : "Syntax: HELO hostname");
  }
  for (char c : name) {
    if (static_cast<unsigned char>(c) < 33 || c == 127) {
      return error(501, "5.5.4", "Invalid characters in host name");
    }
  }
  // RFC 5321 4.1.4: EHLO/HELO in a transaction resets it, like RSET.
  reset_transaction();
  helo_ = std::string(name);
  esmtp_ = extended;
  if (!extended) {
    reply(250, "", settings_.hostname);
    return std::nullopt;
  }
  Reply r;
  r.code = 250;
  r.lines = {settings_.hostname, "PIPELINING", "SIZE " + std::to_string(settings_.max_message_size),
             "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES", "CHUNKING", "DSN"};
  if (settings_.tls_available && !in_tls_) r.lines.push_back("STARTTLS");
  if (auth_offered()) r.lines.push_back("AUTH PLAIN LOGIN");
  reply(r);
  return std::nullopt;
}

std::optional<EventKind> ServerSession::cmd_mail(std::string_view args) {
  if (helo_.empty()) return error(503, "5.5.1", "Send HELO/EHLO first");
  if (has_sender_) return error(503, "5.5.1", "Nested MAIL command");
  if (settings_.require_tls && !in_tls_) {
    return error(530, "5.7.0", "Must issue a STARTTLS command first");  // RFC 3207 4
  }
  if (settings_.require_auth && !authenticated_) {
    return error(530, "5.7.0", "Authentication required");  // RFC 4954 6
  }
  if (!istarts_with(args, "FROM:")) return error(501, "5.5.4", "Syntax: MAIL FROM:<address>");
  std::string_view rest = trim(args.substr(5));
  PathOptions opts;
  opts.allow_null = true;
  opts.allow_utf8 = true;  // checked against SMTPUTF8 below
  const PathParse parsed = parse_path(rest, opts);
  if (parsed.error == PathError::kTooLong) return error(501, "5.1.7", "Path too long");
  if (parsed.error != PathError::kNone) return error(501, "5.1.7", "Bad sender address syntax");
  rest.remove_prefix(parsed.consumed);
  if (!rest.empty() && rest.front() != ' ') return error(501, "5.1.7", "Bad sender address syntax");
  std::vector<Param> params;
  if (!split_params(rest, params)) return error(501, "5.5.4", "Syntax error in parameters");
  Envelope env;
  env.sender = parsed.path;
  bool seen_size = false, seen_body = false, seen_utf8 = false, seen_ret = false,
       seen_envid = false, seen_auth = false;
  auto dup = [](bool& seen) {
    const bool was = seen;
    seen = true;
    return was;
  };
  for (const Param& p : params) {
    if (iequals(p.key, "SIZE")) {
      uint64_t n = 0;
      if (dup(seen_size) || !p.has_value) return error(501, "5.5.4", "Bad SIZE parameter");
      if (!parse_u64(p.value, n)) n = UINT64_MAX;  // too many digits: too big
      if (n > settings_.max_message_size) {
        // RFC 1870 6.1
        return error(552, "5.3.4", "Message size exceeds fixed maximum message size");
      }
      env.declared_size = n;
    } else if (iequals(p.key, "BODY")) {
      if (dup(seen_body) || !p.has_value) return error(501, "5.5.4", "Bad BODY parameter");
      if (iequals(p.value, "7BIT")) {
        env.body = BodyType::k7Bit;
      } else if (iequals(p.value, "8BITMIME")) {
        env.body = BodyType::k8BitMime;
      } else {  // BINARYMIME is not offered (RFC 3030 3)
        return error(555, "5.5.4", "Unsupported BODY type");
      }
    } else if (iequals(p.key, "SMTPUTF8")) {
      if (dup(seen_utf8) || p.has_value) return error(501, "5.5.4", "Bad SMTPUTF8 parameter");
      env.smtputf8 = true;
    } else if (iequals(p.key, "RET")) {
      if (dup(seen_ret) || !p.has_value) return error(501, "5.5.4", "Bad RET parameter");
      if (iequals(p.value, "FULL")) {
        env.ret = DsnRet::kFull;
      } else if (iequals(p.value, "HDRS")) {
        env.ret = DsnRet::kHdrs;
      } else {
        return error(501, "5.5.4", "Bad RET parameter");
      }
    } else if (iequals(p.key, "ENVID")) {
      if (dup(seen_envid) || !p.has_value || p.value.size() > kMaxEnvid || !is_xtext(p.value)) {
        return error(501, "5.5.4", "Bad ENVID parameter");
      }
      env.envid = std::string(p.value);
    } else if (iequals(p.key, "AUTH")) {  // RFC 4954 5
      if (dup(seen_auth) || !p.has_value || (p.value != "<>" && !is_xtext(p.value))) {
        return error(501, "5.5.4", "Bad AUTH parameter");
      }
      env.auth_param = std::string(p.value);
    } else {
      return error(555, "5.5.4", "Unsupported MAIL parameter");  // RFC 5321 4.1.1.11
    }
  }
  if (parsed.path.utf8 && !env.smtputf8) {
    return error(553, "5.6.7", "Non-ASCII address requires SMTPUTF8");  // RFC 6531 3.5
  }
  envelope_ = std::move(env);
  return wait_for(Pending::kMail, EventKind::kMail);
}

std::optional<EventKind> ServerSession::cmd_rcpt(std::string_view args) {
  if (!has_sender_) return error(503, "5.5.1", "Need MAIL command");
  if (!istarts_with(args, "TO:")) return error(501, "5.5.4", "Syntax: RCPT TO:<address>");
  std::string_view rest = trim(args.substr(3));
  PathOptions opts;
  opts.allow_postmaster = true;
  opts.allow_utf8 = true;
  const PathParse parsed = parse_path(rest, opts);
  if (parsed.error == PathError::kTooLong) return error(501, "5.1.3", "Path too long");
  if (parsed.error != PathError::kNone) return error(501, "5.1.3", "Bad recipient address syntax");
  rest.remove_prefix(parsed.consumed);
  if (!rest.empty() && rest.front() != ' ') {
    return error(501, "5.1.3", "Bad recipient address syntax");
  }
  std::vector<Param> params;
  if (!split_params(rest, params)) return error(501, "5.5.4", "Syntax error in parameters");
  Recipient rcpt;
  rcpt.path = parsed.path;
  bool seen_notify = false, seen_orcpt = false;
  for (const Param& p : params) {
    if (iequals(p.key, "NOTIFY")) {  // RFC 3461 4.1
      if (seen_notify || !p.has_value) return error(501, "5.5.4", "Bad NOTIFY parameter");
      seen_notify = true;
      std::string_view v = p.value;
      while (!v.empty()) {
        const size_t comma = std::min(v.find(','), v.size());
        const std::string_view item = v.substr(0, comma);
        v.remove_prefix(std::min(comma + 1, v.size()));
        if (iequals(item, "NEVER")) {
          rcpt.notify |= kNotifyNever;
        } else if (iequals(item, "SUCCESS")) {
          rcpt.notify |= kNotifySuccess;
        } else if (iequals(item, "FAILURE")) {
          rcpt.notify |= kNotifyFailure;
        } else if (iequals(item, "DELAY")) {
          rcpt.notify |= kNotifyDelay;
        } else {
          return error(501, "5.5.4", "Bad NOTIFY parameter");
        }
      }
      if ((rcpt.notify & kNotifyNever) && rcpt.notify != kNotifyNever) {
        return error(501, "5.5.4", "NOTIFY=NEVER cannot be combined");
      }
    } else if (iequals(p.key, "ORCPT")) {  // RFC 3461 4.2
      const size_t semi = p.value.find(';');
      if (seen_orcpt || !p.has_value || p.value.size() > kMaxOrcpt || semi == 0 ||
          semi == std::string_view::npos || !is_xtext(p.value.substr(semi + 1))) {
        return error(501, "5.5.4", "Bad ORCPT parameter");
      }
      seen_orcpt = true;
      rcpt.orcpt = std::string(p.value);
    } else {
      return error(555, "5.5.4", "Unsupported RCPT parameter");
    }
  }
  if (parsed.path.utf8 && !envelope_.smtputf8) {
    return error(553, "5.6.7", "Non-ASCII address requires SMTPUTF8");
  }
  rcpt_attempted_ = true;
  if (envelope_.recipients.size() >= settings_.max_recipients) {
    reply(452, "4.5.3", "Too many recipients");  // RFC 5321 4.5.3.1.10
    return std::nullopt;
  }
  pending_rcpt_ = std::move(rcpt);
  return wait_for(Pending::kRcpt, EventKind::kRcpt);
}

// Shared checks of DATA and BDAT: a transaction with recipients.
std::optional<Reply> ServerSession::transaction_ready() const {
  if (!has_sender_) return Reply(503, "5.5.1", "Need MAIL command");
  if (envelope_.recipients.empty()) {
    // RFC 2920 3.1: 554 when every RCPT of a pipelined group failed.
    return rcpt_attempted_ ? Reply(554, "5.5.1", "No valid recipients")
                           : Reply(503, "5.5.1", "Need RCPT command");
  }
  return std::nullopt;
}

std::optional<EventKind> ServerSession::cmd_data(std::string_view args) {
  if (!trim(args).empty()) return error(501, "5.5.4", "Syntax: DATA");
  if (bdat_used_) return error(503, "5.5.1", "DATA not allowed after BDAT");  // RFC 3030 2
  if (auto r = transaction_ready()) return error(r->code, r->enhanced, r->lines.front());
  begin_is_bdat_ = false;
  return wait_for(Pending::kDataBegin, EventKind::kDataBegin);
}

std::optional<EventKind> ServerSession::cmd_bdat(std::string_view args) {
  // BDAT chunk-size [SP "LAST"] (RFC 3030 2). Without a valid size the
  // octets that follow cannot be told apart from commands, so the session
  // ends rather than risk reading message content as commands.
  args = trim(args);
  const size_t sp = std::min(args.find(' '), args.size());
  uint64_t size = 0;
  const std::string_view tail = trim(args.substr(sp));
  if (!parse_u64(args.substr(0, sp), size) || !(tail.empty() || iequals(tail, "LAST"))) {
    return close_with(501, "5.5.4", "Syntax: BDAT size [LAST]; closing connection");
  }
  bdat_remaining_ = size;
  bdat_last_ = !tail.empty();
  std::optional<Reply> refuse = transaction_ready();
  if (!refuse && !data_started_ && bdat_used_) {
    // An earlier chunk of this transaction failed; keep failing until RSET.
    refuse = Reply(503, "5.5.1", "Previous BDAT failed; send RSET");
  }
  chunk_failed_ = refuse;
  mode_ = Mode::kBdat;
  if (refuse) return std::nullopt;
  bdat_used_ = true;
  if (!data_started_) {
    begin_is_bdat_ = true;
    return wait_for(Pending::kDataBegin, EventKind::kDataBegin);
  }
  return std::nullopt;
}

std::optional<EventKind> ServerSession::step_data() {
  const std::string_view in = std::string_view(input_).substr(input_pos_);
  if (in.empty()) {
    compact_input();
    return EventKind::kNeedInput;
  }
  const DataDecoder::Result r = decoder_.feed(in, chunk_);
  input_pos_ += r.consumed;
  if (r.status == DataDecoder::Status::kBareNewline) {
    return close_with(521, "5.5.2", settings_.hostname + " Error: bare <CR> or <LF> in message data");
  }
  message_size_ += chunk_.size();
  if (message_size_ > settings_.max_message_size) {
    too_big_ = true;
    chunk_.clear();  // keep reading, store nothing more (RFC 1870 6.3)
  }
  if (r.status == DataDecoder::Status::kEnd) mode_ = Mode::kDataDone;
  if (!chunk_.empty()) return EventKind::kDataChunk;
  return std::nullopt;
}

std::optional<EventKind> ServerSession::finish_message() {
  mode_ = Mode::kCommand;
  std::optional<Reply> refuse;
  ContentFlags flags;
  flags.nul = decoder_.nul_seen();
  flags.long_line = decoder_.long_line_seen();
  if (bdat_used_) flags = bdat_checker_.flags();
  if (too_big_) {
    refuse = Reply(552, "5.3.4", "Message size exceeds fixed maximum message size");
  } else if (flags.bare_cr_or_lf) {
    refuse = Reply(554, "5.6.0", "Message contains bare <CR> or <LF> (RFC 5321 2.3.8)");
  } else if (flags.nul) {
    refuse = Reply(554, "5.6.0", "Message contains NUL octets (RFC 5322 2.3)");
  } else if (flags.long_line) {
    refuse = Reply(554, "5.6.0", "Message has a line over 998 octets (RFC 5321 4.5.3.1.6)");
  }
  if (!refuse) return wait_for(Pending::kDataEnd, EventKind::kDataEnd);
  abort_transaction(*refuse);
  if (error(refuse->code, refuse->enhanced, refuse->lines.front())) {
    mode_ = Mode::kClosing;  // the error budget is spent: kDataAbort, then kClose
  }
  return EventKind::kDataAbort;
}

std::optional<EventKind> ServerSession::step_bdat() {
  if (bdat_remaining_ > 0) {
    const std::string_view in = std::string_view(input_).substr(input_pos_);
    if (in.empty()) {
      compact_input();
      return EventKind::kNeedInput;
    }
    const size_t n = static_cast<size_t>(std::min<uint64_t>(bdat_remaining_, in.size()));
    const std::string_view bytes = in.substr(0, n);
    input_pos_ += n;
    bdat_remaining_ -= n;
    if (chunk_failed_ || !data_started_) return std::nullopt;  // consumed and dropped
    bdat_checker_.scan(bytes);
    message_size_ += n;
    if (message_size_ > settings_.max_message_size) too_big_ = true;
    if (!too_big_) {
      chunk_.assign(bytes.data(), bytes.size());
      return EventKind::kDataChunk;
    }
    return std::nullopt;
  }
  return after_bdat_chunk();
}

std::optional<EventKind> ServerSession::after_bdat_chunk() {
  mode_ = Mode::kCommand;
  if (chunk_failed_) {
    const Reply r = *chunk_failed_;
    const bool had_data = data_started_;
    chunk_failed_.reset();
    if (had_data) abort_transaction(r);
    if (auto e = error(r.code, r.enhanced, r.lines.front())) {
      if (!had_data) return e;
      mode_ = Mode::kClosing;
    }
    return had_data ? std::optional<EventKind>(EventKind::kDataAbort) : std::nullopt;
  }
  if (!bdat_last_) {
    if (too_big_) {
      // Refuse at once; the rest of the transaction's chunks are refused too.
      chunk_failed_ = Reply(552, "5.3.4", "Message size exceeds fixed maximum message size");
      return after_bdat_chunk();
    }
    reply(250, "2.0.0", "Chunk received");
    return std::nullopt;
  }
  bdat_checker_.finish();
  return finish_message();
}

std::optional<EventKind> ServerSession::cmd_auth(std::string_view args) {
  if (!auth_offered()) {
    if (settings_.auth_available && !in_tls_) {
      // RFC 4954 6
      return error(538, "5.7.11", "Encryption required for requested authentication mechanism");
    }
    return error(502, "5.5.1", "AUTH not available");
  }
  if (!esmtp_) return error(503, "5.5.1", "Send EHLO first");
  if (authenticated_) return error(503, "5.5.1", "Already authenticated");
  if (has_sender_) return error(503, "5.5.1", "AUTH not permitted during a mail transaction");
  args = trim(args);
  const size_t sp = std::min(args.find(' '), args.size());
  const std::string_view mech = args.substr(0, sp);
  const std::string_view initial = trim(args.substr(sp));
  auth_ = AuthRequest();
  if (iequals(mech, "PLAIN")) {
    auth_.mechanism = "PLAIN";
    if (initial.empty()) {
      reply(334, "", "");
      mode_ = Mode::kAuthPlain;
      return std::nullopt;
    }
    return decode_plain(initial);
  }
  if (iequals(mech, "LOGIN")) {
    auth_.mechanism = "LOGIN";
    if (initial.empty()) {
      reply(334, "", "VXNlcm5hbWU6");  // "Username:"
      mode_ = Mode::kAuthLoginUser;
      return std::nullopt;
    }
    if (!base64_decode(initial, auth_.username)) return error(501, "5.5.2", "Invalid base64 data");
    reply(334, "", "UGFzc3dvcmQ6");  // "Password:"
    mode_ = Mode::kAuthLoginPass;
    return std::nullopt;
  }
  return error(504, "5.5.4", "Unrecognized authentication mechanism");
}

std::optional<EventKind> ServerSession::decode_plain(std::string_view b64) {
  std::string decoded;
  if (!base64_decode(b64, decoded)) return error(501, "5.5.2", "Invalid base64 data");
  // RFC 4616 2: [authzid] NUL authcid NUL passwd
  const size_t a = decoded.find('\0');
  const size_t b = a == std::string::npos ? a : decoded.find('\0', a + 1);
  if (b == std::string::npos || decoded.find('\0', b + 1) != std::string::npos) {
    return error(501, "5.5.2", "Invalid PLAIN response");
  }
  auth_.authzid = decoded.substr(0, a);
  auth_.username = decoded.substr(a + 1, b - a - 1);
  auth_.password = decoded.substr(b + 1);
  return wait_for(Pending::kAuth, EventKind::kAuth);
}

std::optional<EventKind> ServerSession::handle_auth_line(std::string_view line) {
  const Mode mode = mode_;
  mode_ = Mode::kCommand;
  if (line == "*") return error(501, "5.0.0", "Authentication cancelled");  // RFC 4954 4
  if (line.size() + 2 > kMaxAuthLine) return error(500, "5.5.6", "Authentication exchange line too long");
  if (mode == Mode::kAuthPlain) return decode_plain(line);
  if (mode == Mode::kAuthLoginUser) {
    if (!base64_decode(line, auth_.username)) return error(501, "5.5.2", "Invalid base64 data");
    reply(334, "", "UGFzc3dvcmQ6");
    mode_ = Mode::kAuthLoginPass;
    return std::nullopt;
  }
  if (!base64_decode(line, auth_.password)) return error(501, "5.5.2", "Invalid base64 data");
  return wait_for(Pending::kAuth, EventKind::kAuth);
}

std::optional<EventKind> ServerSession::cmd_starttls(std::string_view args) {
  if (!trim(args).empty()) return error(501, "5.5.4", "Syntax: STARTTLS");
  if (in_tls_) return error(503, "5.5.1", "TLS already active");
  if (!settings_.tls_available) return error(502, "5.5.1", "STARTTLS not available");
  reply(220, "2.0.0", "Ready to start TLS");
  // RFC 3207 4.2 and CVE-2011-0411: anything pipelined after STARTTLS was
  // sent in plaintext and is discarded, and everything learnt before TLS is
  // forgotten (EHLO must be sent again).
  input_.clear();
  input_pos_ = 0;
  reset_transaction();
  helo_.clear();
  esmtp_ = false;
  return wait_for(Pending::kStartTls, EventKind::kStartTls);
}

void ServerSession::decide(std::optional<Reply> r) {
  if (mode_ != Mode::kWaitDecision) crash("decide() without a pending event");
  const Pending p = pending_;
  pending_ = Pending::kNone;
  mode_ = resume_mode_;
  switch (p) {
    case Pending::kMail:
      if (r) {
        envelope_ = Envelope();
        count_error(*r);
      } else {
        has_sender_ = true;
        reply(250, "2.1.0", "Ok");
      }
      return;
    case Pending::kRcpt:
      if (r) {
        count_error(*r);
      } else {
        envelope_.recipients.push_back(std::move(pending_rcpt_));
        reply(250, "2.1.5", "Ok");
      }
      pending_rcpt_ = Recipient();
      return;
    case Pending::kDataBegin:
      if (r) {
        if (begin_is_bdat_) {
          chunk_failed_ = *r;  // consume the chunk, then reply
        } else {
          count_error(*r);
        }
        return;
      }
      data_started_ = true;
      if (!begin_is_bdat_) {
        reply(354, "", "End data with <CR><LF>.<CR><LF>");
        decoder_.reset();
        mode_ = Mode::kData;
      }
      return;
    case Pending::kDataEnd:
      if (!r) crash("kDataEnd needs a reply");
      last_reply_ = *r;
      data_started_ = false;
      reset_transaction();
      count_error(*r);
      return;
    default:
      crash("decide() for an event that takes another answer");
  }
}

void ServerSession::count_error(const Reply& r) {
  reply(r);
  if (r.code >= 500 && ++errors_ >= settings_.max_errors) {
    close_with(421, "4.7.0", settings_.hostname + " Error: too many errors");
  }
}

void ServerSession::auth_result(bool ok) {
  if (mode_ != Mode::kWaitDecision || pending_ != Pending::kAuth) crash("auth_result() unexpected");
  pending_ = Pending::kNone;
  mode_ = Mode::kCommand;
  auth_.password.assign(auth_.password.size(), '\0');
  auth_.password.clear();
  if (ok) {
    authenticated_ = true;
    auth_user_ = auth_.username;
    reply(235, "2.7.0", "Authentication successful");
  } else {
    count_error(Reply(535, "5.7.8", "Authentication credentials invalid"));
  }
}

void ServerSession::auth_refused(const Reply& r) {
  if (mode_ != Mode::kWaitDecision || pending_ != Pending::kAuth) crash("auth_refused() unexpected");
  pending_ = Pending::kNone;
  mode_ = Mode::kCommand;
  auth_.password.assign(auth_.password.size(), '\0');
  auth_.password.clear();
  count_error(r);
}

void ServerSession::tls_started() {
  if (mode_ != Mode::kWaitDecision || pending_ != Pending::kStartTls) crash("tls_started() unexpected");
  pending_ = Pending::kNone;
  mode_ = Mode::kCommand;
  in_tls_ = true;
}

void ServerSession::timeout() {
  end_session(Reply(421, "4.4.2", settings_.hostname + " Error: timeout exceeded"));
}

void ServerSession::set_limits(uint64_t max_message_size, size_t max_recipients) {
  if (has_sender_) {
    next_limits_ = {max_message_size, max_recipients};
    return;
  }
  settings_.max_message_size = max_message_size;
  settings_.max_recipients = max_recipients;
}

void ServerSession::shutdown() {
  end_session(Reply(421, "4.3.2", settings_.hostname + " Service shutting down"));
}

void ServerSession::end_session(const Reply& r) {
  if (mode_ == Mode::kClosed || mode_ == Mode::kClosing) return;
  reply(r);
  chunk_.clear();
  pending_ = Pending::kNone;
  if (data_started_) {
    abort_transaction(r);
    abort_pending_ = true;
  }
  mode_ = Mode::kClosing;
}

}  // namespace smtpd::smtp
