#!/usr/bin/env python3
"""Generate fairseq Baevski-18 (adaptive input / adaptive softmax LM) checkpoint VARIANTS plus float64
reference outputs for the C++ loader tests.  Run by hand, not in CI; its outputs are committed.

Usage (needs numpy and torch; torch is used only to write/read the torch.save containers and to build
tensors / argparse.Namespace args -- every number in the references comes from the numpy code below):

    python3 -m venv /tmp/fxvenv
    /tmp/fxvenv/bin/pip install numpy==2.1.3 typing_extensions filelock sympy networkx jinja2 fsspec
    echo /work/main/.venv/lib/python3.11/site-packages > /tmp/fxvenv/lib/python3.11/site-packages/main.pth
    /tmp/fxvenv/bin/python tools/make_fairseq_variants.py            # all variants
    /tmp/fxvenv/bin/python tools/make_fairseq_variants.py --check-only   # only the baevski-tiny cross-check
    # optional extra check against fairseq's own modules (a fairseq checkout; `pip install omegaconf`):
    /tmp/fxvenv/bin/python tools/make_fairseq_variants.py --fairseq-src /path/to/fairseq-checkout

Input : tests/data/fairseq-reference/baevski-tiny/ (copied from shared/fixtures; model.pt, dict.txt,
        reference_case*.safetensors).
Output: tests/data/fairseq-reference/<variant>/{model.pt, dict.txt, reference.json,
        reference_case<i>.safetensors} for
  baevski-tiny-fp16        tiny state, every floating tensor HalfStorage (fairseq --fp16), legacy container
  baevski-tiny-inproj      tiny state, legacy self_attn.in_proj_weight/in_proj_bias ([q;k;v] rows), legacy
                           layers.{i}.layer_norms.{0,2}, 2018/2019-style args (no_tie_adaptive_proj=False,
                           no tie_adaptive_proj / no_decoder_final_norm / no_scale_embedding), decoder.version 2,
                           legacy container
  baevski-4band            new random model: 2 layers, d 48, 6 heads, FFN 56, cutoffs [60,150,400]+808,
                           factor 2.0 (dims 48/24/12/6), tied, zip container (torch.save default), fp32
  baevski-tiny-final-norm  tiny state + decoder.layer_norm.{weight,bias}, no_decoder_final_norm=False,
                           legacy container

Before generating, the numpy forward is checked against the existing baevski-tiny references (every tensor
of reference_case*.safetensors that this script also computes); the script aborts if forward.logprobs or
forward.final differ by more than 1e-5.

Reference definitions are those of tests/data/fairseq-reference/baevski-tiny/README.md (shared/fixtures
README names); see tests/data/fairseq-reference/README.md for the variants.
"""

import argparse
import collections
import copy
import json
import math
import os
import struct
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OUTROOT = os.path.join(ROOT, "tests", "data", "fairseq-reference")
TINY = os.path.join(OUTROOT, "baevski-tiny")
LN_EPS = 1e-5
PADDING_IDX = 1
START = 2


# ----------------------------------------------------------------------------------------------------------
# safetensors (hand-written; little-endian, header padded with spaces to a multiple of 8)

