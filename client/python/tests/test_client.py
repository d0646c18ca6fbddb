"""The Python client against the real factlens_server on loopback: every method, typed results
(numpy, pandas, plots) cross-checked between RPCs, error mapping, streaming, auth token, mTLS, and
the retry policy (against an in-process fake server that fails on purpose); the first-hour defaults
and messages: $FACTLENS_SERVER / $FACTLENS_MODEL, a missing or unknown model, connection errors
that say what to do, and the responses' warnings issued as FactlensWarning (against a fake server,
and one live check that needs the server to fill them in).

Usage: test_client.py FACTLENS_SERVER PYTHON_PACKAGE_DIR
"""
import contextlib
import html
import io
import os
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import warnings
from concurrent import futures
from unittest import mock

import numpy as np
from support import (MODELS, PARIS, PROMPT, TOKEN, WARNING, Server, args, closed_port, http1_server,
                     write_token_file)

SERVER, _ = args()

import grpc  # noqa: E402

from factlens import (Client, FactlensConnectionError, FactlensError, FactlensWarning, ModelNotServed,  # noqa: E402
                      component_name, parse_component)
from factlens.client import retryable  # noqa: E402
from factlens.v1 import factlens_pb2 as pb  # noqa: E402
from factlens.v1 import factlens_pb2_grpc as pb_grpc  # noqa: E402

C = grpc.StatusCode
TOP = 20  # neurons per LocateFact report, small to keep the test fast


