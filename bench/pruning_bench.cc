// Exact top-k neuron ranking by pruning vs exhaustive evaluation, measured in the same run.
//
//   pruning_bench [--k 300] [--tokens 16] [--skip_medium] [--facts N]
//
// 1. A randomly initialised GPT-2-medium-shaped model (24 layers, d=1024, FFN 4096, vocab 50257;
//    weights N(0, 0.02), written to a temporary safetensors file and loaded like any checkpoint),
//    a random 16-token prompt, the argmax as target: top-k FFN and attention neurons.
// 2. The trained demo models over their facts (models/*/facts.json, prompts encoded with the
//    model's tokenizer): pruned vs exhaustive top-k for each fact.
// Prints times, the ratio, candidates evaluated, and whether the rankings are identical.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>

#include "analysis/attribution.h"
#include "analysis/cpu_threads.h"
#include "analysis/forward.h"
#include "analysis/text_input.h"
#include "analysis/tokenizer/tokenizer.h"
#include "analysis/weights.h"
#include "nlohmann/json.hpp"
#include "tests/file_util.h"
#include "tests/support/random_gpt2.h"

namespace factlens {
namespace {

double Seconds(const std::chrono::steady_clock::time_point& start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

bool SameRanking(const NeuronRanking& a, const NeuronRanking& b) {
  if (a.neurons.size() != b.neurons.size()) return false;
  for (size_t i = 0; i < a.neurons.size(); ++i) {
    if (a.neurons[i].layer != b.neurons[i].layer || a.neurons[i].index != b.neurons[i].index) {
      // Equal values may swap places: accept ties within 1e-6.
      if (std::abs(a.neurons[i].score - b.neurons[i].score) > 1e-6) return false;
    }
  }
  return true;
}

struct Comparison {
  double pruned_s = 0, exhaustive_s = 0;
  int64_t evaluated = 0, total = 0;
  bool identical = true;
};

template <typename RankFn>
void Compare(RankFn rank, int64_t k, Comparison& c) {
  auto start = std::chrono::steady_clock::now();
  const NeuronRanking pruned = rank(k, RankMode::kExact);
  c.pruned_s += Seconds(start);
  start = std::chrono::steady_clock::now();
  const NeuronRanking exhaustive = rank(k, RankMode::kExhaustive);
  c.exhaustive_s += Seconds(start);
  c.evaluated += pruned.evaluated;
  c.total += pruned.total;
  c.identical = c.identical && SameRanking(pruned, exhaustive);
}

void Print(const char* what, const Comparison& c) {
  std::printf(
      "%-56s pruned %9.3f s  exhaustive %9.3f s  ratio %7.1fx  evaluated %lld / %lld  identical: "
      "%s\n",
      what, c.pruned_s, c.exhaustive_s, c.exhaustive_s / c.pruned_s,
      static_cast<long long>(c.evaluated), static_cast<long long>(c.total),
      c.identical ? "yes" : "NO");
}

struct Comparisons {
  Comparison ffn, attention, ffn_bottom, attention_bottom;
};

void RunOne(const Model& model, const std::vector<int64_t>& ids, int64_t target, int64_t k,
            Comparisons& c) {
  absl::StatusOr<ForwardTrace> trace = Forward(model, ids, FullCapture());
  if (!trace.ok()) {
    std::fprintf(stderr, "forward: %s\n", std::string(trace.status().message()).c_str());
    return;
  }
  AttributionTarget t;
  t.token_id = target >= 0 ? target : trace->logits[-1].argmax().item<int64_t>();
  absl::StatusOr<std::unique_ptr<Attribution>> a = Attribution::Create(model, *trace, t);
  if (!a.ok()) return;
  Compare(
      [&](int64_t kk, RankMode m) { return (*a)->RankFfnNeurons(kk, RankOrder::kTop, m).value(); },
      k, c.ffn);
  Compare([&](int64_t kk,
              RankMode m) { return (*a)->RankAttentionNeurons(kk, RankOrder::kTop, m).value(); },
          k, c.attention);
  Compare([&](int64_t kk,
              RankMode m) { return (*a)->RankFfnNeurons(kk, RankOrder::kBottom, m).value(); },
          k, c.ffn_bottom);
  Compare([&](int64_t kk,
              RankMode m) { return (*a)->RankAttentionNeurons(kk, RankOrder::kBottom, m).value(); },
          k, c.attention_bottom);
}

void PrintAll(const std::string& label, const Comparisons& c) {
  Print((label + ", top-k FFN neurons").c_str(), c.ffn);
  Print((label + ", top-k attention neurons").c_str(), c.attention);
  Print((label + ", bottom-k FFN neurons").c_str(), c.ffn_bottom);
  Print((label + ", bottom-k attention neurons").c_str(), c.attention_bottom);
}

}  // namespace
}  // namespace factlens

int main(int argc, char** argv) {
  int64_t k = 300, tokens = 16, facts = 1000;
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  bool medium = true;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--help") || !std::strcmp(argv[i], "-h")) {
      std::printf(
          "pruning_bench: exact top-k neuron ranking, pruned vs exhaustive vs a vectorised "
          "baseline, on random models of GPT-2 shapes (bench/RESULTS.md).\n"
          "  --k N          neurons ranked (default 300)\n"
          "  --tokens N     prompt length (default 16)\n"
          "  --facts N      facts of the dataset estimate (default 1000)\n"
          "  --skip_medium  skip the GPT-2-medium shape (minutes on 2 cores)\n"
          "  --quick        a short smoke run: --k 20 --tokens 8 --facts 10 --skip_medium\n");
      return 0;
    }
    if (!std::strcmp(argv[i], "--k") && i + 1 < argc)
      k = std::atoll(argv[++i]);
    else if (!std::strcmp(argv[i], "--tokens") && i + 1 < argc)
      tokens = std::atoll(argv[++i]);
    else if (!std::strcmp(argv[i], "--facts") && i + 1 < argc)
      facts = std::atoll(argv[++i]);
    else if (!std::strcmp(argv[i], "--skip_medium"))
      medium = false;
    else if (!std::strcmp(argv[i], "--quick"))
      k = 20, tokens = 8, facts = 10, medium = false;
    else {
      std::fprintf(stderr, "pruning_bench: unknown argument '%s' (see --help)\n", argv[i]);
      return 2;
    }
  }
  factlens::ConfigureCpuThreads(0);
  at::matmul(at::ones({2, 2}), at::ones({2, 2}));
  std::printf("%s, %d threads, top-k = %lld\n", factlens::CpuMathLibraries().c_str(),
              at::get_num_threads(), static_cast<long long>(k));
  if (medium) {
    // A fresh directory under $TMPDIR, removed on every return (std::filesystem::remove_all would
    // bind to libtorch's copy and crash: tests/file_util.h).
    const factlens::testing::ScopedTempDir tmp;
    const std::string dir = tmp.path() + "/gpt2-medium-random";
    if (const absl::Status s = factlens::testing::WriteRandomGpt2(dir, {}, 0); !s.ok()) {
      std::fprintf(stderr, "%s\n", std::string(s.message()).c_str());
      return 1;
    }
    absl::StatusOr<std::shared_ptr<const factlens::Model>> model = factlens::Model::Load(dir);
    if (!model.ok()) {
      std::fprintf(stderr, "%s\n", std::string(model.status().message()).c_str());
      return 1;
    }
    at::manual_seed(1);
    const at::Tensor ids = at::randint(50257, {tokens}, at::kLong);
    const std::vector<int64_t> prompt(ids.data_ptr<int64_t>(), ids.data_ptr<int64_t>() + tokens);
    factlens::Comparisons c;
    factlens::RunOne(**model, prompt, -1, k, c);
    factlens::PrintAll("gpt2-medium shape (random)", c);
  }
  for (const char* name : {"gpt2-facts-tiny", "llama-facts-tiny"}) {
    const std::string dir = std::string(FACTLENS_SOURCE_DIR) + "/models/" + name;
    absl::StatusOr<std::shared_ptr<const factlens::Model>> model = factlens::Model::Load(dir);
    absl::StatusOr<std::unique_ptr<factlens::Tokenizer>> tokenizer =
        factlens::Tokenizer::FromModelDirectory(dir);
    std::ifstream in(dir + "/facts.json");
    if (!model.ok() || !tokenizer.ok() || !in) {
      std::printf("%s: skipped (model, tokenizer or facts.json missing)\n", name);
      continue;
    }
    const nlohmann::json fact_list = nlohmann::json::parse(in)["facts"];
    factlens::Comparisons c;
    int64_t n = 0;
    for (const auto& fact : fact_list) {
      if (n++ >= facts) break;
      absl::StatusOr<std::vector<int64_t>> ids =
          factlens::EncodePrompt(**tokenizer, fact["prompt"].get<std::string>());
      if (!ids.ok()) continue;
      factlens::RunOne(**model, *ids, fact["target_id"].get<int64_t>(), k, c);
    }
    factlens::PrintAll(
        std::string(name) + " (" + std::to_string(std::min<int64_t>(n, facts)) + " facts)", c);
  }
  return 0;
}
