"""Reload without restart: SIGHUP, and a config file or certificate
changed in place the way Kubernetes does it (a symlink swap). A bad file
is refused with a log line and the old config stays. And SIGTERM in the
middle of load: exit 0, every acknowledged message in the spool."""
import json
import os
import signal
import smtplib
import socket
import ssl
import subprocess
import tempfile
import time
import unittest

from smtpd_harness import Raw, Smtpd
from test_durability import Tracker
from test_grpc import make_certs


def rcpt_reply(port, rcpt):
    raw = Raw(port)
    try:
        raw.reply()
        raw.cmd("EHLO client.test")
        raw.cmd("MAIL FROM:<x@client.test>")
        return raw.cmd(f"RCPT TO:<{rcpt}>")
    finally:
        raw.close()


def peer_certificate(port):
    """The DER certificate a new STARTTLS session is offered."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        f = sock.makefile("rb")
        f.readline()
        sock.sendall(b"EHLO client.test\r\n")
        while not f.readline().startswith(b"250 "):
            pass
        sock.sendall(b"STARTTLS\r\n")
        assert f.readline().startswith(b"220")
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with ctx.wrap_socket(sock, server_hostname="mx.test") as tls:
            return tls.getpeercert(binary_form=True)
    finally:
        sock.close()


def der(pem_path):
    return ssl.PEM_cert_to_DER_cert(open(pem_path).read())


class ReloadTest(unittest.TestCase):
    """The config lives in a Kubernetes-style projected folder:
    smtpd.yaml -> ..data/smtpd.yaml, ..data -> ..<version>."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="smtpd-reload-")
        self.server = Smtpd(self.tmp, {"server.config_watch_interval": "200ms"})
        self.base = json.load(open(self.server.config))
        self.mount = os.path.join(self.tmp, "mount")
        os.makedirs(self.mount)
        self.versions = 0
        a, b = os.path.join(self.tmp, "a"), os.path.join(self.tmp, "b")
        for d in (a, b):
            os.makedirs(d)
            make_certs(d)
        self.certs = (a, b)
        self.publish(self.base, a)
        os.symlink("..data/smtpd.yaml", os.path.join(self.mount, "smtpd.yaml"))
        os.symlink("..data/tls.crt", os.path.join(self.mount, "tls.crt"))
        os.symlink("..data/tls.key", os.path.join(self.mount, "tls.key"))
        self.server.config = os.path.join(self.mount, "smtpd.yaml")
        self.server.start()

    def tearDown(self):
        try:
            self.assertEqual(self.server.stop(), 0)
        finally:
            self.server.kill()
            subprocess.run(["rm", "-rf", self.tmp], check=False)

    def publish(self, cfg, certdir, raw=None):
        """Writes a new version folder and swaps ..data to it atomically."""
        self.versions += 1
        version = os.path.join(self.mount, f"..v{self.versions}")
        os.makedirs(version)
        cfg = json.loads(json.dumps(cfg))
        cfg["tls"] = {"cert_file": os.path.join(self.mount, "tls.crt"), "key_file": os.path.join(self.mount, "tls.key")}
        with open(os.path.join(version, "smtpd.yaml"), "w") as f:
            f.write(raw if raw is not None else json.dumps(cfg))
        for src, dst in (("server.pem", "tls.crt"), ("server.key", "tls.key")):
            with open(os.path.join(certdir, src), "rb") as s, open(os.path.join(version, dst), "wb") as d:
                d.write(s.read())
        tmp_link = os.path.join(self.mount, "..data_tmp")
        os.symlink(f"..v{self.versions}", tmp_link)
        os.replace(tmp_link, os.path.join(self.mount, "..data"))

    def wait_reload(self, event, count):
        self.server.wait_event(event, count=count, timeout=10)

    def test_changed_file_is_applied_bad_file_refused(self):
        port = self.server.ports["mx"]
        self.assertTrue(rcpt_reply(port, "y@partner.test").startswith("554 5.7.1"))
        self.assertEqual(peer_certificate(port), der(os.path.join(self.certs[0], "server.pem")))
        cfg = json.loads(json.dumps(self.base))
        cfg["policy"]["relay_domains"] = ["partner.test"]
        self.publish(cfg, self.certs[1])
        self.wait_reload("config_reloaded", 1)
        self.assertTrue(rcpt_reply(port, "y@partner.test").startswith("250"))
        self.assertEqual(peer_certificate(port), der(os.path.join(self.certs[1], "server.pem")))
        ev = self.server.events("config_reloaded")[0]
        self.assertEqual(ev["trigger"], "file changed")
        self.assertEqual(ev["policy_version"], 2)
        # A bad file: refused, logged, the old config stays.
        self.publish(cfg, self.certs[0], raw="policy: {max_recipients: lots}\n")
        self.wait_reload("config_reload_failed", 1)
        failed = self.server.events("config_reload_failed")[0]
        self.assertIn("policy.max_recipients", failed["error"])
        self.assertEqual(failed["action"], "kept the running config")
        self.assertTrue(rcpt_reply(port, "y@partner.test").startswith("250"))
        self.assertEqual(peer_certificate(port), der(os.path.join(self.certs[1], "server.pem")))
        # A setting only a restart applies is named as such.
        cfg["limits"] = {"max_errors": 7}
        self.publish(cfg, self.certs[1])
        self.wait_reload("config_reloaded", 2)
        self.assertIn("next restart", self.server.events("config_reloaded")[1]["restart_needed"])

    def test_sighup_reloads(self):
        self.server.stop()
        self.server.settings["server.config_watch_interval"] = "0s"  # only SIGHUP
        self.server.start()
        port = self.server.ports["mx"]
        cfg = json.loads(json.dumps(self.base))
        cfg["policy"]["relay_domains"] = ["hup.test"]
        self.publish(cfg, self.certs[0])
        time.sleep(0.5)
        self.assertTrue(rcpt_reply(port, "y@hup.test").startswith("554"))  # not watched
        self.server.proc.send_signal(signal.SIGHUP)
        self.wait_reload("config_reloaded", 1)
        self.assertEqual(self.server.events("config_reloaded")[0]["trigger"], "SIGHUP")
        self.assertTrue(rcpt_reply(port, "y@hup.test").startswith("250"))
        # The file's policy is stored: it is still there after a restart.
        self.server.stop()
        self.server.start()
        self.assertTrue(rcpt_reply(self.server.ports["mx"], "y@hup.test").startswith("250"))


class SigtermUnderLoadTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="smtpd-term-")
        self.server = Smtpd(self.tmp, {"limits.max_connections_per_client": "1000", "server.drain_timeout": "10s"})

    def tearDown(self):
        self.server.kill()
        subprocess.run(["rm", "-rf", self.tmp], check=False)

    def test_sigterm_in_the_middle_of_load_loses_nothing(self):
        self.server.start()
        port = self.server.ports["mx"]
        source = subprocess.Popen(["smtp-source", "-s", "16", "-m", "1000000", "-l", "4096", "-f",
                                   "load@remote.test", "-t", "bob@localhost", f"127.0.0.1:{port}"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        tracker = Tracker(port)
        tracker.start()
        try:
            time.sleep(1.5)
            self.server.proc.send_signal(signal.SIGTERM)
            code = self.server.proc.wait(30)
        finally:
            tracker.finish()
            source.kill()
            source.wait()
        self.assertEqual(code, 0)
        self.assertGreater(len(tracker.acked), 0)
        ids = set(self.server.spool_ls())
        lost = {s: q for s, q in tracker.acked.items() if q not in ids}
        self.assertEqual(lost, {}, f"{len(lost)} acknowledged messages lost")
        events = [e["event"] for e in self.server.lines]
        self.assertIn("draining", events)
        self.assertEqual(events[-1], "stopped")
        code, report = self.server.spool_check()
        self.assertEqual(code, 0, report)


if __name__ == "__main__":
    unittest.main()
