#include "analysis/forward.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "analysis/device.h"

namespace factlens {
namespace {

// x·Wᵀ + b in x's dtype: weights kept in a narrower storage dtype (bfloat16 / float16 weights of a
// float32-compute CPU model) are widened one matrix at a time, never all at once.
at::Tensor Linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  const at::Tensor w = weight.to(x.scalar_type());
  return bias.defined() ? at::linear(x, w, bias.to(x.scalar_type())) : at::linear(x, w);
}

// The precision HF computes RMSNorm, attention softmax and rotary angles in: float32, or float64
// for a float64 (reference) model.
c10::ScalarType AtLeastFloat32(c10::ScalarType dtype) {
  return dtype == at::kDouble ? at::kDouble : at::kFloat;
}

at::Tensor Norm(const ModelConfig& config, const at::Tensor& x, const at::Tensor& weight,
                const at::Tensor& bias) {
  return ApplyNorm(config.architecture.norm, config.norm_eps, x, weight, bias);
}

at::Tensor Activate(Activation activation, const at::Tensor& x) {
  switch (activation) {
    case Activation::kGeluTanh:
      return at::gelu(x, "tanh");
    case Activation::kGeluExact:
      return at::gelu(x);
    case Activation::kQuickGelu:
      return x * at::sigmoid(1.702 * x);
    case Activation::kRelu:
      return at::relu(x);
    case Activation::kSilu:
      return at::silu(x);
  }
  return x;
}

// q·cos + rotate_half(q)·sin, x: [T, heads, Dh]; cos/sin: [T, Dh].
at::Tensor ApplyRotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const int64_t half = x.size(-1) / 2;
  const at::Tensor rotated = at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
  return x * cos.unsqueeze(1) + rotated * sin.unsqueeze(1);
}

// Everything about one pass that the layers share. The pass computes query rows for positions
// [first_row, T); the keys and values of earlier positions come from `past` (a trace of the same
// tokens that captured them), so a pass over rows [0, T) needs no past.
struct PassContext {
  const Model& model;
  const CaptureOptions& capture;
  int64_t first_row = 0;
  const ForwardTrace* past = nullptr;
  at::Tensor keep_index;                         // undefined = keep all rows
  at::Tensor causal_mask;                        // [rows, T], true where a query may not attend
  at::Tensor rope_cos, rope_sin;                 // [rows, Dh], rotary positions only
  std::vector<std::vector<Ablation>> ablations;  // per layer

  at::Tensor Keep(const at::Tensor& x) const {
    const at::Tensor rows = keep_index.defined() ? x.index_select(0, keep_index) : x;
    return rows.to(at::kFloat);
  }
  // Scales the row of query position `position` (every row when nullopt) of `x` along `dim` in
  // place; `x` must be owned.
  void ScaleRows(at::Tensor& x, int64_t dim, const std::optional<int64_t>& position,
                 double scale) const {
    (position ? x.select(dim, *position - first_row) : x).mul_(scale);
  }
  // This layer's keys or values [rows, KV, Dh] preceded by the past positions' ones.
  at::Tensor WithPast(const at::Tensor& current, at::Tensor LayerTrace::*captured,
                      int64_t layer) const {
    if (first_row == 0) return current;
    const at::Tensor earlier = (past->layers[layer].*captured).narrow(0, 0, first_row);
    return at::cat({earlier.to(current.scalar_type()), current}, 0);
  }
};

// Applies the ablations of `kind` in `ablations` to `x` (rows = query positions along `dim`),
// cloning it first so the forward pass never writes to tensors it did not create.
void ApplyAblations(const std::vector<Ablation>& ablations, AblationTarget kind, at::Tensor& x,
                    const std::function<void(const Ablation&, at::Tensor&)>& apply) {
  bool cloned = false;
  for (const Ablation& a : ablations) {
    if (a.target != kind) continue;
    if (!cloned) x = x.clone(), cloned = true;
    apply(a, x);
  }
}

