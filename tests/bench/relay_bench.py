#!/usr/bin/env python3
"""End-to-end relay throughput: smtp-source -> server -> smtp-sink, for
smtpd and for a private Postfix relaying to the same kind of sink, in the
same run. A run is timed from the first message sent until the server's
queue has fully drained to the sink.

  sudo /usr/bin/python3 tests/bench/relay_bench.py [--messages N] [--sessions S] [--repeat R]
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
from smtpd_harness import SMTPD, Smtpd  # noqa: E402
from postfix_instance import PostfixInstance  # noqa: E402
from smtp_bench import free_port  # noqa: E402


class SmtpSink:
    def __init__(self):
        self.port = free_port()
        self.proc = subprocess.Popen(["smtp-sink", "-u", "postfix", f"127.0.0.1:{self.port}", "1000"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.3)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


def send(port, sessions, count):
    out = subprocess.run(["smtp-source", "-s", str(sessions), "-m", str(count), "-l", "1024",
                          "-f", "bench@example.org", "-t", "bob@example.com", f"127.0.0.1:{port}"],
                         capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise RuntimeError("smtp-source failed: " + out.stderr[-300:])


def wait_drained(count_fn, timeout=900):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if count_fn() == 0:
            return
        time.sleep(0.1)
    raise RuntimeError("queue did not drain")


def bench_smtpd(tmp, sessions, count):
    sink = SmtpSink()
    d = tempfile.mkdtemp(dir=tmp)
    server = Smtpd(d, {"policy.trusted_networks": "127.0.0.0/8", "limits.max_connections_per_client": "10000",
                       "delivery.paused": "false", "routes.*": f"relay:127.0.0.1:{sink.port}",
                       "spool.max_messages": "10000000"}, log_to_file=True).start()
    try:
        start = time.monotonic()
        send(server.ports["mx"], sessions, count)
        log = os.path.join(d, "smtpd.log")

        def left():
            with open(log) as f:
                delivered = sum(1 for line in f if '"event":"delivery"' in line and '"status":"delivered"' in line)
            return count - delivered

        wait_drained(left)
        elapsed = time.monotonic() - start
        server.stop()
        if server.spool_ls():
            raise RuntimeError("smtpd spool not empty after delivery")
    finally:
        server.kill()
        sink.stop()
        shutil.rmtree(d, ignore_errors=True)
    return count / elapsed


def bench_postfix(tmp, sessions, count):
    sink = SmtpSink()
    d = tempfile.mkdtemp(dir=tmp)
    pf = PostfixInstance(d, free_port(), relay_port=sink.port)
    pf.start()
    try:
        start = time.monotonic()
        send(pf.port, sessions, count)
        time.sleep(0.5)  # let cleanup hand the last ones to the queue
        wait_drained(pf.in_queue)
        elapsed = time.monotonic() - start
    finally:
        pf.stop()
        sink.stop()
        shutil.rmtree(d, ignore_errors=True)
    return count / elapsed


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=10000)
    ap.add_argument("--sessions", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root (a private Postfix instance needs it)")
    tmp = tempfile.mkdtemp(prefix="relay-bench-")
    os.chmod(tmp, 0o755)
    ours, theirs = [], []
    try:
        for _ in range(args.repeat):
            ours.append(bench_smtpd(tmp, args.sessions, args.messages))
            theirs.append(bench_postfix(tmp, args.sessions, args.messages))
            print(f"run: smtpd {ours[-1]:.0f} msg/s, postfix {theirs[-1]:.0f} msg/s", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    o, t = statistics.median(ours), statistics.median(theirs)
    print(f"relay {args.sessions} sessions, {args.messages} x 1 KiB: smtpd {o:.0f} msg/s, postfix {t:.0f} msg/s, "
          f"ratio {o / t:.2f} (medians of {args.repeat})")


if __name__ == "__main__":
    main()
