// The standard LocateFact (docs/design.md) at real model shapes, stage by stage, against plain
// libtorch baselines of the same stages in the same run.
//
//   locate_bench [--models gpt2-medium,tinyllama] [--tokens 16] [--repetitions 3] [--exhaustive]
//                [--quick]
//
// Models: randomly initialised checkpoints of GPT-2 medium (24 × 1024, FFN 4096, vocab 50257) and
// TinyLlama-1.1B (22 × 2048, GQA 32/4, FFN 5632, vocab 32000), written once (float32 safetensors,
// tests/support/random_gpt2.h) into --cache_dir (default: under the build folder) and loaded like
// any checkpoint; with --cache_dir= they go to a temporary directory removed on exit. A random
// prompt of --tokens ids (fixed seed); the target is the model's argmax at the last position.
//
// Per model, each figure the median of --repetitions runs after one warm-up:
//  - Predict (PredictNext: one forward pass to the last position's logits), the unit of the ratio;
//  - LocateFact with default options, total and per stage (timed from its progress callback);
//  - baselines, plain libtorch in float64 on the stage's inputs (the trace, the weights, the ranked
//    neurons of the report), each timed once:
//      layers and heads: every layer, head and head×position vector added to its base residual,
//        the final norm frozen at the final residual, the unembedding, a log-softmax: the
//        target's log-probability less the base's; top-k heads and head×positions;
//      query layers: the top FFN / attention neurons' keys against every earlier component, summed
//        as docs/method-reference.md says, and the query FFN neurons of the top attention neurons;
//      top tokens: the reported neurons' value vectors through the frozen head, top-k.
//    and whether LocateFact's results equal them: the same components in the same order, values
//    within 1e-9 (float64 evaluations of one definition differ by rounding, ~1e-13 here; a method
//    error is orders larger). The query FFN neurons' scores are float32 products in LocateFact
//    (as in the paper's code), compared at 1e-4 relative (d·2^-24 ≈ 1.2e-4 bounds the relative
//    error of a length-2048 float32 dot product).
//  - the same ratio as a client sees it: the model served on loopback (bench/loopback_server.h),
//    the Predict RPC and the standard LocateFact RPC, alternately, medians of --repetitions calls;
//  - with --exhaustive, the exhaustive mode's top-100 FFN neurons against a float32 notebook
//    evaluating every neuron (ExhaustiveFfn below), each timed once.
// Exit status 0; 1 when a stage differs from its baseline or a step fails; 2 for bad flags.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "analysis/attribution.h"
#include "analysis/cpu_threads.h"
#include "analysis/forward.h"
#include "analysis/locate.h"
#include "analysis/output_head.h"
#include "analysis/status_macros.h"
#include "analysis/weights.h"
#include "bench/flags.h"
#include "bench/loopback_server.h"
#include "bench/timing.h"
#include "tests/file_util.h"
#include "tests/support/random_gpt2.h"

