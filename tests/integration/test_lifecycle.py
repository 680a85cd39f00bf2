"""Configuration handling and the process lifecycle: --check-config,
--print-config, environment overrides, clear errors with exit status 2, and
a graceful drain on SIGTERM that loses nothing in flight."""
import os
import shutil
import signal
import subprocess
import tempfile
import unittest

from smtpd_harness import SMTPD, Raw, SmtpdTestCase


def run(*args, env=None):
    return subprocess.run([SMTPD, *args], capture_output=True, text=True, timeout=30,
                          env={**os.environ, **(env or {})})


class ConfigTest(unittest.TestCase):
    def test_check_config_ok(self):
        out = run("--check-config")
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(out.stdout, "config ok\n")

    def test_errors_are_one_line_naming_the_key(self):
        cases = [
            (["--set", "policy.max_message_size=big"], "policy.max_message_size"),
            (["--set", "listeners.mx.mode=pop3"], "listeners.mx.mode"),
            (["--set", "nosuch.key=1"], "nosuch"),
            (["--config", "/nonexistent.yaml"], "/nonexistent.yaml"),
            (["--bogus-flag"], "--bogus-flag"),
        ]
        for args, key in cases:
            out = run(*args, "--check-config")
            self.assertEqual(out.returncode, 2, args)
            first = out.stderr.splitlines()[0]
            self.assertIn(key, first, args)
            self.assertTrue(first.startswith("smtpd: "), first)

    def test_bad_file(self):
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            f.write("policy:\n  max_recipients: [1, 2\n")
        try:
            out = run("--config", f.name, "--check-config")
            self.assertEqual(out.returncode, 2)
            self.assertEqual(len(out.stderr.strip().splitlines()), 1, out.stderr)
        finally:
            os.unlink(f.name)

    def test_print_config_with_env_and_set(self):
        out = run("--print-config", "--set", "server.hostname=set.example",
                  env={"SMTPD_POLICY_MAX_RECIPIENTS": "42", "SMTPD_LISTENERS_MX_ADDRESS": "127.0.0.1:2626"})
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("hostname: set.example", out.stdout)
        self.assertIn("max_recipients: 42", out.stdout)
        self.assertIn("127.0.0.1:2626", out.stdout)
        self.assertIn("2587", out.stdout)  # defaults remain

    def test_unknown_users_file_entry(self):
        with tempfile.NamedTemporaryFile("w", delete=False) as f:
            f.write("alice:plaintext-password\n")
        try:
            out = run("--set", f"auth.users_file={f.name}", "--check-config")
            self.assertEqual(out.returncode, 2)
            self.assertIn("line 1", out.stderr)
        finally:
            os.unlink(f.name)

    def test_hash_password(self):
        out = subprocess.run([SMTPD, "hash-password"], input="s3cret\n", capture_output=True, text=True, timeout=30)
        self.assertEqual(out.returncode, 0)
        self.assertTrue(out.stdout.startswith("$argon2id$v=19$m=19456,t=2,p=1$"), out.stdout)


class EmbeddedDefaultsTest(unittest.TestCase):
    """The README's first command: no configuration at all, started in an
    empty directory (only the ports are moved to free ones)."""

    def test_defaults_from_an_empty_directory(self):
        import json
        import smtplib
        import time
        tmp = tempfile.mkdtemp(prefix="smtpd-defaults-")
        args = [SMTPD, "--set", "listeners.mx.address=127.0.0.1:0", "--set", "listeners.submission.address=",
                "--set", "listeners.smtps.address="]
        proc = subprocess.Popen(args, cwd=tmp, stderr=subprocess.PIPE, text=True)
        try:
            port = None
            for line in proc.stderr:
                ev = json.loads(line)
                if ev["event"] == "listening":
                    port = int(ev["address"].rsplit(":", 1)[1])
                if ev["event"] in ("started", "spool_open_failed", "start_failed"):
                    break
            self.assertIsNotNone(port, "smtpd did not start with its defaults")
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
                s.sendmail("a@remote.test", ["user@localhost"], b"Subject: defaults\r\n\r\nx\r\n")
            new = os.path.join(tmp, "var", "mail", "user", "new")
            deadline = time.time() + 10
            while time.time() < deadline and not (os.path.isdir(new) and os.listdir(new)):
                time.sleep(0.05)
            self.assertEqual(len(os.listdir(new)), 1)  # delivered to the default Maildir
            self.assertTrue(os.path.isdir(os.path.join(tmp, "var", "spool", "db")))
        finally:
            proc.send_signal(signal.SIGTERM)
            self.assertEqual(proc.wait(20), 0)
            proc.stderr.close()
            shutil.rmtree(tmp, ignore_errors=True)


class DrainTest(SmtpdTestCase):
    def test_sigterm_lets_transactions_finish(self):
        idle = Raw(self.port())
        idle.reply()
        idle.cmd("EHLO idle")
        busy = Raw(self.port())
        busy.reply()
        busy.cmd("EHLO busy")
        busy.send("MAIL FROM:<a@remote.test>\r\nRCPT TO:<bob@localhost>\r\nDATA\r\n")
        busy.reply(), busy.reply(), busy.reply()
        busy.send("Subject: in flight\r\n\r\nfirst half\r\n")
        self.server.proc.send_signal(signal.SIGTERM)
        self.server.wait_event("draining")
        # Idle sessions are told at once.
        self.assertEqual(idle.reply(), "421 4.3.2 mx.test Service shutting down")
        self.assertTrue(idle.closed())
        # New connections are refused.
        with self.assertRaises(OSError):
            Raw(self.port()).reply()
        # The transaction in flight completes and is acknowledged.
        busy.send("second half\r\n.\r\n")
        reply = busy.reply()
        self.assertRegex(reply, r"^250 2\.0\.0 Ok: queued as [0-9A-F]{16}$")
        self.assertEqual(busy.reply(), "421 4.3.2 mx.test Service shutting down")
        self.assertEqual(self.server.proc.wait(20), 0)
        qid = reply.rsplit(" ", 1)[1]
        _, body = self.server.spool_show(qid)
        self.assertTrue(body.endswith(b"first half\r\nsecond half\r\n"))

    def test_drain_deadline_closes_stragglers(self):
        self.server.kill()
        self.server.settings["server.drain_timeout"] = "1s"
        self.server.start()
        slow = Raw(self.port())
        slow.reply()
        slow.cmd("EHLO slow")
        slow.send("MAIL FROM:<a@remote.test>\r\nRCPT TO:<bob@localhost>\r\nDATA\r\n")
        slow.reply(), slow.reply(), slow.reply()
        slow.send("never finished\r\n")
        self.server.proc.send_signal(signal.SIGTERM)
        self.assertEqual(self.server.proc.wait(20), 0)
        self.assertTrue(slow.closed())
        self.assertEqual(self.server.spool_ls(), [])  # never acknowledged, not kept


if __name__ == "__main__":
    unittest.main()
