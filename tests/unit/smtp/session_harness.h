// A scripted driver for ServerSession: feeds bytes, answers its events with
// configurable decisions and records what a real driver would have done.
#pragma once

#include <functional>
#include <optional>
#include <string>

#include "lib/smtp/server_session.h"

namespace smtpd::smtp::testing {

struct Harness {
  explicit Harness(SessionSettings settings = SessionSettings()) : session(std::move(settings)) {
    out = session.output();
    session.output().clear();
  }

  // Feeds input and runs the machine until it needs more; returns the
  // replies written meanwhile.
  std::string run(std::string_view input) {
    session.feed(input);
    return pump();
  }

  std::string pump() {
    std::string replies;
    while (!closed) {
      const EventKind e = session.next();
      events += event_letter(e);
      switch (e) {
        case EventKind::kNeedInput:
          replies += take();
          return replies;
        case EventKind::kFlush:
          replies += take();
          break;
        case EventKind::kMail:
          session.decide(mail_reply);
          break;
        case EventKind::kRcpt:
          session.decide(rcpt_policy ? rcpt_policy(session.pending_recipient()) : std::nullopt);
          break;
        case EventKind::kDataBegin:
          if (!begin_reply) stored.clear();
          session.decide(begin_reply);
          break;
        case EventKind::kDataChunk:
          stored += session.data_chunk();
          break;
        case EventKind::kDataEnd:
          ++commits;
          committed = stored;
          session.decide(end_reply);
          break;
        case EventKind::kDataAbort:
          ++aborts;
          stored.clear();
          break;
        case EventKind::kAuth:
          last_auth = session.auth_request();
          session.auth_result(auth_ok);
          break;
        case EventKind::kStartTls:
          replies += take();
          ++tls_handshakes;
          session.tls_started();
          break;
        case EventKind::kClose:
          replies += take();
          closed = true;
          break;
      }
    }
    return replies;
  }

  std::string take() {
    std::string s = std::move(session.output());
    session.output().clear();
    return s;
  }

  static char event_letter(EventKind e) {
    switch (e) {
      case EventKind::kNeedInput: return 'n';
      case EventKind::kFlush: return 'f';
      case EventKind::kMail: return 'M';
      case EventKind::kRcpt: return 'R';
      case EventKind::kDataBegin: return 'B';
      case EventKind::kDataChunk: return 'c';
      case EventKind::kDataEnd: return 'E';
      case EventKind::kDataAbort: return 'A';
      case EventKind::kAuth: return 'U';
      case EventKind::kStartTls: return 'T';
      case EventKind::kClose: return 'C';
    }
    return '?';
  }

  ServerSession session;
  std::string out;  // the greeting
  std::optional<Reply> mail_reply;
  std::function<std::optional<Reply>(const Recipient&)> rcpt_policy;
  std::optional<Reply> begin_reply;
  Reply end_reply = Reply(250, "2.0.0", "Ok: queued as TESTID");
  bool auth_ok = true;
  AuthRequest last_auth;
  std::string stored, committed, events;
  int commits = 0, aborts = 0, tls_handshakes = 0;
  bool closed = false;
};

}  // namespace smtpd::smtp::testing
