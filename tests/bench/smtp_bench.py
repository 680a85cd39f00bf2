#!/usr/bin/env python3
"""Receive throughput, smtpd against a private durable Postfix, same run.

Postfix's smtp-source sends N messages over S concurrent sessions to each
server in turn; each case starts a fresh server with an empty queue. Both
servers make every message durable before their 250 (smtpd: group commit;
Postfix: fsync of each queue file). Prints messages/s and the ratio.

  sudo /usr/bin/python3 tests/bench/smtp_bench.py            # full matrix
  sudo /usr/bin/python3 tests/bench/smtp_bench.py --quick    # smaller counts
  ... --repeat N   runs per case (default 3), medians reported
"""
import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
from smtpd_harness import Smtpd  # noqa: E402
from postfix_instance import PostfixInstance  # noqa: E402

CASES = [  # (sessions, payload bytes, messages, quick messages)
    (1, 1024, 1000, 300),
    (16, 1024, 8000, 2000),
    (128, 1024, 30000, 8000),
    (1, 65536, 500, 150),
    (16, 65536, 3000, 800),
    (128, 65536, 6000, 2000),
]
RCPT = "bob@example.com"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def source(port, sessions, size, count):
    start = time.monotonic()
    out = subprocess.run(["smtp-source", "-s", str(sessions), "-m", str(count), "-l", str(size),
                          "-f", "bench@example.org", "-t", RCPT, f"127.0.0.1:{port}"],
                         capture_output=True, text=True, timeout=900)
    elapsed = time.monotonic() - start
    if out.returncode != 0:
        raise RuntimeError("smtp-source failed: " + out.stderr[-500:])
    return elapsed


def bench_smtpd(tmp, sessions, size, count):
    d = tempfile.mkdtemp(dir=tmp)
    server = Smtpd(d, {"policy.trusted_networks": "127.0.0.0/8", "limits.max_connections_per_client": "10000",
                       "spool.max_messages": "10000000"}, log_to_file=True).start()
    try:
        elapsed = source(server.ports["mx"], sessions, size, count)
        server.stop()
        stored = len(server.spool_ls())
    finally:
        server.kill()
        shutil.rmtree(d, ignore_errors=True)
    if stored != count:
        raise RuntimeError(f"smtpd stored {stored} of {count}")
    return count / elapsed


def bench_postfix(tmp, sessions, size, count):
    d = tempfile.mkdtemp(dir=tmp)
    pf = PostfixInstance(d, free_port())
    pf.start()
    try:
        elapsed = source(pf.port, sessions, size, count)
        deadline = time.time() + 30
        while pf.queued() < count and time.time() < deadline:
            time.sleep(0.2)
        stored = pf.queued()
    finally:
        pf.stop()
        shutil.rmtree(d, ignore_errors=True)
    if stored != count:
        raise RuntimeError(f"postfix held {stored} of {count}")
    return count / elapsed


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", help="also write results to this file")
    ap.add_argument("--repeat", type=int, default=3, help="runs per case; the median is reported")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root (a private Postfix instance needs it)")
    tmp = tempfile.mkdtemp(prefix="smtp-bench-")
    os.chmod(tmp, 0o755)  # the postfix user must enter its queue below it
    results = []
    print(f"{'sessions':>8} {'size':>7} {'messages':>8} {'smtpd msg/s':>12} {'postfix msg/s':>14} {'ratio':>6}")
    try:
        for sessions, size, count, quick in CASES:
            n = quick if args.quick else count
            # Alternate the two servers so that drifts of this shared VM
            # hit both alike; report medians.
            ours_runs, theirs_runs = [], []
            for _ in range(args.repeat):
                ours_runs.append(bench_smtpd(tmp, sessions, size, n))
                theirs_runs.append(bench_postfix(tmp, sessions, size, n))
            ours, theirs = statistics.median(ours_runs), statistics.median(theirs_runs)
            results.append({"sessions": sessions, "size": size, "messages": n, "smtpd": round(ours, 1),
                            "postfix": round(theirs, 1), "ratio": round(ours / theirs, 2)})
            print(f"{sessions:>8} {size:>7} {n:>8} {ours:>12.0f} {theirs:>14.0f} {ours / theirs:>6.2f}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
