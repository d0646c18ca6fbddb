"""FactReport.to_html rendered by headless Chromium: the page is self-contained (no network
references), shows the target and the top neurons, and its embedded figures are drawn.

Usage: test_report_html.py FACTLENS_SERVER PYTHON_PACKAGE_DIR
"""
import os
import re
import subprocess
import sys
import tempfile
import unittest

import numpy as np
from matplotlib.image import imread
from support import PARIS, PROMPT, Server, args

SERVER, _ = args()

from factlens import Client, component_name  # noqa: E402
from factlens.plots import ATTENTION_COLOR, FFN_COLOR  # noqa: E402

CHROMIUM = "/usr/bin/chromium"


def chromium(*argv):
    """Runs headless Chromium with a private profile; returns its stdout."""
    profile = tempfile.mkdtemp(prefix="factlens-chromium-")
    out = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                          "--no-first-run", f"--user-data-dir={profile}", *argv],
                         capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"chromium failed ({out.returncode}):\n{out.stderr}")
    return out.stdout


def rgb(color):
    return tuple(int(color[i:i + 2], 16) for i in (1, 3, 5))


class HtmlReportTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        server = Server(SERVER)
        try:
            with Client(server.address) as c:
                cls.report = c.locate_fact(PROMPT, " Paris", options={"top_ffn_neurons": 20, "top_attention_neurons": 20})
                cls.top_ffn = component_name(c.rank(PROMPT, PARIS, "FFN_NEURON", top_k=1).components[0].component)
                cls.top_attention = component_name(c.rank(PROMPT, PARIS, "ATTENTION_NEURON", top_k=1).components[0].component)
        finally:
            assert server.stop() == 0, server.logs()
        cls.dir = tempfile.mkdtemp(prefix="factlens-html-")
        cls.path = os.path.join(cls.dir, "report.html")
        cls.page = cls.report.to_html(cls.path)

    def test_written_page_is_the_returned_page(self):
        with open(self.path, encoding="utf-8") as f:
            self.assertEqual(f.read(), self.page)

    def test_self_contained(self):
        self.assertNotIn("://", self.page)  # no URL of any scheme (base64 has no ':')
        self.assertEqual(re.findall(r"""(?:src|href)\s*=\s*["'](?!data:)""", self.page), [])
        self.assertNotRegex(self.page, r"<(?:script|link|iframe)\b")
        self.assertGreaterEqual(self.page.count('src="data:image/png;base64,'), 2)

    def test_rendered_text_shows_the_target_and_top_neurons(self):
        dom = chromium("--dump-dom", "file://" + self.path)
        text = re.sub(r"<[^>]+>", " ", dom)
        self.assertIn("Paris", text)
        self.assertIn(f"id {PARIS}", text)
        self.assertIn(self.top_ffn, text)
        self.assertIn(self.top_attention, text)
        self.assertIn("The capital of France is", text)

    def test_screenshot_shows_the_figures(self):
        shot = os.path.join(self.dir, "shot.png")
        chromium(f"--screenshot={shot}", "--window-size=1200,2000", "file://" + self.path)
        pixels = np.round(imread(shot)[..., :3] * 255).astype(int).reshape(-1, 3)
        colors = {tuple(p) for p in pixels[::7]}
        self.assertGreater(len(colors), 100)
        self.assertGreater((pixels.sum(axis=1) < 3 * 250).mean(), 0.05)  # not a blank page
        for color in (ATTENTION_COLOR, FFN_COLOR):  # the bar chart's colours: its PNG was decoded and drawn
            self.assertGreater((np.abs(pixels - rgb(color)).sum(axis=1) < 12).sum(), 500, color)


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0]], verbosity=2)
