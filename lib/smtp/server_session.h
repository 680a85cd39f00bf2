// The server side of an SMTP session as a sans-I/O state machine.
//
// The driver (lib/net) feeds received octets with feed() and then calls
// next() until it returns kNeedInput; each Event tells it what to do. Replies
// accumulate in output() and are flushed by the driver before it reads
// again, which is what RFC 2920 asks of a pipelining server. Decisions the
// machine cannot take alone (policy at MAIL and RCPT, storing and committing
// the message, verifying credentials, the TLS handshake) are events that the
// driver answers with decide(), auth_result() or tls_started().
//
// The machine enforces every protocol rule: command syntax and sequence,
// line limits, SIZE, recipient count, error budget, bare CR/LF, STARTTLS
// input flushing, AUTH exchange. It never blocks and never allocates more
// than its bounded input and output buffers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "lib/smtp/data_decoder.h"
#include "lib/smtp/envelope.h"
#include "lib/smtp/reply.h"

namespace smtpd::smtp {

struct SessionSettings {
  std::string hostname = "localhost";
  uint64_t max_message_size = 26214400;
  size_t max_recipients = 100;
  int max_errors = 20;               // replies >= 500 before 421 (Postfix: 20)
  bool tls_available = true;         // STARTTLS may be offered
  bool implicit_tls = false;         // smtps: the session starts inside TLS
  bool auth_available = false;       // a users file is configured
  bool auth_without_tls = false;     // test-only: offer AUTH in plaintext
  bool require_auth = false;         // submission: AUTH before MAIL (RFC 6409 4.3)
  bool require_tls = false;          // submission: STARTTLS before MAIL/AUTH
};

enum class EventKind {
  kNeedInput,   // flush output(), then read and feed()
  kFlush,       // output() is large: write it, then call next() again
  kMail,        // MAIL parsed: decide(nullopt) accepts, decide(reply) rejects
  kRcpt,        // RCPT parsed (pending_recipient()): decide as for kMail
  kDataBegin,   // first DATA/BDAT of a transaction: open storage; decide
  kDataChunk,   // data_chunk() holds message octets to store
  kDataEnd,     // message complete: commit; decide(reply) with the result
  kDataAbort,   // message refused by the machine: drop what was stored
  kAuth,        // credentials in auth_request(): auth_result()
  kStartTls,    // flush output(), handshake, then tls_started()
  kClose,       // flush output() and close the connection
};

struct AuthRequest {
  std::string mechanism;  // "PLAIN" or "LOGIN"
  std::string authzid;
  std::string username;
  std::string password;
};

enum class TimeoutKind { kCommand, kData };

class ServerSession {
 public:
  explicit ServerSession(SessionSettings settings);

  // Appends received octets. Call only after next() returned kNeedInput.
  void feed(std::string_view bytes);
  // Advances the machine; see EventKind.
  EventKind next();

  // Replies waiting to be written; the driver clears it after writing.
  std::string& output() { return output_; }

  // Answers to kMail, kRcpt, kDataBegin (nullopt: accept) and kDataEnd
  // (the reply to send, normally "250 2.0.0 Ok: queued as ID").
  void decide(std::optional<Reply> reply);
  void auth_result(bool ok);
  // AUTH refused without a verdict on the credentials (a client locked out
  // after too many failures): `reply` instead of 235/535.
  void auth_refused(const Reply& reply);
  void tls_started();

  // The driver's own reasons to end the session: a read timeout (421 4.4.2)
  // or a shutdown (421 4.3.2). Both queue a reply and make next() return
  // kClose. On shutdown a message in progress is dropped (kDataAbort first).
  void timeout();
  void shutdown();
  // New message limits (a policy update): they apply from the next
  // transaction, never to one in progress, and EHLO advertises them.
  void set_limits(uint64_t max_message_size, size_t max_recipients);

