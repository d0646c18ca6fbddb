"""Short names of residual-stream components, and enum values by name.

A component is written the way the CLI and the tables print it:

==========================  ==========================================================
``emb``, ``residual``       the embedding, the final residual
``attn3``, ``ffn3``         layer 3's attention / FFN output (``attn_bias3``: its bias)
``L3.H1``                   head 1 of layer 3;  ``L3.H1.P2``: its source position 2
``L3.N45``                  FFN neuron 45 of layer 3 (its subvalue m·v)
``L3.N45.value``            its value vector;  ``L3.N45.key`` / ``L3.N45.key:gate``: its key
``L3.H1.P2.d5``             attention neuron: head dim 5 of head 1 at source position 2
                            (``.value`` / ``.key`` as for FFN neurons)
==========================  ==========================================================
"""
import re

from factlens.errors import invalid_argument
from factlens.v1 import factlens_pb2 as pb

K = pb.Component
_WHOLE = {"emb": K.EMBEDDING, "residual": K.RESIDUAL}
_LAYER = {"attn": K.ATTENTION_LAYER, "ffn": K.FFN_LAYER, "attn_bias": K.ATTENTION_BIAS}
_FFN = {None: K.FFN_NEURON, "value": K.FFN_NEURON_VALUE, "key": K.FFN_NEURON_KEY}
_ATTENTION = {None: K.ATTENTION_NEURON, "value": K.ATTENTION_NEURON_VALUE, "key": K.ATTENTION_NEURON_KEY}
_LAYER_RE = re.compile(r"(attn_bias|attn|ffn)(\d+)")
_INNER_RE = re.compile(r"L(\d+)\.(?:N(\d+)|H(\d+)(?:\.P(\d+)(?:\.d(\d+))?)?)(?:\.(value)|\.(key)(?::(\w+))?)?", re.I)


def parse_component(spec) -> pb.Component:
    """A ``pb.Component`` from its short name (see the module doc); a Component is returned as is."""
    if isinstance(spec, pb.Component):
        return spec
    text = str(spec).strip()
    if text.lower() in _WHOLE:
        return pb.Component(kind=_WHOLE[text.lower()])
    m = _LAYER_RE.fullmatch(text.lower())
    if m:
        return pb.Component(kind=_LAYER[m[1]], layer=int(m[2]))
    m = _INNER_RE.fullmatch(text)
    if m:
        layer, neuron, head, source, dim, value, key, key_name = m.groups()
        part = (value or key or "").lower() or None
        if neuron is not None:
            return pb.Component(kind=_FFN[part], layer=int(layer), neuron=int(neuron), key_name=key_name or "")
        if part is None:
            kind = K.HEAD if source is None else K.HEAD_POSITION if dim is None else K.ATTENTION_NEURON
            return pb.Component(kind=kind, layer=int(layer), head=int(head), source_position=int(source or 0),
                                neuron=int(dim or 0))
        if dim is not None:
            return pb.Component(kind=_ATTENTION[part], layer=int(layer), head=int(head), source_position=int(source),
                                neuron=int(dim), key_name=key_name or "")
    raise invalid_argument(f"component: cannot read {text!r} (e.g. ffn3, L3.H1, L3.H1.P2, L3.N45, L3.N45.value, "
                           "L3.H1.P2.d5)")


def component_name(c) -> str:
    """The short name of a ``pb.Component`` (the inverse of ``parse_component``)."""
    for names in (_WHOLE, _LAYER):
        for name, kind in names.items():
            if c.kind == kind:
                return name if names is _WHOLE else f"{name}{c.layer}"
    suffix = {K.FFN_NEURON_VALUE: ".value", K.ATTENTION_NEURON_VALUE: ".value",
              K.FFN_NEURON_KEY: ".key", K.ATTENTION_NEURON_KEY: ".key"}.get(c.kind, "")
    if suffix == ".key" and c.key_name:
        suffix += ":" + c.key_name
    if c.kind in _FFN.values():
        return f"L{c.layer}.N{c.neuron}{suffix}"
    name = f"L{c.layer}.H{c.head}"
    if c.kind == K.HEAD:
        return name
    name += f".P{c.source_position}"
    return name if c.kind == K.HEAD_POSITION else f"{name}.d{c.neuron}{suffix}"


def enum_value(enum, value, field: str) -> int:
    """An enum number from a number or a (case-insensitive) name, e.g. ``enum_value(pb.RankMode, "exact", "mode")``."""
    if isinstance(value, str) and value.upper() in enum.keys():
        return enum.Value(value.upper())
    if not isinstance(value, str) and int(value) in enum.values():
        return int(value)
    raise invalid_argument(f"{field}: unknown value {value!r} (one of {', '.join(enum.keys())})")
