"""Load and SIGTERM under load (issue 13: reliability in numbers).

Usage: test_load.py FACTLENS_SERVER CLIENT_PYTHON_DIR [unittest args]

The demo model behind a small admission queue (--max_concurrent 1 --max_queued 4), 64 clients
mixing Predict, Rank and LocateFact for ~10 s (tools/loadgen.py): every served answer equals the one
computed sequentially beforehand, no call is lost, every call ends served or refused at admission,
some of each, and the server's own request counter agrees with the clients'. Then SIGTERM while 32
clients are at it: every request the server admitted finishes OK, and the process exits 0.
Prints the figures (docs/reliability.md quotes them).
"""
import sys
import copy
import json
import signal
import threading
import time
import unittest

from reliability_common import UNITTEST_ARGV, Server, grpc, loadgen, pb_grpc, request_log

QUEUE_FLAGS = ("--max_concurrent", "1", "--max_queued", "4")


def print_figures(title, result):
    print(f"\n[{title}] " + json.dumps(result.figures(), sort_keys=True), flush=True)


class LoadTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = Server(*QUEUE_FLAGS)
        cls.requests = loadgen.build_requests(loadgen.demo_facts(3))
        with grpc.insecure_channel(cls.server.address) as channel:
            cls.expected = loadgen.precompute(pb_grpc.FactLensStub(channel), cls.requests)

    @classmethod
    def tearDownClass(cls):
        assert cls.server.stop() == 0, cls.server.logs()[-3000:]

    def test_the_comparison_catches_a_wrong_answer(self):
        # The load test's "zero wrong" means something only if a wrong answer is caught.
        kinds = [r.kind for r in self.requests]
        predict, rank, locate = (self.expected[kinds.index(k)] for k in ("predict", "rank", "locate"))
        self.assertIsNone(loadgen.first_difference(predict, copy.deepcopy(predict)))
        self.assertIsNone(loadgen.first_difference(locate, copy.deepcopy(locate)))
        nudged = copy.deepcopy(predict)
        nudged.predictions[1].score *= 1 + 1e-8
        self.assertIn("predictions[1].score", loadgen.first_difference(predict, nudged))
        within = copy.deepcopy(predict)
        within.predictions[1].score *= 1 + 1e-10
        self.assertIsNone(loadgen.first_difference(predict, within))
        swapped = copy.deepcopy(rank)
        swapped.components[0].component.neuron += 1
        self.assertIn("components[0].component.neuron", loadgen.first_difference(rank, swapped))
        reordered = copy.deepcopy(locate)
        reordered[-1].report.ffn_neurons[0].layer += 1
        self.assertIn("report.ffn_neurons[0].layer", loadgen.first_difference(locate, reordered))
        self.assertIn("events expected", loadgen.first_difference(locate, locate[:-1]))
        missing = copy.deepcopy(locate)
        missing[-1].ClearField("report")
        self.assertIsNotNone(loadgen.first_difference(locate, missing))

    def test_64_clients_nothing_wrong_nothing_lost(self):
        result = loadgen.run_load(self.server.address, self.requests, self.expected, clients=64, seconds=10,
                                  metrics_url=self.server.http, backoff=0.05)
        print_figures("load N=64 per-client channels, --max_concurrent 1 --max_queued 4", result)
        f = result.figures()
        self.assertEqual(f["wrong"], 0, f["wrong_examples"])
        self.assertEqual(f["lost"], 0)
        self.assertEqual(f["hung_clients"], 0)
        self.assertEqual(f["error_kinds"], [], "every call ends served or refused at admission")
        self.assertGreater(f["served"], 0)
        self.assertGreater(f["refused"], 0, "64 clients on 1 + 4 places: some must be refused")
        self.assertTrue(f["server_agrees"], f["server_mismatch"])
        self.assertIsNotNone(result.in_flight_zero_s, "the in-flight gauge never returned to 0")
        # Refusals are immediate, not queued: far below a served request.
        self.assertLess(f["refusal_p99_ms"], 1000)

    def test_one_shared_channel(self):
        result = loadgen.run_load(self.server.address, self.requests, self.expected, clients=16, seconds=3,
                                  channel="shared", metrics_url=self.server.http, backoff=0.05)
        print_figures("load N=16 one shared channel", result)
        f = result.figures()
        self.assertEqual((f["wrong"], f["lost"], f["hung_clients"], f["error_kinds"]), (0, 0, 0, []),
                         f["wrong_examples"])
        self.assertGreater(f["served"], 0)
        self.assertTrue(f["server_agrees"], f["server_mismatch"])