  // Read accessors for the driver and for logs.
  const Envelope& envelope() const { return envelope_; }
  const Recipient& pending_recipient() const { return pending_rcpt_; }
  const AuthRequest& auth_request() const { return auth_; }
  std::string_view data_chunk() const { return chunk_; }
  const std::string& helo_name() const { return helo_; }
  bool esmtp() const { return esmtp_; }
  bool in_tls() const { return in_tls_; }
  bool authenticated() const { return authenticated_; }
  const std::string& auth_user() const { return auth_user_; }
  bool in_transaction() const { return has_sender_; }
  // Part of a command line has arrived, not its end: the RFC 5321
  // 4.5.3.2.7 timeout runs for the whole line, not per byte.
  bool mid_command_line() const;
  bool closed() const { return mode_ == Mode::kClosed; }
  TimeoutKind timeout_kind() const;
  // The reply and envelope of the last transaction that ended (for logs:
  // after kDataAbort the current envelope is already reset).
  const Reply& last_reply() const { return last_reply_; }
  const Envelope& last_envelope() const { return last_envelope_; }

 private:
  enum class Mode {
    kCommand,      // waiting for a command line
    kDiscardLine,  // skipping the rest of an over-long line
    kData,         // DATA content until CRLF.CRLF
    kDataDone,     // CRLF.CRLF seen; the last chunk may still be out
    kBdat,         // BDAT chunk octets (bdat_remaining_)
    kAuthPlain,    // AUTH PLAIN waiting for its response line
    kAuthLoginUser,
    kAuthLoginPass,
    kWaitDecision, // an event is pending an answer from the driver
    kClosing,      // kClose to be returned
    kClosed,
  };
  enum class Pending { kNone, kMail, kRcpt, kDataBegin, kDataEnd, kAuth, kStartTls };

  // Each step returns an event for the driver, or nullopt to keep going.
  std::optional<EventKind> step_command();
  std::optional<EventKind> step_data();
  std::optional<EventKind> step_bdat();
  std::optional<EventKind> handle_line(std::string_view line);
  std::optional<EventKind> handle_auth_line(std::string_view line);
  std::optional<EventKind> dispatch(std::string_view verb, std::string_view args);

  std::optional<EventKind> cmd_helo(std::string_view args, bool extended);
  std::optional<EventKind> cmd_mail(std::string_view args);
  std::optional<EventKind> cmd_rcpt(std::string_view args);
  std::optional<EventKind> cmd_data(std::string_view args);
  std::optional<EventKind> cmd_bdat(std::string_view args);
  std::optional<EventKind> cmd_auth(std::string_view args);
  std::optional<EventKind> cmd_starttls(std::string_view args);
  std::optional<EventKind> decode_plain(std::string_view b64);

  std::optional<EventKind> finish_message();
  std::optional<EventKind> after_bdat_chunk();
  std::optional<Reply> transaction_ready() const;

  void reply(int code, std::string_view enhanced, std::string_view text);
  void reply(const Reply& r);
  // Queues a reply and charges the error budget (replies >= 500).
  std::optional<EventKind> error(int code, std::string_view enhanced, std::string_view text);
  void count_error(const Reply& r);
  EventKind close_with(int code, std::string_view enhanced, std::string_view text);
  EventKind wait_for(Pending p, EventKind e);
  void end_session(const Reply& r);
  void reset_transaction();
  void abort_transaction(const Reply& r);
  bool auth_offered() const;
  void compact_input();

  SessionSettings settings_;
  std::string input_;
  size_t input_pos_ = 0;
  std::string output_;
  std::string chunk_;
  Mode mode_ = Mode::kCommand;
  Mode resume_mode_ = Mode::kCommand;
  Pending pending_ = Pending::kNone;
  bool abort_pending_ = false;

  std::string helo_;
  bool esmtp_ = false;
  bool in_tls_ = false;
  bool authenticated_ = false;
  std::string auth_user_;
  int errors_ = 0;

  // Transaction state.
  bool has_sender_ = false;
  std::optional<std::pair<uint64_t, size_t>> next_limits_;  // set_limits() during a transaction
  Envelope envelope_;
  Recipient pending_rcpt_;
  bool rcpt_attempted_ = false;
  bool data_started_ = false;   // storage opened (kDataBegin accepted)
  bool begin_is_bdat_ = false;
  bool bdat_used_ = false;
  bool bdat_last_ = false;
  uint64_t bdat_remaining_ = 0;
  std::optional<Reply> chunk_failed_;  // reply owed once the chunk is consumed
  uint64_t message_size_ = 0;
  bool too_big_ = false;
  DataDecoder decoder_;
  ContentChecker bdat_checker_;
  Reply last_reply_;
  Envelope last_envelope_;

  AuthRequest auth_;
};

}  // namespace smtpd::smtp
