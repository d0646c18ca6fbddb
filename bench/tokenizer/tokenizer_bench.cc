// Encode throughput (MB/s of UTF-8 input) of the vendored GPT-2, Llama-2 and Llama-3
// tokenizer.json files on ~3 MB of deterministic mixed-script text: English prose, code, CJK,
// emoji (with ZWJ sequences and flags), Cyrillic/Greek, Arabic, numbers and whitespace runs.
// The text is encoded paragraph by paragraph (~1-2 KB each), the way prompts and documents are.
//
//   build-tok/bench/tokenizer/tokenizer_bench [--benchmark_min_time=2]
#include <benchmark/benchmark.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "analysis/tokenizer/tokenizer.h"

namespace factlens {
namespace {

// Deterministic generator (no std::random distributions: their output is implementation-defined).
class Lcg {
 public:
  uint32_t Next() {
    state_ = state_ * 6364136223846793005ULL + 1442695040888963407ULL;
    return static_cast<uint32_t>(state_ >> 33);
  }
  size_t Below(size_t n) { return Next() % n; }

 private:
  uint64_t state_ = 0x5eed;
};

std::vector<std::string> MakeParagraphs(size_t total_bytes) {
  static const char* kEnglish[] = {"the",
                                   "capital",
                                   "of",
                                   "France",
                                   "is",
                                   "Paris",
                                   "and",
                                   "tokenizer",
                                   "throughput",
                                   "measures",
                                   "how",
                                   "quickly",
                                   "we",
                                   "can",
                                   "split",
                                   "text",
                                   "into",
                                   "tokens",
                                   "model",
                                   "attention",
                                   "layer",
                                   "neuron",
                                   "fact",
                                   "knowledge",
                                   "Duncan",
                                   "basketball",
                                   "I'm",
                                   "they've",
                                   "didn't",
                                   "John's",
                                   "supercalifragilisticexpialidocious",
                                   "Eiffel",
                                   "Tower"};
  static const char* kCode[] = {"def f(x):\n    return x**2  # square\n",
                                "for (int i = 0; i < n; ++i) { sum += a[i]; }\n",
                                "if err != nil {\n\treturn nil, err\n}\n",
                                "const auto it = map.find(key);\n",
                                "SELECT id, name FROM users WHERE age > 42;\n",
                                "x = {\"key\": [1, 2, 3], 'v': None}\n"};
  static const char* kCjk[] = {
      "日本語",           "のテキスト", "と",     "中文",    "混合", "東京は日本の首都です",
      "北京是中国的首都", "한국어",     "텍스트", "カタカナ"};
  static const char* kEmoji[] = {"😀", "👍🏽", "👨‍👩‍👧", "🇫🇷", "🎉", "❤️",
                                 "🚀", "🤖"};
  static const char* kOther[] = {"Привет", "мир",     "столица", "Франции", "Καλημέρα", "κόσμε",
                                 "مرحبا",  "بالعالم", "café",    "naïve",   "Ångström", "résumé"};
  static const char* kSpaces[] = {" ",  " ",  " ",    "  ",   "   ",
                                  "\t", "\n", "\n\n", "    ", " \u00a0"};
  Lcg rng;
  std::vector<std::string> paragraphs;
  size_t total = 0;
  while (total < total_bytes) {
    std::string p;
    const size_t target = 800 + rng.Below(1200);
    while (p.size() < target) {
      const size_t kind = rng.Below(100);
      if (kind < 55) {
        p += kEnglish[rng.Below(sizeof(kEnglish) / sizeof(*kEnglish))];
      } else if (kind < 63) {
        p += kCode[rng.Below(sizeof(kCode) / sizeof(*kCode))];
      } else if (kind < 73) {
        p += kCjk[rng.Below(sizeof(kCjk) / sizeof(*kCjk))];
      } else if (kind < 78) {
        p += kEmoji[rng.Below(sizeof(kEmoji) / sizeof(*kEmoji))];
      } else if (kind < 88) {
        p += kOther[rng.Below(sizeof(kOther) / sizeof(*kOther))];
      } else {
        p += std::to_string(rng.Next() % 100000);
        if (rng.Below(3) == 0) p += "." + std::to_string(rng.Below(1000));
      }
      p += kSpaces[rng.Below(sizeof(kSpaces) / sizeof(*kSpaces))];
    }
    total += p.size();
    paragraphs.push_back(std::move(p));
  }
  return paragraphs;
}

const std::vector<std::string>& Paragraphs() {
  static const auto* const p = new std::vector<std::string>(MakeParagraphs(3 << 20));
  return *p;
}

void BM_Encode(benchmark::State& state, const char* name) {
  auto tok = Tokenizer::FromJsonFile(std::string(FACTLENS_TOKENIZER_DATA_DIR) + "/" + name +
                                     "/tokenizer.json");
  if (!tok.ok()) {
    state.SkipWithError(std::string(tok.status().message()).c_str());
    return;
  }
  const auto& paragraphs = Paragraphs();
  size_t bytes = 0, tokens = 0;
  for (const auto& p : paragraphs) bytes += p.size();
  for (auto _ : state) {
    tokens = 0;
    for (const auto& p : paragraphs) {
      auto enc = (*tok)->Encode(p, /*add_special_tokens=*/true);
      if (!enc.ok()) {
        state.SkipWithError("encode failed");
        return;
      }
      tokens += enc->ids.size();
      benchmark::DoNotOptimize(enc->ids.data());
    }
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * bytes));
  state.counters["input_MB"] = static_cast<double>(bytes) / 1e6;
  state.counters["tokens"] = static_cast<double>(tokens);
  state.counters["bytes_per_token"] = static_cast<double>(bytes) / static_cast<double>(tokens);
}

BENCHMARK_CAPTURE(BM_Encode, gpt2, "gpt2")->Unit(benchmark::kMillisecond)->MinTime(2.0);
BENCHMARK_CAPTURE(BM_Encode, llama2, "llama2")->Unit(benchmark::kMillisecond)->MinTime(2.0);
BENCHMARK_CAPTURE(BM_Encode, llama3, "llama3")->Unit(benchmark::kMillisecond)->MinTime(2.0);

}  // namespace
}  // namespace factlens

BENCHMARK_MAIN();
