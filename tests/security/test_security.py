"""Security tests of factlens_server: access control and untrusted bytes (issue 13).

Usage: test_security.py FACTLENS_SERVER CLIENT_PYTHON_DIR [unittest arguments]

Four parts, each against the real binary on loopback (tests/python/server_process.py):
  AccessControlTest  every RPC of factlens.v1.FactLens, enumerated from the generated service
                     descriptor (a new RPC is covered without editing this file), refuses a missing
                     or wrong bearer token with UNAUTHENTICATED and accepts the right one; health and
                     reflection stay open (what reflection shows is stated there); no token leaks
                     into replies, the log or /metrics; a token file without tokens stops the server.
  UntrustedNamesTest no model name makes the server read a path or load a model (strace watches its
                     file system calls where strace can attach); path-like text is only text; the
                     HTTP port serves no files.
  LimitsTest         huge, negative and over-limit values are refused with the documented code, each
                     within 5 s and with the server's peak RSS less than 200 MB above its RSS before
                     the request.
  GarbageTest        random bytes, HTTP/1.1, a TLS ClientHello, a truncated or garbage-followed HTTP/2
                     preface, thousands of connections, and a burst of opened-and-reset HTTP/2
                     streams, on the gRPC and the HTTP port: the server stays up and answers Predict
                     and /healthz.
The tests existing in tests/e2e (the client's auth and TLS, a 2 KB message limit, the per-field
INVALID_ARGUMENT cases, 5 batch items) are not repeated here.
"""
import os
import random
import re
import resource
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.error
import urllib.request

SERVER, CLIENT_DIR = sys.argv[1], sys.argv[2]
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, CLIENT_DIR)
sys.path.insert(0, os.path.join(HERE, "..", "python"))

import grpc  # noqa: E402

from factlens.v1 import factlens_pb2 as pb  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc  # noqa: E402
from server_process import ServerProcess  # noqa: E402

C = grpc.StatusCode
SERVICE = pb.DESCRIPTOR.services_by_name["FactLens"]
DEMO = "gpt2-facts-tiny"
PROMPT = b"The capital of France is"
PARIS = 6342
LONGEST_TOKEN = 35496  # GPT-2's longest vocabulary entry: 64 characters, 128 bytes of UTF-8
MIB = 1 << 20
# Each refused request: answered within this many seconds, the server's peak RSS at most this many
# MB above its RSS just before the request.
QUICK_S = 5.0
RSS_BOUND_MB = 200
# A client without the default 4 MiB send / receive limits, so that the server's limits are tested.
UNLIMITED = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]

# Thousands of sockets are held below; the server inherits this limit too.
_soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if _hard == resource.RLIM_INFINITY or _hard > _soft:
    resource.setrlimit(resource.RLIMIT_NOFILE, (_hard if _hard != resource.RLIM_INFINITY else 65536, _hard))
FD_LIMIT = resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# --- helpers ---------------------------------------------------------------------------------------
def request_class(method_or_message):
    """The generated class of a message descriptor (every request type is top-level in factlens_pb2)."""
    desc = getattr(method_or_message, "input_type", method_or_message)
    assert desc.file is pb.DESCRIPTOR, desc.full_name
    return getattr(pb, desc.name)


def call(channel, method, request=None, metadata=None, timeout=30):
    """Calls METHOD (a MethodDescriptor of SERVICE) generically. Returns (code, details,
    trailing metadata, responses)."""
    request = request if request is not None else request_class(method)()
    path = f"/{method.containing_service.full_name}/{method.name}"
    ser, de = type(request).SerializeToString, getattr(pb, method.output_type.name).FromString
    factory = {(False, False): channel.unary_unary, (False, True): channel.unary_stream,
               (True, False): channel.stream_unary, (True, True): channel.stream_stream}[
        (method.client_streaming, method.server_streaming)]
    stub = factory(path, request_serializer=ser, response_deserializer=de)
    arg = iter([request]) if method.client_streaming else request
    try:
        if method.server_streaming:
            it = stub(arg, metadata=metadata, timeout=timeout)
            responses = list(it)
            return C.OK, "", it.trailing_metadata(), responses
        response, c = stub.with_call(arg, metadata=metadata, timeout=timeout)
        return C.OK, "", c.trailing_metadata(), [response]
    except grpc.RpcError as e:
        return e.code(), e.details() or "", e.trailing_metadata() or (), []


def method(name):
    return SERVICE.methods_by_name[name]


