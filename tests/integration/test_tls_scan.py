"""TLS as a scanner sees it: testssl.sh (Debian) against implicit TLS and
STARTTLS finds no SSLv2/3, TLS 1.0 or 1.1, no NULL, anonymous, export, LOW,
3DES or CBC ("average") ciphers, no client-initiated renegotiation; and
clients that abort or stall the handshake leave no session behind."""
import json
import os
import socket
import ssl
import subprocess
import time
import urllib.request

from smtpd_harness import SmtpdTestCase

NOT_OFFERED = ("SSLv2", "SSLv3", "TLS1", "TLS1_1", "cipherlist_NULL", "cipherlist_aNULL", "cipherlist_EXPORT",
               "cipherlist_LOW", "cipherlist_3DES_IDEA", "cipherlist_AVERAGE")


def open_connections(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        total = 0.0
        for line in r.read().decode().splitlines():
            if line.startswith("smtpd_connections_open{"):
                total += float(line.rsplit(" ", 1)[1])
        return total


class TlsScanTest(SmtpdTestCase):
    settings = {"limits.tls_handshake_timeout": "1s"}

    def scan(self, *target):
        out = os.path.join(self.tmp, f"testssl-{len(os.listdir(self.tmp))}.json")
        r = subprocess.run(["testssl", "--quiet", "--color", "0", "--warnings", "off", "--protocols", "--std",
                            "--renegotiation", "--jsonfile", out, *target], capture_output=True, text=True,
                           timeout=300)
        self.assertEqual(r.returncode, 0, r.stdout[-2000:] + r.stderr[-2000:])
        return {e["id"]: e["finding"] for e in json.load(open(out))}

    def check(self, findings):
        for key in NOT_OFFERED:
            self.assertIn("not offered", findings.get(key, "missing"), key)
        self.assertTrue(findings["TLS1_2"].startswith("offered"))
        self.assertTrue(findings["TLS1_3"].startswith("offered"))
        self.assertEqual(findings["cipherlist_STRONG"], "offered")
        self.assertEqual(findings["secure_client_renego"], "not vulnerable")

    def test_implicit_tls(self):
        self.check(self.scan(f"127.0.0.1:{self.port('smtps')}"))

    def test_starttls(self):
        self.check(self.scan("-t", "smtp", f"127.0.0.1:{self.port('mx')}"))

    def test_aborted_and_stalled_handshakes_leave_nothing(self):
        port = self.port("smtps")
        # Abort: half a ClientHello, then gone.
        for _ in range(20):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(20))
            s.close()
        # Stall: connect and send nothing; the 1 s handshake timeout ends it
        # (before the fix, only the 5-minute command timeout did).
        stalled = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(5)]
        deadline = time.time() + 10
        while len(self.server.events("connect")) < 25 and time.time() < deadline:
            time.sleep(0.05)  # every connection accepted and started first
        self.assertEqual(len(self.server.events("connect")), 25)
        while open_connections(self.port("metrics")) > 0 and time.time() < deadline:
            time.sleep(0.1)
        self.assertEqual(open_connections(self.port("metrics")), 0)
        for s in stalled:
            s.close()
        self.assertEqual(len(self.server.events("tls_failed")), 25)
        # And TLS still works.
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5), server_hostname="mx.test") as t:
            self.assertTrue(t.recv(100).startswith(b"220 "))