namespace factlens {
namespace {

struct Shape {
  std::string name;
  bool llama = false;
  testing::RandomGpt2Shape gpt2;
  testing::RandomLlamaShape llama_shape;
};

std::vector<Shape> Shapes(bool quick) {
  Shape gpt2{"gpt2-medium"}, llama{"tinyllama", true};
  if (quick) {
    gpt2 = {"gpt2-small-test", false, {4096, 128, 4, 4, 512, 64}};
    llama = {"llama-small-test", true, {}, {4096, 128, 4, 8, 2, 352, 64}};
  }
  return {gpt2, llama};
}

// Writes the shape's checkpoint into `dir` unless a complete one is there (a marker file is
// written last, so an interrupted write is redone).
absl::Status EnsureCheckpoint(const Shape& shape, const std::string& dir, uint64_t seed) {
  const std::string marker = dir + "/complete";
  if (std::ifstream(marker).good()) return absl::OkStatus();
  std::printf("writing %s to %s ...\n", shape.name.c_str(), dir.c_str());
  const absl::Status s = shape.llama ? testing::WriteRandomLlama(dir, shape.llama_shape, seed)
                                     : testing::WriteRandomGpt2(dir, shape.gpt2, seed);
  if (s.ok()) std::ofstream(marker) << "ok\n";
  return s;
}

// The final norm frozen at the final residual, then the unembedding, all in `dtype` (float64
// unless asked): a notebook's "log p(target | x)" and vocabulary projection.
class NotebookHead {
 public:
  NotebookHead(const Model& model, const at::Tensor& final_residual,
               c10::ScalarType dtype = at::kDouble)
      : center_(model.config().architecture.norm == NormKind::kLayerNorm),
        dtype_(dtype),
        unembedding_t_(model.weights().unembedding.to(dtype).t()) {
    const at::Tensor x = final_residual.to(at::kDouble);
    const at::Tensor mean_square = center_ ? x.var(/*unbiased=*/false) : x.pow(2).mean();
    scale_ = (model.weights().final_norm_weight.to(at::kDouble) /
              (mean_square + model.config().norm_eps).sqrt())
                 .to(dtype);
  }
  // [B, d] -> [B, V] before-softmax values (no bias).
  at::Tensor Project(const at::Tensor& x) const {
    const at::Tensor xd = x.to(dtype_);
    const at::Tensor c = center_ ? xd - xd.mean(-1, /*keepdim=*/true) : xd;
    return at::matmul(c * scale_, unembedding_t_);
  }
  // log p(target | base + v) − log p(target | base) for vectors [B, d], in blocks of 256.
  at::Tensor Increase(const at::Tensor& base, const at::Tensor& vectors, int64_t target) const {
    const at::Tensor b = base.to(dtype_);
    const double base_log_prob =
        at::log_softmax(Project(b.unsqueeze(0)), -1)[0][target].item<double>();
    std::vector<at::Tensor> parts;
    for (int64_t start = 0; start < vectors.size(0); start += 256) {
      const at::Tensor v =
          vectors.narrow(0, start, std::min<int64_t>(256, vectors.size(0) - start));
      parts.push_back(at::log_softmax(Project(v.to(dtype_) + b), -1).select(1, target) -
                      base_log_prob);
    }
    return at::cat(parts);
  }

