"""MX routing (RFC 5321 5.1) through a DNS server on loopback (dnsmasq):
MX records, the A-record fallback, null MX (RFC 7505), NXDOMAIN, backup MX
hosts, and a DNS server that does not answer."""
import email
import email.policy
import smtplib
import unittest

from dns_server import Dnsmasq
from sink import Sink
from test_delivery import DeliveryTestCase


class MxTest(DeliveryTestCase):
    def setUp(self):
        self.sink = Sink().start()
        self.dns = Dnsmasq([
            "--mx-host=mx1.test,mail.mx1.test,10", "--host-record=mail.mx1.test,127.0.0.1",
            "--host-record=amx.test,127.0.0.1",
            "--dns-rr=nullmx.test,15,000000",  # MX 0 "." (RFC 7505)
            "--local=/test/",  # authoritative for the test zone: NODATA and NXDOMAIN as real DNS answers
            # backup.test: the primary's address has no server; the backup takes it.
            "--mx-host=backup.test,primary.backup.test,10", "--host-record=primary.backup.test,127.0.0.3",
            "--mx-host=backup.test,secondary.backup.test,20", "--host-record=secondary.backup.test,127.0.0.1",
        ]).start()
        self.settings = {**DeliveryTestCase.settings, "delivery.dns_servers": f"127.0.0.1:{self.dns.port}",
                         "delivery.mx_port": str(self.sink.port),
                         "policy.relay_domains": "mx1.test,amx.test,nullmx.test,nosuch.test,backup.test"}
        super().setUp()

    def tearDown(self):
        super().tearDown()
        self.sink.stop()
        self.dns.stop()

    def send(self, rcpt):
        with smtplib.SMTP("127.0.0.1", self.port(), timeout=10) as s:
            s.sendmail("alice@localhost", [rcpt], b"Subject: to " + rcpt.encode() + b"\r\n\r\nx\r\n")

    def dsn_status(self):
        self.wait_for(lambda: self.messages("alice"))
        dsn = email.message_from_bytes(bytes(self.messages("alice")[0]), policy=email.policy.default)
        return list(dsn.iter_parts())[1].get_payload()[1]

    def test_mx_record(self):
        self.send("bob@mx1.test")
        self.wait_for(lambda: self.sink.messages)
        self.assertEqual(self.sink.messages[0]["to"], ["bob@mx1.test"])
        self.wait_for(lambda: self.server.events("delivery"))
        self.assertEqual(self.server.events("delivery")[0]["remote_host"], "mail.mx1.test")

    def test_a_record_fallback(self):
        self.send("bob@amx.test")
        self.wait_for(lambda: self.sink.messages)
        self.assertEqual(self.sink.messages[0]["to"], ["bob@amx.test"])

    def test_backup_mx(self):
        self.send("bob@backup.test")
        self.wait_for(lambda: self.sink.messages)
        self.wait_for(lambda: self.server.events("delivery"))
        self.assertEqual(self.server.events("delivery")[0]["remote_host"], "secondary.backup.test")

    def test_null_mx_fails_at_once(self):
        self.send("bob@nullmx.test")
        status = self.dsn_status()
        self.assertEqual(status["Status"], "5.1.10")
        self.assertEqual(self.server.events("delivery")[0]["attempt"], 1)

    def test_nxdomain_fails(self):
        self.send("bob@nosuch.test")
        self.assertEqual(self.dsn_status()["Status"], "5.4.4")


class Ipv6MxTest(DeliveryTestCase):
    """The mail host has only an AAAA record; the receiver listens on ::1."""

    def setUp(self):
        self.sink = Sink(host="::1").start()
        self.dns = Dnsmasq(["--local=/test/", "--mx-host=v6.test,mail.v6.test,10",
                            "--host-record=mail.v6.test,::1"]).start()
        self.settings = {**DeliveryTestCase.settings, "delivery.dns_servers": f"127.0.0.1:{self.dns.port}",
                         "delivery.mx_port": str(self.sink.port), "policy.relay_domains": "v6.test"}
        super().setUp()

    def tearDown(self):
        super().tearDown()
        self.sink.stop()
        self.dns.stop()

    def test_delivery_over_ipv6(self):
        with smtplib.SMTP("127.0.0.1", self.port(), timeout=10) as s:
            s.sendmail("alice@localhost", ["bob@v6.test"], b"Subject: six\r\n\r\nx\r\n")
        self.wait_for(lambda: self.sink.messages)
        self.assertEqual(self.sink.messages[0]["to"], ["bob@v6.test"])


class DnsDownTest(DeliveryTestCase):
    settings = {**DeliveryTestCase.settings, "delivery.dns_servers": "127.0.0.1:9",  # nothing answers there
                "policy.relay_domains": "far.test"}

    def test_unanswered_dns_defers_and_keeps_mail(self):
        with smtplib.SMTP("127.0.0.1", self.port(), timeout=10) as s:
            s.sendmail("alice@localhost", ["x@far.test"], b"Subject: far\r\n\r\nx\r\n")
        self.wait_for(lambda: self.server.events("delivery"), timeout=30)
        first = self.server.events("delivery")[0]
        self.assertEqual(first["status"], "deferred")
        self.assertTrue(first["reply"].startswith("451 4.4.3 MX lookup for far.test"), first["reply"])
        self.assertEqual(len(self.server.spool_ls()), 1)


if __name__ == "__main__":
    unittest.main()