def write_safetensors(path, tensors):
    header = {}
    blobs = []
    off = 0
    for name in sorted(tensors):
        a = tensors[name]
        if a.dtype.kind == "f":
            a = np.ascontiguousarray(a, dtype="<f4")
            dt = "F32"
        elif a.dtype.kind in "iu":
            a = np.ascontiguousarray(a, dtype="<i8")
            dt = "I64"
        else:
            raise TypeError(name)
        raw = a.tobytes()
        header[name] = {"dtype": dt, "shape": list(a.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((-len(h)) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dt = {"F32": "<f4", "I64": "<i8", "F16": "<f2"}[info["dtype"]]
        b, e = info["data_offsets"]
        out[name] = np.frombuffer(data[b:e], dtype=dt).reshape(info["shape"])
    return out


# ----------------------------------------------------------------------------------------------------------
# numpy float64 model (independent of fairseq / torch modules)

def arg(args, name, default):
    return getattr(args, name, default)


def resolve_args(args):
    """The few arch defaults / backward-compat rules (spec §3.2) the references depend on."""
    a = vars(args)
    no_final = a.get("no_decoder_final_norm", True)  # transformer_lm_wiki103 default True
    tie_proj = a.get("tie_adaptive_proj", True)
    if "no_tie_adaptive_proj" in a:  # old checkpoint
        no_final = True
        if a["no_tie_adaptive_proj"] is False:
            tie_proj = True
    if a.get("decoder_final_norm", False):
        no_final = False
    return {
        "final_norm": not no_final,
        "tie_proj": tie_proj,
        "scale_embedding": not a.get("no_scale_embedding", False),
        "heads": a["decoder_attention_heads"],
    }


def upgrade_state(sd, nlayers):
    """Legacy key names -> modern ones (fairseq upgrade_state_dict_named)."""
    sd = dict(sd)
    for i in range(nlayers):
        p = "decoder.layers.%d." % i
        for m in ("weight", "bias"):
            k = p + "self_attn.in_proj_" + m
            if k in sd:
                w = sd.pop(k)
                dim = w.shape[0] // 3
                sd[p + "self_attn.q_proj." + m] = w[:dim]
                sd[p + "self_attn.k_proj." + m] = w[dim:2 * dim]
                sd[p + "self_attn.v_proj." + m] = w[2 * dim:]
        for old, new in (("0", "self_attn_layer_norm"), ("1", "encoder_attn_layer_norm"), ("2", "final_layer_norm")):
            for m in ("weight", "bias"):
                k = p + "layer_norms.%s.%s" % (old, m)
                if k in sd:
                    sd[p + new + "." + m] = sd.pop(k)
    return sd


class NpModel:
    def __init__(self, state, args):
        r = resolve_args(args)
        sd = {k: v.detach().to(torch.float64).numpy() for k, v in state.items() if v.is_floating_point()}
        nl = 0
        while any(k.startswith("decoder.layers.%d." % nl) for k in sd):
            nl += 1
        sd = upgrade_state(sd, nl)
        self.L = nl
        self.E, self.P = [], []
        b = 0
        while "decoder.embed_tokens.embeddings.%d.0.weight" % b in sd:
            self.E.append(sd["decoder.embed_tokens.embeddings.%d.0.weight" % b])
            self.P.append(sd["decoder.embed_tokens.embeddings.%d.1.weight" % b])
            b += 1
        self.B = b
        self.sizes = [e.shape[0] for e in self.E]
        self.lo = [int(x) for x in np.cumsum([0] + self.sizes[:-1])]
        self.V = sum(self.sizes)
        self.d = self.P[0].shape[0]
        self.H = r["heads"]
        self.Dh = self.d // self.H
        self.scale = math.sqrt(self.d) if r["scale_embedding"] else 1.0
        # output side, read from the adaptive-softmax keys (tied: same values as the input tensors)
        self.head_W = sd["decoder.adaptive_softmax.head.word_proj.weight"]
        self.C = sd["decoder.adaptive_softmax.head.class_proj.weight"]
        self.tail_proj, self.tail_out = [None], [None]
        for bb in range(1, self.B):
            pw = sd["decoder.adaptive_softmax.tail.%d.0.weight" % (bb - 1)]
            # tied proj: [d, d_b] used transposed (r = Pᵀ h); untied Linear: [d_b, d]
            self.tail_proj.append(pw.T if pw.shape[0] == self.d else pw)
            self.tail_out.append(sd["decoder.adaptive_softmax.tail.%d.2.weight" % (bb - 1)])
        self.layers = []
        for i in range(nl):
            p = "decoder.layers.%d." % i
            g = lambda n: sd[p + n]
            self.layers.append(dict(
                Wq=g("self_attn.q_proj.weight"), bq=g("self_attn.q_proj.bias"),
                Wk=g("self_attn.k_proj.weight"), bk=g("self_attn.k_proj.bias"),
                Wv=g("self_attn.v_proj.weight"), bv=g("self_attn.v_proj.bias"),
                Wo=g("self_attn.out_proj.weight"), bo=g("self_attn.out_proj.bias"),
                g1=g("self_attn_layer_norm.weight"), b1=g("self_attn_layer_norm.bias"),
                W1=g("fc1.weight"), c1=g("fc1.bias"), W2=g("fc2.weight"), c2=g("fc2.bias"),
                g2=g("final_layer_norm.weight"), b2=g("final_layer_norm.bias")))
        self.N = self.layers[0]["W1"].shape[0]
        self.final_norm = "decoder.layer_norm.weight" in sd
        assert self.final_norm == r["final_norm"], "args and state disagree about the final norm"
        if self.final_norm:
            self.gf = sd["decoder.layer_norm.weight"]
            self.bf = sd["decoder.layer_norm.bias"]

    # --- pieces
    @staticmethod
    def layer_norm(x, g, b):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + LN_EPS) * g + b

    def band_of(self, w):
        for b in range(self.B - 1, -1, -1):
            if w >= self.lo[b]:
                return b

    def positions(self, T):
        half = self.d // 2
        k = math.log(10000) / (half - 1)
        freq = np.exp(-np.arange(half, dtype=np.float64) * k)
        pos = (PADDING_IDX + 1 + np.arange(T, dtype=np.float64))[:, None] * freq[None, :]
        pe = np.concatenate([np.sin(pos), np.cos(pos)], axis=1)
        if self.d % 2:
            pe = np.concatenate([pe, np.zeros((T, 1))], axis=1)
        return pe

    def head_logits(self, h):
        return np.concatenate([h @ self.head_W.T, h @ self.C.T], axis=-1)

    def tail_logits(self, h, b):
        return (h @ self.tail_proj[b].T) @ self.tail_out[b].T

    @staticmethod
    def log_softmax(z):
        m = z.max(-1, keepdims=True)
        return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))

    def adaptive_logprobs(self, h):
        """Full log-distribution [..., V] of the adaptive softmax for features h [..., d]."""
        c0 = self.sizes[0]
        lz = self.log_softmax(self.head_logits(h))
        parts = [lz[..., :c0]]
        for b in range(1, self.B):
            parts.append(lz[..., c0 + b - 1:c0 + b] + self.log_softmax(self.tail_logits(h, b)))
        return np.concatenate(parts, axis=-1)

    def adaptive_logprob_w(self, h, w):
        """log p(w | h) for h [..., d] (only the target's band)."""
        c0 = self.sizes[0]
        lz = self.log_softmax(self.head_logits(h))
        b = self.band_of(w)
        if b == 0:
            return lz[..., w]
        t = self.log_softmax(self.tail_logits(h, b))
        return lz[..., c0 + b - 1] + t[..., w - self.lo[b]]

    # --- forward
    def forward(self, ids):
        ids = list(ids)
        T = len(ids)
        out = {}
        tok = np.zeros((T, self.d))
        for t, w in enumerate(ids):
            b = self.band_of(w)
            tok[t] = self.P[b] @ self.E[b][w - self.lo[b]]
        tok *= self.scale
        pe = self.positions(T)
        out["forward.token_embed"] = tok
        out["forward.pos_embed"] = pe
        x = tok + pe
        mask = np.triu(np.full((T, T), -np.inf), 1)
        probs_all = []
        H, Dh = self.H, self.Dh
        for l, Ly in enumerate(self.layers):
            out["forward.in.%d" % l] = x
            h = self.layer_norm(x, Ly["g1"], Ly["b1"])
            q = (h @ Ly["Wq"].T + Ly["bq"]) * Dh ** -0.5
            k = h @ Ly["Wk"].T + Ly["bk"]
            v = h @ Ly["Wv"].T + Ly["bv"]
            qh = q.reshape(T, H, Dh).transpose(1, 0, 2)
            kh = k.reshape(T, H, Dh).transpose(1, 0, 2)
            vh = v.reshape(T, H, Dh).transpose(1, 0, 2)
            s = qh @ kh.transpose(0, 2, 1) + mask
            p = np.exp(s - s.max(-1, keepdims=True))
            p /= p.sum(-1, keepdims=True)
            heads = (p @ vh).transpose(1, 0, 2).reshape(T, self.d)
            a = heads @ Ly["Wo"].T + Ly["bo"]
            probs_all.append(p)
            out["forward.v.%d" % l] = v
            out["forward.heads.%d" % l] = heads
            out["forward.attn.%d" % l] = a
            x = x + a
            out["forward.mid.%d" % l] = x
            h2 = self.layer_norm(x, Ly["g2"], Ly["b2"])
            c = np.maximum(h2 @ Ly["W1"].T + Ly["c1"], 0.0)
            f = c @ Ly["W2"].T + Ly["c2"]
            out["forward.coef.%d" % l] = c
            out["forward.ffn.%d" % l] = f
            x = x + f
        out["forward.attn_probs"] = np.stack(probs_all)
        out["forward.final"] = x
        feats = self.layer_norm(x, self.gf, self.bf) if self.final_norm else x
        out["forward.head_logits"] = self.head_logits(feats)
        for b in range(1, self.B):
            out["forward.tail_logits.%d" % b] = self.tail_logits(feats, b)
        out["forward.logprobs"] = self.adaptive_logprobs(feats)
        return out

    # --- method (spec §5; baevski-tiny README)
    def method(self, fw, w):
        """All method.* values at the last position for target w."""
        L, H, Dh, d = self.L, self.H, self.Dh, self.d
        T = fw["forward.final"].shape[0]
        m = {}
        if self.final_norm:
            # model with a final LayerNorm: hf-reference convention (frozen σ of the final residual,
            # centred vector, gain g, no bias), i.e. features(v) = g ⊙ (v − mean v) / σ
            fin = fw["forward.final"][-1]
            sigma = math.sqrt(((fin - fin.mean()) ** 2).mean() + LN_EPS)
            m["method.final_scale"] = np.array([sigma])
            feat = lambda v: (v - v.mean(-1, keepdims=True)) / sigma * self.gf
        else:
            feat = lambda v: v
        LPw = lambda v: self.adaptive_logprob_w(feat(v), w)
        LPall = lambda v: self.adaptive_logprobs(feat(v))

        def inc(base, vs):
            return LPw(base + vs) - LPw(base)

        def pinc(base, vs):
            return np.exp(LPw(base + vs)) - np.exp(LPw(base))

        la, lf, pa, pf = [], [], [], []
        ffn_n = np.zeros((L, self.N))
        head_inc = np.zeros((L, H))
        headpos = np.zeros((L, H, T))
        attn_n = np.zeros((L, T, H, Dh))
        for l, Ly in enumerate(self.layers):
            xin = fw["forward.in.%d" % l][-1]
            xmid = fw["forward.mid.%d" % l][-1]
            a = fw["forward.attn.%d" % l][-1]
            f = fw["forward.ffn.%d" % l][-1]
            la.append(inc(xin, a)); pa.append(pinc(xin, a))
            lf.append(inc(xmid, f)); pf.append(pinc(xmid, f))
            c = fw["forward.coef.%d" % l][-1]
            ffn_n[l] = inc(xmid, c[:, None] * Ly["W2"].T)
            heads = fw["forward.heads.%d" % l][-1]
            p = fw["forward.attn_probs"][l][:, -1, :]            # [H, T] from the last query
            v = fw["forward.v.%d" % l].reshape(T, H, Dh)          # [T, H, Dh]
            for h in range(H):
                sl = slice(h * Dh, (h + 1) * Dh)
                head_inc[l, h] = inc(xin, Ly["Wo"][:, sl] @ heads[sl])
                hp = (p[h][:, None] * v[:, h, :]) @ Ly["Wo"][:, sl].T  # [T, d]
                headpos[l, h] = inc(xin, hp)
                an = (p[h][:, None, None] * v[:, h, :][:, :, None]) * Ly["Wo"][:, sl].T[None, :, :]  # [T,Dh,d]
                attn_n[l, :, h, :] = inc(xin, an)
        m["method.layer_attn_logprob_increase"] = np.array(la)
        m["method.layer_ffn_logprob_increase"] = np.array(lf)
        m["method.layer_attn_prob_increase"] = np.array(pa)
        m["method.layer_ffn_prob_increase"] = np.array(pf)
        m["method.ffn_neuron_logprob_increase"] = ffn_n
        m["method.head_logprob_increase"] = head_inc
        m["method.head_position_logprob_increase"] = headpos
        m["method.attn_neuron_logprob_increase"] = attn_n
        m["method.embed_vocab_logprobs"] = LPall(fw["forward.in.0"][-1])
        m["method.attn_vocab_logprobs"] = np.stack([LPall(fw["forward.attn.%d" % l][-1]) for l in range(L)])
        m["method.ffn_vocab_logprobs"] = np.stack([LPall(fw["forward.ffn.%d" % l][-1]) for l in range(L)])
        recon = fw["forward.in.0"][-1] + sum(fw["forward.attn.%d" % l][-1] + fw["forward.ffn.%d" % l][-1]
                                             for l in range(L))
        m["method.decomposition_max_abs_err"] = np.array([np.abs(recon - fw["forward.final"][-1]).max()])

        # top neurons and query scores (shared/fixtures README)
        top_f = np.argsort(-ffn_n.reshape(-1), kind="stable")[:10]
        m["method.top_ffn_neurons"] = top_f.astype(np.int64)
        comps = lambda pos, upto: [fw["forward.in.0"][pos]] + [
            x for mm in range(upto) for x in (fw["forward.attn.%d" % mm][pos], fw["forward.ffn.%d" % mm][pos])]
        qffn = np.zeros(1 + 2 * L)
        for idx in top_f:
            l, n = divmod(int(idx), self.N)
            key = self.layers[l]["W1"][n] * self.layers[l]["g2"]
            cs = comps(-1, l) + [fw["forward.attn.%d" % l][-1]]
            dots = np.array([c @ key for c in cs])
            qffn[:len(cs)] += dots / dots.sum() * ffn_n[l, n]
        m["method.query_layer_scores_ffn_Kin"] = qffn
        top_a = np.argsort(-attn_n.reshape(-1), kind="stable")[:10]
        m["method.top_attn_neurons"] = top_a.astype(np.int64)
        qattn = np.zeros(1 + 2 * L)
        qfn = np.zeros((L, self.N))
        for rank, idx in enumerate(top_a):
            l, s, h, j = np.unravel_index(int(idx), (L, T, H, Dh))
            key = self.layers[l]["Wv"][h * Dh + j] * self.layers[l]["g1"]
            cs = comps(s, l)
            dots = np.array([c @ key for c in cs])
            val = attn_n[l, s, h, j]
            qattn[:len(cs)] += dots / dots.sum() * val
            if rank < 5:
                denom = fw["forward.in.%d" % l][s] @ key
                for l2 in range(l):
                    sub = fw["forward.coef.%d" % l2][s][:, None] * self.layers[l2]["W2"].T  # [N, d]
                    qfn[l2] += (sub @ key) / denom * val
        m["method.query_layer_scores_attn"] = qattn
        m["method.query_ffn_neuron_scores"] = qfn
        return m


