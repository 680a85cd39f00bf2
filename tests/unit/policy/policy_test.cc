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

}  // namespace
}  // namespace smtpd::policy
