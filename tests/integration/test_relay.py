"""Delivery over the network: a smarthost (relay:HOST:PORT) and an LMTP
server (lmtp:HOST:PORT), played by Python's aiosmtpd on loopback; retries
when the server is down; bounces for 5xx; the end-to-end path from an
authenticated submission to the receiving server."""
import email
import email.policy
import os
import smtplib
import subprocess
import time
import unittest

from sink import Sink
from smtpd_harness import SmtpdTestCase
from test_delivery import DeliveryTestCase

USERS = {"alice": "alice's password"}


class SinkTestCase(DeliveryTestCase):
    """smtpd delivers to an aiosmtpd sink on loopback through one route."""
    lmtp = False
    start_sink = True  # False: the sink is down when smtpd starts
    route = ("*", "relay")
    route_settings = {"policy.relay_domains": "far.test"}

    def setUp(self):
        self.sink = Sink(lmtp=self.lmtp)
        if self.start_sink:
            self.sink.start()
        domain, transport = self.route
        self.settings = {**self.settings, f"routes.{domain}": f"{transport}:127.0.0.1:{self.sink.port}",
                         **self.route_settings}
        super().setUp()

    def tearDown(self):
        super().tearDown()
        self.sink.stop()


class RelayTest(SinkTestCase):
    users = USERS

    def test_relayed_bytes_and_trace_header(self):
        body = b"Subject: relayed\r\nFrom: a@localhost\r\n\r\n.line with dot\r\nend\r\n"
        with smtplib.SMTP("127.0.0.1", self.port(), timeout=10) as s:
            s.sendmail("a@localhost", ["x@far.test", "y@far.test"], body)
        self.wait_for(lambda: self.sink.messages)
        m = self.sink.messages[0]
        self.assertEqual(m["from"], "a@localhost")
        self.assertEqual(sorted(m["to"]), ["x@far.test", "y@far.test"])
        self.assertEqual(m["helo"], "mx.test")
        self.assertTrue(m["data"].startswith(b"Received: from "), m["data"][:100])
        self.assertTrue(m["data"].endswith(body), m["data"])  # exactly the bytes sent, dot included
        self.wait_for(lambda: self.server.spool_ls() == [])
        d = self.server.events("delivery")
        self.assertEqual({e["status"] for e in d}, {"delivered"})
        self.assertEqual(d[0]["remote_host"], "127.0.0.1")
        self.assertEqual(d[0]["remote_address"], "127.0.0.1")
        self.assertEqual(d[0]["tls"], "")  # the sink offers no STARTTLS

    def test_connection_reuse(self):
        with smtplib.SMTP("127.0.0.1", self.port(), timeout=10) as s:
            for i in range(10):
                s.sendmail("a@localhost", [f"n{i}@far.test"], b"Subject: reuse\r\n\r\nx\r\n")
                time.sleep(0.15)  # one at a time: each finds the last one's connection parked
        self.wait_for(lambda: len(self.sink.messages) == 10)
        sessions = {m["session"] for m in self.sink.messages}
        self.assertLess(len(sessions), 5, "messages to one destination should share connections")

    def test_rejected_recipient_bounces_others_delivered(self):
        with smtplib.SMTP("127.0.0.1", self.port(), timeout=10) as s:
            s.sendmail("alice@localhost", ["ok@far.test", "reject-me@far.test"], b"Subject: mixed\r\n\r\nx\r\n")
        self.wait_for(lambda: self.sink.messages and self.messages("alice"))
        self.assertEqual(self.sink.messages[0]["to"], ["ok@far.test"])
        dsn = email.message_from_bytes(bytes(self.messages("alice")[0]), policy=email.policy.default)
        report = list(dsn.iter_parts())[1].get_payload()
        self.assertEqual(len(report), 2)  # per-message block + one recipient
        self.assertEqual(report[1]["Final-Recipient"], "rfc822; reject-me@far.test")
        self.assertEqual(report[1]["Status"], "5.1.1")
        self.assertEqual(report[1]["Remote-MTA"], "dns; 127.0.0.1")
        self.assertIn("550 5.1.1 <reject-me@far.test>: no such user here", report[1]["Diagnostic-Code"])

    def test_temporary_failure_is_retried(self):
        with smtplib.SMTP("127.0.0.1", self.port(), timeout=10) as s:
            s.sendmail("alice@localhost", ["defer-me@far.test"], b"Subject: later\r\n\r\nx\r\n")
        self.wait_for(lambda: len(self.server.events("delivery")) >= 2)
        for e in self.server.events("delivery")[:2]:
            self.assertEqual(e["status"], "deferred")
            self.assertIn("451 4.2.1", e["reply"])
        self.assertEqual(len(self.server.spool_ls()), 1)

    def test_end_to_end_submission(self):
        out = subprocess.run(["swaks", "--server", f"127.0.0.1:{self.port('submission')}", "-tls", "--auth", "PLAIN",
                              "--auth-user", "alice", "--auth-password", USERS["alice"], "--from", "alice@localhost",
                              "--to", "friend@elsewhere.test", "--header", "Subject: end to end"],
                             capture_output=True, text=True, timeout=60)
        self.assertEqual(out.returncode, 0, out.stdout)
        self.wait_for(lambda: self.sink.messages)
        msg = email.message_from_bytes(self.sink.messages[0]["data"], policy=email.policy.default)
        self.assertEqual(msg["Subject"], "end to end")
        self.assertIn("(Authenticated sender: alice)", msg["Received"])
        self.assertIn("with ESMTPSA id", msg["Received"])


class SinkDownTest(SinkTestCase):
    start_sink = False

    def test_down_then_up_delivers_exactly_once(self):
        with smtplib.SMTP("127.0.0.1", self.port(), timeout=10) as s:
            s.sendmail("alice@localhost", ["x@far.test"], b"Subject: patience\r\n\r\nx\r\n")
        self.wait_for(lambda: self.server.events("delivery"))
        first = self.server.events("delivery")[0]
        self.assertEqual(first["status"], "deferred")
        self.assertIn("4.4.1 connect to 127.0.0.1", first["reply"])
        self.sink.start()
        self.wait_for(lambda: self.sink.messages)
        self.wait_for(lambda: self.server.spool_ls() == [])
        time.sleep(2.5)  # past another backoff: nothing is sent twice
        self.assertEqual(len(self.sink.messages), 1)


class LmtpTest(SinkTestCase):
    lmtp = True
    route = ("localhost", "lmtp")
    route_settings = {}

    def test_lmtp_delivery_per_recipient(self):
        with smtplib.SMTP("127.0.0.1", self.port(), timeout=10) as s:
            s.sendmail("carol@remote.test", ["a@localhost", "b@localhost"], b"Subject: lmtp\r\n\r\nx\r\n")
        self.wait_for(lambda: self.sink.messages)
        self.assertEqual(sorted(self.sink.messages[0]["to"]), ["a@localhost", "b@localhost"])
        self.wait_for(lambda: self.server.spool_ls() == [])
        statuses = [e["status"] for e in self.server.events("delivery")]
        self.assertEqual(statuses, ["delivered", "delivered"])


if __name__ == "__main__":
    unittest.main()
