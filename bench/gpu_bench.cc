// GPU benchmark of the method at real model shapes: randomly initialised GPT-2 medium, Llama-7B and
// Llama-13B (Llama-2 shapes), built in memory on the device in float16 and bfloat16, one random
// 16-token prompt (fixed seed), the model's own argmax at the last position as the target.
//
// Per (model, dtype) it measures, each stage as the median of --repetitions runs after a warm-up,
// with the device synchronised before every clock read:
//  1. forward: Forward() with FullCapture(), the trace every later stage uses;
//  2. ranking: Attribution::Create (setup), then the exact top-k (--top_k, 300) FFN neurons and
//     attention neurons by pruning (RankMode::kExact) and by exhaustive evaluation
//     (RankMode::kExhaustive); the two rankings must be identical: every rank holds the same
//     neuron, or two neurons whose scores differ by at most the rankings' summed max_error (a tie);
//  3. baseline: the paper's method as a PyTorch notebook vectorises it with plain libtorch ops, in
//     --baseline_dtype (float32 by default) on the same device: per layer and chunk of
//     --baseline_chunk neurons, every subvalue (coefficient × output-projection row: W_out row n
//     for FFN neuron n; W_O row h·Dh+j times α[h, last, s]·value[s, h, j] for attention neuron
//     (s, h, j)) is added to the layer's base residual (FFN: residual_mid, attention: residual_in,
//     at the last position), put through the final norm with its scale σ frozen at the final
//     residual, the unembedding and a log-softmax; the target's log-probability less that of the
//     base alone is the neuron's score; top-k over all layers' neurons. Inputs are the stage-1
//     trace (float32 captures) and the model's weights, cast to the baseline dtype. Reported: its
//     time, and how its top-k set compares with the exhaustive ranking's (overlap, the largest
//     score difference on shared neurons, the largest distance of a non-shared neuron's score from
//     the k-th score);
//  4. Predict and LocateFact (default options) through gRPC (bench/loopback_server.h: the service
//     on 127.0.0.1 serving the in-memory model, prompt and target as token ids, trace cache off so
//     every call runs the forward): p50/p99 client latency of --locate_calls sequential Predict
//     calls, then as many LocateFact calls (and their p50 over Predict's), then --clients
//     concurrent clients (one TCP connection each) making --calls_per_client LocateFact calls:
//     throughput, p50/p99;
//  5. peak GPU memory (allocated by libtorch) of each stage, next to the model's resident_bytes().
//
// Exit status: 0; 1 when a pruned ranking differs from the exhaustive one (a correctness failure),
// a stage fails, or the baseline runs in float64 and its top-k set differs from ours beyond ties of
// 1e-9 + twice the ranking's max_error (both are then float64 evaluations of one definition on one
// trace). In lower precisions the baseline's rounding (float32: ~1e-6 of log-probabilities near
// −log V) exceeds the gaps between scores near the k-th of a random model, so disagreement at the
// boundary is expected there and only reported. 2: bad flags or no CUDA device for --device=cuda.
//
// Running it:
//   CPU smoke test (tiny shapes of both families in float32, seconds; what CTest runs):
//     gpu_bench --device=cpu --quick --baseline_dtype=float64
//   GPU (H100/H200; 13B in float16 needs 26 GB plus working memory):
//     gpu_bench --json=gpu_bench.json --commit=$(git rev-parse --short HEAD)
//     gpu_bench --models=llama-7b --dtypes=bfloat16 --device=cuda:1
// Output: one table per (model, dtype) on stdout; --json=FILE writes every figure (model, dtype,
// device name, date, --commit, stage times, ratios, agreement, memory).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/core/InferenceMode.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/reflection.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "analysis/attribution.h"
#include "analysis/cpu_threads.h"
#include "analysis/device.h"
#include "analysis/forward.h"
#include "analysis/status_macros.h"
#include "analysis/weights.h"
#include "bench/loopback_server.h"
#include "bench/timing.h"
#include "nlohmann/json.hpp"
#include "server/flag_usage.h"

ABSL_FLAG(std::string, device, "cuda", "cuda, cuda:N or cpu");
ABSL_FLAG(std::vector<std::string>, models,
          std::vector<std::string>({"gpt2-medium", "llama-7b", "llama-13b"}),
          "model shapes: gpt2-medium, llama-7b, llama-13b, gpt2-tiny, llama-tiny "
          "(default with --quick: gpt2-tiny,llama-tiny)");
ABSL_FLAG(std::vector<std::string>, dtypes, std::vector<std::string>({"float16", "bfloat16"}),
          "compute dtypes (default with --quick: float32)");
ABSL_FLAG(bool, quick, false, "tiny shapes of both families in float32: a smoke test for the CPU");
ABSL_FLAG(int32_t, tokens, 16, "prompt length (random token ids)");
ABSL_FLAG(int64_t, top_k, 300, "neurons ranked");
ABSL_FLAG(int32_t, repetitions, 3,
          "timed runs per stage after one warm-up; the median is reported");
