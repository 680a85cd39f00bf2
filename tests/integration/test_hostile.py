"""Bad input gets a clear error and loses nothing: SMTP smuggling, STARTTLS
injection, open-relay attempts, oversized lines, NUL octets, AUTH failures,
clients vanishing mid-DATA, connection floods and idle clients."""
import socket
import time
import unittest

from smtpd_harness import Raw, SmtpdTestCase


def session(port):
    c = Raw(port)
    assert c.reply().startswith("220 ")
    c.cmd("EHLO attacker.test")
    return c


class SmugglingTest(SmtpdTestCase):
    # Every end-of-data variant a server has been tricked by (SMTP smuggling,
    # 2023): none may end the message; each ends the session with 521.
    VARIANTS = [b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r", b"\r.\r\n", b"\r\n.\r\r\n", b"\r\n\x00.\r\n"]

    def test_smuggled_end_of_data(self):
        for variant in self.VARIANTS:
            c = session(self.port())
            c.send("MAIL FROM:<a@remote.test>\r\nRCPT TO:<bob@localhost>\r\nDATA\r\n")
            c.reply(), c.reply()
            self.assertTrue(c.reply().startswith("354"))
            c.send(b"Subject: first\r\n\r\nbody" + variant +
                   b"MAIL FROM:<admin@localhost>\r\nRCPT TO:<bob@localhost>\r\nDATA\r\n"
                   b"Subject: smuggled\r\n\r\nx\r\n.\r\n")
            r = c.reply()
            if variant == b"\r\n\x00.\r\n":
                # Not an end marker at all: the whole thing is one message
                # that contains NUL, refused at the real end.
                self.assertEqual(r, "554 5.6.0 Message contains NUL octets (RFC 5322 2.3)", variant)
            else:
                self.assertTrue(r.startswith("521 5.5.2"), (variant, r))
                self.assertTrue(c.closed(), variant)
            c.close()
        self.assertEqual(self.server.spool_ls(), [])


class StartTlsInjectionTest(SmtpdTestCase):
    def test_pipelined_plaintext_is_discarded(self):
        c = session(self.port())
        c.send("STARTTLS\r\nMAIL FROM:<injected@remote.test>\r\nRCPT TO:<bob@localhost>\r\n")
        self.assertEqual(c.reply(), "220 2.0.0 Ready to start TLS")
        c.starttls()
        # The first reply inside TLS answers our NOOP, not the injected MAIL.
        self.assertEqual(c.cmd("NOOP"), "250 2.0.0 Ok")
        self.assertEqual(c.cmd("MAIL FROM:<a@remote.test>"), "503 5.5.1 Send HELO/EHLO first")
        self.assertNotIn("STARTTLS", c.cmd("EHLO c"))
        c.close()


class OpenRelayTest(SmtpdTestCase):
    def test_relay_forms_are_denied(self):
        c = session(self.port())
        c.cmd("MAIL FROM:<spammer@remote.test>")
        for rcpt in ["<victim@far.test>", "<@localhost:victim@far.test>", "<victim@[192.0.2.1]>",
                     "<victim@far.test.>", "<victim@FAR.test>"]:
            r = c.cmd(f"RCPT TO:{rcpt}")
            self.assertTrue(r.startswith("554 5.7.1") or r.startswith("501"), (rcpt, r))
        # Forms that look like relaying but name a local mailbox are local.
        for rcpt in ['<"victim@far.test"@localhost>', "<victim%far.test@localhost>"]:
            self.assertEqual(c.cmd(f"RCPT TO:{rcpt}"), "250 2.1.5 Ok", rcpt)
        self.assertTrue(c.cmd("RCPT TO:<victim@far.test@localhost>").startswith("501 5.1.3"))
        c.close()


class LimitsTest(SmtpdTestCase):
    settings = {"limits.max_connections_per_client": "3", "limits.command_timeout": "1s",
                "policy.max_message_size": "100000"}

    def test_oversized_lines(self):
        c = session(self.port())
        self.assertEqual(c.cmd("NOOP " + "x" * 600), "500 5.5.2 Line too long (RFC 5321 4.5.3.1.4)")
        c.send(b"y" * 200000 + b"\r\n")
        self.assertEqual(c.reply(), "500 5.5.2 Line too long (RFC 5321 4.5.3.1.4)")
        self.assertEqual(c.cmd("NOOP"), "250 2.0.0 Ok")
        c.close()

    def test_nul_bytes(self):
        c = session(self.port())
        self.assertEqual(c.cmd("NO\x00OP"), "500 5.5.2 NUL octet in command")
        c.send("MAIL FROM:<a@remote.test>\r\nRCPT TO:<bob@localhost>\r\nDATA\r\n")
        c.reply(), c.reply(), c.reply()
        c.send(b"Subject: nul\r\n\r\na\x00b\r\n.\r\n")
        self.assertEqual(c.reply(), "554 5.6.0 Message contains NUL octets (RFC 5322 2.3)")
        self.assertEqual(c.cmd("NOOP"), "250 2.0.0 Ok")
        c.close()
        self.assertEqual(self.server.spool_ls(), [])

    def test_message_too_big(self):
        c = session(self.port())
        c.send("MAIL FROM:<a@remote.test>\r\nRCPT TO:<bob@localhost>\r\nDATA\r\n")
        c.reply(), c.reply(), c.reply()
        c.send(("x" * 998 + "\r\n") * 120 + ".\r\n")
        self.assertEqual(c.reply(), "552 5.3.4 Message size exceeds fixed maximum message size")
        c.close()
        self.assertEqual(self.server.spool_ls(), [])

    def test_per_client_connection_limit(self):
        held = [session(self.port()) for _ in range(3)]
        extra = Raw(self.port())
        self.assertEqual(extra.reply(), "421 4.7.0 mx.test Error: too many connections")
        self.assertTrue(extra.closed())
        for c in held:
            self.assertEqual(c.cmd("NOOP"), "250 2.0.0 Ok")
            c.close()
        self.server.wait_event("disconnect", 3)
        ok = session(self.port())  # slots are released
        self.assertEqual(ok.cmd("QUIT"), "221 2.0.0 Bye")

    def test_idle_client_times_out(self):
        c = session(self.port())
        start = time.time()
        self.assertEqual(c.reply(), "421 4.4.2 mx.test Error: timeout exceeded")
        self.assertTrue(c.closed())
        self.assertLess(time.time() - start, 5)

    def test_client_vanishes_mid_data(self):
        c = session(self.port())
        c.send("MAIL FROM:<a@remote.test>\r\nRCPT TO:<bob@localhost>\r\nDATA\r\n")
        c.reply(), c.reply(), c.reply()
        c.send("Subject: half\r\n\r\n" + "partial line\r\n" * 100)
        c.sock.shutdown(socket.SHUT_RDWR)
        c.close()
        ev = self.server.wait_event("disconnect")
        rejected = [e for e in self.server.events("transaction") if e["result"] == "rejected"]
        self.assertEqual(len(rejected), 1)
        self.assertEqual((rejected[0]["from"], rejected[0]["to"]), ("a@remote.test", ["bob@localhost"]))
        self.assertIn("connection lost", rejected[0]["reply"])
        self.assertGreater(rejected[0]["size"], 0)
        self.assertEqual(self.server.spool_ls(), [])
        # The server still serves.
        c = session(self.port())
        c.send("MAIL FROM:<a@remote.test>\r\nRCPT TO:<bob@localhost>\r\nDATA\r\n")
        c.reply(), c.reply(), c.reply()
        c.send("Subject: whole\r\n\r\nok\r\n.\r\n")
        self.assertTrue(c.reply().startswith("250 2.0.0 Ok: queued as"))
        self.assertEqual(len(self.server.spool_ls()), 1)

    def test_error_budget(self):
        c = session(self.port())
        for _ in range(19):
            self.assertEqual(c.cmd("BOGUS"), "500 5.5.2 Command unrecognized")
        c.send("BOGUS\r\n")
        self.assertEqual(c.reply(), "500 5.5.2 Command unrecognized")
        self.assertEqual(c.reply(), "421 4.7.0 mx.test Error: too many errors")
        self.assertTrue(c.closed())


class AuthBruteForceTest(SmtpdTestCase):
    users = {"alice": "right"}

    def test_failures_are_delayed(self):
        c = session(self.port("submission"))
        self.assertEqual(c.cmd("STARTTLS"), "220 2.0.0 Ready to start TLS")
        c.starttls()
        c.cmd("EHLO c")
        bad = "AUTH PLAIN AGFsaWNlAHdyb25n"  # \0alice\0wrong
        t0 = time.time()
        self.assertEqual(c.cmd(bad), "535 5.7.8 Authentication credentials invalid")
        t1 = time.time()
        self.assertEqual(c.cmd(bad), "535 5.7.8 Authentication credentials invalid")
        t2 = time.time()
        self.assertEqual(c.cmd(bad), "535 5.7.8 Authentication credentials invalid")
        t3 = time.time()
        self.assertLess(t1 - t0, 1.0)
        self.assertGreaterEqual(t2 - t1, 0.95)
        self.assertGreaterEqual(t3 - t2, 1.95)
        # Unknown users get the same answer.
        self.assertEqual(c.cmd("AUTH PLAIN AG1hbGxvcnkAeA=="), "535 5.7.8 Authentication credentials invalid")
        self.assertEqual(c.cmd("AUTH PLAIN AGFsaWNlAHJpZ2h0"), "235 2.7.0 Authentication successful")
        c.close()
        failures = self.server.events("auth_failure")
        self.assertEqual(len(failures), 4)
        self.assertNotIn("wrong", str(self.server.lines))  # passwords are never logged


class AuthLockoutTest(SmtpdTestCase):
    users = {"alice": "right"}
    settings = {"limits.auth_max_failures": "3"}

    def login(self, source, password):
        import base64
        raw = Raw.__new__(Raw)
        raw.sock = socket.create_connection(("127.0.0.1", self.port("submission")), timeout=15,
                                            source_address=(source, 0))
        raw.buf = b""
        raw.reply()
        raw.cmd("EHLO c")
        raw.cmd("STARTTLS")
        raw.starttls()
        raw.cmd("EHLO c")
        token = base64.b64encode(b"\0alice\0" + password.encode()).decode()
        reply = raw.cmd("AUTH PLAIN " + token)
        raw.close()
        return reply

    def test_locked_out_after_repeated_failures_others_still_log_in(self):
        for _ in range(3):
            self.assertTrue(self.login("127.0.0.1", "wrong").startswith("535 5.7.8"))
        # Locked out: even the right password is not checked now.
        start = time.time()
        self.assertEqual(self.login("127.0.0.1", "right"),
                         "454 4.7.0 Too many failed authentication attempts, try again later")
        self.assertLess(time.time() - start, 1.0)  # refused at once, no password check
        # Another address is not affected.
        self.assertEqual(self.login("127.0.0.2", "right"), "235 2.7.0 Authentication successful")
        self.assertEqual(len(self.server.events("auth_locked_out")), 1)


if __name__ == "__main__":
    unittest.main()
