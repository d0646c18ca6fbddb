#!/usr/bin/env python3
"""Writes one example request/response pair per factlens.v1 RPC, taken from a running server, as
Markdown (docs/api-examples.md is this script's output against the demo model), and measures the
LocateFact latency seen by a client.

    PYTHONPATH=build/python python3 tools/rpc_examples.py --server 127.0.0.1:50051 > docs/api-examples.md

Long repeated fields are cut to their first few entries (marked "…") so the pairs stay readable.
"""
import argparse
import json
import os
import statistics
import sys
import time

import grpc
from google.protobuf import json_format

from factlens.v1 import factlens_pb2 as pb
from factlens.v1 import factlens_pb2_grpc as pb_grpc

PROMPT = b"The capital of France is"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the checkout
KEEP_MESSAGES, KEEP_SCALARS = 2, 6  # entries kept of long lists of messages / of numbers and strings


def render(value, indent=0):
    """JSON with messages one field per line, lists of scalars on one line, long lists cut."""
    pad, inner = "  " * indent, "  " * (indent + 1)
    if isinstance(value, dict):
        if not value:
            return "{}"
        fields = [f"{inner}{json.dumps(k)}: {render(v, indent + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(fields) + "\n" + pad + "}"
    if isinstance(value, list):
        scalars = not any(isinstance(v, (dict, list)) for v in value)
        keep = KEEP_SCALARS if scalars else KEEP_MESSAGES
        items = [render(v, indent + 1) for v in value[:keep]]
        if len(value) > keep:
            items.append(json.dumps(f"… {len(value) - keep} more", ensure_ascii=False))
        if scalars:
            return "[" + ", ".join(items) + "]"
        return "[\n" + ",\n".join(inner + i for i in items) + "\n" + pad + "]"
    return json.dumps(value, ensure_ascii=False)


def readable(message, value):
    """`value` (MessageToDict of `message`) with bytes fields (UTF-8 text in this API) shown as
    text, not base64, and a model's source directory relative to the checkout (no local path)."""
    for field in message.DESCRIPTOR.fields:
        if field.name not in value:
            continue
        items = getattr(message, field.name)
        repeated = field.label == field.LABEL_REPEATED
        if field.type == field.TYPE_MESSAGE and not (repeated and field.message_type.GetOptions().map_entry):
            if repeated:
                value[field.name] = [readable(m, v) for m, v in zip(items, value[field.name])]
            else:
                value[field.name] = readable(items, value[field.name])
        elif field.type == field.TYPE_BYTES:
            value[field.name] = ([b.decode("utf-8", "replace") for b in items] if repeated
                                 else items.decode("utf-8", "replace"))
        elif field.name == "source" and isinstance(value[field.name], str):
            real = os.path.realpath(value[field.name])  # a build tree links its models to models/
            if real.startswith(ROOT + os.sep):
                value[field.name] = os.path.relpath(real, ROOT)
    return value


def as_json(message):
    """Every field, including zero values (a second top head's layer 0 is shown, not dropped)."""
    return render(readable(message, json_format.MessageToDict(message, preserving_proto_field_name=True,
                                                              including_default_value_fields=True)))


def examples():
    prompt = pb.Prompt(text=PROMPT)
    paris = pb.Target(text=b" Paris")
    return [
        ("ListModels", pb.ListModelsRequest()),
        ("Tokenize", pb.TokenizeRequest(text=PROMPT)),
        ("Detokenize", pb.DetokenizeRequest(ids=[464, 3139, 286, 4881, 318])),
        ("Predict", pb.PredictRequest(prompt=prompt, top_k=3)),
        ("Decompose", pb.DecomposeRequest(prompt=prompt, target=paris, logit_lens_top_k=2)),
        ("Rank", pb.RankRequest(prompt=prompt, target=paris, level=pb.RankRequest.FFN_NEURON, top_k=3)),
        ("Trace", pb.TraceRequest(prompt=prompt, neuron=pb.Component(kind=pb.Component.FFN_NEURON, layer=1,
                                                                     neuron=157), top_k=3)),
        ("ProjectToVocab", pb.ProjectToVocabRequest(
            prompt=prompt, component=pb.Component(kind=pb.Component.FFN_NEURON_VALUE, layer=1, neuron=157),
            top_k=3)),
        ("Ablate", pb.AblateRequest(prompt=prompt, target=paris, ablations=[
            pb.AblationSpec(component=pb.Component(kind=pb.Component.FFN_LAYER, layer=1))])),
        ("LocateFact", pb.LocateFactRequest(prompt=prompt, target=paris,
                                            options=pb.LocateOptions(top_ffn_neurons=3, top_attention_neurons=3))),
        ("LocateFacts", pb.LocateFactsRequest(
            items=[pb.FactItem(prompt=prompt, target=paris),
                   pb.FactItem(prompt=pb.Prompt(text=b"The capital of Japan is"), target=pb.Target(text=b" Tokyo"))],
            options=pb.LocateOptions(top_ffn_neurons=3, top_attention_neurons=3))),
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", required=True)
    parser.add_argument("--latency_runs", type=int, default=20)
    args = parser.parse_args()
    stub = pb_grpc.FactLensStub(grpc.insecure_channel(args.server))
    out = sys.stdout
    out.write("# factlens.v1: one request/response per RPC (demo model gpt2-facts-tiny)\n\n"
              "Generated by `tools/rpc_examples.py` against `factlens_server` serving the demo "
              f"model. Lists longer than {KEEP_SCALARS} numbers or {KEEP_MESSAGES} messages are cut (\"… N more\"). Every field is shown, zero values "
              "included. Text fields are `bytes` on the wire (so that invalid UTF-8 gets a clear "
              "INVALID_ARGUMENT); the canonical protobuf JSON mapping would show them base64-encoded, "
              "here they are shown as the text they carry. Model sources are relative to the checkout.\n")
    for rpc, request in examples():
        method = getattr(stub, rpc)
        if rpc.startswith("LocateFact"):
            responses = list(method(request, timeout=60))
        else:
            responses = [method(request, timeout=60)]
        out.write(f"\n## {rpc}\n\nRequest:\n\n```json\n{as_json(request)}\n```\n\n")
        label = "Response" if len(responses) == 1 else f"Response stream ({len(responses)} messages)"
        shown = responses if len(responses) <= 4 else responses[:2] + responses[-2:]
        body = "\n".join(as_json(r) for r in shown)
        out.write(f"{label}:\n\n```json\n{body}\n```\n")

    # The standard LocateFact (default options: exact top-100 FFN and attention neurons, query
    # layers, ablation), as the README reports it.
    request = pb.LocateFactRequest(prompt=pb.Prompt(text=PROMPT), target=pb.Target(text=b" Paris"))
    latencies = []
    for _ in range(args.latency_runs):
        start = time.perf_counter()
        list(stub.LocateFact(request, timeout=60))
        latencies.append(time.perf_counter() - start)
    print(f"Standard LocateFact latency over {len(latencies)} calls: median {statistics.median(latencies) * 1000:.0f} ms, "
          f"min {min(latencies) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms", file=sys.stderr)


if __name__ == "__main__":
    main()
