"""locate_facts of a DataFrame spread over replicas (issue 14), and its dataset-level figures.

Against three real factlens_server replicas on loopback (both demo models) and a fourth as the
single-server reference: 200 facts of the demo models' facts.json, every replica used (their
/metrics), one replica SIGKILLed with a chunk in flight, the reports identical to a single-server
run's (of every other row: the test's time is the number of localizations) and nothing lost or
duplicated (the output file), then a crash's truncated output file resumed without recomputing its
rows. In-process fakes check the chunk / retry bookkeeping (a replica that fails
mid-stream, one that never answers, a non-retryable error) and the output file's rules; hand-made
reports check the figures and the HTML page. Temporary files and servers are removed in every outcome.

Usage: test_dataset.py FACTLENS_SERVER PYTHON_PACKAGE_DIR
"""
import concurrent.futures
import json
import math
import os
import re
import resource
import sys
import tempfile
import threading
import time
import unittest
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from support import MODELS, Server, args, closed_port  # noqa: E402

SERVER_BINARY, _ = args()

import grpc  # noqa: E402
import pandas as pd  # noqa: E402

import factlens  # noqa: E402
from factlens import BatchReport, Client, FactlensError, FactlensWarning, dataset  # noqa: E402
from factlens.v1 import factlens_pb2 as pb  # noqa: E402
from factlens.v1 import factlens_pb2_grpc as pb_grpc  # noqa: E402

# Light LocateFact options: the test's cost is the number of facts times one localization.
LIGHT = {"mode": "APPROXIMATE", "top_ffn_neurons": 5, "top_attention_neurons": 5, "top_tokens": 2,
         "skip_ablation": True}
PER_MODEL = {"llama": 180, "demo": 20}  # facts of each demo model: 200 in all (GPT-2 demo facts cost twice as much)
CHUNK = 8
SERVED = ("--model", f"demo={MODELS}/gpt2-facts-tiny", "--model", f"llama={MODELS}/llama-facts-tiny")


def facts_frame():
    """PER_MODEL facts of each demo model's facts.json: prompt, target, model, relation, target_id; index 0..n-1.
    A target's first token is its target_id (" Lisbon" is two Llama tokens): the runs pass first_token=True."""
    rows = []
    for model, directory in (("llama", "llama-facts-tiny"), ("demo", "gpt2-facts-tiny")):
        with open(os.path.join(MODELS, directory, "facts.json")) as f:
            facts = json.load(f)["facts"][:PER_MODEL[model]]
        rows += [(f["prompt"], f["target"], model, f["relation"], f["target_id"]) for f in facts]
    return pd.DataFrame(rows, columns=["prompt", "target", "model", "relation", "expected_id"])


def counted(server, rpc, metrics=None):
    """factlens_requests_total of one RPC on a server (or in its ``metrics`` text), summed over models and codes."""
    pattern = re.compile(r'^factlens_requests_total\{[^}]*rpc="' + rpc + r'"[^}]*\} (\S+)$', re.M)
    return sum(float(v) for v in pattern.findall(metrics or server.metrics()))


def in_flight(metrics):
    """factlens_requests_in_flight summed over models."""
    return sum(float(v) for v in re.findall(r"^factlens_requests_in_flight\{[^}]*\} (\S+)$", metrics, re.M))


def row_lines(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f.read().splitlines()[1:]]


def same_reports(test, got, expected):
    """Every row of ``expected`` is in ``got`` with the same report message; ``got`` has no failed row."""
    test.assertTrue(set(expected.index) <= set(got.index))
    test.assertEqual(got["error"].notna().sum(), 0, list(got["error"].dropna())[:3])
    for label, b in zip(expected.index, expected["report"]):
        a = got.loc[label, "report"]
        test.assertIsNotNone(a, f"row {label} failed: {got.loc[label, 'error']}")
        test.assertEqual(a.proto, b.proto, f"row {label}: the report differs from the single-server run's")


