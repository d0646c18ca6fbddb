// factlens_locate: the fact-localization report for a prompt and a target, as text or JSON.
#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "analysis/cpu_threads.h"
#include "analysis/locate.h"
#include "analysis/report_format.h"
#include "analysis/text_input.h"
#include "analysis/tokenizer/tokenizer.h"
#include "analysis/weights.h"
#include "server/convert.h"
#include "server/default_model.h"
#include "server/flag_usage.h"

// The default is resolved next to the executable (server/default_model.h); --help shows it.
ABSL_FLAG(std::string, model, factlens::DefaultModelDirectoryOrEmpty(),
          "Model directory, or a Hugging Face repo id in the local HF cache. Default: the demo "
          "model, <prefix>/share/factlens/models/gpt2-facts-tiny beside <prefix>/bin");
ABSL_FLAG(std::string, prompt, "The capital of France is", "Prompt text");
ABSL_FLAG(std::string, target, " Paris", "Target text; must be exactly one token");
ABSL_FLAG(bool, first_token, false, "Use the first token of a multi-token --target");
ABSL_FLAG(std::string, json_out, "",
          "Also write the report as JSON (the schema of the server's FactReport, as the Python "
          "client writes it) to this file");
ABSL_FLAG(bool, json, false, "Print the JSON report (see --json_out) instead of text");
ABSL_FLAG(std::string, mode, "exact", "Neuron ranking: exact (pruned), exhaustive or approximate");
ABSL_FLAG(std::string, device, "cpu", "cpu, cuda or cuda:N");
ABSL_FLAG(
    std::string, dtype, "",
    "dtype: float32 (the default on CPU), float64 (a reference run whose results do not depend on "
    "the CPU's float32 kernels), bfloat16 or float16 (on CUDA the compute dtype; on CPU the "
    "weight matrices' dtype, half the memory, computed in float32)");
ABSL_FLAG(int, threads, 0,
          "CPU threads for libtorch (0 = OMP_NUM_THREADS if set, else one per core)");

namespace {

int Fail(const absl::Status& status) {
  std::cerr << "factlens_locate: " << status << "\n";
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  factlens::ParseFlags(argc, argv, "Prints the fact-localization report for a prompt and a target.",
                       "/tools/locate_main.");
  // --model, or else the demo model beside the binary.
  const absl::StatusOr<std::string> model_directory =
      factlens::ModelOrDefault(absl::GetFlag(FLAGS_model));
  if (!model_directory.ok()) return Fail(model_directory.status());
  factlens::ConfigureCpuThreads(absl::GetFlag(FLAGS_threads));
  factlens::LoadOptions load;
  load.device = absl::GetFlag(FLAGS_device);
  if (!absl::GetFlag(FLAGS_dtype).empty()) {
    absl::StatusOr<c10::ScalarType> dtype = factlens::ParseComputeDType(absl::GetFlag(FLAGS_dtype));
    if (!dtype.ok()) return Fail(dtype.status());
    load.dtype = *dtype;
  }
  absl::StatusOr<std::shared_ptr<const factlens::Model>> model =
      factlens::Model::Load(*model_directory, load);
  if (!model.ok()) return Fail(model.status());
  absl::StatusOr<std::unique_ptr<factlens::Tokenizer>> tokenizer =
      factlens::Tokenizer::FromModelDirectory((*model)->directory());
  if (!tokenizer.ok()) return Fail(tokenizer.status());

  absl::StatusOr<std::vector<int64_t>> ids =
      factlens::EncodePrompt(**tokenizer, absl::GetFlag(FLAGS_prompt));
  if (!ids.ok()) return Fail(ids.status());
  absl::StatusOr<factlens::ResolvedTarget> target =
      factlens::ResolveTarget(**tokenizer, absl::GetFlag(FLAGS_prompt), absl::GetFlag(FLAGS_target),
                              absl::GetFlag(FLAGS_first_token));
  if (!target.ok()) return Fail(target.status());

  factlens::LocateOptions options;
  absl::StatusOr<factlens::RankMode> mode = factlens::ParseRankMode(absl::GetFlag(FLAGS_mode));
  if (!mode.ok()) return Fail(mode.status());
  options.mode = *mode;
  absl::StatusOr<factlens::FactReport> report = factlens::LocateFact(
      **model, **tokenizer, *ids, *target, options, [](const std::string& stage, double fraction) {
        std::fprintf(stderr, "[%3.0f%%] %s\n", 100 * fraction, stage.c_str());
        return true;
      });
  if (!report.ok()) return Fail(report.status());
  for (const std::string& warning : report->warnings) {
    std::cerr << "factlens_locate: warning: " << warning << "\n";
  }
  // The server's report message in the Python client's JSON mapping: one schema for both.
  factlens::v1::FactReport message;
  factlens::FillFactReport(**tokenizer, *report, &message);
  const std::string json = factlens::ToJson(message);
  if (!absl::GetFlag(FLAGS_json_out).empty()) {
    std::ofstream(absl::GetFlag(FLAGS_json_out)) << json;
  }
  if (absl::GetFlag(FLAGS_json)) {
    std::cout << json;
  } else {
    std::cout << factlens::FormatFactReport(*report, **tokenizer);
  }
  return 0;
}
