"""Slow clients (slowloris): 1,000 connections that trickle one byte of a
command line every half second are cut by the RFC 5321 4.5.3.2.7 command
timeout, which runs for the whole line and is not renewed by each byte;
meanwhile a normal client gets its 220 at once and its message queued.
And a client that pipelines megabytes without reading replies is bounded
in memory and cut off."""
import selectors
import smtplib
import socket
import time
import unittest

from smtpd_harness import SmtpdTestCase

SLOW = 1000


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class SlowClientsTest(SmtpdTestCase):
    settings = {"limits.command_timeout": "2s", "limits.max_connections_per_client": "5000",
                "limits.max_connections": "5000"}

    def test_trickling_clients_are_cut_and_others_served(self):
        port = self.port()
        sel = selectors.DefaultSelector()
        slow = []
        for _ in range(SLOW):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.setblocking(False)
            slow.append(s)
            sel.register(s, selectors.EVENT_READ)
        # A normal client, in the middle of it all, is served at once.
        start = time.time()
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as c:
            self.assertLess(time.time() - start, 2)
            c.sendmail("a@remote.test", ["bob@localhost"], b"Subject: meanwhile\r\n\r\nx\r\n")
        self.assertLess(time.time() - start, 3)
        # The slow ones send "EHLO x" one byte every 0.5 s, never the end of
        # the line; each must be closed by about 2 s after its greeting.
        payload = b"EHLO slow.example"
        closed = set()
        received = {s: b"" for s in slow}
        deadline = time.time() + 12
        i = 0
        while len(closed) < SLOW and time.time() < deadline:
            for s in slow:
                if s not in closed:
                    try:
                        s.send(payload[i % len(payload):i % len(payload) + 1])
                    except OSError:
                        pass
            i += 1
            end = time.time() + 0.5
            while time.time() < end:
                for key, _ in sel.select(timeout=max(0, end - time.time())):
                    s = key.fileobj
                    try:
                        data = s.recv(4096)
                    except OSError:
                        data = b""
                    received[s] += data
                    if not data:
                        closed.add(s)
                        sel.unregister(s)
        elapsed = time.time() - start
        for s in slow:
            s.close()
        self.assertEqual(len(closed), SLOW, f"{SLOW - len(closed)} trickling clients still connected after {elapsed:.1f}s")
        timed_out = sum(1 for s in slow if b"421 4.4.2" in received[s])
        self.assertEqual(timed_out, SLOW)
        self.assertLess(elapsed, 12)
        self.assertEqual(len(self.server.spool_ls()), 1)

    def test_pipelining_without_reading_is_bounded(self):
        port = self.port()
        before = rss_kib(self.server.proc.pid)
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.setblocking(False)
        chunk = b"NOOP\r\n" * 10000  # 60 KB of commands, replies never read
        sent = 0
        start = time.time()
        while sent < 50 * 1024 * 1024 and time.time() - start < 8:
            try:
                sent += s.send(chunk)
            except BlockingIOError:
                time.sleep(0.01)  # the server stopped reading: its replies are not being read
            except OSError:
                break  # cut off
        grown = rss_kib(self.server.proc.pid) - before
        self.assertLess(sent, 50 * 1024 * 1024, "the server kept reading without its replies being read")
        self.assertLess(grown, 64 * 1024, f"smtpd grew by {grown} KiB")
        # Cut off by the timeout on its blocked writes.
        s.setblocking(True)
        s.settimeout(10)
        try:
            while s.recv(1 << 20):
                pass
        except OSError:
            pass
        s.close()
        self.server.wait_event("disconnect", 1, timeout=10)
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as c:  # still serving
            self.assertEqual(c.noop()[0], 250)


if __name__ == "__main__":
    unittest.main()