class ReplicasTest(unittest.TestCase):
    """Three replicas and a reference server, both demo models each."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="factlens-dataset-")
        cls.servers = []
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            cls.servers = list(pool.map(lambda _: Server(SERVER_BINARY, *SERVED), range(4)))
        cls.replicas, cls.reference = cls.servers[:3], cls.servers[3]
        cls.frame = facts_frame()

    @classmethod
    def tearDownClass(cls):
        for s in cls.servers:
            s.stop()
        cls.tmp.cleanup()

    def path(self, name):
        return os.path.join(self.tmp.name, name)

    def test_spread_kill_and_resume(self):
        started = time.monotonic()
        # The single-server reference, in a thread while the replicas run: every other row (a fact costs
        # the same wherever it runs, and the test's time is the number of localizations), so its chunks
        # hold other rows than the spread run's.
        reference = concurrent.futures.ThreadPoolExecutor(1)
        expected_future = reference.submit(lambda: Client(self.reference.address).locate_facts(
            self.frame.iloc[::2], options=LIGHT, chunk_size=CHUNK, progress=False, first_token=True))
        victim = self.replicas[2]
        output = self.path("spread.jsonl")
        # SIGKILL the victim once it has answered a chunk and holds another, while the run goes on.
        seen = {}

        def kill_when_busy():
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                metrics = victim.metrics()
                if counted(victim, "LocateFacts", metrics) >= 1 and in_flight(metrics) > 0:
                    seen["in_flight"] = in_flight(metrics)
                    break
                time.sleep(0.02)
            victim.proc.kill()
            seen["killed"] = time.monotonic()
        killer = threading.Thread(target=kill_when_busy)
        with Client([s.address for s in self.replicas]) as c:
            killer.start()
            got = c.locate_facts(self.frame, options=LIGHT, chunk_size=CHUNK, output=output, progress=False,
                                 first_token=True)
        finished = time.monotonic()
        killer.join()
        self.assertGreater(seen.get("in_flight", 0), 0, "the victim was not killed with a chunk in flight")
        self.assertLess(seen["killed"], finished)
        expected = expected_future.result()
        reference.shutdown()
        spread_s = time.monotonic() - started

        # Every replica answered rows; the victim's were answered before it died.
        servers = got["server"].value_counts()
        self.assertEqual(set(servers.index), {s.address for s in self.replicas}, servers)
        for s in self.replicas[:2]:
            self.assertGreater(counted(s, "LocateFacts"), 0, f"{s.address} was not used (its /metrics)")
        self.assertIsNotNone(victim.proc.poll(), "the victim still runs")
        # Identical to the single-server run, nothing lost: every row has its report.
        same_reports(self, got, expected)
        self.assertTrue((got.loc[expected.index, "server"] == victim.address).any(),
                        "no row the killed replica answered was compared with the reference")
        self.assertTrue(got["error"].isna().all())
        self.assertEqual(list(got["target_id"]), list(self.frame["expected_id"]))
        self.assertEqual(list(got.columns), list(self.frame.columns) + dataset.RESULT_COLUMNS)
        # Nothing duplicated: one line per row in the output file, the replicas' as the frame says.
        lines = row_lines(output)
        self.assertEqual(sorted(line["row"] for line in lines), list(self.frame.index))
        self.assertEqual({line["row"]: line["server"] for line in lines}, dict(got["server"]))

        # A crash: the file cut in the middle of a line. The rerun computes only the missing rows.
        keep = len(self.frame) - 10
        with open(output, "rb") as f:
            data = f.read().splitlines(keepends=True)
        with open(output, "wb") as f:
            f.write(b"".join(data[:1 + keep]) + data[1 + keep][:40])
        survivors = self.replicas[:2]
        before = sum(counted(s, "LocateFacts") for s in survivors)
        missing = self.frame.loc[[line["row"] for line in lines[keep:]]]
        chunks = sum(math.ceil(n / CHUNK) for n in missing.groupby("model").size())
        with Client([s.address for s in survivors]) as c:
            resumed = c.locate_facts(self.frame, options=LIGHT, chunk_size=CHUNK, output=output, progress=False,
                                     first_token=True)
        self.assertEqual(sum(counted(s, "LocateFacts") for s in survivors) - before, chunks,
                         f"the rerun should send only the {len(missing)} missing rows, in {chunks} chunks")
        same_reports(self, resumed, got)
        with open(output, "rb") as f:
            self.assertTrue(f.read().startswith(b"".join(data[:1 + keep])), "the finished rows were rewritten")
        self.assertEqual(sorted(line["row"] for line in row_lines(output)), list(self.frame.index))
        # Run again: nothing left to do, no request at all.
        before = sum(counted(s, "LocateFacts") for s in survivors)
        with Client([s.address for s in survivors]) as c:
            again = c.locate_facts(self.frame, options=LIGHT, output=output, progress=False, first_token=True)
        same_reports(self, again, got)
        self.assertEqual(sum(counted(s, "LocateFacts") for s in survivors), before)
        print(f"{len(self.frame)} facts over 3 replicas (one killed) with a single-server reference: "
              f"{spread_s:.1f} s; the resume: {time.monotonic() - started - spread_s:.1f} s; this process's CPU: "
              f"{sum(resource.getrusage(resource.RUSAGE_SELF)[:2]):.1f} s", file=sys.stderr)

        # The dataset-level figures of the result.
        batch = BatchReport(got)
        counts = batch.neurons_per_layer()
        for model, n in PER_MODEL.items():
            c = counts[counts.model == model]
            self.assertEqual(len(c), 4)  # both demo models have 4 layers
            self.assertEqual(c.ffn_neurons.sum(), n * LIGHT["top_ffn_neurons"])
        shares = batch.relation_shares()
        self.assertEqual(shares.facts.sum(), len(self.frame))
        self.assertEqual(set(shares.relation), set(self.frame.relation))
        self.assertTrue(((shares.attention_share >= 0) & (shares.attention_share <= 1)).all())
        page = batch.to_html(self.path("batch.html"))
        self.assertNotIn("http", page.replace("http-equiv", ""))
        self.assertEqual(page.count("<img"), 2)

    def test_round_robin_name_spreads_calls(self):
        """One gRPC name that resolves to several addresses (ipv4: here, dns:/// in a cluster): round_robin."""
        live = self.replicas[:2] if self.replicas[2].proc.poll() is not None else self.replicas
        before = [counted(s, "Predict") for s in live]
        with Client("ipv4:" + ",".join(s.address for s in live), model="demo") as c:
            for _ in range(10 * len(live)):
                c.predict("The capital of France is", top_k=1)
        after = [counted(s, "Predict") for s in live]
        self.assertTrue(all(a > b for a, b in zip(after, before)), f"Predict counts {before} -> {after}")

    def test_calls_fail_over_to_a_live_replica(self):
        with Client([f"127.0.0.1:{closed_port()}", self.reference.address], model="demo", retries=2) as c:
            for _ in range(3):  # whichever replica a call starts on, it ends on the live one
                self.assertEqual(c.predict("The capital of France is", top_k=1).ids[0], 6342)


# --- in-process fakes: the bookkeeping --------------------------------------------------------------

class FakeReplica(pb_grpc.FactLensServicer):
    """Answers each LocateFacts item with a report whose target id is the prompt's length; ``fail_after``
    items into a stream it aborts with ``code`` (UNAVAILABLE: a replica going away)."""

    def __init__(self, fail_after=None, code=grpc.StatusCode.UNAVAILABLE):
        self.fail_after, self.code, self.items = fail_after, code, []
        self.lock = threading.Lock()

    def ListModels(self, request, context):
        return pb.ListModelsResponse(models=[pb.ModelInfo(name="fake", layers=2, heads=1)])

    def LocateFacts(self, request, context):
        for i, item in enumerate(request.items):
            if self.fail_after is not None and i >= self.fail_after:
                context.abort(self.code, "going away")
            with self.lock:
                self.items.append(item.prompt.text.decode())
            if item.target.text == b"bad":
                yield pb.LocateFactsEvent(item=pb.ItemResult(index=i, error=pb.ItemError(code=3, message="bad")))
                continue
            yield pb.LocateFactsEvent(item=pb.ItemResult(index=i, report=pb.FactReport(
                target=pb.TokenScore(id=len(item.prompt.text)), attention_layer_increase=[0.5, 0.0],
                ffn_layer_increase=[0.0, 1.5], ffn_neurons=[pb.NeuronScore(layer=1, neuron=3)])))
        yield pb.LocateFactsEvent(aggregate=pb.BatchAggregate(facts=len(request.items)))


class Fakes:
    def __init__(self, *servicers):
        self.servers, self.addresses = [], []
        for servicer in servicers:
            server = grpc.server(concurrent.futures.ThreadPoolExecutor(4))
            pb_grpc.add_FactLensServicer_to_server(servicer, server)
            self.addresses.append(f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}")
            server.start()
            self.servers.append(server)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for s in self.servers:
            s.stop(None)


def small_frame(n=20):
    return pd.DataFrame({"prompt": ["x" * (i + 1) for i in range(n)], "target": [" t"] * n},
                        index=[f"r{i}" for i in range(n)])


class BookkeepingTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="factlens-dataset-")
        self.addCleanup(self.tmp.cleanup)

    def test_a_replica_failing_mid_stream_hands_its_rows_to_another(self):
        flaky, good = FakeReplica(fail_after=2), FakeReplica()
        with Fakes(flaky, good) as fakes, Client(fakes.addresses, model="fake") as c:
            got = c.locate_facts(small_frame(), chunk_size=5, concurrency=2, progress=False)
        self.assertEqual(list(got["target_id"]), [i + 1 for i in range(20)])  # each row its own result
        self.assertEqual(got["server"].value_counts().to_dict(),
                         {fakes.addresses[1]: 20 - len(flaky.items), fakes.addresses[0]: len(flaky.items)})
        self.assertTrue(flaky.items, "the flaky replica got no chunk")
        # Nothing answered twice: the good replica never got a row the flaky one had answered.
        self.assertFalse(set(flaky.items) & set(good.items))
        self.assertEqual(len(flaky.items) + len(good.items), 20)

    def test_a_replica_cancelling_mid_stream_hands_its_rows_to_another(self):
        # A replica that gRPC shuts down cancels the streams still open on it: not the client's doing.
        flaky, good = FakeReplica(fail_after=2, code=grpc.StatusCode.CANCELLED), FakeReplica()
        with Fakes(flaky, good) as fakes, Client(fakes.addresses, model="fake") as c:
            got = c.locate_facts(small_frame(), chunk_size=5, concurrency=2, progress=False)
        self.assertEqual(list(got["target_id"]), [i + 1 for i in range(20)])
        self.assertTrue(flaky.items, "the cancelling replica got no chunk")
        self.assertEqual(len(flaky.items) + len(good.items), 20)

    def test_a_dead_replica_is_skipped_and_rows_keep_their_labels(self):
        good = FakeReplica()
        with Fakes(good) as fakes, Client([f"127.0.0.1:{closed_port()}"] + fakes.addresses, model="fake") as c:
            frame = small_frame().sample(frac=1, random_state=3)  # shuffled labels
            got = c.locate_facts(frame, chunk_size=3, progress=False)
        self.assertEqual(list(got.index), list(frame.index))
        self.assertEqual(list(got["target_id"]), [len(p) for p in frame["prompt"]])
        self.assertEqual(set(got["server"]), {fakes.addresses[0]})

    def test_item_errors_are_results_and_other_errors_stop_the_run(self):
        frame = small_frame(6)
        frame.loc["r2", "target"] = "bad"
        output = os.path.join(self.tmp.name, "out.jsonl")
        with Fakes(FakeReplica()) as fakes, Client(fakes.addresses, model="fake") as c:
            got = c.locate_facts(frame, chunk_size=4, output=output, progress=False)
        self.assertEqual(got.loc["r2", "error"], "INVALID_ARGUMENT: bad")
        self.assertIsNone(got.loc["r2", "report"])
        self.assertEqual(got["error"].notna().sum(), 1)
        self.assertEqual(len(BatchReport(got).failures()), 1)
        self.assertIn("INVALID_ARGUMENT: bad", BatchReport(got).to_html())
        # A chunk refused as a whole (not UNAVAILABLE) is not retried: the run raises, finished rows stay.
        refusing = FakeReplica(fail_after=1, code=grpc.StatusCode.RESOURCE_EXHAUSTED)
        output = os.path.join(self.tmp.name, "refused.jsonl")
        with Fakes(refusing) as fakes, Client(fakes.addresses, model="fake") as c:
            refusing_address = fakes.addresses[0]
            with self.assertRaises(FactlensError) as caught:
                c.locate_facts(frame, chunk_size=3, concurrency=1, output=output, progress=False)
        self.assertEqual(caught.exception.code, grpc.StatusCode.RESOURCE_EXHAUSTED)
        self.assertEqual(len(refusing.items), 1)
        self.assertEqual([line["row"] for line in row_lines(output)], ["r0"])
        # The interrupted run resumed: only the rows it had not finished are sent.
        good = FakeReplica()
        with Fakes(good) as fakes, Client(fakes.addresses, model="fake") as c:
            resumed = c.locate_facts(frame, chunk_size=3, output=output, progress=False)
        self.assertEqual(sorted(good.items), sorted(frame.prompt[1:]))
        self.assertEqual(list(resumed["target_id"].fillna(-1)), [1, 2, -1, 4, 5, 6])
        self.assertEqual(resumed.loc["r0", "server"], refusing_address)

    def test_a_replica_that_stays_down_fails_the_run_after_the_attempts(self):
        with Client([f"127.0.0.1:{closed_port()}"], model="fake", retries=2) as c:
            started = time.monotonic()
            with self.assertRaises(factlens.FactlensConnectionError):
                c.locate_facts(small_frame(4), progress=False)
            self.assertLess(time.monotonic() - started, 10)

    def test_the_output_file_rules(self):
        output = os.path.join(self.tmp.name, "out.jsonl")
        frame = small_frame(4)
        fake = FakeReplica()
        with Fakes(fake) as fakes, Client(fakes.addresses, model="fake") as c:
            c.locate_facts(frame, output=output, progress=False)
            with open(output, "rb") as f:
                complete = f.read()
            # A part of the dataset: its rows come from the file, nothing is sent, the file stays whole.
            part = c.locate_facts(frame.iloc[1:3], output=output, progress=False)
            self.assertEqual(list(part.index), ["r1", "r2"])
            self.assertEqual(list(part["target_id"]), [2, 3])
            self.assertEqual(len(fake.items), 4)
            with open(output, "rb") as f:
                self.assertEqual(f.read(), complete)
            # Other options, another fact under a label, a damaged middle line: refused, file untouched.
            with self.assertRaisesRegex(ValueError, "other options"):
                c.locate_facts(frame, options={"top_tokens": 3}, output=output, progress=False)
            other = frame.copy()
            other.loc["r1", "prompt"] = "changed"
            with self.assertRaisesRegex(ValueError, "row 'r1' of another fact"):
                c.locate_facts(other, output=output, progress=False)
            lines = complete.splitlines(keepends=True)
            with open(output, "wb") as f:
                f.write(b"".join(lines[:2]) + b"{oops\n" + b"".join(lines[3:]))
            with self.assertRaisesRegex(ValueError, "line 3 is not a JSON object"):
                c.locate_facts(frame, output=output, progress=False)
            # A truncated header alone (a crash at once) starts afresh.
            with open(output, "wb") as f:
                f.write(lines[0][:10])
            c.locate_facts(frame, output=output, progress=False)
            with open(output, "rb") as f:
                self.assertEqual(len(f.read().splitlines()), 5)
            # Bad frames.
            with self.assertRaisesRegex(ValueError, "lacks the column"):
                c.locate_facts(frame[["prompt"]], progress=False)
            with self.assertRaisesRegex(ValueError, "duplicate labels"):
                c.locate_facts(pd.concat([frame, frame]), progress=False)
            with self.assertRaisesRegex(ValueError, "result column"):
                c.locate_facts(c.locate_facts(frame, progress=False), progress=False)
            # The pair form is unchanged: an iterator of ItemResults, then the aggregate.
            events = list(c.locate_facts([("ab", " t")]))
            self.assertEqual(events[0].report.target.id, 2)
            self.assertIsInstance(events[-1], factlens.results.BatchAggregate)

    def test_report_warnings_name_the_row(self):
        class Warns(FakeReplica):
            def LocateFacts(self, request, context):
                yield pb.LocateFactsEvent(item=pb.ItemResult(index=0, report=pb.FactReport(warnings=["no space"])))

        with Fakes(Warns()) as fakes, Client(fakes.addresses, model="fake") as c:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                c.locate_facts(small_frame(1), progress=False)
        texts = [(str(w.message), w.filename) for w in caught if issubclass(w.category, FactlensWarning)]
        self.assertEqual(texts, [("rows['r0']: no space", os.path.abspath(__file__))])


