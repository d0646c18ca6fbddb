"""End-to-end tests of factlens_server on loopback with the embedded demo model.

Usage: test_server_e2e.py FACTLENS_SERVER CLIENT_PYTHON_DIR
Starts the real binary (bearer-token auth, small limits), talks to it with the Python client over a
real channel, scrapes its /metrics, and stops it with SIGTERM while a request runs.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.parse
import urllib.request

SERVER, CLIENT_DIR = sys.argv[1], sys.argv[2]
DEMO_MODEL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "models", "gpt2-facts-tiny")
BAEVSKI_TINY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "fairseq-reference",
                            "baevski-tiny")
sys.path.insert(0, CLIENT_DIR)
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))

import grpc  # noqa: E402

from factlens import Client, FactlensError  # noqa: E402
from factlens.v1 import factlens_pb2 as pb  # noqa: E402
from factlens.v1 import factlens_pb2_grpc as pb_grpc  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc  # noqa: E402
from server_process import ServerProcess  # noqa: E402

TOKEN = "s3cret-token"
PROMPT = "The capital of France is"
PARIS = 6342
C = grpc.StatusCode


def Server(*flags):
    """factlens_server (the binary under test) on free loopback ports, with `flags`."""
    return ServerProcess(SERVER, *flags)


def openssl_certificate(directory, name, common_name, san=None, ca=None):
    """Writes NAME.key and NAME.pem: self-signed, or signed by ca=(ca_key, ca_cert). Returns the paths."""
    key, cert = os.path.join(directory, name + ".key"), os.path.join(directory, name + ".pem")
    extensions = ["-addext", "subjectAltName=" + san] if san else []
    if ca is None:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                        "-days", "1", "-subj", "/CN=" + common_name, *extensions], check=True, capture_output=True)
    else:
        csr = os.path.join(directory, name + ".csr")
        subprocess.run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr,
                        "-subj", "/CN=" + common_name], check=True, capture_output=True)
        subprocess.run(["openssl", "x509", "-req", "-in", csr, "-CA", ca[1], "-CAkey", ca[0], "-CAcreateserial",
                        "-out", cert, "-days", "1"], check=True, capture_output=True)
    return key, cert


def write_token_file(directory):
    path = os.path.join(directory, "tokens")
    with open(path, "w") as f:
        f.write("# accepted tokens\n" + TOKEN + "\n")
    return path


class ServerTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        tokens = cls.enterClassContext(tempfile.TemporaryDirectory(prefix="factlens-e2e-"))
        cls.server = Server("--auth_token_file", write_token_file(tokens), "--max_concurrent", "1", "--max_queued", "1",
                            "--max_top_k", "200", "--max_prompt_tokens", "32", "--max_batch_items", "4")
        cls.client = Client(cls.server.address, token=TOKEN)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        cls.assertEqual(ServerTest(), cls.server.stop(), 0)

    def assertCode(self, code, fn, *args, contains=None, **kwargs):
        with self.assertRaises(FactlensError) as cm:
            fn(*args, **kwargs)
        self.assertEqual(cm.exception.code, code, cm.exception.message)
        if contains:
            self.assertIn(contains, cm.exception.message)
        return cm.exception

    def test_prometheus_scrapes_the_server(self):
        """A real Prometheus (Debian's) scrapes this server's /metrics: target up, no scrape error,
        and the request counter moves with the requests made between two scrapes."""
        d = self.enterContext(tempfile.TemporaryDirectory(prefix="factlens-e2e-"))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            prom_port = s.getsockname()[1]
        with open(os.path.join(d, "prometheus.yml"), "w") as f:
            f.write("global: {scrape_interval: 1s, scrape_timeout: 1s}\n"
                    "scrape_configs:\n  - job_name: factlens\n"
                    f"    static_configs: [{{targets: ['{self.server.http[len('http://'):]}']}}]\n")
        prom = subprocess.Popen(["prometheus", f"--config.file={d}/prometheus.yml", f"--storage.tsdb.path={d}/tsdb",
                                 f"--web.listen-address=127.0.0.1:{prom_port}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        api = f"http://127.0.0.1:{prom_port}/api/v1"

        def get(path, **params):
            url = api + path + ("?" + urllib.parse.urlencode(params) if params else "")
            return json.loads(urllib.request.urlopen(url, timeout=5).read())["data"]

        def value(query):
            result = get("/query", query=query)["result"]
            return float(result[0]["value"][1]) if len(result) == 1 else None

        def wait_for(predicate, what, seconds=40):
            deadline = time.time() + seconds
            while time.time() < deadline:
                try:
                    if predicate():
                        return
                except OSError:
                    pass  # Prometheus still starting
                time.sleep(0.5)
            self.fail(f"Prometheus: {what} (server log:\n{self.server.logs()[-2000:]})")

        counter = 'factlens_requests_total{rpc="Predict",model="gpt2-facts-tiny",code="OK"}'
        try:
            self.client.predict(PROMPT, top_k=1)

            def target_up():
                (target,) = get("/targets")["activeTargets"] or [None]
                self.assertEqual(target and target["lastError"], target and "", "scrape error")
                return target is not None and target["health"] == "up"

            wait_for(target_up, "the factlens target never came up")
            wait_for(lambda: value(counter) is not None, "the Predict counter never appeared")
            before = value(counter)
            for _ in range(3):
                self.client.predict(PROMPT, top_k=1)
            wait_for(lambda: value(counter) >= before + 3, f"{counter} did not move by 3 from {before}")
            self.assertEqual(value('factlens_model_ready{model="gpt2-facts-tiny"}'), 1)
            self.assertEqual(value('up{job="factlens"}'), 1)
            self.assertIsNotNone(value("factlens_build_info"))
        finally:
            prom.terminate()
            prom.wait(timeout=30)

    # --- every RPC -------------------------------------------------------------------------------
    def test_list_models(self):
        (m,) = self.client.list_models()
        self.assertEqual((m.name, m.family, m.layers, m.heads, m.d_model, m.vocab_size), ("gpt2-facts-tiny", "gpt2", 4, 4, 64, 50257))
        self.assertEqual((m.dtype, m.device, m.ready, m.max_positions, m.ffn_width), ("float32", "cpu", True, 64, 256))

    def test_tokenize_and_detokenize(self):
        t = self.client.tokenize(PROMPT)
        self.assertEqual(list(t.ids), [464, 3139, 286, 4881, 318])
        self.assertEqual(list(t.display_tokens), ["The", " capital", " of", " France", " is"])
        self.assertEqual(list(t.offset_begin), [0, 3, 11, 14, 21])
        self.assertEqual(self.client.detokenize(t.ids), PROMPT)

    def test_predict(self):
        r = self.client.predict(PROMPT, top_k=3)
        self.assertEqual(r.predictions[0].id, PARIS)
        self.assertEqual(r.predictions[0].token, " Paris")
        self.assertGreater(r.predictions[0].score, 0.99)
        self.assertEqual(len(r.predictions), 3)

    def test_decompose_reconstructs_the_residual(self):
        r = self.client.decompose(PROMPT, target=" Paris", include_heads=True, logit_lens_top_k=3)
        (pos,) = r.positions
        self.assertEqual(pos.position, 4)
        # Derived, not measured: the float32 residual stream rounds once per addition (2L) and each
        # component is a float32 product over at most d terms: (d + 2 + 2L)·2^-24 of the components'
        # magnitudes (max |c| ≤ ‖c‖) bounds the reconstruction error on any CPU (gpt2-facts-tiny:
        # d = 64, L = 4).
        bound = (64 + 2 + 2 * 4) * 2.0 ** -24 * sum(c.norm for c in pos.components)
        self.assertLessEqual(pos.reconstruction_error, bound)
        kinds = [pb.Component.Kind.Name(c.component.kind) for c in pos.components]
        self.assertEqual(kinds.count("HEAD"), 16)
        self.assertEqual(kinds.count("ATTENTION_BIAS"), 4)
        ranked = self.client.rank(PROMPT, " Paris", pb.RankRequest.FFN_LAYER, top_k=4)
        ffn = {c.component.layer: c.increase for c in pos.components if c.component.kind == pb.Component.FFN_LAYER}
        for rc in ranked.components:
            self.assertAlmostEqual(rc.score, ffn[rc.component.layer], places=9)

    def test_decompose_and_locate_fact_give_the_logit_lens_after_every_sublayer(self):
        (pos,) = self.client.decompose(PROMPT, target=" Paris", cumulative=True).positions
        after = [(pb.Component.Kind.Name(s.after.kind), s.after.layer) for s in pos.cumulative]
        self.assertEqual(after, [("EMBEDDING", 0)] + [(k, l) for l in range(4) for k in ("ATTENTION_LAYER", "FFN_LAYER")])
        report = self.client.locate_fact(PROMPT, " Paris").proto
        self.assertEqual([(s.target.rank, s.top.id) for s in pos.cumulative],
                         [(s.target.rank, s.top.id) for s in report.cumulative])
        self.assertEqual((pos.cumulative[-1].target.rank, pos.cumulative[-1].top.id), (1, PARIS))
        self.assertAlmostEqual(report.cumulative[-1].target.log_prob, report.outcome.log_prob, places=12)
        self.assertEqual(len(self.client.decompose(PROMPT, target=" Paris").positions[0].cumulative), 0)

    def test_rank_every_level(self):
        for level in ["ATTENTION_LAYER", "FFN_LAYER", "HEAD", "HEAD_POSITION", "FFN_NEURON", "ATTENTION_NEURON"]:
            r = self.client.rank(PROMPT, " Paris", pb.RankRequest.Level.Value(level), top_k=3)
            self.assertEqual(len(r.components), 3, level)
            scores = [c.score for c in r.components]
            self.assertEqual(scores, sorted(scores, reverse=True), level)
        exact = self.client.rank(PROMPT, PARIS, pb.RankRequest.FFN_NEURON, top_k=20)
        exhaustive = self.client.rank(PROMPT, PARIS, pb.RankRequest.FFN_NEURON, top_k=20, mode=pb.EXHAUSTIVE)
        self.assertEqual([(c.component.layer, c.component.neuron) for c in exact.components],
                         [(c.component.layer, c.component.neuron) for c in exhaustive.components])
        self.assertEqual((exact.mode, exhaustive.mode), (pb.EXACT, pb.EXHAUSTIVE))
        self.assertLess(exact.evaluated, exact.total)
        bottom = self.client.rank(PROMPT, PARIS, pb.RankRequest.ATTENTION_NEURON, top_k=5, bottom=True)
        self.assertLess(bottom.components[0].score, 0)

    def test_trace_and_project(self):
        top = self.client.rank(PROMPT, " Paris", pb.RankRequest.FFN_NEURON, top_k=1).components[0].component
        t = self.client.trace(PROMPT, pb.Component(kind=pb.Component.FFN_NEURON, layer=top.layer, neuron=top.neuron))
        (key,) = t.keys
        self.assertEqual(key.key_name, "in")
        self.assertEqual(len(key.layer_scores), 9)
        self.assertAlmostEqual(sum(key.layer_scores), key.total, places=6)
        p = self.client.project(PROMPT, pb.Component(kind=pb.Component.FFN_NEURON_VALUE, layer=top.layer,
                                                     neuron=top.neuron), top_k=5)
        self.assertEqual(len(p.top), 5)
        self.assertGreater(p.top[0].score, p.bottom[0].score)

    def test_ablate(self):
        a = self.client.ablate(PROMPT, " Paris", [pb.AblationSpec(component=pb.Component(kind=pb.Component.ATTENTION_LAYER, layer=0))])
        self.assertEqual(a.before.rank, 1)
        self.assertLess(a.after.log_prob, a.before.log_prob)

    def test_locate_fact_streams_progress_then_report(self):
        stages = []
        report = self.client.locate_fact(PROMPT, " Paris", on_progress=lambda s, f: stages.append((s, f)))
        self.assertEqual(stages[0][0], "forward")
        self.assertEqual(stages[-1], ("done", 1.0))
        self.assertEqual(report.target.id, PARIS)
        self.assertEqual(len(report.ffn_neurons), 100)
        self.assertEqual(report.ablated_ffn_neurons, 100)
        self.assertLess(report.ablated.log_prob, report.outcome.log_prob)

    def test_locate_facts_streams_items_then_aggregate(self):
        events = list(self.client.locate_facts([(PROMPT, " Paris"), ("The capital of Japan is", " Tokyo"),
                                                (PROMPT, " Paris is")],
                                               options=pb.LocateOptions(top_ffn_neurons=5, top_attention_neurons=5)))
        items, aggregate = events[:-1], events[-1]
        self.assertEqual([i.index for i in items], [0, 1, 2])
        self.assertTrue(items[0].HasField("report"))
        self.assertEqual(items[2].error.code, C.INVALID_ARGUMENT.value[0])
        self.assertIn("items[2].target", items[2].error.message)
        self.assertEqual((aggregate.facts, aggregate.failed), (2, 1))
        self.assertEqual(sum(aggregate.ffn_neurons_per_layer), 10)

    def test_a_target_missing_its_leading_space_is_analysed_as_asked_with_a_warning(self):
        auth = [("authorization", "Bearer " + TOKEN)]
        stub = self.client._stub
        prompt = pb.Prompt(text=PROMPT.encode())
        few = pb.LocateOptions(top_ffn_neurons=3, top_attention_neurons=3, skip_ablation=True)

        def warnings_of(text):
            target = pb.Target(text=text.encode())
            rank = stub.Rank(pb.RankRequest(prompt=prompt, target=target, level=pb.RankRequest.FFN_LAYER),
                             metadata=auth, timeout=60)
            ablate = stub.Ablate(pb.AblateRequest(prompt=prompt, target=target, ablations=[
                pb.AblationSpec(component=pb.Component(kind=pb.Component.FFN_LAYER, layer=0))]),
                metadata=auth, timeout=60)
            decompose = stub.Decompose(pb.DecomposeRequest(prompt=prompt, target=target), metadata=auth, timeout=60)
            (report,) = [e.report for e in stub.LocateFact(pb.LocateFactRequest(prompt=prompt, target=target,
                                                                                 options=few),
                                                           metadata=auth, timeout=120) if e.HasField("report")]
            (event, _) = stub.LocateFacts(pb.LocateFactsRequest(items=[pb.FactItem(prompt=prompt, target=target)],
                                                               options=few), metadata=auth, timeout=120)
            item = event.item
            self.assertEqual(len({rank.target_id, ablate.target_id, decompose.target_id, report.target.id,
                                  item.report.target.id}), 1)
            return rank.target_id, [list(m.warnings) for m in (rank, ablate, decompose, report, item.report)]

        asked, warned = warnings_of("Paris")
        self.assertEqual(asked, 40313)  # "Paris" without the space: what was asked is analysed
        for warnings in warned:
            self.assertEqual(len(warnings), 1, warned)
            self.assertIn('target "Paris" is the token "Paris" (40313)', warnings[0])
            self.assertIn('did you mean " Paris" (6342): rank 1', warnings[0])
        asked, warned = warnings_of(" Paris")
        self.assertEqual((asked, warned), (PARIS, [[]] * 5))

    # --- bad input -------------------------------------------------------------------------------
    def test_bad_input_codes(self):
        c = self.client
        self.assertCode(C.INVALID_ARGUMENT, c.predict, "", contains="prompt")
        self.assertCode(C.INVALID_ARGUMENT, c.predict, [], contains="prompt")
        self.assertCode(C.INVALID_ARGUMENT, c.predict, [50257], contains="prompt.token_ids[0]")
        self.assertCode(C.RESOURCE_EXHAUSTED, c.predict, [464] * 33, contains="max_prompt_tokens")
        self.assertCode(C.INVALID_ARGUMENT, c.predict, PROMPT, position=5, contains="position")
        self.assertCode(C.INVALID_ARGUMENT, c.predict, PROMPT, top_k=-1, contains="top_k")
        self.assertCode(C.RESOURCE_EXHAUSTED, c.predict, PROMPT, top_k=201, contains="top_k")
        self.assertCode(C.INVALID_ARGUMENT, c.rank, PROMPT, " Paris is", pb.RankRequest.HEAD, contains="2 tokens")
        self.assertCode(C.INVALID_ARGUMENT, c.rank, PROMPT, 50257, pb.RankRequest.HEAD, contains="target")
        self.assertCode(C.INVALID_ARGUMENT, c.rank, PROMPT, PARIS, pb.RankRequest.LEVEL_UNSPECIFIED, contains="level")
        for comp, field in [(pb.Component(kind=pb.Component.FFN_NEURON, layer=4), "layer"),
                            (pb.Component(kind=pb.Component.FFN_NEURON, neuron=256), "neuron"),
                            (pb.Component(kind=pb.Component.ATTENTION_NEURON, head=4), "head"),
                            (pb.Component(kind=pb.Component.ATTENTION_NEURON, source_position=5), "source_position")]:
            self.assertCode(C.INVALID_ARGUMENT, c.trace, PROMPT, comp, contains=field)
        self.assertCode(C.INVALID_ARGUMENT, c.project, PROMPT, pb.Component(kind=pb.Component.HEAD, head=9), contains="head")
        self.assertCode(C.INVALID_ARGUMENT, c.project, PROMPT, pb.Component(kind=pb.Component.FFN_NEURON_KEY, key_name="up"),
                        contains="key_name")
        self.assertCode(C.INVALID_ARGUMENT, c.ablate, PROMPT, PARIS, [], contains="ablations")
        self.assertCode(C.INVALID_ARGUMENT, c.ablate, PROMPT, PARIS, [pb.AblationSpec(component=pb.Component(kind=pb.Component.EMBEDDING))],
                        contains="ablated")
        self.assertCode(C.RESOURCE_EXHAUSTED, lambda: list(c.locate_facts([(PROMPT, " Paris")] * 5)), contains="max_batch_items")
        self.assertCode(C.RESOURCE_EXHAUSTED, c.locate_fact, PROMPT, " Paris", options=pb.LocateOptions(top_ffn_neurons=500))

    def test_invalid_utf8_is_invalid_argument(self):
        self.assertCode(C.INVALID_ARGUMENT, self.client.tokenize, b"caf\xc3", contains="text")
        self.assertCode(C.INVALID_ARGUMENT, self.client.predict, b"The \xff capital", contains="prompt")
        self.assertCode(C.INVALID_ARGUMENT, self.client.rank, PROMPT, b"\xfe", pb.RankRequest.HEAD, contains="target")
        self.assertCode(C.INVALID_ARGUMENT, self.client.detokenize, [99999999], contains="ids")

    def test_unknown_model_and_auth(self):
        self.assertCode(C.NOT_FOUND, Client(self.server.address, token=TOKEN, model="gpt-j").predict, PROMPT, contains="gpt-j")
        self.assertCode(C.UNAUTHENTICATED, Client(self.server.address).list_models)
        self.assertCode(C.UNAUTHENTICATED, Client(self.server.address, token="wrong").predict, PROMPT)
        # Health stays open without a token.
        health = health_pb2_grpc.HealthStub(grpc.insecure_channel(self.server.address))
        self.assertEqual(health.Check(health_pb2.HealthCheckRequest(), timeout=5).status, health_pb2.HealthCheckResponse.SERVING)

    def test_build_info_names_the_commit_the_binary_was_built_from(self):
        # Read at build time (server/build_info.cmake), so it follows every commit.
        source = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=source, capture_output=True,
                              text=True).stdout.strip() or "unknown"
        self.assertIn(f'commit="{head}"', self.server.metrics())

    def test_the_request_log_escapes_what_clients_send(self):
        # A model name that tries to end the JSON line and forge another one.
        forged = 'x","code":0}\n{"event":"request","rpc":"Forged'
        self.assertCode(C.NOT_FOUND, Client(self.server.address, token=TOKEN, model=forged).predict, PROMPT)
        requests = []
        for line in self.server.logs().splitlines():
            if line.startswith("{"):
                event = json.loads(line)  # every structured line is one valid JSON object
                if event.get("event") == "request":
                    requests.append(event)
        self.assertIn(forged, [r["model"] for r in requests])
        self.assertNotIn("Forged", [r["rpc"] for r in requests])

    def test_reflection_lists_the_services(self):
        stub = reflection_pb2_grpc.ServerReflectionStub(grpc.insecure_channel(self.server.address))
        responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)
        names = {s.name for r in responses for s in r.list_services_response.service}
        self.assertIn("factlens.v1.FactLens", names)
        self.assertIn("grpc.health.v1.Health", names)

    # --- deadlines, cancellation, queue ----------------------------------------------------------
    def test_deadline_exceeded(self):
        self.assertCode(C.DEADLINE_EXCEEDED, self.client.locate_fact, PROMPT, " Paris", timeout=0.001)

    def test_queue_full_and_cancellation(self):
        slow = pb.LocateOptions(mode=pb.EXHAUSTIVE)
        results, lock = [], threading.Lock()

        def run():
            try:
                list(self.client.locate_facts([(PROMPT, " Paris")] * 4, options=slow))
                code = C.OK
            except FactlensError as e:
                code = e.code
            with lock:
                results.append(code)

        threads = [threading.Thread(target=run) for _ in range(4)]
        for t in threads:
            t.start()
            time.sleep(0.05)
        for t in threads:
            t.join()
        # One runs, one waits, the others are refused at once.
        self.assertEqual(results.count(C.RESOURCE_EXHAUSTED), 2, results)
        self.assertEqual(results.count(C.OK), 2, results)
        # A cancelled stream stops the server's work: its request is recorded as CANCELLED.
        call = self.client._stub.LocateFacts(pb.LocateFactsRequest(items=[pb.FactItem(prompt=pb.Prompt(text=PROMPT.encode()),
                                                                                   target=pb.Target(text=b" Paris"))] * 4,
                                                                   options=slow),
                                             metadata=[("authorization", "Bearer " + TOKEN)])
        next(call)
        call.cancel()
        deadline = time.time() + 20
        while 'rpc="LocateFacts",model="gpt2-facts-tiny",code="CANCELLED"' not in self.server.metrics():
            self.assertLess(time.time(), deadline, "no CANCELLED LocateFacts in /metrics")
            time.sleep(0.2)

    def test_metrics_count_requests(self):
        self.client.predict(PROMPT)
        text = self.server.metrics()
        self.assertIn('factlens_requests_total{rpc="Predict",model="gpt2-facts-tiny",code="OK"}', text)
        self.assertIn('factlens_model_ready{model="gpt2-facts-tiny"} 1', text)
        self.assertIn("factlens_request_duration_seconds_bucket", text)
        self.assertEqual(urllib.request.urlopen(self.server.http + "/readyz", timeout=5).read().strip(), b"ready")

    def test_calls_on_one_prompt_share_the_cached_forward_pass(self):
        def lookups(result):
            series = f'factlens_trace_cache_lookups_total{{model="gpt2-facts-tiny",result="{result}"}} '
            lines = [l for l in self.server.metrics().splitlines() if l.startswith(series)]
            return float(lines[0].split()[-1]) if lines else 0.0

        prompt = "The capital of Norway is"  # used by no other test
        hits, misses = lookups("hit"), lookups("miss")
        for level in ("FFN_LAYER", "HEAD", "FFN_NEURON"):
            self.client.rank(prompt, " Oslo", level, top_k=3)
        self.assertEqual(lookups("miss") - misses, 1)
        self.assertEqual(lookups("hit") - hits, 2)


class FairseqModelTest(unittest.TestCase):
    """A fairseq directory (model.pt + dict.txt, as fairseq ships it) served next to a GPT-2 model:
    every RPC the report needs works on it, and the standard LocateFact runs through the server."""

    @classmethod
    def setUpClass(cls):
        cls.server = Server("--model", "wiki=" + BAEVSKI_TINY, "--model", "gpt2=" + DEMO_MODEL)
        cls.client = Client(cls.server.address, model="wiki")

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        cls.assertEqual(FairseqModelTest(), cls.server.stop(), 0)

    def test_the_model_is_listed_as_a_fairseq_lm(self):
        (wiki,) = [m for m in self.client.list_models() if m.name == "wiki"]
        self.assertEqual(wiki.family, "fairseq_lm")
        self.assertEqual((wiki.vocab_size, wiki.layers, wiki.heads), (704, 3, 4))

    def test_words_are_tokenized_with_dict_txt_and_the_start_token(self):
        # Case 0 of the fixture: words 17 120 5 (ids from dict.txt, line k = id k + 4).
        with open(os.path.join(BAEVSKI_TINY, "dict.txt")) as f:
            words = [line.rsplit(" ", 1)[0] for line in f.read().splitlines()]
        text = " ".join(words[i - 4] for i in (17, 120, 5)) + " notaword"
        self.assertEqual(list(self.client.tokenize(text).ids), [2, 17, 120, 5, 3])

    def test_standard_locate_fact_runs_on_the_adaptive_softmax(self):
        with open(os.path.join(BAEVSKI_TINY, "reference.json")) as f:
            case = json.load(f)["cases"][0]
        with open(os.path.join(BAEVSKI_TINY, "dict.txt")) as f:
            words = [line.rsplit(" ", 1)[0] for line in f.read().splitlines()]
        prompt = " ".join(words[i - 4] for i in case["input_ids"][1:])
        report = self.client.locate_fact(prompt, case["target_word"])
        proto = report.proto
        self.assertEqual(proto.target.id, case["target"])
        self.assertEqual(proto.target.token, " " + case["target_word"])
        self.assertAlmostEqual(proto.outcome.log_prob, case["target_logprob"], delta=1e-4)
        self.assertEqual(proto.outcome.rank, 1)  # the fixture's target is the argmax
        self.assertEqual(proto.final_scale, 1.0)  # no final norm: nothing is frozen
        self.assertEqual(len(proto.ffn_layer_increase), 3)
        self.assertEqual(len(proto.ffn_neurons), 100)  # the standard report's top 100 of 3 × 64
        top = proto.ffn_neurons[0]
        self.assertGreater(top.score, 0)
        self.assertTrue(top.top_tokens, "the neuron's promoted words")
        self.assertTrue(all(t.score <= 0 for t in top.top_tokens), "log-probabilities of the vector alone")
        self.assertEqual(len(proto.attention_neurons), 100)

    def test_a_target_outside_the_dictionary_is_refused_not_scored_as_unk(self):
        with self.assertRaises(FactlensError) as cm:
            self.client.rank("a b", "notaword", "FFN_LAYER")
        self.assertEqual(cm.exception.code, C.INVALID_ARGUMENT, cm.exception.message)
        self.assertIn("not in the model's vocabulary", cm.exception.message)

class LifecycleTest(unittest.TestCase):
    def test_sigterm_drains_a_running_request_and_exits_zero(self):
        server = Server()
        client = Client(server.address)
        out = {"events": []}
        first = threading.Event()

        def run():
            for event in client.locate_facts([(PROMPT, " Paris")] * 3, options=pb.LocateOptions(mode=pb.EXHAUSTIVE)):
                out["events"].append(event)
                first.set()

        t = threading.Thread(target=run)
        t.start()
        self.assertTrue(first.wait(60), "the request never started")  # SIGTERM while it runs
        server.proc.send_signal(signal.SIGTERM)
        # Once /readyz stops answering "ready" (the server turns it 503 after it starts draining, or
        # it is gone), new calls are refused while the running one drains (or fail to connect):
        # UNAVAILABLE either way, never a hang.
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                urllib.request.urlopen(server.http + "/readyz", timeout=5)
            except OSError:  # HTTPError 503, or connection refused
                break
            time.sleep(0.01)
        with self.assertRaises(FactlensError) as cm:
            Client(server.address, retries=1, timeout=10).predict(PROMPT)
        self.assertEqual(cm.exception.code, C.UNAVAILABLE)
        t.join(60)
        self.assertEqual(server.proc.wait(timeout=60), 0, server.logs())
        self.assertEqual(len(out.get("events", [])), 4, server.logs())  # 3 items + aggregate
        self.assertIn('"event":"stopped"', server.logs())
        lines = [json.loads(l) for l in server.logs().splitlines() if l.startswith('{"event":"request"')]
        self.assertEqual(lines[-1]["rpc"], "LocateFacts")
        self.assertEqual(lines[-1]["code"], 0)

    def test_bad_flags_stop_the_server_at_once_naming_the_flag(self):
        for flags, named in [(["--max_concurrent=0"], "--max_concurrent"), (["--max_top_k=-5"], "--max_top_k"),
                             (["--trace_cache_mb=-1"], "--trace_cache_mb"),
                             (["--gpu_memory_fraction=1.5"], "--gpu_memory_fraction"),
                             (["--model", "a=" + DEMO_MODEL + ",device=cuda:7"], "CUDA device"),
                             (["--model", "a=/nowhere", "--model", "a=/elsewhere"], "given twice"),
                             (["--model", "broken"], "--model")]:
            run = subprocess.run([SERVER, "--listen", "127.0.0.1:0", "--http_listen", "", *flags],
                                 capture_output=True, text=True, timeout=60)
            self.assertEqual(run.returncode, 2, (flags, run.stderr))
            self.assertIn(named, run.stderr, flags)

    def test_a_taken_grpc_port_stops_the_second_server(self):
        # gRPC's default SO_REUSEPORT would let a second server share the port and receive some of
        # the first one's connections; the server turns it off and refuses to start.
        first = Server()
        try:
            run = subprocess.run([SERVER, "--listen", first.address, "--http_listen", "", "--threads", "1"],
                                 capture_output=True, text=True, timeout=60)
            self.assertEqual(run.returncode, 2, run.stderr)
            self.assertIn("already in use", run.stderr)
            self.assertIn(first.address, run.stderr)
            self.assertNotIn('"event":"listening"', run.stderr)
        finally:
            self.assertEqual(first.stop(), 0)

    def test_several_models_with_options(self):
        models = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "models")
        server = Server("--model", f"demo={models}/gpt2-facts-tiny",
                        f"--model=llama={models}/llama-facts-tiny,dtype=bfloat16,device=cpu")
        try:
            with Client(server.address) as c:
                served = [(m.name, m.family, m.dtype, m.weights_dtype, m.device, m.ready) for m in c.list_models()]
                # dtype=bfloat16 on a CPU: bfloat16 weight matrices, float32 compute.
                self.assertEqual(served, [("demo", "gpt2", "float32", "float32", "cpu", True),
                                          ("llama", "llama", "float32", "bfloat16", "cpu", True)])
                for model in ("demo", "llama"):  # both demo models answer " Paris"
                    c.model = model
                    self.assertEqual(c.predict(PROMPT, top_k=1).predictions[0].token, " Paris")
        finally:
            self.assertEqual(server.stop(), 0)

    def test_message_size_limit(self):
        server = Server("--max_message_bytes", "2048")
        try:
            with grpc.insecure_channel(server.address) as channel:
                stub = pb_grpc.FactLensStub(channel)
                small = pb.PredictRequest(prompt=pb.Prompt(token_ids=pb.TokenIds(ids=[464, 3139])), top_k=1)
                self.assertEqual(stub.Predict(small, timeout=30).predictions[0].id, 286)  # "The capital" -> " of"
                big = pb.PredictRequest(prompt=pb.Prompt(token_ids=pb.TokenIds(ids=[3139] * 2000)))
                self.assertGreater(big.ByteSize(), 2048)
                with self.assertRaises(grpc.RpcError) as cm:
                    stub.Predict(big, timeout=30)
                self.assertEqual(cm.exception.code(), C.RESOURCE_EXHAUSTED)
        finally:
            self.assertEqual(server.stop(), 0)

    def test_tls(self):
        d = self.enterContext(tempfile.TemporaryDirectory(prefix="factlens-e2e-"))
        key, cert = openssl_certificate(d, "server", "localhost", san="DNS:localhost,IP:127.0.0.1")
        server = Server("--tls_cert", cert, "--tls_key", key)
        try:
            with open(cert, "rb") as f:
                secure = Client(server.address, tls=True, root_certificates=f.read(), retries=1)
            self.assertEqual(secure.list_models()[0].name, "gpt2-facts-tiny")
            with self.assertRaises(FactlensError):
                Client(server.address, retries=1, timeout=3).list_models()
        finally:
            self.assertEqual(server.stop(), 0)

    def test_mtls_requires_a_client_certificate_from_the_ca(self):
        d = self.enterContext(tempfile.TemporaryDirectory(prefix="factlens-e2e-"))
        key, cert = openssl_certificate(d, "server", "localhost", san="DNS:localhost,IP:127.0.0.1")
        ca_key, ca = openssl_certificate(d, "ca", "factlens test CA")
        client_key, client_cert = openssl_certificate(d, "client", "notebook", ca=(ca_key, ca))
        rogue_key, rogue_cert = openssl_certificate(d, "rogue", "notebook")  # self-signed
        server = Server("--tls_cert", cert, "--tls_key", key, "--tls_client_ca", ca)

        def read(path):
            with open(path, "rb") as f:
                return f.read()

        def list_models(private_key=None, certificate_chain=None):
            creds = grpc.ssl_channel_credentials(read(cert), private_key, certificate_chain)
            with grpc.secure_channel(server.address, creds) as channel:
                return pb_grpc.FactLensStub(channel).ListModels(pb.ListModelsRequest(), timeout=5)

        try:
            self.assertEqual(list_models(read(client_key), read(client_cert)).models[0].name, "gpt2-facts-tiny")
            for credentials in [(None, None), (read(rogue_key), read(rogue_cert))]:
                with self.assertRaises(grpc.RpcError) as cm:
                    list_models(*credentials)
                self.assertEqual(cm.exception.code(), C.UNAVAILABLE)  # the handshake fails
        finally:
            self.assertEqual(server.stop(), 0)


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0]] + sys.argv[3:], verbosity=2)