def proc_status(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            out[key] = value.split()[0] if value.split() else ""
    return out


def rss_mb(pid):
    return int(proc_status(pid)["VmRSS"]) / 1024


class PeakRss:
    """The peak RSS (MB) of PID inside the with-block: VmHWM after resetting it (clear_refs 5,
    where allowed), and VmRSS sampled every 2 ms either way."""

    def __init__(self, pid):
        self.pid, self.peak, self.threads = pid, 0.0, 0

    def __enter__(self):
        try:
            with open(f"/proc/{self.pid}/clear_refs", "w") as f:
                f.write("5")
            self._hwm = True
        except OSError:
            self._hwm = False
        self.before = rss_mb(self.pid)
        self.peak = self.before
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            try:
                s = proc_status(self.pid)
            except OSError:
                return
            self.peak = max(self.peak, int(s["VmRSS"]) / 1024)
            self.threads = max(self.threads, int(s["Threads"]))
            self._stop.wait(0.002)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        if self._hwm:
            try:
                self.peak = max(self.peak, int(proc_status(self.pid)["VmHWM"]) / 1024)
            except OSError:
                pass
        self.growth = self.peak - self.before
        return False


def host_port(address):
    host, port = address.rsplit(":", 1)
    return host, int(port)


def http_get(base, path, timeout=5):
    try:
        with urllib.request.urlopen(base + path, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def raw_exchange(address, data, read_seconds=1.0):
    """Sends DATA on a fresh TCP connection and reads for up to READ_SECONDS; returns the bytes."""
    out = b""
    with socket.create_connection(address, timeout=10) as c:
        try:
            c.sendall(data)
        except OSError:
            return out  # the server closed first: fine
        c.settimeout(read_seconds)
        deadline = time.time() + read_seconds
        try:
            while time.time() < deadline and len(out) < 1 << 20:
                chunk = c.recv(65536)
                if not chunk:
                    break
                out += chunk
        except (socket.timeout, OSError):
            pass
    return out


# Minimal HTTP/2 framing (RFC 9113) and HPACK literals without indexing (RFC 7541 6.2.2), enough to
# write a gRPC request by hand.
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, GOAWAY = 0, 1, 3, 4, 7
END_STREAM, END_HEADERS = 0x1, 0x4


def h2_frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def grpc_headers(path):
    def literal(name, value):
        name, value = name.encode(), value.encode()
        return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value
    return b"".join(literal(k, v) for k, v in [(":method", "POST"), (":scheme", "http"), (":path", path),
                                                (":authority", "localhost"), ("content-type", "application/grpc"),
                                                ("te", "trailers")])


def h2_frames(data):
    frames, i = [], 0
    while i + 9 <= len(data):
        length = int.from_bytes(data[i:i + 3], "big")
        frames.append((data[i + 3], data[i + 4], int.from_bytes(data[i + 5:i + 9], "big") & 0x7FFFFFFF,
                       data[i + 9:i + 9 + length]))
        i += 9 + length
    return frames


def tls_client_hello():
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def predict_paris(address, metadata=None, timeout=10):
    with grpc.insecure_channel(address) as channel:
        code, details, _, responses = call(channel, method("Predict"),
                                           pb.PredictRequest(prompt=pb.Prompt(text=PROMPT), top_k=1),
                                           metadata=metadata, timeout=timeout)
    assert code == C.OK, (code, details)
    return responses[0].predictions[0].token


class ServerTestCase(unittest.TestCase):
    FLAGS = ()

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="factlens-security-")
        try:
            cls.server = ServerProcess(SERVER, *cls.server_flags())
        except BaseException:
            shutil.rmtree(cls.tmp, ignore_errors=True)
            raise
        cls.pid = cls.server.proc.pid
        cls.channel = grpc.insecure_channel(cls.server.address, options=UNLIMITED)

    @classmethod
    def server_flags(cls):
        return cls.FLAGS

    @classmethod
    def tearDownClass(cls):
        cls.channel.close()
        try:
            code = cls.server.stop()
        finally:
            shutil.rmtree(cls.tmp, ignore_errors=True)
        assert code == 0, f"the server exited with {code}:\n{cls.server.logs()[-3000:]}"

    def assertAlive(self):
        self.assertIsNone(self.server.proc.poll(), "the server died:\n" + self.server.logs()[-3000:])


# --- 1. access control -----------------------------------------------------------------------------
TOKEN = "tok-3f9a1c7e52b04d86"
SECOND_TOKEN = "second-token-0a1b2c"
COMMENT = "# accepted tokens, one per line"


class AccessControlTest(ServerTestCase):
    @classmethod
    def server_flags(cls):
        path = os.path.join(cls.tmp, "tokens")
        with open(path, "w") as f:
            f.write(f"{COMMENT}\n\n  {TOKEN}  \n{SECOND_TOKEN}\n")
        return ("--auth_token_file", path)

    WRONG = {
        "no metadata": None,
        "wrong token": [("authorization", "Bearer wrong-token-77")],
        "a prefix of the token": [("authorization", "Bearer " + TOKEN[:-1])],
        "the token plus a character": [("authorization", "Bearer " + TOKEN + "x")],
        "the token without the Bearer scheme": [("authorization", TOKEN)],
        "the token as Basic": [("authorization", "Basic " + TOKEN)],
        "Bearer and nothing": [("authorization", "Bearer ")],
        "the token file's comment line": [("authorization", "Bearer " + COMMENT)],
        "the token under another key": [("x-api-key", TOKEN), ("token", TOKEN)],
        "the token with padding": [("authorization", "Bearer  " + TOKEN)],
    }

    def test_every_rpc_refuses_a_missing_or_wrong_token_and_accepts_the_right_one(self):
        methods = list(SERVICE.methods)
        # Enumerated from the descriptor: an RPC added to the proto is checked here too. At least the
        # RPCs of the README's list exist (so the enumeration is not vacuous).
        self.assertTrue({"ListModels", "Tokenize", "Detokenize", "Predict", "Decompose", "Rank", "Trace",
                         "ProjectToVocab", "Ablate", "LocateFact", "LocateFacts"} <= {m.name for m in methods})
        secrets = [TOKEN, SECOND_TOKEN, TOKEN[:-1]]
        for m in methods:
            for what, metadata in self.WRONG.items():
                with self.subTest(rpc=m.name, sent=what):
                    code, details, trailers, _ = call(self.channel, m, metadata=metadata, timeout=10)
                    self.assertEqual(code, C.UNAUTHENTICATED, details)
                    # The refusal names no token: neither an accepted one nor what was sent.
                    leaked = details + " " + " ".join(f"{k}={v}" for k, v in trailers)
                    for secret in secrets + ["wrong-token-77"]:
                        self.assertNotIn(secret, leaked)
            for token in (TOKEN, SECOND_TOKEN):
                with self.subTest(rpc=m.name, sent="an accepted token"):
                    code, details, _, _ = call(self.channel, m, metadata=[("authorization", "Bearer " + token)],
                                               timeout=30)
                    # An empty request is usually INVALID_ARGUMENT; it must get past authentication.
                    self.assertNotEqual(code, C.UNAUTHENTICATED, details)
        # With the token the request really runs.
        self.assertEqual(predict_paris(self.server.address, [("authorization", "Bearer " + TOKEN)]), " Paris")
        # Neither the accepted tokens nor the ones sent reach the log or /metrics.
        logs, metrics = self.server.logs(), self.server.metrics()
        self.assertIn('"code":16', logs)  # the refusals were logged
        for secret in secrets + ["wrong-token-77"]:
            self.assertNotIn(secret, logs)
            self.assertNotIn(secret, metrics)

    def test_health_answers_without_a_token(self):
        health = health_pb2_grpc.HealthStub(self.channel)
        self.assertEqual(health.Check(health_pb2.HealthCheckRequest(), timeout=10).status,
                         health_pb2.HealthCheckResponse.SERVING)
        self.assertEqual(http_get(self.server.http, "/healthz")[0], 200)

    def test_reflection_is_open_and_shows_only_the_schema(self):
        """Reflection answers without a token (README: "health and reflection stay open"), so
        grpcurl can list the API. What it returns is the service schema, the checked-in .proto
        files compiled: service and method names, message descriptors. It names no model, no model
        directory, no token, and it cannot run anything: calling a method it lists still needs
        the token (test above)."""
        stub = reflection_pb2_grpc.ServerReflectionStub(self.channel)
        requests = [reflection_pb2.ServerReflectionRequest(list_services=""),
                    reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE.full_name)]
        responses = list(stub.ServerReflectionInfo(iter(requests), timeout=10))
        self.assertEqual(len(responses), 2)
        names = {s.name for s in responses[0].list_services_response.service}
        self.assertIn(SERVICE.full_name, names)
        self.assertLessEqual(names, {SERVICE.full_name, "grpc.health.v1.Health",
                                     "grpc.reflection.v1alpha.ServerReflection",
                                     "grpc.reflection.v1.ServerReflection"})
        files = responses[1].file_descriptor_response.file_descriptor_proto
        self.assertTrue(files, responses[1])
        everything = b"".join(r.SerializeToString() for r in responses)
        (model,) = self._models()
        for secret in (TOKEN, SECOND_TOKEN, DEMO, model.source):
            self.assertNotIn(secret.encode(), everything)

    def _models(self):
        code, details, _, (response,) = call(self.channel, method("ListModels"),
                                             metadata=[("authorization", "Bearer " + TOKEN)])
        self.assertEqual(code, C.OK, details)
        return response.models

    def test_a_token_file_without_tokens_stops_the_server(self):
        """Fail closed: --auth_token_file naming a file that holds no token (empty, only comments
        and blank lines), no file, or a directory stops the server at once; it never serves
        without authentication."""
        empty, comments = os.path.join(self.tmp, "empty"), os.path.join(self.tmp, "comments")
        open(empty, "w").close()
        with open(comments, "w") as f:
            f.write("# no tokens yet\n\n   \n#another\n")
        for path in (empty, comments, os.path.join(self.tmp, "missing"), self.tmp):
            with self.subTest(token_file=os.path.basename(path)):
                run = subprocess.run([SERVER, "--listen", "127.0.0.1:0", "--http_listen", "", "--threads", "1",
                                      "--auth_token_file", path], capture_output=True, text=True, timeout=60)
                self.assertNotEqual(run.returncode, 0, run.stderr)
                self.assertNotIn('"event":"listening"', run.stderr + run.stdout)
                self.assertIn(path, run.stderr)  # the message names the file


