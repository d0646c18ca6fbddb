"""Typed results of the factlens RPCs.

Each result wraps the response message (``.proto``): its main numeric series are numpy arrays,
named after their proto field where there is one (``FactReport.ffn_layer_increase``,
``Tokens.ids``), ``.to_pandas()`` gives the result as a table, ``.to_dict()`` / ``.to_json()`` its
protobuf JSON form (every field, zeros included). Any other attribute is read from the message, so
the field documentation of ``proto/factlens/v1/factlens.proto`` applies as is.

In IPython / Jupyter every result displays as a compact HTML table (``_repr_html_``; a
``FactReport`` with its summary and figures), and ``repr()`` says what it holds. ``save(path)`` /
``load(path)`` / ``from_json(text)`` write and read a result back (the JSON of ``to_json()``).
"""
import datetime
import html
import inspect
import json

import grpc
import numpy as np
from google.protobuf import json_format

from factlens.components import component_name
from factlens.errors import FactlensError
from factlens.v1 import factlens_pb2 as pb

# This client's version; kept equal to client/python/pyproject.toml's (a test checks). Reports record it.
CLIENT_VERSION = "0.1.0"

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


# --- HTML for notebooks. Every helper returns HTML; every string from a result goes through
# html.escape, tokens quoted as a person reads them (" Paris": the leading space shows).

_ROWS = 20  # rows of a table before "… more"


def _e(value) -> str:
    return html.escape(str(value))


def _tok(token) -> str:
    """A token, JSON-quoted (leading spaces and control characters visible), escaped."""
    return f'<code style="white-space:pre">{_e(_quoted(token))}</code>'


def _quoted(token) -> str:
    return json.dumps(token, ensure_ascii=False)


def _toks(scores, n=6, target_id=None) -> str:
    """The first ``n`` tokens; the one whose id is ``target_id`` in a ``<mark>``."""
    return " ".join(f"<mark>{_tok(t.token)}</mark>" if target_id is not None and t.id == target_id else _tok(t.token)
                    for t in list(scores)[:n])


def _num(value, fmt="{:+.4f}") -> str:
    return fmt.format(value)


def _table(columns, rows, caption=None, limit=_ROWS, rest="to_pandas() has them all") -> str:
    """A table: column names (text), rows of HTML cells, an HTML caption; rows past ``limit`` counted."""
    rows = list(rows)
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows[:limit])
    if len(rows) > limit:
        body += f'<tr><td colspan="{len(columns)}">… {len(rows) - limit} more rows ({_e(rest)})</td></tr>'
    caption = f'<div style="margin-top:0.5em"><em>{caption}</em></div>' if caption else ""
    return f'<div>{caption}<table class="factlens"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _block(title, *parts) -> str:
    """One result: a bold HTML title line, then its parts."""
    return '<div class="factlens-result">' + f"<div><strong>{title}</strong></div>" + "".join(parts) + "</div>"


def _warnings(proto) -> list:
    """The response's warnings (a field of newer protos; none where the message has no such field)."""
    return list(proto.warnings) if "warnings" in proto.DESCRIPTOR.fields_by_name else []


def _warnings_html(proto) -> str:
    items = "".join(f"<li>{_e(w)}</li>" for w in _warnings(proto))
    return f'<ul style="color:#a15c00">{items}</ul>' if items else ""


def _outcome(o) -> str:
    return f"p = {o.prob:.4f}, log p = {o.log_prob:.4f}, rank {o.rank}"


def _short_list(items, n=3) -> str:
    items = list(items)
    return ", ".join(items[:n]) + (f", ... ({len(items)} in all)" if len(items) > n else "")