class RealServerTest(unittest.TestCase):
    """One server (bearer-token auth) for the whole class; one LocateFact report shared by the checks."""

    @classmethod
    def setUpClass(cls):
        tokens = tempfile.TemporaryDirectory(prefix="factlens-test-")
        cls.addClassCleanup(tokens.cleanup)
        cls.server = Server(SERVER, "--auth_token_file", write_token_file(tokens.name))
        cls.addClassCleanup(cls.server.stop)  # if setUpClass fails below; a no-op after tearDownClass's stop
        cls.client = Client(cls.server.address, token=TOKEN)
        cls.info = cls.client.model_info()
        cls.stages = []
        cls.report = cls.client.locate_fact(PROMPT, " Paris", options={"top_ffn_neurons": TOP, "top_attention_neurons": TOP},
                                            on_progress=lambda stage, fraction: cls.stages.append((stage, fraction)))

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        assert cls.server.stop() == 0, cls.server.logs()

    def assertCode(self, code, fn, *a, contains=None, **kw):
        with self.assertRaises(FactlensError) as cm:
            fn(*a, **kw)
        self.assertEqual(cm.exception.code, code, cm.exception.message)
        if contains:
            self.assertIn(contains, cm.exception.message)
        self.assertIn(code.name, str(cm.exception))

    # --- every RPC, typed -------------------------------------------------------------------------
    def test_list_models(self):
        models = self.client.list_models()
        frame = models.to_pandas()
        self.assertEqual(frame.shape, (1, len(pb.ModelInfo.DESCRIPTOR.fields)))
        self.assertEqual(list(frame["name"]), ["gpt2-facts-tiny"])
        self.assertEqual(frame.loc[0, "layers"], self.info.layers)
        (only,) = models
        self.assertEqual(only, self.info)
        self.assertEqual(models.to_dict()["models"][0]["layers"], self.info.layers)
        self.assertEqual((only.dtype, only.weights_dtype), ("float32", "float32"))
        # Weights held in another dtype than the compute (dtype=bfloat16 on a CPU) are named; a
        # server without the field (before weights_dtype) shows the compute dtype alone.
        from factlens.results import dtype_phrase
        self.assertEqual(dtype_phrase(only), "float32")
        self.assertEqual(dtype_phrase(pb.ModelInfo(dtype="float32", weights_dtype="bfloat16")),
                         "float32 (bfloat16 weights)")
        self.assertEqual(dtype_phrase(pb.ModelInfo(dtype="float32")), "float32")

    def test_tokenize_offsets_index_the_text(self):
        tokens = self.client.tokenize(PROMPT)
        self.assertEqual(tokens.ids.dtype, np.int64)
        frame = tokens.to_pandas()
        self.assertEqual(list(frame.columns), ["id", "token", "display_token", "begin", "end"])
        self.assertEqual([PROMPT[b:e] for b, e in zip(tokens.offset_begin, tokens.offset_end)], list(frame.display_token))
        self.assertEqual(self.client.detokenize(tokens.ids), PROMPT)  # numpy ids are accepted

    def test_predict_agrees_with_the_report(self):
        prediction = self.client.predict(PROMPT, top_k=5)
        self.assertEqual(prediction.ids[0], PARIS)
        self.assertEqual(prediction.to_pandas().shape, (5, 3))
        self.assertTrue(np.all(np.diff(prediction.probs) <= 0))
        self.assertAlmostEqual(prediction.probs[0], self.report.outcome.prob, places=9)
        self.assertEqual(list(prediction.ids), [t.id for t in self.report.predictions[:5]])
        by_ids = self.client.predict(self.client.tokenize(PROMPT).ids, top_k=5)
        np.testing.assert_array_equal(by_ids.ids, prediction.ids)

    def test_report_tables_have_the_model_shape(self):
        r, layers, heads = self.report, self.info.layers, self.info.heads
        self.assertEqual(r.target.id, PARIS)
        self.assertEqual(r.to_pandas().shape, (layers, 3))
        self.assertEqual(r.attention_layer_increase.dtype, np.float64)
        self.assertEqual(r.head_matrix().shape, (layers, heads))
        self.assertEqual(np.isfinite(r.head_matrix()).sum(), len(r.top_heads))
        self.assertEqual(len(r.neurons_frame()), TOP)
        self.assertEqual(len(r.neurons_frame(attention=True)), TOP)
        self.assertEqual(r.query_layers_frame().shape[0], 1 + 2 * layers)
        self.assertEqual(list(r.predictions_frame().id[:1]), [PARIS])

    def test_report_neurons_match_rank(self):
        for attention, level in [(False, "FFN_NEURON"), (True, "attention_neuron")]:
            ranking = self.client.rank(PROMPT, PARIS, level, top_k=5)
            frame = self.report.neurons_frame(attention=attention).head(5)
            self.assertEqual(list(frame.name), list(ranking.to_pandas().name), level)
            # Both are float64 evaluations (exact scores agree to their max_error, ~1e-13 here).
            np.testing.assert_allclose(frame.score, ranking.scores, rtol=1e-9)

    def test_decompose_agrees_with_the_report_and_numpy(self):
        layers = self.client.decompose(PROMPT, target=" Paris").to_pandas()
        np.testing.assert_allclose(layers[layers.kind == "ATTENTION_LAYER"].increase,
                                   self.report.attention_layer_increase, rtol=1e-9)
        np.testing.assert_allclose(layers[layers.kind == "FFN_LAYER"].increase, self.report.ffn_layer_increase, rtol=1e-9)
        d = self.client.decompose(PROMPT, target=" Paris", include_heads=True, include_vectors=True)
        frame, vectors = d.to_pandas(), d.vectors()
        self.assertEqual(vectors.shape, (len(frame), self.info.d_model))
        self.assertFalse(np.isnan(vectors).any(), "every component, attention biases included, has its vector")
        # The server's float32 norm of d terms errs by at most (d + 2)·2^-24 of itself.
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), frame.norm,
                                   rtol=(self.info.d_model + 2) * 2.0 ** -24)
        self.assertEqual(d.head_matrix().shape, (self.info.layers, self.info.heads))
        top = self.report.top_heads[0]
        self.assertAlmostEqual(d.head_matrix()[top.layer, top.head], top.score, places=9)

    def test_component_names_round_trip(self):
        for level in ["ATTENTION_LAYER", "FFN_LAYER", "HEAD", "HEAD_POSITION", "FFN_NEURON", "ATTENTION_NEURON"]:
            ranking = self.client.rank(PROMPT, " Paris", level, top_k=3)
            for name, ranked in zip(ranking.to_pandas().name, ranking.components):
                self.assertEqual(parse_component(name), ranked.component, name)
                self.assertEqual(component_name(ranked.component), name)

    def test_trace_of_the_top_neuron(self):
        top = self.report.neurons_frame().name[0]
        trace = self.client.trace(PROMPT, top)
        frame = trace.to_pandas()
        self.assertEqual(frame.shape, (1 + 2 * self.info.layers, 1))
        self.assertAlmostEqual(trace.layer_scores("in").sum(), trace.keys[0].total, places=6)
        self.assertEqual(trace.head_matrix().shape, (self.info.layers, self.info.heads))
        self.assertTrue(all(n.startswith("L") for n in trace.top_subvalues().name))

    def test_project_matches_the_report_top_tokens(self):
        neuron = self.report.ffn_neurons[0]
        projection = self.client.project(PROMPT, f"L{neuron.layer}.N{neuron.neuron}.value", top_k=5)
        frame = projection.to_pandas()
        self.assertEqual(list(frame.side), ["top"] * 5 + ["bottom"] * 5)
        self.assertEqual(list(frame.id[:5]), [t.id for t in neuron.top_tokens[:5]])

    def test_ablating_the_reported_neurons_reproduces_the_report(self):
        names = list(self.report.neurons_frame().name[:self.report.ablated_ffn_neurons])
        ablation = self.client.ablate(PROMPT, " Paris", names)
        self.assertAlmostEqual(ablation.after.prob, self.report.ablated.prob, places=9)
        self.assertAlmostEqual(ablation.log_prob_change, self.report.ablated.log_prob - self.report.outcome.log_prob,
                               places=9)
        self.assertEqual(list(ablation.to_pandas().state), ["before", "after"])

    # --- streaming ------------------------------------------------------------------------------
    def test_locate_fact_progress(self):
        fractions = [f for _, f in self.stages]
        self.assertEqual(fractions, sorted(fractions))
        self.assertEqual(self.stages[-1], ("done", 1.0))
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            self.client.locate_fact(PROMPT, " Paris", options=pb.LocateOptions(top_ffn_neurons=1, top_attention_neurons=1,
                                                                              skip_ablation=True), progress=True)
        self.assertIn("100%", err.getvalue())
        self.assertIn("done", err.getvalue())

    def test_locate_facts_aggregate_counts_the_items_neurons(self):
        events = list(self.client.locate_facts([(PROMPT, " Paris"), ("The capital of Japan is", " Tokyo")],
                                               options={"top_ffn_neurons": 5, "top_attention_neurons": 5}))
        items, aggregate = events[:-1], events[-1]
        layers = self.info.layers
        counts = sum(np.bincount([n.layer for n in i.report.ffn_neurons], minlength=layers) for i in items)
        np.testing.assert_array_equal(aggregate.ffn_neurons_per_layer, counts)
        self.assertEqual(aggregate.to_pandas().shape, (layers, 5))
        self.assertEqual(aggregate.to_pandas().ffn_neurons.sum(), 2 * 5)
        fig = aggregate.plot_neurons_per_layer()
        self.assertEqual(len(fig.axes[0].patches), 2 * layers)
        self.assertEqual(items[1].report.head_matrix().shape, (layers, self.info.heads))

    def test_plots_have_one_bar_per_layer_and_component(self):
        layers = self.info.layers
        bars = self.report.plot_layers().axes[0].patches
        self.assertEqual(len(bars), 2 * layers)
        np.testing.assert_allclose([b.get_height() for b in bars[:layers]], self.report.attention_layer_increase)
        image = self.report.plot_heads().axes[0].images[0]
        self.assertEqual(image.get_array().shape, (layers, self.info.heads))
        table = self.report.plot_neuron_table(n=3).axes[0].tables[0]
        self.assertEqual(table.get_celld()[(1, 0)].get_text().get_text(), self.report.neurons_frame().name[0])

    # --- errors ---------------------------------------------------------------------------------
    def test_bad_input_is_invalid_argument(self):
        c = self.client
        self.assertCode(C.INVALID_ARGUMENT, c.predict, "", contains="prompt")
        self.assertCode(C.INVALID_ARGUMENT, c.rank, PROMPT, " Paris", "NO_SUCH_LEVEL", contains="level")
        self.assertCode(C.INVALID_ARGUMENT, c.rank, PROMPT, " Paris is", "HEAD", contains="target")
        self.assertCode(C.INVALID_ARGUMENT, c.trace, PROMPT, f"L{self.info.layers}.N0", contains="layer")
        self.assertCode(C.INVALID_ARGUMENT, c.project, PROMPT, "L0.N0.sideways", contains="component")
        self.assertCode(C.INVALID_ARGUMENT, c.locate_fact, PROMPT, " Paris", options={"top_neurons": 3},
                        contains="LocateOptions")
        item, aggregate = c.locate_facts([("", " Paris")])
        self.assertEqual((item.exception.code, aggregate.failed), (C.INVALID_ARGUMENT, 1))
        self.assertIn("items[0].prompt", item.exception.message)
        self.assertIsNone(item.report)

    def test_model_and_auth_errors(self):
        self.assertCode(C.NOT_FOUND, Client(self.server.address, token=TOKEN, model="gpt-j").predict, PROMPT,
                        contains="gpt-j")
        with Client(self.server.address) as anonymous:
            self.assertCode(C.UNAUTHENTICATED, anonymous.list_models)
        with Client(self.server.address, token="wrong") as wrong:
            self.assertCode(C.UNAUTHENTICATED, lambda: wrong.locate_fact(PROMPT, " Paris"))

    def test_model_not_served_says_what_to_pass(self):
        with Client(self.server.address, token=TOKEN, model="gpt-j") as c:
            for call in (lambda: c.predict(PROMPT), c.model_info):
                with self.assertRaises(ModelNotServed) as cm:
                    call()
                e = cm.exception
                self.assertEqual((e.code, e.model, e.served), (C.NOT_FOUND, "gpt-j", [self.info.name]))
                self.assertEqual(e.message, f"model 'gpt-j' is not served (served: {self.info.name}); "
                                            "pass model=... / --model or set FACTLENS_MODEL")

    # --- defaults from the environment ----------------------------------------------------------
    def test_environment_gives_the_server_and_model(self):
        with mock.patch.dict(os.environ, {"FACTLENS_SERVER": self.server.address, "FACTLENS_MODEL": self.info.name}):
            with Client(token=TOKEN) as c:
                self.assertEqual((c.address, c.model), (self.server.address, self.info.name))
                self.assertEqual(c.predict(PROMPT, top_k=1).ids[0], PARIS)
            os.environ["FACTLENS_MODEL"] = "gpt-j"
            with Client(token=TOKEN) as c:
                self.assertCode(C.NOT_FOUND, c.predict, PROMPT, contains="FACTLENS_MODEL")
            # Arguments win, an explicit model="" (the server's only model) included.
            os.environ["FACTLENS_SERVER"] = f"127.0.0.1:{closed_port()}"
            with Client(self.server.address, token=TOKEN, model="") as c:
                self.assertEqual((c.address, c.model), (self.server.address, ""))
                self.assertEqual(c.predict(PROMPT, top_k=1).ids[0], PARIS)
            del os.environ["FACTLENS_SERVER"], os.environ["FACTLENS_MODEL"]
            with Client() as c:
                self.assertEqual((c.address, c.model), ("127.0.0.1:50051", ""))

    # --- connection errors ----------------------------------------------------------------------
    def test_the_metrics_port_is_recognized(self):
        address = self.server.http[len("http://"):]
        with Client(address, token=TOKEN, retries=1) as c:
            with self.assertRaises(FactlensConnectionError) as cm:
                c.list_models()
        self.assertEqual((cm.exception.code, cm.exception.reason), (C.UNAVAILABLE, "HTTP/1.1"))
        self.assertEqual(cm.exception.message, f"{address} answers HTTP/1.1, not gRPC: it looks like factlens_server's "
                                               "metrics/health port; pass the --listen address instead")

    # --- one component, warnings ----------------------------------------------------------------
    def test_ablate_takes_one_component(self):
        name = self.report.neurons_frame().name[0]
        listed = self.client.ablate(PROMPT, " Paris", [name])
        for one in (name, parse_component(name), pb.AblationSpec(component=parse_component(name))):
            ablation = self.client.ablate(PROMPT, " Paris", one)
            self.assertAlmostEqual(ablation.after.log_prob, listed.after.log_prob, places=12, msg=str(one))
        self.assertNotAlmostEqual(listed.after.log_prob, listed.before.log_prob, places=12)  # it was applied

    def test_html_report_shows_the_warnings_first(self):
        proto = pb.FactReport()
        proto.CopyFrom(self.report.proto)
        del proto.warnings[:]
        quiet = type(self.report)(proto, self.info).to_html()
        self.assertNotIn('class="warnings"', quiet)
        proto.warnings.extend([WARNING, "a second one"])
        page = type(self.report)(proto, self.info).to_html()
        banner = page.index('<div class="warnings" role="alert">')
        self.assertLess(banner, page.index("<h1>"))
        self.assertIn("<strong>2 warnings: this report may not be of the fact you meant</strong>", page)
        self.assertIn(f"<li>{html.escape(WARNING)}</li><li>a second one</li>", page)

    def test_live_server_warns_about_a_target_without_its_space(self):
        """NEEDS THE SERVER SIDE OF ISSUE 15: FAILS (on purpose, not skipped) until the server fills in `warnings`."""
        calls = [("Rank", lambda: self.client.rank(PROMPT, "Paris", "FFN_NEURON", top_k=1)),
                 ("LocateFact", lambda: self.client.locate_fact(PROMPT, "Paris", options={
                     "top_ffn_neurons": 1, "top_attention_neurons": 1, "skip_ablation": True}))]
        for rpc, call in calls:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                result = call()
            texts = [str(w.message) for w in caught if issubclass(w.category, FactlensWarning)]
            self.assertTrue(texts, f"{rpc} of target 'Paris' (no leading space) on the demo model gave no FactlensWarning: "
                                   "the server under test does not fill in the warnings (issue 15's server side)")
            self.assertIn("Paris", texts[0])
            self.assertEqual(texts, list(result.warnings))
            self.assertEqual({w.filename for w in caught}, {os.path.abspath(__file__)})

    def test_context_manager_closes_the_channel(self):
        with Client(self.server.address, token=TOKEN) as c:
            self.assertEqual(c.list_models()[0].name, self.info.name)
        with self.assertRaises(ValueError):  # grpc: "Cannot invoke RPC on closed channel!"
            c.list_models()