// Self-attention of one layer on normed input h [T, d]; fills the trace's attention captures and
// returns the output after the output projection.
at::Tensor Attention(const PassContext& pass, int64_t layer_index, const at::Tensor& h,
                     LayerTrace& trace) {
  const ModelConfig& config = pass.model.config();
  const LayerWeights& w = pass.model.weights().layers[layer_index];
  const int64_t t = h.size(0), heads = config.n_heads, kv_heads = config.n_kv_heads,
                dh = config.head_dim;
  at::Tensor q = Linear(h, w.q_weight, w.q_bias).view({t, heads, dh});
  at::Tensor k = Linear(h, w.k_weight, w.k_bias).view({t, kv_heads, dh});
  at::Tensor v = Linear(h, w.v_weight, w.v_bias).view({t, kv_heads, dh});

  const Architecture& arch = config.architecture;
  if (arch.positions == PositionKind::kRotary) {
    q = ApplyRotary(q, pass.rope_cos, pass.rope_sin);
    k = ApplyRotary(k, pass.rope_cos, pass.rope_sin);
  }
  k = pass.WithPast(k, &LayerTrace::keys, layer_index);
  v = pass.WithPast(v, &LayerTrace::values, layer_index);
  if (pass.capture.keys) trace.keys = k.to(at::kFloat);
  if (pass.capture.values) trace.values = v.to(at::kFloat);
  double scale = 1.0;
  if (arch.scale_attention) scale /= std::sqrt(static_cast<double>(dh));
  if (arch.scale_attention_by_inverse_layer) scale /= static_cast<double>(layer_index + 1);
  // Grouped-query attention: query head i reads key/value head i / (H / KV).
  const int64_t group = heads / kv_heads;
  const at::Tensor k_heads = k.repeat_interleave(group, /*dim=*/1).permute({1, 2, 0});  // [H,Dh,T]
  const at::Tensor v_heads = v.repeat_interleave(group, /*dim=*/1).transpose(0, 1);     // [H,T,Dh]
  at::Tensor scores = at::matmul(q.transpose(0, 1), k_heads).to(AtLeastFloat32(q.scalar_type())) *
                      scale;  // [H, rows, T]
  scores = scores.masked_fill(pass.causal_mask, -std::numeric_limits<float>::infinity());
  at::Tensor probs = at::softmax(scores, -1);
  const std::vector<Ablation>& ablations = pass.ablations[layer_index];
  ApplyAblations(ablations, AblationTarget::kHeadPosition, probs,
                 [&](const Ablation& a, at::Tensor& p) {
                   at::Tensor column = p.select(0, a.head).select(1, a.source_position);  // [rows]
                   pass.ScaleRows(column, 0, a.position, a.scale);
                 });
  if (pass.capture.attention_probs) {
    trace.attention_probs =
        (pass.keep_index.defined() ? probs.index_select(1, pass.keep_index) : probs).to(at::kFloat);
  }
  at::Tensor head_outputs = at::matmul(probs.to(v.scalar_type()), v_heads).transpose(0, 1);
  ApplyAblations(ablations, AblationTarget::kAttentionNeuron, head_outputs,
                 [&](const Ablation& a, at::Tensor& out) {
                   // Remove (1 − scale) of α[h, q, s]·value[s, h, j] from output dim j of head h.
                   at::Tensor contribution = probs.select(0, a.head).select(1, a.source_position) *
                                             v_heads[a.head][a.source_position][a.index];  // [T]
                   at::Tensor dim = out.select(1, a.head).select(1, a.index);              // [T]
                   if (a.position) {
                     const int64_t row = *a.position - pass.first_row;
                     dim[row].sub_((1 - a.scale) * contribution[row]);
                   } else {
                     dim.sub_((1 - a.scale) * contribution);
                   }
                 });
  ApplyAblations(ablations, AblationTarget::kHead, head_outputs,
                 [&](const Ablation& a, at::Tensor& out) {
                   at::Tensor head = out.select(1, a.head);  // [rows, Dh]
                   pass.ScaleRows(head, 0, a.position, a.scale);
                 });
  if (pass.capture.head_outputs) trace.head_outputs = pass.Keep(head_outputs);
  at::Tensor out = Linear(head_outputs.reshape({t, heads * dh}), w.o_weight, w.o_bias);
  ApplyAblations(
      ablations, AblationTarget::kAttentionLayer, out,
      [&](const Ablation& a, at::Tensor& x) { pass.ScaleRows(x, 0, a.position, a.scale); });
  return out;
}

