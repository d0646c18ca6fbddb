#!/usr/bin/env python3
"""Generate Hugging Face reference fixtures for model families beyond those of shared/fixtures
(tests/data/hf-reference/{gpt2-tiny,llama-tiny,llama-gqa-tiny-bf16}), in exactly their layout and with
exactly their tensor definitions (shared/fixtures/README.md, "hf-reference/"). Run by hand, not in CI; its
outputs are committed.

Environment (the project venv has torch but not transformers; a throw-away venv borrows its torch):

    python3 -m venv /tmp/fxvenv
    /tmp/fxvenv/bin/pip install numpy==2.1.3 typing_extensions filelock sympy networkx jinja2 fsspec
    echo /work/main/.venv/lib/python3.11/site-packages > /tmp/fxvenv/lib/python3.11/site-packages/main.pth
    /tmp/fxvenv/bin/pip install transformers==5.17.0 safetensors     # the version that made the shared fixtures
    /tmp/fxvenv/bin/python tools/make_hf_references.py                # cross-checks, then writes every family
    /tmp/fxvenv/bin/python tools/make_hf_references.py --check-only   # only the cross-checks

(torch 2.11.0+cu130, numpy 2.1.3, safetensors 0.8.0, transformers 5.17.0 when the committed files were made;
everything runs on the CPU.)

Output: tests/data/hf-reference/<name>/{config.json, config.hf-saved.json, generation_config.json,
model.safetensors, reference.json, reference_case{0,1}.safetensors} for
  qwen2-tiny    transformers Qwen2 (q/k/v biases, no o_proj bias), GQA 4/2, untied lm_head, no sliding window
  mistral-tiny  transformers Mistral, GQA 4/2, untied lm_head, sliding_window 4 (eager attention); case 0 has
                T = 9 > window (the window masks keys), case 1 T = 3
Both: 2 layers, hidden 64, head_dim 16, intermediate 160, vocab 512, weights stored as bfloat16 (fp32 would
make model.safetensors ~600 KB; the 300 KiB budget per file needs 16-bit storage (qwen2-tiny: 307,024 bytes); --weights-dtype float32
writes fp32 instead). The forward reference is HF's float32 forward of the model *as loaded from the written
directory* (bf16 values upcast exactly to fp32), so it is what a float32 loader of these files must reproduce.

forward.* tensors: HF float32 forward with hooks (eager attention, use_cache False):
  in.{l} input of input_layernorm; attn.{l} self_attn output; mid.{l} input of post_attention_layernorm;
  ffn.{l} mlp output; coef.{l} input of down_proj; heads.{l} input of o_proj; v.{l} v_proj output (incl. bias);
  attn_probs self_attn's returned weights; final input of model.norm; logits; rotary_inv_freq
  model.model.rotary_emb.inv_freq.
method.* tensors: the independent float64 numpy computation below (method_tensors) from those float32
tensors and the stored weights, with shared/fixtures/README.md's definitions. Before anything is written it
is run on the existing llama-tiny and llama-gqa-tiny-bf16 references (their stored forward.* tensors) and must
reproduce every stored method.* tensor to <= 2e-6 (top-k indices exactly); the HF capture itself is checked
by re-running HF on llama-tiny's model directory against its stored forward.* tensors.
"""

import argparse
import json
import math
import os
import shutil
import sys
import tempfile

import numpy as np
import torch
from safetensors.torch import load_file, save_file

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OUTROOT = os.path.join(ROOT, "tests", "data", "hf-reference")
TOL = 2e-6
GENERATOR = "HF transformers random init (perturbed), reference computed in float32 (forward) / float64 (method)"


# ----------------------------------------------------------------------------------------------------------
# Method: float64 numpy, Llama-family (RMSNorm, gate/up/down FFN, o_proj without bias) models.

def load_weights64(model_dir):
    return {k: v.to(torch.float64).numpy() for k, v in load_file(os.path.join(model_dir, "model.safetensors")).items()}


