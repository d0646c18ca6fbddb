#!/usr/bin/env python3
"""Load generator for factlens_server: N concurrent clients, every answer checked (issue 13).

    tools/loadgen.py --server build/server/factlens_server --quick
    tools/loadgen.py --server build/server/factlens_server --clients 1,8,32,64 --seconds 150 \
        --server_flags="--max_concurrent 2 --max_queued 16"
    tools/loadgen.py --server build/server/factlens_server --rss --seconds 240
    tools/loadgen.py --address 127.0.0.1:50051 --metrics http://127.0.0.1:9090 --clients 8

What it does:
  * builds a small set of requests: for each of --facts demo facts (prompt, target), a Predict
    (top_k 5), a Rank (FFN_NEURON, top_k 5, exact) and a LocateFact (5 FFN and 5 attention neurons,
    3 tokens, ablation on) -- the kinds named by --mix;
  * computes the expected answer of every request with one sequential call on an idle server (the
    results are float64 and deterministic for a server);
  * runs N client threads for --seconds, each its own gRPC channel with its own connection
    (--channel per-client, the default: grpc.use_local_subchannel_pool, so N TCP connections) or one
    channel shared by all (--channel shared: one connection, N concurrent HTTP/2 streams); each
    thread picks requests at random (seeded), calls with a --deadline (after a refusal it waits
    --backoff s, as the API asks of clients), and ends every call as
      served    OK, and the response is compared with the expected one: ids, ranks, strings and
                every integer exactly, every float within 1e-9 relative (|a-b| <= 1e-9 max(|a|,|b|));
                a LocateFact stream's every event (progress, then the report);
      refused   RESOURCE_EXHAUSTED from the model's admission queue ("queue is full");
      error     anything else, counted by status code and message;
    lost = issued - (served + refused + errors) must be 0 (a thread that never returns counts too);
  * with the server's /metrics (--server, or --metrics), the server's own count of requests by RPC
    and code over the run must equal the client's (nothing answered that the server did not count,
    nothing counted that no client saw), and factlens_requests_in_flight must return to 0 after it;
  * --rss: samples the server's VmRSS (/proc/PID/status; the server exports no process-memory
    metric) every --rss_interval s during the run; after --warmup (default a fifth of the run) the
    mean of the last quarter of the samples must be within 5% of the mean of the first quarter.

Prints throughput, p50/p99 latency of served requests (and of refusals), served / refused / errors
/ wrong / lost per kind. Exit status 0 when nothing was wrong, lost or unexpected (and the RSS stayed
flat), 1 otherwise, 2 for bad arguments. --json FILE writes every figure.
"""
import argparse
import glob
import json
import os
import random
import re
import shlex
import sys
import threading
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_MODEL = os.path.join(REPO, "models", "gpt2-facts-tiny")
REL_TOL = 1e-9
KINDS = ("predict", "rank", "locate")
QUEUE_FULL = "queue is full"


def _stubs():
    """(grpc, factlens_pb2, factlens_pb2_grpc): imported late, once the caller has put the staged
    client package (build/python) on sys.path."""
    import grpc
    from factlens.v1 import factlens_pb2, factlens_pb2_grpc
    return grpc, factlens_pb2, factlens_pb2_grpc


# --- requests and their expected answers ---------------------------------------------------------
def demo_facts(count, model_dir=DEMO_MODEL):
    """The first `count` facts of the demo model's facts.json, as (prompt, target)."""
    with open(os.path.join(model_dir, "facts.json")) as f:
        facts = [x for x in json.load(f)["facts"] if x.get("argmax_ok", True)]
    return [(x["prompt"], x["target"]) for x in facts[:count]]


class Request:
    """One request of the mix: kind, the RPC's name, the request message, whether it streams."""

    def __init__(self, kind, rpc, message, streaming, label):
        self.kind, self.rpc, self.message, self.streaming, self.label = kind, rpc, message, streaming, label

    def call(self, stub, timeout):
        """The response (a list of events for a stream). Raises grpc.RpcError."""
        method = getattr(stub, self.rpc)
        if self.streaming:
            return list(method(self.message, timeout=timeout))
        return method(self.message, timeout=timeout)


