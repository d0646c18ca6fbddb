"""Typed results of the factlens RPCs.

Each result wraps the response message (``.proto``): its main numeric series are numpy arrays,
named after their proto field where there is one (``FactReport.ffn_layer_increase``,
``Tokens.ids``), ``.to_pandas()`` gives the result as a table, ``.to_dict()`` / ``.to_json()`` its
protobuf JSON form (every field, zeros included). Any other attribute is read from the message, so
the field documentation of ``proto/factlens/v1/factlens.proto`` applies as is.
"""
import inspect
import json

import grpc
import numpy as np
from google.protobuf import json_format

from factlens.components import component_name
from factlens.errors import FactlensError
from factlens.v1 import factlens_pb2 as pb

# protobuf >= 5.26 renamed the option that prints fields holding their default value.
_PRINT_DEFAULTS = ("always_print_fields_with_no_presence"
                   if "always_print_fields_with_no_presence" in inspect.signature(json_format.MessageToDict).parameters
                   else "including_default_value_fields")


def message_to_dict(message) -> dict:
    """The protobuf JSON mapping of a message as a dict, zero-valued fields included (int64 as strings)."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True, **{_PRINT_DEFAULTS: True})


def _frame(rows, columns):
    import pandas as pd  # imported on use: the CLI and plain RPC calls do not pay for it

    return pd.DataFrame(rows, columns=columns)


def _ints(values):
    return np.asarray(values, dtype=np.int64)


def _floats(values):
    return np.asarray(values, dtype=np.float64)


def _token_frame(scores, score_name="score"):
    return _frame([(t.id, t.token, t.score) for t in scores], ["id", "token", score_name])


def _top_tokens(scores, n):
    return " ".join(json.dumps(t.token, ensure_ascii=False) for t in scores[:n])


def slot_name(i: int) -> str:
    """Name of slot i of a [1 + 2L] per-layer score list: emb, attn0, ffn0, attn1, ..."""
    return "emb" if i == 0 else ("attn" if i % 2 == 1 else "ffn") + str((i - 1) // 2)


class Result:
    """A response message with typed accessors; other attributes come from the message (``.proto``)."""

    def __init__(self, proto):
        self.proto = proto

    def __getattr__(self, name):
        if name == "proto":  # not set yet (copy / unpickling): avoid recursing
            raise AttributeError(name)
        return getattr(self.proto, name)

    def to_dict(self) -> dict:
        """The response in the protobuf JSON mapping (int64 values as strings, bytes as base64)."""
        return message_to_dict(self.proto)

    def to_json(self, indent=2) -> str:
        """``to_dict()`` as a JSON string."""
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    def __repr__(self):
        return f"<{type(self).__name__}: {self.proto.ByteSize()} bytes>"


class Models(Result):
    """ListModels: a sequence of ``pb.ModelInfo``."""

    def __iter__(self):
        return iter(self.proto.models)

    def __len__(self):
        return len(self.proto.models)

    def __getitem__(self, i):
        return self.proto.models[i]

    def to_pandas(self):
        """One row per model, one column per ModelInfo field."""
        columns = [f.name for f in pb.ModelInfo.DESCRIPTOR.fields]
        return _frame([[getattr(m, c) for c in columns] for m in self.proto.models], columns)


class Tokens(Result):
    """Tokenize: ids, offsets (numpy) and the tokens."""

    @property
    def ids(self):
        return _ints(self.proto.ids)

    @property
    def offset_begin(self):
        return _ints(self.proto.offset_begin)

    @property
    def offset_end(self):
        return _ints(self.proto.offset_end)

    def to_pandas(self):
        """One row per token: id, token (vocabulary string), display_token, begin, end (code points)."""
        p = self.proto
        return _frame(zip(p.ids, p.tokens, p.display_tokens, p.offset_begin, p.offset_end),
                      ["id", "token", "display_token", "begin", "end"])


class Prediction(Result):
    """Predict: the top next tokens; ``ids`` and ``probs`` as numpy arrays, best first."""

    @property
    def input_ids(self):
        return _ints(self.proto.input_ids)

    @property
    def ids(self):
        return _ints([t.id for t in self.proto.predictions])

    @property
    def probs(self):
        return _floats([t.score for t in self.proto.predictions])

    def to_pandas(self):
        """One row per predicted token: id, token, prob."""
        return _token_frame(self.proto.predictions, "prob")


_COMPONENT_COLUMNS = ["name", "kind", "layer", "head", "source_position", "neuron"]


def _component_row(c):
    return [component_name(c), pb.Component.Kind.Name(c.kind), c.layer, c.head, c.source_position, c.neuron]


def _ranked_frame(ranked):
    rows = [_component_row(r.component) + [r.score, r.coefficient, r.source_token_id] for r in ranked]
    return _frame(rows, _COMPONENT_COLUMNS + ["score", "coefficient", "source_token_id"])


def _head_matrix(entries, layers, heads):
    """[layers, heads] float array from (layer, head, score) triples; NaN where none was given."""
    m = np.full((layers, heads), np.nan)
    for layer, head, score in entries:
        m[layer, head] = score
    return m


class Decomposition(Result):
    """Decompose: every component at each requested position."""

    def _position(self, position):
        for p in self.proto.positions:
            if position in (p.position, p.position - len(self.proto.input_ids)):
                return p
        raise KeyError(f"position {position} was not decomposed")

    def to_pandas(self):
        """One row per (position, component): its name and fields, increase and norm."""
        rows = [[p.position] + _component_row(d.component) + [d.increase, d.norm]
                for p in self.proto.positions for d in p.components]
        return _frame(rows, ["position"] + _COMPONENT_COLUMNS + ["increase", "norm"])

    def head_matrix(self, position=-1):
        """[layers, heads] increases of every head at a position (needs ``include_heads``)."""
        entries = [(d.component.layer, d.component.head, d.increase)
                   for d in self._position(position).components if d.component.kind == pb.Component.HEAD]
        if not entries:
            raise ValueError("no per-head components: call decompose(..., include_heads=True)")
        return _head_matrix(entries, 1 + max(e[0] for e in entries), 1 + max(e[1] for e in entries))

    def vectors(self, position=-1):
        """[components, d_model] raw vectors at a position, rows in ``to_pandas()`` order (needs
        ``include_vectors``); NaN rows for components the server sent without a vector."""
        components = self._position(position).components
        width = max((len(d.vector) for d in components), default=0)
        if width == 0:
            raise ValueError("no vectors: call decompose(..., include_vectors=True)")
        out = np.full((len(components), width), np.nan, dtype=np.float32)
        for row, d in zip(out, components):
            if d.vector:
                row[:] = d.vector
        return out


class Ranking(Result):
    """Rank: components ordered by score; ``scores`` as a numpy array."""

    @property
    def scores(self):
        return _floats([c.score for c in self.proto.components])

    def to_pandas(self):
        """One row per ranked component: name, kind, layer, head, source_position, neuron, score,
        coefficient, source_token_id."""
        return _ranked_frame(self.proto.components)


class Trace(Result):
    """Trace: which earlier components activate a neuron, per key (``in``; ``gate``/``up`` for Llama;
    ``value`` for attention neurons)."""

    def _key(self, key_name):
        keys = self.proto.keys
        for k in keys:
            if key_name in (None, k.key_name):
                return k
        raise KeyError(f"no key {key_name!r} (have {', '.join(k.key_name for k in keys)})")

    def layer_scores(self, key_name=None):
        """[1 + 2L] scores of a key (the first if None): emb, attn0, ffn0, attn1, ..."""
        return _floats(self._key(key_name).layer_scores)

    def head_matrix(self, key_name=None):
        """[L, H] per-head scores of a key (the first if None)."""
        k = self._key(key_name)
        layers = (len(k.layer_scores) - 1) // 2
        return _floats(k.head_scores).reshape(layers, -1)

    def top_subvalues(self, key_name=None):
        """The earlier FFN subvalues that activate a key most, as a table like ``Ranking.to_pandas()``."""
        return _ranked_frame(self._key(key_name).top_ffn_subvalues)

    def plot_layers(self, key_name=None, ax=None):
        """Bars of a key's per-layer scores: attention and FFN of each layer (the embedding's in the title)."""
        from factlens import plots

        scores = self.layer_scores(key_name)
        return plots.layer_increase_bars(scores[1::2], scores[2::2], ax=ax, ylabel="contribution to the key",
                                         title=f"Key {self._key(key_name).key_name}: embedding {scores[0]:+.3f}")

    def to_pandas(self):
        """Per-layer scores: one row per slot (emb, attn0, ffn0, ...), one column per key."""
        import pandas as pd

        return pd.DataFrame({k.key_name: list(k.layer_scores) for k in self.proto.keys},
                            index=[slot_name(i) for i in range(len(self.proto.keys[0].layer_scores))])


class Projection(Result):
    """ProjectToVocab: top and bottom tokens of a component's vocabulary scores (before-softmax values;
    the vector's own log-probabilities for an adaptive-softmax model such as Baevski-18)."""

    def to_pandas(self):
        """Rows: the top tokens (largest first), then the bottom ones (most negative first); column side says which."""
        import pandas as pd

        top, bottom = _token_frame(self.proto.top), _token_frame(self.proto.bottom)
        top.insert(0, "side", "top")
        bottom.insert(0, "side", "bottom")
        return pd.concat([top, bottom], ignore_index=True)