def method_tensors(cfg, W, fw, target):
    """cfg: config dict (classic keys); W: float64 weights by HF name; fw: forward.* as float64 arrays."""
    L = cfg["num_hidden_layers"]
    H = cfg["num_attention_heads"]
    KV = cfg.get("num_key_value_heads") or H
    d = cfg["hidden_size"]
    Dh = cfg.get("head_dim") or d // H
    N = cfg["intermediate_size"]
    eps = cfg["rms_norm_eps"]
    rep = H // KV
    T = fw["forward.final"].shape[0]
    last = T - 1
    w = target
    E = W["lm_head.weight"] if "lm_head.weight" in W else W["model.embed_tokens.weight"]
    g = W["model.norm.weight"]
    final = fw["forward.final"][last]
    sigma = math.sqrt(np.mean(final * final) + eps)

    def bs(v):  # [..., d] -> [..., V]
        return (v * (g / sigma)) @ E.T

    def logsm(z):
        m = z.max(-1, keepdims=True)
        return z - (m + np.log(np.exp(z - m).sum(-1, keepdims=True)))

    def increase(base, vs, prob=False):
        zb = bs(base)
        zv = bs(vs)
        if prob:
            return np.exp(logsm(zb + zv)[..., w]) - np.exp(logsm(zb)[w])
        return logsm(zb + zv)[..., w] - logsm(zb)[w]

    def lay(l, name):
        return W[f"model.layers.{l}.{name}"]

    m = {"method.final_scale": np.array([sigma])}
    la, lf, lap, lfp = [], [], [], []
    head = np.zeros((L, H))
    head_pos = np.zeros((L, H, T))
    ffn_n = np.zeros((L, N))
    attn_n = np.zeros((L, T, H, Dh))
    for l in range(L):
        x_in = fw[f"forward.in.{l}"][last]
        x_mid = fw[f"forward.mid.{l}"][last]
        la.append(increase(x_in, fw[f"forward.attn.{l}"][last]))
        lap.append(increase(x_in, fw[f"forward.attn.{l}"][last], prob=True))
        lf.append(increase(x_mid, fw[f"forward.ffn.{l}"][last]))
        lfp.append(increase(x_mid, fw[f"forward.ffn.{l}"][last], prob=True))
        Wo = lay(l, "self_attn.o_proj.weight")  # [d, H*Dh]
        heads = fw[f"forward.heads.{l}"][last].reshape(H, Dh)
        alpha = fw["forward.attn_probs"][l, :, last, :]  # [H, T]
        val = fw[f"forward.v.{l}"].reshape(T, KV, Dh)
        for h in range(H):
            Woh = Wo[:, h * Dh:(h + 1) * Dh]  # [d, Dh]
            head[l, h] = increase(x_in, heads[h] @ Woh.T)
            sub = alpha[h][:, None, None] * val[:, h // rep, :][:, :, None] * Woh.T[None, :, :]  # [T, Dh, d]
            attn_n[l, :, h, :] = increase(x_in, sub)
            head_pos[l, h] = increase(x_in, sub.sum(1))
        Wd = lay(l, "mlp.down_proj.weight")  # [d, N]
        ffn_n[l] = increase(x_mid, fw[f"forward.coef.{l}"][last][:, None] * Wd.T)
    m["method.layer_attn_logprob_increase"] = np.array(la)
    m["method.layer_ffn_logprob_increase"] = np.array(lf)
    m["method.layer_attn_prob_increase"] = np.array(lap)
    m["method.layer_ffn_prob_increase"] = np.array(lfp)
    m["method.head_logprob_increase"] = head
    m["method.head_position_logprob_increase"] = head_pos
    m["method.ffn_neuron_logprob_increase"] = ffn_n
    m["method.attn_neuron_logprob_increase"] = attn_n

    top_ffn = np.argsort(-ffn_n.reshape(-1), kind="stable")[:10]
    top_attn = np.argsort(-attn_n.reshape(-1), kind="stable")[:10]
    m["method.top_ffn_neurons"] = top_ffn.astype(np.int64)
    m["method.top_attn_neurons"] = top_attn.astype(np.int64)

    # Components at position s: [embedding, attn_0, ffn_0, ..., attn_{L-1}, ffn_{L-1}] (raw).
    def components(s):
        c = [fw["forward.in.0"][s]]
        for l in range(L):
            c += [fw[f"forward.attn.{l}"][s], fw[f"forward.ffn.{l}"][s]]
        return np.array(c)

    comp_last = components(last)
    for kname, wname in (("Kgate", "mlp.gate_proj.weight"), ("Kup", "mlp.up_proj.weight")):
        q = np.zeros(1 + 2 * L)
        for flat in top_ffn:
            l, n = divmod(int(flat), N)
            key = lay(l, wname)[n] * lay(l, "post_attention_layernorm.weight")
            ip = comp_last[:2 * l + 2] @ key  # embedding .. attn_l
            q[:2 * l + 2] += ip / ip.sum() * ffn_n[l, n]
        m[f"method.query_layer_scores_ffn_{kname}"] = q

    def attn_key(l, h, j):
        return lay(l, "self_attn.v_proj.weight")[(h // rep) * Dh + j] * lay(l, "input_layernorm.weight")

    q = np.zeros(1 + 2 * L)
    for flat in top_attn:
        l, rest = divmod(int(flat), T * H * Dh)
        s, rest = divmod(rest, H * Dh)
        h, j = divmod(rest, Dh)
        ip = components(s)[:2 * l + 1] @ attn_key(l, h, j)  # embedding .. ffn_{l-1}
        q[:2 * l + 1] += ip / ip.sum() * attn_n[l, s, h, j]
    m["method.query_layer_scores_attn"] = q

    qf = np.zeros((L, N))
    for flat in top_attn[:5]:
        l, rest = divmod(int(flat), T * H * Dh)
        s, rest = divmod(rest, H * Dh)
        h, j = divmod(rest, Dh)
        key = attn_key(l, h, j)
        denom = fw[f"forward.in.{l}"][s] @ key
        for lp in range(l):
            Wd = lay(lp, "mlp.down_proj.weight")
            qf[lp] += (fw[f"forward.coef.{lp}"][s] * (key @ Wd)) / denom * attn_n[l, s, h, j]
    m["method.query_ffn_neuron_scores"] = qf

    recon = fw["forward.in.0"][last] + sum(fw[f"forward.attn.{l}"][last] + fw[f"forward.ffn.{l}"][last]
                                          for l in range(L))
    m["method.decomposition_max_abs_err"] = np.array([np.abs(recon - final).max()])
    return m


def numpy_forward(cfg, W, ids):
    """Independent float64 forward (Llama/Qwen2/Mistral: RMSNorm, RoPE rotate-half, GQA, optional q/k/v biases,
    optional sliding window key j visible to query i iff i - window < j <= i) used to sanity-check HF's."""
    L, H, d = cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["hidden_size"]
    KV = cfg.get("num_key_value_heads") or H
    Dh = cfg.get("head_dim") or d // H
    eps, T = cfg["rms_norm_eps"], len(ids)
    win = cfg.get("sliding_window") if cfg.get("use_sliding_window", True) else None

    def rms(x, g):
        return g * x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps)

    def lin(x, name):
        y = x @ W[name + ".weight"].T
        return y + W[name + ".bias"] if name + ".bias" in W else y

    inv = 1.0 / cfg["rope_theta"] ** (np.arange(0, Dh, 2) / Dh)
    ang = np.arange(T)[:, None] * inv[None, :]
    cos, sin = np.cos(np.concatenate([ang, ang], 1)), np.sin(np.concatenate([ang, ang], 1))

    def rope(x):  # [T, n, Dh]
        rot = np.concatenate([-x[..., Dh // 2:], x[..., :Dh // 2]], -1)
        return x * cos[:, None] + rot * sin[:, None]

    i, j = np.arange(T)[:, None], np.arange(T)[None, :]
    visible = (j <= i) & ((j > i - win) if win else True)
    x = W["model.embed_tokens.weight"][ids]
    out = {}
    for l in range(L):
        p = f"model.layers.{l}."
        out[f"forward.in.{l}"] = x
        h = rms(x, W[p + "input_layernorm.weight"])
        q = rope(lin(h, p + "self_attn.q_proj").reshape(T, H, Dh))
        k = rope(lin(h, p + "self_attn.k_proj").reshape(T, KV, Dh))
        v = lin(h, p + "self_attn.v_proj")
        out[f"forward.v.{l}"] = v
        v = v.reshape(T, KV, Dh)
        k, vv = np.repeat(k, H // KV, 1), np.repeat(v, H // KV, 1)
        sc = np.einsum("ihd,jhd->hij", q, k) / math.sqrt(Dh)
        sc = np.where(visible[None], sc, -np.inf)
        a = np.exp(sc - sc.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        out.setdefault("probs", []).append(a)
        heads = np.einsum("hij,jhd->ihd", a, vv).reshape(T, H * Dh)
        out[f"forward.heads.{l}"] = heads
        attn = lin(heads, p + "self_attn.o_proj")
        out[f"forward.attn.{l}"] = attn
        x = x + attn
        out[f"forward.mid.{l}"] = x
        h = rms(x, W[p + "post_attention_layernorm.weight"])
        gt = lin(h, p + "mlp.gate_proj")
        coef = gt / (1 + np.exp(-gt)) * lin(h, p + "mlp.up_proj")
        out[f"forward.coef.{l}"] = coef
        ffn = lin(coef, p + "mlp.down_proj")
        out[f"forward.ffn.{l}"] = ffn
        x = x + ffn
    out["forward.attn_probs"] = np.stack(out.pop("probs"))
    out["forward.final"] = x
    out["forward.logits"] = rms(x, W["model.norm.weight"]) @ W["lm_head.weight"].T
    out["forward.rotary_inv_freq"] = inv
    return out


def compare_numpy_forward(cfg, W, ids, cap):
    ref = numpy_forward(cfg, W, ids)
    rel = 0.0
    for k, v in cap.items():
        a = v.numpy().astype(np.float64)
        rel = max(rel, float(np.abs(a - ref[k]).max()) / max(1.0, float(np.abs(ref[k]).max())))
    return rel


def read_reference(path):
    return {k: v.numpy() for k, v in load_file(path).items()}


def compare_method(name, mine, stored):
    """Max abs difference of every stored method.* tensor; top-k indices must be equal."""
    worst = 0.0
    keys = sorted(k for k in stored if k.startswith("method."))
    missing = [k for k in keys if k not in mine] + [k for k in mine if k not in stored]
    assert not missing, (name, missing)
    for k in keys:
        a, b = mine[k], stored[k]
        assert a.shape == b.shape, (name, k, a.shape, b.shape)
        if k.startswith("method.top_"):
            assert np.array_equal(a.astype(np.int64), b), (name, k, a, b)
            continue
        err = float(np.abs(a - b.astype(np.float64)).max())
        worst = max(worst, err)
        print(f"    {k:44s} max|diff| {err:.3e}  (max|ref| {np.abs(b).max():.3e})")
        assert err <= TOL, (name, k, err)
    return worst


def check_method_on_existing():
    print("Cross-check: method.* recomputed from the stored forward.* of existing Llama references")
    worst = 0.0
    for model in ("llama-tiny", "llama-gqa-tiny-bf16"):
        mdir = os.path.join(OUTROOT, model)
        if not os.path.isdir(mdir):
            continue
        ref = json.load(open(os.path.join(mdir, "reference.json")))
        W = load_weights64(mdir)
        for i, case in enumerate(ref["cases"]):
            stored = read_reference(os.path.join(mdir, case["file"]))
            fw = {k: v.astype(np.float64) for k, v in stored.items() if k.startswith("forward.")}
            print(f"  {model} case {i} (T={len(case['input_ids'])}, target {case['target']})")
            mine = method_tensors(ref["config"], W, fw, case["target"])
            err = compare_method(f"{model}/{i}", mine, stored)
            print(f"    -> worst {err:.3e}, top_ffn_neurons and top_attn_neurons identical")
            worst = max(worst, err)
    print(f"  method cross-check worst max|diff| {worst:.3e} (limit {TOL:g})")
    mdir = os.path.join(OUTROOT, "llama-tiny")
    ref = json.load(open(os.path.join(mdir, "reference.json")))
    W = load_weights64(mdir)
    for i, case in enumerate(ref["cases"]):
        stored = {k: torch.from_numpy(v) for k, v in read_reference(os.path.join(mdir, case["file"])).items()
                  if k.startswith("forward.")}
        rel = compare_numpy_forward(ref["config"], W, case["input_ids"], stored)
        print(f"  llama-tiny case {i}: stored HF forward.* vs the float64 numpy forward: max rel. diff {rel:.2e}")
        assert rel < 1e-5, rel
    return worst


# ----------------------------------------------------------------------------------------------------------
# HF forward with hooks.

def hf_forward(model, input_ids):
    import transformers  # noqa: F401
    cap = {}
    hooks = []
    inner = model.model
    L = len(inner.layers)

    def pre(key):
        def f(mod, args):
            cap[key] = args[0].detach()[0].clone()
        return f

    def post(key, index=None):
        def f(mod, args, out):
            o = out[index] if index is not None else out
            cap[key] = o.detach()[0].clone()
        return f

    for l, layer in enumerate(inner.layers):
        hooks.append(layer.input_layernorm.register_forward_pre_hook(pre(f"forward.in.{l}")))
        hooks.append(layer.self_attn.register_forward_hook(post(f"forward.attn.{l}", 0)))
        hooks.append(layer.self_attn.register_forward_hook(post(f"probs.{l}", 1)))
        hooks.append(layer.post_attention_layernorm.register_forward_pre_hook(pre(f"forward.mid.{l}")))
        hooks.append(layer.mlp.register_forward_hook(post(f"forward.ffn.{l}")))
        hooks.append(layer.mlp.down_proj.register_forward_pre_hook(pre(f"forward.coef.{l}")))
        hooks.append(layer.self_attn.o_proj.register_forward_pre_hook(pre(f"forward.heads.{l}")))
        hooks.append(layer.self_attn.v_proj.register_forward_hook(post(f"forward.v.{l}")))
    hooks.append(inner.norm.register_forward_pre_hook(pre("forward.final")))
    with torch.no_grad():
        out = model(torch.tensor([input_ids]), output_attentions=True, use_cache=False)
    for hk in hooks:
        hk.remove()
    probs = torch.stack([cap.pop(f"probs.{l}") for l in range(L)])
    if out.attentions is not None:
        assert torch.equal(probs, torch.stack([a[0] for a in out.attentions]))
    cap["forward.attn_probs"] = probs
    cap["forward.logits"] = out.logits.detach()[0].clone()
    cap["forward.rotary_inv_freq"] = inner.rotary_emb.inv_freq.detach().clone()
    for k, v in cap.items():
        assert v.dtype == torch.float32, (k, v.dtype)
    return {k: v.contiguous() for k, v in cap.items()}


def load_hf(model_dir):
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    assert model.config._attn_implementation == "eager"
    return model


def check_hf_capture_on_llama():
    mdir = os.path.join(OUTROOT, "llama-tiny")
    print("Cross-check: HF forward (hooks, this machine's CPU) of llama-tiny vs its stored forward.*")
    model = load_hf(mdir)
    ref = json.load(open(os.path.join(mdir, "reference.json")))
    worst = 0.0
    for i, case in enumerate(ref["cases"]):
        stored = read_reference(os.path.join(mdir, case["file"]))
        cap = hf_forward(model, case["input_ids"])
        fk = sorted(k for k in stored if k.startswith("forward."))
        assert sorted(cap) == fk, (sorted(cap), fk)
        errs = {k: float(np.abs(cap[k].numpy().astype(np.float64) - stored[k]).max()) for k in fk}
        kmax = max(errs, key=errs.get)
        print(f"  case {i}: every forward.* key present; max|diff| {errs[kmax]:.3e} ({kmax}), "
              f"logits {errs['forward.logits']:.3e}, attn_probs {errs['forward.attn_probs']:.3e}")
        worst = max(worst, errs[kmax])
        assert errs[kmax] < 1e-4
    return worst


# ----------------------------------------------------------------------------------------------------------
# New families.

FAMILIES = {
    "qwen2-tiny": {
        "model_type": "qwen2",
        "architecture": "Qwen2ForCausalLM",
        "seed": 20251202,
        "config": {
            "vocab_size": 512,
            "hidden_size": 64,
            "intermediate_size": 160,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 64,
            "rms_norm_eps": 1e-06,
            "rope_theta": 10000.0,
            "tie_word_embeddings": False,
            "hidden_act": "silu",
            "use_sliding_window": False,
        },
        "lengths": (7, 13),
    },
    "mistral-tiny": {
        "model_type": "mistral",
        "architecture": "MistralForCausalLM",
        "seed": 20251203,
        "config": {
            "vocab_size": 512,
            "hidden_size": 64,
            "intermediate_size": 160,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 64,
            "rms_norm_eps": 1e-05,
            "rope_theta": 10000.0,
            "tie_word_embeddings": False,
            "hidden_act": "silu",
            "sliding_window": 4,
        },
        "lengths": (9, 3),
    },
}
FIXED_TARGET = 7  # llama-tiny's case 1 target


def make_config(spec):
    from transformers import AutoConfig
    c = dict(spec["config"])
    theta = c.pop("rope_theta")
    c["rope_parameters"] = {"rope_type": "default", "rope_theta": theta}
    c["attn_implementation"] = "eager"
    c["bos_token_id"], c["eos_token_id"] = 1, 2
    return AutoConfig.for_model(spec["model_type"], **c)


def perturbed_state(model, seed, weights_dtype):
    """Random weights with the statistics of the shared fixtures: matrices N(0, 0.15), norm weights
    1 + N(0, 0.1), biases N(0, 0.1); rounded to the storage dtype so the fp32 model holds exactly the
    stored values."""
    rng = np.random.default_rng(seed)
    state = {}
    for name, p in sorted(model.state_dict().items()):
        if name.endswith("norm.weight"):
            a = 1.0 + 0.1 * rng.standard_normal(p.shape)
        elif name.endswith(".bias"):
            a = 0.1 * rng.standard_normal(p.shape)
        else:
            a = 0.15 * rng.standard_normal(p.shape)
        state[name] = torch.tensor(a, dtype=torch.float32).to(weights_dtype).contiguous()
    return state


def check_window(probs, window, T):
    """attn_probs[l,h,i,j] > 0 exactly when i - window < j <= i (HF masking_utils sliding_window_overlay
    kv_idx > q_idx - sliding_window, and causal kv_idx <= q_idx)."""
    i = np.arange(T)[:, None]
    j = np.arange(T)[None, :]
    visible = (j <= i) & (j > i - window) if window else (j <= i)
    p = probs.numpy()
    assert np.all(p[..., ~visible] == 0.0), "masked pair with nonzero probability"
    assert np.all(p[..., visible] > 0.0), "visible pair with zero probability"
    return int((~visible & (j <= i)).sum())


def generate(name, spec, weights_dtype, log):
    import transformers
    from transformers import AutoModelForCausalLM, GenerationConfig
    outdir = os.path.join(OUTROOT, name)
    config = make_config(spec)
    with torch.device("cpu"):
        skeleton = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = perturbed_state(skeleton, spec["seed"], weights_dtype)
    assert set(state) == set(skeleton.state_dict())

    tmp = tempfile.mkdtemp(prefix=name + "-")
    try:
        save_file(state, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        classic = dict(spec["config"])
        classic["architectures"] = [spec["architecture"]]
        classic["model_type"] = spec["model_type"]
        classic["torch_dtype"] = str(weights_dtype).replace("torch.", "")
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(classic, f, indent=1)
        config.dtype = weights_dtype  # what save_pretrained writes for a model stored in that dtype
        with open(os.path.join(tmp, "config.hf-saved.json"), "w") as f:
            json.dump(config.to_dict(), f, indent=1)
        GenerationConfig.from_model_config(config).save_pretrained(tmp)

        # Reference from the model exactly as HF loads the written directory (classic config.json).
        model = load_hf(tmp)
        assert type(model).__name__ == spec["architecture"], type(model).__name__
        loaded = {k: v for k, v in model.state_dict().items()}
        for k, v in state.items():
            assert torch.equal(loaded[k], v.to(torch.float32)), k
        assert model.config.sliding_window == spec["config"].get("sliding_window"), model.config.sliding_window
        W = {k: v.to(torch.float64).numpy() for k, v in state.items()}
        cfg_for_method = dict(spec["config"])

        rng = np.random.default_rng(spec["seed"] + 1)
        cases = []
        files = {}
        for i, T in enumerate(spec["lengths"]):
            ids = [int(x) for x in rng.integers(0, spec["config"]["vocab_size"], T)]
            cap = hf_forward(model, ids)
            logits_last = cap["forward.logits"][-1]
            argmax = int(logits_last.argmax())
            if i == 0:
                target, is_argmax = argmax, True
            else:
                target = FIXED_TARGET if FIXED_TARGET != argmax else FIXED_TARGET + 1
                is_argmax = False
            masked = check_window(cap["forward.attn_probs"], spec["config"].get("sliding_window"), T)
            fw = {k: v.numpy().astype(np.float64) for k, v in cap.items()}
            rel = compare_numpy_forward(cfg_for_method, W, ids, cap)
            log(f"    HF float32 forward vs independent float64 numpy forward: max rel. diff {rel:.2e}")
            assert rel < 1e-5, rel
            meth = method_tensors(cfg_for_method, W, fw, target)
            out = dict(cap)
            for k, v in meth.items():
                out[k] = torch.from_numpy(v.astype(np.int64) if k.startswith("method.top_") else
                                          v.astype(np.float32))
            fname = f"reference_case{i}.safetensors"
            files[fname] = out
            p = torch.softmax(logits_last.double(), -1)
            log(f"  {name} case {i}: T={T} ids={ids} target={target} (argmax={argmax}, p(target)={p[target]:.4f}, "
                f"max p={p.max():.4f}) window-masked causal pairs per head={masked} "
                f"decomposition err={meth['method.decomposition_max_abs_err'][0]:.3e}")
            cases.append({"file": fname, "input_ids": ids, "target": target, "target_is_argmax": is_argmax,
                          "decomposition_max_abs_err": float(meth["method.decomposition_max_abs_err"][0])})
            # Self-consistency of the method on the new data: the layer increases of the top neurons'
            # layers are finite and the ranking is unambiguous (no ties at the 10th/11th place).
            for key in ("method.ffn_neuron_logprob_increase", "method.attn_neuron_logprob_increase"):
                v = np.sort(meth[key].reshape(-1))[::-1]
                assert v[9] - v[10] > 1e-6, (name, i, key, v[8:12])
            if spec["config"].get("sliding_window") and T > spec["config"]["sliding_window"]:
                # What the window changes: the same model without it.
                model.config.sliding_window = None
                model.model.config.sliding_window = None
                full = hf_forward(model, ids)
                model.config.sliding_window = spec["config"]["sliding_window"]
                model.model.config.sliding_window = spec["config"]["sliding_window"]
                again = hf_forward(model, ids)
                assert torch.equal(again["forward.logits"], cap["forward.logits"])
                d = float((full["forward.logits"] - cap["forward.logits"]).abs().max())
                log(f"    without the window the logits would differ by up to {d:.3f} "
                    f"(full-causal argmax {int(full['forward.logits'][-1].argmax())})")
                assert d > 1e-2

        reference = {"model": name, "kind": spec["model_type"], "config": spec["config"],
                     "saved_dtype": str(weights_dtype), "generator": GENERATOR, "cases": cases}
        with open(os.path.join(tmp, "reference.json"), "w") as f:
            json.dump(reference, f, indent=1)
        for fname, tensors in files.items():
            save_file(tensors, os.path.join(tmp, fname))

        if os.path.isdir(outdir):
            shutil.rmtree(outdir)
        os.makedirs(outdir)
        for f in ("config.json", "config.hf-saved.json", "generation_config.json", "model.safetensors",
                  "reference.json") + tuple(files):
            shutil.copyfile(os.path.join(tmp, f), os.path.join(outdir, f))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    # Re-read what was written: keys identical to llama-tiny's (no forward.qkv.*), sizes, and that HF loads it.
    llama_keys = set(load_file(os.path.join(OUTROOT, "llama-tiny", "reference_case0.safetensors")))
    for fname in files:
        keys = set(load_file(os.path.join(outdir, fname)))
        Lnew, Lllama = spec["config"]["num_hidden_layers"], 3
        norm = lambda ks, n: {k for k in ks if not any(k.endswith(f".{l}") for l in range(n))}  # noqa: E731
        assert norm(keys, Lnew) == norm(llama_keys, Lllama), norm(keys, Lnew) ^ norm(llama_keys, Lllama)
    for f in sorted(os.listdir(outdir)):
        size = os.path.getsize(os.path.join(outdir, f))
        log(f"    {f:32s} {size:7d} bytes")
        if size >= 300 * 1024:  # only reachable with --weights-dtype float32
            assert weights_dtype == torch.float32, (f, size)
            log(f"    WARNING: {f} is over the 300 KiB budget")
    log(f"  transformers {transformers.__version__}, torch {torch.__version__}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check-only", action="store_true")
    ap.add_argument("--family", action="append", choices=sorted(FAMILIES))
    ap.add_argument("--weights-dtype", default="bfloat16", choices=["bfloat16", "float32"])
    args = ap.parse_args()
    torch.set_num_threads(1)  # reproducible CPU reductions
    import transformers
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, numpy {np.__version__}")
    check_method_on_existing()
    check_hf_capture_on_llama()
    if args.check_only:
        return
    dtype = getattr(torch, args.weights_dtype)
    for name in args.family or sorted(FAMILIES):
        print(f"Generating {name}")
        generate(name, FAMILIES[name], dtype, print)
        # The method cross-check on what was just written, read back from disk.
        mdir = os.path.join(OUTROOT, name)
        ref = json.load(open(os.path.join(mdir, "reference.json")))
        W = load_weights64(mdir)
        for i, case in enumerate(ref["cases"]):
            stored = read_reference(os.path.join(mdir, case["file"]))
            fw = {k: v.astype(np.float64) for k, v in stored.items() if k.startswith("forward.")}
            mine = method_tensors(ref["config"], W, fw, case["target"])
            worst = max(float(np.abs(mine[k] - stored[k].astype(np.float64)).max())
                        for k in stored if k.startswith("method."))
            print(f"  {name} case {i}: method.* from the written forward.* reproduces the written method.* "
                  f"to {worst:.3e}")


if __name__ == "__main__":
    sys.exit(main())
