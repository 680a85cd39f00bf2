"""Listener-level behaviour: IPv6, a configured certificate, the TLS
version floor, the global connection limit and the queue-size limit."""
import os
import smtplib
import socket
import ssl
import subprocess
import unittest
import warnings

warnings.filterwarnings("ignore", category=DeprecationWarning)  # TLSVersion.TLSv1 is deprecated, on purpose

from smtpd_harness import SMTPD, Raw, SmtpdTestCase


def no_verify():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Ipv6Test(SmtpdTestCase):
    settings = {"listeners.mx.address": "[::1]:0"}

    def test_receives_over_ipv6(self):
        with smtplib.SMTP("::1", self.port(), timeout=10) as s:
            s.sendmail("a@remote.test", ["bob@localhost"], b"Subject: v6\r\n\r\nx\r\n")
        fields, body = self.server.spool_show(self.server.spool_ls()[0])
        self.assertEqual(fields["client"], ["::1"])
        self.assertIn(b"([::1])", body)


class CertificateTest(SmtpdTestCase):
    def setUp(self):
        import tempfile
        self.certdir = tempfile.mkdtemp(prefix="smtpd-cert-")
        self.cert = os.path.join(self.certdir, "cert.pem")
        self.key = os.path.join(self.certdir, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                        "-nodes", "-keyout", self.key, "-out", self.cert, "-days", "2", "-subj",
                        "/CN=configured.test", "-addext", "subjectAltName=DNS:configured.test"],
                       check=True, capture_output=True, timeout=60)
        self.settings = {"tls.cert_file": self.cert, "tls.key_file": self.key}
        super().setUp()

    def tearDown(self):
        super().tearDown()
        import shutil
        shutil.rmtree(self.certdir, ignore_errors=True)

    def verified_session(self, port, implicit):
        """A TLS session that verifies the configured certificate by name."""
        ctx = ssl.create_default_context(cafile=self.cert)
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        if not implicit:
            c = Raw.__new__(Raw)
            c.sock, c.buf = raw, b""
            c.reply()
            c.cmd("EHLO c")
            self.assertEqual(c.cmd("STARTTLS"), "220 2.0.0 Ready to start TLS")
        tls = ctx.wrap_socket(raw, server_hostname="configured.test")
        return tls

    def test_presents_configured_certificate(self):
        for port, implicit in ((self.port(), False), (self.port("smtps"), True)):
            tls = self.verified_session(port, implicit)
            subject = dict(x[0] for x in tls.getpeercert()["subject"])
            self.assertEqual(subject["commonName"], "configured.test")
            self.assertIn(tls.version(), ("TLSv1.2", "TLSv1.3"))
            tls.close()

    def test_refuses_old_tls_versions(self):
        def handshake(version):
            ctx = no_verify()
            ctx.minimum_version = version
            ctx.maximum_version = version
            ctx.set_ciphers("ALL:@SECLEVEL=0")  # let the client offer old versions
            with socket.create_connection(("127.0.0.1", self.port("smtps")), timeout=10) as raw:
                with ctx.wrap_socket(raw) as tls:
                    return tls.version()

        # Control: the same client settings do complete TLS 1.2.
        self.assertEqual(handshake(ssl.TLSVersion.TLSv1_2), "TLSv1.2")
        for version in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
            with self.assertRaises((ssl.SSLError, ConnectionError), msg=str(version)):
                handshake(version)

    def test_bad_certificate_is_a_config_error(self):
        bad = os.path.join(self.certdir, "nothing.pem")
        for cert, key in ((bad, self.key), (self.cert, bad)):
            out = subprocess.run([SMTPD, "--set", f"tls.cert_file={cert}", "--set", f"tls.key_file={key}",
                                  "--check-config"], capture_output=True, text=True, timeout=30)
            self.assertEqual(out.returncode, 2, out.stderr)
            self.assertTrue(out.stderr.startswith("smtpd: config: tls."), out.stderr)
        out = subprocess.run([SMTPD, "--set", f"tls.cert_file={self.cert}", "--set", f"tls.key_file={self.key}",
                              "--check-config"], capture_output=True, text=True, timeout=30)
        self.assertEqual((out.returncode, out.stdout), (0, "config ok\n"))


class GlobalLimitTest(SmtpdTestCase):
    settings = {"limits.max_connections": "2"}

    def test_global_connection_limit(self):
        a, b = Raw(self.port()), Raw(self.port("submission"))
        a.reply(), b.reply()
        c = Raw(self.port())
        self.assertEqual(c.reply(), "421 4.7.0 mx.test Error: too many connections")
        refused = self.server.wait_event("connection_refused")
        self.assertEqual(refused[0]["reason"], "global connection limit")
        self.assertEqual(a.cmd("QUIT"), "221 2.0.0 Bye")
        self.server.wait_event("disconnect")
        d = Raw(self.port())
        self.assertTrue(d.reply().startswith("220 "))


class QueueFullTest(SmtpdTestCase):
    settings = {"spool.max_messages": "2"}

    def test_queue_size_limit(self):
        with smtplib.SMTP("127.0.0.1", self.port(), timeout=10) as s:
            s.ehlo()
            for _ in range(2):
                s.sendmail("a@remote.test", ["bob@localhost"], b"Subject: q\r\n\r\nx\r\n")
            code, msg = s.mail("a@remote.test")
            self.assertEqual((code, msg), (452, b"4.3.1 Insufficient system storage"))
        self.assertEqual(len(self.server.spool_ls()), 2)


if __name__ == "__main__":
    unittest.main()