class Result:
    """A response message with typed accessors; other attributes come from the message (``.proto``)."""

    _MESSAGE = None  # the response message class, for from_json

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

    @classmethod
    def from_json(cls, text, **kwargs):
        """The result of ``to_json()`` (the protobuf JSON mapping of its message; str or bytes) read back.
        Fields this client's proto does not know (a newer server's) are ignored."""
        return cls(json_format.Parse(text, cls._MESSAGE(), ignore_unknown_fields=True), **kwargs)

    @classmethod
    def load(cls, path, **kwargs):
        """``from_json`` of a file written by ``save``."""
        with open(path, encoding="utf-8") as f:
            return cls.from_json(f.read(), **kwargs)

    def save(self, path):
        """Writes ``to_json()`` to ``path`` (UTF-8); ``load(path)`` reads it back."""
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.to_json() + "\n")

    def _summary(self) -> str:
        return f"{self.proto.ByteSize()} bytes"

    def __repr__(self):
        return f"<{type(self).__name__}: {self._summary()}>"

    def _repr_html_(self):
        return _block(_e(type(self).__name__), f"<pre>{_e(self.to_json())}</pre>")


def dtype_phrase(model) -> str:
    """A ``pb.ModelInfo``'s dtypes as text: "float32", or "float32 (bfloat16 weights)" when the weight
    matrices are held in another dtype than the model computes in (dtype=bfloat16 / float16 on a CPU)."""
    dtype = model.dtype or "?"
    if model.weights_dtype and model.weights_dtype != model.dtype:
        return f"{dtype} ({model.weights_dtype} weights)"
    return dtype


class Models(Result):
    """ListModels: a sequence of ``pb.ModelInfo``."""

    _MESSAGE = pb.ListModelsResponse
    _COLUMNS = ["name", "family", "layers", "heads", "d_model", "ffn_width", "vocab_size", "dtype", "weights_dtype",
                "device", "ready"]

    def _summary(self):
        return _short_list([f"{m.name} ({m.family}, {m.layers} layers)" for m in self.proto.models], 4) or "none"

    def _repr_html_(self):
        rows = [[_e(getattr(m, c)) for c in self._COLUMNS] for m in self.proto.models]
        return _block(f"{len(rows)} model(s)", _table(self._COLUMNS, rows))

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

    _MESSAGE = pb.TokenizeResponse

    def _shown(self):
        p = self.proto
        return list(p.display_tokens) if len(p.display_tokens) == len(p.ids) else list(p.tokens)

    def _summary(self):
        return f"{len(self.proto.ids)} tokens " + " ".join(_quoted(t) for t in self._shown()[:8]) + \
            (" ..." if len(self.proto.ids) > 8 else "")

    def _repr_html_(self):
        p = self.proto
        rows = [[str(i), str(t), _tok(shown), _tok(raw), f"{b}–{e}"]
                for i, (t, shown, raw, b, e) in enumerate(zip(p.ids, self._shown(), p.tokens, p.offset_begin,
                                                               p.offset_end))]
        return _block(f"{len(p.ids)} tokens", _table(["position", "id", "token", "vocabulary string", "characters"],
                                                     rows, limit=64))

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

    _MESSAGE = pb.PredictResponse

    def _summary(self):
        tops = [f"{_quoted(t.token)} {t.score:.4f}" for t in self.proto.predictions]
        return "next token " + (_short_list(tops) or "none")

    def _repr_html_(self):
        rows = [[str(i), str(t.id), _tok(t.token), _num(t.score, "{:.6f}")]
                for i, t in enumerate(self.proto.predictions, 1)]
        return _block(f"Next token after {len(self.proto.input_ids)} input tokens",
                      _table(["rank", "id", "token", "prob"], rows))

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


_WITH_HEAD = {pb.Component.HEAD, pb.Component.HEAD_POSITION, pb.Component.ATTENTION_NEURON,
              pb.Component.ATTENTION_NEURON_VALUE, pb.Component.ATTENTION_NEURON_KEY}
_WITH_SOURCE = _WITH_HEAD - {pb.Component.HEAD}


def _component_row(c):
    """name, kind, layer, head, source_position, neuron; head and source_position are -1 for components that
    have none (a whole head's source position, an FFN neuron's head), as in the FactReport's tables."""
    return [component_name(c), pb.Component.Kind.Name(c.kind), c.layer, c.head if c.kind in _WITH_HEAD else -1,
            c.source_position if c.kind in _WITH_SOURCE else -1, c.neuron]