# ----------------------------------------------------------------------------------------------------------
# cross-check against the existing baevski-tiny fixture

def load_ckpt(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def cross_check_tiny():
    ck = load_ckpt(os.path.join(TINY, "model.pt"))
    model = NpModel(ck["model"], ck["args"])
    ref = json.load(open(os.path.join(TINY, "reference.json")))
    worst = {}
    ok = True
    for case in ref["cases"]:
        st = read_safetensors(os.path.join(TINY, case["file"]))
        fw = model.forward(case["input_ids"])
        mine = dict(fw)
        mine.update(model.method(fw, case["target"]))
        for name, want in st.items():
            if name not in mine:
                print("  (not computed here: %s)" % name)
                continue
            got = mine[name]
            if want.dtype.kind in "iu":
                err = 0.0 if np.array_equal(got, want) else float("inf")
            else:
                err = float(np.abs(got - want.astype(np.float64)).max()) if want.size else 0.0
                if name == "method.decomposition_max_abs_err":
                    err = 0.0 if got[0] < 1e-12 else err
            worst[name] = max(worst.get(name, 0.0), err)
        lp = mine["forward.logprobs"][-1, case["target"]]
        if abs(lp - case["target_logprob"]) > 1e-9:
            print("  target_logprob mismatch %s: %r vs %r" % (case["file"], lp, case["target_logprob"]))
            ok = False
    print("cross-check vs baevski-tiny reference_case*.safetensors (max abs err over %d cases):" % len(ref["cases"]))
    for name in sorted(worst):
        print("  %-45s %.3g" % (name, worst[name]))
    for name in ("forward.logprobs", "forward.final"):
        if worst[name] > 1e-5:
            ok = False
    tol_bad = [n for n, e in worst.items() if e > 1e-4]
    if tol_bad:
        print("  tensors above 1e-4:", tol_bad)
    print("cross-check %s: forward.logprobs %.3g, forward.final %.3g (limit 1e-5)"
          % ("OK" if ok else "FAILED", worst["forward.logprobs"], worst["forward.final"]))
    return ok, worst


# ----------------------------------------------------------------------------------------------------------
# checkpoint building

def metadata_for(keys):
    """OrderedDict._metadata as nn.Module.state_dict() writes it: one entry per module prefix."""
    md = collections.OrderedDict()
    md[""] = {"version": 1}
    for k in keys:
        parts = k.split(".")[:-1]
        for i in range(1, len(parts) + 1):
            p = ".".join(parts[:i])
            if p not in md:
                md[p] = {"version": 1}
    return md


def make_state(items):
    sd = collections.OrderedDict(items)
    sd._metadata = metadata_for(sd.keys())
    return sd


def to_half_shared(sd):
    """Every floating tensor -> half; tensors that shared a storage keep sharing one."""
    seen = {}
    out = []
    for k, v in sd.items():
        if v.is_floating_point():
            key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape), tuple(v.stride()))
            if key not in seen:
                seen[key] = v.detach().clone().half()
            out.append((k, seen[key]))
        else:
            out.append((k, v))
    return make_state(out)


