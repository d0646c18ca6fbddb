"""client/python/examples/paper_analysis.py runs end to end against the real server (the demo model)
and writes what it says it writes.

Usage: test_example.py FACTLENS_SERVER PYTHON_PACKAGE_DIR
"""
import os
import re
import subprocess
import sys
import tempfile
import unittest

from support import Server, args

SERVER, PACKAGE_DIR = args()
EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "paper_analysis.py")


class ExampleTest(unittest.TestCase):
    def test_the_paper_analysis_runs_and_writes_its_figures_and_report(self):
        out = self.enterContext(tempfile.TemporaryDirectory(prefix="factlens-example-"))  # removed however it ends
        server = Server(SERVER)
        try:
            run = subprocess.run([sys.executable, EXAMPLE, "--server", server.address, "--out", out, "--top", "5"],
                                 capture_output=True, text=True, timeout=240,
                                 env={**os.environ, "PYTHONPATH": PACKAGE_DIR, "MPLBACKEND": "Agg"})
        finally:
            self.assertEqual(server.stop(), 0)
        self.assertEqual(run.returncode, 0, run.stderr[-3000:])
        # The demo model answers " Paris" with near certainty (an independent fact about it).
        prob, rank = re.search(r"p\(' Paris'\) = ([0-9.]+), rank (\d+)", run.stdout).groups()
        self.assertGreater(float(prob), 0.99)
        self.assertEqual(rank, "1")
        self.assertEqual(len(re.findall(r"^  top 5 FFN neurons .* -> .*", run.stdout, re.M)), 1, run.stdout)
        import matplotlib.image as mpimg

        for name in ("layer_increase.png", "heads.png", "ffn_neurons.png", "trace_top_neuron.png"):
            image = mpimg.imread(os.path.join(out, name))
            self.assertGreater(min(image.shape[:2]), 200, name)
            self.assertGreater(image[..., :3].std(), 0.05, f"{name} is blank")
        with open(os.path.join(out, "report.html"), encoding="utf-8") as f:
            html = f.read()
        self.assertIn("Paris", html)
        self.assertNotRegex(html, r"(src|href)=\"https?://", "the report must not load anything")


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0]], verbosity=2)
