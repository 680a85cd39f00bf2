"""Real clients against the real binary: swaks, curl, Python smtplib, and
Postfix's smtp-source; what they sent is checked in the spool."""
import email
import email.policy
import os
import smtplib
import ssl
import subprocess
import unittest

from smtpd_harness import Raw, SmtpdTestCase

USERS = {"alice": "correct horse battery staple"}


def swaks(*args, timeout=60):
    return subprocess.run(["swaks", "--hide-informational", *args], capture_output=True, text=True,
                          timeout=timeout)


def tls_context():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the server's certificate is self-signed
    return ctx


class SwaksTest(SmtpdTestCase):
    users = USERS

    def queued_id(self, output):
        for line in output.splitlines():
            if "queued as" in line:
                return line.rsplit(" ", 1)[1]
        self.fail("no 250 queued in:\n" + output)

    def test_plain(self):
        out = swaks("--server", f"127.0.0.1:{self.port()}", "--from", "a@remote.test", "--to", "bob@localhost",
                    "--header", "Subject: plain test", "--body", "hello plain")
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
        qid = self.queued_id(out.stdout)
        fields, body = self.server.spool_show(qid)
        self.assertEqual(fields["from"], ["<a@remote.test>"])
        self.assertEqual(fields["to"], ["<bob@localhost>"])
        self.assertEqual(fields["protocol"], ["ESMTP"])
        msg = email.message_from_bytes(body, policy=email.policy.default)
        self.assertEqual(msg["Subject"], "plain test")
        received = msg["Received"]
        self.assertIn("by mx.test (smtpd) with ESMTP id " + qid, received)
        self.assertIn("for <bob@localhost>", received)
        self.assertIn("hello plain", msg.get_content())
        self.assertTrue(body.startswith(b"Received: from "))

    def test_starttls(self):
        out = swaks("--server", f"127.0.0.1:{self.port()}", "--from", "a@remote.test", "--to", "bob@localhost",
                    "-tls")
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
        fields, body = self.server.spool_show(self.queued_id(out.stdout))
        self.assertEqual(fields["protocol"], ["ESMTPS"])
        self.assertRegex(body.decode(), r"\(using TLSv1\.[23] with cipher \S+ \(\d+/\d+ bits\)\)")

    def test_submission_auth_relays(self):
        for mech in ("PLAIN", "LOGIN"):
            out = swaks("--server", f"127.0.0.1:{self.port('submission')}", "--from", "alice@localhost",
                        "--to", "someone@far-away.test", "-tls", "--auth", mech, "--auth-user", "alice",
                        "--auth-password", USERS["alice"])
            self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
            fields, body = self.server.spool_show(self.queued_id(out.stdout))
            self.assertEqual(fields["protocol"], ["ESMTPSA"])
            self.assertEqual(fields["auth_user"], ["alice"])
            self.assertIn(b"(Authenticated sender: alice)", body)

    def test_submission_requires_tls_and_auth(self):
        out = swaks("--server", f"127.0.0.1:{self.port('submission')}", "--from", "a@localhost",
                    "--to", "b@localhost")
        self.assertNotEqual(out.returncode, 0)
        self.assertIn("530 5.7.0 Must issue a STARTTLS command first", out.stdout)
        out = swaks("--server", f"127.0.0.1:{self.port('submission')}", "--from", "a@localhost",
                    "--to", "b@localhost", "-tls")
        self.assertIn("530 5.7.0 Authentication required", out.stdout)

    def test_smtps_implicit_tls(self):
        out = swaks("--server", f"127.0.0.1:{self.port('smtps')}", "--tlsc", "--from", "alice@localhost",
                    "--to", "x@far-away.test", "--auth", "PLAIN", "--auth-user", "alice",
                    "--auth-password", USERS["alice"])
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
        fields, _ = self.server.spool_show(self.queued_id(out.stdout))
        self.assertEqual(fields["listener"], ["smtps"])

    def test_auth_failure(self):
        out = swaks("--server", f"127.0.0.1:{self.port('submission')}", "-tls", "--auth", "PLAIN",
                    "--auth-user", "alice", "--auth-password", "wrong", "--from", "a@localhost", "--to", "b@x.test")
        self.assertNotEqual(out.returncode, 0)
        self.assertIn("535 5.7.8 Authentication credentials invalid", out.stdout)
        self.assertEqual(self.server.spool_ls(), [])

    def test_relay_denied_without_auth(self):
        out = swaks("--server", f"127.0.0.1:{self.port()}", "--from", "a@localhost", "--to", "victim@far-away.test")
        self.assertNotEqual(out.returncode, 0)
        self.assertIn("554 5.7.1 <victim@far-away.test>: Relay access denied", out.stdout)
        self.assertEqual(self.server.spool_ls(), [])


