"""Hostile receiving servers, seen by smtpd's SMTP client: one that
pipelines a reply after its 220 to STARTTLS (the bytes must be thrown
away, RFC 3207 5), and one that vanishes in the middle of DATA (the
delivery is deferred and retried, never marked delivered)."""
import os
import smtplib
import socket
import ssl
import tempfile
import threading
import time

from test_delivery import DeliveryTestCase
from test_grpc import make_certs


class ScriptedServer:
    """A one-connection-at-a-time SMTP server on loopback with a scripted
    misbehaviour; records the commands it received."""

    def __init__(self, mode, certdir=None):
        self.mode = mode
        self.certdir = certdir
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.commands = []
        self.messages = 0
        self.connections = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def close(self):
        self.stop.set()
        self.thread.join(10)
        self.sock.close()

    def run(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            self.connections += 1
            try:
                self.session(conn)
            except (OSError, ssl.SSLError):
                pass
            finally:
                conn.close()

    def session(self, conn):
        conn.settimeout(10)
        f = conn.makefile("rb")
        conn.sendall(b"220 hostile.test ESMTP\r\n")
        tls = False
        while True:
            line = f.readline()
            if not line:
                return
            cmd = line.decode(errors="replace").strip()
            self.commands.append(("tls " if tls else "") + cmd)
            verb = cmd.split(" ")[0].upper()
            if verb == "EHLO":
                ext = [] if tls or self.mode != "inject" else ["STARTTLS"]
                lines = ["hostile.test"] + ext + ["PIPELINING"]
                out = "".join(f"250-{l}\r\n" for l in lines[:-1]) + f"250 {lines[-1]}\r\n"
                (conn if not tls else tconn).sendall(out.encode())
            elif verb == "STARTTLS":
                # The attack: a reply pipelined after the 220, before the
                # handshake. A client that keeps it reads it as the answer
                # to its next command (here: a refusal of EHLO).
                conn.sendall(b"220 go ahead\r\n554 5.7.0 injected before TLS\r\n")
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                ctx.load_cert_chain(os.path.join(self.certdir, "server.pem"), os.path.join(self.certdir, "server.key"))
                tconn = ctx.wrap_socket(conn, server_side=True)
                f = tconn.makefile("rb")
                tls = True
            elif verb in ("MAIL", "RCPT"):
                (tconn if tls else conn).sendall(b"250 2.0.0 ok\r\n")
            elif verb == "DATA":
                out = tconn if tls else conn
                out.sendall(b"354 go on\r\n")
                if self.mode == "vanish":
                    f.read(100)  # some of the message, then gone
                    conn.shutdown(socket.SHUT_RDWR)
                    return
                while f.readline() not in (b".\r\n", b""):
                    pass
                self.messages += 1
                out.sendall(b"250 2.0.0 queued\r\n")
            elif verb == "QUIT":
                (tconn if tls else conn).sendall(b"221 bye\r\n")
                return
            else:
                (tconn if tls else conn).sendall(b"502 5.5.1 no\r\n")


class HostileServerCase(DeliveryTestCase):
    mode = None

    def setUp(self):
        self.certdir = tempfile.mkdtemp(prefix="hostile-certs-")
        make_certs(self.certdir)
        self.remote = ScriptedServer(self.mode, self.certdir)
        self.settings = {**DeliveryTestCase.settings, "routes.*": f"relay:127.0.0.1:{self.remote.port}",
                         "policy.relay_domains": "far.test", "queue.min_backoff": "200ms",
                         "queue.max_backoff": "400ms"}
        super().setUp()

    def tearDown(self):
        super().tearDown()
        self.remote.close()
        import shutil
        shutil.rmtree(self.certdir, ignore_errors=True)


class StartTlsInjectionTest(HostileServerCase):
    mode = "inject"

    def test_reply_pipelined_after_starttls_is_discarded(self):
        with smtplib.SMTP("127.0.0.1", self.port(), timeout=10) as s:
            s.sendmail("alice@localhost", ["x@far.test"], b"Subject: tls\r\n\r\nx\r\n")
        self.wait_for(lambda: self.server.events("delivery"))
        d = self.server.events("delivery")[0]
        self.assertEqual(d["status"], "delivered", d)  # the injected 554 was never read as a reply
        self.assertTrue(d["tls"].startswith("TLSv1."), d)
        self.assertEqual(self.remote.messages, 1)
        after_tls = [c for c in self.remote.commands if c.startswith("tls ")]
        self.assertTrue(after_tls[0].startswith("tls EHLO"), self.remote.commands)


class VanishingServerTest(HostileServerCase):
    mode = "vanish"

    def test_vanishing_mid_data_defers_and_retries(self):
        with smtplib.SMTP("127.0.0.1", self.port(), timeout=10) as s:
            s.sendmail("alice@localhost", ["x@far.test"], b"Subject: gone\r\n\r\n" + b"y" * 70 + b"\r\n" * 100)
        self.wait_for(lambda: len(self.server.events("delivery")) >= 2)
        events = self.server.events("delivery")
        self.assertEqual({e["status"] for e in events}, {"deferred"}, events)
        self.assertTrue(all(e["reply"].startswith("4") for e in events), events)
        self.assertGreaterEqual(self.remote.connections, 2)  # retried
        self.assertEqual(self.remote.messages, 0)
        self.assertEqual(len(self.server.spool_ls()), 1)  # still queued, never marked delivered