def _ranked_frame(ranked):
    # source_token_id stays as sent (0 where there is no source): the CLI hides an all-zero column;
    # source_token is the token as read (" France"), "" where there is no source.
    rows = [_component_row(r.component) + [r.score, r.coefficient, r.source_token_id, r.source_token]
            for r in ranked]
    return _frame(rows, _COMPONENT_COLUMNS + ["score", "coefficient", "source_token_id", "source_token"])


def _head_matrix(entries, layers, heads):
    """[layers, heads] float array from (layer, head, score) triples; NaN where none was given."""
    m = np.full((layers, heads), np.nan)
    for layer, head, score in entries:
        m[layer, head] = score
    return m


class Decomposition(Result):
    """Decompose: every component at each requested position."""

    _MESSAGE = pb.DecomposeResponse

    def _summary(self):
        p = self.proto
        sizes = sorted({len(d.components) for d in p.positions})
        return (f"{len(p.positions)} position(s) of {len(p.input_ids)} tokens, "
                f"{'/'.join(map(str, sizes)) or 0} components each, target id {p.target_id}")

    def _repr_html_(self):
        p = self.proto
        parts = [_warnings_html(p)]
        for d in p.positions:
            lens = any(c.top_tokens for c in d.components)
            rows = [[_e(component_name(c.component)), _num(c.increase), _num(c.norm, "{:.4f}")] +
                    ([_toks(c.top_tokens, 5)] if lens else []) for c in d.components]
            caption = (f"position {d.position} (token id {d.token_id}): final-norm scale {d.final_scale:.4f}, "
                       f"reconstruction error {d.reconstruction_error:.2e}")
            parts.append(_table(["component", "increase", "norm"] + (["logit lens"] if lens else []), rows,
                                _e(caption), limit=40))
        return _block(f"Decomposition of log p(target id {p.target_id})", *parts)

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

    _MESSAGE = pb.RankResponse

    def _kind(self):
        c = self.proto.components
        return pb.Component.Kind.Name(c[0].component.kind) if c else "components"

    def _summary(self):
        p = self.proto
        tops = [f"{component_name(c.component)} {c.score:+.4f}" for c in p.components]
        return (f"{len(p.components)} {self._kind()} of {p.total} ({pb.RankMode.Name(p.mode)}, {p.evaluated} "
                f"evaluated exactly): " + (_short_list(tops) or "none"))

    def _repr_html_(self):
        p = self.proto
        kinds = {c.component.kind for c in p.components}
        neurons = bool(kinds & {pb.Component.FFN_NEURON, pb.Component.ATTENTION_NEURON})
        sources = bool(kinds & {pb.Component.HEAD_POSITION, pb.Component.ATTENTION_NEURON})
        rows = [[str(i), _e(component_name(c.component)), _num(c.score)] +
                ([_num(c.coefficient, "{:+.4f}")] if neurons else []) +
                ([_tok(c.source_token) if c.component.kind in _WITH_SOURCE else ""] if sources else [])
                for i, c in enumerate(p.components, 1)]
        columns = ["rank", "component", "score"] + (["coefficient"] if neurons else []) + \
            (["source token"] if sources else [])
        title = (f"Ranking of {_e(self._kind())} for target id {p.target_id}: {len(rows)} of {p.total} "
                 f"({_e(pb.RankMode.Name(p.mode))}, {p.evaluated} evaluated exactly)")
        return _block(title, _warnings_html(p), _table(columns, rows))

    @property
    def scores(self):
        return _floats([c.score for c in self.proto.components])

    def to_pandas(self):
        """One row per ranked component: name, kind, layer, head, source_position, neuron, score,
        coefficient, source_token_id, source_token."""
        return _ranked_frame(self.proto.components)