def check_sharing(sd, groups):
    for g in groups:
        ptrs = {sd[k].untyped_storage().data_ptr() for k in g}
        assert len(ptrs) == 1, "not shared: %s" % (g,)


def tied_groups(B):
    g = [["decoder.embed_tokens.embeddings.0.0.weight", "decoder.adaptive_softmax.head.word_proj.weight"]]
    for b in range(1, B):
        g.append(["decoder.embed_tokens.embeddings.%d.0.weight" % b, "decoder.adaptive_softmax.tail.%d.2.weight" % (b - 1)])
        g.append(["decoder.embed_tokens.embeddings.%d.1.weight" % b, "decoder.adaptive_softmax.tail.%d.0.weight" % (b - 1)])
    return g


def save(state, path, legacy):
    if legacy:
        torch.save(state, path, _use_new_zipfile_serialization=False)
        with open(path, "rb") as f:
            assert f.read(14) == bytes.fromhex("80028a0a6cfc9c46f9206aa85019")
    else:
        torch.save(state, path)
        with open(path, "rb") as f:
            assert f.read(4) == b"PK\x03\x04"


def ckpt_container(args, model_sd, template=None):
    st = {"args": args, "model": model_sd}
    if template is not None:
        st["optimizer_history"] = copy.deepcopy(template["optimizer_history"])
        st["extra_state"] = copy.deepcopy(template["extra_state"])
    else:
        st["optimizer_history"] = [{"criterion_name": "AdaptiveLoss", "optimizer_name": "FairseqNAG",
                                    "lr_scheduler_state": {"best": 3.5}, "num_updates": 1000}]
        st["extra_state"] = {"train_iterator": {"epoch": 2, "iterations_in_epoch": 0, "shuffle": True},
                             "val_loss": 3.5}
    st["last_optimizer_state"] = None
    return st


# ----------------------------------------------------------------------------------------------------------
# cases and outputs

def pick_target(lp_last, model, band):
    lo = model.lo[band]
    hi = lo + model.sizes[band]
    t = int(lo + np.argmax(lp_last[lo:hi]))
    is_argmax = bool(t == int(np.argmax(lp_last)))
    return t, is_argmax


def write_variant(name, ckpt_path_rel, model, words, case_specs, config, checkpoint_info, extra_notes=None):
    outdir = os.path.join(OUTROOT, name)
    cases = []
    for i, (ids, band) in enumerate(case_specs):
        fw = model.forward(ids)
        target, is_argmax = pick_target(fw["forward.logprobs"][-1], model, band)
        tensors = dict(fw)
        meth = model.method(fw, target)
        tensors.update(meth)
        fname = "reference_case%d.safetensors" % i
        write_safetensors(os.path.join(outdir, fname), tensors)
        lp = fw["forward.logprobs"][-1]
        assert abs(np.exp(lp).sum() - 1) < 1e-12
        cases.append({
            "file": fname,
            "input_ids": [int(x) for x in ids],
            "target": target,
            "target_is_argmax": is_argmax,
            "target_rule": "argmax" if is_argmax else "argmax within band %d" % band,
            "target_band": band,
            "target_word": words[target],
            "target_logprob": float(lp[target]),
            "decomposition_max_abs_err": float(meth["method.decomposition_max_abs_err"][0]),
        })
    ref = {
        "model": name,
        "kind": "fairseq-transformer-lm (transformer_lm_wiki103 / Baevski & Auli 2019)",
        "config": config,
        "checkpoint": checkpoint_info,
        "generator": "tools/make_fairseq_variants.py: reference = independent float64 numpy forward of the "
                     "weights read back from %s (after rounding to the saved dtype); stored as float32" % ckpt_path_rel,
        "cases": cases,
    }
    if extra_notes:
        ref["notes"] = extra_notes
    with open(os.path.join(outdir, "reference.json"), "w") as f:
        json.dump(ref, f, indent=1)
        f.write("\n")
    return ref