def _openssl(*argv):
    subprocess.run(["openssl", *argv], check=True, capture_output=True)


class MutualTlsTest(unittest.TestCase):
    def test_client_certificate(self):
        d = self.enterContext(tempfile.TemporaryDirectory(prefix="factlens-test-"))
        p = {n: os.path.join(d, n) for n in ["ca.key", "ca.pem", "s.key", "s.csr", "s.pem", "c.key", "c.csr", "c.pem", "ext"]}
        with open(p["ext"], "w") as f:
            f.write("subjectAltName=IP:127.0.0.1\n")
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", p["ca.key"], "-out", p["ca.pem"], "-days", "1",
                 "-subj", "/CN=factlens test CA")
        for who in "sc":
            _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", p[f"{who}.key"], "-out", p[f"{who}.csr"],
                     "-subj", f"/CN={who}")
            _openssl("x509", "-req", "-in", p[f"{who}.csr"], "-CA", p["ca.pem"], "-CAkey", p["ca.key"], "-CAcreateserial",
                     "-out", p[f"{who}.pem"], "-days", "1", "-extfile", p["ext"])
        server = Server(SERVER, "--tls_cert", p["s.pem"], "--tls_key", p["s.key"], "--tls_client_ca", p["ca.pem"])
        try:
            with Client(server.address, root_certificates=p["ca.pem"], client_certificate=p["c.pem"],
                        client_key=p["c.key"]) as c:
                self.assertEqual(c.predict(PROMPT, top_k=1).ids[0], PARIS)
            with Client(server.address, root_certificates=p["ca.pem"], retries=1, timeout=5) as no_cert:
                with self.assertRaises(FactlensError) as cm:
                    no_cert.list_models()
                self.assertEqual(cm.exception.code, C.UNAVAILABLE)
        finally:
            self.assertEqual(server.stop(), 0, server.logs())