def build_requests(facts, kinds=KINDS, model=""):
    _, pb, _ = _stubs()
    small = pb.LocateOptions(top_ffn_neurons=5, top_attention_neurons=5, top_tokens=3)
    requests = []
    for prompt, target in facts:
        p, t = pb.Prompt(text=prompt.encode()), pb.Target(text=target.encode())
        label = f"{prompt!r} -> {target!r}"
        for kind in kinds:
            if kind == "predict":
                requests.append(Request(kind, "Predict", pb.PredictRequest(model=model, prompt=p, top_k=5), False, label))
            elif kind == "rank":
                requests.append(Request(kind, "Rank", pb.RankRequest(model=model, prompt=p, target=t, top_k=5,
                                                                     level=pb.RankRequest.FFN_NEURON), False, label))
            elif kind == "locate":
                requests.append(Request(kind, "LocateFact", pb.LocateFactRequest(model=model, prompt=p, target=t,
                                                                                  options=small), True, label))
            else:
                raise ValueError(f"unknown request kind {kind!r} (known: {', '.join(KINDS)})")
    return requests


def first_difference(expected, actual, path="response"):
    """None when `actual` equals `expected` (floats within REL_TOL relative, everything else
    exactly), else a description of the first difference. Takes messages or lists of messages."""
    if isinstance(expected, list):
        if not isinstance(actual, list) or len(actual) != len(expected):
            return f"{path}: {len(expected)} events expected, {len(actual)} received"
        for i, (e, a) in enumerate(zip(expected, actual)):
            d = first_difference(e, a, f"{path}[{i}]")
            if d:
                return d
        return None
    if type(expected) is not type(actual):
        return f"{path}: {type(expected).__name__} expected, {type(actual).__name__} received"
    from google.protobuf.descriptor import FieldDescriptor as F
    for field in expected.DESCRIPTOR.fields:
        name, where = field.name, f"{path}.{field.name}"
        e, a = getattr(expected, name), getattr(actual, name)
        if field.type == F.TYPE_MESSAGE and field.label != F.LABEL_REPEATED:
            if expected.HasField(name) != actual.HasField(name):
                return f"{where}: present {expected.HasField(name)} expected, {actual.HasField(name)} received"
            if expected.HasField(name):
                d = first_difference(e, a, where)
                if d:
                    return d
            continue
        if field.label == F.LABEL_REPEATED:
            if len(e) != len(a):
                return f"{where}: {len(e)} values expected, {len(a)} received"
            pairs = list(enumerate(zip(e, a)))
        else:
            if field.containing_oneof is not None or field.has_presence:
                if expected.HasField(name) != actual.HasField(name):
                    return f"{where}: present {expected.HasField(name)} expected, {actual.HasField(name)} received"
            pairs = [(None, (e, a))]
        for i, (x, y) in pairs:
            at = where if i is None else f"{where}[{i}]"
            if field.type == F.TYPE_MESSAGE:
                d = first_difference(x, y, at)
                if d:
                    return d
            elif field.type in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
                if not (x == y or abs(x - y) <= REL_TOL * max(abs(x), abs(y))):
                    return f"{at}: {x!r} expected, {y!r} received (relative difference {abs(x - y) / max(abs(x), abs(y)):.3g})"
            elif x != y:
                return f"{at}: {x!r} expected, {y!r} received"
    return None


def precompute(stub, requests, timeout=120):
    """The expected answer of every request: one sequential call each."""
    return [r.call(stub, timeout) for r in requests]


# --- the server's metrics ------------------------------------------------------------------------
_SAMPLE = re.compile(r'^(factlens_[a-z_]+)\{([^}]*)\} (\S+)$')