# --- 2. no request reads a path or loads a model ---------------------------------------------------
HOSTILE_NAMES = [
    "../../etc/passwd", "/etc/passwd", "/tmp", "demo=/etc", "demo=/etc,device=cpu", "gpt2",
    "openai-community/gpt2", "openai-community/gpt2@main", "~/.cache/huggingface/hub/models--gpt2",
    "file:///etc/passwd", f"{DEMO}/../{DEMO}", f"{DEMO},device=cuda", f"{DEMO}\x00/etc/passwd", f" {DEMO}",
    DEMO.upper(),
]
# What a file system call made for one of these requests would contain.
SUSPICIOUS = ["/etc", "passwd", "/tmp", "huggingface", "models--", "gpt2", "safetensors", "config.json",
              "tokenizer", "model.pt", "dict.txt", "../", "~", "file:"]


class Strace:
    """strace -f on a running process, file-system calls only; .lines after stop(). .attached is
    False where strace is missing or may not attach (ptrace restrictions)."""

    def __init__(self, pid, out_path):
        self.pid, self.out_path, self.proc, self.attached, self.why = pid, out_path, None, False, ""
        if not shutil.which("strace"):
            self.why = "strace is not installed"
            return
        self.proc = subprocess.Popen(["strace", "-f", "-qq", "-e", "trace=%file", "-o", out_path, "-p", str(pid)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 15
        while time.time() < deadline and self.proc.poll() is None:
            tasks = os.listdir(f"/proc/{pid}/task")
            if tasks and all(proc_status_task(pid, t).get("TracerPid", "0") != "0" for t in tasks):
                self.attached = True
                return
            time.sleep(0.05)
        self.why = "strace did not attach: " + (self.proc.stderr.read().decode()[-300:] if self.proc.poll() is not None
                                                else "timeout")
        self.stop()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # detaches
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc and self.proc.stderr:
            self.proc.stderr.close()
        self.lines = []
        if os.path.exists(self.out_path):
            with open(self.out_path, errors="replace") as f:
                self.lines = f.read().splitlines()
        return self.lines


def proc_status_task(pid, task):
    try:
        with open(f"/proc/{pid}/task/{task}/status") as f:
            return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
    except OSError:
        return {}


def open_files(pid):
    """The regular files PID holds open (sockets, pipes and anonymous inodes left out)."""
    files = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("/") and not target.startswith("/dev/"):
            files.add(target)
    return files


class UntrustedNamesTest(ServerTestCase):
    def test_no_request_reads_a_path_or_loads_a_model(self):
        """Every RPC with a model field, with model names that are paths, flag-like specs, Hugging
        Face repo ids and near-misses of the served name: NOT_FOUND whose message names the served
        list and nothing from the file system; no file system call while they run (strace), no file
        opened, no model added (ListModels, log, /metrics). Prompts and targets that look like paths
        are tokenized as text."""
        (before,) = self._list_models()
        files_before = open_files(self.pid)
        trace = Strace(self.pid, os.path.join(self.tmp, "strace.out"))
        try:
            with_model = [m for m in SERVICE.methods if "model" in m.input_type.fields_by_name]
            self.assertGreaterEqual(len(with_model), 10)
            for m in with_model:
                for name in HOSTILE_NAMES:
                    with self.subTest(rpc=m.name, model=name):
                        request = request_class(m)(model=name)
                        code, details, _, _ = call(self.channel, m, request, timeout=10)
                        self.assertEqual(code, C.NOT_FOUND, details)
                        self.assertIn(f"(served: {DEMO})", details)
                        self.assertNotIn(before.source, details)
                        self.assertNotIn("root:", details)
            self._path_like_text_is_only_text()
        finally:
            lines = trace.stop()
        if trace.attached:
            # The path arguments of the calls (strace quotes them), matched against what a request
            # for one of these names would open or stat.
            touched = [l for l in lines if any(s in p for p in re.findall(r'"((?:[^"\\]|\\.)*)"', l)
                                               for s in SUSPICIOUS)]
            self.assertEqual(touched, [], "file system calls made while serving untrusted names")
        else:
            print(f"note: file system calls not watched ({trace.why}); open files, ListModels and the log are",
                  file=sys.stderr)
        self.assertEqual(open_files(self.pid), files_before)
        (after,) = self._list_models()
        self.assertEqual(after, before)
        logs = self.server.logs()
        self.assertEqual(logs.count('"event":"model_ready"'), 1, logs[-3000:])
        self.assertEqual(logs.count('"event":"default_model"'), 1)
        ready = [l for l in self.server.metrics().splitlines() if l.startswith("factlens_model_ready{")]
        self.assertEqual(ready, [f'factlens_model_ready{{model="{DEMO}"}} 1'])
        self.assertAlive()

    def _list_models(self):
        code, details, _, (response,) = call(self.channel, method("ListModels"))
        self.assertEqual(code, C.OK, details)
        return response.models

    def _path_like_text_is_only_text(self):
        paths = [b"../../etc/passwd", b"/etc/shadow", b"file:///etc/passwd", b"%2e%2e/%2e%2e/etc/passwd",
                 b"C:\\Windows\\System32\\config\\SAM", b"~/.ssh/id_rsa", b"$(cat /etc/passwd)", b"/proc/self/environ"]
        for text in paths:
            with self.subTest(text=text):
                code, details, _, (tok,) = call(self.channel, method("Tokenize"), pb.TokenizeRequest(text=text))
                self.assertEqual(code, C.OK, details)
                code, details, _, (detok,) = call(self.channel, method("Detokenize"),
                                                  pb.DetokenizeRequest(ids=tok.ids))
                self.assertEqual((code, detok.text.encode()), (C.OK, text))
                code, details, _, (pred,) = call(self.channel, method("Predict"),
                                                 pb.PredictRequest(prompt=pb.Prompt(text=text), top_k=3))
                self.assertEqual(code, C.OK, details)
                self.assertEqual(len(pred.predictions), 3)
                code, details, _, _ = call(self.channel, method("Rank"), pb.RankRequest(
                    prompt=pb.Prompt(text=PROMPT), target=pb.Target(text=b" " + text, first_token=True),
                    level=pb.RankRequest.FFN_LAYER, top_k=2))
                self.assertEqual(code, C.OK, details)
        # Long path-like text (100 KB) is text too: it round-trips through the tokenizer.
        long_text = b"/".join([b".."] * 20000) + b"/etc/passwd"
        code, details, _, (tok,) = call(self.channel, method("Tokenize"), pb.TokenizeRequest(text=long_text))
        self.assertEqual(code, C.OK, details)
        # Detokenize takes at most --max_prompt_tokens ids per call: in slices (ASCII, so the slices'
        # texts concatenate to the whole).
        pieces = []
        for i in range(0, len(tok.ids), 64):
            code, details, _, (detok,) = call(self.channel, method("Detokenize"),
                                              pb.DetokenizeRequest(ids=tok.ids[i:i + 64]))
            self.assertEqual(code, C.OK, details)
            pieces.append(detok.text.encode())
        self.assertEqual(b"".join(pieces), long_text)
        # NUL bytes are valid UTF-8 and are text as well.
        code, details, _, _ = call(self.channel, method("Predict"),
                                   pb.PredictRequest(prompt=pb.Prompt(text=b"/etc/passwd\x00.txt")))
        self.assertEqual(code, C.OK, details)

    def test_a_long_model_name_gets_a_short_answer_and_a_short_log_line(self):
        """A 1 MB model name: INVALID_ARGUMENT at once (names are at most 256 bytes), a short
        message, and a request log line that does not copy the megabyte."""
        name = "m" * MIB
        log_before = os.path.getsize(self.server.log_path)
        start = time.time()
        code, details, _, _ = call(self.channel, method("Predict"), pb.PredictRequest(model=name), timeout=30)
        elapsed = time.time() - start
        time.sleep(0.2)
        logged = os.path.getsize(self.server.log_path) - log_before
        self.assertEqual(code, C.INVALID_ARGUMENT, details)
        self.assertLess(elapsed, QUICK_S)
        with self.subTest(what="the reply"):
            self.assertLessEqual(len(details), 4096)
            self.assertIn(f"model: a name of {MIB} bytes; names are at most 256", details)
        with self.subTest(what="the log"):
            self.assertLess(logged, 64 * 1024, f"the request log line copies the client's model name: {logged} bytes")

    def test_the_http_port_serves_no_files(self):
        for path in ["/../../etc/passwd", "/metrics/../../../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd",
                     "//etc/passwd", "/healthz/../../../etc/passwd", "/etc/passwd", "/proc/self/environ",
                     "/models/gpt2-facts-tiny/config.json", "/" + DEMO + "/model.safetensors"]:
            with self.subTest(path=path):
                # Raw, so that the client does not normalise the path.
                reply = raw_exchange(host_port(self.server.http[len("http://"):]),
                                     f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
                status = reply.split(b"\r\n", 1)[0]
                self.assertIn(status.split(b" ")[1:2], ([b"404"], [b"400"]), reply[:200])
                for content in (b"root:", b"PATH=", b"model_type", b"vocab_size"):
                    self.assertNotIn(content, reply)


# --- 3. limits stop memory blow-ups ----------------------------------------------------------------
MAX_PROMPT_TOKENS, MAX_TOP_K, MAX_BATCH_ITEMS, MAX_MESSAGE = 64, 200, 4, 4 * MIB
BIG = 2 ** 31 - 1


def prompt_ids(ids):
    return pb.Prompt(token_ids=pb.TokenIds(ids=ids))


def text_of_tokens(n):
    """GPT-2 text of exactly n tokens (" the" is one token)."""
    return b"The" + b" the" * (n - 1)


class LimitsTest(ServerTestCase):
    FLAGS = ("--max_prompt_tokens", str(MAX_PROMPT_TOKENS), "--max_top_k", str(MAX_TOP_K),
             "--max_batch_items", str(MAX_BATCH_ITEMS), "--max_message_bytes", str(MAX_MESSAGE))

    def check(self, rpc, request, codes, timeout=30, item_codes=None, fresh=False):
        """Sends REQUEST to RPC; asserts the code is in CODES, the answer comes within QUICK_S, and
        the server's peak RSS stays within RSS_BOUND_MB of its RSS before. For a streaming RPC that
        answers OK, ITEM_CODES are the codes its items' errors may have. FRESH: on a server of its
        own, whose heap holds no memory freed by earlier requests that could hide the growth."""
        codes = codes if isinstance(codes, (set, tuple, list)) else {codes}
        if fresh:
            # A short drain, so that stopping it does not wait for a request the test gave up on.
            server = ServerProcess(SERVER, *self.FLAGS, "--drain_seconds", "1")
            timeout = min(timeout, 3 * QUICK_S)
            channel = grpc.insecure_channel(server.address, options=UNLIMITED)
            predict_paris(server.address)  # warm, as a server that has served is
        else:
            server, channel = self.server, self.channel
        try:
            start = time.time()
            with PeakRss(server.proc.pid) as rss:
                code, details, _, responses = call(channel, method(rpc), request, timeout=timeout)
            elapsed = time.time() - start
            self.assertIsNone(server.proc.poll(), "the server died:\n" + server.logs()[-3000:])
        finally:
            if fresh:
                channel.close()
                if time.time() - start >= QUICK_S:
                    server.proc.kill()  # still busy with the request: do not wait for it
                server.stop()
        self.assertTrue(elapsed < QUICK_S and rss.growth < RSS_BOUND_MB,
                        f"{rpc} took {elapsed:.1f} s (bound {QUICK_S:.0f} s), peak RSS {rss.peak:.0f} MB, "
                        f"{rss.growth:.0f} MB above {rss.before:.0f} MB (bound {RSS_BOUND_MB} MB); "
                        f"{code.name}: {details[:150]}")
        self.assertIn(code, codes, details[:300])
        if code == C.OK and item_codes is not None:
            items = [e.item for e in responses if e.HasField("item")]
            self.assertTrue(items)
            for item in items:
                self.assertTrue(item.HasField("error"), "an over-limit item was analysed")
                self.assertIn(item.error.code, {c.value[0] for c in item_codes}, item.error.message[:300])
        self.assertAlive()
        return code, details, responses

    def test_huge_top_k_and_locate_options_are_resource_exhausted(self):
        p, t = pb.Prompt(text=PROMPT), pb.Target(token_id=PARIS)
        neuron = pb.Component(kind=pb.Component.FFN_NEURON, layer=1, neuron=3)
        for rpc, request in [
                ("Predict", pb.PredictRequest(prompt=p, top_k=BIG)),
                ("Predict", pb.PredictRequest(prompt=p, top_k=MAX_TOP_K + 1)),
                ("Rank", pb.RankRequest(prompt=p, target=t, level=pb.RankRequest.FFN_NEURON, top_k=BIG)),
                ("Rank", pb.RankRequest(prompt=p, target=t, level=pb.RankRequest.FFN_NEURON, top_k=BIG,
                                        mode=pb.EXHAUSTIVE, bottom=True)),
                ("Trace", pb.TraceRequest(prompt=p, neuron=neuron, top_k=BIG)),
                ("ProjectToVocab", pb.ProjectToVocabRequest(prompt=p, component=neuron, top_k=BIG)),
                ("Decompose", pb.DecomposeRequest(prompt=p, logit_lens_top_k=BIG)),
                ("LocateFact", pb.LocateFactRequest(prompt=p, target=t, options=pb.LocateOptions(top_ffn_neurons=BIG))),
                ("LocateFact", pb.LocateFactRequest(prompt=p, target=t,
                                                    options=pb.LocateOptions(top_attention_neurons=BIG))),
                ("LocateFact", pb.LocateFactRequest(prompt=p, target=t, options=pb.LocateOptions(top_tokens=BIG))),
                ("LocateFacts", pb.LocateFactsRequest(items=[pb.FactItem(prompt=p, target=t)],
                                                      options=pb.LocateOptions(top_tokens=BIG)))]:
            with self.subTest(rpc=rpc, request=str(request)[-120:]):
                _, details, _ = self.check(rpc, request, C.RESOURCE_EXHAUSTED)
                self.assertIn(str(MAX_TOP_K), details)

    def test_negative_and_out_of_range_values_are_invalid_argument(self):
        p, t = pb.Prompt(text=PROMPT), pb.Target(token_id=PARIS)
        for rpc, request in [
                ("Predict", pb.PredictRequest(prompt=p, top_k=-1)),
                ("Predict", pb.PredictRequest(prompt=p, top_k=-2 ** 31)),
                ("Predict", pb.PredictRequest(prompt=p, position=-2 ** 31)),
                ("Predict", pb.PredictRequest(prompt=p, position=BIG)),
                ("Predict", pb.PredictRequest(prompt=prompt_ids([464, -1]))),
                ("Predict", pb.PredictRequest(prompt=prompt_ids([2 ** 63 - 1]))),
                ("Predict", pb.PredictRequest(prompt=prompt_ids([-2 ** 63]))),
                ("Rank", pb.RankRequest(prompt=p, target=t, level=pb.RankRequest.HEAD, top_k=-1)),
                ("Rank", pb.RankRequest(prompt=p, target=pb.Target(token_id=-1), level=pb.RankRequest.HEAD)),
                ("Rank", pb.RankRequest(prompt=p, target=pb.Target(token_id=2 ** 63 - 1), level=pb.RankRequest.HEAD)),
                ("Rank", pb.RankRequest(prompt=p, target=t, level=99)),
                ("Decompose", pb.DecomposeRequest(prompt=p, logit_lens_top_k=-1)),
                ("Decompose", pb.DecomposeRequest(prompt=p, positions=[-2 ** 31])),
                ("Decompose", pb.DecomposeRequest(prompt=p, positions=[0] * 6)),  # more positions than tokens
                ("Trace", pb.TraceRequest(prompt=p, neuron=pb.Component(kind=pb.Component.FFN_NEURON, layer=-1))),
                ("Trace", pb.TraceRequest(prompt=p, neuron=pb.Component(kind=pb.Component.FFN_NEURON, layer=0,
                                                                        neuron=-2 ** 31))),
                ("ProjectToVocab", pb.ProjectToVocabRequest(prompt=p, component=pb.Component(
                    kind=pb.Component.HEAD, layer=0, head=-1))),
                ("ProjectToVocab", pb.ProjectToVocabRequest(prompt=p, component=pb.Component(kind=77))),
                ("Detokenize", pb.DetokenizeRequest(ids=[-1])),
                ("Detokenize", pb.DetokenizeRequest(ids=[-2 ** 63])),
                ("Ablate", pb.AblateRequest(prompt=p, target=t, ablations=[pb.AblationSpec(
                    component=pb.Component(kind=pb.Component.FFN_NEURON, layer=BIG, neuron=0))])),
                ("Ablate", pb.AblateRequest(prompt=p, target=t, ablations=[pb.AblationSpec(
                    component=pb.Component(kind=pb.Component.FFN_LAYER, layer=1), scale=float("nan"))])),
                ("LocateFact", pb.LocateFactRequest(prompt=p, target=t, options=pb.LocateOptions(top_ffn_neurons=-1))),
                ("LocateFact", pb.LocateFactRequest(prompt=p, target=t, position=-2 ** 31))]:
            with self.subTest(rpc=rpc, request=str(request)[-120:]):
                self.check(rpc, request, C.INVALID_ARGUMENT)

    def test_an_ablation_scale_never_turns_results_into_nan(self):
        """A finite scale the float32 forward pass overflows (1e30, -1e308) is refused as
        INVALID_ARGUMENT naming the scale, or analysed to finite numbers; never NaN reported as OK
        (a NaN log-probability with rank 1)."""
        for scale in (1e30, 3.4e38, -1e308):
            with self.subTest(scale=scale):
                request = pb.AblateRequest(prompt=pb.Prompt(text=PROMPT), target=pb.Target(token_id=PARIS),
                                           ablations=[pb.AblationSpec(component=pb.Component(
                                               kind=pb.Component.FFN_LAYER, layer=1), scale=scale)])
                code, details, responses = self.check("Ablate", request, {C.OK, C.INVALID_ARGUMENT})
                if code == C.INVALID_ARGUMENT:
                    self.assertIn("scale", details)
                    continue
                (r,) = responses
                numbers = [r.after.log_prob, r.after.prob] + [s.score for s in r.predictions_after]
                self.assertTrue(all(x == x and abs(x) != float("inf") for x in numbers),
                                f"scale {scale}: OK with after={r.after}")

    def test_over_limit_batches_and_ablation_lists_are_resource_exhausted(self):
        item = pb.FactItem(prompt=pb.Prompt(text=PROMPT), target=pb.Target(text=b" Paris"))
        many = pb.LocateFactsRequest(items=[item] * 100_000)
        self.assertLess(many.ByteSize(), MAX_MESSAGE)
        self.check("LocateFacts", many, C.RESOURCE_EXHAUSTED)
        spec = pb.AblationSpec(component=pb.Component(kind=pb.Component.FFN_NEURON, layer=0, neuron=1))
        ablations = pb.AblateRequest(prompt=pb.Prompt(text=PROMPT), target=pb.Target(token_id=PARIS),
                                     ablations=[spec] * 100_000)
        self.assertLess(ablations.ByteSize(), MAX_MESSAGE)
        self.check("Ablate", ablations, C.RESOURCE_EXHAUSTED)

    def test_prompts_over_max_prompt_tokens_are_resource_exhausted_at_once(self):
        """As token ids and as text, just over the limit and as large as a message may be: the
        server must not tokenize megabytes (or hold a queue slot while it does) to find that the
        prompt is too long."""
        megabytes_of_words = b"ab " * ((MAX_MESSAGE - 4096) // 3)
        one_word = b"a" * (MAX_MESSAGE - 4096)
        for what, prompt in [("65 token ids", prompt_ids([464] * (MAX_PROMPT_TOKENS + 1))),
                             ("500k token ids", prompt_ids([464] * 500_000)),
                             ("65 tokens of text", pb.Prompt(text=text_of_tokens(MAX_PROMPT_TOKENS + 1))),
                             ("4 MB of words", pb.Prompt(text=megabytes_of_words)),
                             ("4 MB, one word", pb.Prompt(text=one_word))]:
            with self.subTest(prompt=what):
                _, details, _ = self.check("Predict", pb.PredictRequest(prompt=prompt), C.RESOURCE_EXHAUSTED,
                                           fresh=prompt.ByteSize() > MIB)
                self.assertIn("max_prompt_tokens", details)
        # Each item of a batch is a prompt too.
        item = pb.FactItem(prompt=pb.Prompt(text=b"a" * (MAX_MESSAGE // 5)), target=pb.Target(text=b" Paris"))
        with self.subTest(prompt="4 batch items of 800 KB"):
            # Refused as a whole, or each item answered with its own RESOURCE_EXHAUSTED.
            self.check("LocateFacts", pb.LocateFactsRequest(items=[item] * MAX_BATCH_ITEMS),
                       {C.RESOURCE_EXHAUSTED, C.OK}, item_codes={C.RESOURCE_EXHAUSTED}, fresh=True)
        # A megabyte-long text target (with first_token, which takes its first token).
        with self.subTest(prompt="a 4 MB target"):
            self.check("Rank", pb.RankRequest(prompt=pb.Prompt(text=PROMPT), level=pb.RankRequest.FFN_LAYER,
                                              target=pb.Target(text=b" " + one_word, first_token=True)),
                       {C.OK, C.INVALID_ARGUMENT, C.RESOURCE_EXHAUSTED}, fresh=True)

    def test_tokenize_and_detokenize_of_megabytes_are_bounded(self):
        """Tokenize and Detokenize are not queued, so each one's cost must be bounded by the
        message size, not a multiple of it: a 4 MB text, and 1.3 M copies of the longest token
        (which would decode to 170 MB) are answered with RESOURCE_EXHAUSTED at once."""
        with self.subTest(rpc="Tokenize"):
            self.check("Tokenize", pb.TokenizeRequest(text=b"a" * (MAX_MESSAGE - 4096)), C.RESOURCE_EXHAUSTED,
                       fresh=True)
        ids = pb.DetokenizeRequest(ids=[LONGEST_TOKEN] * ((MAX_MESSAGE - 4096) // 3))
        self.assertLess(ids.ByteSize(), MAX_MESSAGE)
        with self.subTest(rpc="Detokenize"):
            self.check("Detokenize", ids, C.RESOURCE_EXHAUSTED, fresh=True)

    def test_a_message_over_the_receive_limit_is_resource_exhausted(self):
        request = pb.PredictRequest(prompt=pb.Prompt(text=b"a" * (MAX_MESSAGE + 1024)))
        self.check("Predict", request, C.RESOURCE_EXHAUSTED)
        with self.subTest(what="a length prefix of 4 GiB, then data"):
            # A gRPC message whose 5-byte prefix claims 2^32 - 1 bytes: the server must not allocate
            # the claimed size, and ends the stream once the data passes its limit.
            start = time.time()
            with PeakRss(self.pid) as rss, socket.create_connection(host_port(self.server.address), timeout=10) as c:
                c.sendall(H2_PREFACE + h2_frame(SETTINGS, 0, 0) +
                          h2_frame(HEADERS, END_HEADERS, 1, grpc_headers("/factlens.v1.FactLens/Predict")) +
                          h2_frame(DATA, 0, 1, b"\x00\xff\xff\xff\xff" + b"a" * 16000))
                sent = 16000
                try:
                    while sent < MAX_MESSAGE + MIB:
                        c.sendall(h2_frame(DATA, 0, 1, b"a" * 16000))
                        sent += 16000
                except OSError:
                    pass
                c.settimeout(3)
                reply = b""
                try:
                    while True:
                        chunk = c.recv(65536)
                        if not chunk:
                            break
                        reply += chunk
                        kinds = {(k, s) for k, _, s, _ in h2_frames(reply)}
                        if (RST_STREAM, 1) in kinds or (GOAWAY, 0) in kinds or any(
                                k == HEADERS and s == 1 and f & END_STREAM for k, f, s, _ in h2_frames(reply)):
                            break
                except (socket.timeout, OSError):
                    pass
            frames = h2_frames(reply)
            ended = [f for f in frames if (f[0] == RST_STREAM and f[2] == 1) or f[0] == GOAWAY or
                     (f[0] == HEADERS and f[2] == 1 and f[1] & END_STREAM)]
            self.assertTrue(ended, f"stream 1 not ended; frames {[(f[0], f[2]) for f in frames][:20]}")
            self.assertLess(time.time() - start, 10)
            self.assertLess(rss.growth, RSS_BOUND_MB, f"peak RSS {rss.peak:.0f} MB")
            self.assertAlive()

    def test_decompose_with_vectors_of_the_longest_prompt(self):
        """include_vectors and include_heads at every position of the longest prompt the server
        accepts: answered (or RESOURCE_EXHAUSTED if the reply were over --max_message_bytes)
        quickly and within the memory bound."""
        ids = [464] + [262] * (MAX_PROMPT_TOKENS - 1)
        request = pb.DecomposeRequest(prompt=prompt_ids(ids), positions=list(range(MAX_PROMPT_TOKENS)),
                                      include_vectors=True, include_heads=True)
        code, _, responses = self.check("Decompose", request, {C.OK, C.RESOURCE_EXHAUSTED})
        if code == C.OK:
            (r,) = responses
            self.assertEqual(len(r.positions), MAX_PROMPT_TOKENS)
            self.assertEqual(len(r.positions[0].components[0].vector), 64)


# --- 4. raw garbage on both ports ------------------------------------------------------------------
def garbage_payloads():
    rng = random.Random(13)
    noise = bytes(rng.getrandbits(8) for _ in range(8192))
    settings = h2_frame(SETTINGS, 0, 0)
    bad_frames = (settings + h2_frame(HEADERS, END_HEADERS, 1, b"\xff" * 100) +
                  h2_frame(DATA, END_STREAM, 1, b"x" * 10) + h2_frame(8, 0, 0, b"\x7f\xff\xff\xff") +
                  h2_frame(SETTINGS, 0, 0, struct.pack(">HI", 4, 2 ** 31)) +
                  h2_frame(9, END_HEADERS, 3, b"garbage") + h2_frame(RST_STREAM, 0, 0, b"\x00") +
                  h2_frame(6, 0, 0, b"short") + h2_frame(200, 0xFF, 0x7FFFFFFF, noise[:300]))
    return {
        "random bytes": noise,
        "an HTTP/1.1 request": b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
        "a TLS ClientHello": tls_client_hello(),
        "a truncated HTTP/2 preface": H2_PREFACE[:11],
        "the preface, then random bytes": H2_PREFACE + noise,
        "the preface, then malformed frames": H2_PREFACE + bad_frames,
        "the preface, then a 16 MB frame header": H2_PREFACE + b"\xff\xff\xff\x00\x00\x00\x00\x00\x01" + noise[:1000],
        "the preface, then 300 CONTINUATION frames": H2_PREFACE + settings + h2_frame(HEADERS, 0, 1) +
        b"".join(h2_frame(9, 0, 1, b"\x00" * 1000) for _ in range(300)),
        "NUL bytes": b"\x00" * 4096,
        "an 80 KB request line": b"GET /" + b"a" * 80000 + b" HTTP/1.1\r\n\r\n",
        "a request head without end": b"GET /healthz HTTP/1.1\r\n" + b"X-A: b\r\n" * 2000,
        "binary headers": b"GET /healthz HTTP/1.1\r\nHost: \xff\xfe\x00\r\nContent-Length: -1\r\n\r\n",
        "a huge Content-Length": b"POST /metrics HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\nabc",
        "a chunked body": b"POST /healthz HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFF\r\n" +
        noise[:500],
    }


class GarbageTest(ServerTestCase):
    def assertServes(self):
        self.assertAlive()
        self.assertEqual(predict_paris(self.server.address, timeout=15), " Paris")
        self.assertEqual(http_get(self.server.http, "/healthz", timeout=10)[0], 200)

    def fd_count(self):
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def test_garbage_and_connection_churn_on_both_ports(self):
        grpc_address = host_port(self.server.address)
        http_address = host_port(self.server.http[len("http://"):])
        fds_before = self.fd_count()
        for what, payload in garbage_payloads().items():
            for port, address in (("grpc", grpc_address), ("http", http_address)):
                with self.subTest(port=port, sent=what):
                    raw_exchange(address, payload, read_seconds=0.5)
                    self.assertAlive()
        self.assertServes()
        # Thousands of connections opened and closed at once, then many held open (idle, or stuck
        # in a request head / a preface) while real requests must still be answered.
        for _ in range(2000):
            for address in (grpc_address, http_address):
                socket.create_connection(address, timeout=10).close()
        held = []
        try:
            per_port = max(100, min(1000, (FD_LIMIT - 300) // 3))
            for i in range(per_port):
                for address in (grpc_address, http_address):
                    s = socket.create_connection(address, timeout=10)
                    held.append(s)
                    if i % 4 == 1:
                        s.sendall(H2_PREFACE[:11] if address == grpc_address else b"GET /metrics HTTP/1.1\r\nX: ")
            self.assertServes()
        finally:
            for s in held:
                s.close()
        self.assertServes()
        # The closed connections are released.
        deadline = time.time() + 20
        while self.fd_count() > fds_before + 20 and time.time() < deadline:
            time.sleep(0.2)
        self.assertLessEqual(self.fd_count(), fds_before + 20, "file descriptors left open")

    def test_a_burst_of_opened_and_reset_streams(self):
        """5000 HTTP/2 streams opened (a Predict's HEADERS) and reset at once on one connection
        (the "rapid reset" pattern): the server's threads are bounded (main.cc), so its RSS stays
        within RSS_BOUND_MB (a thread per reset call took +450 MB); a Predict during the burst is
        served or refused RESOURCE_EXHAUSTED (overload, retryable), never anything else, and
        Predict answers after it."""
        headers = grpc_headers("/factlens.v1.FactLens/Predict")
        burst = H2_PREFACE + h2_frame(SETTINGS, 0, 0) + b"".join(
            h2_frame(HEADERS, END_HEADERS, 2 * i + 1, headers) +
            h2_frame(RST_STREAM, 0, 2 * i + 1, struct.pack(">I", 8))  # CANCEL
            for i in range(5000))
        latencies, errors, stop = [], [], threading.Event()

        def probe():
            while not stop.is_set():
                start = time.time()
                try:
                    predict_paris(self.server.address, timeout=15)
                    latencies.append(time.time() - start)
                except AssertionError as e:
                    if e.args[0][0] != C.RESOURCE_EXHAUSTED:
                        errors.append(str(e))
                stop.wait(0.05)

        with PeakRss(self.pid) as rss:
            prober = threading.Thread(target=probe)
            prober.start()
            try:
                raw_exchange(host_port(self.server.address), burst, read_seconds=2)
                time.sleep(1)
            finally:
                stop.set()
                prober.join()
        self.assertServes()
        self.assertEqual(errors, [])
        self.assertTrue(latencies)
        self.assertLess(max(latencies), QUICK_S, f"Predict latencies during the burst: {latencies}")
        self.assertLess(rss.growth, RSS_BOUND_MB,
                        f"peak RSS {rss.peak:.0f} MB ({rss.growth:.0f} MB above {rss.before:.0f}); "
                        f"{rss.threads} threads at most")


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0]] + sys.argv[3:], verbosity=2)