class SeveralModelsTest(unittest.TestCase):
    """A server with two models: a request that names none gets an error listing them and saying what to pass."""

    @classmethod
    def setUpClass(cls):
        cls.server = Server(SERVER, "--model", "demo=" + os.path.join(MODELS, "gpt2-facts-tiny"),
                            "--model", "llama=" + os.path.join(MODELS, "llama-facts-tiny"))
        cls.addClassCleanup(cls.server.stop)

    @classmethod
    def tearDownClass(cls):
        assert cls.server.stop() == 0, cls.server.logs()

    def test_no_model_named(self):
        with mock.patch.dict(os.environ):
            os.environ.pop("FACTLENS_MODEL", None)
            with Client(self.server.address) as c:
                for call in (lambda: c.predict(PROMPT), lambda: list(c.locate_facts([(PROMPT, " Paris")])), c.model_info):
                    with self.assertRaises(ModelNotServed) as cm:
                        call()
                    e = cm.exception
                    self.assertEqual((e.code, e.model, sorted(e.served)), (C.NOT_FOUND, "", ["demo", "llama"]))
                    self.assertRegex(e.message, r"^no model given and the server serves several \((demo, llama|llama, demo)\); "
                                                r"pass model=\.\.\. / --model or set FACTLENS_MODEL$")
            os.environ["FACTLENS_MODEL"] = "llama"
            with Client(self.server.address) as c:
                self.assertEqual(c.model_info().name, "llama")
                self.assertEqual(len(c.predict(PROMPT, top_k=2).ids), 2)


