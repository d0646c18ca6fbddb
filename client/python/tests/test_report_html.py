"""FactReport.to_html rendered by headless Chromium: the page is self-contained (no network
references), explains itself (a takeaway naming the top layers and neuron, the target marked in every
token list, a glossary, the provenance, truthful neuron-table labels, the logit-lens section exactly
when the report has steps), and its embedded figures are drawn.

Temporary files (the page, screenshots, Chromium's profile and temporary directory) are removed however
the tests end. With $FACTLENS_TEST_SCREENSHOTS set to a directory, the screenshots are copied there to
be looked at.

Usage: test_report_html.py FACTLENS_SERVER PYTHON_PACKAGE_DIR
"""
import html
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

import numpy as np
from matplotlib.image import imread
from support import PARIS, PROMPT, Server, args

SERVER, _ = args()

from factlens import Client, component_name  # noqa: E402
from factlens.plots import ATTENTION_COLOR, FFN_COLOR, RANK1_COLOR  # noqa: E402
from factlens.results import CLIENT_VERSION, FactReport  # noqa: E402
from factlens.v1 import factlens_pb2 as pb  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
SUBVALUE_LABEL = "tokens the subvalue m·v promotes"


def chromium(*argv):
    """Runs headless Chromium with a private profile and temporary directory, both removed afterwards;
    returns its stdout."""
    with tempfile.TemporaryDirectory(prefix="factlens-chromium-") as scratch:
        profile, tmp = os.path.join(scratch, "profile"), os.path.join(scratch, "tmp")
        os.mkdir(tmp)
        out = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                              "--no-first-run", "--hide-scrollbars", f"--user-data-dir={profile}", *argv],
                             capture_output=True, text=True, timeout=120, env={**os.environ, "TMPDIR": tmp})
    if out.returncode != 0:
        raise RuntimeError(f"chromium failed ({out.returncode}):\n{out.stderr}")
    return out.stdout


def screenshot(page_path, shot, height):
    """A screenshot of the page, 1200 px wide; its pixels as [n, 3] ints. Kept in $FACTLENS_TEST_SCREENSHOTS."""
    chromium(f"--screenshot={shot}", f"--window-size=1200,{height}", "file://" + page_path)
    keep = os.environ.get("FACTLENS_TEST_SCREENSHOTS")
    if keep:
        os.makedirs(keep, exist_ok=True)
        shutil.copy(shot, keep)
    return np.round(imread(shot)[..., :3] * 255).astype(int).reshape(-1, 3)


