"""More delivery over the network: two smtpd instances relaying to each
other (with STARTTLS, and with a verify policy that must refuse a
self-signed certificate), Postfix's smtp-sink as the receiver, and kill -9
while deliveries are in flight."""
import asyncio
import os
import shutil
import smtplib
import subprocess
import tempfile
import time
import unittest

from sink import Sink, free_port
from smtpd_harness import Smtpd
from test_delivery import DeliveryTestCase


class SecondInstanceTestCase(DeliveryTestCase):
    """The server under test (A) relays to a second smtpd (B), which keeps
    what it receives (delivery paused) for inspection."""

    def start_b(self, settings, users=None):
        self.tmp_b = tempfile.mkdtemp(prefix="smtpd-b-")
        self.b = Smtpd(self.tmp_b, {"server.hostname": "b.test", **settings}, users=users).start()
        return self.b

    def tearDown(self):
        super().tearDown()
        self.assertEqual(self.b.stop(), 0)
        self.b.kill()
        shutil.rmtree(self.tmp_b, ignore_errors=True)


class TwoInstancesTest(SecondInstanceTestCase):
    def setUp(self):
        b = self.start_b({"policy.local_domains": "b.test"})
        self.settings = {**DeliveryTestCase.settings, "routes.*": f"relay:127.0.0.1:{b.ports['mx']}",
                         "policy.relay_domains": "b.test"}
        super().setUp()

    def test_relay_between_instances_over_starttls(self):
        with smtplib.SMTP("127.0.0.1", self.port(), timeout=10) as s:
            s.sendmail("alice@localhost", ["bob@b.test"], b"Subject: hop\r\n\r\nacross\r\n")
        self.wait_for(lambda: self.b.spool_ls())
        fields, body = self.b.spool_show(self.b.spool_ls()[0])
        self.assertEqual(fields["from"], ["<alice@localhost>"])
        self.assertEqual(fields["protocol"], ["ESMTPS"])  # opportunistic TLS was used
        text = body.decode()
        self.assertEqual(text.count("Received: "), 2)  # B's trace on top of A's
        self.assertIn("by b.test (smtpd) with ESMTPS", text)
        self.assertTrue(text.endswith("across\r\n"))
        self.wait_for(lambda: self.server.spool_ls() == [])
        d = self.server.events("delivery")[0]
        self.assertEqual((d["status"], d["remote_address"]), ("delivered", "127.0.0.1"))
        self.assertTrue(d["tls"].startswith("TLSv1."), d)


class VerifyPolicyTest(TwoInstancesTest):
    def setUp(self):
        super().setUp()
        self.server.stop()
        self.server.settings["delivery.tls"] = "verify"
        self.server.start()

    def test_relay_between_instances_over_starttls(self):  # replaced: verify must refuse B's certificate
        with smtplib.SMTP("127.0.0.1", self.port(), timeout=10) as s:
            s.sendmail("alice@localhost", ["bob@b.test"], b"Subject: hop\r\n\r\nacross\r\n")
        self.wait_for(lambda: self.server.events("delivery"))
        e = self.server.events("delivery")[0]
        self.assertEqual(e["status"], "deferred")
        self.assertIn("4.7.5 TLS handshake with 127.0.0.1 failed: certificate verification failed", e["reply"])
        self.assertEqual(self.b.spool_ls(), [])
        self.assertEqual(len(self.server.spool_ls()), 1)


