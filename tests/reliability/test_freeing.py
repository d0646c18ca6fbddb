"""Work that no client waits for any more is freed (issue 13: reliability in numbers).

Usage: test_freeing.py FACTLENS_SERVER CLIENT_PYTHON_DIR [unittest args]

On the demo model with one slot (--max_concurrent 1 --max_queued 2), factlens_requests_in_flight
must return to 0, within a bound, after
  * a client cancels a running LocateFact stream, or a LocateFacts stream;
  * a client process is killed (SIGKILL: its connection closes) while its LocateFact runs;
  * a client cancels a request waiting in the queue;
  * a deadline shorter than the work passes (DEADLINE_EXCEEDED, while running or while queued);
and a request that follows is served. The times are printed (docs/reliability.md quotes them). The
slow request is an exhaustive LocateFact (every neuron evaluated, ablation on): seconds of work.
"""
import os
import signal
import subprocess
import sys
import threading
import time
import unittest

from reliability_common import (CLIENT_DIR, PARIS, PROMPT, UNITTEST_ARGV, Server, grpc, pb, pb_grpc, request_log,
                                requests_counted, seconds_until_in_flight_is, slow_locate)

# How long the server may take to notice, stop the work and release the slot. Cancellation is
# checked between candidate batches of a ranking and between the stages of a localization, which
# are tens of milliseconds apart on the demo model; 5 s leaves room for a machine shared with builds.
FREE_BOUND_S = 5.0
C = grpc.StatusCode


class FreeingTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = Server("--max_concurrent", "1", "--max_queued", "2")
        cls.channel = grpc.insecure_channel(cls.server.address)
        cls.stub = pb_grpc.FactLensStub(cls.channel)
        # How long the slow request takes when nobody cancels it: the work the tests cut short.
        start = time.monotonic()
        cls.full = list(cls.stub.LocateFact(slow_locate(), timeout=120))
        cls.full_s = time.monotonic() - start
        print(f"\n[freeing] an uncancelled exhaustive LocateFact takes {cls.full_s:.2f} s", flush=True)

    @classmethod
    def tearDownClass(cls):
        cls.channel.close()
        assert cls.server.stop() == 0, cls.server.logs()[-3000:]

    def setUp(self):
        self.assertEqual(seconds_until_in_flight_is(self.server, 0, FREE_BOUND_S) is not None, True,
                         "a previous test left work in flight")

    def assertServedAfterwards(self):
        r = self.stub.Predict(pb.PredictRequest(prompt=PROMPT, top_k=1), timeout=30)
        self.assertEqual(r.predictions[0].token, " Paris")
        self.assertIsNotNone(seconds_until_in_flight_is(self.server, 0, FREE_BOUND_S))

    def started_stream(self, method, request):
        """A stream whose first event has arrived (the work is running)."""
        call = method(request, timeout=120)
        next(call)
        self.assertEqual(seconds_until_in_flight_is(self.server, 1, 1.0) is not None, True, "not in flight")
        return call

    def report(self, what, seconds):
        self.assertIsNotNone(seconds, f"{what}: the in-flight gauge did not return to 0 within {FREE_BOUND_S} s")
        print(f"[freeing] {what}: in-flight gauge back to 0 after {1000 * seconds:.0f} ms "
              f"(the uncancelled request takes {self.full_s:.2f} s)", flush=True)
        # Freed by the cancellation, not by the work running to its end.
        self.assertLess(seconds, self.full_s / 2)

    def test_cancelled_locate_fact_stream(self):
        cancelled = requests_counted(self.server, "LocateFact", "CANCELLED")
        call = self.started_stream(self.stub.LocateFact, slow_locate())
        call.cancel()
        self.report("LocateFact stream cancelled", seconds_until_in_flight_is(self.server, 0, FREE_BOUND_S))
        self.assertEqual(requests_counted(self.server, "LocateFact", "CANCELLED"), cancelled + 1)
        self.assertServedAfterwards()

    def test_cancelled_locate_facts_stream(self):
        cancelled = requests_counted(self.server, "LocateFacts", "CANCELLED")
        items = [pb.FactItem(prompt=PROMPT, target=PARIS)] * 3
        request = pb.LocateFactsRequest(items=items, options=pb.LocateOptions(mode=pb.EXHAUSTIVE))
        call = self.started_stream(self.stub.LocateFacts, request)  # the first item's result is in
        call.cancel()
        self.report("LocateFacts stream cancelled after its first item",
                    seconds_until_in_flight_is(self.server, 0, FREE_BOUND_S))
        self.assertEqual(requests_counted(self.server, "LocateFacts", "CANCELLED"), cancelled + 1)
        self.assertServedAfterwards()

    def test_killed_client_process(self):
        # A client that goes away without cancelling: its process is killed, the kernel closes the
        # TCP connection, gRPC cancels the call on the server.
        code = ("import sys; sys.path.insert(0, sys.argv[1]); import grpc\n"
                "from factlens.v1 import factlens_pb2 as pb, factlens_pb2_grpc as pb_grpc\n"
                "stub = pb_grpc.FactLensStub(grpc.insecure_channel(sys.argv[2]))\n"
                "call = stub.LocateFact(pb.LocateFactRequest(prompt=pb.Prompt(text=b'The capital of France is'),\n"
                "    target=pb.Target(text=b' Paris'), options=pb.LocateOptions(mode=pb.EXHAUSTIVE)), timeout=120)\n"
                "next(call); print('started', flush=True)\n"
                "for _ in call: pass\n")
        client = subprocess.Popen([sys.executable, "-c", code, CLIENT_DIR, self.server.address],
                                  stdout=subprocess.PIPE, text=True)
        try:
            self.assertEqual(client.stdout.readline().strip(), "started")
            self.assertIsNotNone(seconds_until_in_flight_is(self.server, 1, 1.0))
            os.kill(client.pid, signal.SIGKILL)
            client.wait(10)
            self.report("client process killed mid-stream", seconds_until_in_flight_is(self.server, 0, FREE_BOUND_S))
        finally:
            if client.poll() is None:
                client.kill()
                client.wait()
            client.stdout.close()
        self.assertServedAfterwards()

    def test_cancelled_while_queued(self):
        running = self.started_stream(self.stub.LocateFact, slow_locate())
        waiting = self.stub.LocateFact(slow_locate(), timeout=120)
        got = {}
        reader = threading.Thread(target=lambda: got.update(events=self._drain(waiting)))
        reader.start()
        try:
            self.assertIsNotNone(seconds_until_in_flight_is(self.server, 2, 2.0), "the second request is not queued")
            waiting.cancel()
            seconds = seconds_until_in_flight_is(self.server, 1, FREE_BOUND_S)
            self.assertIsNotNone(seconds, "the queued request's place was not freed")
            print(f"[freeing] queued LocateFact cancelled: gauge back to 1 after {1000 * seconds:.0f} ms", flush=True)
        finally:
            running.cancel()
            reader.join(30)
        self.assertEqual(got["events"], C.CANCELLED)
        self.report("running LocateFact cancelled next", seconds_until_in_flight_is(self.server, 0, FREE_BOUND_S))
        self.assertServedAfterwards()

    @staticmethod
    def _drain(call):
        try:
            for _ in call:
                pass
            return C.OK
        except grpc.RpcError as e:
            return e.code()

    def test_deadline_shorter_than_the_work(self):
        deadline_s = 0.5
        before = len(request_log(self.server))
        start = time.monotonic()
        with self.assertRaises(grpc.RpcError) as cm:
            list(self.stub.LocateFact(slow_locate(), timeout=deadline_s))
        self.assertEqual(cm.exception.code(), C.DEADLINE_EXCEEDED)
        seconds = seconds_until_in_flight_is(self.server, 0, FREE_BOUND_S)
        since_deadline = time.monotonic() - start - deadline_s
        self.report("deadline of 0.5 s passed while running (DEADLINE_EXCEEDED received, then)", seconds)
        print(f"[freeing] ... that is {1000 * since_deadline:.0f} ms after the deadline itself", flush=True)
        (logged,) = [r for r in request_log(self.server)[before:] if r["rpc"] == "LocateFact"]
        self.assertEqual(logged["code"], C.DEADLINE_EXCEEDED.value[0])
        self.assertLess(logged["queue_wait_ms"], 100, "admitted at once: the deadline passed while running")
        self.assertLess(logged["latency_ms"], 1000 * self.full_s / 2, "the server stopped near the deadline")
        self.assertServedAfterwards()

    def test_deadline_passes_while_queued(self):
        running = self.started_stream(self.stub.LocateFact, slow_locate())
        try:
            start = time.monotonic()
            with self.assertRaises(grpc.RpcError) as cm:
                self.stub.Predict(pb.PredictRequest(prompt=PROMPT, top_k=1), timeout=0.5)
            self.assertEqual(cm.exception.code(), C.DEADLINE_EXCEEDED)
            seconds = seconds_until_in_flight_is(self.server, 1, FREE_BOUND_S)
            self.assertIsNotNone(seconds, "the queued request's place was not freed")
            print(f"[freeing] deadline passed while queued: gauge back to 1 after {1000 * seconds:.0f} ms "
                  f"({1000 * (time.monotonic() - start):.0f} ms after the call)", flush=True)
        finally:
            running.cancel()
        self.assertIsNotNone(seconds_until_in_flight_is(self.server, 0, FREE_BOUND_S))
        self.assertServedAfterwards()


if __name__ == "__main__":
    unittest.main(argv=UNITTEST_ARGV, verbosity=2)