def read_words(dict_path):
    words = ["<s>", "<pad>", "</s>", "<unk>"]
    for line in open(dict_path, encoding="utf-8"):
        line = line.rstrip("\n")
        if line.endswith(" #fairseq:overwrite"):
            line = line[: -len(" #fairseq:overwrite")]
        words.append(line.rsplit(" ", 1)[0])
    return words


def base_config(model, args, factor):
    return {
        "vocab_size": model.V,
        "decoder_embed_dim": model.d,
        "decoder_layers": model.L,
        "decoder_attention_heads": model.H,
        "decoder_ffn_embed_dim": model.N,
        "adaptive_cutoff": [int(x) for x in np.cumsum(model.sizes)],
        "adaptive_factor": factor,
        "band_dims": [e.shape[1] for e in model.E],
        "tie_adaptive_weights": True,
        "tie_adaptive_proj": True,
        "final_norm": model.final_norm,
        "activation_fn": "relu",
        "positions": "sinusoidal, position index = 2 + t",
        "embed_scale": model.scale,
        "start_token": START,
        "padding_idx": PADDING_IDX,
    }


def copy_dict(dst_dir):
    with open(os.path.join(TINY, "dict.txt"), "rb") as f:
        data = f.read()
    with open(os.path.join(dst_dir, "dict.txt"), "wb") as f:
        f.write(data)


TINY_CASES = [([2, 17, 120, 5, 333, 44, 250], 2), ([2], 0)]
TINY_CASES_INPROJ = [([2, 56, 7, 299, 12, 3, 88], 1), ([2], 0)]


# ----------------------------------------------------------------------------------------------------------
# variants

def variant_fp16(tiny):
    name = "baevski-tiny-fp16"
    outdir = os.path.join(OUTROOT, name)
    os.makedirs(outdir, exist_ok=True)
    sd = to_half_shared(tiny["model"])
    check_sharing(sd, tied_groups(3))
    args = copy.deepcopy(tiny["args"])
    args.fp16 = True
    path = os.path.join(outdir, "model.pt")
    save(ckpt_container(args, sd, tiny), path, legacy=True)
    copy_dict(outdir)
    ck = load_ckpt(path)
    assert ck["model"]["decoder.layers.0.fc1.weight"].dtype == torch.float16
    assert ck["model"]["decoder.adaptive_softmax.version"].dtype == torch.int64
    model = NpModel(ck["model"], ck["args"])
    words = read_words(os.path.join(outdir, "dict.txt"))
    cfg = base_config(model, ck["args"], 4)
    info = {
        "file": "model.pt",
        "torch_format": "legacy (non-zip) torch.save, pickle protocol 2",
        "saved_dtype": "float16",
        "storage_classes": "torch.HalfStorage for every floating tensor (weights and the decoder.version / "
                           "_float_tensor buffers); torch.LongStorage for decoder.adaptive_softmax.version",
        "mha_layout": "q_proj/k_proj/v_proj",
        "args_style": "2020 (tie_adaptive_proj, no_decoder_final_norm), fp16=True",
        "decoder_version": 3,
    }
    notes = ("baevski-tiny's float32 weights rounded to float16 (what fairseq --fp16 saves); the reference is the "
             "float64 forward of the float16 values (not of the float32 originals), positions in float64.")
    return write_variant(name, "model.pt", model, words, TINY_CASES, cfg, info, notes)


def variant_inproj(tiny):
    name = "baevski-tiny-inproj"
    outdir = os.path.join(OUTROOT, name)
    os.makedirs(outdir, exist_ok=True)
    src = tiny["model"]
    items = []
    nl = 3
    for k, v in src.items():
        if ".self_attn.q_proj." in k or ".self_attn.k_proj." in k or ".self_attn.v_proj." in k:
            continue
        m = None
        for i in range(nl):
            p = "decoder.layers.%d." % i
            if k == p + "self_attn.out_proj.weight":
                # module order of the 2019 MultiheadAttention: in_proj_weight, in_proj_bias, out_proj
                for mm in ("weight", "bias"):
                    items.append((p + "self_attn.in_proj_" + mm, torch.cat(
                        [src[p + "self_attn.q_proj." + mm], src[p + "self_attn.k_proj." + mm],
                         src[p + "self_attn.v_proj." + mm]], 0).contiguous()))
            for mm in ("weight", "bias"):
                if k == p + "self_attn_layer_norm." + mm:
                    m = p + "layer_norms.0." + mm
                if k == p + "final_layer_norm." + mm:
                    m = p + "layer_norms.2." + mm
        if k == "decoder.version":
            v = torch.tensor([2.0])  # fairseq 2018 - v0.6.2 TransformerDecoder registered version 2
        items.append((m or k, v))
    sd = make_state(items)
    check_sharing(sd, tied_groups(3))
    args = copy.deepcopy(tiny["args"])
    for a in ("tie_adaptive_proj", "no_decoder_final_norm", "no_scale_embedding", "decoder_layerdrop",
              "quant_noise_pq"):
        if hasattr(args, a):
            delattr(args, a)
    args.no_tie_adaptive_proj = False
    path = os.path.join(outdir, "model.pt")
    save(ckpt_container(args, sd, tiny), path, legacy=True)
    copy_dict(outdir)
    ck = load_ckpt(path)
    assert "decoder.layers.0.self_attn.in_proj_weight" in ck["model"]
    model = NpModel(ck["model"], ck["args"])
    words = read_words(os.path.join(outdir, "dict.txt"))
    cfg = base_config(model, ck["args"], 4)
    info = {
        "file": "model.pt",
        "torch_format": "legacy (non-zip) torch.save, pickle protocol 2",
        "saved_dtype": "float32",
        "mha_layout": "in_proj_weight [3d,d] / in_proj_bias [3d], rows [q; k; v]",
        "layer_norm_names": "legacy decoder.layers.{i}.layer_norms.0 (= self_attn_layer_norm) and "
                            "layer_norms.2 (= final_layer_norm, the pre-FFN norm); fairseq's decoder map is "
                            "0->self_attn_layer_norm, 1->encoder_attn_layer_norm, 2->final_layer_norm",
        "args_style": "2018/2019 (no_tie_adaptive_proj=False; no tie_adaptive_proj, no_decoder_final_norm, "
                      "no_scale_embedding, decoder_layerdrop, quant_noise_pq) -> tie_proj True, no final norm, "
                      "embeddings scaled",
        "decoder_version": 2,
    }
    notes = "Same weights and numbers as baevski-tiny, only the on-disk names/layout and args differ."
    return write_variant(name, "model.pt", model, words, TINY_CASES_INPROJ, cfg, info, notes)


