"""Metrics: /metrics scraped before and after real SMTP and gRPC traffic,
the whole exposition parsed with Python's prometheus_client (a malformed
line fails the test), counters and histograms checked to move by the right
amounts; /healthz and /readyz following the health state; labels bounded."""
import signal
import smtplib
import urllib.error
import urllib.request

import grpc
from prometheus_client.parser import text_string_to_metric_families

import grpc_stubs as pb
from smtpd_harness import Raw
from test_delivery import DeliveryTestCase


def scrape(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = r.read().decode()
    samples = {}
    helps = {}
    for family in text_string_to_metric_families(text):  # raises on a malformed line
        helps[family.name] = family.documentation
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples, helps


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def status(port, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


class MetricsTest(DeliveryTestCase):
    settings = {**DeliveryTestCase.settings, "policy.max_message_size": "2000"}

    def test_counters_and_histograms_move(self):
        mport = self.port("metrics")
        before, helps = scrape(mport)
        body = b"Subject: counted\r\n\r\n" + b"x" * 100 + b"\r\n"
        with smtplib.SMTP("127.0.0.1", self.port(), timeout=10) as s:
            s.sendmail("carol@remote.test", ["bob@localhost"], body)
            s.sendmail("carol@remote.test", ["alice@localhost"], body)
            s.mail("carol@remote.test")
            s.rcpt("bob@localhost")
            code, msg = s.data(b"Subject: big\r\n\r\n" + b"y" * 3000 + b"\r\n")  # over the 2000-octet limit
            self.assertEqual((code, msg[:5]), (552, b"5.3.4"))
        ch = grpc.insecure_channel(f"127.0.0.1:{self.port('control')}")
        self.addCleanup(ch.close)
        req = pb.submission_pb2.SendMailRequest()
        getattr(req.structured, "from").address = "app@localhost"
        req.structured.to.add(address="dave@localhost")
        req.structured.text_body = "via grpc"
        pb.submission_pb2_grpc.SubmissionStub(ch).SendMail(req, timeout=10)
        with self.assertRaises(grpc.RpcError):
            pb.queue_pb2_grpc.QueueStub(ch).GetMessage(pb.queue_pb2.GetMessageRequest(id="nope"), timeout=10)
        self.wait_for(lambda: len(self.server.events("delivery")) >= 3)
        self.wait_for(lambda: self.server.spool_ls() == [])
        after, helps = scrape(mport)
        # (The parser names a counter's family without its _total suffix.)
        for name in ("smtpd_connections", "smtpd_transactions", "smtpd_spool_commit_duration_seconds",
                     "smtpd_queue_messages", "smtpd_policy_version", "smtpd_queue_oldest_message_age_seconds"):
            self.assertIn(name, helps)
        for name, doc in helps.items():
            self.assertTrue(name.startswith("smtpd_"), name)
            self.assertTrue(doc, f"{name} has no HELP line")

        d = lambda name, **labels: value(after, name, **labels) - value(before, name, **labels)  # noqa: E731
        self.assertEqual(d("smtpd_connections_total", listener="mx"), 1)
        self.assertEqual(d("smtpd_transactions_total", listener="mx", **{"class": "2xx"}, code="2.0.0"), 2)
        self.assertEqual(d("smtpd_transactions_total", listener="mx", **{"class": "5xx"}, code="5.3.4"), 1)
        self.assertGreaterEqual(d("smtpd_received_bytes_total", listener="mx"), 2 * len(body) + 3000)
        self.assertEqual(d("smtpd_grpc_calls_total", method="SendMail", code="OK"), 1)
        self.assertEqual(d("smtpd_grpc_calls_total", method="GetMessage", code="NOT_FOUND"), 1)
        self.assertEqual(d("smtpd_spool_commit_batch_messages_sum"), 3)
        self.assertGreaterEqual(d("smtpd_spool_commit_batch_messages_count"), 1)
        self.assertEqual(d("smtpd_spool_commit_duration_seconds_count"), d("smtpd_spool_commit_batch_messages_count"))
        self.assertEqual(d("smtpd_delivery_attempts_total", transport="maildir", result="delivered"), 3)
        self.assertEqual(d("smtpd_delivery_duration_seconds_count", result="delivered"), 3)
        self.assertEqual(value(after, "smtpd_connections_open", listener="mx"), 0)
        self.assertEqual(value(after, "smtpd_queue_messages", state="queued"), 0)
        self.assertEqual(value(after, "smtpd_policy_version"), 1)
        # Every metric the README documents is exported (the dashboard and
        # the chart's alerts are checked against that list).
        import os
        import re
        readme = open(os.path.join(os.path.dirname(__file__), "..", "..", "README.md")).read()
        documented = set(re.findall(r"^\| `(smtpd_[a-z_]+)` \|", readme, re.M))
        exported = {re.sub(r"_(bucket|sum|count|created)$", "", name) for name, _ in after}
        exported |= {name for name, _ in after}
        self.assertGreater(len(documented), 15)
        self.assertEqual(documented - exported, set(), "documented but not exported")
        # Bounded labels: never an address, a domain or a client address.
        for (name, labels), _ in after.items():
            for k, v in labels:
                self.assertNotIn("@", v, name)
                self.assertNotIn("127.0.0.1", v, name)
                self.assertNotIn("localhost", v, name)

    def test_health_endpoints_follow_the_drain(self):
        mport = self.port("metrics")
        self.assertEqual(status(mport, "/healthz"), 200)
        self.assertEqual(status(mport, "/readyz"), 200)
        self.assertEqual(status(mport, "/nope"), 404)
        raw = Raw(self.port())  # a transaction in flight keeps the drain going
        raw.reply()
        raw.cmd("EHLO client.test")
        raw.cmd("MAIL FROM:<x@client.test>")
        self.server.proc.send_signal(signal.SIGTERM)
        self.server.wait_event("draining")
        self.assertEqual(status(mport, "/readyz"), 503)
        self.assertEqual(status(mport, "/healthz"), 200)
        raw.cmd("QUIT")
        raw.close()
        self.assertEqual(self.server.proc.wait(20), 0)


if __name__ == "__main__":
    import unittest
    unittest.main()


class LogLinesTest(DeliveryTestCase):
    users = {"alice": "alice's password"}

    def test_transaction_and_delivery_lines(self):
        import ssl
        with smtplib.SMTP("127.0.0.1", self.port("submission"), timeout=10) as s:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            s.starttls(context=ctx)
            s.login("alice", "alice's password")
            s.sendmail("alice@localhost", ["bob@localhost"], b"Subject: logged\r\n\r\nx\r\n")
        self.wait_for(lambda: self.server.events("delivery"))
        t = self.server.events("transaction")[0]
        qid = t["queue_id"]
        self.assertEqual(len(qid), 16)
        for key, want in (("listener", "submission"), ("client", "127.0.0.1"), ("auth_user", "alice"),
                          ("from", "alice@localhost"), ("to", ["bob@localhost"]), ("result", "accepted")):
            self.assertEqual(t[key], want, key)
        self.assertTrue(t["tls"].startswith("TLSv1."))
        self.assertTrue(t["tls_cipher"])
        self.assertTrue(t["helo"])
        self.assertGreater(t["size"], 0)
        self.assertEqual(t["reply"], f"250 2.0.0 Ok: queued as {qid}")
        d = self.server.events("delivery")[0]
        self.assertEqual((d["queue_id"], d["to"], d["status"], d["attempt"]), (qid, "bob@localhost", "delivered", 1))
        self.assertTrue(d["route"].startswith("maildir:"))
        self.assertIn("delay_s", d)
        # One grep follows the message: every line that names it has its id.
        self.assertIn(qid, self.messages("bob")[0]["Received"])

    def test_text_format(self):
        self.server.stop()
        self.server.settings["log.format"] = "text"
        self.server.log_to_file = False
        import subprocess
        import time
        from sink import free_port
        port = free_port()
        self.server.settings["listeners.mx.address"] = f"127.0.0.1:{port}"
        proc = subprocess.Popen([self.server.proc.args[0]] + self.server.args(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.time() + 20
            while True:
                try:
                    s = smtplib.SMTP("127.0.0.1", port, timeout=10)
                    break
                except OSError:
                    self.assertLess(time.time(), deadline, "smtpd did not start")
                    time.sleep(0.05)
            with s:
                s.sendmail("carol@remote.test", ["bob@localhost"], b"Subject: text\r\n\r\nx\r\n")
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=20)
        finally:
            proc.kill()
        self.assertEqual(proc.returncode, 0, err[-2000:])
        lines = err.splitlines()
        self.assertFalse([l for l in lines if l.startswith("{")], "no JSON in text mode")
        tx = [l for l in lines if ": transaction: " in l]
        self.assertEqual(len(tx), 1, lines)
        import re
        m = re.match(r"^\d{4}-\d\d-\d\dT[\d:.]+Z smtpd\[\d+\]: ([0-9A-F]{16}): transaction: (.*)$", tx[0])
        self.assertIsNotNone(m, tx[0])
        self.assertIn("from=<carol@remote.test>", m.group(2))
        self.assertIn("to=<bob@localhost>", m.group(2))
        self.assertIn('reply="250 2.0.0 Ok: queued as ' + m.group(1) + '"', m.group(2))
        self.assertTrue([l for l in lines if f"{m.group(1)}: delivery: " in l and "status=delivered" in l], lines)
