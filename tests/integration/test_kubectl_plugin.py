"""kubectl-smtpd against two live smtpd instances standing in for two pods
(and a third pod that does not answer). A kubectl test double, first on
PATH, answers `get pods` with the pod names and maps `exec POD -- smtpctl
...` to the matching local instance."""
import json
import os
import re
import shutil
import subprocess
import tempfile
import textwrap
import unittest

import yaml

from smtpd_harness import SMTPD, Smtpd

BIN = os.path.dirname(SMTPD)
PLUGIN = os.path.join(BIN, "kubectl-smtpd")

KUBECTL_DOUBLE = textwrap.dedent('''\
    #!/usr/bin/python3
    """kubectl test double: pods from $KUBECTL_DOUBLE_PODS (JSON name -> port or null)."""
    import json, os, sys
    args = sys.argv[1:]
    log = os.environ.get("KUBECTL_DOUBLE_LOG")
    if log:
        with open(log, "a") as f:
            f.write(json.dumps(args) + "\\n")
    pods = json.loads(os.environ["KUBECTL_DOUBLE_PODS"])
    while args and args[0] in ("-n", "--context"):
        args = args[2:]
    if args[:2] == ["get", "pods"]:
        assert "-l" in args, args
        print("\\n".join(pods))
        sys.exit(0)
    if args[0] == "exec":
        args = args[1:]
        if args[0] == "-i":
            args = args[1:]
        pod = args[0]
        rest = args[args.index("--") + 1:]
        if pod not in pods:
            sys.stderr.write(f'Error from server (NotFound): pods "{pod}" not found\\n')
            sys.exit(1)
        if pods[pod] is None:
            sys.stderr.write("error: unable to upgrade connection: container not found (\\"smtpd\\")\\n")
            sys.exit(1)
        assert rest[0] == "smtpctl", rest
        smtpctl = os.path.join(os.environ["SMTPCTL_DIR"], "smtpctl")
        os.execv(smtpctl, [smtpctl, "--server", f"127.0.0.1:{pods[pod]}"] + rest[1:])
    sys.stderr.write(f"kubectl double: unexpected {args}\\n")
    sys.exit(2)
    ''')


def table(text):
    return [re.split(r" {3,}", line.strip()) for line in text.strip().splitlines()]


class KubectlPluginTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="smtpd-kubectl-")
        self.pods = {}
        self.servers = []
        for name in ("smtpd-0", "smtpd-1"):
            d = os.path.join(self.tmp, name)
            os.makedirs(d)
            server = Smtpd(d, {"server.hostname": f"{name}.test"}).start()
            self.servers.append(server)
            self.pods[name] = server.ports["control"]
        bindir = os.path.join(self.tmp, "bin")
        os.makedirs(bindir)
        with open(os.path.join(bindir, "kubectl"), "w") as f:
            f.write(KUBECTL_DOUBLE)
        os.chmod(os.path.join(bindir, "kubectl"), 0o755)
        self.log = os.path.join(self.tmp, "kubectl.log")
        self.env = {**os.environ, "PATH": bindir + os.pathsep + os.environ["PATH"], "SMTPCTL_DIR": BIN,
                    "KUBECTL_DOUBLE_LOG": self.log}

    def tearDown(self):
        try:
            for s in self.servers:
                self.assertEqual(s.stop(), 0)
        finally:
            for s in self.servers:
                s.kill()
            shutil.rmtree(self.tmp, ignore_errors=True)

    def plugin(self, *args, pods=None, expect=0, input=None):
        env = {**self.env, "KUBECTL_DOUBLE_PODS": json.dumps(pods if pods is not None else self.pods)}
        out = subprocess.run([PLUGIN] + list(args), capture_output=True, text=True, env=env, timeout=120, input=input)
        self.assertEqual(out.returncode, expect, f"{args}: {out.stdout}\n{out.stderr}")
        return out

    def send(self, pod, to):
        out = subprocess.run([os.path.join(BIN, "smtpctl"), "--server", f"127.0.0.1:{self.pods[pod]}", "send",
                              "--from", "alice@localhost", "--to", to, "--text", "x", "-o", "json"],
                             capture_output=True, text=True, timeout=60, check=True)
        return json.loads(out.stdout)["queue_id"]

    def test_merged_listing_and_stats(self):
        a = self.send("smtpd-0", "bob@example.com")
        b = self.send("smtpd-1", "carol@example.org")
        c = self.send("smtpd-1", "dave@example.net")
        rows = table(self.plugin("-n", "mail", "queue", "ls").stdout)
        self.assertEqual(rows[0], ["POD", "ID", "AGE", "STATE", "SIZE", "FROM", "TO", "ATTEMPTS", "NEXT",
                                   "LAST REPLY"])
        self.assertEqual(sorted((r[0], r[1]) for r in rows[1:]),
                         sorted([("smtpd-0", a), ("smtpd-1", b), ("smtpd-1", c)]))
        calls = [json.loads(line) for line in open(self.log)]
        self.assertEqual(calls[0][:2], ["-n", "mail"])
        self.assertIn("app.kubernetes.io/name=smtpd", calls[0])
        self.assertTrue(all(call[2] == "exec" for call in calls[1:]))
        stats = table(self.plugin("stats").stdout)
        self.assertEqual(stats[0][:3], ["POD", "MESSAGES", "QUEUED"])
        self.assertEqual([r[:2] for r in stats[1:]], [["smtpd-0", "1"], ["smtpd-1", "2"], ["TOTAL", "3"]])
        merged = json.loads(self.plugin("-o", "json", "queue", "ls").stdout)
        self.assertEqual([p["pod"] for p in merged["pods"]], ["smtpd-0", "smtpd-1"])
        self.assertEqual(len(merged["pods"][1]["result"]["messages"]), 2)
        # show finds the pod that holds the message; hold acts where it lives.
        show = self.plugin("queue", "show", b).stdout
        self.assertTrue(show.startswith("Pod:      smtpd-1\n"), show)
        self.assertIn("carol@example.org", show)
        self.plugin("queue", "show", "0000000000000000", expect=1)
        held = table(self.plugin("queue", "hold", a, c).stdout)
        self.assertEqual(sorted(held[1:]), sorted([["smtpd-0", a, "ok"], ["smtpd-1", c, "ok"]]))
        self.assertIn("not found on any pod", self.plugin("queue", "release", "0000000000000000", expect=1).stdout)
        health = table(self.plugin("health").stdout)
        self.assertEqual(health[1:], [["smtpd-0", "SERVING"], ["smtpd-1", "SERVING"]])

    def test_policy_set_on_every_pod(self):
        current = yaml.safe_load(subprocess.run(
            [os.path.join(BIN, "smtpctl"), "--server", f"127.0.0.1:{self.pods['smtpd-0']}", "policy", "get"],
            capture_output=True, text=True, check=True, timeout=60).stdout)
        # Make smtpd-1 one version ahead first: each pod reports its own version.
        path = os.path.join(self.tmp, "policy.yaml")
        current["relay_domains"] = ["first.test"]
        with open(path, "w") as f:
            yaml.safe_dump(current, f)
        subprocess.run([os.path.join(BIN, "smtpctl"), "--server", f"127.0.0.1:{self.pods['smtpd-1']}", "policy",
                        "set", path], check=True, capture_output=True, timeout=60)
        before = table(self.plugin("policy", "get").stdout)
        self.assertEqual([r[:2] for r in before[1:]], [["smtpd-0", "1"], ["smtpd-1", "2"]])
        current["relay_domains"] = ["partner.test"]
        with open(path, "w") as f:
            yaml.safe_dump(current, f)
        after = table(self.plugin("policy", "set", path).stdout)
        self.assertEqual(after[0][:3], ["POD", "VERSION", "UPDATED BY"])
        self.assertEqual([r[:3] for r in after[1:]], [["smtpd-0", "2", "loopback"], ["smtpd-1", "3", "loopback"]])
        for port in self.pods.values():
            p = json.loads(subprocess.run([os.path.join(BIN, "smtpctl"), "--server", f"127.0.0.1:{port}", "policy",
                                           "get", "-o", "json"], capture_output=True, text=True, check=True,
                                          timeout=60).stdout)
            self.assertEqual(p["relay_domains"], ["partner.test"])

    def test_dead_pod_is_reported_without_hiding_the_others(self):
        a = self.send("smtpd-0", "bob@example.com")
        pods = {**self.pods, "smtpd-2": None}
        out = self.plugin("queue", "ls", pods=pods, expect=1)
        rows = table(out.stdout)
        self.assertEqual([(r[0], r[1]) for r in rows[1:]], [("smtpd-0", a)])
        self.assertIn("pod smtpd-2: error: unable to upgrade connection", out.stderr)
        stats = table(self.plugin("stats", pods=pods, expect=1).stdout)
        self.assertIn(["smtpd-2", "?", "?", "?", "?", "?", "?", "?"], stats)
        self.assertEqual(stats[-1][:2], ["TOTAL", "1"])
        health = self.plugin("health", pods=pods, expect=1).stdout
        self.assertIn("smtpd-0   SERVING", health)
        self.assertIn("smtpd-2   error: unable to upgrade connection", health)
        merged = json.loads(self.plugin("-o", "json", "stats", pods=pods, expect=1).stdout)
        self.assertEqual([p["ok"] for p in merged["pods"]], [True, True, False])

    def test_usage(self):
        self.assertIn("not supported across pods", self.plugin("queue", "watch", expect=2).stderr)
        self.plugin(expect=2)
        self.assertIn("no pods match", self.plugin("stats", pods={}, expect=1).stderr)


class KrewManifestTest(unittest.TestCase):
    def test_release_archive_and_manifest(self):
        root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
        out = tempfile.mkdtemp(prefix="krew-")
        try:
            subprocess.run([os.path.join(root, "k8s", "krew", "make-release.sh"), "1.2.3", "https://example.test/r",
                            out], check=True, capture_output=True, timeout=120, env={**os.environ, "BIN_DIR": BIN})
            manifest = yaml.safe_load(open(os.path.join(out, "smtpd.yaml")))
            self.assertEqual(manifest["kind"], "Plugin")
            self.assertEqual(manifest["metadata"]["name"], "smtpd")
            self.assertEqual(manifest["spec"]["version"], "v1.2.3")
            platform = manifest["spec"]["platforms"][0]
            archive = os.path.join(out, "kubectl-smtpd-v1.2.3-linux-amd64.tar.gz")
            self.assertEqual(platform["uri"], "https://example.test/r/kubectl-smtpd-v1.2.3-linux-amd64.tar.gz")
            import hashlib
            import tarfile
            self.assertEqual(platform["sha256"], hashlib.sha256(open(archive, "rb").read()).hexdigest())
            with tarfile.open(archive) as t:
                self.assertEqual(sorted(t.getnames()), ["SMTPCTL.md", "kubectl-smtpd", "smtpctl"])
            self.assertEqual(platform["bin"], "kubectl-smtpd")
        finally:
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    unittest.main()