class Trace(Result):
    """Trace: which earlier components activate a neuron, per key (``in``; ``gate``/``up`` for Llama;
    ``value`` for attention neurons).

    ``neuron`` (a short name such as ``"L2.N94"`` or a ``pb.Component``; the response does not carry it)
    names the traced neuron in titles and limits the figure to the components the neuron can read.
    """

    _MESSAGE = pb.TraceResponse
    _NEURON_KEY = "neuron"  # save() stores the neuron's name next to the response's fields

    def __init__(self, proto, neuron=None):
        super().__init__(proto)
        if neuron is not None and not isinstance(neuron, pb.Component):
            from factlens.components import parse_component

            neuron = parse_component(neuron)
        self.neuron = neuron

    @property
    def neuron_name(self):
        """The traced neuron's short name, or None when unknown."""
        return component_name(self.neuron) if self.neuron is not None else None

    @classmethod
    def from_json(cls, text, neuron=None):
        """A trace from ``to_json()`` or ``save()`` text; the neuron is ``neuron`` if given, else the one
        ``save()`` wrote, else unknown."""
        data = json.loads(text)
        saved = data.pop(cls._NEURON_KEY, None)
        return cls(json_format.ParseDict(data, pb.TraceResponse(), ignore_unknown_fields=True),
                   neuron if neuron is not None else saved)

    def save(self, path):
        """Writes ``to_dict()`` and, when known, the neuron's name under ``neuron``."""
        data = self.to_dict()
        if self.neuron is not None:
            data[self._NEURON_KEY] = self.neuron_name
        with open(path, "w", encoding="utf-8") as f:
            f.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")

    def _summary(self):
        keys = [f"{k.key_name} (total {k.total:+.4f})" for k in self.proto.keys]
        neuron = f"{self.neuron_name} " if self.neuron is not None else ""
        return f"{neuron}at position {self.proto.position}, keys " + (", ".join(keys) or "none")

    def _repr_html_(self):
        keys = self.proto.keys
        slots = max((len(k.layer_scores) for k in keys), default=0)
        rows = [[_e(slot_name(i))] + [_num(k.layer_scores[i]) if i < len(k.layer_scores) else "" for k in keys]
                for i in range(slots)]
        rows.append(["<strong>total</strong>"] + [_num(k.total) for k in keys])
        parts = [_table(["slot"] + [f"key {k.key_name}" for k in keys], rows, "What each layer writes into the key",
                        limit=slots + 1)]
        for k in keys:
            if k.top_ffn_subvalues:
                coefficients = any(c.coefficient for c in k.top_ffn_subvalues)
                sub = [[_e(component_name(c.component)), _num(c.score)] +
                       ([_num(c.coefficient)] if coefficients else []) for c in k.top_ffn_subvalues]
                parts.append(_table(["FFN subvalue", "score"] + (["coefficient"] if coefficients else []), sub,
                                    f"Top earlier FFN subvalues activating key {_e(k.key_name)}", limit=10,
                                    rest="top_subvalues() has them all"))
        neuron = f"of {_e(self.neuron_name)} " if self.neuron is not None else ""
        return _block(f"Trace {neuron}at position {self.proto.position}", *parts)

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

    def _reach(self):
        """How many [1 + 2L] slots the neuron reads: an FFN neuron of layer l the embedding up to attn{l}, an
        attention neuron of layer l up to ffn{l-1}; all of them when the neuron is unknown."""
        slots = max((len(k.layer_scores) for k in self.proto.keys), default=0)
        n = self.neuron
        if n is None:
            return slots
        attention = n.kind in (pb.Component.ATTENTION_NEURON, pb.Component.ATTENTION_NEURON_VALUE,
                               pb.Component.ATTENTION_NEURON_KEY)
        return min(slots, 2 * n.layer + (1 if attention else 2))

    def plot_layers(self, key_name=None, ax=None):
        """Lines of what each component of the residual stream (emb, attn0, ffn0, ...) writes into the
        neuron's keys, key · component: one line per key (a gated neuron's ``gate`` and ``up``), or only
        ``key_name``'s. Titled with the neuron's name when known."""
        from factlens import plots

        keys = [self._key(key_name)] if key_name is not None else list(self.proto.keys)
        reach = self._reach()
        who = self.neuron_name or "the neuron"
        names = " and ".join(k.key_name for k in keys)
        title = (f"What activates {who} at position {self.proto.position}:\n"
                 f"each component's contribution to its key{'s' if len(keys) > 1 else ''} {names}")
        return plots.trace_keys([slot_name(i) for i in range(reach)],
                                [(k.key_name, list(k.layer_scores)[:reach]) for k in keys], ax=ax, title=title)

    def to_pandas(self):
        """Per-layer scores: one row per slot (emb, attn0, ffn0, ...), one column per key."""
        import pandas as pd

        return pd.DataFrame({k.key_name: list(k.layer_scores) for k in self.proto.keys},
                            index=[slot_name(i) for i in range(len(self.proto.keys[0].layer_scores))])


