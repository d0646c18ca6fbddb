// factlens_predict: loads a model (directory or HF-cache repo id) and prints the top next tokens
// after a prompt, with their probabilities and logits.
#include <ATen/ATen.h>

#include <chrono>
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "analysis/cpu_threads.h"
#include "analysis/forward.h"
#include "analysis/tokenizer/tokenizer.h"
#include "analysis/weights.h"
#include "server/default_model.h"
#include "server/flag_usage.h"

// The default is resolved next to the executable (server/default_model.h); --help shows it.
ABSL_FLAG(std::string, model, factlens::DefaultModelDirectoryOrEmpty(),
          "Model directory, or a Hugging Face repo id in the local HF cache. Default: the demo "
          "model, <prefix>/share/factlens/models/gpt2-facts-tiny beside <prefix>/bin");
ABSL_FLAG(std::string, prompt, "The capital of France is", "Prompt text");
ABSL_FLAG(std::string, ids, "", "Comma-separated token ids to use instead of --prompt");
ABSL_FLAG(int, top_k, 10, "Number of next tokens to print (1..1000)");
ABSL_FLAG(std::string, device, "cpu", "cpu, cuda or cuda:N");
ABSL_FLAG(int, threads, 0,
          "CPU threads for libtorch (0 = OMP_NUM_THREADS if set, else one per core)");

namespace {

int Fail(const absl::Status& status) {
  std::cerr << "factlens_predict: " << status << "\n";
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  factlens::ParseFlags(argc, argv, "Prints the top next tokens a model predicts after a prompt.",
                       "/tools/predict_main.");
  // --model, or else the demo model beside the binary.
  const absl::StatusOr<std::string> model_directory =
      factlens::ModelOrDefault(absl::GetFlag(FLAGS_model));
  if (!model_directory.ok()) return Fail(model_directory.status());
  factlens::ConfigureCpuThreads(absl::GetFlag(FLAGS_threads));
  const int top_k = absl::GetFlag(FLAGS_top_k);
  if (top_k < 1 || top_k > 1000) {
    return Fail(absl::InvalidArgumentError("--top_k must be between 1 and 1000"));
  }

  const auto start = std::chrono::steady_clock::now();
  factlens::LoadOptions options;
  options.device = absl::GetFlag(FLAGS_device);
  absl::StatusOr<std::shared_ptr<const factlens::Model>> model =
      factlens::Model::Load(*model_directory, options);
  if (!model.ok()) return Fail(model.status());
  absl::StatusOr<std::unique_ptr<factlens::Tokenizer>> tokenizer =
      factlens::Tokenizer::FromModelDirectory((*model)->directory());
  if (!tokenizer.ok()) return Fail(tokenizer.status());
  const double load_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  std::vector<int64_t> ids;
  if (!absl::GetFlag(FLAGS_ids).empty()) {
    for (absl::string_view part : absl::StrSplit(absl::GetFlag(FLAGS_ids), ',')) {
      int64_t id = 0;
      if (!absl::SimpleAtoi(part, &id)) {
        return Fail(absl::InvalidArgumentError("--ids must be comma-separated integers"));
      }
      ids.push_back(id);
    }
  } else {
    absl::StatusOr<factlens::Encoding> encoding =
        (*tokenizer)->Encode(absl::GetFlag(FLAGS_prompt), /*add_special_tokens=*/true);
    if (!encoding.ok()) return Fail(encoding.status());
    ids.assign(encoding->ids.begin(), encoding->ids.end());
  }

  absl::StatusOr<factlens::ForwardTrace> trace =
      factlens::Forward(**model, ids, factlens::LogitsAt(-1));
  if (!trace.ok()) return Fail(trace.status());

  const factlens::ModelConfig& config = (*model)->config();
  std::printf(
      "model   %s (%s, %lld layers, d=%lld, vocab %lld) loaded in %.2f s on %s\n",
      (*model)->directory().c_str(), std::string(factlens::ModelFamilyName(config.family)).c_str(),
      static_cast<long long>(config.n_layers), static_cast<long long>(config.d_model),
      static_cast<long long>(config.vocab_size), load_seconds, (*model)->device().str().c_str());
  if ((*model)->device().is_cpu()) {
    std::printf("cpu     %s\n", factlens::CpuMathLibraries().c_str());
  }
  std::printf("tokens ");
  for (int64_t id : ids) {
    absl::StatusOr<std::string> shown = (*tokenizer)->DisplayToken(static_cast<int32_t>(id));
    std::printf(" [%lld %s]", static_cast<long long>(id), shown.ok() ? shown->c_str() : "?");
  }
  std::printf("\n\n  rank  token id  probability     logit  token\n");
  const at::Tensor logits = trace->logits[0];
  const at::Tensor probs = at::softmax(logits.to(at::kDouble), -1);
  const auto [values, indices] = at::topk(logits, std::min<int64_t>(top_k, config.vocab_size));
  for (int64_t i = 0; i < values.size(0); ++i) {
    const int64_t id = indices[i].item<int64_t>();
    absl::StatusOr<std::string> shown = (*tokenizer)->DisplayToken(static_cast<int32_t>(id));
    std::printf("  %4lld  %8lld  %11.6f  %8.3f  %s\n", static_cast<long long>(i + 1),
                static_cast<long long>(id), probs[id].item<double>(), values[i].item<double>(),
                shown.ok() ? ("\"" + *shown + "\"").c_str() : "?");
  }
  return 0;
}