 private:
  bool center_;
  c10::ScalarType dtype_;
  at::Tensor unembedding_t_;  // [d, V]
  at::Tensor scale_;
};

// Per-head value vectors [T, H, Dh] and W_O as [H, Dh, d], float32.
at::Tensor HeadValues(const ModelConfig& c, const LayerTrace& t) {
  return t.values.repeat_interleave(c.n_heads / c.n_kv_heads, 1);
}
at::Tensor OutputByHead(const ModelConfig& c, const LayerWeights& w) {
  return w.o_weight.to(at::kFloat).t().reshape({c.n_heads, c.head_dim, c.d_model});
}

struct Check {
  bool same = true;
  double max_difference = 0;
  void Value(double a, double b, double tolerance) {
    max_difference = std::max(max_difference, std::abs(a - b));
    same = same && std::abs(a - b) <= tolerance;
  }
};

constexpr double kAgreement = 1e-9;

// Layer, head and head×position increases, exhaustively in float64.
Check LayersAndHeads(const Model& model, const ForwardTrace& trace, const FactReport& report,
                     const NotebookHead& head) {
  const ModelConfig& c = model.config();
  const int64_t p = report.position, t = trace.num_tokens;
  std::vector<at::Tensor> heads, positions;
  Check check;
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const LayerTrace& lt = trace.layers[l];
    const at::Tensor o = OutputByHead(c, model.weights().layers[l]);
    const at::Tensor attn =
        head.Increase(lt.residual_in[p], lt.attn_out[p].unsqueeze(0), report.target);
    const at::Tensor ffn =
        head.Increase(lt.residual_mid[p], lt.ffn_out[p].unsqueeze(0), report.target);
    check.Value(attn.item<double>(), report.attention_layer_increase[l], kAgreement);
    check.Value(ffn.item<double>(), report.ffn_layer_increase[l], kAgreement);
    heads.push_back(head.Increase(
        lt.residual_in[p], at::einsum("hj,hjd->hd", {lt.head_outputs[p], o}), report.target));
    const at::Tensor probs = lt.attention_probs.select(1, p);  // [H, T]
    const at::Tensor vectors = at::einsum("hs,shj,hjd->hsd", {probs, HeadValues(c, lt), o});
    positions.push_back(
        head.Increase(lt.residual_in[p], vectors.reshape({-1, c.d_model}), report.target));
  }
  auto compare = [&](const at::Tensor& scores, const std::vector<HeadScore>& reported,
                     bool by_pos) {
    const std::vector<TokenScore> top = TopScores(scores, static_cast<int64_t>(reported.size()));
    for (size_t i = 0; i < reported.size(); ++i) {
      const int64_t per_layer = by_pos ? c.n_heads * t : c.n_heads;
      const int64_t flat =
          reported[i].layer * per_layer +
          (by_pos ? reported[i].head * t + reported[i].source_position : reported[i].head);
      check.same = check.same && (flat == top[i].token_id ||
                                  std::abs(top[i].score - reported[i].score) <= kAgreement);
      check.Value(top[i].score, reported[i].score, kAgreement);
    }
  };
  compare(at::stack(heads), report.top_heads, false);
  compare(at::stack(positions), report.top_head_positions, true);
  return check;
}

// The components at position s, [1 + 2L, d] float64: embedding, attn_0, ffn_0, ...
at::Tensor Components(const ForwardTrace& trace, int64_t s) {
  std::vector<at::Tensor> rows = {trace.embedding[s]};
  for (const LayerTrace& lt : trace.layers) {
    rows.push_back(lt.attn_out[s]);
    rows.push_back(lt.ffn_out[s]);
  }
  return at::stack(rows).to(at::kDouble);
}

// Σ over neurons of (key · component_j for reachable j) / Σ_j (…) × score.
at::Tensor AggregateQueryLayers(const at::Tensor& components, const at::Tensor& keys,
                                const std::vector<int64_t>& reach,
                                const std::vector<double>& score) {
  at::Tensor s = at::einsum("ncd,nd->nc", {components, keys.to(at::kDouble)});  // [n, 1 + 2L]
  const at::Tensor slot = at::arange(s.size(1), at::kLong).unsqueeze(0);
  s = s * (slot <= at::tensor(reach, at::kLong).unsqueeze(1));
  const at::Tensor w = at::tensor(score, at::kDouble).unsqueeze(1) / s.sum(1, /*keepdim=*/true);
  return (s * w).sum(0);
}

Check QueryLayers(const Model& model, const ForwardTrace& trace, const FactReport& report) {
  const ModelConfig& c = model.config();
  const bool gated = c.architecture.ffn == FfnKind::kGated;
  const at::Tensor at_position = Components(trace, report.position);
  Check check;
  // FFN neurons: key = (W_in or gate/up row) ⊙ g2, components up to attention layer l.
  for (size_t k = 0; k < report.query_layers_ffn.size(); ++k) {
    std::vector<at::Tensor> keys;
    std::vector<int64_t> reach;
    std::vector<double> scores;
    for (const NeuronReport& n : report.ffn_neurons) {
      const LayerWeights& w = model.weights().layers[n.layer];
      const at::Tensor& rows = gated && k == 0 ? w.gate_weight : w.in_weight;
      keys.push_back(rows[n.neuron].to(at::kFloat) * w.ffn_norm_weight.to(at::kFloat));
      reach.push_back(2 * n.layer + 1);
      scores.push_back(n.score);
    }
    const at::Tensor sums = AggregateQueryLayers(
        at_position.unsqueeze(0).expand({static_cast<int64_t>(keys.size()), -1, -1}),
        at::stack(keys), reach, scores);
    for (int64_t j = 0; j < sums.size(0); ++j) {
      check.Value(sums[j].item<double>(), report.query_layers_ffn[k].second[j], kAgreement);
    }
  }
  // Attention neurons: key = value row (kv head, dim) ⊙ g1 at the source position, before layer l.
  const int64_t n_attn = std::min<int64_t>(30, report.attention_neurons.size());
  std::vector<at::Tensor> keys, components;
  std::vector<int64_t> reach;
  std::vector<double> scores;
  for (int64_t i = 0; i < n_attn; ++i) {
    const NeuronReport& n = report.attention_neurons[i];
    const LayerWeights& w = model.weights().layers[n.layer];
    const int64_t kv = n.head / (c.n_heads / c.n_kv_heads);
    keys.push_back(w.v_weight[kv * c.head_dim + n.neuron].to(at::kFloat) *
                   w.attn_norm_weight.to(at::kFloat));
    components.push_back(Components(trace, n.source_position));
    reach.push_back(2 * n.layer);
    scores.push_back(n.score);
  }
  if (n_attn > 0) {
    const at::Tensor sums =
        AggregateQueryLayers(at::stack(components), at::stack(keys), reach, scores);
    for (int64_t j = 0; j < sums.size(0); ++j) {
      check.Value(sums[j].item<double>(), report.query_layers_attention[j], kAgreement);
    }
    // Query FFN neurons: (coef(m, s, n) · W_out row n) · key / (residual_in(l)[s] · key) × score,
    // per layer m for the neurons above it.
    at::Tensor total = at::zeros({c.n_layers, c.d_ffn}, at::kDouble);
    for (int64_t m = 0; m + 1 < c.n_layers; ++m) {
      std::vector<int64_t> above;
      for (int64_t i = 0; i < n_attn; ++i) {
        if (report.attention_neurons[i].layer > m) above.push_back(i);
      }
      if (above.empty()) continue;
      const at::Tensor w_out = model.weights().layers[m].out_weight.to(at::kDouble);  // [d, N]
      std::vector<at::Tensor> weighted_keys, coefficients;
      for (int64_t i : above) {
        const NeuronReport& n = report.attention_neurons[i];
        const at::Tensor key = keys[i].to(at::kDouble);
        const double denominator =
            at::dot(trace.layers[n.layer].residual_in[n.source_position].to(at::kDouble), key)
                .item<double>();
        weighted_keys.push_back(key * (n.score / denominator));
        coefficients.push_back(trace.layers[m].ffn_coefficients[n.source_position]);
      }
      total[m] =
          (at::stack(coefficients).to(at::kDouble) * at::matmul(at::stack(weighted_keys), w_out))
              .sum(0);
    }
    const std::vector<TokenScore> top =
        TopScores(total, static_cast<int64_t>(report.query_ffn_neurons.size()));
    for (size_t i = 0; i < top.size(); ++i) {
      const NeuronReport& n = report.query_ffn_neurons[i];
      const bool same_neuron = top[i].token_id == n.layer * c.d_ffn + n.neuron;
      const double tolerance = 1e-4 * std::abs(top[i].score);
      check.same = check.same && (same_neuron || std::abs(top[i].score - n.score) <= tolerance);
      check.Value(top[i].score, n.score, tolerance);
    }
  }
  return check;
}

// The top tokens of sign(m)·v for every reported neuron.
Check TopTokens(const Model& model, const FactReport& report, const NotebookHead& head) {
  const ModelConfig& c = model.config();
  std::vector<at::Tensor> rows;
  std::vector<const NeuronReport*> reports;
  for (const auto* list : {&report.ffn_neurons, &report.query_ffn_neurons}) {
    for (const NeuronReport& n : *list) {
      rows.push_back(model.weights().layers[n.layer].out_weight.select(1, n.neuron).to(at::kFloat) *
                     (n.coefficient < 0 ? -1.0 : 1.0));
      reports.push_back(&n);
    }
  }
  for (const NeuronReport& n : report.attention_neurons) {
    rows.push_back(model.weights()
                       .layers[n.layer]
                       .o_weight.select(1, n.head * c.head_dim + n.neuron)
                       .to(at::kFloat) *
                   (n.coefficient < 0 ? -1.0 : 1.0));
    reports.push_back(&n);
  }
  Check check;
  if (rows.empty()) return check;
  const at::Tensor projections = head.Project(at::stack(rows));
  for (size_t i = 0; i < reports.size(); ++i) {
    const std::vector<TokenScore> top =
        TopScores(projections[i], static_cast<int64_t>(reports[i]->top_tokens.size()));
    for (size_t j = 0; j < top.size(); ++j) {
      const TokenScore& got = reports[i]->top_tokens[j];
      check.same = check.same && (got.token_id == top[j].token_id ||
                                  std::abs(got.score - top[j].score) <= kAgreement);
      check.Value(got.score, top[j].score, kAgreement);
    }
  }
  return check;
}

// The exhaustive top-k FFN neurons: Attribution's exhaustive mode against a float32 notebook that
// adds every neuron's subvalue m·W_out[:, n] to its FFN base residual and takes the frozen head's
// log-softmax (the vectorised PyTorch baseline, the same GEMM arithmetic in float32). The
// same neurons in the same order, except where the notebook's values of neighbours lie within
// its own float32 rounding; values within kFloat32Notebook (a float32 log-softmax over the
// vocabulary errs by ~1e-6 of the logits' scale; a method error is orders larger).
constexpr double kFloat32Notebook = 1e-4;

struct ExhaustiveTiming {
  double ours_s = 0, notebook_s = 0;
  int64_t k = 0;
  Check check;
};

absl::StatusOr<ExhaustiveTiming> ExhaustiveFfn(const Model& model, const ForwardTrace& trace,
                                               int64_t position, int64_t target, int64_t k) {
  const ModelConfig& c = model.config();
  ExhaustiveTiming timing;
  AttributionTarget t;
  t.token_id = target;
  t.position = position;
  FACTLENS_ASSIGN_OR_RETURN(std::unique_ptr<Attribution> a, Attribution::Create(model, trace, t));
  SteadyClock::time_point start = SteadyClock::now();
  FACTLENS_ASSIGN_OR_RETURN(NeuronRanking ours,
                            a->RankFfnNeurons(k, RankOrder::kTop, RankMode::kExhaustive));
  timing.ours_s = SecondsSince(start);
  start = SteadyClock::now();
  const NotebookHead head(model, trace.final_residual[position], at::kFloat);
  std::vector<at::Tensor> values;
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const LayerTrace& lt = trace.layers[l];
    const at::Tensor subvalues = lt.ffn_coefficients[position].to(at::kFloat).unsqueeze(1) *
                                 model.weights().layers[l].out_weight.to(at::kFloat).t();
    values.push_back(head.Increase(lt.residual_mid[position], subvalues, target));
  }
  const std::vector<TokenScore> top = TopScores(at::stack(values), k);
  timing.notebook_s = SecondsSince(start);
  timing.k = static_cast<int64_t>(top.size());
  for (size_t i = 0; i < top.size() && i < ours.neurons.size(); ++i) {
    const RankedNeuron& n = ours.neurons[i];
    timing.check.same = timing.check.same && (n.layer * c.d_ffn + n.index == top[i].token_id ||
                                              std::abs(n.score - top[i].score) <= kFloat32Notebook);
    timing.check.Value(n.score, top[i].score, kFloat32Notebook);
  }
  timing.check.same = timing.check.same && ours.neurons.size() == top.size();
  return timing;
}

