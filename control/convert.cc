#include "control/convert.h"

#include "lib/message/dsn.h"

namespace smtpd::control {
namespace {

// absl::string_view: Debian's Abseil has its own (TOOLCHAIN.md).
absl::Status field_error(const std::string& field, absl::string_view problem) {
  return absl::InvalidArgumentError(field + ": " + std::string(problem));
}

absl::Status access_from_proto(const google::protobuf::RepeatedPtrField<v1::AccessRule>& in, const std::string& name,
                               std::vector<policy::AccessRule>& out) {
  for (int i = 0; i < in.size(); ++i) {
    const v1::AccessRule& r = in[i];
    const std::string f = name + "[" + std::to_string(i) + "]";
    policy::AccessRule rule;
    rule.pattern = policy::lower_ascii(r.pattern());
    if (r.action() == v1::ACCESS_ACTION_ALLOW) {
      rule.allow = true;
      if (!r.reply().empty()) return field_error(f + ".reply", "only a DENY rule has a reply");
    } else if (r.action() == v1::ACCESS_ACTION_DENY) {
      if (!r.reply().empty()) {
        if (absl::Status s = rule.set_reply(r.reply()); !s.ok()) return field_error(f + ".reply", s.message());
      }
    } else {
      return field_error(f + ".action", "must be ACCESS_ACTION_ALLOW or ACCESS_ACTION_DENY");
    }
    out.push_back(std::move(rule));
  }
  return absl::OkStatus();
}

void access_to_proto(const std::vector<policy::AccessRule>& in,
                     google::protobuf::RepeatedPtrField<v1::AccessRule>* out) {
  for (const policy::AccessRule& r : in) {
    v1::AccessRule* p = out->Add();
    p->set_pattern(r.pattern);
    p->set_action(r.allow ? v1::ACCESS_ACTION_ALLOW : v1::ACCESS_ACTION_DENY);
    if (!r.allow) p->set_reply(r.reply_text());
  }
}

v1::TlsMode tls_to_proto(policy::TlsMode m) {
  switch (m) {
    case policy::TlsMode::kNone: return v1::TLS_MODE_NONE;
    case policy::TlsMode::kMay: return v1::TLS_MODE_MAY;
    case policy::TlsMode::kEncrypt: return v1::TLS_MODE_ENCRYPT;
    case policy::TlsMode::kVerify: return v1::TLS_MODE_VERIFY;
    case policy::TlsMode::kDefault: break;
  }
  return v1::TLS_MODE_UNSPECIFIED;
}

}  // namespace

absl::StatusOr<policy::PolicySnapshot> policy_from_proto(const v1::PolicySnapshot& p) {
  policy::PolicySnapshot s;
  s.local_domains.clear();
  for (const std::string& d : p.local_domains()) s.local_domains.insert(policy::lower_ascii(d));
  for (const std::string& d : p.relay_domains()) s.relay_domains.insert(policy::lower_ascii(d));
  for (int i = 0; i < p.trusted_networks_size(); ++i) {
    auto n = policy::Network::parse(p.trusted_networks(i));
    if (!n.ok()) return field_error("trusted_networks[" + std::to_string(i) + "]", n.status().message());
    s.trusted_networks.push_back(*n);
  }
  s.max_message_size = p.max_message_size();
  s.max_recipients = p.max_recipients();
  s.connections_per_client_per_minute = p.rate_limits().connections_per_client_per_minute();
  s.messages_per_sender_per_minute = p.rate_limits().messages_per_sender_per_minute();
  if (absl::Status st = access_from_proto(p.sender_access(), "sender_access", s.sender_access); !st.ok()) return st;
  if (absl::Status st = access_from_proto(p.recipient_access(), "recipient_access", s.recipient_access); !st.ok()) {
    return st;
  }
  s.routes.clear();
  for (const auto& [domain, route] : p.routes()) s.routes[policy::lower_ascii(domain)] = route;
  for (int i = 0; i < p.outbound_tls_size(); ++i) {
    const v1::TlsRule& r = p.outbound_tls(i);
    const std::string f = "outbound_tls[" + std::to_string(i) + "]";
    policy::TlsMode mode;
    switch (r.mode()) {
      case v1::TLS_MODE_NONE: mode = policy::TlsMode::kNone; break;
      case v1::TLS_MODE_MAY: mode = policy::TlsMode::kMay; break;
      case v1::TLS_MODE_ENCRYPT: mode = policy::TlsMode::kEncrypt; break;
      case v1::TLS_MODE_VERIFY: mode = policy::TlsMode::kVerify; break;
      default: return field_error(f + ".mode", "must be NONE, MAY, ENCRYPT or VERIFY");
    }
    const std::string domain = policy::lower_ascii(r.domain());
    if (domain.empty()) return field_error(f + ".domain", "must not be empty");
    if (s.outbound_tls.count(domain)) return field_error(f + ".domain", "'" + domain + "' appears twice");
    s.outbound_tls[domain] = mode;
  }
  if (absl::Status st = s.validate(); !st.ok()) return st;
  return s;
}

v1::PolicySnapshot policy_to_proto(const policy::PolicySnapshot& s) {
  v1::PolicySnapshot p;
  p.set_version(s.version);
  for (const std::string& d : s.local_domains) p.add_local_domains(d);
  for (const std::string& d : s.relay_domains) p.add_relay_domains(d);
  for (const policy::Network& n : s.trusted_networks) p.add_trusted_networks(n.text());
  p.set_max_message_size(s.max_message_size);
  p.set_max_recipients(static_cast<uint32_t>(s.max_recipients));
  p.mutable_rate_limits()->set_connections_per_client_per_minute(s.connections_per_client_per_minute);
  p.mutable_rate_limits()->set_messages_per_sender_per_minute(s.messages_per_sender_per_minute);
  access_to_proto(s.sender_access, p.mutable_sender_access());
  access_to_proto(s.recipient_access, p.mutable_recipient_access());
  for (const auto& [domain, route] : s.routes) (*p.mutable_routes())[domain] = route;
  for (const auto& [domain, mode] : s.outbound_tls) {
    v1::TlsRule* r = p.add_outbound_tls();
    r->set_domain(domain);
    r->set_mode(tls_to_proto(mode));
  }
  p.set_updated_by(s.updated_by);
  p.set_updated_unix_ms(s.updated_unix_ms);
  return p;
}

v1::MessageState message_state(const queue::MessageView& v) {
  const std::string_view s = v.state();
  if (s == "held") return v1::MESSAGE_STATE_HELD;
  if (s == "delivering") return v1::MESSAGE_STATE_DELIVERING;
  if (s == "deferred") return v1::MESSAGE_STATE_DEFERRED;
  return v1::MESSAGE_STATE_QUEUED;
}

v1::RecipientState recipient_state(const queue::MessageView& v, size_t i) {
  if (v.in_flight.count(i)) return v1::RECIPIENT_STATE_DELIVERING;
  switch (v.states[i].status) {
    case queue::RecipientStatus::kQueued: return v1::RECIPIENT_STATE_QUEUED;
    case queue::RecipientStatus::kDeferred: return v1::RECIPIENT_STATE_DEFERRED;
    case queue::RecipientStatus::kDelivered: return v1::RECIPIENT_STATE_DELIVERED;
    case queue::RecipientStatus::kFailed: return v1::RECIPIENT_STATE_FAILED;
  }
  return v1::RECIPIENT_STATE_UNSPECIFIED;
}

void summary_to_proto(const queue::MessageView& v, v1::MessageSummary* out) {
  out->set_id(v.record.id);
  out->set_state(message_state(v));
  out->set_sender(v.record.envelope.sender.str());
  out->set_size(v.record.size);
  out->set_arrival_unix_ms(v.record.arrival_unix_us / 1000);
  out->set_total_recipients(static_cast<int32_t>(v.states.size()));
  uint32_t attempts = 0;
  int64_t next = 0;
  for (size_t i = 0; i < v.states.size(); ++i) {
    const queue::RecipientState& st = v.states[i];
    attempts = std::max(attempts, st.attempts);
    if (st.final()) continue;
    out->add_recipients(v.record.envelope.recipients[i].path.str());
    if (!v.held && !v.in_flight.count(i) && (next == 0 || st.next_attempt_ms < next)) next = st.next_attempt_ms;
  }
  out->set_attempts(attempts);
  out->set_next_attempt_unix_ms(next);
  if (!v.attempts.empty()) {
    out->set_last_reply(v.attempts.back().reply);
  } else {
    for (const queue::RecipientState& st : v.states) {
      if (!st.last_reply.empty()) out->set_last_reply(st.last_reply);
    }
  }
}

v1::QueueEvent event_to_proto(const queue::QueueEvent& e) {
  v1::QueueEvent p;
  switch (e.kind) {
    case queue::QueueEvent::Kind::kQueued: p.set_kind(v1::QueueEvent::KIND_QUEUED); break;
    case queue::QueueEvent::Kind::kAttempt: p.set_kind(v1::QueueEvent::KIND_ATTEMPT); break;
    case queue::QueueEvent::Kind::kDelivered: p.set_kind(v1::QueueEvent::KIND_DELIVERED); break;
    case queue::QueueEvent::Kind::kDeferred: p.set_kind(v1::QueueEvent::KIND_DEFERRED); break;
    case queue::QueueEvent::Kind::kFailed: p.set_kind(v1::QueueEvent::KIND_FAILED); break;
    case queue::QueueEvent::Kind::kRemoved: p.set_kind(v1::QueueEvent::KIND_REMOVED); break;
    case queue::QueueEvent::Kind::kHeld: p.set_kind(v1::QueueEvent::KIND_HELD); break;
    case queue::QueueEvent::Kind::kReleased: p.set_kind(v1::QueueEvent::KIND_RELEASED); break;
  }
  p.set_id(e.id);
  p.set_unix_ms(e.unix_ms);
  p.set_sender(e.sender);
  // One recipient for outcomes; the first of several otherwise (the
  // message's full list is one GetMessage away).
  if (!e.recipients.empty()) p.set_recipient(e.recipients[0]);
  p.set_reply(e.reply);
  p.set_route(e.route);
  return p;
}

std::vector<std::pair<std::string, std::string>> header_fields(std::string_view message) {
  std::vector<std::pair<std::string, std::string>> out;
  const std::string_view block = message::header_block(message);
  size_t pos = 0;
  while (pos < block.size()) {
    size_t eol = block.find('\n', pos);
    if (eol == std::string_view::npos) eol = block.size();
    std::string_view line = block.substr(pos, eol - pos);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    pos = eol + 1;
    if (line.empty()) break;
    if ((line[0] == ' ' || line[0] == '\t') && !out.empty()) {
      out.back().second += " ";
      const size_t start = line.find_first_not_of(" \t");
      if (start != std::string_view::npos) out.back().second += line.substr(start);
      continue;
    }
    const size_t colon = line.find(':');
    if (colon == std::string_view::npos) continue;
    std::string_view value = line.substr(colon + 1);
    while (!value.empty() && (value.front() == ' ' || value.front() == '\t')) value.remove_prefix(1);
    out.emplace_back(std::string(line.substr(0, colon)), std::string(value));
  }
  return out;
}

}  // namespace smtpd::control