def variant_final_norm(tiny):
    name = "baevski-tiny-final-norm"
    outdir = os.path.join(OUTROOT, name)
    os.makedirs(outdir, exist_ok=True)
    rng = np.random.default_rng(20261203)
    d = 32
    items = []
    for k, v in tiny["model"].items():
        if k == "decoder.adaptive_softmax.version":
            items.append(("decoder.layer_norm.weight",
                          torch.from_numpy((1.0 + 0.1 * rng.standard_normal(d)).astype(np.float32))))
            items.append(("decoder.layer_norm.bias",
                          torch.from_numpy((0.1 * rng.standard_normal(d)).astype(np.float32))))
        items.append((k, v))
    sd = make_state(items)
    check_sharing(sd, tied_groups(3))
    args = copy.deepcopy(tiny["args"])
    args.no_decoder_final_norm = False
    path = os.path.join(outdir, "model.pt")
    save(ckpt_container(args, sd, tiny), path, legacy=True)
    copy_dict(outdir)
    ck = load_ckpt(path)
    model = NpModel(ck["model"], ck["args"])
    assert model.final_norm
    words = read_words(os.path.join(outdir, "dict.txt"))
    cfg = base_config(model, ck["args"], 4)
    info = {
        "file": "model.pt",
        "torch_format": "legacy (non-zip) torch.save, pickle protocol 2",
        "saved_dtype": "float32",
        "mha_layout": "q_proj/k_proj/v_proj",
        "args_style": "2020 (tie_adaptive_proj, no_decoder_final_norm=False)",
        "final_norm_keys": "decoder.layer_norm.weight, decoder.layer_norm.bias (after the layers, before "
                           "decoder.adaptive_softmax.*)",
        "decoder_version": 3,
    }
    notes = ("forward: the adaptive softmax reads LayerNorm(final) (eps 1e-5, with weight and bias); "
             "forward.final is the residual BEFORE the final norm. method.*: hf-reference convention for a "
             "LayerNorm model: features(v) = g ⊙ (v − mean v) / σ with σ = method.final_scale = "
             "sqrt(var(final[last]) + 1e-5) frozen, g = decoder.layer_norm.weight, the final norm's bias NOT "
             "added; LP(v) = adaptive-softmax log-probs of features(v); increase(v|base) = LP(base+v)[w] − "
             "LP(base)[w]; *_vocab_logprobs = LP(vector alone).")
    return write_variant(name, "model.pt", model, words, TINY_CASES, cfg, info, notes)


SYLL = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "do", "gu", "be", "fi", "ho", "ja",
        "ly", "qu", "we", "xi"]


def synthetic_words(n, rng):
    words, seen = [], set()
    while len(words) < n:
        k = int(rng.integers(1, 4))
        w = "".join(SYLL[int(i)] for i in rng.integers(0, len(SYLL), size=k))
        if rng.random() < 0.15:
            w = w.capitalize()
        if w in seen:
            continue
        seen.add(w)
        words.append(w)
    return words