def pixels_of(pixels, color):
    rgb = np.array([int(color[i:i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(pixels - rgb).sum(axis=1) < 12).sum())


def text_of(fragment):
    return html.unescape(re.sub(r"<[^>]+>", "", fragment))


def cells(table):
    """{first cell: second cell} of each row of an HTML table, as text."""
    return {text_of(k): text_of(v) for k, v in re.findall(r"<tr><td>(.*?)</td><td>(.*?)</td></tr>", table, re.S)}


def section(dom, anchor):
    """The HTML of <section id=anchor>, or None."""
    m = re.search(rf'<section id="{anchor}">(.*?)</section>', dom, re.S)
    return m[1] if m else None


def with_lens(report):
    """A copy of ``report`` carrying hand-made logit-lens steps: the target rank 1 from attn1 on."""
    proto = pb.FactReport()
    proto.CopyFrom(report.proto)
    del proto.cumulative[:]
    K = pb.Component
    steps = [K(kind=K.EMBEDDING)] + [K(kind=kind, layer=layer) for layer in range(report.layers)
                                     for kind in (K.ATTENTION_LAYER, K.FFN_LAYER)]
    for i, after in enumerate(steps):
        rank = 1 if i >= 3 else 50 - 10 * i
        log_prob = -0.05 if i >= 3 else -8.0 + 2 * i
        top = proto.target if rank == 1 else pb.TokenScore(id=1, token=" the", score=0.2)
        proto.cumulative.add(after=after, target=pb.TargetOutcome(log_prob=log_prob, prob=math.exp(log_prob), rank=rank),
                             top=pb.TokenScore(id=top.id, token=top.token, score=math.exp(log_prob) if rank == 1 else 0.2))
    return FactReport(proto, report.model, server="127.0.0.1:1", created=report.created)


class HtmlReportTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="factlens-html-")
        cls.addClassCleanup(shutil.rmtree, cls.dir, ignore_errors=True)
        server = Server(SERVER)
        try:
            with Client(server.address) as c:
                cls.report = c.locate_fact(PROMPT, " Paris", options={"top_ffn_neurons": 20, "top_attention_neurons": 20})
                cls.top_ffn = component_name(c.rank(PROMPT, PARIS, "FFN_NEURON", top_k=1).components[0].component)
                cls.top_attention = component_name(c.rank(PROMPT, PARIS, "ATTENTION_NEURON", top_k=1).components[0].component)
                cls.address = server.address
        finally:
            assert server.stop() == 0, server.logs()
        cls.path = os.path.join(cls.dir, "report.html")
        cls.page = cls.report.to_html(cls.path)
        cls.dom = chromium("--dump-dom", "file://" + cls.path)
        cls.text = text_of(cls.dom)

    def test_written_page_is_the_returned_page(self):
        with open(self.path, encoding="utf-8") as f:
            self.assertEqual(f.read(), self.page)

    def test_self_contained(self):
        self.assertNotIn("://", self.page)  # no URL of any scheme (base64 has no ':')
        self.assertEqual(re.findall(r"""(?:src|href)\s*=\s*["'](?!data:)""", self.page), [])
        self.assertNotRegex(self.page, r"<(?:script|link|iframe)\b")
        self.assertGreaterEqual(self.page.count('src="data:image/png;base64,'), 2)

    def test_rendered_text_shows_the_target_and_top_neurons(self):
        self.assertIn("Paris", self.text)
        self.assertIn(f"id {PARIS}", self.text)
        self.assertIn(self.top_ffn, self.text)
        self.assertIn(self.top_attention, self.text)
        self.assertIn("The capital of France is", self.text)

    def test_takeaway_names_the_top_layers_and_neuron(self):
        m = re.search(r'<p class="takeaway"[^>]*>(.*?)</p>', self.dom, re.S)
        self.assertIsNotNone(m)
        takeaway = text_of(m[1])
        attention, ffn = self.report.attention_layer_increase, self.report.ffn_layer_increase
        self.assertIn(f"attention layer {int(np.argmax(attention))} ({attention.max():+.2f})", takeaway)
        self.assertIn(f"FFN layer {int(np.argmax(ffn))} ({ffn.max():+.2f})", takeaway)
        self.assertIn(f"attention layers add {attention.sum():+.2f} and FFN layers {ffn.sum():+.2f}", takeaway)
        share = 100 * attention.sum() / (attention.sum() + ffn.sum())
        self.assertIn(f"{share:.0f} % attention", takeaway)
        self.assertIn(f"The top FFN neuron is {self.top_ffn}", takeaway)
        top = self.report.ffn_neurons[0]
        self.assertIn(f"coefficient m = {top.coefficient:+.2f}", takeaway)
        self.assertIn(", ".join(f'"{t.token}"' for t in top.top_tokens[:5]), takeaway)  # the tokens it promotes
        self.assertIn('" Paris" p = 0.99', takeaway)

    def test_the_target_is_marked_in_every_token_list(self):
        marks = re.findall(r"<mark[^>]*>(.*?)</mark>", self.dom, re.S)
        self.assertTrue(marks)
        self.assertEqual({text_of(m) for m in marks}, {'" Paris"'})
        r = self.report.proto
        in_tables = sum(t.id == PARIS for n in list(r.ffn_neurons)[:20] + list(r.attention_neurons)[:20]
                        for t in n.top_tokens[:10])
        in_takeaway = 1 + any(t.id == PARIS for t in r.ffn_neurons[0].top_tokens[:5])
        in_lens = sum(s.top.id == PARIS for s in self.report._cumulative())
        self.assertGreater(in_tables, 0)  # the demo model's top neurons promote " Paris"
        # takeaway, summary, prediction table, neuron tables (and the logit-lens table when there is one)
        self.assertEqual(len(marks), in_takeaway + 1 + 1 + in_tables + in_lens)
        predictions = section(self.dom, "prediction")
        self.assertEqual(len(re.findall(r"<mark", predictions)), 1)
        self.assertNotIn("<mark", section(self.dom, "query-layers"))

    def test_glossary(self):
        glossary = section(self.dom, "glossary")
        self.assertIsNotNone(glossary)
        terms = [text_of(t) for t in re.findall(r"<dt>(.*?)</dt>", glossary, re.S)]
        for term in ("score (log-prob increase)", "coefficient m", "subvalue m·v", "L2.N94", "L1.H2.P3.d7",
                     "query layers"):
            self.assertIn(term, terms)
        text = text_of(glossary)
        self.assertIn("log p(w | x + v) − log p(w | x)", text)
        self.assertIn("This report's metric is LOGPROB_INCREASE (the default, the paper's metric; report.metric)", text)
        self.assertIn("dimension 7 of head 2 in layer 1, reading source position 3", text)
        r = self.report.proto
        self.assertIn(f"Ranking mode {pb.RankMode.Name(r.mode)}", text)
        self.assertIn(f"evaluated {r.ffn_evaluated} of {r.ffn_total} FFN neurons", text)

    def test_provenance(self):
        provenance = cells(section(self.dom, "provenance"))
        model = self.report.model
        self.assertTrue(provenance["model"].startswith(model.name), provenance)
        self.assertEqual(provenance["family"], model.family)
        self.assertIn(f"{model.layers} layers × {model.heads} heads of dimension {model.head_dim}, d_model "
                      f"{model.d_model}, FFN width {model.ffn_width}, vocabulary {model.vocab_size}",
                      provenance["shape"])
        # The server's address once the client records it; "not recorded" until then.
        self.assertIn(self.report.server, (None, self.address))
        self.assertEqual(provenance["server"], self.report.server or "not recorded")
        self.assertIn("server version", provenance)
        self.assertTrue(provenance["analysed"].startswith(self.report.created.strftime("%Y-%m-%d %H:%M:%S")))
        self.assertEqual(provenance["factlens client"], f"factlens {CLIENT_VERSION}")

    def test_neuron_tables_are_labelled_truthfully(self):
        for anchor in ("ffn-neurons", "attention-neurons"):
            part = section(self.dom, anchor)
            self.assertIn(f"<th>{SUBVALUE_LABEL}</th>", part)
            self.assertIn("m &lt; 0", part)  # the note on negative coefficients
            self.assertIn("bottom", text_of(part))
        self.assertNotIn("value vectors promote", self.text)
        # Attention neurons and head × position pairs show their source token, quoted.
        source = self.report.neurons_frame(attention=True).source_token[0]
        self.assertIn(f'"{source}"', text_of(section(self.dom, "attention-neurons")))
        self.assertIn(f'"{source}"', text_of(section(self.dom, "heads")))

    def test_logit_lens_section_follows_the_report(self):
        lens = section(self.dom, "logit-lens")
        steps = len(self.report._cumulative())
        if steps == 0:  # a server without the logit lens
            self.assertIsNone(lens)
            self.assertNotIn("Logit lens", self.text)
        else:
            self.assertEqual(steps, 1 + 2 * self.report.layers)
            self.assertEqual(len(re.findall(r"<tr>", lens)), 1 + steps)
            after = self.report.rank1_after()
            if after is not None:
                self.assertIn(f"({after}) and stays there", text_of(lens))

    def test_screenshot_shows_the_figures(self):
        pixels = screenshot(self.path, os.path.join(self.dir, "report.png"), 7000)
        colors = {tuple(p) for p in pixels[::7]}
        self.assertGreater(len(colors), 100)
        self.assertGreater((pixels.sum(axis=1) < 3 * 250).mean(), 0.05)  # not a blank page
        for color in (ATTENTION_COLOR, FFN_COLOR):  # the bar chart's colours: its PNG was decoded and drawn
            self.assertGreater(pixels_of(pixels, color), 500, color)
        self.assertGreater(pixels_of(pixels, "#FFD966"), 200)  # the target's marks

    def test_logit_lens_rendered_when_the_report_has_steps(self):
        lensed = with_lens(self.report)
        path = os.path.join(self.dir, "report-lens.html")
        page = lensed.to_html(path)
        lens = section(page, "logit-lens")
        self.assertIsNotNone(lens)
        self.assertIn("becomes the top prediction after layer 1's attention (attn1) and stays there", text_of(lens))
        self.assertIn("becomes the top prediction after layer 1's attention", text_of(page.split("</p>")[0]))
        self.assertEqual(len(re.findall(r"<tr>", lens)), 1 + 1 + 2 * self.report.layers)
        # One figure more than the same report without steps (the live server now sends steps too).
        bare = pb.FactReport()
        bare.CopyFrom(self.report.proto)
        del bare.cumulative[:]
        without = FactReport(bare, self.report.model, created=self.report.created).to_html()
        self.assertEqual(page.count('src="data:image/png;base64,'), without.count('src="data:image/png;base64,') + 1)
        pixels = screenshot(path, os.path.join(self.dir, "report-lens.png"), 7000)
        self.assertGreater(pixels_of(pixels, RANK1_COLOR), 300)  # the rank-1 stars of the lens figure


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0]], verbosity=2)