class ConnectionErrorTest(unittest.TestCase):
    """Nothing speaking gRPC at the address: one FactlensConnectionError that says what to do."""

    def assertConnectionError(self, address, reason, message, calls):
        with Client(address, retries=1) as c:
            for call in calls(c):
                with self.assertRaises(FactlensConnectionError) as cm:
                    call()
                e = cm.exception
                self.assertIsInstance(e, FactlensError)
                self.assertEqual((e.code, e.address, e.reason, e.message), (C.UNAVAILABLE, address, reason, message))
                self.assertEqual(str(e), f"UNAVAILABLE: {message}")

    def test_connection_refused(self):
        address = f"127.0.0.1:{closed_port()}"
        self.assertConnectionError(
            address, "connection refused",
            f"no factlens_server at {address} (connection refused): start one or pass --server / FACTLENS_SERVER",
            lambda c: (c.list_models, lambda: c.locate_fact(PROMPT, " Paris"), lambda: list(c.locate_facts([]))))

    def test_an_http1_server(self):
        with http1_server() as address:
            self.assertConnectionError(
                address, "HTTP/1.1",
                f"{address} answers HTTP/1.1, not gRPC: it looks like factlens_server's metrics/health port; "
                "pass the --listen address instead",
                lambda c: (c.list_models, lambda: c.locate_fact(PROMPT, " Paris")))

    def test_refused_after_retries(self):
        with Client(f"127.0.0.1:{closed_port()}", retries=2) as c:
            with self.assertRaises(FactlensConnectionError):
                c.predict(PROMPT)