class Projection(Result):
    """ProjectToVocab: top and bottom tokens of a component's vocabulary scores (before-softmax values;
    the vector's own log-probabilities for an adaptive-softmax model such as Baevski-18)."""

    _MESSAGE = pb.ProjectToVocabResponse

    def _summary(self):
        return (f"top {_short_list([_quoted(t.token) for t in self.proto.top])}; "
                f"bottom {_short_list([_quoted(t.token) for t in self.proto.bottom])}")

    def _repr_html_(self):
        import itertools

        rows = [[str(i)] + [cell for t in (top, bottom)
                            for cell in ((_tok(t.token), _num(t.score)) if t is not None else ("", ""))]
                for i, (top, bottom) in enumerate(itertools.zip_longest(self.proto.top, self.proto.bottom), 1)]
        return _block(f"Projection to the vocabulary (final-norm scale {self.proto.final_scale:.4f})",
                      _table(["#", "top token", "score", "bottom token", "score"], rows))

    def to_pandas(self):
        """Rows: the top tokens (largest first), then the bottom ones (most negative first); column side says which."""
        import pandas as pd

        top, bottom = _token_frame(self.proto.top), _token_frame(self.proto.bottom)
        top.insert(0, "side", "top")
        bottom.insert(0, "side", "bottom")
        return pd.concat([top, bottom], ignore_index=True)


class Ablation(Result):
    """Ablate: the target's outcome before and after."""

    _MESSAGE = pb.AblateResponse

    def _summary(self):
        p = self.proto
        after = f", now predicts {_quoted(p.predictions_after[0].token)}" if p.predictions_after else ""
        return (f"target id {p.target_id}: log p {p.before.log_prob:.4f} -> {p.after.log_prob:.4f} "
                f"(change {self.log_prob_change:+.4f}), rank {p.before.rank} -> {p.after.rank}{after}")

    def _repr_html_(self):
        p = self.proto
        rows = [[state, _num(o.log_prob), _num(o.prob, "{:.6f}"), str(o.rank)]
                for state, o in (("before", p.before), ("after", p.after))]
        predictions = [[str(i), str(t.id), _tok(t.token), _num(t.score, "{:.6f}")]
                       for i, t in enumerate(p.predictions_after, 1)]
        return _block(f"Ablation: log p(target id {p.target_id}) changes by {self.log_prob_change:+.4f}",
                      _warnings_html(p), _table(["", "log p", "prob", "rank"], rows),
                      _table(["rank", "id", "token", "prob"], predictions, "Top next tokens after the ablation",
                             limit=5, rest="predictions_frame() has them all") if predictions else "")

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


_NOW = object()  # FactReport(created=_NOW): the report is being made now


def _metric(metric) -> str:
    """What a score of the report's metric measures, in words."""
    return {pb.Metric.PROB_INCREASE: "probability increase",
            pb.Metric.LOGIT_INCREASE: "logit increase"}.get(metric, "log-prob increase")


