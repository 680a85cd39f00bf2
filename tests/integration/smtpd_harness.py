"""Starts the real smtpd binary on free loopback ports for integration tests.

Each listener binds port 0; the harness learns the bound ports from the
server's "listening" log lines. Every process started is ended and every
temporary directory removed when the test finishes.
"""
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import unittest

SMTPD = os.environ.get("SMTPD_TEST_BIN", os.path.join(os.path.dirname(__file__), "../../build/bin/smtpd"))


def hash_password(password):
    out = subprocess.run([SMTPD, "hash-password"], input=password + "\n", capture_output=True, text=True,
                         check=True, timeout=30)
    return out.stdout.strip()


class Smtpd:
    """One smtpd process with its own spool and config in a temp dir."""

    def __init__(self, workdir, settings=None, users=None, log_to_file=False):
        self.dir = workdir
        self.log_to_file = log_to_file  # benchmarks: no reader thread on the CPU
        self.spool = os.path.join(workdir, "spool")
        self.config = os.path.join(workdir, "smtpd.yaml")
        self.settings = dict(settings or {})
        self.users = users or {}
        self.proc = None
        self.lines = []
        self.ports = {}
        self._lock = threading.Lock()
        self._write_config()

    def _write_config(self):
        users_file = ""
        if self.users:
            users_file = os.path.join(self.dir, "users")
            with open(users_file, "w") as f:
                for user, password in self.users.items():
                    f.write(f"{user}:{hash_password(password)}\n")
        cfg = {
            "server": {"hostname": "mx.test", "threads": 2, "drain_timeout": "5s"},
            "listeners": [
                {"name": "mx", "address": "127.0.0.1:0", "mode": "smtp"},
                {"name": "submission", "address": "127.0.0.1:0", "mode": "submission"},
                {"name": "smtps", "address": "127.0.0.1:0", "mode": "smtps"},
            ],
            "spool": {"path": self.spool},
            "control": {"address": "127.0.0.1:0"},
            "metrics": {"address": "127.0.0.1:0"},
            "auth": {"users_file": users_file},
            "policy": {"local_domains": ["localhost", "mx.test"]},
            "routes": {"localhost": "maildir:" + os.path.join(self.dir, "mail"),
                       "mx.test": "maildir:" + os.path.join(self.dir, "mail"), "*": "mx"},
            # The receive-path tests inspect the spool: delivery stays off
            # unless a test turns it on (delivery.paused=false).
            "delivery": {"paused": True},
        }
        with open(self.config, "w") as f:
            json.dump(cfg, f)  # JSON is YAML

    def args(self):
        out = ["--config", self.config]
        for k, v in self.settings.items():
            out += ["--set", f"{k}={v}"]
        return out

    def start(self, timeout=20):
        self._close()
        self.lines = []
        self.ports = {}
        if self.log_to_file:
            return self._start_logging_to_file(timeout)
        self.proc = subprocess.Popen([SMTPD] + self.args(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True, errors="replace")
        started = threading.Event()

        def reader(proc):
            for line in proc.stderr:
                try:
                    ev = json.loads(line)
                except ValueError:
                    ev = {"event": "raw", "text": line}
                with self._lock:
                    self.lines.append(ev)
                if ev.get("event") == "listening":
                    self.ports[ev["listener"]] = int(ev["address"].rsplit(":", 1)[1])
                if ev.get("event") in ("started", "start_failed", "spool_open_failed"):
                    started.set()
            started.set()

        threading.Thread(target=reader, args=(self.proc,), daemon=True).start()
        if not started.wait(timeout) or "mx" not in self.ports:
            self.kill()
            raise RuntimeError(f"smtpd did not start: {self.lines[-5:]}")
        return self

    def _start_logging_to_file(self, timeout):
        path = os.path.join(self.dir, "smtpd.log")
        with open(path, "w") as log:
            self.proc = subprocess.Popen([SMTPD] + self.args(), stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.time() + timeout
        while time.time() < deadline and self.proc.poll() is None:
            with open(path) as f:
                lines = [json.loads(l) for l in f if l.startswith("{")]
            if any(e.get("event") == "started" for e in lines):
                self.lines = lines
                for e in lines:
                    if e.get("event") == "listening":
                        self.ports[e["listener"]] = int(e["address"].rsplit(":", 1)[1])
                return self
            time.sleep(0.05)
        self.kill()
        raise RuntimeError("smtpd did not start; see " + path)

    def events(self, name):
        with self._lock:
            return [e for e in self.lines if e.get("event") == name]

    def wait_event(self, name, count=1, timeout=10):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if len(self.events(name)) >= count:
                return self.events(name)
            time.sleep(0.02)
        raise AssertionError(f"no {count} '{name}' events; last lines: {self.lines[-5:]}")

    def stop(self, timeout=20):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                code = self.proc.wait(timeout)
                if code != 0:
                    self.dump_log(f"smtpd exited with {code}")
                return code
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("smtpd did not stop after SIGTERM")
        return self.proc.returncode if self.proc else None

    def dump_log(self, why, lines=40):
        import sys
        time.sleep(0.2)  # let the reader thread catch up
        print(f"\n--- {why}; last smtpd log lines:", file=sys.stderr)
        with self._lock:
            tail = self.lines[-lines:]
        for line in tail:
            print(json.dumps(line)[:1000], file=sys.stderr)
        if self.log_to_file:
            print(open(os.path.join(self.dir, "smtpd.log")).read()[-4000:], file=sys.stderr)

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._close()

    def _close(self):
        if self.proc and self.proc.stderr and self.proc.poll() is not None:
            time.sleep(0.05)  # let the reader thread drain the pipe
            try:
                self.proc.stderr.close()
            except (OSError, ValueError):
                pass

    def spool_ls(self):
        out = subprocess.run([SMTPD] + self.args() + ["spool", "ls"], capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise AssertionError(f"spool ls failed: {out.stderr}")
        rows = out.stdout.splitlines()[1:]
        return [r.split()[0] for r in rows if r.strip()]

    def spool_check(self):
        out = subprocess.run([SMTPD] + self.args() + ["spool", "check"], capture_output=True, text=True,
                             timeout=300)
        return out.returncode, out.stdout + out.stderr

    def spool_show(self, queue_id):
        out = subprocess.run([SMTPD] + self.args() + ["spool", "show", queue_id], capture_output=True,
                             timeout=60)
        if out.returncode != 0:
            raise AssertionError(f"spool show failed: {out.stderr!r}")
        meta, _, body = out.stdout.partition(b"\n\n")
        fields = {}
        for line in meta.decode().splitlines():
            k, _, v = line.partition(": ")
            fields.setdefault(k, []).append(v)
        return fields, body


class SmtpdTestCase(unittest.TestCase):
    settings = {}
    users = {}

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="smtpd-it-")
        self.server = Smtpd(self.tmp, self.settings, self.users).start()

    def tearDown(self):
        # A graceful stop in every test exercises the shutdown path and lets
        # LeakSanitizer run in sanitizer builds; any sanitizer report fails.
        try:
            running = self.server.proc is not None and self.server.proc.poll() is None
            code = self.server.stop() if running else 0
            reports = [e["text"] for e in self.server.lines if e.get("event") == "raw"
                       and ("Sanitizer" in e["text"] or "runtime error" in e["text"])]
            self.assertEqual(reports, [], "sanitizer reports")
            self.assertEqual(code, 0, "smtpd did not exit cleanly")
        finally:
            self.server.kill()
            shutil.rmtree(self.tmp, ignore_errors=True)

    def port(self, name="mx"):
        return self.server.ports[name]


class Raw:
    """A line-level SMTP client over a raw socket, for hostile inputs."""

    def __init__(self, port, timeout=10):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data if isinstance(data, bytes) else data.encode())

    def reply(self):
        """Reads one whole (possibly multi-line) reply; returns its text."""
        lines = []
        while True:
            while b"\r\n" not in self.buf:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError("closed: " + repr(self.buf))
                self.buf += chunk
            line, self.buf = self.buf.split(b"\r\n", 1)
            lines.append(line.decode(errors="replace"))
            if len(line) < 4 or line[3:4] != b"-":
                return "\n".join(lines)

    def cmd(self, line):
        self.send(line + "\r\n")
        return self.reply()

    def closed(self, timeout=5):
        """True when the server has closed the connection (after any data)."""
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False

    def starttls(self):
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        self.sock = ctx.wrap_socket(self.sock, server_hostname="mx.test")

    def close(self):
        self.sock.close()

    def __del__(self):
        try:
            self.sock.close()
        except Exception:
            pass