class CurlTest(SmtpdTestCase):
    users = USERS

    def test_upload(self):
        path = os.path.join(self.tmp, "mail.txt")
        with open(path, "wb") as f:
            f.write(b"From: a@remote.test\r\nTo: bob@localhost\r\nSubject: via curl\r\n\r\n.leading dot\r\nbody\r\n")
        out = subprocess.run(["curl", "-sS", f"smtp://127.0.0.1:{self.port()}", "--mail-from", "a@remote.test",
                              "--mail-rcpt", "bob@localhost", "-T", path], capture_output=True, text=True, timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr)
        ids = self.server.spool_ls()
        self.assertEqual(len(ids), 1)
        _, body = self.server.spool_show(ids[0])
        self.assertTrue(body.endswith(b"Subject: via curl\r\n\r\n.leading dot\r\nbody\r\n"), body)

    def test_submission_with_starttls_and_auth(self):
        path = os.path.join(self.tmp, "mail.txt")
        with open(path, "wb") as f:
            f.write(b"Subject: curl auth\r\n\r\nhi\r\n")
        out = subprocess.run(["curl", "-sS", "--ssl-reqd", "-k", f"smtp://127.0.0.1:{self.port('submission')}",
                              "--user", "alice:" + USERS["alice"], "--mail-from", "alice@localhost",
                              "--mail-rcpt", "far@far-away.test", "-T", path], capture_output=True, text=True,
                             timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(len(self.server.spool_ls()), 1)


class SmtplibTest(SmtpdTestCase):
    users = USERS

    def test_send_message_and_extensions(self):
        with smtplib.SMTP("127.0.0.1", self.port(), timeout=10) as s:
            code, _ = s.ehlo("client.test")
            self.assertEqual(code, 250)
            for ext in ("pipelining", "size", "8bitmime", "smtputf8", "enhancedstatuscodes", "chunking", "dsn",
                        "starttls"):
                self.assertTrue(s.has_extn(ext), ext)
            self.assertEqual(s.esmtp_features["size"], "26214400")
            self.assertFalse(s.has_extn("auth"))
            s.sendmail("a@remote.test", ["bob@localhost", "carol@localhost"], b"Subject: two\r\n\r\nx\r\n")
        ids = self.server.spool_ls()
        fields, body = self.server.spool_show(ids[0])
        self.assertEqual(fields["to"], ["<bob@localhost>", "<carol@localhost>"])
        self.assertNotIn(b"\tfor <", body)  # no "for" clause with several recipients

    def test_smtputf8(self):
        with smtplib.SMTP("127.0.0.1", self.port(), timeout=10) as s:
            s.ehlo()
            msg = "Subject: caf\u00e9\r\n\r\nna\u00efve\r\n".encode()
            s.sendmail("j\u00f6rg@remote.test", ["b\u00f6b@localhost"], msg, mail_options=["SMTPUTF8", "BODY=8BITMIME"])
        fields, body = self.server.spool_show(self.server.spool_ls()[0])
        self.assertEqual(fields["smtputf8"], ["yes"])
        self.assertIn("with UTF8SMTP id", body.decode())
        self.assertIn("b\u00f6b@localhost", fields["to"][0])

    def test_starttls_then_auth_on_submission(self):
        with smtplib.SMTP("127.0.0.1", self.port("submission"), timeout=10) as s:
            s.ehlo()
            self.assertFalse(s.has_extn("auth"))
            s.starttls(context=tls_context())
            s.ehlo()
            self.assertIn("PLAIN", s.esmtp_features["auth"])
            s.login("alice", USERS["alice"])
            refused = s.sendmail("alice@localhost", ["x@far-away.test"], b"Subject: s\r\n\r\nbody\r\n")
            self.assertEqual(refused, {})

    def test_dsn_parameters_are_kept(self):
        with smtplib.SMTP("127.0.0.1", self.port(), timeout=10) as s:
            s.ehlo()
            s.sendmail("a@remote.test", ["bob@localhost"], b"Subject: dsn\r\n\r\nx\r\n",
                       mail_options=["RET=HDRS", "ENVID=abc123"], rcpt_options=["NOTIFY=FAILURE,DELAY"])
        fields, _ = self.server.spool_show(self.server.spool_ls()[0])
        self.assertEqual(fields["envid"], ["abc123"])

    def test_size_limit(self):
        with smtplib.SMTP("127.0.0.1", self.port(), timeout=10) as s:
            s.ehlo()
            code, msg = s.mail("a@remote.test", ["SIZE=999999999"])
            self.assertEqual(code, 552)
            self.assertIn(b"5.3.4", msg)

    def test_bdat_chunks(self):
        c = Raw(self.port())
        c.reply()
        c.cmd("EHLO c")
        c.send("MAIL FROM:<a@remote.test>\r\nRCPT TO:<bob@localhost>\r\nBDAT 14\r\nSubject: b\r\n\r\n")
        self.assertEqual(c.reply(), "250 2.1.0 Ok")
        self.assertEqual(c.reply(), "250 2.1.5 Ok")
        self.assertEqual(c.reply(), "250 2.0.0 Chunk received")
        c.send("BDAT 7 LAST\r\n.body\r\n")
        self.assertRegex(c.reply(), r"^250 2\.0\.0 Ok: queued as [0-9A-F]{16}$")
        c.close()
        _, body = self.server.spool_show(self.server.spool_ls()[0])
        self.assertTrue(body.endswith(b"Subject: b\r\n\r\n.body\r\n"), body)


class SmtpSourceTest(SmtpdTestCase):
    settings = {"limits.max_connections_per_client": "1000"}

    def test_many_concurrent_sessions(self):
        out = subprocess.run(["smtp-source", "-s", "32", "-m", "400", "-l", "2048", "-f", "a@remote.test",
                              "-t", "bob@localhost", f"127.0.0.1:{self.port()}"], capture_output=True, text=True,
                             timeout=120)
        self.assertEqual(out.returncode, 0, out.stderr)
        ids = self.server.spool_ls()
        self.assertEqual(len(ids), 400)
        self.assertEqual(len(set(ids)), 400)
        accepted = [e for e in self.server.events("transaction") if e["result"] == "accepted"]
        self.assertEqual(len(accepted), 400)

    def test_pipelined_sessions_reusing_connections(self):
        out = subprocess.run(["smtp-source", "-d", "-s", "4", "-m", "200", "-r", "3", "-f", "a@remote.test",
                              "-t", "bob@localhost", f"127.0.0.1:{self.port()}"], capture_output=True, text=True,
                             timeout=120)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(len(self.server.spool_ls()), 200)


if __name__ == "__main__":
    unittest.main()
