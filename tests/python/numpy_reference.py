"""An independent float64 numpy implementation of GPT-2 and of the paper's formulas.

Reads safetensors weights directly; shares no code with factlens. Used by the tests to check the
C++ fact-localization report against values computed from first principles.
"""
import json
import struct

import numpy as np


def read_safetensors(path):
    """All tensors of a safetensors file as float64 (or int64) numpy arrays."""
    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        begin, end = entry["data_offsets"]
        raw = data[8 + n + begin:8 + n + end]
        dtype = entry["dtype"]
        if dtype == "BF16":
            values = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            values = np.frombuffer(raw, {"F32": np.float32, "F16": np.float16, "I64": np.int64}[dtype])
        values = values.reshape(entry["shape"])
        out[name] = values.astype(np.float64) if dtype != "I64" else values
    return out


def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


def layer_norm(x, g, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g + b


def log_softmax(x):
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


class Gpt2:
    """GPT-2 forward pass in float64 keeping every component (weights keyed as HF writes them)."""

    def __init__(self, model_dir):
        with open(model_dir + "/config.json") as f:
            self.config = json.load(f)
        w = read_safetensors(model_dir + "/model.safetensors")
        self.w = {k[len("transformer."):] if k.startswith("transformer.") else k: v for k, v in w.items()}
        self.layers = self.config["n_layer"]
        self.heads = self.config["n_head"]
        self.d = self.config["n_embd"]
        self.dh = self.d // self.heads
        self.eps = self.config.get("layer_norm_epsilon", 1e-5)

    def forward(self, ids, zero_ffn=()):
        """Runs the model; zero_ffn lists (layer, neuron, position) coefficients set to zero."""
        w, t = self.w, len(ids)
        x = w["wte.weight"][ids] + w["wpe.weight"][:t]
        trace = {"in": [], "attn": [], "mid": [], "ffn": [], "coef": [], "heads": [], "probs": [], "v": []}
        mask = np.triu(np.ones((t, t), bool), 1)
        for l in range(self.layers):
            p = f"h.{l}."
            h = layer_norm(x, w[p + "ln_1.weight"], w[p + "ln_1.bias"], self.eps)
            qkv = h @ w[p + "attn.c_attn.weight"] + w[p + "attn.c_attn.bias"]
            q, k, v = (qkv[:, i * self.d:(i + 1) * self.d].reshape(t, self.heads, self.dh) for i in range(3))
            scores = np.einsum("qhj,shj->hqs", q, k) / np.sqrt(self.dh)
            scores[:, mask] = -np.inf
            probs = np.exp(log_softmax(scores))
            heads = np.einsum("hqs,shj->qhj", probs, v)
            attn = heads.reshape(t, self.d) @ w[p + "attn.c_proj.weight"] + w[p + "attn.c_proj.bias"]
            mid = x + attn
            h2 = layer_norm(mid, w[p + "ln_2.weight"], w[p + "ln_2.bias"], self.eps)
            coef = gelu_tanh(h2 @ w[p + "mlp.c_fc.weight"] + w[p + "mlp.c_fc.bias"])
            for (zl, zn, zp) in zero_ffn:
                if zl == l:
                    coef[zp, zn] = 0.0
            ffn = coef @ w[p + "mlp.c_proj.weight"] + w[p + "mlp.c_proj.bias"]
            for key, value in (("in", x), ("attn", attn), ("mid", mid), ("ffn", ffn), ("coef", coef),
                               ("heads", heads), ("probs", probs), ("v", v)):
                trace[key].append(value)
            x = mid + ffn
        trace["final"] = x
        trace["logits"] = layer_norm(x, w["ln_f.weight"], w["ln_f.bias"], self.eps) @ w["wte.weight"].T
        return trace


class Method:
    """The paper's formulas at the last position for target w (docs/method-reference.md)."""

    def __init__(self, model, trace, target):
        self.m, self.tr, self.w_id = model, trace, target
        final = trace["final"][-1]
        self.sigma = np.sqrt(final.var() + model.eps)
        self.g = model.w["ln_f.weight"]
        self.E = model.w["wte.weight"]

    def bs(self, v):
        c = v - v.mean(-1, keepdims=True)
        return (c * self.g / self.sigma) @ self.E.T

    def logp(self, v):
        b = self.bs(v)
        return b[..., self.w_id] - (np.log(np.exp(b - b.max(-1, keepdims=True)).sum(-1)) + b.max(-1))

    def increase(self, base, vectors):
        return self.logp(base + vectors) - self.logp(base)

    def layer_increases(self):
        tr = self.tr
        attn = [self.increase(tr["in"][l][-1], tr["attn"][l][-1]) for l in range(self.m.layers)]
        ffn = [self.increase(tr["mid"][l][-1], tr["ffn"][l][-1]) for l in range(self.m.layers)]
        return np.array(attn), np.array(ffn)

    def ffn_neurons(self):
        out = []
        for l in range(self.m.layers):
            w_out = self.m.w[f"h.{l}.mlp.c_proj.weight"]
            out.append(self.increase(self.tr["mid"][l][-1], self.tr["coef"][l][-1][:, None] * w_out))
        return np.array(out)  # [L, N]

    def attention_neurons(self):
        m, tr = self.m, self.tr
        out = []
        for l in range(m.layers):
            w_o = m.w[f"h.{l}.attn.c_proj.weight"].reshape(m.heads, m.dh, m.d)
            coef = tr["probs"][l][:, -1, :].T[:, :, None] * tr["v"][l]  # [T, H, Dh]
            vectors = coef[..., None] * w_o[None]  # [T, H, Dh, d]
            out.append(self.increase(tr["in"][l][-1], vectors))
        return np.array(out)  # [L, T, H, Dh]

    def head_increases(self):
        m, tr = self.m, self.tr
        out = []
        for l in range(m.layers):
            w_o = m.w[f"h.{l}.attn.c_proj.weight"].reshape(m.heads, m.dh, m.d)
            vectors = np.einsum("hj,hjd->hd", tr["heads"][l][-1], w_o)
            out.append(self.increase(tr["in"][l][-1], vectors))
        return np.array(out)

    def query_layers_ffn(self, neurons):
        """neurons: [(layer, n, increase)] -> [1 + 2L] aggregated query-layer scores (key W_in ⊙ ln_2)."""
        m, tr = self.m, self.tr
        acc = np.zeros(1 + 2 * m.layers)
        for l, n, inc in neurons:
            key = m.w[f"h.{l}.mlp.c_fc.weight"][:, n] * m.w[f"h.{l}.ln_2.weight"]
            comps = [tr["in"][0][-1]]
            for j in range(l):
                comps += [tr["attn"][j][-1], tr["ffn"][j][-1]]
            comps.append(tr["attn"][l][-1])
            ips = np.array([c @ key for c in comps])
            acc[:len(ips)] += ips / ips.sum() * inc
        return acc