class Ablation(Result):
    """Ablate: the target's outcome before and after."""

    @property
    def log_prob_change(self) -> float:
        """log p(after) − log p(before) of the target."""
        return self.proto.after.log_prob - self.proto.before.log_prob

    def to_pandas(self):
        """Two rows, before and after: log_prob, prob, rank."""
        p = self.proto
        return _frame([("before", p.before.log_prob, p.before.prob, p.before.rank),
                       ("after", p.after.log_prob, p.after.prob, p.after.rank)], ["state", "log_prob", "prob", "rank"])

    def predictions_frame(self):
        """The top next tokens after the ablation: id, token, prob."""
        return _token_frame(self.proto.predictions_after, "prob")


class FactReport(Result):
    """LocateFact's report: where the model keeps the fact that the prompt continues with the target.

    ``model`` (a ``pb.ModelInfo`` when the client knows it) sizes the head matrix.
    """

    def __init__(self, proto, model=None):
        super().__init__(proto)
        self.model = model

    @property
    def input_ids(self):
        return _ints(self.proto.input_ids)

    @property
    def attention_layer_increase(self):
        return _floats(self.proto.attention_layer_increase)

    @property
    def ffn_layer_increase(self):
        return _floats(self.proto.ffn_layer_increase)

    @property
    def layers(self) -> int:
        return len(self.proto.ffn_layer_increase)

    @property
    def heads(self) -> int:
        """Heads per layer: the model's, else the largest head index reported + 1."""
        if self.model is not None:
            return self.model.heads
        return 1 + max((h.head for h in self.proto.top_heads), default=0)

    @property
    def prompt(self) -> str:
        return "".join(self.proto.input_tokens)

    def to_pandas(self):
        """Per-layer increases of the target (the paper's figure): layer, attention, ffn."""
        return _frame(zip(range(self.layers), self.proto.attention_layer_increase, self.proto.ffn_layer_increase),
                      ["layer", "attention", "ffn"])

    def predictions_frame(self):
        """The model's top next tokens: id, token, prob."""
        return _token_frame(self.proto.predictions, "prob")

    def heads_frame(self, positions=False):
        """Top heads (``positions``: top head × source position pairs): name, layer, head, source, score."""
        heads = self.proto.top_head_positions if positions else self.proto.top_heads
        rows = [[component_name(pb.Component(kind=pb.Component.HEAD_POSITION if positions else pb.Component.HEAD,
                                             layer=h.layer, head=h.head, source_position=h.source_position)),
                 h.layer, h.head, h.source_position, self._source_token(h.source_position), h.score] for h in heads]
        return _frame(rows, ["name", "layer", "head", "source_position", "source_token", "score"])

    def head_matrix(self):
        """[layers, heads] scores of the top heads; NaN for heads outside the top list."""
        return _head_matrix([(h.layer, h.head, h.score) for h in self.proto.top_heads], self.layers, self.heads)

    def neurons_frame(self, attention=False, top_tokens=6):
        """Top FFN neurons (``attention``: attention neurons): name, layer, neuron (head dim), head, source,
        score, coefficient, and the first ``top_tokens`` tokens of their value vector's projection."""
        kind = pb.Component.ATTENTION_NEURON if attention else pb.Component.FFN_NEURON
        neurons = self.proto.attention_neurons if attention else self.proto.ffn_neurons
        rows = [[component_name(pb.Component(kind=kind, layer=n.layer, neuron=n.neuron, head=n.head,
                                             source_position=n.source_position)),
                 n.layer, n.neuron, n.head, n.source_position, self._source_token(n.source_position), n.score,
                 n.coefficient, _top_tokens(n.top_tokens, top_tokens)] for n in neurons]
        return _frame(rows, ["name", "layer", "neuron", "head", "source_position", "source_token", "score",
                             "coefficient", "top_tokens"])

    def query_layers_frame(self):
        """Which layers activate the top neurons: one row per slot (emb, attn0, ffn0, ...), one column per key
        (``ffn:<key>`` for the FFN neurons, ``attention:value`` for the attention neurons)."""
        import pandas as pd

        queries = [(f"ffn:{q.key_name}", q.scores) for q in self.proto.query_layers_ffn]
        if self.proto.HasField("query_layers_attention"):
            q = self.proto.query_layers_attention
            queries.append((f"attention:{q.key_name}", q.scores))
        return pd.DataFrame({name: list(s) for name, s in queries},
                            index=[slot_name(i) for i in range(1 + 2 * self.layers)])

    def _source_token(self, position):
        return self.proto.input_tokens[position] if 0 <= position < len(self.proto.input_tokens) else ""

    def plot_layers(self, ax=None):
        """Bar chart of the per-layer attention and FFN increases (see ``factlens.plots``)."""
        from factlens import plots

        return plots.layer_increase_bars(self.attention_layer_increase, self.ffn_layer_increase, ax=ax,
                                         title=f"{self.prompt} → {self.proto.target.token}")

    def plot_heads(self, ax=None):
        """Layer × head heatmap of the top heads."""
        from factlens import plots

        return plots.head_heatmap(self.head_matrix(), ax=ax, title="Top heads (blank: not in the top list)")

    def plot_neuron_table(self, n=10, attention=False, ax=None):
        """The top ``n`` neurons with their top tokens, drawn as a table."""
        from factlens import plots

        kind = "attention" if attention else "FFN"
        return plots.neuron_table(self.neurons_frame(attention=attention).head(n), ax=ax, title=f"Top {kind} neurons")

    def to_html(self, path=None) -> str:
        """One self-contained HTML page (inline CSS, figures as base64 PNG); written to ``path`` if given."""
        from factlens.report_html import render

        page = render(self)
        if path is not None:
            with open(path, "w", encoding="utf-8") as f:
                f.write(page)
        return page