at::Tensor FeedForward(const PassContext& pass, int64_t layer_index, const at::Tensor& h,
                       LayerTrace& trace) {
  const ModelConfig& config = pass.model.config();
  const LayerWeights& w = pass.model.weights().layers[layer_index];
  at::Tensor coefficients;
  if (config.architecture.ffn == FfnKind::kGated) {
    coefficients = Activate(config.activation, Linear(h, w.gate_weight, w.gate_bias)) *
                   Linear(h, w.in_weight, w.in_bias);
  } else {
    coefficients = Activate(config.activation, Linear(h, w.in_weight, w.in_bias));
  }
  const std::vector<Ablation>& ablations = pass.ablations[layer_index];
  ApplyAblations(ablations, AblationTarget::kFfnNeuron, coefficients,
                 [&](const Ablation& a, at::Tensor& c) {
                   at::Tensor neuron = c.select(1, a.index);  // [rows]
                   pass.ScaleRows(neuron, 0, a.position, a.scale);
                 });
  if (pass.capture.ffn_coefficients) trace.ffn_coefficients = pass.Keep(coefficients);
  at::Tensor out = Linear(coefficients, w.out_weight, w.out_bias);
  ApplyAblations(ablations, AblationTarget::kFfnLayer, out, [&](const Ablation& a, at::Tensor& x) {
    pass.ScaleRows(x, 0, a.position, a.scale);
  });
  return out;
}

// Token embeddings [T, d] in the compute dtype: rows of the embedding table, or fairseq's adaptive
// input (each band's rows through its projection), times the architecture's embedding scale.
at::Tensor EmbedTokens(const Model& model, absl::Span<const int64_t> token_ids) {
  const ModelWeights& w = model.weights();
  const auto on_device = [&](const std::vector<int64_t>& values) {
    return at::tensor(values, at::kLong).to(model.device());
  };
  at::Tensor x;
  if (w.input_bands.empty()) {
    x = w.token_embedding.index_select(0, on_device({token_ids.begin(), token_ids.end()}))
            .to(model.dtype());
  } else {
    x = at::zeros({static_cast<int64_t>(token_ids.size()), model.config().d_model},
                  w.input_bands[0].embedding.options().dtype(model.dtype()));
    for (const AdaptiveInputBand& band : w.input_bands) {
      std::vector<int64_t> positions, rows;
      for (size_t t = 0; t < token_ids.size(); ++t) {
        const int64_t row = token_ids[t] - band.start;
        if (row >= 0 && row < band.embedding.size(0)) {
          positions.push_back(static_cast<int64_t>(t));
          rows.push_back(row);
        }
      }
      if (positions.empty()) continue;
      x.index_copy_(0, on_device(positions),
                    Linear(band.embedding.index_select(0, on_device(rows)).to(model.dtype()),
                           band.projection, at::Tensor()));
    }
  }
  const double scale = model.config().architecture.embedding_scale;
  return scale == 1.0 ? x : x * scale;
}

// fairseq's sinusoidal table rows [offset, offset + T) as [T, d]: sin of the first d/2 frequencies
// then their cos (halves, not interleaved), a zero column for odd d.
at::Tensor SinusoidalPositions(int64_t num_tokens, int64_t d, int64_t offset,
                               const at::TensorOptions& options) {
  const int64_t half = d / 2;
  const double step = std::log(10000.0) / static_cast<double>(std::max<int64_t>(1, half - 1));
  const at::Tensor frequencies = at::exp(at::arange(half, options) * -step);
  const at::Tensor angles =
      at::outer(at::arange(offset, offset + num_tokens, options), frequencies);
  at::Tensor table = at::cat({angles.sin(), angles.cos()}, 1);
  if (d % 2 == 1) table = at::cat({table, at::zeros({num_tokens, 1}, options)}, 1);
  return table;
}

