"""factlens command-line client.

    factlens [--server ADDR] [--model NAME] [--token T] [--json] COMMAND ...
    factlens models
    factlens predict "The capital of France is"
    factlens locate "The capital of France is" " Paris" [--html report.html]
    factlens rank "The capital of France is" " Paris" --level HEAD
    factlens project "The capital of France is" L1.N157.value
    factlens trace "The capital of France is" L1.N157
    factlens ablate "The capital of France is" " Paris" L1.N157 L0.N12 [--scale 0]

Prints readable tables, or with --json the response in the protobuf JSON mapping (every field,
int64 values as strings). Components are short names (see factlens.components). Options before or
after the command; --server, --model and --token default to $FACTLENS_SERVER (else
127.0.0.1:50051), $FACTLENS_MODEL (else the server's only model) and $FACTLENS_TOKEN. The
response's warnings are printed to stderr as "warning: ...". Exit status: 0, 1 for a failed call
(one line "factlens: CODE: message" on stderr), 2 for bad usage.
"""
import argparse
import json
import os
import sys
import warnings

import grpc

from factlens.client import DEFAULT_SERVER, Client, default_model, default_server
from factlens.errors import FactlensError, FactlensWarning
from factlens.results import dtype_phrase, slot_name
from factlens.v1 import factlens_pb2 as pb

_LEVELS = [n for n in pb.RankRequest.Level.keys() if n != "LEVEL_UNSPECIFIED"]
_MODES = [n for n in pb.RankMode.keys() if n != "RANK_MODE_UNSPECIFIED"]


def _quoted(token):
    return json.dumps(token, ensure_ascii=False)


def _print_frame(frame, token_columns=("token",)):
    frame = frame.copy()
    for column in token_columns:
        frame[column] = frame[column].map(_quoted)
    print(frame.to_string(index=False, float_format="{:.6f}".format))


def print_report(report):
    """The readable form of a FactReport."""
    r = report.proto
    print(f"Prompt tokens: {'|'.join(r.input_tokens)}")
    print(f"Target {_quoted(r.target.token)} (id {r.target.id}) at position {r.position}: p = {r.outcome.prob:.6f}, "
          f"log p = {r.outcome.log_prob:.4f}, rank {r.outcome.rank}")
    print("\nPrediction")
    _print_frame(report.predictions_frame())
    print("\nPer-layer log-prob increase (attention | FFN)")
    for layer, (a, f) in enumerate(zip(r.attention_layer_increase, r.ffn_layer_increase)):
        print(f"  layer {layer:2d}  {a:+10.5f} | {f:+10.5f}")
    print("\nTop heads")
    _print_frame(report.heads_frame()[["name", "score"]].head(5), token_columns=())
    print(f"\nTop FFN value neurons ({pb.RankMode.Name(r.mode).lower()}: {r.ffn_evaluated} of {r.ffn_total} "
          "evaluated exactly)")
    _print_frame(report.neurons_frame()[["name", "score", "coefficient", "top_tokens"]].head(10), token_columns=())
    print(f"\nTop attention neurons ({r.attention_evaluated} of {r.attention_total} evaluated exactly)")
    _print_frame(report.neurons_frame(attention=True)[["name", "source_token", "score", "top_tokens"]].head(10),
                 token_columns=("source_token",))
    print("\nQuery layers of the top FFN neurons")
    for q in r.query_layers_ffn:
        print("  key " + q.key_name + ": " + "  ".join(f"{slot_name(i)} {v:+.4f}" for i, v in enumerate(q.scores)))
    if r.ablated_ffn_neurons:
        print(f"\nAblating the top {r.ablated_ffn_neurons} FFN neurons: p {r.outcome.prob:.6f} -> {r.ablated.prob:.6f}, "
              f"rank {r.outcome.rank} -> {r.ablated.rank}")


def _print_models(models):
    for m in models:
        print(f"{m.name}: {m.family}, {m.layers} layers, {m.heads} heads ({m.kv_heads} kv), d={m.d_model}, "
              f"ffn={m.ffn_width}, vocab={m.vocab_size}, {dtype_phrase(m)} on {m.device}, ready={m.ready}")


def _print_ranked(frame):
    # The name holds layer, head, position and neuron; show the other columns only where they say something.
    extra = [c for c in ("coefficient", "source_token") if frame[c].any()]
    _print_frame(frame[["name", "score"] + extra], token_columns=[c for c in extra if c == "source_token"])


def _print_trace(trace):
    for key in trace.keys:
        print(f"key {key.key_name}: total {key.total:+.6f}")
    print(trace.to_pandas().to_string(float_format="{:+.6f}".format))
    for key in trace.keys:
        print(f"\nFFN subvalues activating key {key.key_name} most")
        _print_ranked(trace.top_subvalues(key.key_name))


def _print_projection(projection):
    print(f"final-norm scale {projection.final_scale:.6f}")
    _print_frame(projection.to_pandas())


def _print_ablation(ablation):
    _print_frame(ablation.to_pandas(), token_columns=())
    print(f"\nlog p change {ablation.log_prob_change:+.6f}; prediction after")
    _print_frame(ablation.predictions_frame())


def _add_common(parser, top_level):
    """Connection and output options. The defaults live on the top-level parser only, so that an option may
    come before or after the command (a command's parser leaves unset options alone)."""
    def default(value):
        return value if top_level else argparse.SUPPRESS

    parser.add_argument("--server", default=default(default_server()),
                        help=f"host:port of factlens_server's --listen (default: $FACTLENS_SERVER, else {DEFAULT_SERVER})")
    parser.add_argument("--model", default=default(default_model()),
                        help="model name (default: $FACTLENS_MODEL, else the server's only model)")
    parser.add_argument("--token", default=default(os.environ.get("FACTLENS_TOKEN")),
                        help="bearer token (default: $FACTLENS_TOKEN)")
    parser.add_argument("--tls", action="store_true", default=default(False), help="connect with TLS")
    parser.add_argument("--ca", default=default(None), help="PEM CA bundle for TLS (default: the system's)")
    parser.add_argument("--json", action="store_true", default=default(False),
                        help="print the response as JSON (protobuf JSON mapping)")