class FactReport(Result):
    """LocateFact's report: where the model keeps the fact that the prompt continues with the target.

    ``model`` (a ``pb.ModelInfo`` when the client knows it) sizes the head matrix. Provenance, shown by
    ``to_html`` and kept by ``save``/``load``: ``server`` (the address it came from) and
    ``server_version`` when the caller knows them, ``created`` (a timezone-aware ``datetime``; by
    default now, None when unknown) and ``client_version`` (the factlens client that made it).
    """

    _MESSAGE = pb.FactReport
    _MODEL_KEY = "model_info"  # save() stores the model next to the report's fields under this key
    _PROVENANCE_KEY = "provenance"  # ... and where it came from under this one

    def __init__(self, proto, model=None, server=None, server_version=None, created=_NOW,
                 client_version=CLIENT_VERSION):
        super().__init__(proto)
        self.model = model
        self.server = server
        self.server_version = server_version
        self.created = datetime.datetime.now().astimezone().replace(microsecond=0) if created is _NOW else created
        self.client_version = client_version

    @classmethod
    def from_json(cls, text, model=None):
        """A report from ``to_json()`` or ``save()`` text (also ``factlens locate --json`` output). The model
        is ``model`` if given, else the ``model_info`` that ``save()`` wrote, else unknown; the provenance
        is what ``save()`` wrote (unknown for other text)."""
        data = json.loads(text)
        saved = data.pop(cls._MODEL_KEY, None)
        provenance = data.pop(cls._PROVENANCE_KEY, None) or {}
        if model is None and saved is not None:
            model = json_format.ParseDict(saved, pb.ModelInfo(), ignore_unknown_fields=True)
        created = provenance.get("created")
        return cls(json_format.ParseDict(data, pb.FactReport(), ignore_unknown_fields=True), model,
                   server=provenance.get("server"), server_version=provenance.get("server_version"),
                   created=datetime.datetime.fromisoformat(created) if created else None,
                   client_version=provenance.get("client_version"))

    def save(self, path):
        """Writes the report (``to_dict()``), its model (when known) under ``model_info`` and its provenance
        under ``provenance`` as JSON; ``FactReport.load(path)`` reads them back, to display or re-render with
        ``to_html``."""
        data = self.to_dict()
        if self.model is not None:
            data[self._MODEL_KEY] = message_to_dict(self.model)
        data[self._PROVENANCE_KEY] = {
            "server": self.server, "server_version": self.server_version,
            "created": self.created.isoformat() if self.created is not None else None,
            "client_version": self.client_version}
        with open(path, "w", encoding="utf-8") as f:
            f.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")

    def provenance(self) -> dict:
        """Where the report came from, as text: model, family, shape, server, server_version, created,
        client_version (\"not recorded\" where unknown)."""
        m = self.model
        unknown = "not recorded"
        shape = unknown
        if m is not None:
            heads = f"{m.heads} heads" + (f" ({m.kv_heads} key/value heads)" if m.kv_heads and m.kv_heads != m.heads
                                          else "")
            shape = (f"{m.layers} layers × {heads} of dimension {m.head_dim}, d_model {m.d_model}, FFN width "
                     f"{m.ffn_width}, vocabulary {m.vocab_size}; {dtype_phrase(m)} on {m.device or '?'}")
        return {
            "model": (m.name + (f" (loaded from {m.source})" if m.source else "")) if m is not None else unknown,
            "family": (m.family or unknown) if m is not None else unknown,
            "shape": shape,
            "server": self.server or unknown,
            "server_version": self.server_version or "not reported (the API has no version field)",
            "created": self.created.strftime("%Y-%m-%d %H:%M:%S %Z").strip() if self.created is not None else unknown,
            "client_version": self.client_version or unknown,
        }

    def _summary(self):
        r = self.proto
        model = f"{self.model.name}: " if self.model is not None else ""
        text = (f"{model}{_quoted(self.prompt)} -> {_quoted(r.target.token)} (id {r.target.id}): p = "
                f"{r.outcome.prob:.4f}, rank {r.outcome.rank}, {self.layers} layers")
        if r.ffn_neurons:
            n = r.ffn_neurons[0]
            text += f"; top FFN neuron L{n.layer}.N{n.neuron} {n.score:+.4f}"
        return text

    def _repr_html_(self):
        from factlens import plots

        r = self.proto
        model = (f"{self.model.name} ({self.model.family}, {self.model.layers} layers × {self.model.heads} heads)"
                 if self.model is not None else "(not recorded)")
        summary = [
            ("model", _e(model)),
            ("prompt tokens", " ".join(_tok(t) for t in r.input_tokens)),
            ("target", f"{_tok(r.target.token)} (id {r.target.id}) at position {r.position}"),
            ("outcome", _e(_outcome(r.outcome))),
            ("metric / ranking", _e(f"{pb.Metric.Name(r.metric)} / {pb.RankMode.Name(r.mode)}: {r.ffn_evaluated} of "
                                    f"{r.ffn_total} FFN neurons and {r.attention_evaluated} of {r.attention_total} "
                                    "attention neurons evaluated exactly")),
        ]
        if r.ablated_ffn_neurons:
            summary.append((f"ablating the top {r.ablated_ffn_neurons} FFN neurons",
                            _e(f"p {r.outcome.prob:.4f} → {r.ablated.prob:.4f}, rank {r.outcome.rank} → "
                               f"{r.ablated.rank}")))
        summary_table = ('<table class="factlens-summary"><tbody>' +
                         "".join(f"<tr><th>{_e(k)}</th><td>{v}</td></tr>" for k, v in summary) + "</tbody></table>")
        figures = ('<div style="display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start">' +
                   plots.to_img_tag(self.plot_layers(), "per-layer attention and FFN increases of the target") +
                   plots.to_img_tag(self.plot_heads(), "layer by head heatmap of the top heads") + "</div>")
        predictions = _table(["rank", "id", "token", "prob"],
                             [[str(i), str(t.id), _toks([t], target_id=r.target.id), _num(t.score, "{:.6f}")]
                              for i, t in enumerate(r.predictions, 1)], "Prediction", limit=5,
                             rest="predictions_frame() has them all")
        heads = _table(["head", "score"], [[f"L{h.layer}.H{h.head}", _num(h.score)] for h in r.top_heads],
                       "Top heads", limit=5, rest="heads_frame() has them all")
        promoted = "tokens the subvalue m·v promotes"
        ffn = _table(["neuron", "score", "coefficient m", promoted],
                     [[_e(component_name(pb.Component(kind=pb.Component.FFN_NEURON, layer=n.layer, neuron=n.neuron))),
                       _num(n.score), _num(n.coefficient), _toks(n.top_tokens, target_id=r.target.id)]
                      for n in r.ffn_neurons],
                     "Top FFN neurons (m &lt; 0: the promoted tokens are the value vector v's bottom tokens)",
                     limit=10, rest="neurons_frame() has them all")
        attention = _table(["neuron", "source token", "score", promoted],
                           [[_e(component_name(pb.Component(kind=pb.Component.ATTENTION_NEURON, layer=n.layer,
                                                            head=n.head, source_position=n.source_position,
                                                            neuron=n.neuron))),
                             _tok(self._source_token(n.source_position)), _num(n.score),
                             _toks(n.top_tokens, target_id=r.target.id)]
                            for n in r.attention_neurons],
                           "Top attention neurons", limit=10, rest="neurons_frame(attention=True) has them all")
        tables = ('<div style="display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start">' + predictions + heads +
                  "</div>")
        title = f"Fact localization: {_tok(self.prompt)} → {_tok(r.target.token)}"
        return _block(title, _warnings_html(r), summary_table, figures, tables, ffn, attention)

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
        """Top heads (``positions``: top head × source position pairs): name, layer, head, source_position
        (-1 for a whole head), source_token (the token at that position, "" for a whole head), score."""
        heads = self.proto.top_head_positions if positions else self.proto.top_heads
        rows = [[component_name(pb.Component(kind=pb.Component.HEAD_POSITION if positions else pb.Component.HEAD,
                                             layer=h.layer, head=h.head, source_position=h.source_position)),
                 h.layer, h.head, h.source_position if positions else -1,
                 self._source_token(h.source_position) if positions else "", h.score] for h in heads]
        return _frame(rows, ["name", "layer", "head", "source_position", "source_token", "score"])

    def head_matrix(self):
        """[layers, heads] scores of the top heads; NaN for heads outside the top list."""
        return _head_matrix([(h.layer, h.head, h.score) for h in self.proto.top_heads], self.layers, self.heads)

    def neurons_frame(self, attention=False, top_tokens=6):
        """Top FFN neurons (``attention``: attention neurons): name, layer, neuron (head dim), head, source,
        score, coefficient m, and ``top_tokens``: the first ``top_tokens`` tokens that the neuron's subvalue
        m·v promotes (its projection's top tokens; for m < 0 the value vector v's bottom tokens)."""
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

        return plots.head_heatmap(self.head_matrix(), ax=ax, title="Top heads (grey: not in the top list)",
                                  label=_metric(self.proto.metric))

    def plot_neuron_table(self, n=10, attention=False, ax=None):
        """The top ``n`` neurons with their top tokens, drawn as a table."""
        from factlens import plots

        kind = "attention" if attention else "FFN"
        return plots.neuron_table(self.neurons_frame(attention=attention).head(n), ax=ax,
                                  title=f"Top {kind} neurons by {_metric(self.proto.metric)} of "
                                        f"{_quoted(self.proto.target.token)}")

    def cumulative_frame(self):
        """The logit lens after the embedding and after each sublayer (``cumulative``; empty when the server
        sent none): step, after (emb, attn0, ffn0, ...), log_prob, prob, rank (of the target there), and the
        top prediction there: top_id, top_token, top_prob."""
        rows = [[i, component_name(s.after), s.target.log_prob, s.target.prob, s.target.rank, s.top.id, s.top.token,
                 s.top.score] for i, s in enumerate(self._cumulative())]
        return _frame(rows, ["step", "after", "log_prob", "prob", "rank", "top_id", "top_token", "top_prob"])

    def _cumulative(self):
        return list(self.proto.cumulative) if "cumulative" in self.proto.DESCRIPTOR.fields_by_name else []

    def rank1_after(self):
        """The step (``"ffn1"``, ...) from which on the target stays the top prediction up to the output,
        or None (no logit-lens steps, or the model's output does not rank it first)."""
        steps = self._cumulative()
        if not steps or steps[-1].target.rank != 1:
            return None
        i = len(steps) - 1
        while i > 0 and steps[i - 1].target.rank == 1:
            i -= 1
        return component_name(steps[i].after)

    def plot_cumulative(self, ax=None):
        """The target's log-prob in the logit lens after each step (rank-1 steps starred), with the top
        prediction written above the other steps. Raises ValueError when the report has no such steps."""
        from factlens import plots

        frame = self.cumulative_frame()
        if frame.empty:
            raise ValueError("the report has no logit-lens steps (cumulative): the server did not send them")
        target = _quoted(self.proto.target.token)
        return plots.cumulative_lens(list(frame.after), frame.log_prob, frame["rank"], list(frame.top_token), ax=ax,
                                     target=target, title=f"Logit lens: {target} after each step of the residual stream")

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

    _MESSAGE = pb.ItemResult

    def _summary(self):
        if self.report is not None:
            return f"item {self.proto.index}: {self.report._summary()}"
        return f"item {self.proto.index}: {self.exception.code.name}: {self.proto.error.message}"

    def _repr_html_(self):
        if self.report is not None:
            return _block(f"Item {self.proto.index}", self.report._repr_html_())
        return _block(f"Item {self.proto.index}: failed",
                      f"<div>{_e(self.exception.code.name)}: {_e(self.proto.error.message)}</div>")

    def __init__(self, proto, model=None, server=None):
        super().__init__(proto)
        self.report = FactReport(proto.report, model, server=server) if proto.HasField("report") else None

    @property
    def exception(self):
        """The item's error as a FactlensError (its gRPC code and message), or None."""
        if not self.proto.HasField("error"):
            return None
        code = next((c for c in grpc.StatusCode if c.value[0] == self.proto.error.code), grpc.StatusCode.UNKNOWN)
        return FactlensError(code, self.proto.error.message)


class BatchAggregate(Result):
    """LocateFacts' aggregate over the successful items."""

    _MESSAGE = pb.BatchAggregate

    def _summary(self):
        return f"{self.proto.facts} facts ({self.proto.failed} failed), {len(self.proto.ffn_neurons_per_layer)} layers"

    def _repr_html_(self):
        p = self.proto
        rows = [[str(i), str(f), str(a), _num(ma), _num(mf)]
                for i, (f, a, ma, mf) in enumerate(zip(p.ffn_neurons_per_layer, p.attention_neurons_per_layer,
                                                       p.mean_attention_layer_increase, p.mean_ffn_layer_increase))]
        return _block(f"Over {p.facts} facts ({p.failed} failed)",
                      _table(["layer", "top FFN neurons", "top attention neurons", "mean attention increase",
                              "mean FFN increase"], rows, limit=100))

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
