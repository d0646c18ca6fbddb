"""A typed client of the factlens.v1 gRPC API.

    with Client("127.0.0.1:50051", token=None) as c:
        report = c.locate_fact("The capital of France is", " Paris", progress=True)
        report.to_pandas(); report.to_html("paris.html")

Every method raises FactlensError (the gRPC status code and the server's message) on failure;
FactlensConnectionError when nothing speaks gRPC at the address, ModelNotServed when no model or an
unknown one is named (both say what to pass). A response's ``warnings`` (a request the server
answered but probably not as meant, e.g. target "Paris" without its leading space) are issued as
``FactlensWarning``s pointing at the caller's line.

The address and the model default to ``$FACTLENS_SERVER`` (else 127.0.0.1:50051) and
``$FACTLENS_MODEL`` (else "": the server's only model); arguments win. Several replicas: a list of
addresses (one channel each, calls spread over them, a call that finds one unavailable retried on the
next), or one gRPC name with a scheme such as ``dns:///factlens:50051`` (gRPC's ``round_robin``
over the addresses it resolves to). ``locate_facts`` of a pandas DataFrame spreads a dataset over
the replicas (factlens.dataset).

Prompts are text (str / UTF-8 bytes) or token ids; targets text or a token id; components a
``pb.Component`` or a short name such as ``"L1.N157"`` (see factlens.components); enums a number or
a name (``level="FFN_NEURON"``, ``mode="exhaustive"``).

Retries: every factlens RPC is a side-effect-free computation, so a call that fails with
UNAVAILABLE (model still loading, server restarting, connection refused), or with a CANCELLED this
client did not cause (a server that gRPC shuts down cancels the calls that reach it in its last
moment: docs/reliability.md, Known limits), is retried with exponential backoff, up to ``retries``
attempts, each on the next replica where there are several. A
stream is retried only before its first event, so a caller never sees an event twice. Nothing else
is retried: RESOURCE_EXHAUSTED may be a limit that a retry would hit again, and DEADLINE_EXCEEDED
has used the caller's time.
"""
import itertools
import os
import re
import sys
import time
import warnings

import grpc
from google.protobuf import json_format

from factlens import results
from factlens.components import enum_value, parse_component
from factlens.errors import SERVER_HINT, FactlensConnectionError, FactlensError, FactlensWarning, ModelNotServed
from factlens.v1 import factlens_pb2 as pb
from factlens.v1 import factlens_pb2_grpc as pb_grpc


def _prompt(prompt) -> pb.Prompt:
    if isinstance(prompt, (str, bytes)):
        return pb.Prompt(text=prompt.encode() if isinstance(prompt, str) else prompt)
    return pb.Prompt(token_ids=pb.TokenIds(ids=[int(i) for i in prompt]))


def _target(target, first_token=False) -> pb.Target:
    if isinstance(target, (str, bytes)):
        return pb.Target(text=target.encode() if isinstance(target, str) else target, first_token=first_token)
    return pb.Target(token_id=int(target), first_token=first_token)


DEFAULT_SERVER = "127.0.0.1:50051"

# The server's NOT_FOUND for a model it does not serve (server/model_registry.cc); the name is '' when
# the request named none and the server serves several.
_NOT_SERVED = re.compile(r"model: '(.*)' is not served \(served: (.*)\)", re.S)


def default_server() -> str:
    """$FACTLENS_SERVER, else 127.0.0.1:50051."""
    return os.environ.get("FACTLENS_SERVER") or DEFAULT_SERVER


def default_model() -> str:
    """$FACTLENS_MODEL, else "" (the server's only model)."""
    return os.environ.get("FACTLENS_MODEL", "")


# What grpcio says of a call this process cancelled (grpc/_channel.py).
_LOCALLY_CANCELLED = "Locally cancelled by application!"


def retryable(error: grpc.RpcError) -> bool:
    """Whether a failed call may be tried again, on this replica or another: UNAVAILABLE, or CANCELLED
    that this process did not cause (a server shutting down)."""
    code = error.code()
    return code == grpc.StatusCode.UNAVAILABLE or (
        code == grpc.StatusCode.CANCELLED and error.details() != _LOCALLY_CANCELLED)


