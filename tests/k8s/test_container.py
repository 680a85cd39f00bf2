"""The container image cannot be built here (no container engine), so
check what can be: every shared library the binaries need comes from a
package that k8s/Containerfile's runtime stage installs, the binaries it
copies are the ones the build makes, and it runs as a non-root user."""
import functools
import os
import re
import subprocess
import unittest

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
BIN = os.path.dirname(os.environ.get("SMTPD_TEST_BIN", os.path.join(ROOT, "build", "bin", "smtpd")))
BASE = {"libc6", "libgcc-s1"}  # in every Debian image
SANITIZER_RUNTIMES = {"libasan8", "libubsan1"}


def runtime_stage():
    text = open(os.path.join(ROOT, "k8s", "Containerfile")).read()
    return text[text.index("AS runtime"):]


def runtime_packages():
    stage = runtime_stage()
    install = stage[stage.index("apt-get install"):stage.index("rm -rf /var/lib/apt/lists")]
    return set(re.findall(r"\b(lib[a-z0-9.+-]+|zlib1g|ca-certificates)\b", install))


@functools.lru_cache(maxsize=None)
def owner(lib):
    for path in (lib, os.path.realpath(lib), lib.replace("/usr/lib/", "/lib/"), lib.replace("/lib/", "/usr/lib/", 1)):
        out = subprocess.run(["dpkg", "-S", path], capture_output=True, text=True)
        if out.returncode == 0:
            return out.stdout.split(":")[0]
    return None


class ContainerTest(unittest.TestCase):
    def test_runtime_stage_has_every_library(self):
        have = runtime_packages()
        self.assertIn("libgrpc++1.51", have)
        missing = {}
        for binary in ("smtpd", "smtpctl", "kubectl-smtpd"):
            out = subprocess.run(["ldd", os.path.join(BIN, binary)], capture_output=True, text=True, check=True)
            for lib in re.findall(r"=> (/\S+)", out.stdout):
                pkg = owner(lib)
                self.assertIsNotNone(pkg, f"{binary}: no Debian package owns {lib}")
                # A sanitizer build (build-asan) also loads the sanitizer
                # runtimes; the image is built without them.
                if pkg not in have and pkg not in BASE and pkg not in SANITIZER_RUNTIMES:
                    missing.setdefault(pkg, set()).add(f"{binary}: {lib}")
        self.assertEqual(missing, {}, "packages the runtime stage must install")

    def test_binaries_and_user(self):
        stage = runtime_stage()
        for binary in ("smtpd", "smtpctl", "kubectl-smtpd"):
            self.assertIn(f"/src/build/bin/{binary}", stage)
        self.assertIn("USER 10001:10001", stage)
        self.assertNotIn("sanitize", open(os.path.join(ROOT, "k8s", "Containerfile")).read().lower())
        # The ports the chart maps are the ones the image exposes.
        self.assertIn("EXPOSE 2525 2587 2465 50051 50052 9090", stage)


if __name__ == "__main__":
    unittest.main()