def _parser():
    parser = argparse.ArgumentParser(prog="factlens",
                                     description="Locate factual knowledge in a model served by factlens_server.")
    _add_common(parser, top_level=True)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name, help, *positionals):
        p = sub.add_parser(name, help=help)
        _add_common(p, top_level=False)
        for positional, positional_help in positionals:
            p.add_argument(positional, help=positional_help)
        if "target" in (positional for positional, _ in positionals):
            p.add_argument("--first_token", action="store_true",
                           help="use the first token of a multi-token text target")
        return p

    prompt, target = ("prompt", "text"), ("target", "text that adds one token to the prompt")
    command("models", "models served, with their shapes")
    p = command("predict", "top next tokens", prompt)
    p.add_argument("--top_k", type=int, default=10)
    p.add_argument("--position", type=int)
    p = command("locate", "the whole fact-localization report (LocateFact)", prompt, target)
    p.add_argument("--top_neurons", type=int, default=100, help="top FFN and attention neurons (default 100)")
    p.add_argument("--mode", default="EXACT", type=str.upper, choices=_MODES)
    p.add_argument("--html", metavar="PATH", help="also write the report as one self-contained HTML page")
    p = command("rank", "components ranked by their increase for the target", prompt, target)
    p.add_argument("--level", default="FFN_NEURON", type=str.upper, choices=_LEVELS)
    p.add_argument("--top_k", type=int, default=10)
    p.add_argument("--bottom", action="store_true", help="most negative first")
    p.add_argument("--mode", default="EXACT", type=str.upper, choices=_MODES)
    p = command("project", "a component's top and bottom tokens in vocabulary space", prompt,
                ("component", "e.g. L1.N157.value, ffn2, L1.H2"))
    p.add_argument("--top_k", type=int, default=10)
    p.add_argument("--position", type=int)
    p = command("trace", "which earlier components activate a neuron", prompt,
                ("neuron", "FFN neuron L1.N157 or attention neuron L1.H2.P3.d7"))
    p.add_argument("--top_k", type=int, default=10)
    p.add_argument("--position", type=int)
    p = command("ablate", "the target's outcome with components removed or scaled", prompt, target)
    p.add_argument("components", nargs="+", help="e.g. L1.N157 ffn0 L1.H2")
    p.add_argument("--scale", type=float, default=0.0, help="0 removes (default); other values scale")
    p.add_argument("--all_positions", action="store_true", help="change every position, not only the last")
    return parser


def _run(client, args):
    """Calls the command's RPC: (result, printer of its readable form)."""
    if args.command == "models":
        return client.list_models(), _print_models
    if args.command == "predict":
        return client.predict(args.prompt, top_k=args.top_k, position=args.position), \
            lambda r: _print_frame(r.to_pandas())
    if args.command == "locate":
        options = pb.LocateOptions(mode=pb.RankMode.Value(args.mode), top_ffn_neurons=args.top_neurons,
                                   top_attention_neurons=args.top_neurons)
        report = client.locate_fact(args.prompt, args.target, options=options, first_token=args.first_token,
                                    progress=not args.json and sys.stderr.isatty())
        if args.html:
            report.to_html(args.html)
        return report, print_report
    if args.command == "rank":
        return client.rank(args.prompt, args.target, args.level, top_k=args.top_k, bottom=args.bottom,
                           mode=args.mode, first_token=args.first_token), lambda r: _print_ranked(r.to_pandas())
    if args.command == "project":
        return client.project(args.prompt, args.component, top_k=args.top_k, position=args.position), _print_projection
    if args.command == "trace":
        return client.trace(args.prompt, args.neuron, top_k=args.top_k, position=args.position), _print_trace
    return client.ablate(args.prompt, args.target, args.components, scale=args.scale,
                         all_positions=args.all_positions, first_token=args.first_token), _print_ablation


def _error_line(error, args) -> str:
    """The one stderr line of a failed call; a target that is several tokens gets the option that accepts it."""
    line = f"factlens: {error}"
    if (error.code == grpc.StatusCode.INVALID_ARGUMENT and hasattr(args, "first_token")
            and ("first token" in error.message or "first_token" in error.message)
            and "--first_token" not in error.message):
        line += " (--first_token)"
    return line


def _report_warnings(caught):
    """FactlensWarnings as "warning: ..." lines on stderr (instead of Python's warning format); others as Python shows them."""
    for w in caught:
        if issubclass(w.category, FactlensWarning):
            print(f"warning: {w.message}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno, w.file, w.line)


def main(argv=None) -> int:
    """Runs the CLI; returns the exit status."""
    args = _parser().parse_args(argv)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FactlensWarning)
        try:
            with Client(args.server, token=args.token, tls=args.tls, root_certificates=args.ca,
                        model=args.model) as c:
                result, printer = _run(c, args)
        except FactlensError as e:
            error = e
        else:
            error = None
    _report_warnings(caught)
    if error is not None:
        print(_error_line(error, args), file=sys.stderr)
        return 1
    try:
        if args.json:
            print(result.to_json())
        else:
            printer(result)
        sys.stdout.flush()
    except BrokenPipeError:  # e.g. `factlens ... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
    return 0