def _error(error: grpc.RpcError, address: str) -> FactlensError:
    """The FactlensError of a failed call: a connection failure or an unserved model said in words
    that tell what to do, anything else as the server's code and message."""
    code, details = error.code(), error.details() or ""
    if code == grpc.StatusCode.UNAVAILABLE:
        if "Connection refused" in details:
            return FactlensConnectionError(
                address, "connection refused",
                f"no factlens_server at {address} (connection refused): start one or {SERVER_HINT}", details)
        if "Failed parsing HTTP/2" in details or "http1.x" in details.lower():
            return FactlensConnectionError(
                address, "HTTP/1.1",
                f"{address} answers HTTP/1.1, not gRPC: it looks like factlens_server's metrics/health port; "
                "pass the --listen address instead", details)
        if "DNS resolution failed" in details:
            return FactlensConnectionError(address, "unknown host",
                                           f"cannot resolve {address} (DNS resolution failed): {SERVER_HINT}", details)
    if code == grpc.StatusCode.NOT_FOUND:
        m = _NOT_SERVED.fullmatch(details)
        if m:
            return ModelNotServed(m[1], [name for name in m[2].split(", ") if name])
    return FactlensError(code, details)


def _warn(response, prefix=""):
    """Issues a FactlensWarning for each of a response's (or report's) warnings, attributed to the line that
    called the Client method (the method calls this directly); returns the response."""
    for text in getattr(response, "warnings", ()):  # absent from stubs of an older proto
        warnings.warn(prefix + text, FactlensWarning, stacklevel=3)
    return response


def _message(cls, value):
    """A message of type cls from None, a message, or a dict in the protobuf JSON mapping (enum names allowed)."""
    if value is None:
        return cls()
    if isinstance(value, dict):
        try:
            return json_format.ParseDict(value, cls())
        except json_format.ParseError as e:
            raise FactlensError(grpc.StatusCode.INVALID_ARGUMENT, f"{cls.DESCRIPTOR.name}: {e}") from None
    return value


def _ablation(spec, scale, all_positions) -> pb.AblationSpec:
    if isinstance(spec, pb.AblationSpec):
        return spec
    return pb.AblationSpec(component=parse_component(spec), scale=scale, all_positions=all_positions)


def _read(data):
    """PEM bytes as given, or the contents of the file a str names."""
    if data is None or isinstance(data, bytes):
        return data
    with open(data, "rb") as f:
        return f.read()


class _ProgressBar:
    """A tqdm bar on stderr driven by (stage, fraction) progress events."""

    def __init__(self, description):
        from tqdm import tqdm

        self._description = description
        self._bar = tqdm(total=100, desc=description, unit="%", bar_format="{desc}: {percentage:3.0f}%|{bar}|")

    def __call__(self, stage, fraction):
        self._bar.set_description_str(f"{self._description} ({stage})", refresh=False)
        self._bar.update(round(100 * fraction) - self._bar.n)

    def close(self):
        self._bar.close()


# Target schemes that gRPC resolves to several addresses itself ("dns:///factlens:50051",
# "ipv4:10.0.0.1:50051,10.0.0.2:50051"); their channel balances calls with round_robin.
_RESOLVER = re.compile(r"(dns|ipv4|ipv6):")


class Replica:
    """One channel of a Client: ``address`` (its target as given) and the ``stub`` of the factlens API."""

    def __init__(self, address, credentials):
        options = [("grpc.lb_policy_name", "round_robin")] if _RESOLVER.match(address) else []
        self.address = address
        self.channel = (grpc.secure_channel(address, credentials, options) if credentials
                        else grpc.insecure_channel(address, options))
        self.stub = pb_grpc.FactLensStub(self.channel)

    def __repr__(self):
        return f"<Replica {self.address}>"