class ItemResult(Result):
    """One LocateFacts item: ``index`` and either ``report`` (a FactReport) or ``error`` (code, message)."""

    def __init__(self, proto, model=None):
        super().__init__(proto)
        self.report = FactReport(proto.report, model) if proto.HasField("report") else None

    @property
    def exception(self):
        """The item's error as a FactlensError (its gRPC code and message), or None."""
        if not self.proto.HasField("error"):
            return None
        code = next((c for c in grpc.StatusCode if c.value[0] == self.proto.error.code), grpc.StatusCode.UNKNOWN)
        return FactlensError(code, self.proto.error.message)


class BatchAggregate(Result):
    """LocateFacts' aggregate over the successful items."""

    @property
    def ffn_neurons_per_layer(self):
        return _ints(self.proto.ffn_neurons_per_layer)

    @property
    def attention_neurons_per_layer(self):
        return _ints(self.proto.attention_neurons_per_layer)

    @property
    def mean_attention_layer_increase(self):
        return _floats(self.proto.mean_attention_layer_increase)

    @property
    def mean_ffn_layer_increase(self):
        return _floats(self.proto.mean_ffn_layer_increase)

    def to_pandas(self):
        """Per layer: top FFN / attention neuron counts and the mean attention / FFN increases."""
        p = self.proto
        return _frame(zip(range(len(p.ffn_neurons_per_layer)), p.ffn_neurons_per_layer, p.attention_neurons_per_layer,
                          p.mean_attention_layer_increase, p.mean_ffn_layer_increase),
                      ["layer", "ffn_neurons", "attention_neurons", "mean_attention_increase", "mean_ffn_increase"])

    def plot_neurons_per_layer(self, ax=None):
        """Bars: how many of the batch's top neurons sit in each layer."""
        from factlens import plots

        return plots.neurons_per_layer_bars(self.ffn_neurons_per_layer, self.attention_neurons_per_layer, ax=ax,
                                            title=f"Top neurons per layer over {self.proto.facts} facts")
