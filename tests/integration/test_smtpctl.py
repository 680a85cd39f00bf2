"""smtpctl against a live smtpd: every subcommand and output format, the
tables and the JSON checked; exit status 0, 1 (the server said no) and 2
(usage); tokens and TLS."""
import json
import os
import signal
import subprocess
import tempfile
import time
import unittest

import yaml

from smtpd_harness import SMTPD, SmtpdTestCase

SMTPCTL = os.path.join(os.path.dirname(SMTPD), "smtpctl")


def table(text):
    """Rows of an aligned table: cells split on runs of 3+ spaces."""
    import re
    return [re.split(r" {3,}", line.strip()) for line in text.strip().splitlines()]


def reap(proc):
    """Ends a background smtpctl (if it still runs) and closes its pipes."""
    proc.kill()
    proc.wait()
    proc.stdout.close()
    proc.stderr.close()


class SmtpctlCase(SmtpdTestCase):
    env = {}

    def ctl(self, *args, input=None, expect=0, server=True):
        cmd = [SMTPCTL] + (["--server", f"127.0.0.1:{self.port('control')}"] if server else []) + list(args)
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, input=input,
                             env={**os.environ, **self.env})
        self.assertEqual(out.returncode, expect, f"{args}: {out.stdout}\n{out.stderr}")
        return out

    def send(self, *extra, to="bob@example.com"):
        out = self.ctl("send", "--from", "alice@localhost", "--to", to, "--subject", "Grüße", "--text", "hello",
                       "-o", "json", *extra)
        return json.loads(out.stdout)