absl::StatusOr<std::vector<int64_t>> ResolvePositions(const std::vector<int64_t>& requested,
                                                      int64_t num_tokens) {
  std::vector<int64_t> positions;
  if (requested.empty()) {
    for (int64_t p = 0; p < num_tokens; ++p) positions.push_back(p);
    return positions;
  }
  for (int64_t p : requested) {
    const int64_t resolved = p < 0 ? p + num_tokens : p;
    if (resolved < 0 || resolved >= num_tokens) {
      return absl::InvalidArgumentError(
          absl::StrCat("position ", p, " is out of range for ", num_tokens, " tokens"));
    }
    positions.push_back(resolved);
  }
  return positions;
}

absl::Status CheckAblation(const ModelConfig& c, int64_t num_tokens, size_t i, const Ablation& a) {
  auto check = [&](const char* field, int64_t value, int64_t limit) -> absl::Status {
    if (value >= 0 && value < limit) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrCat("ablations[", i, "].", field, ": ", value,
                                                   " is out of range [0, ", limit, ")"));
  };
  absl::Status status = check("layer", a.layer, c.n_layers);
  if (status.ok() && a.position) status = check("position", *a.position, num_tokens);
  const bool uses_head = a.target == AblationTarget::kHead ||
                         a.target == AblationTarget::kHeadPosition ||
                         a.target == AblationTarget::kAttentionNeuron;
  if (status.ok() && uses_head) status = check("head", a.head, c.n_heads);
  if (status.ok() &&
      (a.target == AblationTarget::kHeadPosition || a.target == AblationTarget::kAttentionNeuron)) {
    status = check("source_position", a.source_position, num_tokens);
  }
  if (status.ok() && a.target == AblationTarget::kFfnNeuron)
    status = check("index", a.index, c.d_ffn);
  if (status.ok() && a.target == AblationTarget::kAttentionNeuron)
    status = check("index", a.index, c.head_dim);
  if (status.ok() && !std::isfinite(a.scale)) {
    status = absl::InvalidArgumentError(absl::StrCat("ablations[", i, "].scale must be finite"));
  }
  return status;
}

}  // namespace

at::Tensor RotaryInverseFrequencies(const ModelConfig& config, c10::ScalarType dtype) {
  const RopeConfig& rope = config.rope;
  const int64_t dim = config.head_dim;
  at::Tensor inv_freq = 1.0 / at::pow(rope.theta, at::arange(0, dim, 2, at::kLong).to(dtype) / dim);
  if (rope.type == RopeType::kLinear) return inv_freq / rope.factor;
  if (rope.type != RopeType::kLlama3) return inv_freq;
  const double old_context = static_cast<double>(rope.original_max_position_embeddings);
  const double low_freq_wavelen = old_context / rope.low_freq_factor;
  const double high_freq_wavelen = old_context / rope.high_freq_factor;
  const at::Tensor wavelen = 2 * M_PI / inv_freq;
  at::Tensor scaled = at::where(wavelen > low_freq_wavelen, inv_freq / rope.factor, inv_freq);
  const at::Tensor smooth = (old_context / wavelen - rope.low_freq_factor) /
                            (rope.high_freq_factor - rope.low_freq_factor);
  const at::Tensor smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled;
  const at::Tensor medium = (wavelen >= high_freq_wavelen).logical_and(wavelen <= low_freq_wavelen);
  return at::where(medium, smoothed, scaled);
}

