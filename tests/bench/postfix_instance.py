"""A private, durable Postfix instance on a loopback port, for side-by-side
benchmarks: its own config and queue directories, no chroot, logging to a
file, mail from 127.0.0.0/8 accepted and put on hold (so that delivery
does not compete for the CPU; the queue file is still fsynced before 250).
Needs root and Debian's postfix package."""
import os
import re
import shutil
import subprocess
import time


class PostfixInstance:
    def __init__(self, workdir, port, process_limit=400, relay_port=None):
        # relay_port: relay everything to 127.0.0.1:relay_port instead of
        # holding it (for relay benchmarks).
        self.relay_port = relay_port
        self.dir = os.path.abspath(workdir)
        self.conf = os.path.join(self.dir, "conf")
        self.queue = os.path.join(self.dir, "queue")
        self.data = os.path.join(self.dir, "data")
        self.port = port
        self.process_limit = process_limit

    def write(self):
        for d in (self.conf, self.queue, self.data):
            os.makedirs(d, exist_ok=True)
        os.chmod(self.dir, 0o755)
        shutil.chown(self.data, "postfix", "postfix")
        main = f"""
compatibility_level = 3.6
config_directory = {self.conf}
queue_directory = {self.queue}
data_directory = {self.data}
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.bench.test
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_recipient_restrictions = permit_mynetworks, reject
{"relayhost = [127.0.0.1]:%d" % self.relay_port if self.relay_port else "smtpd_end_of_data_restrictions = check_client_access static:HOLD"}
default_process_limit = {self.process_limit}
smtpd_client_connection_count_limit = 0
maillog_file = {self.dir}/maillog
maillog_file_prefixes = {self.dir}
message_size_limit = 26214400
"""
        with open(os.path.join(self.conf, "main.cf"), "w") as f:
            f.write(main)
        lines = []
        with open("/etc/postfix/master.cf") as f:
            for line in f:
                if line.startswith("#") or not line.strip():
                    continue
                if line.startswith("smtp ") and " inet " in line:
                    line = f"127.0.0.1:{self.port} inet n - n - - smtpd\n"
                elif not line[0].isspace():
                    fields = line.split()
                    if len(fields) >= 8:
                        fields[4] = "n"  # chroot off: the queue is not under /var/spool/postfix
                        line = " ".join(fields) + "\n"
                lines.append(line)
        with open(os.path.join(self.conf, "master.cf"), "w") as f:
            f.writelines(lines)

    def postfix(self, *args):
        # Postfix reports errors on stderr only when it is a terminal; run
        # it under script(1) so that failures are explained.
        cmd = " ".join(["postfix", "-c", self.conf, *args])
        return subprocess.run(["script", "-qec", cmd, "/dev/null"], capture_output=True, text=True, timeout=120)

    def start(self):
        self.write()
        self.postfix("set-permissions")
        out = self.postfix("start")
        if out.returncode != 0:
            raise RuntimeError("postfix start failed: " + out.stdout + out.stderr)
        import socket
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("postfix did not listen")

    def in_queue(self):
        """Messages anywhere in the queue (not yet delivered)."""
        total = 0
        for sub in ("maildrop", "incoming", "active", "deferred", "hold"):
            for _, _, files in os.walk(os.path.join(self.queue, sub)):
                total += len(files)
        return total

    def queued(self):
        """Messages in the hold queue."""
        total = 0
        hold = os.path.join(self.queue, "hold")
        for _, _, files in os.walk(hold):
            total += len(files)
        return total

    def stop(self):
        self.postfix("stop")
        deadline = time.time() + 20
        pid_file = os.path.join(self.queue, "pid", "master.pid")
        while time.time() < deadline and os.path.exists(pid_file):
            try:
                pid = int(open(pid_file).read().strip())
                os.kill(pid, 0)
            except (ValueError, ProcessLookupError, FileNotFoundError):
                break
            time.sleep(0.1)