class SmarthostAuthTest(SecondInstanceTestCase):
    """A relays through B's submission port: STARTTLS, then AUTH."""

    def setUp(self):
        b = self.start_b({}, users={"relayuser": "relay secret"})
        self.settings = {**DeliveryTestCase.settings,
                         "routes.*": f"relay:127.0.0.1:{b.ports['submission']}",
                         "policy.relay_domains": "far.test", "delivery.relay_user": "relayuser",
                         "delivery.relay_password": "relay secret"}
        super().setUp()

    def test_authenticated_relay(self):
        with smtplib.SMTP("127.0.0.1", self.port(), timeout=10) as s:
            s.sendmail("alice@localhost", ["x@far.test"], b"Subject: via smarthost\r\n\r\nx\r\n")
        self.wait_for(lambda: self.b.spool_ls())
        fields, body = self.b.spool_show(self.b.spool_ls()[0])
        self.assertEqual(fields["auth_user"], ["relayuser"])
        self.assertEqual(fields["protocol"], ["ESMTPSA"])
        self.assertIn(b"(Authenticated sender: relayuser)", body)

    def test_wrong_password_defers(self):
        self.server.stop()
        self.server.settings["delivery.relay_password"] = "wrong"
        self.server.start()
        with smtplib.SMTP("127.0.0.1", self.port(), timeout=10) as s:
            s.sendmail("alice@localhost", ["x@far.test"], b"Subject: refused\r\n\r\nx\r\n")
        self.wait_for(lambda: self.server.events("delivery"))
        e = self.server.events("delivery")[0]
        self.assertEqual(e["status"], "deferred")  # our configuration's fault: never a bounce
        self.assertIn("4.7.8 authentication failed: 535 5.7.8", e["reply"])


class SmtpSinkTest(DeliveryTestCase):
    def setUp(self):
        self.sink_port = free_port()
        self.sink = subprocess.Popen(["smtp-sink", "-u", "postfix", f"127.0.0.1:{self.sink_port}", "100"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.settings = {**DeliveryTestCase.settings, "routes.*": f"relay:127.0.0.1:{self.sink_port}",
                         "policy.relay_domains": "far.test"}
        super().setUp()

    def tearDown(self):
        super().tearDown()
        self.sink.terminate()
        self.sink.wait(10)

    def test_delivery_to_smtp_sink(self):
        with smtplib.SMTP("127.0.0.1", self.port(), timeout=10) as s:
            for i in range(20):
                s.sendmail("alice@localhost", [f"r{i}@far.test", f"s{i}@far.test"], b"Subject: sink\r\n\r\nx\r\n")
        self.wait_for(lambda: len([e for e in self.server.events("delivery") if e["status"] == "delivered"]) == 40)
        self.wait_for(lambda: self.server.spool_ls() == [])


class SlowHandler:
    """Accepts after a pause, so that deliveries are in flight when killed."""

    def __init__(self, sink):
        self.inner = sink.handler.handle_DATA  # the original, before it is replaced

    async def handle_DATA(self, server, session, envelope):
        await asyncio.sleep(0.05)
        return await self.inner(server, session, envelope)


class KillDuringDeliveryTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="smtpd-kill-delivery-")
        self.sink = Sink()
        slow = SlowHandler(self.sink)
        self.sink.handler.handle_DATA = slow.handle_DATA
        self.sink.start()
        self.server = Smtpd(self.tmp, {"delivery.paused": "false", "queue.min_backoff": "1s",
                                       "queue.max_backoff": "2s", "routes.*": f"relay:127.0.0.1:{self.sink.port}",
                                       "policy.relay_domains": "far.test"})

    def tearDown(self):
        self.server.kill()
        self.sink.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def test_nothing_lost(self):
        self.server.start()
        subjects = [f"kill-{i}" for i in range(60)]
        with smtplib.SMTP("127.0.0.1", self.server.ports["mx"], timeout=10) as s:
            for subj in subjects:
                s.sendmail("a@localhost", ["x@far.test"], f"Subject: {subj}\r\n\r\nx\r\n".encode())
        deadline = time.time() + 20
        while time.time() < deadline and len(self.sink.messages) < 5:
            time.sleep(0.01)
        self.server.proc.kill()  # SIGKILL with deliveries in flight
        self.server.proc.wait()
        self.assertLess(len(self.sink.messages), len(subjects), "everything was delivered before the kill")
        self.server.start()
        deadline = time.time() + 60
        while time.time() < deadline and self.server.spool_ls():
            time.sleep(0.2)
        self.assertEqual(self.server.spool_ls(), [])
        got = [m["data"].split(b"Subject: ")[1].split(b"\r\n")[0].decode() for m in self.sink.messages]
        lost = set(subjects) - set(got)
        duplicated = len(got) - len(set(got))
        print(f"\nkill -9 during delivery: {len(subjects)} sent, lost {len(lost)}, duplicated {duplicated}")
        self.assertEqual(lost, set())  # at-least-once: duplicates are allowed, losses are not
        self.assertEqual(self.server.stop(), 0)


if __name__ == "__main__":
    unittest.main()
