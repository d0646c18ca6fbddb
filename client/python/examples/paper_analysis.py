"""The paper's analysis of one fact, step by step, against a running factlens_server.

"Locating factual knowledge in LLMs: exploring the residual stream and analysing subvalues in
vocabulary space", reproduced for "The capital of France is" -> " Paris" on the server's model (the
demo model gpt2-facts-tiny by default; --model for another). Figures and the HTML report go to --out.
The `# %%` cells run one by one in Jupyter / VS Code, or all at once:

    python3 client/python/examples/paper_analysis.py --server 127.0.0.1:50051 --out paris-analysis
"""
# %% Connect
import argparse
import os

from factlens import Client

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--server", default=None, help="host:port (default: $FACTLENS_SERVER, else 127.0.0.1:50051)")
parser.add_argument("--model", default=None,
                    help="model name (default: $FACTLENS_MODEL, else the server's only model)")
parser.add_argument("--token", default=os.environ.get("FACTLENS_TOKEN"), help="bearer token")
parser.add_argument("--prompt", default="The capital of France is")
parser.add_argument("--target", default=" Paris")
parser.add_argument("--top", type=int, default=10, help="neurons to show, trace and ablate")
parser.add_argument("--out", default="factlens-analysis", help="directory for the figures and the report")
args, _ = parser.parse_known_args()  # tolerate a notebook kernel's own arguments
os.makedirs(args.out, exist_ok=True)
client = Client(args.server, token=args.token, model=args.model)
model = client.model_info()
print(f"{model.name}: {model.family}, {model.layers} layers x {model.heads} heads, FFN width {model.ffn_width}")


def save(fig, name):
    path = os.path.join(args.out, name)
    fig.savefig(path, dpi=120)
    print(f"  figure: {path}")


# %% 1. The prediction: is the target the model's answer?
prediction = client.predict(args.prompt, top_k=5)
print(f"\n{args.prompt!r} ->")
print(prediction.to_pandas().to_string(index=False))

# %% 2. The whole localization in one call (streamed, with a progress bar)
report = client.locate_fact(args.prompt, args.target, progress=True)
print(f"\np({args.target!r}) = {report.outcome.prob:.4f}, rank {report.outcome.rank}")

# %% 3. Per layer: how much attention and FFN outputs raise log p(target) -- the paper's figure
print("\nPer-layer log-prob increase")
print(report.to_pandas().to_string(index=False))
save(report.plot_layers(), "layer_increase.png")

# %% 4. Heads: every head's increase (Decompose), as a layer x head heatmap
from factlens import plots  # noqa: E402

heads = client.decompose(args.prompt, target=args.target, include_heads=True)
save(plots.head_heatmap(heads.head_matrix(), title="Head increases of log p(target)"), "heads.png")
print("\nTop heads")
print(report.heads_frame()[["name", "score"]].head(5).to_string(index=False))

# %% 5. Top FFN neurons: their increase and the tokens their value vectors promote
neurons = report.neurons_frame().head(args.top)
print("\nTop FFN neurons")
print(neurons[["name", "score", "coefficient", "top_tokens"]].to_string(index=False))
save(report.plot_neuron_table(n=args.top), "ffn_neurons.png")
print("\nTop attention neurons")
print(report.neurons_frame(attention=True)[["name", "source_token", "score", "top_tokens"]].head(args.top)
      .to_string(index=False))

# %% 6. Tracing the top FFN neuron: which earlier layers write what its key reads
top = neurons.name[0]
trace = client.trace(args.prompt, top)
print(f"\nWhat activates {top}")
print(trace.to_pandas().to_string(float_format="{:+.4f}".format))
save(trace.plot_layers(), "trace_top_neuron.png")
projection = client.project(args.prompt, top + ".value", top_k=5)
print(f"{top}'s value vector promotes: {', '.join(repr(t.token) for t in projection.top)}")

# %% 7. Ablation: remove the top FFN neurons, the top attention neurons, then both
ffn = list(neurons.name)
attention = list(report.neurons_frame(attention=True).name[:args.top])
print("\nAblation")
for label, components in [(f"top {len(ffn)} FFN neurons", ffn), (f"top {len(attention)} attention neurons", attention),
                          ("both", ffn + attention)]:
    a = client.ablate(args.prompt, args.target, components)
    top_after = a.predictions_after[0].token
    print(f"  {label:28s} log p {a.before.log_prob:.4f} -> {a.after.log_prob:.4f}, rank {a.before.rank} -> "
          f"{a.after.rank} (now predicts {top_after!r})")

# %% 8. Everything in one self-contained HTML page
path = os.path.join(args.out, "report.html")
report.to_html(path)
print(f"\nHTML report: {path}")
print(f"The same from the shell: factlens trace {args.prompt!r} {top}")
