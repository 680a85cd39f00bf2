#!/usr/bin/env python3
"""SendMail throughput against the SMTP path, same run (issue 4).

Three cases alternate, each on a fresh server with an empty queue:
  - smtpd gRPC SendMail: 1 KiB structured messages, 64 calls in flight
    (build/bin/sendmail_load, a C++ gRPC callback client);
  - smtpd SMTP: Postfix's smtp-source, 128 sessions, 1 KiB;
  - Postfix SMTP: the same smtp-source load on a private durable Postfix.
Every message is durable before its OK/250 and counted in the queue after.
Prints medians and the ratios SendMail/SMTP and SendMail/Postfix.

  sudo /usr/bin/python3 tests/bench/sendmail_bench.py [--messages N] [--repeat N]
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
sys.path.insert(0, HERE)
from smtpd_harness import Smtpd  # noqa: E402
from smtp_bench import bench_postfix, bench_smtpd  # noqa: E402

LOAD = os.path.join(HERE, "..", "..", "build", "bin", "sendmail_load")


def bench_sendmail(tmp, count, concurrency=64, size=1024):
    d = tempfile.mkdtemp(dir=tmp)
    server = Smtpd(d, {"spool.max_messages": "10000000"}, log_to_file=True).start()
    try:
        out = subprocess.run([LOAD, f"--target=127.0.0.1:{server.ports['control']}", f"--messages={count}",
                              f"--concurrency={concurrency}", f"--size={size}"],
                             capture_output=True, text=True, timeout=900)
        if out.returncode != 0:
            raise RuntimeError("sendmail_load failed: " + out.stderr[-500:])
        result = json.loads(out.stdout)
        server.stop()
        stored = len(server.spool_ls())
    finally:
        server.kill()
        shutil.rmtree(d, ignore_errors=True)
    if stored != count:
        raise RuntimeError(f"smtpd stored {stored} of {count}")
    return result["per_second"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=30000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-postfix", action="store_true", help="skip Postfix (no root needed)")
    args = ap.parse_args()
    if not args.no_postfix and os.geteuid() != 0:
        sys.exit("run as root (a private Postfix instance needs it), or pass --no-postfix")
    if not os.path.exists(LOAD):
        sys.exit("build first: scripts/dev build (makes build/bin/sendmail_load)")
    tmp = tempfile.mkdtemp(prefix="sendmail-bench-")
    os.chmod(tmp, 0o755)
    runs = {"sendmail": [], "smtp": [], "postfix": []}
    try:
        for _ in range(args.repeat):
            runs["sendmail"].append(bench_sendmail(tmp, args.messages))
            runs["smtp"].append(bench_smtpd(tmp, 128, 1024, args.messages))
            if not args.no_postfix:
                runs["postfix"].append(bench_postfix(tmp, 128, 1024, args.messages))
            time.sleep(1)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in runs.items() if v}
    print(f"messages per case: {args.messages}, runs: {args.repeat} (medians)")
    print(f"smtpd gRPC SendMail, 64 calls:  {med['sendmail']:8.0f} msg/s")
    print(f"smtpd SMTP, 128 sessions:       {med['smtp']:8.0f} msg/s   SendMail/SMTP = {med['sendmail'] / med['smtp']:.2f}")
    if "postfix" in med:
        print(f"Postfix SMTP, 128 sessions:     {med['postfix']:8.0f} msg/s   SendMail/Postfix = "
              f"{med['sendmail'] / med['postfix']:.2f}")
    print(json.dumps({k: [round(x, 1) for x in v] for k, v in runs.items()}))


if __name__ == "__main__":
    main()