class DrainTest(unittest.TestCase):
    """One SIGTERM while 32 clients keep calling (and keep calling until the process is gone)."""

    @classmethod
    def setUpClass(cls):
        server = Server(*QUEUE_FLAGS, "--drain_seconds", "60")
        cls.requests = loadgen.build_requests(loadgen.demo_facts(2))
        with grpc.insecure_channel(server.address) as channel:
            expected = loadgen.precompute(pb_grpc.FactLensStub(channel), cls.requests)
        out, sigterm = {}, threading.Event()

        def load():
            out["result"] = loadgen.run_load(server.address, cls.requests, expected, clients=32, seconds=90,
                                             mark_at=sigterm, record_events=True, backoff=0.05,
                                             should_stop=lambda: server.proc.poll() is not None)

        thread = threading.Thread(target=load)
        thread.start()
        try:
            time.sleep(4)  # under load: the queue full, refusals coming back
            cls.sent = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            sigterm.set()
            cls.exit_code = server.proc.wait(timeout=90)
            cls.exited = time.monotonic() - cls.sent
        finally:
            thread.join(200)
            cls.stop_code = server.stop()
        cls.server, cls.result = server, out["result"]
        cls.log = request_log(server)
        events = cls.result.tally.events
        cls.running_at_sigterm = [e for e in events if e[0] < cls.sent < e[1]]
        cls.drained_ok = [e for e in cls.running_at_sigterm if e[3] == "OK"]
        print_figures("SIGTERM under load, N=32", cls.result)
        print(f"[SIGTERM] exit {cls.exit_code} {cls.exited:.2f} s after SIGTERM; {len(cls.running_at_sigterm)} calls "
              f"in flight at SIGTERM, {len(cls.drained_ok)} of them served after it; codes of calls ending after "
              f"SIGTERM: {sorted(set(e[3] for e in events if e[1] > cls.sent))}", flush=True)

    def test_sigterm_under_load_drains_every_admitted_request_and_exits_zero(self):
        self.assertEqual(self.exit_code, 0, self.server.logs()[-3000:])
        self.assertEqual(self.stop_code, 0)
        self.assertIn('"event":"drained","complete":true', self.server.logs())
        f = self.result.figures()
        self.assertEqual((f["wrong"], f["lost"], f["hung_clients"]), (0, 0, 0), f["wrong_examples"])
        self.assertGreater(len(self.drained_ok), 0, "no request was admitted and running when SIGTERM came")
        # Server side: admitted = not refused at admission (RESOURCE_EXHAUSTED: queue full;
        # UNAVAILABLE: draining). Every admitted request ended OK...
        refused_codes = {grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], grpc.StatusCode.UNAVAILABLE.value[0]}
        admitted = [r for r in self.log if r["code"] not in refused_codes and r["rpc"] != "ListModels"]
        self.assertEqual([r for r in admitted if r["code"] != 0], [], "admitted requests that did not end OK")
        # ... and reached its client: the server's OKs during the load equal the clients' served calls
        # (the first answers in the log are the sequential precomputation).
        self.assertEqual(len(admitted) - len(self.requests), f["served"])

    def test_calls_not_admitted_during_shutdown_get_unavailable(self):
        # Calls the draining server does not admit are UNAVAILABLE (retryable elsewhere) or refused
        # at admission (queue full). Known limit (docs/reliability.md): a call that reaches gRPC
        # after the drain completed, while grpc::Server::Shutdown runs, is cancelled by gRPC before
        # any handler sees it, so CANCELLED is allowed for calls the server never logged, and for
        # no call it did (a handled call is never cancelled by the shutdown).
        unexpected, cancelled = [], []
        for start, end, kind, code in self.result.tally.events:
            call = (round(start - self.sent, 3), round(end - self.sent, 3), kind, code)
            if code == "CANCELLED":
                cancelled.append(call)
            elif code not in ("OK", "UNAVAILABLE", "RESOURCE_EXHAUSTED"):
                unexpected.append(call)
        print(f"calls cancelled by gRPC's shutdown before reaching a handler: {len(cancelled)}", file=sys.stderr)
        self.assertEqual(unexpected, [],
                         f"calls (start s, end s after SIGTERM, kind, code) neither served nor refused; server exited "
                         f"{self.exited:.3f} s after SIGTERM")
        self.assertEqual([r for r in self.log if r["code"] == 1], [], "handled calls that ended CANCELLED")

if __name__ == "__main__":
    unittest.main(argv=UNITTEST_ARGV, verbosity=2)
