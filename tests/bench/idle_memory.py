#!/usr/bin/env python3
"""Resident memory per idle plaintext connection after EHLO.

Opens N connections to a fresh smtpd, reads each greeting, sends EHLO and
reads the reply, then compares smtpd's resident memory with N open against
the same process before (warmed up with a first batch that was closed).

  /usr/bin/python3 tests/bench/idle_memory.py [--connections 10000]
"""
import argparse
import os
import resource
import selectors
import shutil
import socket
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
from smtpd_harness import Smtpd  # noqa: E402


def rss_kib(pid):
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Rss:"):
                return int(line.split()[1])
    raise RuntimeError("no Rss")


def open_idle(port, n, deadline):
    """Opens n sessions and walks each through greeting and EHLO."""
    sel = selectors.DefaultSelector()
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.setblocking(False)
        socks.append(s)
        sel.register(s, selectors.EVENT_READ, {"stage": 0, "buf": b""})
    done = 0
    while done < n:
        if time.time() > deadline:
            raise RuntimeError(f"only {done} of {n} sessions reached EHLO in time")
        for key, _ in sel.select(timeout=1):
            st = key.data
            chunk = key.fileobj.recv(4096)
            if not chunk:
                raise RuntimeError("server closed a connection: " + repr(st["buf"]))
            st["buf"] += chunk
            if st["stage"] == 0 and st["buf"].endswith(b"\r\n"):
                st["stage"], st["buf"] = 1, b""
                key.fileobj.sendall(b"EHLO idle.test\r\n")
            elif st["stage"] == 1 and b"\r\n250 " in b"\r\n" + st["buf"]:
                st["stage"] = 2
                sel.unregister(key.fileobj)
                done += 1
    sel.close()
    return socks


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--connections", type=int, default=10000)
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < args.connections + 100:
        sys.exit(f"open-file limit {hard} is too low for {args.connections} connections")
    tmp = tempfile.mkdtemp(prefix="smtpd-idle-")
    server = Smtpd(tmp, {"limits.max_connections": str(args.connections + 100),
                         "limits.max_connections_per_client": str(args.connections + 100)},
                   log_to_file=True).start()
    try:
        port, pid = server.ports["mx"], server.proc.pid
        warm = open_idle(port, 500, time.time() + 60)  # warm allocator and thread caches
        for s in warm:
            s.close()
        time.sleep(1)
        before = rss_kib(pid)
        socks = open_idle(port, args.connections, time.time() + 300)
        time.sleep(1)
        after = rss_kib(pid)
        per = (after - before) * 1024 / args.connections
        print(f"connections: {args.connections}")
        print(f"smtpd RSS before: {before} KiB, with all open: {after} KiB")
        print(f"resident memory per idle connection after EHLO: {per:.0f} bytes ({per / 1024:.2f} KiB)")
        for s in socks:
            s.close()
    finally:
        server.stop()
        server.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
