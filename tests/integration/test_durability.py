"""Nothing acknowledged is ever lost: kill -9 under load from smtp-source,
and a full disk answered with 452 4.3.1 without any acknowledgement."""
import os
import shutil
import smtplib
import subprocess
import tempfile
import threading
import time
import unittest

from smtpd_harness import Smtpd

LOAD_SETTINGS = {"limits.max_connections_per_client": "1000"}


class Tracker:
    """Clients that remember which messages got a 250 and under which id."""

    def __init__(self, port, threads=6, prefix="tracked"):
        self.port = port
        self.prefix = prefix  # subjects unique across trackers
        self.acked = {}  # subject -> queue id
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True) for i in range(threads)]

    def start(self):
        for t in self.threads:
            t.start()

    def run(self, worker):
        n = 0
        while not self.stop.is_set():
            try:
                with smtplib.SMTP("127.0.0.1", self.port, timeout=5) as s:
                    s.ehlo()
                    while not self.stop.is_set():
                        subject = f"{self.prefix}-{worker}-{n}"
                        n += 1
                        body = f"Subject: {subject}\r\n\r\n" + ("payload line\r\n" * 200) + f"end {subject}\r\n"
                        s.mail("a@remote.test")
                        s.rcpt("bob@localhost")
                        code, msg = s.data(body.encode())
                        if code == 250:
                            with self.lock:
                                self.acked[subject] = msg.decode().rsplit(" ", 1)[1]
            except (OSError, smtplib.SMTPException):
                time.sleep(0.05)  # the server is down; try again until told to stop

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(15)


class KillTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="smtpd-kill-")
        self.server = Smtpd(self.tmp, LOAD_SETTINGS)

    def tearDown(self):
        self.server.kill()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def test_kill9_under_load_loses_nothing(self):
        all_acked = {}
        for cycle in range(3):
            self.server.start()
            port = self.server.ports["mx"]
            source = subprocess.Popen(["smtp-source", "-s", "24", "-m", "1000000", "-l", "4096", "-f",
                                       "load@remote.test", "-t", "bob@localhost", f"127.0.0.1:{port}"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            tracker = Tracker(port, prefix=f"tracked-c{cycle}")
            tracker.start()
            time.sleep(1.5 + 0.5 * cycle)
            self.server.proc.kill()  # SIGKILL in the middle of everything
            self.server.proc.wait()
            tracker.finish()
            source.kill()
            source.wait()
            self.assertGreater(len(tracker.acked), 0, "no message was acknowledged before the kill")
            all_acked.update(tracker.acked)
        ids = set(self.server.spool_ls())
        lost = {s: q for s, q in all_acked.items() if q not in ids}
        self.assertEqual(lost, {}, f"{len(lost)} acknowledged messages lost")
        code, report = self.server.spool_check()
        self.assertEqual(code, 0, report)
        # Spot-check content: the acknowledged bodies are whole.
        for subject, qid in list(all_acked.items())[:20]:
            _, body = self.server.spool_show(qid)
            self.assertIn(f"Subject: {subject}".encode(), body)
            self.assertTrue(body.endswith(f"end {subject}\r\n".encode()), subject)
        # And the spool still works after the crashes; then deliver
        # everything and count, per tracked message, how often it arrived.
        self.server.settings["delivery.paused"] = "false"
        self.server.start()
        with smtplib.SMTP("127.0.0.1", self.server.ports["mx"], timeout=10) as s:
            s.sendmail("a@remote.test", ["bob@localhost"], b"Subject: after\r\n\r\nok\r\n")
        deadline = time.time() + 240
        while self.server.spool_ls() and time.time() < deadline:
            time.sleep(0.5)
        self.assertEqual(self.server.spool_ls(), [], "the queue did not drain")
        self.assertEqual(self.server.stop(), 0)
        delivered = {}
        new_dir = os.path.join(self.tmp, "mail", "bob", "new")
        for name in os.listdir(new_dir):
            with open(os.path.join(new_dir, name), "rb") as f:
                for line in f:
                    if line.startswith(b"Subject: tracked-"):
                        subject = line.split(b" ", 1)[1].strip().decode()
                        delivered[subject] = delivered.get(subject, 0) + 1
                        break
                    if line in (b"\r\n", b"\n"):
                        break
        lost = [s for s in all_acked if s not in delivered]
        duplicated = sum(n - 1 for n in delivered.values() if n > 1)
        print(f"\nkill -9 x3: {len(all_acked)} tracked acknowledged, {len(ids)} in spool, "
              f"delivered: lost {len(lost)}, duplicated {duplicated}")
        self.assertEqual(lost, [], f"{len(lost)} acknowledged messages never delivered")
        # Delivery was paused during the kills, so nothing could be sent twice.
        self.assertEqual(duplicated, 0)


def send(port, body, count):
    """Sends up to count messages; returns (acknowledged ids, refusal replies)."""
    acked, refused = [], []
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        for _ in range(count):
            try:
                reply = s.sendmail("a@remote.test", ["bob@localhost"], body)
                assert reply == {}
                acked.append(s.qid)
            except smtplib.SMTPSenderRefused as e:
                refused.append((e.smtp_code, e.smtp_error.decode()))
            except smtplib.SMTPDataError as e:
                refused.append((e.smtp_code, e.smtp_error.decode()))
                s.rset()
    return acked, refused


class QueueIdSMTP(smtplib.SMTP):
    """smtplib.SMTP that remembers the queue id of the last 250 to DATA."""

    def data(self, msg):
        code, reply = super().data(msg)
        if code == 250:
            self.qid = reply.decode().rsplit(" ", 1)[1]
        return code, reply


smtplib.SMTP = QueueIdSMTP


@unittest.skipUnless(os.geteuid() == 0, "mounting a small tmpfs needs root")
class DiskFullTest(unittest.TestCase):
    # The spool keeps spool.min_free_bytes free so that RocksDB never meets
    # a full disk; a body write that meets one is refused all the same.
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="smtpd-full-")
        self.mnt = os.path.join(self.tmp, "fs")
        os.mkdir(self.mnt)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", self.mnt], check=True)
        self.server = Smtpd(self.tmp, {"spool.path": os.path.join(self.mnt, "spool"),
                                       "spool.min_free_bytes": str(24 << 20)})

    def tearDown(self):
        self.server.kill()
        subprocess.run(["umount", self.mnt])
        shutil.rmtree(self.tmp, ignore_errors=True)

    def check_spool(self, acked, extra):
        self.assertEqual(self.server.stop(), 0)
        ids = self.server.spool_ls()
        for qid in acked:
            self.assertIn(qid, ids)
        self.assertEqual(len(ids), len(acked) + extra)  # nothing unacknowledged was kept
        code, report = self.server.spool_check()
        self.assertEqual(code, 0, report)

    def test_filling_disk_refuses_then_recovers(self):
        self.server.start()
        port = self.server.ports["mx"]
        body = b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * 1000  # about 1 MB
        acked, refused = send(port, body, 40)
        self.assertTrue(acked)
        self.assertTrue(refused, "the reserve was never reached")
        for code, text in refused:
            self.assertEqual((code, text), (452, "4.3.1 Insufficient system storage"))
        # Space returns: service resumes without a restart.
        subprocess.run(["mount", "-o", "remount,size=128m", self.mnt], check=True)
        time.sleep(0.3)  # the free-space state is refreshed at most every 250 ms when idle
        after, refused_after = send(port, b"Subject: after\r\n\r\nok\r\n", 3)
        self.assertEqual((len(after), refused_after), (3, []))
        self.check_spool(acked + after, 0)

    def test_space_taken_by_another_process(self):
        self.server.start()
        port = self.server.ports["mx"]
        ok, _ = send(port, b"Subject: before\r\n\r\nok\r\n", 5)
        st = os.statvfs(self.mnt)
        filler = os.path.join(self.mnt, "filler")
        with open(filler, "wb") as f:
            f.write(b"\0" * (st.f_bavail * st.f_frsize - 40000))
        time.sleep(0.3)
        acked, refused = send(port, b"Subject: small\r\n\r\nsmall body\r\n", 50)
        self.assertEqual(acked, [])
        self.assertEqual(set(refused), {(452, "4.3.1 Insufficient system storage")})
        os.unlink(filler)
        time.sleep(0.3)
        after, refused_after = send(port, b"Subject: after\r\n\r\nok\r\n", 3)
        self.assertEqual((len(after), refused_after), (3, []))
        self.check_spool(ok + after, 0)


if __name__ == "__main__":
    unittest.main()