struct Options {
  std::vector<std::string> models;
  int64_t tokens = 16;
  int repetitions = 3;
  std::string cache_dir = FACTLENS_BINARY_DIR "/bench/locate_bench_models";
  uint64_t seed = 1;
  bool quick = false;
  bool baselines = true;
  bool exhaustive = false;
};

// Stage names of LocateFact's progress callback, in order, and how the table names them.
constexpr std::pair<const char*, const char*> kStages[] = {
    {"forward", "forward + bases + lens"},
    {"layers and heads", "layers, heads, head×positions"},
    {"FFN neurons", "FFN neurons (exact top-k)"},
    {"attention neurons", "attention neurons (exact top-k)"},
    {"query layers", "query layers + query neurons"},
    {"top tokens", "top tokens of reported neurons"},
    {"ablation", "ablation run"},
};

struct RpcTimes {
  double predict = 0, locate_fact = 0;  // medians, seconds
};

// The ratio as a client sees it: `model` served on loopback, the Predict and the standard
// LocateFact RPC on the prompt `ids` and `target`, alternately, `repetitions` times after one
// warm-up call of each.
absl::StatusOr<RpcTimes> TimeRpcs(std::shared_ptr<const Model> model,
                                  const std::vector<int64_t>& ids, int64_t target,
                                  int repetitions) {
  FACTLENS_ASSIGN_OR_RETURN(const std::unique_ptr<LoopbackServer> server,
                            LoopbackServer::Start(std::move(model), /*max_concurrent=*/1));
  const std::unique_ptr<v1::FactLens::Stub> stub = server->NewClient();
  const BenchRequests requests = RequestsFor(ids, target);
  std::vector<double> predict_times, locate_times;
  for (int r = 0; r <= repetitions; ++r) {  // run 0 is the warm-up
    FACTLENS_ASSIGN_OR_RETURN(const double predict, TimedPredict(*stub, requests.predict));
    FACTLENS_ASSIGN_OR_RETURN(const double locate, TimedLocateFact(*stub, requests.locate_fact));
    if (r == 0) continue;
    predict_times.push_back(predict);
    locate_times.push_back(locate);
  }
  return RpcTimes{Median(predict_times), Median(locate_times)};
}

