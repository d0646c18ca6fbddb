"""Notebook display of every result: _repr_html_ (well-formed, every token escaped and shown with its
leading space), repr(), figures that display themselves (_repr_png_), and save / load / from_json round
trips; on hand-made messages with hostile tokens and on real results of the llama demo model.

Usage: test_results_html.py FACTLENS_SERVER PYTHON_PACKAGE_DIR
"""
import datetime
import html
import html.parser
import json
import math
import os
import re
import sys
import tempfile
import unittest

import numpy as np
from support import PROMPT, Server, args

SERVER, _ = args()

from factlens import Client, plots, results  # noqa: E402
from factlens.v1 import factlens_pb2 as pb  # noqa: E402

MODELS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "models")
EVIL = "<script>alert('x')</script>"  # a vocabulary string that must never reach the page as markup
AMP = 'a&b"c'


class Balance(html.parser.HTMLParser):
    """Checks that every opened element is closed in order; collects the text."""
    VOID = {"img", "br", "hr", "meta", "col", "input"}

    def __init__(self):
        super().__init__()
        self.stack, self.errors, self.text, self.tags = [], [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(tag)

    def handle_data(self, data):
        self.text.append(data)


def ts(id, token, score):
    return pb.TokenScore(id=id, token=token, score=score)


def fake_results():
    """One hand-made result of every class, with hostile and spaced tokens."""
    tokens = [ts(1, " Paris", 0.9), ts(2, EVIL, 0.05), ts(3, AMP, 0.01)]
    ffn = pb.Component(kind=pb.Component.FFN_NEURON, layer=1, neuron=7)
    ranked = [pb.RankedComponent(component=ffn, score=1.5, coefficient=0.5)]
    model = pb.ModelInfo(name="m<1>", family="gpt2", layers=2, heads=2)
    report = pb.FactReport(
        input_ids=[5, 6], input_tokens=["The", EVIL], position=1, target=ts(1, " Paris", 0.9),
        outcome=pb.TargetOutcome(log_prob=-0.1, prob=0.9, rank=1), predictions=tokens,
        attention_layer_increase=[0.1, 0.2], ffn_layer_increase=[0.3, -0.4],
        top_heads=[pb.HeadScore(layer=1, head=1, source_position=-1, score=0.7)],
        ffn_neurons=[pb.NeuronScore(layer=1, neuron=7, head=-1, source_position=-1, score=1.5, coefficient=0.5,
                                    top_tokens=tokens)],
        attention_neurons=[pb.NeuronScore(layer=0, neuron=3, head=1, source_position=1, score=0.4, top_tokens=tokens)],
        ablated_ffn_neurons=1, ablated=pb.TargetOutcome(log_prob=-2.0, prob=0.13, rank=3))
    if "warnings" in pb.FactReport.DESCRIPTOR.fields_by_name:  # newer protos
        report.warnings.append(f"did you mean {EVIL}?")
    return {
        "Models": results.Models(pb.ListModelsResponse(models=[model])),
        "Tokens": results.Tokens(pb.TokenizeResponse(ids=[1, 2], tokens=["ĠParis", EVIL],
                                                     display_tokens=[" Paris", EVIL],
                                                     offset_begin=[0, 6], offset_end=[6, 10])),
        "Prediction": results.Prediction(pb.PredictResponse(input_ids=[5, 6], predictions=tokens)),
        "Decomposition": results.Decomposition(pb.DecomposeResponse(input_ids=[5, 6], target_id=1, positions=[
            pb.PositionDecomposition(position=1, token_id=6, components=[
                pb.DecomposedComponent(component=pb.Component(kind=pb.Component.EMBEDDING), increase=0.2, norm=1.0,
                                       top_tokens=tokens)])])),
        "Ranking": results.Ranking(pb.RankResponse(target_id=1, components=ranked, evaluated=3, total=10)),
        "Trace": results.Trace(pb.TraceResponse(position=1, keys=[
            pb.KeyTrace(key_name="in<", layer_scores=[0.1, 0.2, 0.3], head_scores=[0.1, 0.2], total=0.6,
                        top_ffn_subvalues=ranked)])),
        "Projection": results.Projection(pb.ProjectToVocabResponse(top=tokens, bottom=tokens[::-1][:2],
                                                                   final_scale=1.0)),
        "Ablation": results.Ablation(pb.AblateResponse(
            target_id=1, before=pb.TargetOutcome(log_prob=-0.1, prob=0.9, rank=1),
            after=pb.TargetOutcome(log_prob=-2.0, prob=0.13, rank=3), predictions_after=tokens)),
        "FactReport": results.FactReport(report, model),
        "ItemResult": results.ItemResult(pb.ItemResult(index=3, error=pb.ItemError(code=3, message=f"bad {EVIL}"))),
        "BatchAggregate": results.BatchAggregate(pb.BatchAggregate(
            ffn_neurons_per_layer=[1, 2], attention_neurons_per_layer=[0, 1], mean_attention_layer_increase=[0.1, 0.2],
            mean_ffn_layer_increase=[0.3, 0.4], facts=2, failed=1)),
    }


class FakeResultsTest(unittest.TestCase):
    def setUp(self):
        self.results = fake_results()

    def check_html(self, name, page):
        parser = Balance()
        parser.feed(page)
        parser.close()
        self.assertEqual((parser.errors, parser.stack), ([], []), name)
        if name != "ItemResult":  # a failed item is one line
            self.assertIn("table", parser.tags, name)
        self.assertNotIn("script", parser.tags, name)
        self.assertNotRegex(page, r"(src|href)=\"https?://", name)
        return "".join(parser.text)

    def test_every_result_class_has_html_and_a_useful_repr(self):
        covered = {name for name, cls in vars(results).items()
                   if isinstance(cls, type) and issubclass(cls, results.Result) and cls is not results.Result}
        self.assertEqual(covered, set(self.results))
        for name, r in self.results.items():
            self.assertIs(type(r).__name__, name)
            self.check_html(name, r._repr_html_())
            self.assertTrue(repr(r).startswith(f"<{name}: "), repr(r))
            self.assertNotRegex(repr(r), r"\d+ bytes>$", name)

    def test_tokens_are_escaped_and_show_their_leading_space(self):
        for name, r in self.results.items():
            page = r._repr_html_()
            self.assertNotIn("<script", page, name)
            if name in ("Models", "Ranking", "Trace", "BatchAggregate"):
                continue  # no token strings in these messages
            self.assertIn("&lt;script&gt;", page, name)
            text = self.check_html(name, page)
            self.assertIn(EVIL, text, name)  # the browser shows the token as it is
            if name != "ItemResult":
                self.assertIn('" Paris"', text, name)  # quoted: the leading space is visible
        self.assertIn("a&amp;b\\&quot;c", self.results["Prediction"]._repr_html_())
        self.assertIn("m&lt;1&gt;", self.results["Models"]._repr_html_())
        self.assertIn("in&lt;", self.results["Trace"]._repr_html_())

    def test_report_html_has_its_summary_and_figures(self):
        page = self.results["FactReport"]._repr_html_()
        text = self.check_html("FactReport", page)
        self.assertEqual(page.count('src="data:image/png;base64,'), 2)
        for expected in ("m<1>", "p = 0.9000", "rank 1", "L1.N7", "L0.H1.P1.d3", "rank 1 → 3"):
            self.assertIn(expected, text)
        if "warnings" in pb.FactReport.DESCRIPTOR.fields_by_name:
            self.assertIn(f"did you mean {EVIL}?", text)  # shown, escaped

    def test_reprs(self):
        r = self.results
        self.assertEqual(repr(r["Ablation"]), '<Ablation: target id 1: log p -0.1000 -> -2.0000 (change -1.9000), '
                                              'rank 1 -> 3, now predicts " Paris">')
        self.assertIn('"The<script>', repr(r["FactReport"]))
        self.assertIn("L1.N7 +1.5000", repr(r["Ranking"]))
        self.assertIn("INVALID_ARGUMENT", repr(r["ItemResult"]))

    def test_json_round_trip_of_every_result(self):
        directory = tempfile.mkdtemp(prefix="factlens-results-")
        try:
            for name, r in self.results.items():
                back = type(r).from_json(r.to_json())
                self.assertEqual(back.proto, r.proto, name)
                path = os.path.join(directory, name + ".json")
                r.save(path)
                self.assertEqual(type(r).load(path).proto, r.proto, name)
            report = self.results["FactReport"]
            loaded = results.FactReport.load(os.path.join(directory, "FactReport.json"))
            self.assertEqual(loaded.model, report.model)  # save() keeps the model
            self.assertIsNone(results.FactReport.from_json(report.to_json()).model)
            self.assertEqual(loaded._repr_html_(), report._repr_html_())
            self.assertEqual(loaded.to_html(), report.to_html())
            # Unknown fields (a newer server's) are ignored.
            self.assertEqual(results.Prediction.from_json('{"input_ids": ["5"], "from_the_future": 1}').input_ids[0], 5)
        finally:
            import shutil

            shutil.rmtree(directory)

    def test_figures_display_themselves_and_still_save(self):
        fig = self.results["FactReport"].plot_layers()
        self.assertIsInstance(fig, plots.NotebookFigure)
        png = fig._repr_png_()
        self.assertTrue(png.startswith(b"\x89PNG\r\n\x1a\n"))
        with tempfile.NamedTemporaryFile(suffix=".png") as f:
            fig.savefig(f.name)
            self.assertGreater(os.path.getsize(f.name), 1000)
        from matplotlib.figure import Figure

        own = Figure()
        ax = own.add_subplot()
        self.assertIs(self.results["FactReport"].plot_layers(ax=ax), own)  # drawing into the caller's axes


def with_lens(report, ranks=(9, 4, 1, 2, 1)):
    """A copy of a (two-layer) FactReport with hand-made logit-lens steps of the given target ranks."""
    proto = pb.FactReport()
    proto.CopyFrom(report.proto)
    K = pb.Component
    afters = [K(kind=K.EMBEDDING), K(kind=K.ATTENTION_LAYER, layer=0), K(kind=K.FFN_LAYER, layer=0),
              K(kind=K.ATTENTION_LAYER, layer=1), K(kind=K.FFN_LAYER, layer=1)]
    for i, (after, rank) in enumerate(zip(afters, ranks)):
        log_prob = -3.0 + 0.6 * i
        top = proto.target if rank == 1 else ts(2, EVIL, 0.3)
        proto.cumulative.add(after=after, target=pb.TargetOutcome(log_prob=log_prob, prob=math.exp(log_prob), rank=rank),
                             top=pb.TokenScore(id=top.id, token=top.token, score=0.3))
    return results.FactReport(proto, report.model, server="grpc.example:50051", server_version="9.9 (abc)",
                              created=datetime.datetime(2026, 12, 1, 23, 30, 5, tzinfo=datetime.timezone.utc))


class ReportExplainsItselfTest(unittest.TestCase):
    """FactReport.to_html on hand-made reports: takeaway, marked target, glossary, provenance, logit lens,
    neuron-table labels; and the accessors and figures behind them."""

    def setUp(self):
        self.report = fake_results()["FactReport"]
        self.lensed = with_lens(self.report)

    def page_text(self, report):
        page = report.to_html()
        parser = Balance()
        parser.feed(page)
        parser.close()
        self.assertEqual((parser.errors, parser.stack), ([], []))
        self.assertNotIn("<script", page)  # the hostile token stays text
        return page, "".join(parser.text)

    def test_takeaway(self):
        page, _ = self.page_text(self.report)
        takeaway = html.unescape(re.sub(r"<[^>]+>", "", re.search(r'<p class="takeaway"[^>]*>(.*?)</p>', page)[1]))
        # attention [0.1, 0.2], FFN [0.3, -0.4]: attention layer 1 and FFN layer 0 are the largest
        self.assertIn("attention layer 1 (+0.20)", takeaway)
        self.assertIn("FFN layer 0 (+0.30)", takeaway)
        self.assertIn("attention layers add +0.30 and FFN layers -0.10 to the target's log-prob", takeaway)
        self.assertNotIn("%", takeaway)  # no shares of a negative sum
        self.assertIn('The top FFN neuron is L1.N7 (score +1.500, coefficient m = +0.50); its subvalue m·v promotes '
                      f'" Paris", {json.dumps(EVIL)}, {json.dumps(AMP)}, the target among them.', takeaway)
        self.assertIn('The model gives " Paris" p = 0.9000 (rank 1)', takeaway)

    def test_target_is_marked(self):
        page, _ = self.page_text(self.report)
        marks = re.findall(r"<mark[^>]*>(.*?)</mark>", page)
        self.assertEqual({html.unescape(re.sub(r"<[^>]+>", "", m)) for m in marks}, {'" Paris"'})
        # takeaway (target, promoted), summary, predictions, FFN and attention neuron tables
        self.assertEqual(len(marks), 6)
        self.assertIn("<mark>", self.report._repr_html_())  # the notebook view marks it too

    def test_glossary_and_metric(self):
        _, text = self.page_text(self.report)
        for term in ("score (log-prob increase)", "coefficient m", "subvalue m·v", "L2.N94", "L1.H2.P3.d7",
                     "query layers", "exact / pruned ranking", "logit lens"):
            self.assertIn(term, text)
        self.assertIn("This report's metric is LOGPROB_INCREASE (the default, the paper's metric", text)
        self.report.proto.metric = pb.PROB_INCREASE
        _, text = self.page_text(self.report)
        self.assertIn("This report's metric is PROB_INCREASE (chosen in the request's options", text)
        self.assertIn("to the target's probability", text)

    def test_provenance(self):
        _, text = self.page_text(self.lensed)
        for expected in ("m<1>", "gpt2", "2 layers × 2 heads", "grpc.example:50051", "9.9 (abc)",
                         "2026-12-01 23:30:05 UTC", f"factlens {results.CLIENT_VERSION}"):
            self.assertIn(expected, text)
        provenance = self.report.provenance()
        self.assertEqual(provenance["server"], "not recorded")
        self.assertLess(abs(datetime.datetime.now().astimezone() - self.report.created).total_seconds(), 60)

    def test_provenance_survives_save_and_load(self):
        with tempfile.TemporaryDirectory(prefix="factlens-results-") as d:
            self.lensed.save(os.path.join(d, "r.json"))
            back = results.FactReport.load(os.path.join(d, "r.json"))
        self.assertEqual((back.server, back.server_version, back.created, back.client_version),
                         (self.lensed.server, self.lensed.server_version, self.lensed.created,
                          self.lensed.client_version))
        self.assertEqual(back.to_html(), self.lensed.to_html())
        old = results.FactReport.from_json(self.lensed.to_json())  # no provenance in the protobuf JSON
        self.assertIsNone(old.created)
        self.assertIn("not recorded", old.to_html())

    def test_client_version_is_the_package_version(self):
        pyproject = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pyproject.toml")
        with open(pyproject, encoding="utf-8") as f:
            self.assertEqual(re.search(r'^version = "([^"]+)"', f.read(), re.M)[1], results.CLIENT_VERSION)

    def test_logit_lens_with_steps(self):
        frame = self.lensed.cumulative_frame()
        self.assertEqual(list(frame.columns), ["step", "after", "log_prob", "prob", "rank", "top_id", "top_token",
                                               "top_prob"])
        self.assertEqual(list(frame.after), ["emb", "attn0", "ffn0", "attn1", "ffn1"])
        self.assertEqual(list(frame["rank"]), [9, 4, 1, 2, 1])
        self.assertEqual(self.lensed.rank1_after(), "ffn1")  # rank 1 after ffn0, lost at attn1, back at ffn1
        page, text = self.page_text(self.lensed)
        self.assertIn('<section id="logit-lens">', page)
        self.assertIn("becomes the top prediction after layer 1's FFN (ffn1) and stays there (it is briefly rank 1 "
                      "after layer 0's FFN (ffn0) already)", text)
        lens = re.search(r'<section id="logit-lens">(.*?)</section>', page, re.S)[1]
        self.assertEqual(lens.count("<tr>"), 1 + 5)
        self.assertEqual(lens.count("<mark"), 2)  # the steps where the target is the top token
        self.assertIn("&lt;script&gt;", lens)
        self.assertEqual(page.count('src="data:image/png;base64,'), 3)
        ax = self.lensed.plot_cumulative().axes[0]
        line = [li for li in ax.get_lines() if li.get_label().startswith("log p")][0]
        self.assertEqual(list(line.get_ydata()), list(frame.log_prob))
        (stars,) = ax.collections
        self.assertEqual([x for x, _ in stars.get_offsets()], [2, 4])  # the rank-1 steps marked
        self.assertEqual(with_lens(self.report, (3, 2, 2, 2, 2)).rank1_after(), None)
        _, text = self.page_text(with_lens(self.report, (3, 2, 2, 2, 2)))
        self.assertIn("never settles at rank 1: it ends at rank 2", text)

    def test_no_logit_lens_without_steps(self):
        page, text = self.page_text(self.report)
        self.assertNotIn("logit-lens", page)
        self.assertEqual(page.count('src="data:image/png;base64,'), 2)
        self.assertTrue(self.report.cumulative_frame().empty)
        self.assertIsNone(self.report.rank1_after())
        with self.assertRaises(ValueError):
            self.report.plot_cumulative()

    def test_neuron_tables_say_what_the_tokens_are(self):
        page, text = self.page_text(self.report)
        self.assertEqual(page.count(f"<th>{plots.SUBVALUE_TOKENS}</th>"), 2)
        self.assertNotIn("value vectors promote", text)
        self.assertIn("m &lt; 0", page)
        self.assertIn("tokens the subvalue m·v promotes", self.report._repr_html_())
        fig = self.report.plot_neuron_table(attention=True)
        table = fig.axes[0].tables[0]
        labels = [table.get_celld()[(0, c)].get_text().get_text() for c in range(5)]
        self.assertEqual(labels, ["name", "source token", "score", "coefficient m", plots.SUBVALUE_TOKENS])
        self.assertEqual(table.get_celld()[(1, 1)].get_text().get_text(), json.dumps(EVIL))

    def test_neuron_table_figure_is_not_half_blank(self):
        from matplotlib.image import imread

        frame = self.report.neurons_frame()
        frame = frame.loc[[0] * 20].reset_index(drop=True)  # 20 rows
        for rows in (frame.head(1), frame.head(5), frame):
            png = plots.to_png(plots.neuron_table(rows, title="t"))
            with tempfile.NamedTemporaryFile(suffix=".png") as f:
                f.write(png)
                f.flush()
                image = imread(f.name)[..., :3]
            ink = (image < 0.9).any(axis=(1, 2))  # pixel rows with anything drawn
            drawn = np.where(ink)[0]
            self.assertLess(1 - ink[drawn[0]:drawn[-1] + 1].mean(), 0.3, len(rows))  # no big blank band
            self.assertLess(image.shape[0] - drawn[-1], 0.15 * image.shape[0], len(rows))  # nothing blank below

    def test_whole_heads_have_source_position_minus_one(self):
        report = fake_results()["FactReport"]
        report.proto.top_heads[0].source_position = 0  # as a proto default would have it
        frame = report.heads_frame()
        self.assertEqual((frame.source_position[0], frame.source_token[0]), (-1, ""))
        ranking = results.Ranking(pb.RankResponse(components=[
            pb.RankedComponent(component=pb.Component(kind=pb.Component.HEAD, layer=1, head=2), score=1.0),
            pb.RankedComponent(component=pb.Component(kind=pb.Component.HEAD_POSITION, layer=1, head=2,
                                                      source_position=0), score=0.5, source_token_id=464),
            pb.RankedComponent(component=pb.Component(kind=pb.Component.FFN_NEURON, layer=1, neuron=3), score=0.2)]))
        frame = ranking.to_pandas()
        self.assertEqual(list(frame["head"]), [2, 2, -1])
        self.assertEqual(list(frame.source_position), [-1, 0, -1])
        self.assertEqual(list(frame.source_token_id), [0, 464, 0])

    def test_trace_plot_draws_every_key(self):
        trace = results.Trace(pb.TraceResponse(position=4, keys=[
            pb.KeyTrace(key_name="gate", layer_scores=[0.1, 0.2, 0.3, 0.4, 0.0]),
            pb.KeyTrace(key_name="up", layer_scores=[0.5, -0.2, 0.1, 0.3, 0.0])]), neuron="L1.N7")
        ax = trace.plot_layers().axes[0]
        keys = [li for li in ax.get_lines() if li.get_label().startswith("key ")]
        self.assertEqual([li.get_label() for li in keys], ["key gate (total +1.000)", "key up (total +0.700)"])
        self.assertEqual(len(keys[0].get_xdata()), 4)  # an FFN neuron of layer 1 reads emb .. attn1
        self.assertIn("L1.N7", ax.get_title())
        self.assertIn("gate and up", ax.get_title())
        self.assertEqual(len(trace.plot_layers("up").axes[0].get_lines()), 2)  # the key and the zero line
        back = results.Trace.from_json(json.dumps({**json.loads(trace.to_json()), "neuron": "L1.N7"}))
        self.assertEqual(back.neuron_name, "L1.N7")


class RealResultsTest(unittest.TestCase):
    """The same on real results of the llama demo model."""

    @classmethod
    def setUpClass(cls):
        server = Server(SERVER, "--model", f"llama={MODELS}/llama-facts-tiny")
        try:
            with Client(server.address) as c:
                report = c.locate_fact(PROMPT, " Paris", options={"top_ffn_neurons": 20})
                top = report.neurons_frame().name[0]
                cls.top = top
                cls.results = [c.list_models(), c.tokenize(PROMPT), c.predict(PROMPT, top_k=5),
                               c.decompose(PROMPT, target=" Paris", include_heads=True, logit_lens_top_k=3),
                               c.rank(PROMPT, " Paris", "HEAD_POSITION", top_k=5), c.trace(PROMPT, top),
                               c.project(PROMPT, top + ".value", top_k=5), c.ablate(PROMPT, " Paris", [top]), report]
                cls.results += list(c.locate_facts([(PROMPT, " Paris"), (PROMPT, " Paris Paris")],
                                                   options={"top_ffn_neurons": 5}))
        finally:
            assert server.stop() == 0, server.logs()

    def test_html_is_well_formed_and_round_trips(self):
        for r in self.results:
            name = type(r).__name__
            parser = Balance()
            parser.feed(r._repr_html_())
            self.assertEqual((parser.errors, parser.stack), ([], []), name)
            self.assertEqual(type(r).from_json(r.to_json()).proto, r.proto, name)
            self.assertNotIn("bytes>", repr(r), name)

    def test_trace_plot_of_a_gated_neuron_has_one_line_per_key(self):
        trace = results.Trace(self.results[5].proto, neuron=self.top)  # llama: SwiGLU, keys gate and up
        self.assertEqual([k.key_name for k in trace.keys], ["gate", "up"])
        ax = trace.plot_layers().axes[0]
        keys = [li for li in ax.get_lines() if li.get_label().startswith("key ")]
        self.assertEqual([li.get_label().split()[1] for li in keys], ["gate", "up"])
        layer = trace.neuron.layer
        for line, key in zip(keys, trace.keys):
            np.testing.assert_allclose(line.get_ydata(), list(key.layer_scores)[:2 * layer + 2])
        self.assertIn(f"What activates {self.top}", ax.get_title())
        self.assertIn("keys gate and up", ax.get_title())

    def test_report_round_trip_through_a_file(self):
        report = self.results[8]
        with tempfile.TemporaryDirectory() as d:
            report.save(os.path.join(d, "r.json"))
            back = results.FactReport.load(os.path.join(d, "r.json"))
        self.assertEqual(back.proto, report.proto)
        self.assertEqual(back.model.name, "llama")
        self.assertEqual(back.head_matrix().shape, report.head_matrix().shape)
        self.assertIn("&quot; Paris&quot;", back._repr_html_())


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0]], verbosity=2)