def scrape(metrics_url):
    """{(family, frozenset(labels)): value} of the server's /metrics (URL of the endpoint's base)."""
    text = urllib.request.urlopen(metrics_url.rstrip("/") + "/metrics", timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m:
            labels = frozenset(tuple(kv.split("=", 1)) for kv in re.findall(r'[a-z_]+="[^"]*"', m.group(2)))
            out[(m.group(1), frozenset((k, v.strip('"')) for k, v in labels))] = float(m.group(3))
    return out


def requests_by_code(samples):
    """{(rpc, code): count} of factlens_requests_total."""
    out = {}
    for (family, labels), value in samples.items():
        if family == "factlens_requests_total":
            d = dict(labels)
            out[(d["rpc"], d["code"])] = out.get((d["rpc"], d["code"]), 0) + value
    return out


def in_flight(samples):
    return sum(v for (family, _), v in samples.items() if family == "factlens_requests_in_flight")


def wait_in_flight_zero(metrics_url, bound_s=10.0):
    """Seconds until factlens_requests_in_flight (all models) reads 0, or None after bound_s."""
    start = time.monotonic()
    while True:
        if in_flight(scrape(metrics_url)) == 0:
            return time.monotonic() - start
        if time.monotonic() - start > bound_s:
            return None
        time.sleep(0.01)


def rss_kib(pid):
    """The process's resident set size in KiB (VmRSS of /proc/PID/status), or None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


# --- the load ------------------------------------------------------------------------------------
def percentile(values, q):
    """Nearest-rank percentile (q in [0, 100]) of `values`, None when empty."""
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(-(-q * len(s) // 100)) - 1))]


class Tally:
    """What one client thread saw; merged at the end."""

    def __init__(self):
        self.issued = {k: 0 for k in KINDS}
        self.served = {k: 0 for k in KINDS}
        self.refused = {k: 0 for k in KINDS}
        self.wrong = {k: 0 for k in KINDS}
        self.errors = {}           # (kind, code name, message) -> count
        self.by_rpc_code = {}      # (rpc, code name) -> count, for the server's counters
        self.latency = {k: [] for k in KINDS}   # served, seconds
        self.refusal_latency = []
        self.wrong_examples = []
        self.served_after = 0      # served calls issued after `mark` (see run_load's mark_at)
        self.events = []           # (start, end, kind, code name) when record_events

    def merge(self, other):
        for k in KINDS:
            for name in ("issued", "served", "refused", "wrong"):
                getattr(self, name)[k] += getattr(other, name)[k]
            self.latency[k] += other.latency[k]
        for src, dst in ((other.errors, self.errors), (other.by_rpc_code, self.by_rpc_code)):
            for key, n in src.items():
                dst[key] = dst.get(key, 0) + n
        self.refusal_latency += other.refusal_latency
        self.wrong_examples += other.wrong_examples
        self.served_after += other.served_after
        self.events += other.events


class LoadResult:
    def __init__(self, clients, seconds, channel, tally, finished_threads, wall):
        self.clients, self.seconds, self.channel, self.tally = clients, seconds, channel, tally
        self.finished_threads, self.wall = finished_threads, wall
        self.server_counts = None   # {(rpc, code): delta} when /metrics was read
        self.server_mismatch = None
        self.in_flight_zero_s = None
        self.rss = None             # dict from rss_flatness

    @property
    def issued(self):
        return sum(self.tally.issued.values())

    @property
    def served(self):
        return sum(self.tally.served.values())

    @property
    def refused(self):
        return sum(self.tally.refused.values())

    @property
    def wrong(self):
        return sum(self.tally.wrong.values())

    @property
    def error_count(self):
        return sum(self.tally.errors.values())

    @property
    def lost(self):
        # Calls issued that ended in none of the outcomes (served includes the wrong ones).
        return self.issued - (self.served + self.refused + self.error_count)

    @property
    def hung_clients(self):
        return self.clients - self.finished_threads

    def figures(self):
        t = self.tally
        all_ok = [x for k in KINDS for x in t.latency[k]]
        ms = lambda v: None if v is None else round(v * 1000, 1)  # noqa: E731
        out = {
            "clients": self.clients, "seconds": round(self.wall, 2), "channel": self.channel,
            "issued": self.issued, "served": self.served, "refused": self.refused, "errors": self.error_count,
            "wrong": self.wrong, "lost": self.lost, "hung_clients": self.hung_clients,
            "served_per_s": round(self.served / self.wall, 2) if self.wall else None,
            "p50_ms": ms(percentile(all_ok, 50)), "p99_ms": ms(percentile(all_ok, 99)),
            "refusal_p50_ms": ms(percentile(t.refusal_latency, 50)),
            "refusal_p99_ms": ms(percentile(t.refusal_latency, 99)),
            "per_kind": {k: {"issued": t.issued[k], "served": t.served[k], "refused": t.refused[k], "wrong": t.wrong[k],
                             "p50_ms": ms(percentile(t.latency[k], 50)), "p99_ms": ms(percentile(t.latency[k], 99))}
                         for k in KINDS if t.issued[k]},
            "error_kinds": [{"kind": k, "code": c, "message": m, "count": n} for (k, c, m), n in sorted(t.errors.items())],
            "wrong_examples": t.wrong_examples[:5],
        }
        if self.server_counts is not None:
            out["server_agrees"] = not self.server_mismatch
            out["server_mismatch"] = self.server_mismatch
        if self.in_flight_zero_s is not None:
            out["in_flight_zero_s"] = round(self.in_flight_zero_s, 3)
        if self.rss is not None:
            out["rss"] = self.rss
        return out

    def ok(self, allow_codes=()):
        """Nothing wrong, nothing lost, no error other than the codes allowed, server agrees."""
        unexpected = [e for e in self.tally.errors if e[1] not in allow_codes]
        return (self.wrong == 0 and self.lost == 0 and self.hung_clients == 0 and not unexpected
                and not self.server_mismatch
                and (self.rss is None or self.rss["flat"] or self.rss.get("judged") is False))


def run_load(address, requests, expected, clients, seconds, channel="per-client", deadline=60.0, seed=1,
             metrics_url=None, mark_at=None, record_events=False, should_stop=None, backoff=0.0):
    """N client threads against `address` for `seconds`. `mark_at` (a threading.Event): served
    calls issued after it is set are counted in tally.served_after. `should_stop` (a callable):
    threads stop issuing once it returns True (the run still lasts at most `seconds`). `backoff`:
    seconds a client waits after a refusal before its next call, as the API asks of clients."""
    grpc, _, pb_grpc = _stubs()
    before = requests_by_code(scrape(metrics_url)) if metrics_url else None
    shared = grpc.insecure_channel(address) if channel == "shared" else None
    tallies = [Tally() for _ in range(clients)]
    finished = [False] * clients
    start = time.monotonic()
    end = start + seconds
    go = threading.Event()

    def client(i):
        tally, rng = tallies[i], random.Random(seed * 1000003 + i)
        own = None if shared else grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
        stub = pb_grpc.FactLensStub(shared or own)
        go.wait()
        try:
            while time.monotonic() < end and not (should_stop and should_stop()):
                j = rng.randrange(len(requests))
                r = requests[j]
                after_mark = mark_at is not None and mark_at.is_set()
                tally.issued[r.kind] += 1
                t0 = time.monotonic()
                try:
                    response = r.call(stub, deadline)
                    code, message = "OK", ""
                except grpc.RpcError as e:
                    code = e.code().name if e.code() else "UNKNOWN"
                    message = e.details() or ""
                except Exception as e:  # a client-side failure is an error, never lost
                    code, message = "CLIENT_EXCEPTION", f"{type(e).__name__}: {e}"
                t1 = time.monotonic()
                tally.by_rpc_code[(r.rpc, code)] = tally.by_rpc_code.get((r.rpc, code), 0) + 1
                if record_events:
                    tally.events.append((t0, t1, r.kind, code))
                if code == "OK":
                    tally.served[r.kind] += 1
                    tally.latency[r.kind].append(t1 - t0)
                    tally.served_after += after_mark
                    diff = first_difference(expected[j], response)
                    if diff:
                        tally.wrong[r.kind] += 1
                        tally.wrong_examples.append(f"{r.rpc} {r.label}: {diff}")
                elif code == "RESOURCE_EXHAUSTED" and QUEUE_FULL in message:
                    tally.refused[r.kind] += 1
                    tally.refusal_latency.append(t1 - t0)
                    if backoff:
                        time.sleep(backoff)
                else:
                    # Messages are grouped without their numbers (queue lengths, ports, times).
                    key = (r.kind, code, re.sub(r"\d+", "N", message)[:160])
                    tally.errors[key] = tally.errors.get(key, 0) + 1
        finally:
            if own is not None:
                own.close()
            finished[i] = True

    threads = [threading.Thread(target=client, args=(i,), daemon=True, name=f"loadgen-{i}") for i in range(clients)]
    for t in threads:
        t.start()
    go.set()
    for t in threads:
        t.join(max(0.0, end - time.monotonic()) + deadline + 30)
    wall = time.monotonic() - start
    if shared is not None:
        shared.close()
    total = Tally()
    for t in tallies:
        total.merge(t)
    result = LoadResult(clients, seconds, channel, total, sum(finished), wall)
    if metrics_url:
        result.in_flight_zero_s = wait_in_flight_zero(metrics_url)
        after = requests_by_code(scrape(metrics_url))
        result.server_counts = {k: after.get(k, 0) - before.get(k, 0) for k in set(after) | set(before)
                                if after.get(k, 0) != before.get(k, 0)}
        mismatch = {}
        for key in set(result.server_counts) | set(total.by_rpc_code):
            s, c = result.server_counts.get(key, 0), total.by_rpc_code.get(key, 0)
            if s != c:
                mismatch[f"{key[0]} {key[1]}"] = {"server": s, "clients": c}
        result.server_mismatch = mismatch
        if result.in_flight_zero_s is None:
            result.server_mismatch["in_flight"] = "factlens_requests_in_flight did not return to 0 within 10 s"
    return result


def rss_flatness(samples, warmup_s, limit=0.05):
    """samples: [(seconds since start, KiB)]. Drops the first warmup_s; compares the means of the
    first and last quarter of the rest."""
    kept = [kib for t, kib in samples if t >= warmup_s and kib is not None]
    if len(kept) < 8:
        return {"flat": False, "why": f"only {len(kept)} samples after the warm-up", "samples": len(kept)}
    q = len(kept) // 4
    first, last = sum(kept[:q]) / q, sum(kept[-q:]) / q
    growth = last / first - 1
    return {"flat": growth < limit, "growth_pct": round(100 * growth, 2), "first_quarter_mib": round(first / 1024, 1),
            "last_quarter_mib": round(last / 1024, 1), "min_mib": round(min(kept) / 1024, 1),
            "max_mib": round(max(kept) / 1024, 1), "samples": len(kept), "warmup_s": warmup_s,
            "start_mib": round(samples[0][1] / 1024, 1) if samples and samples[0][1] else None}


class RssSampler(threading.Thread):
    def __init__(self, pid, interval):
        super().__init__(daemon=True)
        self.pid, self.interval, self.samples, self.stop = pid, interval, [], threading.Event()
        self.t0 = time.monotonic()

    def run(self):
        while not self.stop.is_set():
            self.samples.append((time.monotonic() - self.t0, rss_kib(self.pid)))
            self.stop.wait(self.interval)


# --- command line --------------------------------------------------------------------------------
def _client_dir(explicit):
    if explicit:
        return explicit
    for candidate in [os.path.join(REPO, "build", "python")] + sorted(glob.glob(os.path.join(REPO, "build*", "python"))):
        if os.path.isdir(os.path.join(candidate, "factlens", "v1")):
            return candidate
    return os.path.join(REPO, "build", "python")


def _print_result(r, out):
    f = r.figures()
    p = lambda v: "-" if v is None else v  # noqa: E731
    print(f"N={f['clients']:>3} ({f['channel']} channels) {f['seconds']:>7.1f} s: issued {f['issued']}, "
          f"served {f['served']} ({f['served_per_s']}/s), refused {f['refused']}, errors {f['errors']}, "
          f"wrong {f['wrong']}, lost {f['lost']}; served p50 {p(f['p50_ms'])} ms, p99 {p(f['p99_ms'])} ms; "
          f"refusal p50 {p(f['refusal_p50_ms'])} ms, p99 {p(f['refusal_p99_ms'])} ms", file=out)
    for kind, k in f["per_kind"].items():
        print(f"    {kind:<7} issued {k['issued']:>6} served {k['served']:>6} refused {k['refused']:>6} "
              f"wrong {k['wrong']} p50 {p(k['p50_ms'])} ms p99 {p(k['p99_ms'])} ms", file=out)
    for e in f["error_kinds"]:
        print(f"    error: {e['count']} x {e['kind']} {e['code']}: {e['message']}", file=out)
    for w in f["wrong_examples"]:
        print(f"    WRONG: {w}", file=out)
    if "server_agrees" in f:
        print(f"    server's factlens_requests_total agrees with the clients: {f['server_agrees']}"
              + ("" if f["server_agrees"] else f" {f['server_mismatch']}")
              + (f"; in-flight gauge 0 after {f['in_flight_zero_s']} s" if "in_flight_zero_s" in f else ""), file=out)
    if "rss" in f:
        print(f"    RSS: {f['rss']}", file=out)
    out.flush()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] + " See the module docstring (--help shows it all).",
                                 epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    where = ap.add_mutually_exclusive_group()
    where.add_argument("--server", help="factlens_server binary to start on free loopback ports "
                                        "(default: build/server/factlens_server when no --address)")
    where.add_argument("--address", help="a running server's gRPC host:port")
    ap.add_argument("--server_flags", default="", help="extra flags for the started server, one string "
                                                       "(e.g. \"--max_concurrent 2 --max_queued 16 --threads 2\")")
    ap.add_argument("--metrics", help="with --address: the server's HTTP base URL (http://host:9090)")
    ap.add_argument("--pid", type=int, help="with --address and --rss: the server's process id")
    ap.add_argument("--model", default="", help="model name in the requests (default: the server's only one)")
    ap.add_argument("--model_dir", default=DEMO_MODEL, help="directory whose facts.json gives the prompts")
    ap.add_argument("--facts", type=int, help="facts used, each giving one request of every kind (default 4; --quick: 2)")
    ap.add_argument("--mix", default=",".join(KINDS), help="request kinds, comma-separated, of " + ", ".join(KINDS))
    ap.add_argument("--clients", default="8", help="concurrent clients; a comma-separated list runs each in turn")
    ap.add_argument("--seconds", type=float, default=30, help="duration of each run")
    ap.add_argument("--channel", choices=("per-client", "shared"), default="per-client")
    ap.add_argument("--deadline", type=float, default=60, help="per-call deadline, seconds")
    ap.add_argument("--backoff", type=float, default=0.05, help="seconds a client waits after a refusal")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--rss", action="store_true", help="sample the server's RSS; fail on >= 5%% growth")
    ap.add_argument("--rss_interval", type=float, default=1.0)
    ap.add_argument("--warmup", type=float, help="seconds of the RSS run not compared (default: a fifth)")
    ap.add_argument("--quick", action="store_true", help="2 facts, 4 clients for 3 s (with --rss: 16 s, the RSS "
                                                         "reported but not judged: too short); a smoke run")
    ap.add_argument("--client_dir", help="the staged Python package (default: build/python)")
    ap.add_argument("--json", help="write the figures to this file")
    args = ap.parse_args(argv)
    if args.quick:
        args.clients, args.seconds = "4", (16 if args.rss else 3)
    if args.facts is None:
        args.facts = 2 if args.quick else 4
    try:
        counts = [int(n) for n in args.clients.split(",")]
        kinds = [k.strip() for k in args.mix.split(",") if k.strip()]
        assert all(n > 0 for n in counts) and kinds and all(k in KINDS for k in kinds)
    except (ValueError, AssertionError):
        ap.error("--clients takes positive integers, --mix kinds of " + ", ".join(KINDS))
    if args.address and args.rss and not args.pid:
        ap.error("--rss with --address needs --pid")

    sys.path.insert(0, _client_dir(args.client_dir))
    sys.path.insert(0, os.path.join(REPO, "tests", "python"))
    grpc, pb, pb_grpc = _stubs()

    server = None
    if args.address:
        address, metrics_url, pid = args.address, args.metrics, args.pid
    else:
        from server_process import ServerProcess
        binary = args.server or os.path.join(REPO, "build", "server", "factlens_server")
        server = ServerProcess(binary, "--listen", "127.0.0.1:0", "--http_listen", "127.0.0.1:0",
                               *shlex.split(args.server_flags), default_flags=False)
        address, metrics_url, pid = server.address, server.http, server.proc.pid
    status, results = 0, []
    try:
        requests = build_requests(demo_facts(args.facts, args.model_dir), kinds, args.model)
        with grpc.insecure_channel(address) as channel:
            t0 = time.monotonic()
            expected = precompute(pb_grpc.FactLensStub(channel), requests)
            print(f"{len(requests)} requests ({', '.join(kinds)} on {args.facts} facts); expected answers computed "
                  f"sequentially in {time.monotonic() - t0:.1f} s; server {address}"
                  + (f" (pid {pid})" if pid else ""), flush=True)
        for n in counts:
            sampler = None
            if args.rss:
                sampler = RssSampler(pid, args.rss_interval)
                sampler.start()
            r = run_load(address, requests, expected, n, args.seconds, args.channel, args.deadline, args.seed,
                         metrics_url=metrics_url, backoff=args.backoff)
            if sampler:
                sampler.stop.set()
                sampler.join()
                warmup = args.warmup if args.warmup is not None else args.seconds / 5
                r.rss = rss_flatness(sampler.samples, warmup)
                if args.quick:  # a smoke run: the warm-up alone outlasts it
                    r.rss["judged"] = False  # reported, not a verdict
            _print_result(r, sys.stdout)
            results.append(r.figures())
            status |= 0 if r.ok() else 1
    finally:
        if server is not None:
            code = server.stop()
            print(f"server stopped with exit status {code}")
            status |= 0 if code == 0 else 1
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"address": address, "mix": kinds, "facts": args.facts, "runs": results}, f, indent=1)
    print("PASS: nothing wrong, nothing lost" if status == 0 else "FAIL")
    return status


if __name__ == "__main__":
    sys.exit(main())