class _Warns(pb_grpc.FactLensServicer):
    """Answers with responses that carry warnings (as the server will for a target without its leading space)."""

    def ListModels(self, request, context):
        return pb.ListModelsResponse(models=[pb.ModelInfo(name="fake", layers=1, heads=1)])

    def Predict(self, request, context):
        return pb.PredictResponse(predictions=[pb.TokenScore(id=PARIS, token=" Paris", score=1.0)])

    def Rank(self, request, context):
        return pb.RankResponse(target_id=PARIS, warnings=[WARNING])

    def Ablate(self, request, context):
        return pb.AblateResponse(target_id=PARIS, warnings=[WARNING, "a second one"])

    def Decompose(self, request, context):
        return pb.DecomposeResponse(target_id=PARIS, warnings=[WARNING])

    def LocateFact(self, request, context):
        yield pb.LocateFactEvent(progress=pb.Progress(stage="forward", fraction=0.5))
        yield pb.LocateFactEvent(report=pb.FactReport(target=pb.TokenScore(id=PARIS), warnings=[WARNING]))

    def LocateFacts(self, request, context):
        yield pb.LocateFactsEvent(item=pb.ItemResult(index=1, report=pb.FactReport(warnings=[WARNING])))
        yield pb.LocateFactsEvent(item=pb.ItemResult(index=0, report=pb.FactReport()))
        yield pb.LocateFactsEvent(aggregate=pb.BatchAggregate(facts=2))


