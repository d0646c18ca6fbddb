"""A thin, typed wrapper over the factlens.v1 gRPC API.

    with Client("127.0.0.1:50051", token=None) as c:
        report = c.locate_fact("The capital of France is", " Paris")

Every method raises FactlensError (carrying the gRPC status code and message) on failure. Read-only
RPCs are retried on UNAVAILABLE (e.g. the model is still loading) with backoff; nothing else is.
"""
import time

import grpc

from factlens.v1 import factlens_pb2 as pb
from factlens.v1 import factlens_pb2_grpc as pb_grpc


class FactlensError(Exception):
    """A failed call: .code is a grpc.StatusCode, .message the server's explanation."""

    def __init__(self, code, message):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


def _prompt(prompt):
    if isinstance(prompt, (str, bytes)):
        return pb.Prompt(text=prompt.encode() if isinstance(prompt, str) else prompt)
    return pb.Prompt(token_ids=pb.TokenIds(ids=list(prompt)))


def _target(target, first_token=False):
    if isinstance(target, (str, bytes)):
        return pb.Target(text=target.encode() if isinstance(target, str) else target, first_token=first_token)
    return pb.Target(token_id=int(target), first_token=first_token)


class Client:
    """One channel to a factlens server. Thread-safe (gRPC channels are)."""

    def __init__(self, address, token=None, tls=False, root_certificates=None, model="", timeout=600.0,
                 retries=3):
        if tls:
            creds = grpc.ssl_channel_credentials(root_certificates=root_certificates)
            self._channel = grpc.secure_channel(address, creds)
        else:
            self._channel = grpc.insecure_channel(address)
        self._stub = pb_grpc.FactLensStub(self._channel)
        self._metadata = [("authorization", f"Bearer {token}")] if token else []
        self.model = model
        self.timeout = timeout
        self.retries = retries

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self._channel.close()

    def _call(self, method, request, timeout=None, retry=True):
        attempts = self.retries if retry else 1
        for attempt in range(attempts):
            try:
                return method(request, timeout=timeout or self.timeout, metadata=self._metadata)
            except grpc.RpcError as e:
                if retry and e.code() == grpc.StatusCode.UNAVAILABLE and attempt + 1 < attempts:
                    time.sleep(0.5 * 2 ** attempt)
                    continue
                raise FactlensError(e.code(), e.details()) from None

    def _stream(self, method, request, timeout=None):
        try:
            yield from method(request, timeout=timeout or self.timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            raise FactlensError(e.code(), e.details()) from None

    # --- RPCs -------------------------------------------------------------------------------------
    def list_models(self):
        return list(self._call(self._stub.ListModels, pb.ListModelsRequest()).models)

    def tokenize(self, text, add_special_tokens=True):
        return self._call(self._stub.Tokenize, pb.TokenizeRequest(model=self.model, text=text.encode() if isinstance(text, str) else text,
                                                                  add_special_tokens=add_special_tokens))

    def detokenize(self, ids, skip_special_tokens=False):
        return self._call(self._stub.Detokenize, pb.DetokenizeRequest(
            model=self.model, ids=list(ids), skip_special_tokens=skip_special_tokens)).text

    def predict(self, prompt, top_k=10, position=None, timeout=None):
        req = pb.PredictRequest(model=self.model, prompt=_prompt(prompt), top_k=top_k)
        if position is not None:
            req.position = position
        return self._call(self._stub.Predict, req, timeout)

    def decompose(self, prompt, target=None, positions=(), include_heads=False, include_vectors=False,
                  logit_lens_top_k=0, metric=pb.LOGPROB_INCREASE):
        req = pb.DecomposeRequest(model=self.model, prompt=_prompt(prompt), positions=list(positions),
                                  include_heads=include_heads, include_vectors=include_vectors,
                                  logit_lens_top_k=logit_lens_top_k,
                                  options=pb.AttributionOptions(metric=metric))
        if target is not None:
            req.target.CopyFrom(_target(target))
        return self._call(self._stub.Decompose, req)

    def rank(self, prompt, target, level, top_k=10, bottom=False, mode=pb.EXACT, metric=pb.LOGPROB_INCREASE,
             position=None, timeout=None):
        req = pb.RankRequest(model=self.model, prompt=_prompt(prompt), target=_target(target), level=level,
                             top_k=top_k, bottom=bottom, mode=mode, options=pb.AttributionOptions(metric=metric))
        if position is not None:
            req.position = position
        return self._call(self._stub.Rank, req, timeout)

    def trace(self, prompt, neuron, top_k=10, position=None):
        req = pb.TraceRequest(model=self.model, prompt=_prompt(prompt), neuron=neuron, top_k=top_k)
        if position is not None:
            req.position = position
        return self._call(self._stub.Trace, req)

    def project(self, prompt, component, top_k=10, position=None):
        req = pb.ProjectToVocabRequest(model=self.model, prompt=_prompt(prompt), component=component, top_k=top_k)
        if position is not None:
            req.position = position
        return self._call(self._stub.ProjectToVocab, req)

    def ablate(self, prompt, target, ablations, position=None):
        req = pb.AblateRequest(model=self.model, prompt=_prompt(prompt), target=_target(target),
                               ablations=list(ablations))
        if position is not None:
            req.position = position
        return self._call(self._stub.Ablate, req, retry=False)

    def locate_fact(self, prompt, target, on_progress=None, options=None, timeout=None):
        """Runs LocateFact; calls on_progress(stage, fraction) for each progress event."""
        req = pb.LocateFactRequest(model=self.model, prompt=_prompt(prompt), target=_target(target),
                                   options=options or pb.LocateOptions())
        for event in self._stream(self._stub.LocateFact, req, timeout):
            if event.HasField("progress"):
                if on_progress:
                    on_progress(event.progress.stage, event.progress.fraction)
            else:
                return event.report
        raise FactlensError(grpc.StatusCode.INTERNAL, "the stream ended without a report")

    def locate_facts(self, items, options=None, timeout=None):
        """items: (prompt, target) pairs. Yields ItemResult messages, then the BatchAggregate."""
        req = pb.LocateFactsRequest(model=self.model, options=options or pb.LocateOptions(),
                                    items=[pb.FactItem(prompt=_prompt(p), target=_target(t)) for p, t in items])
        for event in self._stream(self._stub.LocateFacts, req, timeout):
            yield event.item if event.HasField("item") else event.aggregate