class FiguresTest(unittest.TestCase):
    def frame(self):
        def report(attention, ffn, ffn_layers, attention_layers):
            return pb.FactReport(attention_layer_increase=attention, ffn_layer_increase=ffn,
                                 ffn_neurons=[pb.NeuronScore(layer=i) for i in ffn_layers],
                                 attention_neurons=[pb.NeuronScore(layer=i, head=0) for i in attention_layers])
        model = pb.ModelInfo(name="m", layers=3, heads=1)
        reports = [report([1, 0, 0], [0, 1, 2], [2, 2], [0]),        # attention share 1/4
                   report([3, -1, 0], [0, 0, 1], [1, 2], [0, 0]),     # 3/4
                   report([-1, 0, 0], [0, 0, -2], [0], [1])]          # no positive increase: left out
        frame = pd.DataFrame({"prompt": ["a", "b", "c", "d"], "target": [" x"] * 4,
                              "relation": ["capital", "capital", "language", "capital"]})
        frame["report"] = [factlens.results.FactReport(r, model) for r in reports] + [None]
        frame["error"] = [None, None, None, "INVALID_ARGUMENT: <b>"]
        frame["server"] = ["s1", "s2", "s1", "s2"]
        return frame

    def test_counts_shares_plots_and_page(self):
        batch = BatchReport(self.frame())
        counts = batch.neurons_per_layer()
        self.assertEqual(list(counts.ffn_neurons), [1, 1, 3])
        self.assertEqual(list(counts.attention_neurons), [3, 1, 0])
        shares = batch.relation_shares().set_index("relation")
        self.assertAlmostEqual(shares.loc["capital", "attention_share"], 0.5)
        self.assertEqual(shares.loc["capital", "facts"], 2)
        self.assertTrue(math.isnan(shares.loc["language", "attention_share"]))
        for fig in (batch.plot_neurons_per_layer(), batch.plot_relation_shares()):
            self.assertIsInstance(fig, factlens.plots.NotebookFigure)
            self.assertTrue(fig._repr_png_().startswith(b"\x89PNG"))
        cell = batch._repr_html_()
        self.assertIn("&lt;b&gt;", cell)  # escaped
        self.assertNotIn("<b>", cell)
        page = batch.to_html()
        self.assertTrue(page.startswith("<!DOCTYPE html>"))
        self.assertIn("most top FFN neurons sit in layer 2 (3 of 5)", page)
        self.assertIn("attention layers give 50 % of the target's positive increase on average over 3 facts", page)
        self.assertEqual(page.count("<img"), 2)


if __name__ == "__main__":
    unittest.main(argv=sys.argv[:1], verbosity=2)
