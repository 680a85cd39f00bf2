// Relay decisions and network matching.
#include "lib/policy/policy.h"

#include <gtest/gtest.h>

namespace smtpd::policy {
namespace {

PolicySnapshot snapshot() {
  PolicySnapshot p;
  p.local_domains = {"example.test"};
  p.relay_domains = {"relay.test", ".sub.test"};
  p.trusted_networks = {*Network::parse("10.0.0.0/8"), *Network::parse("2001:db8::/32")};
  return p;
}

TEST(Policy, RelayDecisions) {
  const PolicySnapshot p = snapshot();
  EXPECT_EQ(p.decide_recipient("Example.TEST", false, false, "192.0.2.1"), RelayDecision::kLocal);
  EXPECT_EQ(p.decide_recipient("", true, false, "192.0.2.1"), RelayDecision::kLocal);
  EXPECT_EQ(p.decide_recipient("relay.test", false, false, "192.0.2.1"), RelayDecision::kRelayDomain);
  EXPECT_EQ(p.decide_recipient("a.b.sub.test", false, false, "192.0.2.1"), RelayDecision::kRelayDomain);
  EXPECT_EQ(p.decide_recipient("sub.test", false, false, "192.0.2.1"), RelayDecision::kDenied);
  EXPECT_EQ(p.decide_recipient("far.test", false, true, "192.0.2.1"), RelayDecision::kAuthenticated);
  EXPECT_EQ(p.decide_recipient("far.test", false, false, "10.1.2.3"), RelayDecision::kTrusted);
  EXPECT_EQ(p.decide_recipient("far.test", false, false, "::ffff:10.1.2.3"), RelayDecision::kTrusted);
  EXPECT_EQ(p.decide_recipient("far.test", false, false, "2001:db8::5"), RelayDecision::kTrusted);
  EXPECT_EQ(p.decide_recipient("far.test", false, false, "192.0.2.1"), RelayDecision::kDenied);
  // An address literal is never local by accident.
  EXPECT_EQ(p.decide_recipient("[10.0.0.1]", false, false, "192.0.2.1"), RelayDecision::kDenied);
}

TEST(Policy, DefaultIsNotAnOpenRelay) {
  PolicySnapshot p;
  p.local_domains = {"localhost"};
  EXPECT_EQ(p.decide_recipient("gmail.test", false, false, "127.0.0.1"), RelayDecision::kDenied);
}

TEST(Network, Parse) {
  EXPECT_TRUE(Network::parse("192.0.2.0/24").ok());
  EXPECT_TRUE(Network::parse("::1").ok());
  EXPECT_FALSE(Network::parse("192.0.2.0/33").ok());
  EXPECT_FALSE(Network::parse("host.test/8").ok());
  auto n = Network::parse("192.0.2.128/25");
  EXPECT_TRUE(n->contains("192.0.2.200"));
  EXPECT_FALSE(n->contains("192.0.2.1"));
  EXPECT_FALSE(n->contains("not an address"));
}

TEST(PolicyStore, SwapsSnapshots) {
  PolicyStore store(snapshot());
  auto before = store.current();
  PolicySnapshot next = snapshot();
  next.version = 2;
  store.replace(next);
  EXPECT_EQ(before->version, 1u);
  EXPECT_EQ(store.current()->version, 2u);
}

AccessRule rule(const std::string& pattern, bool allow = false) {
  AccessRule r;
  r.pattern = pattern;
  r.allow = allow;
  return r;
}

TEST(AccessRule, Patterns) {
  EXPECT_TRUE(rule("bob@example.test").matches("Bob@Example.TEST"));
  EXPECT_FALSE(rule("bob@example.test").matches("bob@other.test"));
  EXPECT_TRUE(rule("@example.test").matches("x@example.test"));
  EXPECT_TRUE(rule("example.test").matches("x@EXAMPLE.test"));
  EXPECT_FALSE(rule("example.test").matches("x@sub.example.test"));
  EXPECT_TRUE(rule(".example.test").matches("x@sub.example.test"));
  EXPECT_FALSE(rule(".example.test").matches("x@example.test"));
  EXPECT_TRUE(rule("postmaster@").matches("postmaster@anywhere.test"));
  EXPECT_FALSE(rule("postmaster@").matches("postmaster"));
  EXPECT_TRUE(rule("*").matches(""));  // the null sender
  EXPECT_FALSE(rule("example.test").matches(""));
}

TEST(AccessRule, FirstMatchDecides) {
  std::vector<AccessRule> rules = {rule("vip@spam.test", true), rule("spam.test")};
  EXPECT_TRUE(PolicySnapshot::match(rules, "vip@spam.test")->allow);
  EXPECT_FALSE(PolicySnapshot::match(rules, "x@spam.test")->allow);
  EXPECT_EQ(PolicySnapshot::match(rules, "x@ok.test"), nullptr);
}

TEST(AccessRule, Replies) {
  AccessRule r;
  ASSERT_TRUE(r.set_reply("550 5.7.1 Go away").ok());
  EXPECT_EQ(r.code, 550);
  EXPECT_EQ(r.enhanced, "5.7.1");
  EXPECT_EQ(r.reply_text(), "550 5.7.1 Go away");
  ASSERT_TRUE(r.set_reply("450 4.7.1 Later please").ok());
  EXPECT_FALSE(r.set_reply("250 2.0.0 fine").ok());        // not a refusal
  EXPECT_FALSE(r.set_reply("550 4.7.1 mixed class").ok());  // RFC 3463: same class
  EXPECT_FALSE(r.set_reply("550 5.7 short").ok());
  EXPECT_FALSE(r.set_reply("550 5.7.1").ok());              // no text
  EXPECT_FALSE(r.set_reply("550 5.7.1 bad\r\ninjection").ok());
  EXPECT_FALSE(r.set_reply("599 5.7.1 x").ok());            // RFC 5321 4.2: second digit 0-5
}

TEST(PolicySnapshot, RoutesAndTls) {
  PolicySnapshot p;
  p.routes = {{"*", "mx"}, {"local.test", "maildir:/var/mail"}};
  p.outbound_tls = {{"bank.test", TlsMode::kVerify}, {".corp.test", TlsMode::kEncrypt}};
  EXPECT_EQ(p.route_for("local.test"), "maildir:/var/mail");
  EXPECT_EQ(p.route_for("other.test"), "mx");
  EXPECT_EQ(p.tls_for("bank.test"), TlsMode::kVerify);
  EXPECT_EQ(p.tls_for("mx.corp.test"), TlsMode::kEncrypt);
  EXPECT_EQ(p.tls_for("corp.test"), TlsMode::kDefault);
  EXPECT_EQ(p.tls_for("x.test"), TlsMode::kDefault);
}

TEST(PolicySnapshot, ValidateNamesTheField) {
  PolicySnapshot p;
  EXPECT_TRUE(p.validate().ok());
  p.max_recipients = 0;
  EXPECT_EQ(p.validate().message().substr(0, 15), "max_recipients:");
  p = PolicySnapshot();
  p.routes = {{"x.test", "mx"}};
  EXPECT_EQ(p.validate().message().substr(0, 7), "routes:");
  p.routes = {{"*", "relay:nohost"}};
  EXPECT_EQ(p.validate().message().substr(0, 8), "routes.*");
  p = PolicySnapshot();
  p.sender_access = {rule("")};
  EXPECT_EQ(p.validate().message().substr(0, 24), "sender_access[0].pattern");
  p.sender_access = {rule("a b@x.test")};
  EXPECT_EQ(p.validate().message().substr(0, 24), "sender_access[0].pattern");
  p.sender_access = {rule("vip@x.test"), rule("@x.test"), rule("x.test"), rule(".x.test"), rule("abuse@"), rule("*")};
  EXPECT_TRUE(p.validate().ok()) << p.validate();
  p = PolicySnapshot();
  p.outbound_tls = {{"x.test", TlsMode::kDefault}};
  EXPECT_EQ(p.validate().message().substr(0, 19), "outbound_tls.x.test");
  p = PolicySnapshot();
  p.local_domains = {"bad domain"};
  EXPECT_EQ(p.validate().message().substr(0, 14), "local_domains:");
}

TEST(PolicyStore, CompareAndSet) {
  PolicyStore store(snapshot());
  std::vector<uint64_t> persisted;
  auto persist = [&](const PolicySnapshot& p) {
    persisted.push_back(p.version);
    return absl::OkStatus();
  };
  auto v2 = store.update(snapshot(), 1, persist);
  ASSERT_TRUE(v2.ok());
  EXPECT_EQ((*v2)->version, 2u);
  auto stale = store.update(snapshot(), 1, persist);
  EXPECT_EQ(stale.status().code(), absl::StatusCode::kAborted);
  EXPECT_TRUE(store.update(snapshot(), 0, persist).ok());  // 0: unconditional
  EXPECT_EQ(store.current()->version, 3u);
  EXPECT_EQ(persisted, (std::vector<uint64_t>{2, 3}));
  // A failed persist leaves the policy as it was.
  auto failed = store.update(snapshot(), 3, [](const PolicySnapshot&) { return absl::UnavailableError("disk"); });
  EXPECT_EQ(failed.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(store.current()->version, 3u);
  PolicySnapshot bad = snapshot();
  bad.max_message_size = 1;
  EXPECT_EQ(store.update(bad, 0, persist).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(RateLimiter, SlidingWindow) {
  RateLimiter rl;
  const int64_t t0 = 600000;  // a window start
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(rl.allow("a", 3, t0 + i));
  EXPECT_FALSE(rl.allow("a", 3, t0 + 10));
  EXPECT_TRUE(rl.allow("b", 3, t0 + 10));  // keys are separate
  EXPECT_TRUE(rl.allow("a", 0, t0 + 10));  // 0: unlimited
  // Half into the next window, half of the previous count still weighs.
  EXPECT_TRUE(rl.allow("a", 3, t0 + 90000));   // 1.5 + 0 + 1 <= 3
  EXPECT_FALSE(rl.allow("a", 3, t0 + 90001));  // 1.5 + 1 + 1 > 3
  // Two windows later the count is gone, and idle keys are swept.
  EXPECT_TRUE(rl.allow("a", 1, t0 + 300000));
  EXPECT_FALSE(rl.allow("a", 1, t0 + 300001));
  EXPECT_EQ(rl.keys(), 2u);  // "a" and "b" (swept only when its shard is next used)
}

}  // namespace
}  // namespace smtpd::policy
