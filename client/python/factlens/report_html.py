"""A FactReport as one self-contained HTML page: inline CSS, figures as base64 PNG, no external requests.

The page explains itself: a takeaway computed from the report, the target marked wherever it appears in
a token list, a glossary of the report's terms and the report's provenance.
"""
import html
import json

import numpy as np

from factlens.components import component_name
from factlens.plots import SUBVALUE_TOKENS, to_img_tag
from factlens.results import CLIENT_VERSION, _metric
from factlens.v1 import factlens_pb2 as pb

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; background: #fff; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 1.8em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f0f3f8; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.summary td:first-child, .provenance td:first-child { font-weight: bold; }
code { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 0.92em; }
code.tok { white-space: pre; }
mark { background: #ffd966; padding: 0 2px; border-radius: 3px; }
.takeaway { background: #eef5ee; border-left: 6px solid #2ca02c; padding: 0.7em 1em; margin: 1em 0; font-size: 1.05em;
            line-height: 1.5; }
.note { color: #555; font-size: 0.9em; max-width: 60em; }
dl.glossary dt { font-weight: bold; margin-top: 0.6em; }
dl.glossary dd { margin-left: 1.5em; max-width: 60em; }
img { max-width: 100%; }
.warnings { background: #fff4ce; border: 1px solid #e0b000; border-left: 6px solid #e0b000; border-radius: 4px;
            padding: 0.6em 1em; margin: 1em 0; }
.warnings ul { margin: 0.3em 0 0 0; padding-left: 1.2em; }
"""

_UNIT_OF = {pb.PROB_INCREASE: "probability", pb.LOGIT_INCREASE: "logit"}
_UNIT_OF.update({m: "log-prob" for m in pb.Metric.values() if m not in _UNIT_OF})

_MODE_WORDS = {
    pb.EXACT: "exact values; candidates that provably cannot reach the top lists were pruned by bounds",
    pb.EXHAUSTIVE: "exact value of every component",
    pb.APPROXIMATE: "first-order (tangent) values",
}


def _metric_name(metric) -> str:
    return pb.Metric.Name(metric or pb.LOGPROB_INCREASE)  # unspecified = LOGPROB_INCREASE


def _mode_name(mode) -> str:
    return pb.RankMode.Name(mode or pb.EXACT)  # unspecified = EXACT


def _e(value) -> str:
    return html.escape(str(value))


def _quoted(token) -> str:
    return json.dumps(token, ensure_ascii=False)


def _tok(token, target=False) -> str:
    """A token JSON-quoted (its leading space visible), escaped; in a <mark> when it is the target."""
    code = f'<code class="tok">{_e(_quoted(token))}</code>'
    return f'<mark title="the target">{code}</mark>' if target else code


def _toks(scores, target_id, n=10) -> str:
    return " ".join(_tok(t.token, t.id == target_id) for t in list(scores)[:n])


def _table(columns, rows, numeric=()) -> str:
    """An HTML table: column names (text), rows of HTML cells; columns in ``numeric`` right-aligned."""
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f'<td class="num">{cell}</td>' if i in numeric else f"<td>{cell}</td>"
                                    for i, cell in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figure(fig, alt) -> str:
    return to_img_tag(fig, alt, dpi=100)


def _warnings_banner(texts) -> str:
    """The report's warnings (a request the server answered but probably not as meant) as a banner; "" if none."""
    if not texts:
        return ""
    items = "".join(f"<li>{_e(t)}</li>" for t in texts)
    label = "Warning" if len(texts) == 1 else f"{len(texts)} warnings"
    return (f'<div class="warnings" role="alert"><strong>{label}: this report may not be of the fact you meant'
            f"</strong><ul>{items}</ul></div>\n")


def _neuron_name(n, attention) -> str:
    kind = pb.Component.ATTENTION_NEURON if attention else pb.Component.FFN_NEURON
    return component_name(pb.Component(kind=kind, layer=n.layer, neuron=n.neuron, head=n.head,
                                       source_position=n.source_position))


def _step_words(name) -> str:
    """``emb`` / ``attn2`` / ``ffn2`` as words."""
    if name == "emb":
        return "the embedding"
    kind, layer = ("attention", name[4:]) if name.startswith("attn") else ("FFN", name[3:])
    return f"layer {layer}'s {kind} (<code>{_e(name)}</code>)"


def takeaway(report) -> str:
    """The report in two or three sentences (HTML): the outcome, which layers raise the target most and
    the attention / FFN shares, the top FFN neuron and the tokens it promotes, and (with logit-lens steps)
    after which sublayer the target becomes the top prediction."""
    r = report.proto
    target = _tok(r.target.token, True)
    o = r.outcome
    top = (f"; the model's top prediction is {_tok(r.predictions[0].token)}" if o.rank != 1 and r.predictions
           else "")
    first = f"The model gives {target} p = {o.prob:.4f} (rank {o.rank}{top})"
    attention, ffn = report.attention_layer_increase, report.ffn_layer_increase
    if len(ffn):
        la, lf = int(np.argmax(attention)), int(np.argmax(ffn))
        sa, sf = float(attention.sum()), float(ffn.sum())
        lead = "attention" if sa >= sf else "FFN"
        shares = ""
        if sa >= 0 and sf >= 0 and sa + sf > 0:
            shares = (f" ({100 * sa / (sa + sf):.0f} % attention, {100 * sf / (sa + sf):.0f} % FFN of the "
                      f"{sa + sf:+.2f} the layers add in all)")
        first += (f". Summed over layers, {lead} carries more of it: attention layers add {sa:+.2f} and FFN layers "
                  f"{sf:+.2f} to the target's {_UNIT_OF[r.metric]}{shares}; the largest increases are attention layer {la} "
                  f"({attention[la]:+.2f}) and FFN layer {lf} ({ffn[lf]:+.2f})")
    sentences = [first + "."]
    if r.ffn_neurons:
        n = r.ffn_neurons[0]
        promoted = ", ".join(_tok(t.token, t.id == r.target.id) for t in n.top_tokens[:5])
        among = any(t.id == r.target.id for t in n.top_tokens[:5])
        sentences.append(
            f"The top FFN neuron is <strong>{_e(_neuron_name(n, False))}</strong> (score {n.score:+.3f}, "
            f"coefficient m = {n.coefficient:+.2f})" +
            (f"; its subvalue m·v promotes {promoted}" + (", the target among them" if among else "") if promoted
             else "") + ".")
    lens = _lens_sentence(report)
    if lens:
        sentences.append(lens)
    return " ".join(sentences)


def _lens_sentence(report) -> str:
    steps = report.cumulative_frame()
    if steps.empty:
        return ""
    after = report.rank1_after()
    ranks = list(steps["rank"])
    if after is None:
        return (f"In the logit lens the target never settles at rank 1: it ends at rank {ranks[-1]} "
                f"(best rank {min(ranks)}, after {_step_words(steps.after[int(np.argmin(ranks))])}).")
    text = f"In the logit lens the target becomes the top prediction after {_step_words(after)} and stays there"
    first = steps.after[ranks.index(1)]
    if first != after:
        text += f" (it is briefly rank 1 after {_step_words(first)} already)"
    return text + "."


def _summary(report) -> str:
    r = report.proto
    rows = [
        ("model", _e(report.provenance()["model"])),
        ("prompt tokens", " | ".join(_tok(t) for t in r.input_tokens)),
        ("target", f"{_tok(r.target.token, True)} (id {r.target.id}) at position {r.position}"),
        ("outcome", _e(f"p = {r.outcome.prob:.6f}, log p = {r.outcome.log_prob:.4f}, rank {r.outcome.rank}")),
        ("metric / ranking", _e(f"{_metric_name(r.metric)} / {_mode_name(r.mode)}: {r.ffn_evaluated} of "
                                f"{r.ffn_total} FFN neurons and {r.attention_evaluated} of {r.attention_total} "
                                "attention neurons evaluated exactly")),
    ]
    if r.ablated_ffn_neurons:
        rows.append((f"ablating the top {r.ablated_ffn_neurons} FFN neurons",
                     _e(f"p {r.outcome.prob:.6f} → {r.ablated.prob:.6f}, rank {r.outcome.rank} → {r.ablated.rank}")))
    return '<table class="summary">' + "".join(f"<tr><td>{_e(k)}</td><td>{v}</td></tr>" for k, v in rows) + "</table>"


def _lens_section(report) -> str:
    steps = report.cumulative_frame()
    target_id = report.proto.target.id
    rows = [[str(s.step), f"<code>{_e(s.after)}</code>", f"{s.log_prob:+.4f}", f"{s.prob:.6f}",
             "<strong>1</strong>" if s.rank == 1 else str(s.rank), _tok(s.top_token, s.top_id == target_id),
             f"{s.top_prob:.6f}"] for s in steps.itertuples(index=False)]
    return (f'<p class="note">{_lens_sentence(report)} Each step applies the final norm and the output layer to the '
            "residual stream so far: what the model would predict if the layers after that step were skipped. "
            "Stars mark the steps where the target is the top prediction.</p>\n" +
            _figure(report.plot_cumulative(), "the target's log-prob in the logit lens after each step") +
            _table(["step", "after", "log p(target)", "p(target)", "target rank", "top token", "top p"], rows,
                   numeric=(0, 2, 3, 4, 6)))


def _neuron_section(report, attention, top) -> str:
    r = report.proto
    neurons = list(r.attention_neurons if attention else r.ffn_neurons)[:top]
    rows = [[f"<code>{_e(_neuron_name(n, attention))}</code>"] +
            ([_tok(report._source_token(n.source_position))] if attention else []) +
            [f"{n.score:+.5f}", f"{n.coefficient:+.4f}", _toks(n.top_tokens, r.target.id)] for n in neurons]
    columns = ["name"] + (["source token"] if attention else []) + ["score", "coefficient m", SUBVALUE_TOKENS]
    what = ("attention neurons, named like <code>L1.H2.P3.d7</code>: dimension 7 of head 2 in layer 1, reading "
            "source position 3" if attention else "FFN neurons, named like <code>L2.N94</code>: neuron 94 of layer 2")
    note = (f'<p class="note">The top {what}; ranked by score, the {_e(_metric(r.metric))} of the target that the '
            "neuron's subvalue m·v adds. The tokens are those the subvalue promotes most (its projection into "
            "vocabulary space), the target marked. The coefficient m is the neuron's activation: when m &lt; 0 the "
            "subvalue points against the value vector v, so the tokens it promotes are v's <em>bottom</em> tokens, "
            "and v's own top tokens are suppressed.</p>\n")
    return note + _table(columns, rows, numeric=(2, 3) if attention else (1, 2))


def _heads_section(report, top) -> str:
    heads = [[f"<code>{_e(h.name)}</code>", f"{h.score:+.5f}"] for h in report.heads_frame().head(top).itertuples()]
    pairs = [[f"<code>{_e(h.name)}</code>", str(h.source_position), _tok(h.source_token), f"{h.score:+.5f}"]
             for h in report.heads_frame(positions=True).head(top).itertuples()]
    out = ('<p class="note">A head\'s score is the increase its output (summed over source positions, through '
           "W_O) gives the target; a head × source position pair counts only what the head reads from one "
           "token.</p>\n" + _figure(report.plot_heads(), "layer by head heatmap of the top heads") +
           '<div style="display:flex;gap:2em;align-items:flex-start"><div><strong>Top heads</strong>' +
           _table(["head", "score"], heads, numeric=(1,)) + "</div>")
    if pairs:
        out += ("<div><strong>Top head × source position pairs</strong>" +
                _table(["head × position", "source position", "source token", "score"], pairs, numeric=(1, 3)) +
                "</div>")
    return out + "</div>"


def _query_section(report) -> str:
    frame = report.query_layers_frame()
    rows = [[f"<code>{_e(slot)}</code>"] + [f"{v:+.5f}" for v in values]
            for slot, values in zip(frame.index, frame.itertuples(index=False))]
    return ('<p class="note">For each top neuron, the inner product of its key with every component the residual '
            "stream holds where the neuron reads it (the embedding, then each attention and FFN output before it), "
            "as shares of the total, scaled by the neuron's score and summed over the top neurons. Large values "
            "mark the layers that write what activates the neurons (columns: <code>ffn:in</code>, or "
            "<code>ffn:gate</code> / <code>ffn:up</code> for gated FFNs, the FFN neurons' keys; "
            "<code>attention:value</code>, the attention neurons').</p>\n" +
            _table(["slot"] + list(frame.columns), rows, numeric=tuple(range(1, 1 + len(frame.columns)))))


def _glossary(report) -> str:
    r = report.proto
    metric = _metric_name(r.metric)
    chosen = ("the default, the paper's metric" if r.metric in (pb.LOGPROB_INCREASE, pb.METRIC_UNSPECIFIED)
              else "chosen in the request's options (<code>attribution.metric</code>)")
    evaluated = (f"this report evaluated {r.ffn_evaluated} of {r.ffn_total} FFN neurons and {r.attention_evaluated} "
                 f"of {r.attention_total} attention neurons exactly")
    entries = [
        ("score (log-prob increase)",
         "How much a component v raises the target w when it is added to the residual stream x it joins: "
         "log p(w | x + v) − log p(w | x), the paper's metric, read through the model's final norm (its scale "
         "frozen at the real value) and output layer. Positive: the component makes the target more likely. "
         f"This report's metric is <code>{_e(metric)}</code> ({chosen}; <code>report.metric</code>); the others are "
         "<code>PROB_INCREASE</code>, p(w | x + v) − p(w | x), and <code>LOGIT_INCREASE</code>, the component's "
         "own before-softmax value for w. A layer's increase is its output's, with x the residual entering it; "
         "the layers' increases add up to how far the whole stream moves the target."),
        ("coefficient m",
         "A neuron's activation at the analysed position: for an FFN neuron, act(x · k) with k its key (a row of "
         "the FFN input weight; gated FFNs such as Llama's SwiGLU multiply two keys, silu(x · k_gate) · (x · k_up)); "
         "for an attention neuron, the head's attention weight on the source position times that token's value "
         "in dimension d."),
        ("subvalue m·v",
         "What a neuron adds to the residual stream: its coefficient m times its value vector v (the neuron's row "
         "of the FFN output weight; for an attention neuron, its column of the attention output projection W_O). "
         "Its projection into vocabulary space lists the tokens it promotes; for m &lt; 0 those are v's bottom "
         "tokens."),
        ("L2.N94", "FFN neuron 94 of layer 2 (layers, neurons, heads and positions count from 0). "
                   "<code>L2.N94.value</code> is its value vector v alone."),
        ("L1.H2.P3.d7", "Attention neuron: dimension 7 of head 2 in layer 1, reading source position 3 (the "
                        "prompt's fourth token). <code>L1.H2</code> is the whole head, <code>L1.H2.P3</code> its part "
                        "from source position 3."),
        ("query layers", "Which earlier layers activate the top neurons: the layers whose outputs align with the "
                         "top neurons' keys (see that section)."),
        ("exact / pruned ranking; \u201cevaluated of total\u201d",
         f"Ranking mode <code>{_e(_mode_name(r.mode))}</code>: {_e(_MODE_WORDS.get(r.mode, _MODE_WORDS[pb.EXACT]))}. "
         "Every score shown is exact in EXACT and EXHAUSTIVE mode; \u201cevaluated of total\u201d counts the "
         f"neurons whose score was computed exactly among all the model has ({_e(evaluated)})."),
        ("logit lens", "The final norm and the output layer applied to the residual stream part-way: the model's "
                       "prediction if the layers after that point were skipped."),
        ("rank", "The target's place among all tokens by probability; 1 is the model's top prediction."),
    ]
    def dt(term):
        return f"<code>{_e(term)}</code>" if term.startswith("L") else _e(term)

    return '<dl class="glossary">' + "".join(f"<dt>{dt(term)}</dt><dd>{text}</dd>" for term, text in entries) + "</dl>"


def _provenance(report) -> str:
    p = report.provenance()
    client = _e(p["client_version"])
    if report.client_version != CLIENT_VERSION:
        client += _e(f" (this page rendered by {CLIENT_VERSION})")
    rows = [("model", _e(p["model"])), ("family", _e(p["family"])), ("shape", _e(p["shape"])),
            ("server", _e(p["server"])), ("server version", _e(p["server_version"])),
            ("analysed", _e(p["created"])), ("factlens client", "factlens " + client)]
    return '<table class="provenance">' + "".join(f"<tr><td>{_e(k)}</td><td>{v}</td></tr>" for k, v in rows) + \
        "</table>"


def render(report, top=20) -> str:
    """The page for a ``results.FactReport``; ``top`` rows of each neuron table."""
    r = report.proto
    target = _quoted(r.target.token)
    title = f"{_quoted(report.prompt)} → {target}"
    unit = _metric(r.metric)
    predictions = [[str(i), str(t.id), _tok(t.token, t.id == r.target.id), f"{t.score:.6f}"]
                   for i, t in enumerate(r.predictions, 1)]
    layers = [[str(layer), f"{a:+.5f}", f"{f:+.5f}"]
              for layer, a, f in zip(range(report.layers), r.attention_layer_increase, r.ffn_layer_increase)]
    sections = [
        ("prediction", "Prediction", _table(["rank", "id", "token", "prob"], predictions, numeric=(0, 1, 3))),
        ("layers", "Per-layer increase of the target: attention vs FFN",
         f'<p class="note">Each bar is the {_e(unit)} of the target that one layer\'s attention or FFN output gives '
         "(its score).</p>\n" + _figure(report.plot_layers(), "per-layer attention and FFN increases") +
         _table(["layer", "attention", "FFN"], layers, numeric=(0, 1, 2))),
    ]
    if not report.cumulative_frame().empty:
        sections.append(("logit-lens", "Logit lens: the target after each sublayer", _lens_section(report)))
    sections += [
        ("heads", "Top heads", _heads_section(report, top)),
        ("ffn-neurons", "Top FFN neurons and the tokens their subvalues m·v promote",
         _neuron_section(report, False, top)),
        ("attention-neurons", "Top attention neurons and the tokens their subvalues m·v promote",
         _neuron_section(report, True, top)),
        ("query-layers", "Which layers activate the top neurons (query layers)", _query_section(report)),
        ("glossary", "Glossary", _glossary(report)),
        ("provenance", "Provenance", _provenance(report)),
    ]
    body = "".join(f'<section id="{anchor}"><h2>{_e(name)}</h2>\n{content}\n</section>\n'
                   for anchor, name, content in sections)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>factlens: {_e(title)}</title><style>{_CSS}</style></head>\n<body>\n"
            f"{_warnings_banner(list(getattr(r, 'warnings', ())))}"
            f"<h1>Fact localization: {_e(title)}</h1>\n"
            f'<p class="takeaway" id="takeaway"><strong>In short:</strong> {takeaway(report)}</p>\n'
            f"{_summary(report)}\n{body}</body></html>\n")


def _batch_takeaway(batch) -> str:
    """Per model, one sentence: where the top FFN and attention neurons sit most, and the attention share."""
    counts = batch.neurons_per_layer()
    sentences = []
    for model in batch.models:
        c = counts[counts.model == model]
        ffn, attention = c.loc[c.ffn_neurons.idxmax()], c.loc[c.attention_neurons.idxmax()]
        sentences.append(
            f"{_e(model or 'The model')}: most top FFN neurons sit in layer {int(ffn.layer)} "
            f"({int(ffn.ffn_neurons)} of "
            f"{int(c.ffn_neurons.sum())}), most top attention neurons in layer {int(attention.layer)} "
            f"({int(attention.attention_neurons)} of {int(c.attention_neurons.sum())}); attention layers give "
            f"{100 * batch.mean_attention_share(model):.0f} % of the target's positive increase on average over "
            f"{len(batch.reports(model))} facts.")
    return " ".join(sentences)


def batch_summary(batch, page=True) -> str:
    """A BatchReport's summary, figures and tables as HTML: the body of ``render_batch``'s page
    (``page``) or a notebook cell's display (headings as bold lines)."""
    frame = batch.frame
    failed = batch.failures()
    servers = frame["server"].value_counts()
    rows = [("facts", _e(len(frame))), ("located", _e(len(frame) - len(failed))), ("failed", _e(len(failed))),
            ("models", _e(", ".join(batch.models) or "none")),
            ("servers (rows answered)", _e(", ".join(f"{a} ({n})" for a, n in servers.items())))]
    summary = '<table class="summary">' + "".join(f"<tr><td>{_e(k)}</td><td>{v}</td></tr>" for k, v in rows) + \
        "</table>"

    def heading(text):
        return f"<h2>{_e(text)}</h2>" if page else f"<div><strong>{_e(text)}</strong></div>"

    parts = [summary]
    if batch.models:
        counts, shares = batch.neurons_per_layer(), batch.relation_shares()
        parts += [
            f'<p class="takeaway"><strong>In short:</strong> {_batch_takeaway(batch)}</p>',
            heading("Top neurons per layer"),
            '<p class="note">How many of the facts\' top FFN and attention neurons (each report\'s lists) sit in '
            "each layer, summed over the dataset.</p>",
            _figure(batch.plot_neurons_per_layer(), "top FFN and attention neurons per layer"),
            _table(["model", "layer", "top FFN neurons", "top attention neurons"],
                   [[_e(r.model), str(r.layer), str(r.ffn_neurons), str(r.attention_neurons)]
                    for r in counts.itertuples()], numeric=(1, 2, 3)),
            heading("Attention vs FFN per relation"),
            '<p class="note">Of the positive increases the layers give the target, the part attention layers give '
            "(Σ max(attention, 0) / (Σ max(attention, 0) + Σ max(FFN, 0)) over the layers), averaged over the "
            "relation's facts; the increases are the mean summed layer increases.</p>",
            _figure(batch.plot_relation_shares(), "attention versus FFN share per relation"),
            _table(["model", "relation", "facts", "attention increase", "FFN increase", "attention share"],
                   [[_e(r.model), _e(r.relation), str(r.facts), f"{r.attention_increase:+.4f}",
                     f"{r.ffn_increase:+.4f}", f"{100 * r.attention_share:.1f} %"] for r in shares.itertuples()],
                   numeric=(2, 3, 4, 5)),
        ]
    if len(failed):
        shown = failed.head(20)
        parts += [heading(f"Failed rows ({len(failed)})"),
                  _table(["row", "prompt", "target", "error"],
                         [[_e(label), _e(p), _tok(t) if isinstance(t, str) else _e(t), _e(err)]
                          for label, p, t, err in zip(shown.index, shown["prompt"], shown["target"], shown["error"])])]
    if page:
        return "\n".join(parts)
    return ('<div class="factlens-result"><div><strong>' + _e(f"Batch: {batch.title}") + "</strong></div>" +
            "".join(parts) + "</div>")


def render_batch(batch) -> str:
    """The page for a ``dataset.BatchReport``: summary, takeaway, the per-layer and per-relation figures and
    tables, the failed rows."""
    title = f"Fact localization over a dataset: {batch.title}"
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>factlens: {_e(title)}</title>'
            f"<style>{_CSS}</style></head>\n<body>\n<h1>{_e(title)}</h1>\n{batch_summary(batch)}\n"
            f'<p class="note">factlens client {_e(CLIENT_VERSION)}</p>\n</body></html>\n')