ABSL_FLAG(std::string, baseline_dtype, "float32", "dtype of the plain-libtorch baseline");
ABSL_FLAG(int64_t, baseline_chunk, 2048, "neurons per batch of the baseline (bounds its memory)");
ABSL_FLAG(int32_t, locate_calls, 20, "sequential LocateFact calls (default with --quick: 5)");
ABSL_FLAG(int32_t, clients, 8, "concurrent LocateFact clients");
ABSL_FLAG(int32_t, calls_per_client, 4,
          "calls of each concurrent client (default with --quick: 2)");
ABSL_FLAG(uint64_t, seed, 1, "seed of the weights and the prompt");
ABSL_FLAG(std::string, json, "", "also write every figure to this JSON file");
ABSL_FLAG(std::string, commit, "", "commit id recorded in the JSON output");

namespace factlens {
namespace {

using json = nlohmann::json;

// Scores of the float64 baseline and of the exhaustive ranking may differ by this much plus twice
// the ranking's max_error: far above float64 rounding at these shapes, far below a method error.
constexpr double kFloat64Agreement = 1e-9;
constexpr double kWeightStd = 0.02;

struct ModelShape {
  const char* name;
  ModelFamily family;
  int64_t layers, d_model, heads, d_ffn, vocab, positions;
};

// Llama shapes are Llama-2's (Llama-1 differs only in max_position_embeddings, 2048).
constexpr ModelShape kShapes[] = {
    {"gpt2-medium", ModelFamily::kGpt2, 24, 1024, 16, 4096, 50257, 1024},
    {"llama-7b", ModelFamily::kLlama, 32, 4096, 32, 11008, 32000, 4096},
    {"llama-13b", ModelFamily::kLlama, 40, 5120, 40, 13824, 32000, 4096},
    {"gpt2-tiny", ModelFamily::kGpt2, 4, 64, 4, 256, 2048, 64},
    {"llama-tiny", ModelFamily::kLlama, 4, 128, 4, 344, 4096, 64},
};

absl::StatusOr<ModelShape> FindShape(const std::string& name) {
  for (const ModelShape& shape : kShapes) {
    if (name == shape.name) return shape;
  }
  return absl::InvalidArgumentError(absl::StrCat("--models: unknown model '", name, "'"));
}

// The flag's value, or `quick_value` under --quick when the flag is at its default.
template <typename T>
T QuickDefault(const absl::Flag<T>& flag, const char* name, T quick_value) {
  const absl::CommandLineFlag& reflected = *absl::FindCommandLineFlag(name);
  const bool at_default = reflected.CurrentValue() == reflected.DefaultValue();
  return absl::GetFlag(FLAGS_quick) && at_default ? quick_value : absl::GetFlag(flag);
}

ModelConfig ConfigOf(const ModelShape& shape) {
  ModelConfig c;
  c.family = shape.family;
  c.architecture = FamilyArchitecture(shape.family);
  c.vocab_size = shape.vocab;
  c.d_model = shape.d_model;
  c.n_layers = shape.layers;
  c.n_heads = c.n_kv_heads = shape.heads;
  c.head_dim = shape.d_model / shape.heads;
  c.d_ffn = shape.d_ffn;
  c.max_positions = shape.positions;
  // As GPT2Config's defaults and Llama-2's config.json say.
  const bool gpt2 = shape.family == ModelFamily::kGpt2;
  c.norm_eps = 1e-5;
  c.tie_word_embeddings = gpt2;
  c.activation = gpt2 ? Activation::kGeluTanh : Activation::kSilu;
  return c;
}

// N(0, 0.02²) weights, unit norm weights and zero biases, made on the device in the dtype.
absl::StatusOr<std::shared_ptr<const Model>> BuildModel(const ModelShape& shape, c10::Device device,
                                                        c10::ScalarType dtype, uint64_t seed) {
  const ModelConfig c = ConfigOf(shape);
  const at::TensorOptions options = at::TensorOptions().device(device).dtype(dtype);
  auto normal = [&](std::vector<int64_t> sizes) {
    return at::empty(sizes, options).normal_(0.0, kWeightStd);
  };
  auto ones = [&](int64_t n) { return at::ones({n}, options); };
  auto zeros = [&](int64_t n) { return at::zeros({n}, options); };
  const bool gpt2 = c.family == ModelFamily::kGpt2;
  const int64_t d = c.d_model, n = c.d_ffn, q_dim = c.n_heads * c.head_dim;
  at::manual_seed(seed);
  ModelWeights w;
  try {
    w.token_embedding = normal({c.vocab_size, d});
    if (gpt2) w.position_embedding = normal({c.max_positions, d});
    for (int64_t l = 0; l < c.n_layers; ++l) {
      LayerWeights& layer = w.layers.emplace_back();
      layer.attn_norm_weight = ones(d);
      layer.ffn_norm_weight = ones(d);
      layer.q_weight = normal({q_dim, d});
      layer.k_weight = normal({q_dim, d});
      layer.v_weight = normal({q_dim, d});
      layer.o_weight = normal({d, q_dim});
      layer.in_weight = normal({n, d});
      layer.out_weight = normal({d, n});
      if (gpt2) {
        layer.attn_norm_bias = zeros(d);
        layer.ffn_norm_bias = zeros(d);
        layer.q_bias = zeros(q_dim);
        layer.k_bias = zeros(q_dim);
        layer.v_bias = zeros(q_dim);
        layer.o_bias = zeros(d);
        layer.in_bias = zeros(n);
        layer.out_bias = zeros(d);
      } else {
        layer.gate_weight = normal({n, d});
      }
    }
    w.final_norm_weight = ones(d);
    if (gpt2) w.final_norm_bias = zeros(d);
    w.unembedding = gpt2 ? w.token_embedding : normal({c.vocab_size, d});
  } catch (const std::exception& e) {
    return StatusFromException(e, absl::StrCat("building ", shape.name), device);
  }
  return Model::FromWeights(c, std::move(w), absl::StrCat(shape.name, " (random, in memory)"));
}

void Synchronize(c10::Device device) {
  if (device.is_cuda()) c10::cuda::device_synchronize();
}

// One warm-up run of `run`, then the median time of `repetitions` runs.
double MedianSeconds(c10::Device device, int repetitions, const std::function<void()>& run) {
  run();
  std::vector<double> times;
  for (int i = 0; i < repetitions; ++i) {
    Synchronize(device);
    const SteadyClock::time_point start = SteadyClock::now();
    run();
    Synchronize(device);
    times.push_back(SecondsSince(start));
  }
  return Median(std::move(times));
}

// Nearest-rank percentile of sorted values.
double Percentile(const std::vector<double>& sorted, double fraction) {
  const size_t rank = static_cast<size_t>(std::ceil(fraction * sorted.size()));
  return sorted[std::clamp<size_t>(rank, 1, sorted.size()) - 1];
}

// Peak bytes libtorch allocates on a CUDA device between Reset() and Peak(); nothing on CPU.
class PeakMemory {
 public:
  explicit PeakMemory(c10::Device device) : device_(device) {}
  void Reset() const {
    if (device_.is_cuda()) c10::cuda::CUDACachingAllocator::resetPeakStats(device_.index());
  }
  json Peak() const {
    const std::vector<GpuMemory> stats = GpuMemoryStats({device_});
    return stats.empty() ? json(nullptr) : json(stats[0].peak_allocated);
  }

