"""A FactReport as one self-contained HTML page: inline CSS, figures as base64 PNG, no external requests."""
import base64
import html
import io
import json

from factlens.v1 import factlens_pb2 as pb

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; background: #fff; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 1.8em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; }
th { background: #f0f3f8; }
.summary td:first-child { font-weight: bold; }
.target { background: #fde9c9; padding: 0 4px; border-radius: 3px; white-space: pre; }
img { max-width: 100%; }
.warnings { background: #fff4ce; border: 1px solid #e0b000; border-left: 6px solid #e0b000; border-radius: 4px;
            padding: 0.6em 1em; margin: 1em 0; }
.warnings ul { margin: 0.3em 0 0 0; padding-left: 1.2em; }
"""

_NEURON_COLUMNS = ["name", "score", "coefficient", "top_tokens"]


def _figure(fig, alt) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _quoted(token) -> str:
    return json.dumps(token, ensure_ascii=False)


def _table(frame, float_format="{:+.5f}".format) -> str:
    return frame.to_html(index=False, border=0, float_format=float_format, escape=True)


def _warnings_banner(texts) -> str:
    """The report's warnings (a request the server answered but probably not as meant) as a banner; "" if none."""
    if not texts:
        return ""
    items = "".join(f"<li>{html.escape(t)}</li>" for t in texts)
    label = "Warning" if len(texts) == 1 else f"{len(texts)} warnings"
    return (f'<div class="warnings" role="alert"><strong>{label}: this report may not be of the fact you meant'
            f"</strong><ul>{items}</ul></div>\n")


def render(report, top=20) -> str:
    """The page for a ``results.FactReport``; ``top`` rows of each neuron table."""
    r = report.proto
    target = _quoted(r.target.token)
    title = f"{_quoted(report.prompt)} → {target}"
    model = report.model.name if report.model is not None else "(the server's model)"
    summary = [
        ("model", model),
        ("prompt tokens", " | ".join(_quoted(t) for t in r.input_tokens)),
        ("target", f'<span class="target">{html.escape(r.target.token)}</span> (id {r.target.id}) at position '
                   f"{r.position}"),
        ("outcome", f"p = {r.outcome.prob:.6f}, log p = {r.outcome.log_prob:.4f}, rank {r.outcome.rank}"),
        ("metric / ranking", f"{pb.Metric.Name(r.metric)} / {pb.RankMode.Name(r.mode)}: {r.ffn_evaluated} of "
                             f"{r.ffn_total} FFN neurons and {r.attention_evaluated} of {r.attention_total} "
                             "attention neurons evaluated exactly"),
    ]
    if r.ablated_ffn_neurons:
        summary.append((f"ablating the top {r.ablated_ffn_neurons} FFN neurons",
                        f"p {r.outcome.prob:.6f} → {r.ablated.prob:.6f}, rank {r.outcome.rank} → {r.ablated.rank}"))
    summary_rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v if k == 'target' else html.escape(v)}</td></tr>"
                           for k, v in summary)
    predictions = report.predictions_frame()
    predictions["token"] = predictions["token"].map(_quoted)
    sections = [
        ("Prediction", _table(predictions, "{:.6f}".format)),
        ("Per-layer increase of the target: attention vs FFN",
         _figure(report.plot_layers(), "per-layer attention and FFN increases") + _table(report.to_pandas())),
        ("Top heads", _figure(report.plot_heads(), "layer by head heatmap of the top heads") +
         _table(report.heads_frame()[["name", "score"]])),
        ("Top FFN neurons and the tokens their value vectors promote",
         _table(report.neurons_frame(top_tokens=10)[_NEURON_COLUMNS].head(top))),
        ("Top attention neurons (head dimension d of a head at a source position)",
         _table(report.neurons_frame(attention=True, top_tokens=10)[["name", "source_token"] + _NEURON_COLUMNS[1:]]
                .head(top))),
        ("Which layers activate the top neurons", _table(report.query_layers_frame().reset_index(names="slot"))),
    ]
    body = "".join(f"<h2>{html.escape(name)}</h2>\n{content}\n" for name, content in sections)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>factlens: {html.escape(title)}</title><style>{_CSS}</style></head>\n<body>\n"
            f"{_warnings_banner(list(getattr(r, 'warnings', ())))}"
            f"<h1>Fact localization: {html.escape(title)}</h1>\n"
            f'<table class="summary">{summary_rows}</table>\n{body}</body></html>\n')
