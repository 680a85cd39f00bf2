"""The Helm chart, offline: helm lint --strict and helm template with the
default values and a production-like values file, every rendered object
validated against the Kubernetes API schemas (kubernetes-models), the
rendered smtpd.yaml accepted by `smtpd --check-config`, the values schema
refusing bad values, and assertions on what matters: the PVC template,
probes on the gRPC health port, the security context, the Service port
mapping, the PDB, the NetworkPolicy."""
import json
import os
import subprocess
import tempfile
import unittest

import yaml

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
CHART = os.path.join(ROOT, "k8s", "helm", "smtpd")
PROD = os.path.join(CHART, "ci", "production-values.yaml")
TOOLS = os.environ.get("SMTPD_K8S_TOOLS", os.path.join(ROOT, "build", "k8s-tools"))
HELM = os.path.join(TOOLS, "helm")
SMTPD = os.environ.get("SMTPD_TEST_BIN", os.path.join(ROOT, "build", "bin", "smtpd"))
HOME = tempfile.mkdtemp(prefix="helm-home-")
ENV = {**os.environ, "HELM_CACHE_HOME": f"{HOME}/cache", "HELM_CONFIG_HOME": f"{HOME}/config",
       "HELM_DATA_HOME": f"{HOME}/data"}


def tearDownModule():
    subprocess.run(["rm", "-rf", HOME], check=False)


def helm(*args, expect=0):
    out = subprocess.run([HELM] + list(args), capture_output=True, text=True, env=ENV, timeout=120)
    if out.returncode != expect:
        raise AssertionError(f"helm {args}: exit {out.returncode}\n{out.stdout}\n{out.stderr}")
    return out


def render(*values_args):
    docs = [d for d in yaml.safe_load_all(helm("template", "mail", CHART, "--namespace", "mail",
                                               *values_args).stdout) if d]
    return docs


def find(docs, kind, suffix=""):
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(suffix)]
    assert matches, f"no {kind} *{suffix}"
    return matches[0]


class ChartTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.default = render()
        cls.prod = render("-f", PROD)

    def test_lint(self):
        helm("lint", "--strict", CHART)
        helm("lint", "--strict", CHART, "-f", PROD)

    def test_every_object_is_valid_for_the_api(self):
        for docs in (self.default, self.prod):
            out = subprocess.run(["node", os.path.join(ROOT, "tests", "k8s", "validate.mjs")],
                                 input=json.dumps(docs), capture_output=True, text=True, timeout=120,
                                 env={**os.environ, "K8S_TOOLS": TOOLS})
            self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
        kinds = sorted(d["kind"] for d in self.prod)
        self.assertEqual(kinds, ["Certificate", "ConfigMap", "ConfigMap", "NetworkPolicy", "PodDisruptionBudget",
                                 "PrometheusRule", "Service", "Service", "Service", "ServiceAccount", "ServiceMonitor",
                                 "StatefulSet"])

    def test_rendered_config_is_accepted_by_smtpd(self):
        for docs in (self.default, self.prod):
            text = find(docs, "ConfigMap")["data"]["smtpd.yaml"]
            with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
                f.write(text)
                f.flush()
                # The files the pod mounts do not exist here: check with them emptied.
                out = subprocess.run([SMTPD, "--config", f.name, "--set", "tls.cert_file=", "--set", "tls.key_file=",
                                      "--set", "control.tls_cert_file=/dev/null", "--set", "control.tls_key_file=/dev/null",
                                      "--print-config"], capture_output=True, text=True, timeout=60)
                self.assertEqual(out.returncode, 0, out.stderr)
        cfg = yaml.safe_load(find(self.prod, "ConfigMap")["data"]["smtpd.yaml"])
        self.assertEqual(cfg["queue"]["lifetime"], "3d")  # values.config merged
        self.assertEqual(cfg["control"]["address"], "0.0.0.0:50051")
        self.assertEqual(cfg["control"]["tokens_file"], "/etc/smtpd/tokens/tokens")
        self.assertEqual(cfg["control"]["local_address"], "127.0.0.1:50053")
        env = {e["name"]: e.get("value") for e in
               find(self.prod, "StatefulSet")["spec"]["template"]["spec"]["containers"][0]["env"]}
        self.assertEqual(env["SMTPCTL_SERVER"], "127.0.0.1:50053")  # smtpctl in the pod: no TLS, no token
        self.assertEqual(yaml.safe_load(find(self.default, "ConfigMap")["data"]["smtpd.yaml"])["control"]["address"],
                         "127.0.0.1:50051")  # not exposed: loopback, plaintext allowed

    def test_statefulset(self):
        sts = find(self.prod, "StatefulSet")
        spec = sts["spec"]
        self.assertEqual(spec["replicas"], 3)
        self.assertEqual(spec["podManagementPolicy"], "Parallel")
        self.assertEqual(spec["serviceName"], "mail-smtpd-headless")
        pvc = spec["volumeClaimTemplates"][0]
        self.assertEqual(pvc["metadata"]["name"], "spool")
        self.assertEqual(pvc["spec"]["storageClassName"], "fast-ssd")
        self.assertEqual(pvc["spec"]["resources"]["requests"]["storage"], "50Gi")
        self.assertEqual(pvc["spec"]["accessModes"], ["ReadWriteOnce"])
        pod = spec["template"]["spec"]
        self.assertFalse(pod["automountServiceAccountToken"])
        self.assertEqual(pod["terminationGracePeriodSeconds"], 90)
        self.assertTrue(pod["securityContext"]["runAsNonRoot"])
        c = pod["containers"][0]
        sc = c["securityContext"]
        self.assertTrue(sc["readOnlyRootFilesystem"])
        self.assertFalse(sc["allowPrivilegeEscalation"])
        self.assertEqual(sc["capabilities"]["drop"], ["ALL"])
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        self.assertTrue(all(port >= 1024 for port in ports.values()), ports)
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            self.assertEqual(c[probe]["grpc"]["port"], ports["grpc-health"], probe)
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        self.assertEqual(mounts["/var/spool/smtpd"], "spool")
        self.assertEqual(mounts["/etc/smtpd/tls"], "tls")
        vols = {v["name"]: v for v in pod["volumes"]}
        self.assertEqual(vols["tls"]["secret"]["secretName"], "mail-smtpd-tls")
        self.assertEqual(vols["tokens"]["secret"]["secretName"], "smtpd-tokens")
        self.assertEqual(find(self.prod, "Certificate")["spec"]["secretName"], "mail-smtpd-tls")
        self.assertEqual(find(self.prod, "Certificate")["spec"]["dnsNames"], ["mx.example.com", "smtp.example.com"])
        # The drain must fit the grace period.
        self.assertIn("drain_timeout: 75s", find(self.prod, "ConfigMap")["data"]["smtpd.yaml"])
        self.assertNotIn("/etc/smtpd/tls", {m["mountPath"] for m in find(self.default, "StatefulSet")
                                             ["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]})

    def test_services_pdb_networkpolicy(self):
        svc = find(self.prod, "Service", "smtpd")
        self.assertEqual(svc["spec"]["type"], "LoadBalancer")
        self.assertEqual(svc["spec"]["externalTrafficPolicy"], "Local")
        mapping = {p["port"]: p["targetPort"] for p in svc["spec"]["ports"]}
        self.assertEqual(mapping, {25: "smtp", 587: "submission", 465: "smtps"})
        sts_ports = {p["name"]: p["containerPort"] for p in
                     find(self.prod, "StatefulSet")["spec"]["template"]["spec"]["containers"][0]["ports"]}
        self.assertEqual([sts_ports[t] for t in mapping.values()], [2525, 2587, 2465])
        self.assertEqual(find(self.prod, "Service", "headless")["spec"]["clusterIP"], "None")
        grpc_svc = find(self.prod, "Service", "grpc")
        self.assertEqual(grpc_svc["spec"]["type"], "ClusterIP")
        self.assertEqual(grpc_svc["spec"]["ports"][0]["port"], 50051)
        self.assertFalse([d for d in self.default if d["metadata"]["name"].endswith("-grpc")])  # not exposed
        pdb = find(self.prod, "PodDisruptionBudget")
        self.assertEqual(pdb["spec"]["maxUnavailable"], 1)
        self.assertEqual(pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"], "smtpd")
        np = find(self.prod, "NetworkPolicy")
        ingress = {p["port"] for p in np["spec"]["ingress"][0]["ports"]}
        self.assertEqual(ingress, {"smtp", "submission", "smtps", "grpc-health", "metrics", "grpc"})
        egress = {p["port"] for rule in np["spec"]["egress"] for p in rule["ports"]}
        self.assertEqual(egress, {53, 25, 587, 465, 24})

    def test_dashboard_and_alerts_use_metrics_smtpd_exports(self):
        import re
        readme = open(os.path.join(ROOT, "README.md")).read()
        exported = set(re.findall(r"^\| `(smtpd_[a-z_]+)` \|", readme, re.M))
        self.assertIn("smtpd_queue_messages", exported)
        dashboard_file = os.path.join(ROOT, "k8s", "dashboards", "smtpd.json")
        dashboard = json.load(open(dashboard_file))
        cm = find(self.prod, "ConfigMap", "dashboard")
        self.assertEqual(cm["metadata"]["labels"]["grafana_dashboard"], "1")
        self.assertEqual(json.loads(cm["data"]["smtpd.json"]), dashboard)
        exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
        rule = find(self.prod, "PrometheusRule")
        exprs += [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]
        used = set()
        for e in exprs:
            for name in re.findall(r"\b(smtpd_[a-z_]+)", e):
                used.add(re.sub(r"_(bucket|sum|count)$", "", name))
        self.assertTrue(used)
        self.assertEqual(used - exported, set(), "metrics the dashboard or the alerts use but smtpd does not export")
        titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
        for topic in ("mail in", "mail out", "rejections", "queue by state", "oldest", "latency", "tls"):
            self.assertIn(topic, titles)

    def test_bad_values_are_refused(self):
        for args in (["--set", "replicaCount=0"], ["--set", "smtp.containerPorts.smtp=25"],
                     ["--set", "routes.x\\.test=carrier-pigeon"], ["--set", "persistence.size=lots"],
                     ["--set", "unknownKey=1"], ["--set", "grpc.expose=true"],
                     ["--set", "tls.certManager.enabled=true"]):
            out = helm("template", "mail", CHART, *args, expect=1)
            self.assertTrue(out.stderr.strip(), args)


if __name__ == "__main__":
    unittest.main()