def variant_4band(emb_s=0.15, proj_s=0.6, cls_s=0.5):
    name = "baevski-4band"
    outdir = os.path.join(OUTROOT, name)
    os.makedirs(outdir, exist_ok=True)
    rng = np.random.default_rng(20261204)
    L, d, H, N = 2, 48, 6, 56   # FFN 56 (not 96): keeps model.pt under 200,000 bytes
    nwords = 800
    nmade = (-(nwords + 4)) % 8           # fairseq pads the dictionary to a multiple of 8
    V = nwords + 4 + nmade                 # 808
    cut = [60, 150, 400]
    factor = 2.0
    edges = [0] + cut + [V]
    dims = [int(d // factor ** b) for b in range(4)]
    assert dims == [48, 24, 12, 6]
    f32 = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    nrm = lambda *shape, s=1.0: rng.standard_normal(shape) * s

    words = synthetic_words(nwords, rng)
    counts = sorted((int(x) for x in rng.integers(5, 500000, size=nwords)), reverse=True)
    with open(os.path.join(outdir, "dict.txt"), "w", encoding="utf-8") as f:
        for w, c in zip(words, counts):
            f.write("%s %d\n" % (w, c))
        for i in range(nmade):
            f.write("madeupword%04d 0\n" % i)

    E = [f32(nrm(edges[b + 1] - edges[b], dims[b], s=emb_s)) for b in range(4)]
    P = [f32(nrm(d, dims[b], s=dims[b] ** -0.5 * proj_s)) for b in range(4)]
    items = [("decoder.version", torch.tensor([3.0])), ("decoder.embed_tokens._float_tensor", torch.tensor([0.0]))]
    for b in range(4):
        items.append(("decoder.embed_tokens.embeddings.%d.0.weight" % b, E[b]))
        items.append(("decoder.embed_tokens.embeddings.%d.1.weight" % b, P[b]))
    items.append(("decoder.embed_positions._float_tensor", torch.tensor([0.0])))
    for l in range(L):
        p = "decoder.layers.%d." % l
        for nm in ("k_proj", "v_proj", "q_proj", "out_proj"):
            items.append((p + "self_attn.%s.weight" % nm, f32(nrm(d, d, s=d ** -0.5))))
            items.append((p + "self_attn.%s.bias" % nm, f32(nrm(d, s=0.1))))
        items.append((p + "self_attn_layer_norm.weight", f32(1.0 + nrm(d, s=0.1))))
        items.append((p + "self_attn_layer_norm.bias", f32(nrm(d, s=0.1))))
        items.append((p + "fc1.weight", f32(nrm(N, d, s=d ** -0.5))))
        items.append((p + "fc1.bias", f32(nrm(N, s=0.2))))
        items.append((p + "fc2.weight", f32(nrm(d, N, s=N ** -0.5))))
        items.append((p + "fc2.bias", f32(nrm(d, s=0.1))))
        items.append((p + "final_layer_norm.weight", f32(1.0 + nrm(d, s=0.1))))
        items.append((p + "final_layer_norm.bias", f32(nrm(d, s=0.1))))
    items.append(("decoder.adaptive_softmax.version", torch.tensor([1], dtype=torch.int64)))
    items.append(("decoder.adaptive_softmax.head._float_tensor", torch.tensor([0.0])))
    items.append(("decoder.adaptive_softmax.head.word_proj.weight", E[0]))
    items.append(("decoder.adaptive_softmax.head.class_proj.weight", f32(nrm(3, d, s=cls_s))))
    for b in range(1, 4):
        items.append(("decoder.adaptive_softmax.tail.%d.0.weight" % (b - 1), P[b]))
        items.append(("decoder.adaptive_softmax.tail.%d.2.weight" % (b - 1), E[b]))
    sd = make_state(items)
    check_sharing(sd, tied_groups(4))

    args = argparse.Namespace(
        arch="transformer_lm_wiki103", task="language_modeling", criterion="adaptive_loss",
        data="data-bin/synthetic", sample_break_mode="none", tokens_per_sample=128, max_target_positions=128,
        add_bos_token=False, self_target=False, future_target=False, past_target=False, output_dictionary_size=-1,
        optimizer="nag", lr=[1.0], lr_scheduler="cosine", max_update=1000, warmup_updates=100, clip_norm=0.1,
        max_tokens=3072, update_freq=[1], seed=7, fp16=False, ddp_backend="no_c10d", save_dir="checkpoints/4band",
        decoder_embed_dim=d, decoder_input_dim=d, decoder_output_dim=d, decoder_ffn_embed_dim=N,
        decoder_layers=L, decoder_attention_heads=H, decoder_normalize_before=True, decoder_learned_pos=False,
        no_token_positional_embeddings=False, share_decoder_input_output_embed=False, character_embeddings=False,
        adaptive_input=True, adaptive_input_factor=factor, adaptive_input_cutoff=",".join(map(str, cut)),
        adaptive_softmax_cutoff=",".join(map(str, cut)), adaptive_softmax_factor=factor,
        adaptive_softmax_dropout=0.2, tie_adaptive_weights=True, activation_fn="relu", dropout=0.3,
        attention_dropout=0.1, activation_dropout=0.1, relu_dropout=0.0, tie_adaptive_proj=True,
        no_decoder_final_norm=True, no_scale_embedding=False, decoder_layerdrop=0, quant_noise_pq=0)
    path = os.path.join(outdir, "model.pt")
    save(ckpt_container(args, sd), path, legacy=False)
    ck = load_ckpt(path)
    model = NpModel(ck["model"], ck["args"])
    assert model.V == V and model.B == 4 and model.Dh == 8
    allwords = read_words(os.path.join(outdir, "dict.txt"))
    assert len(allwords) == V
    # input ids chosen (seeded search) so that the band-3 / band-2 cluster has real mass at the last position
    cases = [([2, 54, 180, 557, 746, 67, 402], 3), ([2], 0), ([2, 542, 571, 591, 26, 142, 370], 2)]
    cfg = base_config(model, ck["args"], factor)
    info = {
        "file": "model.pt",
        "torch_format": "zip (torch.save default, torch %s), record prefix 'model/'" % torch.__version__,
        "saved_dtype": "float32",
        "mha_layout": "q_proj/k_proj/v_proj",
        "args_style": "2020 (tie_adaptive_proj, no_decoder_final_norm); adaptive_*_factor 2.0 (float)",
        "decoder_version": 3,
    }
    notes = ("New random model (not derived from baevski-tiny): embeddings N(0,%g^2), band projections "
             "N(0,(%g/sqrt(d_b))^2), class_proj N(0,%g^2), linear weights N(0,1/fan_in), biases N(0,0.1^2) "
             "(fc1 0.2^2), LN weights 1+N(0,0.1^2). dict.txt: %d synthetic unique words + %d madeupword "
             "entries (V = %d)." % (emb_s, proj_s, cls_s, nwords, nmade, V))
    return write_variant(name, "model.pt", model, allwords, cases, cfg, info, notes)


# ----------------------------------------------------------------------------------------------------------
# optional: cross-check against fairseq's own module classes (needs a fairseq source tree + omegaconf)

def fairseq_module_check(src, dirs):
    """Rebuild each model from fairseq's AdaptiveInput / AdaptiveSoftmax / SinusoidalPositionalEmbedding /
    MultiheadAttention (incl. its in_proj upgrade) in float64, strict-load model.pt, compare with the stored
    references.  src = directory that contains the `fairseq` package (e.g. a git checkout)."""
    import importlib
    import types
    import torch.nn as nn

    def stubpkg(name, path):
        mod = types.ModuleType(name)
        mod.__path__ = [path]
        sys.modules[name] = mod

    root = os.path.join(os.path.abspath(src), "fairseq")
    stubpkg("fairseq", root)  # skip fairseq/__init__.py (hydra, all tasks/models)
    stubpkg("fairseq.modules", os.path.join(root, "modules"))
    stubpkg("fairseq.models", os.path.join(root, "models"))
    fd = importlib.import_module("fairseq.models.fairseq_decoder")
    sys.modules["fairseq.models"].FairseqDecoder = fd.FairseqDecoder
    AdaptiveSoftmax = importlib.import_module("fairseq.modules.adaptive_softmax").AdaptiveSoftmax
    AdaptiveInput = importlib.import_module("fairseq.modules.adaptive_input").AdaptiveInput
    Sinusoidal = importlib.import_module("fairseq.modules.sinusoidal_positional_embedding").SinusoidalPositionalEmbedding
    MultiheadAttention = importlib.import_module("fairseq.modules.multihead_attention").MultiheadAttention

    class Layer(nn.Module):  # TransformerDecoderLayerBase, pre-norm, no encoder attention
        def __init__(s, d, H, N):
            super().__init__()
            s.self_attn = MultiheadAttention(d, H, dropout=0.0, self_attention=True)
            s.self_attn_layer_norm = nn.LayerNorm(d)
            s.fc1 = nn.Linear(d, N)
            s.fc2 = nn.Linear(N, d)
            s.final_layer_norm = nn.LayerNorm(d)

        def forward(s, x, mask):  # x [T, B, d]
            h = s.self_attn_layer_norm(x)
            a, _ = s.self_attn(query=h, key=h, value=h, attn_mask=mask, need_weights=False)
            x = x + a
            return x + s.fc2(torch.relu(s.fc1(s.final_layer_norm(x))))

    class Decoder(nn.Module):
        def __init__(s, a, V, final_norm, tie_proj):
            super().__init__()
            d = a.decoder_embed_dim
            s.register_buffer("version", torch.Tensor([3]))
            s.embed_tokens = AdaptiveInput(V, PADDING_IDX, d, a.adaptive_input_factor, d,
                                           [int(x) for x in a.adaptive_input_cutoff.split(",")])
            s.embed_positions = Sinusoidal(d, PADDING_IDX, init_size=a.max_target_positions + PADDING_IDX + 1)
            s.layers = nn.ModuleList([Layer(d, a.decoder_attention_heads, a.decoder_ffn_embed_dim)
                                      for _ in range(a.decoder_layers)])
            s.layer_norm = nn.LayerNorm(d) if final_norm else None
            s.adaptive_softmax = AdaptiveSoftmax(V, d, [int(x) for x in a.adaptive_softmax_cutoff.split(",")], 0.2,
                                                 factor=a.adaptive_softmax_factor, adaptive_inputs=s.embed_tokens,
                                                 tie_proj=tie_proj)
            s.scale = math.sqrt(d)

        def forward(s, ids):
            x = (s.scale * s.embed_tokens(ids) + s.embed_positions(ids)).transpose(0, 1)
            T = x.shape[0]
            mask = torch.triu(torch.full((T, T), float("-inf"), dtype=x.dtype), 1)
            for layer in s.layers:
                x = layer(x, mask)
            fin = x.transpose(0, 1)
            feats = s.layer_norm(fin) if s.layer_norm is not None else fin
            return fin, s.adaptive_softmax.get_log_prob(feats, None)

    class Top(nn.Module):
        def __init__(s, *a):
            super().__init__()
            s.decoder = Decoder(*a)

    worst = {}
    for dirname in dirs:
        ck = load_ckpt(os.path.join(dirname, "model.pt"))
        a = ck["args"]
        sd = dict(ck["model"])
        r = resolve_args(a)
        V, b = 0, 0
        while "decoder.embed_tokens.embeddings.%d.0.weight" % b in sd:
            V += sd["decoder.embed_tokens.embeddings.%d.0.weight" % b].shape[0]
            b += 1
        m = Top(a, V, r["final_norm"], r["tie_proj"])
        for i in range(a.decoder_layers):  # fairseq TransformerDecoder.upgrade_state_dict_named layer-norm map
            for old, new in (("0", "self_attn_layer_norm"), ("1", "encoder_attn_layer_norm"), ("2", "final_layer_norm")):
                for w in ("weight", "bias"):
                    k = "decoder.layers.%d.layer_norms.%s.%s" % (i, old, w)
                    if k in sd:
                        sd["decoder.layers.%d.%s.%s" % (i, new, w)] = sd.pop(k)
            m.decoder.layers[i].self_attn.upgrade_state_dict_named(sd, "decoder.layers.%d.self_attn" % i)
        m.decoder.adaptive_softmax.upgrade_state_dict_named(sd, "decoder.adaptive_softmax")
        sd = {k: v.double() if v.is_floating_point() else v for k, v in sd.items()}
        m.double()
        m.load_state_dict(sd, strict=True)
        m.eval()
        ref = json.load(open(os.path.join(dirname, "reference.json")))
        e = [0.0, 0.0, 0.0]
        with torch.no_grad():
            for c in ref["cases"]:
                st = read_safetensors(os.path.join(dirname, c["file"]))
                fin, lp = m.decoder(torch.tensor([c["input_ids"]]))
                e[0] = max(e[0], float(np.abs(lp[0].numpy() - st["forward.logprobs"]).max()))
                e[1] = max(e[1], float(np.abs(fin[0].numpy() - st["forward.final"]).max()))
                e[2] = max(e[2], abs(float(lp[0, -1, c["target"]]) - c["target_logprob"]))
        name = os.path.basename(os.path.normpath(dirname))
        worst[name] = e
        print("fairseq modules (float64, strict load) vs %-24s logprobs %.3g  final %.3g  "
              "target_logprob (float64 vs float64) %.3g" % (name, e[0], e[1], e[2]))
    return worst


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check-only", action="store_true")
    ap.add_argument("--skip-final-norm", action="store_true")
    ap.add_argument("--fairseq-src", metavar="DIR",
                    help="also check every variant (and baevski-tiny) against fairseq's module classes; DIR "
                         "holds the fairseq package (a fairseq git checkout); needs omegaconf")
    a = ap.parse_args()
    ok, _ = cross_check_tiny()
    if not ok:
        sys.exit("cross-check against baevski-tiny failed")
    if a.check_only:
        if a.fairseq_src:
            fairseq_module_check(a.fairseq_src, [TINY])
        return
    tiny = load_ckpt(os.path.join(TINY, "model.pt"))
    refs = [variant_fp16(tiny), variant_inproj(tiny), variant_4band()]
    if not a.skip_final_norm:
        refs.append(variant_final_norm(tiny))
    for r in refs:
        print("%s: V=%d d=%d L=%d H=%d bands=%s dims=%s final_norm=%s" % (
            r["model"], r["config"]["vocab_size"], r["config"]["decoder_embed_dim"], r["config"]["decoder_layers"],
            r["config"]["decoder_attention_heads"], r["config"]["adaptive_cutoff"], r["config"]["band_dims"],
            r["config"]["final_norm"]))
        for c in r["cases"]:
            print("   %s T=%d target=%d (%r, band %d, argmax=%s) logprob=%.6f" % (
                c["file"], len(c["input_ids"]), c["target"], c["target_word"], c["target_band"],
                c["target_is_argmax"], c["target_logprob"]))
    for r in refs:
        d = os.path.join(OUTROOT, r["model"])
        for fn in sorted(os.listdir(d)):
            sz = os.path.getsize(os.path.join(d, fn))
            assert sz < 200000, (fn, sz)
    if a.fairseq_src:
        fairseq_module_check(a.fairseq_src, [TINY] + [os.path.join(OUTROOT, r["model"]) for r in refs])


if __name__ == "__main__":
    main()