namespace {

// The pass's causal mask [rows, T] and rotary angles for query positions [first_row, T).
void SetUpPositions(PassContext& pass, int64_t num_tokens) {
  const Model& model = pass.model;
  const ModelConfig& config = model.config();
  const int64_t rows = num_tokens - pass.first_row;
  const at::TensorOptions bool_options =
      at::TensorOptions().dtype(at::kBool).device(model.device());
  // Row i is position first_row + i: it may not attend to later positions, nor (with a sliding
  // window) to positions `window` or more before it.
  pass.causal_mask = at::ones({rows, num_tokens}, bool_options).triu(pass.first_row + 1);
  if (const int64_t window = config.architecture.sliding_window;
      window > 0 && window < num_tokens) {
    pass.causal_mask = pass.causal_mask.logical_or(
        at::ones({rows, num_tokens}, bool_options).tril(pass.first_row - window));
  }
  if (config.architecture.positions != PositionKind::kRotary) return;
  const c10::ScalarType angle_dtype = AtLeastFloat32(model.dtype());
  const at::Tensor freqs = at::outer(
      at::arange(pass.first_row, num_tokens, bool_options.dtype(at::kLong)).to(angle_dtype),
      RotaryInverseFrequencies(config, angle_dtype).to(model.device()));
  const at::Tensor angles = at::cat({freqs, freqs}, -1);
  pass.rope_cos = angles.cos().to(model.dtype());
  pass.rope_sin = angles.sin().to(model.dtype());
}

// Runs layers [first_layer, L) on the residual rows `x` and returns the final residual rows,
// filling the captures the pass asks for into `trace` (which has L layers).
at::Tensor RunLayers(const PassContext& pass, at::Tensor x, int64_t first_layer,
                     ForwardTrace& trace) {
  const ModelConfig& config = pass.model.config();
  const ModelWeights& w = pass.model.weights();
  for (int64_t l = first_layer; l < config.n_layers; ++l) {
    const LayerWeights& lw = w.layers[l];
    LayerTrace& layer = trace.layers[l];
    const at::Tensor attn =
        Attention(pass, l, Norm(config, x, lw.attn_norm_weight, lw.attn_norm_bias), layer);
    const at::Tensor mid = x + attn;
    const at::Tensor ffn =
        FeedForward(pass, l, Norm(config, mid, lw.ffn_norm_weight, lw.ffn_norm_bias), layer);
    if (pass.capture.residuals) {
      layer.residual_in = pass.Keep(x);
      layer.attn_out = pass.Keep(attn);
      layer.residual_mid = pass.Keep(mid);
      layer.ffn_out = pass.Keep(ffn);
    }
    x = mid + ffn;
  }
  return x;
}

absl::StatusOr<std::vector<std::vector<Ablation>>> AblationsByLayer(
    const ModelConfig& config, int64_t num_tokens, absl::Span<const Ablation> ablations) {
  std::vector<std::vector<Ablation>> by_layer(config.n_layers);
  for (size_t i = 0; i < ablations.size(); ++i) {
    const absl::Status status = CheckAblation(config, num_tokens, i, ablations[i]);
    if (!status.ok()) return status;
    by_layer[ablations[i].layer].push_back(ablations[i]);
  }
  return by_layer;
}

}  // namespace

absl::StatusOr<ForwardTrace> Forward(const Model& model, absl::Span<const int64_t> token_ids,
                                     const CaptureOptions& capture,
                                     absl::Span<const Ablation> ablations) {
  const ModelConfig& config = model.config();
  const int64_t t = static_cast<int64_t>(token_ids.size());
  if (t == 0) return absl::InvalidArgumentError("token_ids: the sequence is empty");
  if (t > config.max_positions) {
    return absl::InvalidArgumentError(absl::StrCat("token_ids: ", t, " tokens exceed the model's ",
                                                   config.max_positions, " positions"));
  }
  for (int64_t i = 0; i < t; ++i) {
    if (token_ids[i] < 0 || token_ids[i] >= config.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("token_ids[", i, "] = ", token_ids[i],
                                                     " is outside the vocabulary [0, ",
                                                     config.vocab_size, ")"));
    }
  }
  ForwardTrace trace;
  trace.num_tokens = t;
  absl::StatusOr<std::vector<int64_t>> positions = ResolvePositions(capture.positions, t);
  if (!positions.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("positions: ", positions.status().message()));
  }
  trace.positions = *std::move(positions);
  absl::StatusOr<std::vector<std::vector<Ablation>>> ablations_by_layer =
      AblationsByLayer(config, t, ablations);
  if (!ablations_by_layer.ok()) return ablations_by_layer.status();

  try {
    PassContext pass{model, capture};
    pass.ablations = *std::move(ablations_by_layer);
    if (!capture.positions.empty()) {
      pass.keep_index = at::tensor(trace.positions, at::kLong).to(model.device());
    }
    SetUpPositions(pass, t);
    const ModelWeights& w = model.weights();
    const Architecture& arch = config.architecture;
    at::Tensor x = EmbedTokens(model, token_ids);
    if (arch.positions == PositionKind::kLearned) {
      x = x + w.position_embedding.narrow(0, 0, t).to(model.dtype());
    } else if (arch.positions == PositionKind::kSinusoidal) {
      x = x + SinusoidalPositions(t, config.d_model, arch.position_offset,
                                  x.options().dtype(AtLeastFloat32(model.dtype())))
                  .to(model.dtype());
    }
    if (capture.residuals) trace.embedding = pass.Keep(x);

    trace.layers.resize(config.n_layers);
    x = RunLayers(pass, std::move(x), 0, trace);
    const at::Tensor kept_final =
        pass.keep_index.defined() ? x.index_select(0, pass.keep_index) : x;
    if (capture.residuals) trace.final_residual = kept_final.to(at::kFloat);
    // In float64 through the output layer prepared at load: one row's logits then do not depend
    // on how many rows are computed (a [1, d] and a [T, d] float32 product round differently), so
    // Predict and LocateFact report the same probability on any CPU.
    if (capture.logits) trace.logits = model.output_head().Logits(kept_final);
  } catch (const std::exception& e) {
    return StatusFromException(e, "the forward pass", model.device());
  }
  return trace;
}

