#include "lib/queue/record.h"

#include "absl/status/status.h"

namespace smtpd::queue {
namespace {

constexpr uint8_t kVersion = 1;

class Encoder {
 public:
  void u8(uint8_t v) { out_.push_back(static_cast<char>(v)); }
  void varint(uint64_t v) {
    while (v >= 0x80) {
      out_.push_back(static_cast<char>((v & 0x7F) | 0x80));
      v >>= 7;
    }
    out_.push_back(static_cast<char>(v));
  }
  void str(std::string_view s) {
    varint(s.size());
    out_.append(s);
  }
  std::string take() { return std::move(out_); }

 private:
  std::string out_;
};

class Decoder {
 public:
  explicit Decoder(std::string_view in) : in_(in) {}
  bool ok() const { return ok_; }
  uint8_t u8() {
    if (in_.empty()) return fail(), 0;
    const auto v = static_cast<uint8_t>(in_.front());
    in_.remove_prefix(1);
    return v;
  }
  uint64_t varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (in_.empty()) return fail(), 0;
      const auto b = static_cast<uint8_t>(in_.front());
      in_.remove_prefix(1);
      v |= static_cast<uint64_t>(b & 0x7F) << shift;
      if (!(b & 0x80)) return v;
    }
    return fail(), 0;
  }
  std::string str() {
    const uint64_t n = varint();
    if (!ok_ || n > in_.size()) return fail(), std::string();
    std::string s(in_.substr(0, n));
    in_.remove_prefix(n);
    return s;
  }
  bool done() const { return in_.empty(); }

 private:
  void fail() { ok_ = false; }
  std::string_view in_;
  bool ok_ = true;
};

void put_path(Encoder& e, const smtp::Path& p) {
  e.u8((p.null ? 1 : 0) | (p.postmaster ? 2 : 0) | (p.utf8 ? 4 : 0) |
       (p.mailbox.domain_is_literal ? 8 : 0));
  e.str(p.mailbox.local);
  e.str(p.mailbox.domain);
}

smtp::Path get_path(Decoder& d) {
  smtp::Path p;
  const uint8_t f = d.u8();
  p.null = f & 1;
  p.postmaster = f & 2;
  p.utf8 = f & 4;
  p.mailbox.domain_is_literal = f & 8;
  p.mailbox.local = d.str();
  p.mailbox.domain = d.str();
  return p;
}

}  // namespace

std::string encode_record(const MessageRecord& r) {
  Encoder e;
  e.u8(kVersion);
  e.str(r.id);
  e.varint(static_cast<uint64_t>(r.arrival_unix_us));
  const smtp::Envelope& env = r.envelope;
  put_path(e, env.sender);
  e.varint(env.recipients.size());
  for (const smtp::Recipient& rc : env.recipients) {
    put_path(e, rc.path);
    e.u8(rc.notify);
    e.str(rc.orcpt);
  }
  e.u8(env.declared_size ? 1 : 0);
  e.varint(env.declared_size.value_or(0));
  e.u8(static_cast<uint8_t>(env.body));
  e.u8(env.smtputf8 ? 1 : 0);
  e.u8(static_cast<uint8_t>(env.ret));
  e.str(env.envid);
  e.str(env.auth_param);
  e.str(r.client_address);
  e.str(r.helo);
  e.str(r.auth_user);
  e.str(r.protocol);
  e.str(r.source);
  e.varint(r.size);
  e.varint(r.extents.size());
  for (const Extent& x : r.extents) {
    e.varint(x.segment);
    e.varint(x.offset);
    e.varint(x.length);
  }
  return e.take();
}

absl::StatusOr<MessageRecord> decode_record(std::string_view bytes) {
  Decoder d(bytes);
  if (d.u8() != kVersion) return absl::DataLossError("spool record: unknown version");
  MessageRecord r;
  r.id = d.str();
  r.arrival_unix_us = static_cast<int64_t>(d.varint());
  smtp::Envelope& env = r.envelope;
  env.sender = get_path(d);
  const uint64_t n = d.varint();
  for (uint64_t i = 0; i < n && d.ok(); ++i) {
    smtp::Recipient rc;
    rc.path = get_path(d);
    rc.notify = d.u8();
    rc.orcpt = d.str();
    env.recipients.push_back(std::move(rc));
  }
  const bool has_size = d.u8();
  const uint64_t size = d.varint();
  if (has_size) env.declared_size = size;
  env.body = static_cast<smtp::BodyType>(d.u8());
  env.smtputf8 = d.u8();
  env.ret = static_cast<smtp::DsnRet>(d.u8());
  env.envid = d.str();
  env.auth_param = d.str();
  r.client_address = d.str();
  r.helo = d.str();
  r.auth_user = d.str();
  r.protocol = d.str();
  r.source = d.str();
  r.size = d.varint();
  const uint64_t extents = d.varint();
  for (uint64_t i = 0; i < extents && d.ok(); ++i) {
    Extent x;
    x.segment = d.varint();
    x.offset = d.varint();
    x.length = d.varint();
    r.extents.push_back(x);
  }
  if (!d.ok() || !d.done()) return absl::DataLossError("spool record: truncated or corrupt");
  return r;
}

}  // namespace smtpd::queue
