"""factlens command-line client: python3 -m factlens [--server ADDR] {models,predict,locate,rank} ...

Prints readable tables, or the response as JSON with --json.
"""
import argparse
import json
import sys

from google.protobuf import json_format

from factlens.client import Client, FactlensError
from factlens.v1 import factlens_pb2 as pb


def slot_name(i):
    return "emb" if i == 0 else ("attn" if i % 2 == 1 else "ffn") + str((i - 1) // 2)


def print_report(r):
    tokens = "|".join(r.input_tokens)
    print(f"Prompt tokens: {tokens}")
    print(f'Target "{r.target.token}" (id {r.target.id}) at position {r.position}: p = {r.outcome.prob:.6f}, '
          f"log p = {r.outcome.log_prob:.4f}, rank {r.outcome.rank}")
    print("\nPrediction")
    for t in r.predictions:
        print(f'  {json.dumps(t.token, ensure_ascii=False):16s} {t.score:.6f}')
    print("\nPer-layer log-prob increase (attention | FFN)")
    for l, (a, f) in enumerate(zip(r.attention_layer_increase, r.ffn_layer_increase)):
        print(f"  layer {l:2d}  {a:+10.5f} | {f:+10.5f}")
    print("\nTop heads")
    for h in r.top_heads[:5]:
        print(f"  L{h.layer}.H{h.head}  {h.score:+10.5f}")
    print(f"\nTop FFN value neurons ({pb.RankMode.Name(r.mode).lower()}: {r.ffn_evaluated} of {r.ffn_total} "
          "evaluated exactly)")
    for n in r.ffn_neurons[:10]:
        top = " ".join(json.dumps(t.token, ensure_ascii=False) for t in n.top_tokens[:6])
        print(f"  L{n.layer}.N{n.neuron:<5d} {n.score:+10.5f}  coef {n.coefficient:+8.4f}  {top}")
    print(f"\nTop attention neurons ({r.attention_evaluated} of {r.attention_total} evaluated exactly)")
    for n in r.attention_neurons[:10]:
        src = r.input_tokens[n.source_position]
        top = " ".join(json.dumps(t.token, ensure_ascii=False) for t in n.top_tokens[:6])
        print(f'  L{n.layer}.H{n.head}.d{n.neuron:<3d} <- "{src}"  {n.score:+10.5f}  {top}')
    print("\nQuery layers of the top FFN neurons")
    for q in r.query_layers_ffn:
        print("  key " + q.key_name + ": " + "  ".join(f"{slot_name(i)} {v:+.4f}" for i, v in enumerate(q.scores)))
    print(f"\nAblating the top {r.ablated_ffn_neurons} FFN neurons: p {r.outcome.prob:.6f} -> {r.ablated.prob:.6f}, "
          f"rank {r.outcome.rank} -> {r.ablated.rank}")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="factlens")
    parser.add_argument("--server", default="127.0.0.1:50051")
    parser.add_argument("--model", default="")
    parser.add_argument("--token", default=None, help="bearer token")
    parser.add_argument("--json", action="store_true", help="print the response as JSON")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("models")
    p = sub.add_parser("predict")
    p.add_argument("prompt")
    p.add_argument("--top_k", type=int, default=10)
    p = sub.add_parser("locate")
    p.add_argument("prompt")
    p.add_argument("target")
    p = sub.add_parser("rank")
    p.add_argument("prompt")
    p.add_argument("target")
    p.add_argument("--level", default="FFN_NEURON", choices=[n for n in pb.RankRequest.Level.keys() if n != "LEVEL_UNSPECIFIED"])
    p.add_argument("--top_k", type=int, default=10)
    p.add_argument("--bottom", action="store_true")
    args = parser.parse_args(argv)

    with Client(args.server, token=args.token, model=args.model) as c:
        try:
            if args.command == "models":
                result = pb.ListModelsResponse(models=c.list_models())
            elif args.command == "predict":
                result = c.predict(args.prompt, top_k=args.top_k)
            elif args.command == "locate":
                progress = (lambda s, f: None) if args.json else (
                    lambda s, f: print(f"[{100 * f:3.0f}%] {s}", file=sys.stderr))
                result = c.locate_fact(args.prompt, args.target, on_progress=progress)
            else:
                result = c.rank(args.prompt, args.target, pb.RankRequest.Level.Value(args.level), top_k=args.top_k,
                                bottom=args.bottom)
        except FactlensError as e:
            print(f"factlens: {e}", file=sys.stderr)
            return 1
    if args.json:
        print(json_format.MessageToJson(result, preserving_proto_field_name=True))
    elif args.command == "locate":
        print_report(result)
    elif args.command == "models":
        for m in result.models:
            print(f"{m.name}: {m.family}, {m.layers} layers, {m.heads} heads ({m.kv_heads} kv), d={m.d_model}, "
                  f"ffn={m.ffn_width}, vocab={m.vocab_size}, {m.dtype} on {m.device}, ready={m.ready}")
    elif args.command == "predict":
        for t in result.predictions:
            print(f"  {json.dumps(t.token, ensure_ascii=False):16s} {t.score:.6f}")
    else:
        for rc in result.components:
            comp = rc.component
            print(f"  {pb.Component.Kind.Name(comp.kind)} L{comp.layer} H{comp.head} s{comp.source_position} "
                  f"n{comp.neuron}  {rc.score:+.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
