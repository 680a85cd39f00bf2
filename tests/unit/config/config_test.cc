// Configuration: defaults, file, environment, --set, and error messages.
#include "lib/config/config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>

namespace smtpd::config {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

std::string write_file(const std::string& text) {
  char tmpl[] = "/tmp/config_test.XXXXXX";
  const int fd = mkstemp(tmpl);
  close(fd);
  std::ofstream(tmpl) << text;
  return tmpl;
}

TEST(Config, EmbeddedDefaults) {
  auto c = load({});
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_EQ(c->config.listeners.size(), 3u);
  EXPECT_EQ(c->config.listeners[0].address, "127.0.0.1:2525");
  EXPECT_EQ(c->config.listeners[1].mode, ListenerMode::kSubmission);
  EXPECT_EQ(c->config.spool_path, "var/spool");
  EXPECT_TRUE(c->config.policy.is_local("LOCALHOST"));
  EXPECT_TRUE(c->config.policy.relay_domains.empty());
  EXPECT_TRUE(c->config.policy.trusted_networks.empty());
  EXPECT_EQ(c->config.command_timeout, std::chrono::minutes(5));
  EXPECT_FALSE(c->config.hostname.empty());
}

TEST(Config, FileEnvAndSetInOrder) {
  const std::string f = write_file(
      "server: {hostname: file.test}\n"
      "policy: {max_recipients: 7, relay_domains: [a.test]}\n"
      "listeners:\n  - {name: mx, address: '127.0.0.1:0', mode: smtp}\n");
  Sources s;
  s.file = f;
  s.env["SMTPD_POLICY_MAX_RECIPIENTS"] = "8";
  s.env["SMTPD_SERVER_HOSTNAME"] = "env.test";
  s.overrides = {"server.hostname=set.test", "policy.local_domains=x.test,y.test",
                 "listeners.mx.address=[::1]:0", "limits.data_timeout=90s"};
  auto c = load(s);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->config.hostname, "set.test");
  EXPECT_EQ(c->config.policy.max_recipients, 8u);
  EXPECT_TRUE(c->config.policy.is_relay("a.test"));
  EXPECT_TRUE(c->config.policy.is_local("y.test"));
  EXPECT_FALSE(c->config.policy.is_local("localhost"));
  ASSERT_EQ(c->config.listeners.size(), 1u);  // the file's list replaces the default one
  EXPECT_EQ(c->config.listeners[0].address, "[::1]:0");
  EXPECT_EQ(c->config.data_timeout, std::chrono::seconds(90));
  EXPECT_THAT(c->effective_yaml, HasSubstr("set.test"));
  std::remove(f.c_str());
}

TEST(Config, ErrorsNameTheKey) {
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"policy.max_recipients=lots"}, "config: policy.max_recipients: 'lots' is not a valid value"},
      {{"policy.bogus=1"}, "config: policy.bogus: unknown key"},
      {{"limits.command_timeout=5 weeks"}, "config: limits.command_timeout:"},
      {{"listeners.nope.address=x"}, "config: listeners.nope: no list entry named 'nope'"},
      {{"listeners.mx.address=localhost"}, "config: listeners.mx.address:"},
      {{"policy.trusted_networks=10.0.0.0/99"}, "config: policy.trusted_networks: bad prefix length"},
      {{"log.level=loud"}, "config: log.level:"},
      {{"novalue"}, "expected KEY=VALUE"},
      {{"policy=1"}, "config: policy: is a section"},
      {{"control.address=0.0.0.0:50051"}, "config: control.address: '0.0.0.0:50051' is not loopback"},
      {{"control.tls_cert_file=/c.pem"}, "config: control.tls_key_file: control.tls_cert_file and"},
      {{"control.client_ca_file=/ca.pem"}, "config: control.client_ca_file: mutual TLS needs"},
      {{"control.local_address=0.0.0.0:50053"}, "config: control.local_address: must be a loopback address"},
      {{"policy.sender_access=spam.test reject"}, "config: policy.sender_access: 'spam.test reject' is not"},
      {{"policy.recipient_access=x.test deny 250 2.0.0 fine"}, "config: policy.recipient_access:"},
      {{"policy.outbound_tls.bank.test=sometimes"}, "config: policy.outbound_tls.bank.test: 'sometimes'"},
      {{"routes.x.test=smtp:host"}, "config: routes.x.test:"},
  };
  for (const auto& [overrides, expected] : cases) {
    Sources s;
    s.overrides = overrides;
    auto c = load(s);
    ASSERT_FALSE(c.ok()) << overrides[0];
    EXPECT_THAT(std::string(c.status().message()), HasSubstr(expected)) << overrides[0];
  }
}

TEST(Config, PolicyRulesAndControl) {
  Sources s;
  s.overrides = {"policy.sender_access=vip@spam.test allow,spam.test deny 550 5.7.1 No spam please",
                 "policy.outbound_tls.bank.test=verify", "policy.messages_per_sender_per_minute=30",
                 "control.address=0.0.0.0:50051", "control.tls_cert_file=/c.pem", "control.tls_key_file=/k.pem",
                 "control.tokens_file=/tokens", "routes.lmtp.test=lmtp:127.0.0.1:24"};
  auto c = load(s);
  ASSERT_TRUE(c.ok()) << c.status();
  const policy::PolicySnapshot& p = c->config.policy;
  ASSERT_EQ(p.sender_access.size(), 2u);
  EXPECT_TRUE(p.sender_access[0].allow);
  EXPECT_EQ(p.sender_access[1].reply_text(), "550 5.7.1 No spam please");
  EXPECT_EQ(p.tls_for("bank.test"), policy::TlsMode::kVerify);
  EXPECT_EQ(p.messages_per_sender_per_minute, 30u);
  EXPECT_EQ(p.route_for("lmtp.test"), "lmtp:127.0.0.1:24");
  EXPECT_EQ(p.route_for("localhost"), "maildir:var/mail");
  EXPECT_EQ(c->config.control_tokens_file, "/tokens");
}

TEST(Config, PrintConfigRedactsSecrets) {
  Sources s;
  s.overrides = {"delivery.relay_password=hunter2"};
  auto c = load(s);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->config.delivery_relay_password, "hunter2");
  EXPECT_THAT(c->effective_yaml, Not(HasSubstr("hunter2")));
  EXPECT_THAT(c->effective_yaml, HasSubstr("<redacted>"));
}

TEST(Config, UnknownKeyInFile) {
  const std::string f = write_file("spool: {path: x, colour: blue}\n");
  Sources s;
  s.file = f;
  auto c = load(s);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().message(), "config: spool.colour: unknown key");
  std::remove(f.c_str());
}

TEST(Config, MissingFile) {
  Sources s;
  s.file = "/nonexistent/smtpd.yaml";
  EXPECT_THAT(std::string(load(s).status().message()), HasSubstr("cannot read /nonexistent/smtpd.yaml"));
}

TEST(Config, HostPort) {
  std::string host;
  uint16_t port;
  EXPECT_TRUE(split_host_port("[::1]:25", host, port).ok());
  EXPECT_EQ(host, "::1");
  EXPECT_EQ(port, 25);
  EXPECT_FALSE(split_host_port("1.2.3.4:99999", host, port).ok());
  EXPECT_FALSE(split_host_port("nohost", host, port).ok());
}

}  // namespace
}  // namespace smtpd::config
