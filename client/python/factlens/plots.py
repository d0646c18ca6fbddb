"""Figures of factlens results (matplotlib).

Each function draws into ``ax`` when given, else into a new ``NotebookFigure`` (a
``matplotlib.figure.Figure`` without pyplot state, so it works headless and in threads), and returns
the figure. Save one with ``fig.savefig("x.png")``; in Jupyter a returned figure displays itself as a
PNG, with no ``%matplotlib`` magic and no pyplot backend.
"""
import base64
import html
import io

import numpy as np
from matplotlib.figure import Figure

ATTENTION_COLOR, FFN_COLOR = "#4C72B0", "#DD8452"


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
    """A layer × head heatmap of scores (NaN cells stay blank), values written in when the grid is small."""
    matrix = np.asarray(matrix, dtype=float)
    layers, heads = matrix.shape
    fig, ax = _axes(ax, (max(4.0, 0.5 * heads + 2), max(3.0, 0.4 * layers + 1.5)))
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


def neuron_table(frame, ax=None, title=None):
    """A table of top neurons: name, score, coefficient and top tokens (a ``FactReport.neurons_frame()``)."""
    columns = ["name", "score", "coefficient", "top_tokens"]
    fig, ax = _axes(ax, (10.0, 0.3 * len(frame) + 1.0))
    ax.axis("off")
    cells = [[row.name, f"{row.score:+.4f}", f"{row.coefficient:+.3f}", row.top_tokens]
             for row in frame[columns].itertuples(index=False)]
    table = ax.table(cellText=cells or [[""] * 4], colLabels=columns, colWidths=[0.14, 0.1, 0.1, 0.66],
                     cellLoc="left", loc="upper center")
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    if title:
        ax.set_title(title)
    return fig