class SmtpctlTest(SmtpctlCase):
    def test_send_and_list_in_every_format(self):
        out = self.ctl("send", "--from", "alice@localhost", "--to", "bob@example.com", "--to", "carol@example.org",
                       "--subject", "Grüße", "--text", "hello")
        rows = table(out.stdout)
        self.assertEqual(rows[0], ["QUEUE ID", "MESSAGE ID", "DUPLICATE"])
        first = rows[1][0]
        second = self.send(to="dave@example.net")["queue_id"]
        rows = table(self.ctl("queue", "ls").stdout)
        self.assertEqual(rows[0], ["ID", "AGE", "STATE", "SIZE", "FROM", "TO", "ATTEMPTS", "NEXT", "LAST REPLY"])
        self.assertEqual([r[0] for r in rows[1:]], [first, second])
        self.assertEqual(rows[1][2], "queued")
        self.assertEqual(rows[1][4], "alice@localhost")
        self.assertEqual(rows[1][5], "bob@example.com +1")
        self.assertEqual(rows[1][6], "0")
        wide = table(self.ctl("queue", "ls", "-o", "wide").stdout)
        self.assertEqual(wide[1][5], "bob@example.com,carol@example.org")
        data = json.loads(self.ctl("queue", "ls", "-o", "json").stdout)
        self.assertEqual([m["id"] for m in data["messages"]], [first, second])
        self.assertEqual(data["messages"][0]["recipients"], ["bob@example.com", "carol@example.org"])
        self.assertEqual(data["messages"][0]["state"], "MESSAGE_STATE_QUEUED")
        self.assertEqual(data["next_page_token"], "")
        y = yaml.safe_load(self.ctl("queue", "ls", "-o", "yaml").stdout)
        self.assertEqual([m["id"] for m in y["messages"]], [first, second])
        only = json.loads(self.ctl("queue", "ls", "--rcpt", "dave@example.net", "-o", "json").stdout)
        self.assertEqual([m["id"] for m in only["messages"]], [second])
        empty = self.ctl("queue", "ls", "--domain", "nowhere.test")
        self.assertEqual(empty.stdout, "")
        self.assertIn("No messages", empty.stderr)

    def test_send_variants(self):
        d = tempfile.mkdtemp(prefix="smtpctl-")
        self.addCleanup(__import__("shutil").rmtree, d, True)
        html, att, raw = (os.path.join(d, n) for n in ("body.html", "data.csv", "raw.eml"))
        for path, data in ((html, b"<p>hi</p>\n"), (att, b"a,b\n1,2\n"),
                           (raw, b"From: alice@localhost\nSubject: raw\n\nraw body\n")):
            with open(path, "wb") as f:
                f.write(data)
        r = self.send("--html-file", html, "--attach", att, "--header", "X-Tag: one", "--idempotency-key", "k-1")
        again = self.send("--html-file", html, "--attach", att, "--header", "X-Tag: one", "--idempotency-key", "k-1")
        self.assertEqual(again["queue_id"], r["queue_id"])
        self.assertTrue(again["duplicate"])
        body = self.ctl("queue", "show", r["queue_id"], "--body").stdout
        self.assertIn("Content-Type: multipart/mixed", body)
        self.assertIn('Content-Type: text/csv;\n name="data.csv"', body)  # text mode: CRLF read as LF
        self.assertIn("X-Tag: one", body)
        out = self.ctl("send", "--raw", raw, "--from", "alice@localhost", "--to", "x@example.com", "-o", "json")
        rid = json.loads(out.stdout)["queue_id"]
        self.assertTrue(self.ctl("queue", "show", rid, "--body").stdout.endswith("Subject: raw\n\nraw body\n"))
        self.ctl("send", "--raw", raw, "--from", "alice@localhost", expect=2)
        bad = self.ctl("send", "--from", "not an address", "--to", "x@example.com", "--text", "x", expect=1)
        self.assertIn("INVALID_ARGUMENT: structured.from.address", bad.stderr)

    def test_show_and_manage(self):
        a = self.send()["queue_id"]
        b = self.send(to="carol@example.org")["queue_id"]
        show = self.ctl("queue", "show", a).stdout
        self.assertIn(f"ID:       {a}", show)
        self.assertIn("State:    queued", show)
        self.assertRegex(show, r"bob@example.com\s+queued\s+0\s+now")
        self.assertIn("Subject: =?UTF-8?B?R3LDvMOfZQ==?=", show)
        detail = json.loads(self.ctl("queue", "show", a, "-o", "json").stdout)
        self.assertEqual(detail["recipients"][0]["address"], "bob@example.com")
        self.assertEqual(detail["source"], "grpc")
        self.assertEqual(self.ctl("queue", "hold", a).stdout, f"{a} held\n")
        held = json.loads(self.ctl("queue", "ls", "--state", "held", "-o", "json").stdout)
        self.assertEqual([m["id"] for m in held["messages"]], [a])
        retry = self.ctl("queue", "retry", a, expect=1)
        self.assertIn(f"smtpctl: {a}: FAILED_PRECONDITION", retry.stderr)
        self.assertEqual(self.ctl("queue", "release", a).stdout, f"{a} released\n")
        self.assertEqual(self.ctl("queue", "retry", "--all-matching", "--rcpt", "carol@example.org").stdout,
                         f"{b} scheduled\n")
        missing = self.ctl("queue", "rm", "0000000000000000", expect=1)
        self.assertIn("NOT_FOUND", missing.stderr)
        self.ctl("queue", "rm", "--all-matching", expect=2)  # refuses to delete everything by accident
        self.ctl("queue", "rm", a, "--all-matching", "--state", "queued", expect=2)
        out = json.loads(self.ctl("queue", "rm", "--all-matching", "--rcpt", "bob@example.com", "--bounce",
                                  "-o", "json").stdout)
        self.assertEqual(out["ids"], [a])
        self.assertEqual(self.ctl("queue", "rm", b).stdout, f"{b} deleted\n")
        left = json.loads(self.ctl("queue", "ls", "-o", "json").stdout)["messages"]
        self.assertEqual(len(left), 1)  # alice's bounce for a
        self.assertEqual(left[0]["sender"], "")
        self.assertEqual(left[0]["recipients"], ["alice@localhost"])

    def test_stats_health_policy(self):
        self.send()
        rows = table(self.ctl("stats").stdout)
        self.assertEqual(rows[0][:5], ["MESSAGES", "QUEUED", "DEFERRED", "HELD", "DELIVERING"])
        self.assertEqual(rows[1][:2], ["1", "1"])
        self.assertIn(["DESTINATION", "PENDING RECIPIENTS"], rows)
        self.assertIn(["mx:example.com", "1"], rows)
        self.assertEqual(json.loads(self.ctl("stats", "-o", "json").stdout)["messages"], "1")
        self.assertEqual(self.ctl("health").stdout, "SERVING\n")
        self.assertEqual(json.loads(self.ctl("health", "-o", "json").stdout)["status"], "SERVING")
        policy = yaml.safe_load(self.ctl("policy", "get").stdout)
        self.assertEqual(policy["version"], "1")
        self.assertEqual(json.loads(self.ctl("policy", "get", "-o", "json").stdout)["max_recipients"], 100)
        policy["relay_domains"] = ["partner.test"]
        policy["max_recipients"] = 50
        path = os.path.join(self.tmp, "policy.yaml")
        with open(path, "w") as f:
            yaml.safe_dump(policy, f)
        diff = self.ctl("policy", "diff", path).stdout
        self.assertIn("+ max_recipients: 50", diff)
        self.assertIn("- max_recipients: 100", diff)
        self.assertIn('+   - "partner.test"', diff)
        self.assertEqual(self.ctl("policy", "set", path, "--expected-version", "1").stdout,
                         "policy version 2 (by loopback)\n")
        stale = self.ctl("policy", "set", path, "--expected-version", "1", expect=1)
        self.assertIn("ABORTED: policy version is 2, not 1", stale.stderr)
        self.assertEqual(self.ctl("policy", "diff", path).stdout, "no changes\n")
        as_json = json.loads(self.ctl("policy", "get", "-o", "json").stdout)
        as_json["routes"]["x.test"] = "carrier:pigeon"
        bad = self.ctl("policy", "set", "-", input=json.dumps(as_json), expect=1)
        self.assertIn("INVALID_ARGUMENT: policy.routes.x.test", bad.stderr)
        with open(path, "w") as f:
            f.write("max_recipients: [not, a, number]\n")
        self.ctl("policy", "set", path, expect=2)

    def test_watch_until_interrupted(self):
        import select
        proc = subprocess.Popen([SMTPCTL, "--server", f"127.0.0.1:{self.port('control')}", "queue", "watch"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        def line(timeout=20):
            ready, _, _ = select.select([proc.stdout], [], [], timeout)
            self.assertTrue(ready, "smtpctl printed nothing")
            return proc.stdout.readline()
        try:
            header = line()  # printed once the watch is in place
            self.assertEqual(header.split(), ["TIME", "EVENT", "ID", "RECIPIENT", "REPLY"])
            sent = self.send()["queue_id"]
            fields = line().split()
            self.assertEqual(fields[1:4], ["queued", sent, "bob@example.com"])
            proc.send_signal(signal.SIGINT)
            self.assertEqual(proc.wait(20), 0)
        finally:
            reap(proc)

    def test_watch_json_lines(self):
        import select
        proc = subprocess.Popen([SMTPCTL, "--server", f"127.0.0.1:{self.port('control')}", "queue", "watch",
                                 "-o", "json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            sent = set()
            event = None
            deadline = time.time() + 20
            while event is None and time.time() < deadline:  # until the watch is in place
                sent.add(self.send()["queue_id"])
                if select.select([proc.stdout], [], [], 0.5)[0]:
                    event = json.loads(proc.stdout.readline())
            self.assertIsNotNone(event, "no event printed")
            self.assertIn(event["id"], sent)
            self.assertEqual(event["kind"], "KIND_QUEUED")
            self.assertEqual(event["recipient"], "bob@example.com")
            proc.send_signal(signal.SIGTERM)
            self.assertEqual(proc.wait(20), 0)
        finally:
            reap(proc)

    def test_every_read_command_in_every_format(self):
        a = self.send()
        for args in (["queue", "ls"], ["queue", "show", a["queue_id"]], ["stats"], ["health"], ["policy", "get"]):
            for fmt in ("table", "wide", "json", "yaml"):
                out = self.ctl(*args, "-o", fmt).stdout
                self.assertTrue(out.strip(), (args, fmt))
                if fmt == "json":
                    self.assertIsInstance(json.loads(out), dict, args)
                elif fmt == "yaml":
                    self.assertIsInstance(yaml.safe_load(out), dict, args)
                    again = json.loads(self.ctl(*args, "-o", "json").stdout)
                    first = yaml.safe_load(out)
                    for d in (first, again):
                        d.pop("oldest_age_seconds", None)  # stats: the clock moves between the two calls
                    self.assertEqual(first, again, args)
        # JSON is stable: the same state prints the same bytes.
        self.assertEqual(self.ctl("queue", "ls", "-o", "json").stdout, self.ctl("queue", "ls", "-o", "json").stdout)
        self.assertEqual(self.ctl("policy", "get", "-o", "json").stdout, self.ctl("policy", "get", "-o", "json").stdout)
        for fmt in ("table", "json", "yaml"):
            out = self.ctl("queue", "hold", a["queue_id"], "-o", fmt).stdout
            self.assertIn(a["queue_id"], out)
            self.ctl("queue", "release", a["queue_id"], "-o", fmt)

    def test_usage_errors(self):
        self.assertIn("subcommand", self.ctl(expect=2).stderr)
        self.ctl("queue", "ls", "-o", "xml", expect=2)
        self.ctl("queue", "show", expect=2)
        self.ctl("queue", "ls", "--older-than", "soon", expect=2)
        self.ctl("send", "--to", "x@example.com", expect=2)
        self.ctl("--help", expect=0)
        gone = subprocess.run([SMTPCTL, "--server", "127.0.0.1:1", "--timeout", "2s", "stats"], capture_output=True,
                              text=True, timeout=30)
        self.assertEqual(gone.returncode, 1)
        self.assertIn("UNAVAILABLE", gone.stderr)


class SmtpctlTokensTest(SmtpctlCase):
    def setUp(self):
        from test_grpc import make_certs
        self.certdir = tempfile.mkdtemp(prefix="smtpctl-certs-")
        self.addCleanup(__import__("shutil").rmtree, self.certdir, True)
        make_certs(self.certdir)
        tokens = os.path.join(self.certdir, "tokens")
        with open(tokens, "w") as f:
            f.write("reader-token-0123456789 read\nadmin-token-0123456789 admin ops\n")
        self.settings = {"control.tokens_file": tokens,
                         "control.tls_cert_file": os.path.join(self.certdir, "server.pem"),
                         "control.tls_key_file": os.path.join(self.certdir, "server.key")}
        super().setUp()

    def test_token_flag_environment_and_tls(self):
        ca = os.path.join(self.certdir, "server.pem")
        self.assertIn("UNAUTHENTICATED", self.ctl("--ca", ca, "stats", expect=1).stderr)
        self.ctl("--ca", ca, "--token", "reader-token-0123456789", "stats")
        denied = self.ctl("--ca", ca, "--token", "reader-token-0123456789", "send", "--from", "a@localhost",
                          "--to", "b@example.com", "--text", "x", expect=1)
        self.assertIn("PERMISSION_DENIED", denied.stderr)
        self.env = {"SMTPCTL_TOKEN": "admin-token-0123456789"}
        self.ctl("--ca", ca, "send", "--from", "a@localhost", "--to", "b@example.com", "--text", "x")
        self.assertIn("UNAVAILABLE", self.ctl("stats", expect=1).stderr)  # plaintext to a TLS port


class SmtpctlMutualTlsTest(SmtpctlCase):
    def setUp(self):
        from test_grpc import make_certs
        self.certdir = tempfile.mkdtemp(prefix="smtpctl-mtls-")
        self.addCleanup(__import__("shutil").rmtree, self.certdir, True)
        make_certs(self.certdir)
        self.settings = {"control.client_ca_file": os.path.join(self.certdir, "ca.pem"),
                         "control.tls_cert_file": os.path.join(self.certdir, "server.pem"),
                         "control.tls_key_file": os.path.join(self.certdir, "server.key")}
        super().setUp()

    def test_client_certificate(self):
        f = lambda n: os.path.join(self.certdir, n)  # noqa: E731
        self.assertIn("UNAVAILABLE", self.ctl("--ca", f("server.pem"), "health", expect=1).stderr)
        self.assertEqual(self.ctl("--ca", f("server.pem"), "--cert", f("client.pem"), "--key", f("client.key"),
                                  "health").stdout, "SERVING\n")
        self.ctl("--ca", f("server.pem"), "--cert", f("client.pem"), "health", expect=2)  # --key missing


if __name__ == "__main__":
    unittest.main()