 private:
  c10::Device device_;
};

enum class NeuronKind { kFfn, kAttention };

const char* KindName(NeuronKind kind) { return kind == NeuronKind::kFfn ? "FFN" : "attention"; }

// Every rank holds the same neuron, or two whose scores differ by at most the summed max_error.
bool SameRanking(const NeuronRanking& a, const NeuronRanking& b) {
  if (a.neurons.size() != b.neurons.size()) return false;
  const double tolerance = a.max_error + b.max_error;
  for (size_t i = 0; i < a.neurons.size(); ++i) {
    if (std::abs(a.neurons[i].score - b.neurons[i].score) > tolerance) return false;
  }
  return true;
}

// The final norm with its scale frozen at one residual, the unembedding and a log-softmax, in one
// dtype: the "log p(target | ·)" of a notebook.
class FrozenNormHead {
 public:
  FrozenNormHead(const Model& model, const at::Tensor& final_residual, c10::ScalarType dtype)
      : center_(model.config().family == ModelFamily::kGpt2),
        unembedding_t_(model.weights().unembedding.to(dtype).t()) {
    const at::Tensor x = final_residual.to(dtype);
    const at::Tensor mean_square = center_ ? x.var(/*unbiased=*/false) : x.pow(2).mean();
    scale_ = model.weights().final_norm_weight.to(dtype) /
             (mean_square + model.config().norm_eps).sqrt();
  }
  // [B, d] residuals -> [B] log-probabilities of `target`.
  at::Tensor TargetLogProbs(const at::Tensor& residuals, int64_t target) const {
    const at::Tensor x = center_ ? residuals - residuals.mean(-1, /*keepdim=*/true) : residuals;
    return at::log_softmax(at::matmul(x * scale_, unembedding_t_), -1).select(1, target);
  }

