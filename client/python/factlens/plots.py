"""Figures of factlens results (matplotlib).

Each function draws into ``ax`` when given, else into a new ``NotebookFigure`` (a
``matplotlib.figure.Figure`` without pyplot state, so it works headless and in threads), and returns
the figure. Save one with ``fig.savefig("x.png")``; in Jupyter a returned figure displays itself as a
PNG, with no ``%matplotlib`` magic and no pyplot backend.
"""
import base64
import html
import io
import json

import numpy as np
from matplotlib.figure import Figure

ATTENTION_COLOR, FFN_COLOR = "#4C72B0", "#DD8452"
RANK1_COLOR = "#2CA02C"  # logit-lens steps where the target is the top prediction
MISSING_COLOR = "#E4E4E4"  # heatmap cells without a value
KEY_COLORS = ("#8172B3", "#C44E52", "#55A868", "#937860")  # one per key of a traced neuron
SUBVALUE_TOKENS = "tokens the subvalue m·v promotes"


def to_png(fig, dpi=None) -> bytes:
    """The figure as PNG bytes (``dpi``: the figure's own when None)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi or "figure")
    return buf.getvalue()


def to_img_tag(fig, alt="", dpi=None) -> str:
    """An ``<img>`` element holding the figure as a base64 PNG data URI (no external reference)."""
    data = base64.b64encode(to_png(fig, dpi)).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


class NotebookFigure(Figure):
    """A ``Figure`` that IPython / Jupyter display as a PNG by themselves (``_repr_png_``).

    Figures made without pyplot have no backend to show them, so Jupyter printed only
    ``<Figure size 500x320 with 1 Axes>`` unless ``%matplotlib inline`` was run. Where the inline
    backend is active it registers its own PNG formatter for every Figure, which IPython prefers, so
    the figure still displays once. ``savefig`` and everything else are matplotlib's.
    """

    def _repr_png_(self):
        return to_png(self)


def _axes(ax, size):
    if ax is not None:
        return ax.figure, ax
    fig = NotebookFigure(figsize=size, layout="constrained")
    return fig, fig.add_subplot()


def _paired_bars(ax, first, second, labels, colors):
    """Two bars per layer, side by side."""
    layers = np.arange(len(first))
    ax.bar(layers - 0.2, first, width=0.4, label=labels[0], color=colors[0])
    ax.bar(layers + 0.2, second, width=0.4, label=labels[1], color=colors[1])
    ax.set_xticks(layers)
    ax.set_xlabel("layer")
    ax.legend()


def layer_increase_bars(attention, ffn, ax=None, title=None, ylabel="log-prob increase"):
    """The paper's per-layer figure: each layer's attention and FFN increase of the target, side by side."""
    fig, ax = _axes(ax, (max(5.0, 0.45 * len(ffn) + 2), 3.2))
    _paired_bars(ax, attention, ffn, ("attention", "FFN"), (ATTENTION_COLOR, FFN_COLOR))
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    return fig


def head_heatmap(matrix, ax=None, title=None, label="log-prob increase"):
    """A layer × head heatmap of scores (NaN cells grey), values written in when the grid is small."""
    matrix = np.asarray(matrix, dtype=float)
    layers, heads = matrix.shape
    fig, ax = _axes(ax, (max(4.0, 0.5 * heads + 2), max(3.0, 0.4 * layers + 1.5)))
    ax.set_facecolor(MISSING_COLOR)  # NaN cells show it: grey is "no value", white is a score near 0
    limit = np.nanmax(np.abs(matrix)) if np.isfinite(matrix).any() else 1.0
    image = ax.imshow(matrix, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
    fig.colorbar(image, ax=ax, label=label)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(heads))
    ax.set_yticks(range(layers))
    if layers * heads <= 256:
        for (layer, head), value in np.ndenumerate(matrix):
            if np.isfinite(value):
                ax.text(head, layer, f"{value:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if abs(value) > 0.6 * limit else "black")
    if title:
        ax.set_title(title)
    return fig


def neurons_per_layer_bars(ffn_counts, attention_counts, ax=None, title=None):
    """How many of a batch's top FFN and attention neurons sit in each layer (LocateFacts' aggregate)."""
    fig, ax = _axes(ax, (max(5.0, 0.45 * len(ffn_counts) + 2), 3.2))
    _paired_bars(ax, attention_counts, ffn_counts, ("attention neurons", "FFN neurons"), (ATTENTION_COLOR, FFN_COLOR))
    ax.set_ylabel("top neurons")
    if title:
        ax.set_title(title)
    return fig


def neuron_table(frame, ax=None, title=None, note=True):
    """A table of top neurons (a ``FactReport.neurons_frame()``): name, source token (attention neurons),
    score, coefficient m, and the tokens the neuron's subvalue m·v promotes.

    The table fills the figure, which is sized to its rows. ``note`` adds a line under the table: for a
    negative coefficient the promoted tokens are the value vector's bottom tokens.
    """
    attention = bool(len(frame)) and "source_position" in frame and (frame["source_position"] >= 0).any()
    columns = ["name"] + (["source_token"] if attention else []) + ["score", "coefficient", "top_tokens"]
    labels = ["name"] + (["source token"] if attention else []) + ["score", "coefficient m", SUBVALUE_TOKENS]
    widths = [0.13] + ([0.1] if attention else []) + [0.09, 0.1]
    widths.append(1.0 - sum(widths))
    rows = max(1, len(frame))
    height = 0.24 * (rows + 1) + (0.35 if title else 0) + (0.3 if note else 0) + 0.15
    fig, ax = _axes(ax, (10.0, height))
    ax.axis("off")
    cells = [[row.name] + ([json.dumps(row.source_token, ensure_ascii=False)] if attention else []) +
             [f"{row.score:+.4f}", f"{row.coefficient:+.3f}", row.top_tokens]
             for row in frame[columns].itertuples(index=False)]
    # bbox: the table fills the axes (matplotlib's default row height ignores the figure's, leaving
    # the lower part of a tall figure blank or cutting a long table off).
    table = ax.table(cellText=cells or [[""] * len(columns)], colLabels=labels, colWidths=widths,
                     cellLoc="left", colLoc="left", bbox=[0, 0, 1, 1])
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    for (row, _), cell in table.get_celld().items():
        cell.PAD = 0.02 if cell.get_width() < 0.3 else 0.008  # the padding is a fraction of the column width
        if row == 0:
            cell.set_facecolor("#F0F3F8")
            cell.get_text().set_fontweight("bold")
    if note:
        ax.text(0, -0.02, "m < 0: the subvalue m·v points against the value vector v, so its promoted tokens are "
                "v's bottom tokens", transform=ax.transAxes, va="top", fontsize=8, color="#555555")
    if title:
        ax.set_title(title)
    return fig


def _step_ticks(ax, labels):
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=0 if len(labels) <= 13 else 90, fontsize=8 if len(labels) > 13 else None)
    ax.set_xlim(-0.5, len(labels) - 0.5)


def cumulative_lens(labels, log_probs, ranks, top_tokens=None, ax=None, title=None, target=None):
    """The logit lens after each step of the residual stream (emb, attn0, ffn0, ...): the target's
    log-probability, with the steps where it is the top prediction (rank 1) starred and the target's rank
    written above the others; ``top_tokens`` (the top prediction at each step) under the step names
    where the target is not rank 1."""
    log_probs, ranks = np.asarray(log_probs, dtype=float), np.asarray(ranks)
    fig, ax = _axes(ax, (max(5.5, 0.38 * len(labels) + 2), 3.4))
    steps = np.arange(len(labels))
    ax.plot(steps, log_probs, color="#555555", marker="o", markersize=4, linewidth=1.2, zorder=2,
            label=f"log p({target})" if target is not None else "log p(target)")
    first = ranks == 1
    if first.any():
        ax.scatter(steps[first], log_probs[first], s=90, marker="*", color=RANK1_COLOR, zorder=3,
                   label="target is rank 1")
    if len(labels) <= 40:
        for x, y, rank in zip(steps, log_probs, ranks):
            if rank != 1:
                ax.annotate(f"rank {rank}", (x, y), xytext=(0, 7), textcoords="offset points", ha="center",
                            fontsize=6.5, color="#555555")
    if top_tokens is not None and len(labels) <= 40:
        ax.set_xticks(range(len(labels)))  # the top prediction under each step's name
        ax.set_xticklabels([f"{label}\n{json.dumps(token, ensure_ascii=False)}" if rank != 1 else label
                            for label, token, rank in zip(labels, top_tokens, ranks)], fontsize=7)
    if top_tokens is None or len(labels) > 40:
        _step_ticks(ax, labels)
    ax.set_xlim(-0.5, len(labels) - 0.5)
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_xlabel("residual stream after (below: the top prediction where it is not the target)", fontsize=8)
    ax.set_ylabel("log-prob of the target")
    ax.legend(loc="lower right", fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def trace_keys(labels, keys, ax=None, title=None):
    """What each earlier part of the residual stream writes into a neuron's key(s): one line per key
    (``keys``: (name, [1 + 2L] scores) pairs, e.g. a gated FFN neuron's ``gate`` and ``up``), over the
    steps ``labels`` (emb, attn0, ffn0, ...)."""
    fig, ax = _axes(ax, (max(5.5, 0.38 * len(labels) + 2), 3.2))
    steps = np.arange(len(labels))
    for i, (name, scores) in enumerate(keys):
        total = float(np.sum(scores))
        ax.plot(steps, np.asarray(scores, dtype=float)[:len(labels)], marker="o", markersize=4, linewidth=1.4,
                color=KEY_COLORS[i % len(KEY_COLORS)], label=f"key {name} (total {total:+.3f})")
    _step_ticks(ax, labels)
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_xlabel("component of the residual stream")
    ax.set_ylabel("key · component")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def share_bars(labels, attention_share, counts=None, ax=None, title=None):
    """One horizontal bar per label (e.g. a relation), split into the attention share (left) and the FFN
    share (right) of the target's increase; ``counts`` (facts per label) written at the right."""
    shares = np.asarray(attention_share, dtype=float)
    fig, ax = _axes(ax, (6.5, 0.35 * len(labels) + 1.6))
    rows = np.arange(len(labels))
    ax.barh(rows, shares, color=ATTENTION_COLOR, label="attention")
    ax.barh(rows, 1 - shares, left=shares, color=FFN_COLOR, label="FFN")
    for row, share in zip(rows, shares):
        if np.isfinite(share):
            ax.text(0.01, row, f"{100 * share:.0f} %", va="center", fontsize=8, color="white")
    if counts is not None:
        for row, n in zip(rows, counts):
            ax.text(1.01, row, f"n = {n}", va="center", fontsize=8)
    ax.set_yticks(rows)
    ax.set_yticklabels(labels)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.12)
    ax.set_xticks([0, 0.25, 0.5, 0.75, 1])
    ax.set_xlabel("share of the positive layer increases")
    ax.legend(loc="center left", bbox_to_anchor=(1.12, 0.5), fontsize=8)  # beside the "n = " labels
    if title:
        ax.set_title(title, fontsize=10)
    return fig