absl::StatusOr<at::Tensor> AblatedLogitsAt(const Model& model, absl::Span<const int64_t> token_ids,
                                           const ForwardTrace& reference, int64_t position,
                                           absl::Span<const Ablation> ablations) {
  const ModelConfig& config = model.config();
  const int64_t t = static_cast<int64_t>(token_ids.size());
  const int64_t p = position < 0 ? position + t : position;
  if (p < 0 || p >= t) {
    return absl::InvalidArgumentError(
        absl::StrCat("position: ", position, " is out of range for ", t, " tokens"));
  }
  // The reference can stand in for every row but p's when it holds, in order, every position's
  // residuals, keys and values without loss, and no ablation touches another row.
  bool reusable = model.dtype() != at::kDouble && reference.num_tokens == t &&
                  static_cast<int64_t>(reference.positions.size()) == t &&
                  reference.layers.size() == static_cast<size_t>(config.n_layers) &&
                  config.n_layers > 0 && reference.layers[0].keys.defined() &&
                  reference.layers[0].values.defined() && reference.layers[0].residual_in.defined();
  for (int64_t i = 0; reusable && i < t; ++i) reusable = reference.positions[i] == i;
  for (const Ablation& a : ablations) reusable = reusable && a.position && *a.position == p;
  if (!reusable) {
    absl::StatusOr<ForwardTrace> trace = Forward(model, token_ids, LogitsAt(p), ablations);
    if (!trace.ok()) return trace.status();
    return trace->logits[0];
  }
  absl::StatusOr<std::vector<std::vector<Ablation>>> ablations_by_layer =
      AblationsByLayer(config, t, ablations);
  if (!ablations_by_layer.ok()) return ablations_by_layer.status();
  int64_t first_layer = config.n_layers;
  for (const Ablation& a : ablations) first_layer = std::min(first_layer, a.layer);

  try {
    CaptureOptions capture = LogitsAt(p);
    PassContext pass{model, capture};
    pass.ablations = *std::move(ablations_by_layer);
    pass.first_row = p;
    pass.past = &reference;
    // Positions after p cannot change p's result: the pass ends at p.
    SetUpPositions(pass, p + 1);
    const at::Tensor x =
        first_layer < config.n_layers
            ? reference.layers[first_layer].residual_in.narrow(0, p, 1).to(model.dtype())
            : reference.final_residual.narrow(0, p, 1).to(model.dtype());
    ForwardTrace unused;
    unused.layers.resize(config.n_layers);
    return model.output_head().Logits(RunLayers(pass, x, first_layer, unused))[0];
  } catch (const std::exception& e) {
    return StatusFromException(e, "the forward pass", model.device());
  }
}

CaptureOptions LogitsAt(int64_t position) {
  CaptureOptions capture;
  capture.residuals = false;
  capture.positions = {position};
  return capture;
}

}  // namespace factlens