 private:
  bool center_;
  at::Tensor unembedding_t_;  // [d, V]
  at::Tensor scale_;          // g / σ
};

// One layer's neurons as Attribution numbers them: R rows of coefficients for K shared vectors,
// flat index r·K + k, and the residual their subvalues are added to.
struct LayerNeurons {
  at::Tensor vectors;       // [K, d]
  at::Tensor coefficients;  // [R, K]
  at::Tensor base;          // [d]
};

LayerNeurons NeuronsOf(const Model& model, const ForwardTrace& trace, int64_t layer,
                       NeuronKind kind, c10::ScalarType dtype) {
  const ModelConfig& c = model.config();
  const LayerWeights& w = model.weights().layers[layer];
  const LayerTrace& t = trace.layers[layer];
  const int64_t last = trace.num_tokens - 1;
  if (kind == NeuronKind::kFfn) {
    return {w.out_weight.t().to(dtype), t.ffn_coefficients[last].unsqueeze(0).to(dtype),
            t.residual_mid[last].to(dtype)};
  }
  // α[h, last, s]·value[s, h, j] for source s, head h, head dim j.
  const at::Tensor values = t.values.repeat_interleave(c.n_heads / c.n_kv_heads, 1);  // [T, H, Dh]
  const at::Tensor probs = t.attention_probs.select(1, last).t();                     // [T, H]
  return {w.o_weight.t().to(dtype),
          (values * probs.unsqueeze(-1)).reshape({trace.num_tokens, -1}).to(dtype),
          t.residual_in[last].to(dtype)};
}

// The baseline (header comment, stage 3): every neuron's log-probability increase, top-k.
std::vector<RankedNeuron> BaselineTopK(const Model& model, const ForwardTrace& trace,
                                       int64_t target, NeuronKind kind, int64_t k,
                                       c10::ScalarType dtype, int64_t chunk) {
  const FrozenNormHead head(model, trace.final_residual[trace.num_tokens - 1], dtype);
  std::vector<at::Tensor> layer_scores;
  for (int64_t l = 0; l < model.config().n_layers; ++l) {
    const LayerNeurons neurons = NeuronsOf(model, trace, l, kind, dtype);
    const at::Tensor base_log_prob = head.TargetLogProbs(neurons.base.unsqueeze(0), target);
    const int64_t count = neurons.vectors.size(0);
    std::vector<at::Tensor> scores;
    for (int64_t r = 0; r < neurons.coefficients.size(0); ++r) {
      for (int64_t start = 0; start < count; start += chunk) {
        const int64_t n = std::min(chunk, count - start);
        const at::Tensor subvalues = neurons.vectors.narrow(0, start, n) *
                                     neurons.coefficients[r].narrow(0, start, n).unsqueeze(1);
        scores.push_back(head.TargetLogProbs(neurons.base + subvalues, target) - base_log_prob);
      }
    }
    layer_scores.push_back(at::cat(scores));
  }
  const at::Tensor all = at::stack(layer_scores);  // [L, R·K]
  const auto [values, indices] = at::topk(all.reshape({-1}), std::min(k, all.numel()));
  const at::Tensor v = values.to(at::kCPU, at::kDouble).contiguous();
  const at::Tensor i = indices.to(at::kCPU).contiguous();
  std::vector<RankedNeuron> top;
  for (int64_t j = 0; j < v.numel(); ++j) {
    const int64_t flat = i.data_ptr<int64_t>()[j];
    top.push_back({flat / all.size(1), flat % all.size(1), v.data_ptr<double>()[j], 0});
  }
  return top;
}

struct BaselineAgreement {
  int64_t overlap = 0;
  double max_score_difference = 0;  // |baseline − exact| over shared neurons
  double boundary_distance = 0;     // max |score − k-th exact score| over non-shared neurons
};

BaselineAgreement CompareWithBaseline(const NeuronRanking& exact,
                                      const std::vector<RankedNeuron>& baseline) {
  std::map<std::pair<int64_t, int64_t>, double> exact_scores;
  for (const RankedNeuron& n : exact.neurons) exact_scores[{n.layer, n.index}] = n.score;
  const double kth = exact.neurons.empty() ? 0 : exact.neurons.back().score;
  BaselineAgreement a;
  for (const RankedNeuron& n : baseline) {
    const auto found = exact_scores.find({n.layer, n.index});
    if (found == exact_scores.end()) {
      a.boundary_distance = std::max(a.boundary_distance, std::abs(n.score - kth));
      continue;
    }
    ++a.overlap;
    a.max_score_difference = std::max(a.max_score_difference, std::abs(n.score - found->second));
    exact_scores.erase(found);
  }
  for (const auto& [neuron, score] : exact_scores) {
    a.boundary_distance = std::max(a.boundary_distance, std::abs(score - kth));
  }
  return a;
}

struct Latencies {
  int64_t calls = 0;
  double p50 = 0, p99 = 0, wall = 0;
};

json ToJson(const Latencies& l) {
  return {{"calls", l.calls},
          {"p50_s", l.p50},
          {"p99_s", l.p99},
          {"wall_s", l.wall},
          {"calls_per_s", l.calls / l.wall}};
}

// One timed RPC on a client's stub (TimedLocateFact, TimedPredict).
using TimedCall = std::function<absl::StatusOr<double>(v1::FactLens::Stub&)>;

// `clients` threads, each on its own connection, making `calls` calls after one shared start.
absl::StatusOr<Latencies> ClientLoad(const LoopbackServer& server, const TimedCall& timed_call,
                                     int clients, int calls) {
  std::vector<std::unique_ptr<v1::FactLens::Stub>> stubs;
  for (int c = 0; c < clients; ++c) stubs.push_back(server.NewClient());
  absl::Mutex mu;
  std::vector<double> latencies;
  absl::Status failure;
  absl::Notification go;
  std::vector<std::thread> threads;
  for (int c = 0; c < clients; ++c) {
    threads.emplace_back([&, c] {
      go.WaitForNotification();
      for (int i = 0; i < calls; ++i) {
        const absl::StatusOr<double> latency = timed_call(*stubs[c]);
        absl::MutexLock lock(&mu);
        if (latency.ok()) {
          latencies.push_back(*latency);
        } else {
          failure.Update(latency.status());
        }
      }
    });
  }
  const SteadyClock::time_point start = SteadyClock::now();
  go.Notify();
  for (std::thread& t : threads) t.join();
  Latencies l;
  l.wall = SecondsSince(start);
  if (!failure.ok()) return failure;
  std::sort(latencies.begin(), latencies.end());
  l.calls = static_cast<int64_t>(latencies.size());
  l.p50 = Percentile(latencies, 0.5);
  l.p99 = Percentile(latencies, 0.99);
  return l;
}

struct BenchOptions {
  c10::Device device = c10::Device(c10::kCPU);
  int64_t tokens = 16, top_k = 300, baseline_chunk = 2048;
  int repetitions = 3, locate_calls = 20, clients = 8, calls_per_client = 4;
  c10::ScalarType baseline_dtype = c10::ScalarType::Float;
  uint64_t seed = 1;
};

std::string Milliseconds(double seconds) { return absl::StrFormat("%10.3f ms", seconds * 1e3); }

std::string Bytes(const json& bytes) {
  if (bytes.is_null()) return "n/a";
  const double b = bytes.get<double>();
  return b < 1e9 ? absl::StrFormat("%.1f MB", b / 1e6) : absl::StrFormat("%.2f GB", b / 1e9);
}

void PrintRow(const std::string& stage, const std::string& time, const std::string& detail) {
  std::printf("  %-36s %s  %s\n", stage.c_str(), time.c_str(), detail.c_str());
}

// Stages 2 and 3 for one neuron kind: pruned, exhaustive and baseline top-k.
// Returns the figures; `correct` becomes false on a correctness failure.
absl::StatusOr<json> RankingStages(const Model& model, const ForwardTrace& trace,
                                   const Attribution& attribution, NeuronKind kind,
                                   const BenchOptions& o, const PeakMemory& memory, bool& correct) {
  auto rank = [&](RankMode mode) {
    return kind == NeuronKind::kFfn
               ? attribution.RankFfnNeurons(o.top_k, RankOrder::kTop, mode)
               : attribution.RankAttentionNeurons(o.top_k, RankOrder::kTop, mode);
  };
  absl::StatusOr<NeuronRanking> pruned, exhaustive;
  memory.Reset();
  const double pruned_s =
      MedianSeconds(o.device, o.repetitions, [&] { pruned = rank(RankMode::kExact); });
  const double exhaustive_s =
      MedianSeconds(o.device, o.repetitions, [&] { exhaustive = rank(RankMode::kExhaustive); });
  const json ranking_peak = memory.Peak();
  if (!pruned.ok()) return pruned.status();
  if (!exhaustive.ok()) return exhaustive.status();
  const bool identical = SameRanking(*pruned, *exhaustive);
  correct = correct && identical;

  std::vector<RankedNeuron> baseline;
  memory.Reset();
  const double baseline_s = MedianSeconds(o.device, o.repetitions, [&] {
    baseline = BaselineTopK(model, trace, attribution.target().token_id, kind, o.top_k,
                            o.baseline_dtype, o.baseline_chunk);
  });
  const json baseline_peak = memory.Peak();
  const BaselineAgreement agreement = CompareWithBaseline(*exhaustive, baseline);
  const int64_t k = static_cast<int64_t>(exhaustive->neurons.size());
  const bool same_set = agreement.overlap == k;
  const double tolerance = kFloat64Agreement + 2 * exhaustive->max_error;
  const bool baseline_checked = o.baseline_dtype == c10::ScalarType::Double;
  const bool baseline_agrees =
      agreement.max_score_difference <= tolerance && agreement.boundary_distance <= tolerance;
  if (baseline_checked) correct = correct && baseline_agrees;

  const std::string label = absl::StrCat(KindName(kind), " top-", k);
  PrintRow(label + ", pruned", Milliseconds(pruned_s),
           absl::StrFormat("evaluated %d / %d", pruned->evaluated, pruned->total));
  PrintRow(label + ", exhaustive", Milliseconds(exhaustive_s),
           absl::StrFormat("%.1fx the pruned time; identical: %s (max_error %.1e)",
                           exhaustive_s / pruned_s, identical ? "yes" : "NO", pruned->max_error));
  std::string agreement_text =
      absl::StrFormat("same set: %s (%d / %d), max |dscore| %.1e", same_set ? "yes" : "no",
                      agreement.overlap, k, agreement.max_score_difference);
  if (!same_set) {
    absl::StrAppendFormat(&agreement_text, ", non-shared within %.1e of the k-th score",
                          agreement.boundary_distance);
  }
  if (baseline_checked)
    absl::StrAppend(&agreement_text, baseline_agrees ? "; agrees" : "; DISAGREES");
  PrintRow(absl::StrCat(label, ", baseline ", std::string(ComputeDTypeName(o.baseline_dtype))),
           Milliseconds(baseline_s),
           absl::StrFormat("%.1fx the pruned time; %s", baseline_s / pruned_s, agreement_text));
  return json{{"pruned_s", pruned_s},
              {"exhaustive_s", exhaustive_s},
              {"exhaustive_over_pruned", exhaustive_s / pruned_s},
              {"evaluated", pruned->evaluated},
              {"total", pruned->total},
              {"identical", identical},
              {"max_error", std::max(pruned->max_error, exhaustive->max_error)},
              {"ranking_peak_bytes", ranking_peak},
              {"baseline",
               {{"dtype", std::string(ComputeDTypeName(o.baseline_dtype))},
                {"seconds", baseline_s},
                {"over_pruned", baseline_s / pruned_s},
                {"same_set", same_set},
                {"overlap", agreement.overlap},
                {"max_score_difference", agreement.max_score_difference},
                {"boundary_distance", agreement.boundary_distance},
                {"checked", baseline_checked},
                {"agrees", baseline_agrees},
                {"peak_bytes", baseline_peak}}}};
}

// Stages 1 to 3 on the prompt `ids`; sets `target` to the model's argmax at the last position.
absl::StatusOr<json> AnalysisStages(const Model& model, const std::vector<int64_t>& ids,
                                    const BenchOptions& o, const PeakMemory& memory,
                                    int64_t& target, bool& correct) {
  absl::StatusOr<ForwardTrace> trace;
  memory.Reset();
  const double forward_s =
      MedianSeconds(o.device, o.repetitions, [&] { trace = Forward(model, ids, FullCapture()); });
  const json forward_peak = memory.Peak();
  if (!trace.ok()) return trace.status();
  AttributionTarget attribution_target;
  attribution_target.token_id = target = trace->logits[-1].argmax().item<int64_t>();
  absl::StatusOr<std::unique_ptr<Attribution>> attribution;
  const double setup_s = MedianSeconds(o.device, o.repetitions, [&] {
    attribution = Attribution::Create(model, *trace, attribution_target);
  });
  if (!attribution.ok()) return attribution.status();
  PrintRow("stage", "    median", "");
  PrintRow("forward, full capture", Milliseconds(forward_s), "");
  PrintRow("attribution setup", Milliseconds(setup_s), absl::StrCat("target token ", target));
  json result = {{"target", target},
                 {"forward_s", forward_s},
                 {"forward_peak_bytes", forward_peak},
                 {"attribution_setup_s", setup_s}};
  FACTLENS_ASSIGN_OR_RETURN(result["ffn"], RankingStages(model, *trace, **attribution,
                                                         NeuronKind::kFfn, o, memory, correct));
  FACTLENS_ASSIGN_OR_RETURN(
      result["attention"],
      RankingStages(model, *trace, **attribution, NeuronKind::kAttention, o, memory, correct));
  return result;
}

// Stage 4 on the prompt `ids` and `target`: sequential Predict calls (one forward pass, the unit
// of the LocateFact / Predict ratio), sequential and concurrent LocateFact calls, each after a
// warm-up call.
absl::StatusOr<json> LocateFactStages(std::shared_ptr<const Model> model,
                                      const std::vector<int64_t>& ids, int64_t target,
                                      const BenchOptions& o, const PeakMemory& memory) {
  const BenchRequests requests = RequestsFor(ids, target);
  const TimedCall locate_fact = [&](v1::FactLens::Stub& stub) {
    return TimedLocateFact(stub, requests.locate_fact);
  };
  const TimedCall predict = [&](v1::FactLens::Stub& stub) {
    return TimedPredict(stub, requests.predict);
  };
  memory.Reset();
  FACTLENS_ASSIGN_OR_RETURN(const std::unique_ptr<LoopbackServer> server,
                            LoopbackServer::Start(std::move(model), o.clients));
  FACTLENS_RETURN_IF_ERROR(ClientLoad(*server, predict, 1, 1).status());
  FACTLENS_ASSIGN_OR_RETURN(const Latencies predicts,
                            ClientLoad(*server, predict, 1, o.locate_calls));
  FACTLENS_ASSIGN_OR_RETURN(const Latencies warm_up, ClientLoad(*server, locate_fact, 1, 1));
  FACTLENS_ASSIGN_OR_RETURN(const Latencies sequential,
                            ClientLoad(*server, locate_fact, 1, o.locate_calls));
  FACTLENS_ASSIGN_OR_RETURN(const Latencies concurrent,
                            ClientLoad(*server, locate_fact, o.clients, o.calls_per_client));
  PrintRow("Predict gRPC, sequential", Milliseconds(predicts.p50),
           absl::StrFormat("p50; p99 %.3f ms over %d calls", predicts.p99 * 1e3, predicts.calls));
  PrintRow("LocateFact gRPC, sequential", Milliseconds(sequential.p50),
           absl::StrFormat("p50; %.2fx Predict; p99 %.3f ms over %d calls (warm-up %.3f ms)",
                           sequential.p50 / predicts.p50, sequential.p99 * 1e3, sequential.calls,
                           warm_up.p50 * 1e3));
  PrintRow(absl::StrCat("LocateFact gRPC, ", o.clients, " clients"), Milliseconds(concurrent.p50),
           absl::StrFormat("p50; p99 %.3f ms over %d calls; %.2f calls/s", concurrent.p99 * 1e3,
                           concurrent.calls, concurrent.calls / concurrent.wall));
  json result = {{"predict_sequential", ToJson(predicts)},
                 {"sequential", ToJson(sequential)},
                 {"sequential_over_predict", sequential.p50 / predicts.p50},
                 {"concurrent", ToJson(concurrent)},
                 {"peak_bytes", memory.Peak()}};
  result["concurrent"]["clients"] = o.clients;
  return result;
}

// Every stage for one (model, dtype). `correct` becomes false on a correctness failure.
absl::StatusOr<json> BenchModel(const ModelShape& shape, c10::ScalarType dtype,
                                const BenchOptions& o, bool& correct) {
  const PeakMemory memory(o.device);
  FACTLENS_ASSIGN_OR_RETURN(const std::shared_ptr<const Model> model,
                            BuildModel(shape, o.device, dtype, o.seed));
  std::mt19937_64 random(o.seed);
  std::uniform_int_distribution<int64_t> token(0, shape.vocab - 1);
  std::vector<int64_t> ids(o.tokens);
  for (int64_t& id : ids) id = token(random);
  const json resident = model->resident_bytes();
  std::printf(
      "\n%s %s on %s: %lld layers, d %lld, FFN %lld, vocab %lld; %lld tokens; resident %s\n",
      shape.name, std::string(ComputeDTypeName(dtype)).c_str(), o.device.str().c_str(),
      static_cast<long long>(shape.layers), static_cast<long long>(shape.d_model),
      static_cast<long long>(shape.d_ffn), static_cast<long long>(shape.vocab),
      static_cast<long long>(o.tokens), Bytes(resident).c_str());

  int64_t target = 0;
  FACTLENS_ASSIGN_OR_RETURN(json result, AnalysisStages(*model, ids, o, memory, target, correct));
  // As in factlens_server, where no idle OpenMP team is left on any thread (ReleaseCpuThreads).
  ReleaseCpuThreads();
  FACTLENS_ASSIGN_OR_RETURN(result["locate"], LocateFactStages(model, ids, target, o, memory));
  PrintRow(
      "peak GPU memory", "",
      !o.device.is_cuda()
          ? "n/a"
          : absl::StrCat("resident ", Bytes(resident), "; forward ",
                         Bytes(result["forward_peak_bytes"]), ", FFN ranking ",
                         Bytes(result["ffn"]["ranking_peak_bytes"]), ", attention ranking ",
                         Bytes(result["attention"]["ranking_peak_bytes"]), ", FFN baseline ",
                         Bytes(result["ffn"]["baseline"]["peak_bytes"]), ", attention baseline ",
                         Bytes(result["attention"]["baseline"]["peak_bytes"]), ", LocateFact ",
                         Bytes(result["locate"]["peak_bytes"])));
  result.update(json{{"model", shape.name},
                     {"dtype", std::string(ComputeDTypeName(dtype))},
                     {"layers", shape.layers},
                     {"d_model", shape.d_model},
                     {"heads", shape.heads},
                     {"d_ffn", shape.d_ffn},
                     {"vocab", shape.vocab},
                     {"tokens", o.tokens},
                     {"resident_bytes", resident}});
  return result;
}

std::string DeviceName(c10::Device device) {
  if (!device.is_cuda()) return absl::StrCat("cpu (", at::get_num_threads(), " threads)");
  return at::cuda::getDeviceProperties(device.index())->name;
}

// Flag values checked, or an error message.
absl::StatusOr<BenchOptions> OptionsFromFlags() {
  BenchOptions o;
  FACTLENS_ASSIGN_OR_RETURN(o.device, ParseDevice(absl::GetFlag(FLAGS_device)));
  if (o.device.is_cuda() && !o.device.has_index()) o.device = c10::Device(c10::kCUDA, 0);
  FACTLENS_ASSIGN_OR_RETURN(o.baseline_dtype,
                            ParseComputeDType(absl::GetFlag(FLAGS_baseline_dtype)));
  o.tokens = absl::GetFlag(FLAGS_tokens);
  o.top_k = absl::GetFlag(FLAGS_top_k);
  o.baseline_chunk = absl::GetFlag(FLAGS_baseline_chunk);
  o.repetitions = absl::GetFlag(FLAGS_repetitions);
  o.locate_calls = QuickDefault(FLAGS_locate_calls, "locate_calls", 5);
  o.clients = absl::GetFlag(FLAGS_clients);
  o.calls_per_client = QuickDefault(FLAGS_calls_per_client, "calls_per_client", 2);
  o.seed = absl::GetFlag(FLAGS_seed);
  if (o.tokens < 1 || o.top_k < 1 || o.baseline_chunk < 1 || o.repetitions < 1 ||
      o.locate_calls < 1 || o.clients < 1 || o.calls_per_client < 1) {
    return absl::InvalidArgumentError(
        "--tokens, --top_k, --baseline_chunk, --repetitions, --locate_calls, --clients and "
        "--calls_per_client must be positive");
  }
  if (o.device.is_cpu() && o.baseline_dtype == c10::ScalarType::Half) {
    return absl::InvalidArgumentError("--baseline_dtype=float16 is not supported on the CPU");
  }
  return o;
}

int Main() {
  absl::StatusOr<BenchOptions> options = OptionsFromFlags();
  if (!options.ok()) {
    std::fprintf(stderr, "gpu_bench: %s\n", std::string(options.status().message()).c_str());
    if (absl::IsFailedPrecondition(options.status())) {
      std::fprintf(stderr,
                   "gpu_bench: no CUDA device is visible; run with --device=cpu --quick "
                   "for the CPU smoke test\n");
    }
    return 2;
  }
  const BenchOptions& o = *options;
  std::vector<std::pair<ModelShape, c10::ScalarType>> runs;
  for (const std::string& name :
       QuickDefault(FLAGS_models, "models", std::vector<std::string>{"gpt2-tiny", "llama-tiny"})) {
    const absl::StatusOr<ModelShape> shape = FindShape(name);
    if (!shape.ok()) {
      std::fprintf(stderr, "gpu_bench: %s\n", std::string(shape.status().message()).c_str());
      return 2;
    }
    for (const std::string& dtype_name :
         QuickDefault(FLAGS_dtypes, "dtypes", std::vector<std::string>{"float32"})) {
      const absl::StatusOr<c10::ScalarType> dtype = ParseComputeDType(dtype_name);
      if (!dtype.ok() || (o.device.is_cpu() && *dtype == c10::ScalarType::Half)) {
        std::fprintf(stderr, "gpu_bench: --dtypes: %s\n",
                     dtype.ok() ? "float16 is not supported on the CPU (use float32)"
                                : std::string(dtype.status().message()).c_str());
        return 2;
      }
      runs.push_back({*shape, *dtype});
    }
  }

  const std::string device_name = DeviceName(o.device);
  std::printf("gpu_bench on %s: top-%lld, %d repetitions after a warm-up (median)\n",
              device_name.c_str(), static_cast<long long>(o.top_k), o.repetitions);
  json report = {{"device", o.device.str()},
                 {"device_name", device_name},
                 {"date", absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", absl::Now(), absl::UTCTimeZone())},
                 {"commit", absl::GetFlag(FLAGS_commit)},
                 {"top_k", o.top_k},
                 {"repetitions", o.repetitions},
                 {"runs", json::array()}};
  bool correct = true, failed = false;
  // Written after every run, so that a run cut short by a time limit keeps what it finished.
  auto write_json = [&] {
    const std::string path = absl::GetFlag(FLAGS_json);
    if (path.empty()) return;
    report["correct"] = correct;
    std::ofstream out(path);
    out << report.dump(2) << "\n";
    if (!out) {
      std::fprintf(stderr, "gpu_bench: could not write %s\n", path.c_str());
      failed = true;
    }
  };
  for (const auto& [shape, dtype] : runs) {
    absl::StatusOr<json> result;
    try {
      result = BenchModel(shape, dtype, o, correct);
    } catch (const std::exception& e) {  // e.g. the baseline running out of GPU memory
      result = StatusFromException(e, "benchmarking", o.device);
    }
    if (!result.ok()) {
      failed = true;
      std::fprintf(stderr, "gpu_bench: %s %s: %s\n", shape.name,
                   std::string(ComputeDTypeName(dtype)).c_str(),
                   std::string(result.status().message()).c_str());
      result = json{{"model", shape.name},
                    {"dtype", std::string(ComputeDTypeName(dtype))},
                    {"error", std::string(result.status().message())}};
    }
    report["runs"].push_back(*result);
    // The model is gone with BenchModel's frame; hand its cached blocks back to the driver.
    if (o.device.is_cuda()) c10::cuda::CUDACachingAllocator::emptyCache();
    write_json();
    std::fflush(stdout);
  }
  if (!correct) std::printf("\nCORRECTNESS FAILURE: a ranking disagrees (see above)\n");
  return correct && !failed ? 0 : 1;
}

}  // namespace
}  // namespace factlens

int main(int argc, char** argv) {
  factlens::ParseFlags(
      argc, argv,
      "Times the forward pass, exact top-k neuron ranking (pruned vs exhaustive vs a "
      "plain-libtorch baseline), LocateFact over gRPC and peak GPU memory on random models of "
      "GPT-2 medium, Llama-7B and Llama-13B shapes. CPU smoke test: gpu_bench --device=cpu --quick",
      "/bench/gpu_bench.");
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  factlens::ConfigureCpuThreads(0);
  c10::InferenceMode inference;
  return factlens::Main();
}