class Client:
    """Channels to one factlens server or to replicas of it; thread-safe (gRPC channels are). Use as a context
    manager or call close().

    address: ``host:port`` (default ``$FACTLENS_SERVER``, else 127.0.0.1:50051); a list of them for
    replicas serving the same models (one channel each; calls go to them in turn and a call that
    finds one UNAVAILABLE is retried on the next); or a gRPC target with a scheme, such as
    ``dns:///factlens:50051`` or ``ipv4:10.0.0.1:50051,10.0.0.2:50051``: one channel whose calls
    gRPC spreads over every address the name resolves to (``round_robin``). token: the bearer
    token, if the server wants one. tls: use TLS (implied by any certificate argument);
    root_certificates: PEM CA bundle (bytes, or a file path) instead of the system's;
    client_certificate / client_key: for servers that require mTLS. model: the model name every
    request names (default ``$FACTLENS_MODEL``, else "" = the server's only model). timeout: seconds
    per attempt. retries: attempts for a call that fails with UNAVAILABLE or a CANCELLED this client
    did not cause (1 = no retry).
    Raises ValueError for an empty list of addresses. ``replicas``: a ``Replica`` per channel.
    """

    def __init__(self, address=None, token=None, tls=False, root_certificates=None, client_certificate=None,
                 client_key=None, model=None, timeout=600.0, retries=3):
        addresses = [address or default_server()] if address is None or isinstance(address, str) else list(address)
        if not addresses:
            raise ValueError("address: an empty list of replicas")
        model = default_model() if model is None else model
        credentials = None
        if tls or root_certificates or client_certificate:
            credentials = grpc.ssl_channel_credentials(root_certificates=_read(root_certificates),
                                                       private_key=_read(client_key),
                                                       certificate_chain=_read(client_certificate))
        self.replicas = [Replica(a, credentials) for a in addresses]
        self._turn = itertools.count()  # next() is atomic: the replica of each call's first attempt
        self._metadata = [("authorization", f"Bearer {token}")] if token else []
        self._model_info = None
        self.address = ", ".join(addresses)
        self.model = model
        self.timeout = timeout
        self.retries = max(1, retries)

    @property
    def _stub(self):
        """The first replica's stub, for raw calls (tests)."""
        return self.replicas[0].stub

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        """Closes the channels; calls in flight are cancelled."""
        for replica in self.replicas:
            replica.channel.close()

    # --- transport --------------------------------------------------------------------------------
    def _backoff(self, error, attempt) -> bool:
        """Sleeps and returns True when a failed attempt may be retried."""
        if not retryable(error) or attempt + 1 >= self.retries:
            return False
        time.sleep(min(0.25 * 2 ** attempt, 5.0))
        return True

    def _attempts(self):
        """(attempt, replica) of one call's attempts: ``retries`` of them, on the replicas in turn."""
        first = next(self._turn)
        return [(i, self.replicas[(first + i) % len(self.replicas)]) for i in range(self.retries)]

    def _call(self, rpc, request, timeout=None):
        for attempt, replica in self._attempts():
            try:
                return getattr(replica.stub, rpc)(request, timeout=timeout or self.timeout, metadata=self._metadata)
            except grpc.RpcError as e:
                if not self._backoff(e, attempt):
                    raise _error(e, replica.address) from None

    def _stream(self, rpc, request, timeout=None):
        """Yields (replica address, event) of a server-streaming call."""
        for attempt, replica in self._attempts():
            call, started = self.open_stream(replica, rpc, request, timeout), False
            try:
                for event in call:
                    started = True
                    yield replica.address, event
                return
            except grpc.RpcError as e:
                if started or not self._backoff(e, attempt):
                    raise _error(e, replica.address) from None
            finally:
                call.cancel()  # a no-op once the stream has ended; stops the server's work if the caller stopped early

    def open_stream(self, replica, rpc, request, timeout=None):
        """The gRPC call object of a server-streaming RPC on one replica, no retry: iterate it for the events
        (``grpc.RpcError`` on failure), ``cancel()`` it when done."""
        return getattr(replica.stub, rpc)(request, timeout=timeout or self.timeout, metadata=self._metadata)

    # --- RPCs -------------------------------------------------------------------------------------
    def list_models(self) -> results.Models:
        """The models served, with their shapes (a sequence of ``pb.ModelInfo``)."""
        return results.Models(self._call("ListModels", pb.ListModelsRequest()))

    def model_info(self) -> pb.ModelInfo:
        """The ``pb.ModelInfo`` of this client's model (fetched once)."""
        if self._model_info is None:
            models = self.list_models()
            matches = [m for m in models if m.name == self.model or (not self.model and len(models) == 1)]
            if not matches:
                raise ModelNotServed(self.model, [m.name for m in models])
            self._model_info = matches[0]
        return self._model_info

    def tokenize(self, text, add_special_tokens=True) -> results.Tokens:
        """Token ids, tokens and character offsets of a text."""
        return results.Tokens(self._call("Tokenize", pb.TokenizeRequest(
            model=self.model, text=text.encode() if isinstance(text, str) else text,
            add_special_tokens=add_special_tokens)))

    def detokenize(self, ids, skip_special_tokens=False) -> str:
        """The text of token ids."""
        return self._call("Detokenize", pb.DetokenizeRequest(
            model=self.model, ids=[int(i) for i in ids], skip_special_tokens=skip_special_tokens)).text

    def predict(self, prompt, top_k=10, position=None, timeout=None) -> results.Prediction:
        """The top-k next tokens at a position (default: after the last token)."""
        req = pb.PredictRequest(model=self.model, prompt=_prompt(prompt), top_k=top_k, position=position)
        return results.Prediction(self._call("Predict", req, timeout))

    def decompose(self, prompt, target=None, positions=(), include_heads=False, include_vectors=False,
                  logit_lens_top_k=0, metric="LOGPROB_INCREASE", timeout=None,
                  first_token=False, cumulative=False) -> results.Decomposition:
        """Every residual-stream component at the positions (default: the last), with its increase for target;
        ``cumulative``: also each position's logit lens after every sublayer (the target's rank there)."""
        req = pb.DecomposeRequest(model=self.model, prompt=_prompt(prompt), positions=list(positions),
                                  include_heads=include_heads, include_vectors=include_vectors,
                                  logit_lens_top_k=logit_lens_top_k, cumulative=cumulative,
                                  options=pb.AttributionOptions(metric=enum_value(pb.Metric, metric, "metric")))
        if target is not None:
            req.target.CopyFrom(_target(target, first_token))
        return results.Decomposition(_warn(self._call("Decompose", req, timeout)))

    def rank(self, prompt, target, level, top_k=10, bottom=False, mode="EXACT", metric="LOGPROB_INCREASE",
             position=None, timeout=None, first_token=False) -> results.Ranking:
        """Components of one level (e.g. "FFN_NEURON", "HEAD") ranked by their increase for the target."""
        req = pb.RankRequest(model=self.model, prompt=_prompt(prompt), target=_target(target, first_token),
                             level=enum_value(pb.RankRequest.Level, level, "level"), top_k=top_k, bottom=bottom,
                             mode=enum_value(pb.RankMode, mode, "mode"), position=position,
                             options=pb.AttributionOptions(metric=enum_value(pb.Metric, metric, "metric")))
        return results.Ranking(_warn(self._call("Rank", req, timeout)))

    def trace(self, prompt, neuron, top_k=10, position=None, timeout=None) -> results.Trace:
        """Which earlier components activate a neuron (FFN "L1.N157" or attention "L1.H2.P3.d7")."""
        req = pb.TraceRequest(model=self.model, prompt=_prompt(prompt), neuron=parse_component(neuron),
                              top_k=top_k, position=position)
        return results.Trace(self._call("Trace", req, timeout), neuron=req.neuron)

    def project(self, prompt, component, top_k=10, position=None, timeout=None) -> results.Projection:
        """Top and bottom tokens of a component's projection into vocabulary space (ProjectToVocab)."""
        req = pb.ProjectToVocabRequest(model=self.model, prompt=_prompt(prompt), component=parse_component(component),
                                       top_k=top_k, position=position)
        return results.Projection(self._call("ProjectToVocab", req, timeout))

    def ablate(self, prompt, target, ablations, scale=0.0, all_positions=False, position=None,
               timeout=None, first_token=False) -> results.Ablation:
        """The target's outcome with components removed (scale 0) or scaled.

        ablations: one or a list of ``pb.AblationSpec`` messages or components (messages or short
        names such as ``"L1.N157"``); components get ``scale`` and ``all_positions``.
        """
        if isinstance(ablations, (str, bytes, pb.Component, pb.AblationSpec)):
            ablations = [ablations]
        req = pb.AblateRequest(model=self.model, prompt=_prompt(prompt), target=_target(target, first_token),
                               position=position, ablations=[_ablation(a, scale, all_positions) for a in ablations])
        return results.Ablation(_warn(self._call("Ablate", req, timeout)))

    def locate_fact(self, prompt, target, on_progress=None, options=None, timeout=None, progress=False,
                    position=None, first_token=False) -> results.FactReport:
        """The whole fact-localization pipeline for one fact.

        options: ``pb.LocateOptions`` or a dict such as ``{"top_ffn_neurons": 20, "mode": "EXHAUSTIVE"}``.
        on_progress(stage, fraction) is called for each progress event; progress=True draws a bar on stderr.
        """
        req = pb.LocateFactRequest(model=self.model, prompt=_prompt(prompt), target=_target(target, first_token),
                                   options=_message(pb.LocateOptions, options), position=position)
        bar = _ProgressBar("LocateFact") if progress else None
        report = None
        try:
            for address, event in self._stream("LocateFact", req, timeout):
                if event.HasField("report"):
                    report = results.FactReport(event.report, self.model_info(), server=address)
                    break
                for callback in (on_progress, bar):
                    if callback:
                        callback(event.progress.stage, event.progress.fraction)
        finally:
            if bar:
                bar.close()
        if report is None:
            raise FactlensError(grpc.StatusCode.INTERNAL, "the LocateFact stream ended without a report")
        _warn(report.proto)  # after the progress bar, so that the warnings are not drawn into it
        return report

    def locate_facts(self, items, options=None, timeout=None, progress=None, first_token=False, *, output=None,
                     chunk_size=16, concurrency=None):
        """Many facts, in one of two forms.

        **Pairs** (any iterable of (prompt, target)): one LocateFacts stream on one replica. Returns an
        iterator that yields an ``ItemResult`` per item as it completes (``.report`` or ``.exception``),
        then the ``BatchAggregate``. ``progress=True`` draws a bar on stderr. An item's report
        warnings are issued prefixed with ``items[i]: ``.

        **A pandas DataFrame** (columns ``prompt``, ``target``, optional ``model``; any others, such as
        ``relation``, are kept): the rows are split into chunks of ``chunk_size`` and spread over the
        client's replicas, at most ``concurrency`` chunks at a time (default: 2 per replica, a
        server's default ``--max_concurrent``); a chunk whose replica fails with UNAVAILABLE (down,
        connection reset, draining) goes on with its unfinished rows on another. Returns the frame
        with the results added, one row per input row, same index: ``report`` (a ``FactReport``),
        ``error`` and ``server`` columns and a per-fact summary (see ``factlens.dataset``).
        ``output``: a JSON-lines file that every finished row is appended to as it arrives; run
        again with the same file, the rows it holds are not computed again (a crash's truncated last
        line is dropped). ``progress`` (default: when stderr is a terminal) draws a bar. Raises
        FactlensError for a chunk that failed otherwise (the finished rows stay in ``output``) and
        ValueError for a malformed frame or an ``output`` file of other facts or options.
        """
        pd = sys.modules.get("pandas")  # a DataFrame means pandas is imported: the pair form does not import it
        if pd is not None and isinstance(items, pd.DataFrame):
            from factlens import dataset

            return dataset.locate(self, items, options=_message(pb.LocateOptions, options), timeout=timeout,
                                  progress=progress, first_token=first_token, output=output, chunk_size=chunk_size,
                                  concurrency=concurrency)
        return self._locate_facts_stream(items, options, timeout, bool(progress), first_token)

    def _locate_facts_stream(self, items, options, timeout, progress, first_token):
        req = pb.LocateFactsRequest(model=self.model, options=_message(pb.LocateOptions, options),
                                    items=[pb.FactItem(prompt=_prompt(p), target=_target(t, first_token))
                                           for p, t in items])
        model = None
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(req.items), desc="LocateFacts", unit="fact")
        try:
            for address, event in self._stream("LocateFacts", req, timeout):
                if event.HasField("aggregate"):
                    yield results.BatchAggregate(event.aggregate)
                    continue
                if model is None and event.item.HasField("report"):
                    model = self.model_info()
                if bar:
                    bar.update(1)
                if event.item.HasField("report"):
                    _warn(event.item.report, f"items[{event.item.index}]: ")
                yield results.ItemResult(event.item, model, server=address)
        finally:
            if bar:
                bar.close()