class WarningsTest(unittest.TestCase):
    """Each of a response's warnings is one FactlensWarning, attributed to the caller's line."""

    @classmethod
    def setUpClass(cls):
        cls.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        pb_grpc.add_FactLensServicer_to_server(_Warns(), cls.server)
        port = cls.server.add_insecure_port("127.0.0.1:0")
        cls.server.start()
        cls.addClassCleanup(cls.server.stop, None)
        cls.client = Client(f"127.0.0.1:{port}")
        cls.addClassCleanup(cls.client.close)

    def caught(self, call):
        """(result, [(text, filename, line)]) of the FactlensWarnings that call() issued."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = call()
        self.assertTrue(all(issubclass(w.category, FactlensWarning) for w in caught), [w.category for w in caught])
        return result, [(str(w.message), w.filename, w.lineno) for w in caught]

    def test_every_rpc_with_warnings(self):
        c = self.client
        for rpc, call, expected in [
                ("Rank", lambda: c.rank(PROMPT, "Paris", "HEAD"), [WARNING]),
                ("Ablate", lambda: c.ablate(PROMPT, "Paris", "L0.N1"), [WARNING, "a second one"]),
                ("Decompose", lambda: c.decompose(PROMPT, target="Paris"), [WARNING]),
                ("LocateFact", lambda: c.locate_fact(PROMPT, "Paris"), [WARNING]),
                ("LocateFacts", lambda: list(c.locate_facts([(PROMPT, " Paris"), (PROMPT, "Paris")])),
                 [f"items[1]: {WARNING}"]),
                ("Predict", lambda: c.predict(PROMPT), [])]:
            result, caught = self.caught(call)
            self.assertEqual([text for text, _, _ in caught], expected, rpc)
            # Attributed to the line that called the Client (here: the lambda's), not to the client's code.
            self.assertEqual({(os.path.abspath(filename), lineno) for _, filename, lineno in caught},
                             {(os.path.abspath(__file__), call.__code__.co_firstlineno)} if expected else set(), rpc)
            if rpc in ("Rank", "Ablate", "Decompose", "LocateFact"):
                self.assertEqual(list(result.warnings), expected, rpc)

    def test_warnings_are_user_warnings_that_can_be_errors(self):
        self.assertTrue(issubclass(FactlensWarning, UserWarning))
        with warnings.catch_warnings():
            warnings.simplefilter("error", FactlensWarning)
            with self.assertRaises(FactlensWarning) as cm:
                self.client.rank(PROMPT, "Paris", "HEAD")
        self.assertEqual(str(cm.exception), WARNING)


class _Flaky(pb_grpc.FactLensServicer):
    """Fails the first `failures` calls of each RPC with `code`; LocateFact may fail after its first event."""

    def __init__(self, failures, code, after_first_event=False):
        self.failures, self.code, self.after_first_event = failures, code, after_first_event
        self.calls = {}
        self.lock = threading.Lock()

    def _fail_now(self, rpc):
        with self.lock:
            self.calls[rpc] = self.calls.get(rpc, 0) + 1
            return self.calls[rpc] <= self.failures

    def Predict(self, request, context):
        if self._fail_now("Predict"):
            context.abort(self.code, "try again")
        return pb.PredictResponse(predictions=[pb.TokenScore(id=PARIS, token=" Paris", score=1.0)])

    def ListModels(self, request, context):
        return pb.ListModelsResponse(models=[pb.ModelInfo(name="fake", layers=1, heads=1)])

    def LocateFact(self, request, context):
        fail = self._fail_now("LocateFact")
        if fail and not self.after_first_event:
            context.abort(self.code, "try again")
        yield pb.LocateFactEvent(progress=pb.Progress(stage="forward", fraction=0.5))
        if fail:
            context.abort(self.code, "lost mid-stream")
        yield pb.LocateFactEvent(report=pb.FactReport(target=pb.TokenScore(id=PARIS)))


class _Stalling(pb_grpc.FactLensServicer):
    """LocateFact sends one progress event, then waits until the client goes away."""

    def LocateFact(self, request, context):
        yield pb.LocateFactEvent(progress=pb.Progress(stage="forward", fraction=0.5))
        while context.is_active():
            time.sleep(0.01)


class RetryTest(unittest.TestCase):
    """Retries happen on UNAVAILABLE and on a CANCELLED the client did not cause only, at most `retries`
    attempts, and never after a stream has started."""

    def serve(self, servicer):
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        pb_grpc.add_FactLensServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        self.addCleanup(server.stop, None)
        return Client(f"127.0.0.1:{port}", retries=3)

    def test_unavailable_and_a_cancelled_call_the_client_did_not_cause_are_retried(self):
        # CANCELLED from the server: what one that gRPC shuts down answers in its last moment.
        for code in (C.UNAVAILABLE, C.CANCELLED):
            with self.subTest(code=code):
                flaky = _Flaky(2, code)
                client = self.serve(flaky)
                self.assertEqual(client.predict(PROMPT).ids[0], PARIS)
                self.assertEqual(client.locate_fact(PROMPT, PARIS).target.id, PARIS)
                self.assertEqual(flaky.calls, {"Predict": 3, "LocateFact": 3})

    def test_a_call_this_client_cancelled_is_not_retryable(self):
        # A real local cancellation, so the test checks what grpcio says of one, not a copy of it.
        client = self.serve(_Stalling())
        call = client.replicas[0].stub.LocateFact(pb.LocateFactRequest())
        next(call)
        call.cancel()
        with self.assertRaises(grpc.RpcError) as cm:
            next(call)
        self.assertEqual(cm.exception.code(), C.CANCELLED)
        self.assertFalse(retryable(cm.exception))

    def test_attempts_are_bounded(self):
        flaky = _Flaky(3, C.UNAVAILABLE)
        client = self.serve(flaky)
        with self.assertRaises(FactlensError) as cm:
            client.predict(PROMPT)
        self.assertEqual((cm.exception.code, cm.exception.message), (C.UNAVAILABLE, "try again"))
        self.assertEqual(flaky.calls["Predict"], 3)

    def test_other_codes_are_not_retried(self):
        flaky = _Flaky(1, C.RESOURCE_EXHAUSTED)
        client = self.serve(flaky)
        with self.assertRaises(FactlensError) as cm:
            client.predict(PROMPT)
        self.assertEqual(cm.exception.code, C.RESOURCE_EXHAUSTED)
        self.assertEqual(flaky.calls["Predict"], 1)

    def test_a_started_stream_is_not_retried(self):
        flaky = _Flaky(1, C.UNAVAILABLE, after_first_event=True)
        client = self.serve(flaky)
        stages = []
        with self.assertRaises(FactlensError) as cm:
            client.locate_fact(PROMPT, PARIS, on_progress=lambda s, f: stages.append(s))
        self.assertEqual((cm.exception.code, cm.exception.message), (C.UNAVAILABLE, "lost mid-stream"))
        self.assertEqual((flaky.calls["LocateFact"], stages), (1, ["forward"]))


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0]], verbosity=2)
