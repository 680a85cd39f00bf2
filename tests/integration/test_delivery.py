"""Delivery from the queue: local Maildir delivery read back with Python's
mailbox module, bounces (RFC 3464 DSNs) parsed with Python's email
package, no DSN for a null sender, paused delivery."""
import email
import email.policy
import mailbox
import os
import smtplib
import time
import unittest

from smtpd_harness import SmtpdTestCase


class DeliveryTestCase(SmtpdTestCase):
    settings = {"delivery.paused": "false", "queue.min_backoff": "1s", "queue.max_backoff": "2s"}

    def mailbox(self, name):
        return mailbox.Maildir(os.path.join(self.tmp, "mail", name), factory=None, create=False)

    def wait_for(self, predicate, timeout=15):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if predicate():
                return
            time.sleep(0.05)
        self.fail(f"timed out; last log lines: {self.server.lines[-5:]}")

    def messages(self, name):
        path = os.path.join(self.tmp, "mail", name)
        # A mailbox counts once smtpd has made all of it (new/ comes last).
        if not all(os.path.isdir(os.path.join(path, d)) for d in ("tmp", "cur", "new")):
            return []
        return [m for _, m in self.mailbox(name).items()]


class LocalDeliveryTest(DeliveryTestCase):
    def test_maildir_delivery(self):
        with smtplib.SMTP("127.0.0.1", self.port(), timeout=10) as s:
            s.sendmail("carol@remote.test", ["Bob@localhost", "alice@localhost"],
                       b"Subject: hello maildir\r\nFrom: carol@remote.test\r\n\r\nline 1\r\n.line 2\r\n")
        self.wait_for(lambda: self.messages("bob") and self.messages("alice"))
        msg = self.messages("bob")[0]
        self.assertEqual(msg["Subject"], "hello maildir")
        self.assertEqual(msg["Return-Path"], "<carol@remote.test>")
        self.assertEqual(msg["Delivered-To"], "Bob@localhost")
        self.assertIn("by mx.test (smtpd) with ESMTP id", msg["Received"])
        self.assertEqual(msg.get_payload(), "line 1\n.line 2\n")
        self.wait_for(lambda: self.server.spool_ls() == [])  # gone from the queue once delivered
        delivered = [e for e in self.server.events("delivery") if e["status"] == "delivered"]
        self.assertEqual(len(delivered), 2)
        self.assertTrue(delivered[0]["route"].startswith("maildir:"))

    def test_bounce_reaches_the_sender(self):
        with smtplib.SMTP("127.0.0.1", self.port(), timeout=10) as s:
            s.sendmail("alice@localhost", ['"bad\\\\name"@localhost'],
                       b"Subject: will bounce\r\nMessage-ID: <orig@test>\r\n\r\nbody\r\n",
                       mail_options=["ENVID=env42"])
        self.wait_for(lambda: self.messages("alice"))
        dsn = email.message_from_bytes(bytes(self.messages("alice")[0]), policy=email.policy.default)
        self.assertEqual(dsn.get_content_type(), "multipart/report")
        self.assertEqual(dsn["Return-Path"], "<>")
        self.assertEqual(dsn["Auto-Submitted"], "auto-replied")
        parts = list(dsn.iter_parts())
        self.assertEqual([p.get_content_type() for p in parts],
                         ["text/plain", "message/delivery-status", "message/rfc822"])
        report = parts[1].get_payload()
        self.assertEqual(report[0]["Original-Envelope-Id"], "env42")
        self.assertEqual(report[1]["Action"], "failed")
        self.assertEqual(report[1]["Status"], "5.1.3")
        self.assertTrue(report[1]["Diagnostic-Code"].startswith("smtp; 550 5.1.3"), report[1]["Diagnostic-Code"])
        self.assertEqual(parts[2].get_payload()[0]["Subject"], "will bounce")
        self.wait_for(lambda: self.server.spool_ls() == [])
        self.assertEqual(len(self.server.events("dsn")), 1)

    def test_no_dsn_for_null_sender(self):
        with smtplib.SMTP("127.0.0.1", self.port(), timeout=10) as s:
            s.sendmail("", ['"bad\\\\name"@localhost'], b"Subject: bounce of a bounce\r\n\r\nx\r\n")
        self.wait_for(lambda: any(e["status"] == "failed" for e in self.server.events("delivery")))
        self.wait_for(lambda: self.server.spool_ls() == [])
        self.assertEqual(self.server.events("dsn"), [])
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "mail")) and
                         any(self.messages(n) for n in os.listdir(os.path.join(self.tmp, "mail"))))


class PausedTest(SmtpdTestCase):
    def test_paused_delivery_keeps_mail_and_resumes(self):
        with smtplib.SMTP("127.0.0.1", self.port(), timeout=10) as s:
            s.sendmail("carol@remote.test", ["bob@localhost"], b"Subject: later\r\n\r\nx\r\n")
        self.assertEqual(len(self.server.spool_ls()), 1)
        self.assertEqual(self.server.events("delivery"), [])
        self.assertEqual(self.server.stop(), 0)
        self.server.settings["delivery.paused"] = "false"
        self.server.start()  # recovery loads the queue and delivers
        deadline = time.time() + 15
        while time.time() < deadline and not self.server.events("delivery"):
            time.sleep(0.05)
        self.assertEqual(self.server.events("delivery")[0]["status"], "delivered")


if __name__ == "__main__":
    unittest.main()