bool RunModel(const Shape& shape, const Options& o) {
  std::optional<testing::ScopedTempDir> tmp;  // only without a cache
  if (o.cache_dir.empty()) tmp.emplace();
  const std::string dir =
      (tmp ? tmp->path() : o.cache_dir) + "/" + shape.name + "-seed" + std::to_string(o.seed);
  if (const absl::Status s = EnsureCheckpoint(shape, dir, o.seed); !s.ok()) {
    std::fprintf(stderr, "%s\n", std::string(s.message()).c_str());
    return false;
  }
  SteadyClock::time_point start = SteadyClock::now();
  absl::StatusOr<std::shared_ptr<const Model>> loaded = Model::Load(dir);
  if (!loaded.ok()) {
    std::fprintf(stderr, "%s\n", std::string(loaded.status().message()).c_str());
    return false;
  }
  const Model& model = **loaded;
  const ModelConfig& c = model.config();
  std::printf(
      "\n%s: %lld layers, d %lld, heads %lld/%lld, FFN %lld, vocab %lld; loaded in %.1f s\n",
      shape.name.c_str(), static_cast<long long>(c.n_layers), static_cast<long long>(c.d_model),
      static_cast<long long>(c.n_heads), static_cast<long long>(c.n_kv_heads),
      static_cast<long long>(c.d_ffn), static_cast<long long>(c.vocab_size), SecondsSince(start));
  at::manual_seed(o.seed);
  const at::Tensor id_tensor = at::randint(c.vocab_size, {o.tokens}, at::kLong);
  const std::vector<int64_t> ids(id_tensor.data_ptr<int64_t>(),
                                 id_tensor.data_ptr<int64_t>() + o.tokens);
  const int64_t last = o.tokens - 1;

  std::vector<double> predict_times, locate_times;
  std::map<std::string, std::vector<double>> stage_times;
  int64_t target = -1;
  absl::StatusOr<FactReport> report;
  for (int r = 0; r <= o.repetitions; ++r) {  // run 0 is the warm-up
    start = SteadyClock::now();
    absl::StatusOr<std::vector<TokenScore>> next = PredictNext(model, ids, last, 1);
    if (!next.ok()) return false;
    if (r > 0) predict_times.push_back(SecondsSince(start));
    target = next->front().token_id;

    std::map<std::string, double> began;
    const ProgressCallback progress = [&](const std::string& stage, double) {
      began.emplace(stage, SecondsSince(start));
      return true;
    };
    start = SteadyClock::now();
    report = LocateFact(model, ids, target, LocateOptions{}, progress);
    const double total = SecondsSince(start);
    if (!report.ok()) {
      std::fprintf(stderr, "LocateFact: %s\n", std::string(report.status().message()).c_str());
      return false;
    }
    if (r == 0) continue;
    locate_times.push_back(total);
    for (size_t i = 0; i < std::size(kStages); ++i) {
      const auto from = began.find(kStages[i].first);
      if (from == began.end()) continue;
      double to = total;
      for (size_t j = i + 1; j < std::size(kStages); ++j) {
        if (const auto it = began.find(kStages[j].first); it != began.end()) {
          to = it->second;
          break;
        }
      }
      stage_times[kStages[i].first].push_back(to - from->second);
    }
  }
  const double predict = Median(predict_times), locate = Median(locate_times);
  // As in factlens_server, where no thread keeps an idle OpenMP team (ReleaseCpuThreads): this
  // thread's would make the service's threads sleep between parallel regions.
  ReleaseCpuThreads();
  const absl::StatusOr<RpcTimes> rpc = TimeRpcs(*loaded, ids, target, o.repetitions);
  if (!rpc.ok()) {
    std::fprintf(stderr, "gRPC: %s\n", std::string(rpc.status().message()).c_str());
    return false;
  }

  // Baselines (and the exhaustive comparison) on the same trace LocateFact computes.
  absl::StatusOr<ForwardTrace> trace = absl::UnavailableError("not computed");
  if (o.baselines || o.exhaustive) {
    trace = Forward(model, ids, FullCapture());
    if (!trace.ok()) return false;
  }
  std::map<std::string, std::pair<double, Check>> baselines;
  if (o.baselines) {
    const NotebookHead head(model, trace->final_residual[last]);
    start = SteadyClock::now();
    Check check = LayersAndHeads(model, *trace, *report, head);
    baselines["layers and heads"] = {SecondsSince(start), check};
    start = SteadyClock::now();
    check = QueryLayers(model, *trace, *report);
    baselines["query layers"] = {SecondsSince(start), check};
    start = SteadyClock::now();
    check = TopTokens(model, *report, head);
    baselines["top tokens"] = {SecondsSince(start), check};
  }

  std::printf("target %lld, prompt of %lld random tokens, median of %d runs\n",
              static_cast<long long>(target), static_cast<long long>(o.tokens), o.repetitions);
  std::printf("%-34s %10s %8s %12s %8s %s\n", "stage", "LocateFact", "×Predict", "baseline",
              "speed-up", "identical (max |difference|)");
  bool ok = true;
  for (const auto& [stage, label] : kStages) {
    const auto times = stage_times.find(stage);
    if (times == stage_times.end()) continue;
    const double t = Median(times->second);
    std::printf("%-34s %9.3fs %7.2fx", label, t, t / predict);
    if (const auto b = baselines.find(stage); b != baselines.end()) {
      const auto& [baseline_s, check] = b->second;
      std::printf(" %11.3fs %7.1fx %s (%.2g)\n", baseline_s, baseline_s / t,
                  check.same ? "yes" : "NO", check.max_difference);
      ok = ok && check.same;
    } else {
      std::printf(" %12s\n", stage == std::string("forward") ? "(Predict)" : "-");
    }
  }
  std::printf("%-34s %9.3fs\n", "Predict (one forward pass)", predict);
  std::printf("%-34s %9.3fs %7.2fx\n", "LocateFact (standard, exact)", locate, locate / predict);
  std::printf("through gRPC on loopback (the service, trace cache off), median of %d calls each:\n",
              o.repetitions);
  std::printf("%-34s %9.3fs\n", "Predict RPC", rpc->predict);
  std::printf("%-34s %9.3fs %7.2fx\n", "LocateFact RPC (standard, exact)", rpc->locate_fact,
              rpc->locate_fact / rpc->predict);
  std::printf("FFN neurons evaluated %lld / %lld, attention neurons %lld / %lld\n",
              static_cast<long long>(report->ffn_ranking_stats.evaluated),
              static_cast<long long>(report->ffn_ranking_stats.total),
              static_cast<long long>(report->attention_ranking_stats.evaluated),
              static_cast<long long>(report->attention_ranking_stats.total));
  if (o.exhaustive) {
    const absl::StatusOr<ExhaustiveTiming> e = ExhaustiveFfn(model, *trace, last, target, 100);
    if (!e.ok()) {
      std::fprintf(stderr, "exhaustive: %s\n", std::string(e.status().message()).c_str());
      return false;
    }
    std::printf(
        "exhaustive top-%lld FFN neurons (every one evaluated): %.3fs; float32 notebook %.3fs "
        "(notebook / ours %.2fx); identical %s (max |difference| %.2g)\n",
        static_cast<long long>(e->k), e->ours_s, e->notebook_s, e->notebook_s / e->ours_s,
        e->check.same ? "yes" : "NO", e->check.max_difference);
    ok = ok && e->check.same;
  }
  return ok;
}

}  // namespace
}  // namespace factlens

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  factlens::Options o;
  std::string models = "gpt2-medium,tinyllama";
  bool tokens_set = false, repetitions_set = false;
  for (factlens::FlagReader flags(argc, argv); flags.Next();) {
    if (flags.Is("--help") || flags.Is("-h")) {
      std::printf(
          "locate_bench: the standard LocateFact stage by stage on random checkpoints of real\n"
          "shapes, with plain-libtorch float64 baselines of the stages and the ratio to Predict\n"
          "(bench/RESULTS.md).\n"
          "  --models LIST     gpt2-medium,tinyllama (default both)\n"
          "  --tokens N        prompt length (default 16)\n"
          "  --repetitions N   timed runs after a warm-up, medians reported (default 3)\n"
          "  --cache_dir DIR   where the random checkpoints are kept between runs (default:\n"
          "                    the build folder's bench/locate_bench_models); empty: a\n"
          "                    temporary directory removed on exit\n"
          "  --seed N          weights and prompt (default 1)\n"
          "  --no_baselines    skip the baselines\n"
          "  --exhaustive      also the exhaustive top-100 FFN neurons against a float32\n"
          "                    notebook computing every neuron (minutes at real shapes)\n"
          "  --quick           small shapes of both families, 8 tokens, 1 repetition, in a\n"
          "                    temporary directory, --exhaustive: a smoke run of seconds\n");
      return 0;
    }
    if (const char* v = flags.Value("--models")) {
      models = v;
    } else if (const char* v = flags.Value("--tokens")) {
      o.tokens = std::atoll(v);
      tokens_set = true;
    } else if (const char* v = flags.Value("--repetitions")) {
      o.repetitions = std::atoi(v);
      repetitions_set = true;
    } else if (const char* v = flags.Value("--cache_dir")) {
      o.cache_dir = v;
    } else if (const char* v = flags.Value("--seed")) {
      o.seed = std::strtoull(v, nullptr, 10);
    } else if (flags.Is("--no_baselines")) {
      o.baselines = false;
    } else if (flags.Is("--exhaustive")) {
      o.exhaustive = true;
    } else if (flags.Is("--quick")) {
      o.quick = true;
    } else {
      std::fprintf(stderr, "locate_bench: unknown argument '%s' (see --help)\n", flags.arg());
      return 2;
    }
  }
  if (o.quick) {
    o.exhaustive = true;
    o.cache_dir.clear();
    if (!tokens_set) o.tokens = 8;
    if (!repetitions_set) o.repetitions = 1;
  }
  if (o.tokens < 1 || o.repetitions < 1) {
    std::fprintf(stderr, "locate_bench: --tokens and --repetitions must be positive\n");
    return 2;
  }
  factlens::ConfigureCpuThreads(0);
  std::printf("%s, %d threads\n", factlens::CpuMathLibraries().c_str(), at::get_num_threads());
  bool ok = true;
  for (const factlens::Shape& shape : factlens::Shapes(o.quick)) {
    const std::vector<std::string> wanted = absl::StrSplit(models, ',');
    const bool selected =
        o.quick || std::find(wanted.begin(), wanted.end(), shape.name) != wanted.end();
    if (selected) ok = factlens::RunModel(shape, o) && ok;
  }
  return ok ? 0 : 1;
}
