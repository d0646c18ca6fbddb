"""Shared by the reliability tests (issue 13): paths, the server under test, the in-flight gauge.

Every test script takes FACTLENS_SERVER CLIENT_PYTHON_DIR as its first two arguments (like
tests/e2e/test_server_e2e.py); the rest go to unittest.
"""
import json
import os
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.normpath(os.path.join(HERE, "..", ".."))
DEMO_MODEL = os.path.join(SOURCE, "models", "gpt2-facts-tiny")
SERVER, CLIENT_DIR = sys.argv[1], sys.argv[2]
UNITTEST_ARGV = [sys.argv[0]] + sys.argv[3:]
for path in (os.path.join(SOURCE, "tools"), os.path.join(SOURCE, "tests", "python"), CLIENT_DIR):
    sys.path.insert(0, path)

import grpc  # noqa: E402

import loadgen  # noqa: E402  (tools/loadgen.py)
from factlens.v1 import factlens_pb2 as pb  # noqa: E402
from factlens.v1 import factlens_pb2_grpc as pb_grpc  # noqa: E402
from server_process import ServerProcess  # noqa: E402

PROMPT = pb.Prompt(text=b"The capital of France is")
PARIS = pb.Target(text=b" Paris")
MODEL = "gpt2-facts-tiny"


def Server(*flags):
    """factlens_server on free loopback ports, one libtorch thread (tests/python/server_process.py)."""
    return ServerProcess(SERVER, *flags)


def in_flight(server):
    """factlens_requests_in_flight of the demo model (0 before its first request)."""
    return loadgen.in_flight(loadgen.scrape(server.http))


def seconds_until_in_flight_is(server, value, bound_s):
    """Seconds until the gauge reads `value` (polled every 10 ms), or None after bound_s."""
    start = time.monotonic()
    while True:
        if in_flight(server) == value:
            return time.monotonic() - start
        if time.monotonic() - start > bound_s:
            return None
        time.sleep(0.01)


def requests_counted(server, rpc, code):
    return loadgen.requests_by_code(loadgen.scrape(server.http)).get((rpc, code), 0)


def request_log(server):
    """The server's per-request JSON lines (rpc, model, code, latency, queue wait, peer)."""
    return [json.loads(line) for line in server.logs().splitlines() if line.startswith('{"event":"request"')]


def ready(server):
    try:
        return urllib.request.urlopen(server.http + "/readyz", timeout=5).status == 200
    except OSError:
        return False


# 61 tokens of the demo model's 64 positions: attention neurons and head×positions grow with them.
LONG_PROMPT = pb.Prompt(text=b"The capital of France is Paris. " * 8 + b"The capital of France is")


def slow_locate(model=""):
    """A LocateFact that takes seconds on the demo model (a long prompt, every neuron evaluated,
    ablation on)."""
    return pb.LocateFactRequest(model=model, prompt=LONG_PROMPT, target=PARIS,
                                options=pb.LocateOptions(mode=pb.EXHAUSTIVE))
