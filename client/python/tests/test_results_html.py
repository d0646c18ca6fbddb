"""Notebook display of every result: _repr_html_ (well-formed, every token escaped and shown with its
leading space), repr(), figures that display themselves (_repr_png_), and save / load / from_json round
trips; on hand-made messages with hostile tokens and on real results of the llama demo model.

Usage: test_results_html.py FACTLENS_SERVER PYTHON_PACKAGE_DIR
"""
import html.parser
import os
import sys
import tempfile
import unittest

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


class RealResultsTest(unittest.TestCase):
    """The same on real results of the llama demo model."""

    @classmethod
    def setUpClass(cls):
        server = Server(SERVER, "--model", f"llama={MODELS}/llama-facts-tiny")
        try:
            with Client(server.address) as c:
                report = c.locate_fact(PROMPT, " Paris", options={"top_ffn_neurons": 20})
                top = report.neurons_frame().name[0]
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
