// Unit tests: error paths, added-token options, hand-built pipelines (expected values derived by
// hand from HF `tokenizers` semantics), DisplayToken, the BPE merge loop against a reference,
// thread safety. (SentencePiece tokenizer.model: sentencepiece_test.cc.)
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "analysis/tokenizer/bpe.h"
#include "analysis/tokenizer/tokenizer.h"
#include "tests/file_util.h"

namespace factlens {
namespace {

using ::testing::HasSubstr;
using Json = nlohmann::json;

std::string DataPath(const std::string& name) {
  return std::string(FACTLENS_TOKENIZER_DATA_DIR) + "/" + name + "/tokenizer.json";
}

const Tokenizer& Real(const std::string& name) {
  static std::map<std::string, std::unique_ptr<Tokenizer>>* const cache =
      new std::map<std::string, std::unique_ptr<Tokenizer>>();
  auto& slot = (*cache)[name];
  if (slot == nullptr) {
    auto t = Tokenizer::FromJsonFile(DataPath(name));
    if (!t.ok()) {
      ADD_FAILURE() << t.status();
      std::abort();
    }
    slot = std::move(*t);
  }
  return *slot;
}

// A minimal valid tokenizer.json; tests mutate it.
Json MinimalJson() {
  return Json::parse(R"({
    "version": "1.0", "added_tokens": [], "normalizer": null, "pre_tokenizer": null,
    "post_processor": null, "decoder": null,
    "model": {"type": "BPE", "dropout": null, "unk_token": null, "fuse_unk": false,
              "byte_fallback": false, "vocab": {"a": 0, "b": 1, "ab": 2, " ": 3},
              "merges": ["a b"]}
  })");
}

absl::Status LoadStatus(const Json& j) { return Tokenizer::FromJsonString(j.dump()).status(); }

// ---------------------------------------------------------------- invalid input text

TEST(InvalidUtf8, RejectedWithByteOffset) {
  const Tokenizer& t = Real("gpt2");
  struct Case {
    std::string text;
    size_t offset;
  };
  const Case cases[] = {
      {"abc\xff", 3},                  // invalid byte
      {"caf\xc3", 3},                  // truncated 2-byte sequence
      {"x\xe2\x82y", 1},               // truncated 3-byte sequence
      {"\xed\xa0\x80", 0},             // UTF-16 surrogate
      {"ok \xc0\xaf", 3},              // overlong
      {"\xf4\x90\x80\x80", 0},         // > U+10FFFF
      {std::string("a\0b\x80", 4), 3}  // embedded NUL is fine, lone continuation is not
  };
  for (const Case& c : cases) {
    auto enc = t.Encode(c.text, false);
    ASSERT_FALSE(enc.ok());
    EXPECT_EQ(enc.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(enc.status().message()),
                HasSubstr("byte offset " + std::to_string(c.offset)));
  }
}

// ---------------------------------------------------------------- malformed tokenizer.json

TEST(MalformedJson, NotJsonIsDataLoss) {
  auto t = Tokenizer::FromJsonString("{\"model\": ");
  EXPECT_EQ(t.status().code(), absl::StatusCode::kDataLoss);
  t = Tokenizer::FromJsonString("");
  EXPECT_EQ(t.status().code(), absl::StatusCode::kDataLoss);
}

TEST(MalformedJson, WrongTypesAreInvalidArgument) {
  EXPECT_EQ(Tokenizer::FromJsonString("[1, 2]").status().code(),
            absl::StatusCode::kInvalidArgument);
  Json j = MinimalJson();
  j.erase("model");
  EXPECT_EQ(LoadStatus(j).code(), absl::StatusCode::kInvalidArgument);
  j = MinimalJson();
  j["model"]["vocab"] = Json::array({"a", "b"});
  EXPECT_EQ(LoadStatus(j).code(), absl::StatusCode::kInvalidArgument);
  j = MinimalJson();
  j["model"]["vocab"]["a"] = "zero";
  EXPECT_EQ(LoadStatus(j).code(), absl::StatusCode::kInvalidArgument);
  j = MinimalJson();
  j["model"]["vocab"]["a"] = -1;
  EXPECT_EQ(LoadStatus(j).code(), absl::StatusCode::kInvalidArgument);
  j = MinimalJson();
  j["model"]["merges"] = "a b";
  EXPECT_EQ(LoadStatus(j).code(), absl::StatusCode::kInvalidArgument);
  j = MinimalJson();
  j["model"]["merges"] = Json::array({"a b c"});
  EXPECT_EQ(LoadStatus(j).code(), absl::StatusCode::kInvalidArgument);
  j = MinimalJson();
  j["model"]["merges"] = Json::array({Json::array({"a"})});
  EXPECT_EQ(LoadStatus(j).code(), absl::StatusCode::kInvalidArgument);
  j = MinimalJson();
  j["model"]["byte_fallback"] = "yes";
  EXPECT_EQ(LoadStatus(j).code(), absl::StatusCode::kInvalidArgument);
  j = MinimalJson();
  j["added_tokens"] = Json::object();
  EXPECT_EQ(LoadStatus(j).code(), absl::StatusCode::kInvalidArgument);
  j = MinimalJson();
  j["added_tokens"] = Json::parse(R"([{"id": "x", "content": "<s>"}])");
  EXPECT_EQ(LoadStatus(j).code(), absl::StatusCode::kInvalidArgument);
  j = MinimalJson();
  j["normalizer"] = Json::parse(R"({"type": "Prepend", "prepend": 5})");
  EXPECT_EQ(LoadStatus(j).code(), absl::StatusCode::kInvalidArgument);
  j = MinimalJson();
  j["pre_tokenizer"] = Json::parse(R"({"type": "Split", "pattern": {"Regex": "(unclosed"},
                                      "behavior": "Isolated", "invert": false})");
  absl::Status s = LoadStatus(j);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("regex"));
  j = MinimalJson();
  j["pre_tokenizer"] = Json::parse(R"({"type": "Split", "pattern": {"String": " "},
                                      "behavior": "Sideways"})");
  EXPECT_EQ(LoadStatus(j).code(), absl::StatusCode::kInvalidArgument);
  j = MinimalJson();
  j["post_processor"] = Json::parse(R"({"type": "TemplateProcessing",
      "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
      "special_tokens": {}})");
  s = LoadStatus(j);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("<s>"));
}

TEST(MalformedJson, MergesWithUnknownTokensAreRejected) {
  Json j = MinimalJson();
  j["model"]["merges"] = Json::array({"a zz"});
  absl::Status s = LoadStatus(j);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("\"zz\""));
  j = MinimalJson();
  j["model"]["merges"] = Json::array({"b a"});  // "ba" is not in the vocabulary
  s = LoadStatus(j);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("\"ba\""));
}

TEST(MalformedJson, UnknownComponentsAreUnimplemented) {
  Json j = MinimalJson();
  j["model"]["type"] = "WordPiece";
  absl::Status s = LoadStatus(j);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(std::string(s.message()), HasSubstr("WordPiece"));
  j = MinimalJson();
  j["pre_tokenizer"] = Json::parse(R"({"type": "BertPreTokenizer"})");
  s = LoadStatus(j);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(std::string(s.message()), HasSubstr("BertPreTokenizer"));
  j = MinimalJson();
  j["normalizer"] = Json::parse(R"({"type": "NFKD"})");
  EXPECT_EQ(LoadStatus(j).code(), absl::StatusCode::kUnimplemented);
  j = MinimalJson();
  j["decoder"] = Json::parse(R"({"type": "WordPiece"})");
  EXPECT_EQ(LoadStatus(j).code(), absl::StatusCode::kUnimplemented);
  j = MinimalJson();
  j["post_processor"] = Json::parse(R"({"type": "BertProcessing"})");
  EXPECT_EQ(LoadStatus(j).code(), absl::StatusCode::kUnimplemented);
  j = MinimalJson();
  j["pre_tokenizer"] = Json::parse(R"({"type": 7})");
  EXPECT_EQ(LoadStatus(j).code(), absl::StatusCode::kInvalidArgument);
}

TEST(MalformedJson, DeepNestingIsAnErrorNotAStackOverflow) {
  std::string nested = R"({"type": "Prepend", "prepend": "x"})";
  for (int i = 0; i < 100000; ++i) {
    nested = R"({"type": "Sequence", "normalizers": [)" + nested + "]}";
    if (i > 200) break;  // deep enough to trip the guard; keeps the JSON small
  }
  Json j = MinimalJson();
  j["normalizer"] = Json::parse(nested);
  absl::Status s = LoadStatus(j);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("nested too deeply"));
  // Deeply nested plain JSON (not components) is only a parse/type error.
  const std::string deep = std::string(200000, '[') + std::string(200000, ']');
  EXPECT_FALSE(Tokenizer::FromJsonString(deep).ok());
}

TEST(MalformedJson, MissingFilesAreNotFound) {
  EXPECT_EQ(Tokenizer::FromJsonFile("/nonexistent/tokenizer.json").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(Tokenizer::FromSentencePieceFile("/nonexistent/tokenizer.model").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(Tokenizer::FromModelDirectory("/nonexistent").status().code(),
            absl::StatusCode::kNotFound);
}

TEST(MalformedJson, TruncatedRealFilesNeverCrash) {
  const std::string full = testing::ReadFileToString(DataPath("llama2"));
  for (size_t len : {size_t{0}, size_t{1}, size_t{100}, full.size() / 2, full.size() - 2}) {
    auto t = Tokenizer::FromJsonString(std::string_view(full).substr(0, len));
    EXPECT_FALSE(t.ok());
  }
}

// ---------------------------------------------------------------- real tokenizers: API

TEST(RealTokenizers, VocabularyAndSpecialIds) {
  EXPECT_EQ(Real("gpt2").vocab_size(), 50257);
  EXPECT_EQ(Real("llama2").vocab_size(), 32000);
  EXPECT_EQ(Real("llama3").vocab_size(), 128256);
  EXPECT_EQ(Real("gpt2").bos_id(), 50256);
  EXPECT_EQ(Real("gpt2").eos_id(), 50256);
  EXPECT_EQ(Real("llama2").bos_id(), 1);
  EXPECT_EQ(Real("llama2").eos_id(), 2);
  EXPECT_EQ(Real("llama3").bos_id(), 128000);
  EXPECT_EQ(Real("llama3").eos_id(), 128001);
  EXPECT_EQ(Real("gpt2").TokenToId("ĠParis"), 6342);
  EXPECT_EQ(Real("gpt2").IdToToken(6342), "ĠParis");
  EXPECT_EQ(Real("llama2").TokenToId("▁Paris"), 5465);
  EXPECT_EQ(Real("llama3").TokenToId("<|reserved_special_token_0|>"), 128002);
  EXPECT_EQ(Real("llama3").IdToToken(128002), "<|reserved_special_token_0|>");
  EXPECT_EQ(Real("gpt2").IdToToken(50257), std::nullopt);
  EXPECT_EQ(Real("gpt2").IdToToken(-1), std::nullopt);
  EXPECT_EQ(Real("gpt2").TokenToId("no such token"), std::nullopt);
}

TEST(RealTokenizers, DisplayToken) {
  EXPECT_EQ(*Real("gpt2").DisplayToken(6342), " Paris");
  EXPECT_EQ(*Real("gpt2").DisplayToken(40313), "Paris");
  EXPECT_EQ(*Real("gpt2").DisplayToken(50256), "<|endoftext|>");
  // 447 = "âĢ" = bytes E2 80: not valid UTF-8 on its own -> visible escapes.
  EXPECT_EQ(*Real("gpt2").DisplayToken(447), "\\xe2\\x80");
  EXPECT_EQ(*Real("llama2").DisplayToken(5465), " Paris");  // "▁Paris", no stripping
  EXPECT_EQ(*Real("llama2").DisplayToken(229), "<0xE2>");   // byte fallback, invalid alone
  EXPECT_EQ(*Real("llama2").DisplayToken(68), "A");         // <0x41>
  EXPECT_EQ(*Real("llama2").DisplayToken(1), "<s>");
  EXPECT_EQ(*Real("llama3").DisplayToken(12366), " Paris");
  EXPECT_EQ(*Real("llama3").DisplayToken(128000), "<|begin_of_text|>");
  EXPECT_EQ(Real("llama3").DisplayToken(128256).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Real("llama3").DisplayToken(-5).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(RealTokenizers, DecodeSkipsSpecialTokensAndRejectsUnknownIds) {
  // Golden: llama2 "The capital of France is" -> [1, 415, 5565, 302, 4843, 349].
  const std::vector<int32_t> ids = {1, 415, 5565, 302, 4843, 349};
  EXPECT_EQ(*Real("llama2").Decode(ids, /*skip_special_tokens=*/true), "The capital of France is");
  EXPECT_EQ(*Real("llama2").Decode(ids, /*skip_special_tokens=*/false),
            "<s> The capital of France is");
  EXPECT_EQ(*Real("gpt2").Decode({50256, 318}, true), " is");
  auto bad = Real("gpt2").Decode({464, 50257});
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Real("gpt2").Decode({-1}).status().code(), absl::StatusCode::kInvalidArgument);
  // A lone byte token decodes to U+FFFD like HF (from_utf8_lossy / ByteFallback).
  EXPECT_EQ(*Real("gpt2").Decode({447}), "\xEF\xBF\xBD");
  EXPECT_EQ(*Real("llama2").Decode({229}), "\xEF\xBF\xBD");
  EXPECT_EQ(*Real("gpt2").Decode({}), "");
}

// Byte offsets must describe the same spans as HF's character offsets.
TEST(RealTokenizers, ByteOffsetsMatchGoldenCharacterOffsets) {
  const Json goldens = Json::parse(testing::ReadFileToString(
      std::string(FACTLENS_TOKENIZER_DATA_DIR) + "/tokenizer-goldens.json"));
  for (const char* name : {"gpt2", "llama2", "llama3"}) {
    for (const Json& c : goldens[name]["cases"]) {
      const std::string text = c["text"].get<std::string>();
      // Byte offset of each character start, plus the end.
      std::vector<size_t> char_to_byte;
      for (size_t i = 0; i < text.size(); ++i) {
        if ((static_cast<unsigned char>(text[i]) & 0xC0) != 0x80) char_to_byte.push_back(i);
      }
      char_to_byte.push_back(text.size());
      auto enc = Real(name).Encode(text, c["add_special_tokens"].get<bool>());
      ASSERT_TRUE(enc.ok());
      ASSERT_EQ(enc->byte_offsets.size(), c["offsets"].size());
      for (size_t k = 0; k < enc->byte_offsets.size(); ++k) {
        const size_t cb = c["offsets"][k][0].get<size_t>(), ce = c["offsets"][k][1].get<size_t>();
        EXPECT_EQ(enc->byte_offsets[k].first, char_to_byte[cb]) << name << " " << text << " #" << k;
        EXPECT_EQ(enc->byte_offsets[k].second, char_to_byte[ce])
            << name << " " << text << " #" << k;
      }
    }
  }
}

TEST(RealTokenizers, SpecialFlags) {
  auto enc = Real("llama2").Encode("<s> and </s>", true);
  ASSERT_TRUE(enc.ok());
  // Golden ids: [1, 1, 28705, 304, 28705, 2]
  ASSERT_EQ(enc->ids, (std::vector<int32_t>{1, 1, 28705, 304, 28705, 2}));
  EXPECT_EQ(enc->special, (std::vector<bool>{true, true, false, false, false, true}));
}

TEST(RealTokenizers, ConcurrentEncodeIsConsistent) {
  const Tokenizer& t = Real("llama3");
  const std::vector<std::string> texts = {
      "The capital of France is",     "日本語のテキストと中文混合",
      "def f(x):\n    return x**2\n", "emoji 😀👍🏽 family",
      "Привет, мир! Καλημέρα κόσμε",  "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"};
  std::vector<std::vector<int32_t>> want;
  for (const auto& s : texts) want.push_back(t.Encode(s, true)->ids);
  std::atomic<int> mismatches{0};
  auto work = [&]() {
    for (int rep = 0; rep < 200; ++rep) {
      for (size_t i = 0; i < texts.size(); ++i) {
        auto enc = t.Encode(texts[i] + std::to_string(rep), true);
        auto again = t.Encode(texts[i], true);
        if (!enc.ok() || !again.ok() || again->ids != want[i]) ++mismatches;
      }
    }
  };
  std::thread a(work), b(work);
  a.join();
  b.join();
  EXPECT_EQ(mismatches.load(), 0);
}

// Official Meta Llama-3 files add <|begin_of_text|> through a TemplateProcessing inside a
// Sequence post-processor. With that post-processor the golden ids must get 128000 in front
// (offsets [0, 0)) when add_special_tokens is set, and stay unchanged otherwise.
TEST(RealTokenizers, Llama3SequenceTemplatePostProcessor) {
  Json j = Json::parse(testing::ReadFileToString(DataPath("llama3")));
  j["post_processor"] = Json::parse(R"({"type": "Sequence", "processors": [
      {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
      {"type": "TemplateProcessing",
       "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                  {"Sequence": {"id": "A", "type_id": 0}}],
       "pair": [],
       "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [128000],
                                                "tokens": ["<|begin_of_text|>"]}}}]})");
  auto t = Tokenizer::FromJsonString(j.dump());
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ((*t)->bos_id(), 128000);
  const Json goldens = Json::parse(testing::ReadFileToString(
      std::string(FACTLENS_TOKENIZER_DATA_DIR) + "/tokenizer-goldens.json"));
  for (const Json& c : goldens["llama3"]["cases"]) {
    const bool add = c["add_special_tokens"].get<bool>();
    auto enc = (*t)->Encode(c["text"].get<std::string>(), add);
    ASSERT_TRUE(enc.ok());
    std::vector<int32_t> want = c["ids"].get<std::vector<int32_t>>();
    if (add) want.insert(want.begin(), 128000);
    EXPECT_EQ(enc->ids, want);
    if (add) {
      EXPECT_EQ(enc->offsets[0], (std::pair<size_t, size_t>{0, 0}));
      EXPECT_EQ(enc->tokens[0], "<|begin_of_text|>");
      EXPECT_TRUE(enc->special[0]);
    }
  }
}

// ---------------------------------------------------------------- BPE merge loop

TEST(Bpe, PriorityQueueMatchesQuadraticReference) {
  const Json j = Json::parse(testing::ReadFileToString(DataPath("llama3")));
  auto model = tok::BpeModel::FromJson(j["model"], /*byte_level=*/true);
  ASSERT_TRUE(model.ok()) << model.status();
  std::mt19937 rng(1234);
  const std::string alphabet = "aeiouthnrslmcd ";
  const std::vector<std::string> extra = {"é", "日本", "😀", "\n", "ing", "the", "0"};
  int compared = 0;
  for (int iter = 0; iter < 3000; ++iter) {
    std::string word;
    const int len = 1 + static_cast<int>(rng() % 40);
    for (int k = 0; k < len; ++k) {
      if (rng() % 6 == 0) {
        word += extra[rng() % extra.size()];
      } else {
        word.push_back(alphabet[rng() % alphabet.size()]);
      }
    }
    std::vector<tok::BpeSymbol> a, b;
    ASSERT_TRUE((*model)->InitialSymbols(word, &a).ok());
    b = a;
    (*model)->MergeWithQueue(&a);
    (*model)->MergeQuadratic(&b);
    std::vector<int32_t> ia, ib;
    for (const auto& s : a)
      if (s.len) ia.push_back(s.id);
    for (const auto& s : b)
      if (s.len) ib.push_back(s.id);
    ASSERT_EQ(ia, ib) << "word: " << word;
    ++compared;
  }
  EXPECT_EQ(compared, 3000);
}

// Llama-2-style vocabularies are cut at metaspace boundaries for caching; the result must equal
// merging the whole word at once.
TEST(Bpe, MetaspaceSplittingMatchesWholeWordMerging) {
  const Json j = Json::parse(testing::ReadFileToString(DataPath("llama2")));
  auto model = tok::BpeModel::FromJson(j["model"], /*byte_level=*/false);
  ASSERT_TRUE(model.ok()) << model.status();
  ASSERT_TRUE((*model)->splits_at_metaspace());
  std::mt19937 rng(99);
  const std::vector<std::string> atoms = {"▁", "▁", "▁", "the", "a", "ing", "Paris", "日", "本",
                                          "😀", "x", "é", "\n",  "1", "23",  "▁▁",    ",",  "'s"};
  for (int iter = 0; iter < 3000; ++iter) {
    std::string word;
    const int len = 1 + static_cast<int>(rng() % 30);
    for (int k = 0; k < len; ++k) word += atoms[rng() % atoms.size()];
    std::vector<tok::ModelToken> split, whole;
    ASSERT_TRUE((*model)->Tokenize(word, &split).ok());
    ASSERT_TRUE((*model)->TokenizeWhole(word, &whole).ok());
    ASSERT_EQ(split.size(), whole.size()) << word;
    for (size_t k = 0; k < split.size(); ++k) {
      ASSERT_EQ(split[k].id, whole[k].id) << word;
      ASSERT_EQ(split[k].begin, whole[k].begin) << word;
      ASSERT_EQ(split[k].end, whole[k].end) << word;
    }
  }
  // GPT-2 merges do join "x" + "▁…"-free byte tokens, but it is byte-level: never split.
  const Json g = Json::parse(testing::ReadFileToString(DataPath("gpt2")));
  auto gpt2 = tok::BpeModel::FromJson(g["model"], /*byte_level=*/true);
  ASSERT_TRUE(gpt2.ok());
  EXPECT_FALSE((*gpt2)->splits_at_metaspace());
}

// ---------------------------------------------------------------- hand-built pipelines

Json CharVocabJson(const std::string& chars) {
  Json j = MinimalJson();
  Json vocab = Json::object();
  int id = 0;
  for (char c : chars) vocab[std::string(1, c)] = id++;
  j["model"]["vocab"] = vocab;
  j["model"]["merges"] = Json::array();
  return j;
}

TEST(AddedTokens, LstripAndRstripTakeTheSpaces) {
  Json j = CharVocabJson("ab xy");  // ids a0 b1 ' '2 x3 y4
  j["added_tokens"] = Json::parse(R"([
    {"id": 10, "content": "<m>", "single_word": false, "lstrip": true, "rstrip": false,
     "normalized": false, "special": true},
    {"id": 11, "content": "<n>", "single_word": false, "lstrip": false, "rstrip": true,
     "normalized": false, "special": false}])");
  auto t = Tokenizer::FromJsonString(j.dump());
  ASSERT_TRUE(t.ok()) << t.status();
  auto enc = (*t)->Encode("a  <m>b<n>  x", false);
  ASSERT_TRUE(enc.ok());
  EXPECT_EQ(enc->ids, (std::vector<int32_t>{0, 10, 1, 11, 3}));
  EXPECT_EQ(enc->tokens, (std::vector<std::string>{"a", "  <m>", "b", "<n>  ", "x"}));
  EXPECT_EQ(enc->offsets,
            (std::vector<std::pair<size_t, size_t>>{{0, 1}, {1, 6}, {6, 7}, {7, 12}, {12, 13}}));
  EXPECT_EQ(enc->special, (std::vector<bool>{false, true, false, false, false}));
}

TEST(AddedTokens, SingleWordOnlyMatchesWholeWords) {
  Json j = CharVocabJson("abxy ");
  j["added_tokens"] = Json::parse(R"([
    {"id": 20, "content": "ab", "single_word": true, "lstrip": false, "rstrip": false,
     "normalized": false, "special": false}])");
  auto t = Tokenizer::FromJsonString(j.dump());
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ((*t)->Encode("xab ab", false)->ids, (std::vector<int32_t>{2, 0, 1, 4, 20}));
  EXPECT_EQ((*t)->Encode("ab", false)->ids, (std::vector<int32_t>{20}));
  EXPECT_EQ((*t)->Encode("aby", false)->ids, (std::vector<int32_t>{0, 1, 3}));
}

TEST(AddedTokens, LongestMatchWins) {
  Json j = CharVocabJson("ab");
  j["added_tokens"] = Json::parse(R"([
    {"id": 30, "content": "<a", "special": true, "normalized": false},
    {"id": 31, "content": "<ab>", "special": true, "normalized": false}])");
  auto t = Tokenizer::FromJsonString(j.dump());
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ((*t)->Encode("<ab><a", false)->ids, (std::vector<int32_t>{31, 30}));
}

TEST(Model, UnknownCharactersUseUnkAndFuseUnk) {
  Json j = MinimalJson();
  j["model"]["vocab"] = Json::parse(R"({"<unk>": 0, "a": 1})");
  j["model"]["merges"] = Json::array();
  j["model"]["unk_token"] = "<unk>";
  j["model"]["fuse_unk"] = true;
  auto fused = Tokenizer::FromJsonString(j.dump());
  ASSERT_TRUE(fused.ok()) << fused.status();
  auto enc = (*fused)->Encode("xéa", false);
  EXPECT_EQ(enc->ids, (std::vector<int32_t>{0, 1}));
  EXPECT_EQ(enc->offsets, (std::vector<std::pair<size_t, size_t>>{{0, 2}, {2, 3}}));
  j["model"]["fuse_unk"] = false;
  auto unfused = Tokenizer::FromJsonString(j.dump());
  ASSERT_TRUE(unfused.ok());
  EXPECT_EQ((*unfused)->Encode("xéa", false)->ids, (std::vector<int32_t>{0, 0, 1}));
  // Without unk_token unknown characters are dropped (HF behaviour).
  j["model"]["unk_token"] = nullptr;
  auto none = Tokenizer::FromJsonString(j.dump());
  ASSERT_TRUE(none.ok());
  EXPECT_EQ((*none)->Encode("xéa", false)->ids, (std::vector<int32_t>{1}));
}

TEST(Model, MergePairsAndStringsAreEquivalentAndIgnoreMerges) {
  Json j = MinimalJson();
  j["model"]["vocab"] = Json::parse(R"({"a": 0, "b": 1, "ab": 2, "c": 3, "abc": 4, "bc": 5})");
  j["model"]["merges"] = Json::parse(R"(["b c", "a b", "ab c"])");
  auto s = Tokenizer::FromJsonString(j.dump());
  ASSERT_TRUE(s.ok()) << s.status();
  // "b c" has the lowest rank: a|bc, and "a bc" is not a merge.
  EXPECT_EQ((*s)->Encode("abc", false)->ids, (std::vector<int32_t>{0, 5}));
  j["model"]["merges"] = Json::parse(R"([["b", "c"], ["a", "b"], ["ab", "c"]])");
  auto p = Tokenizer::FromJsonString(j.dump());
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ((*p)->Encode("abc", false)->ids, (std::vector<int32_t>{0, 5}));
  j["model"]["ignore_merges"] = true;
  auto ig = Tokenizer::FromJsonString(j.dump());
  ASSERT_TRUE(ig.ok()) << ig.status();
  EXPECT_EQ((*ig)->Encode("abc", false)->ids, (std::vector<int32_t>{4}));
}

TEST(Pipeline, MetaspacePreTokenizerAndDecoder) {
  Json j = MinimalJson();
  j["model"]["vocab"] = Json::parse(R"({"▁hello": 0, "▁world": 1, "▁": 2})");
  j["model"]["ignore_merges"] = true;  // whole words straight from the vocabulary
  j["model"]["merges"] = Json::array();
  j["pre_tokenizer"] = Json::parse(
      R"({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": true})");
  j["decoder"] = Json::parse(
      R"({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": true})");
  auto t = Tokenizer::FromJsonString(j.dump());
  ASSERT_TRUE(t.ok()) << t.status();
  auto enc = (*t)->Encode("hello world", false);
  ASSERT_TRUE(enc.ok());
  EXPECT_EQ(enc->ids, (std::vector<int32_t>{0, 1}));
  EXPECT_EQ(enc->offsets, (std::vector<std::pair<size_t, size_t>>{{0, 5}, {5, 11}}));
  EXPECT_EQ(*(*t)->Decode(enc->ids), "hello world");
  EXPECT_EQ(*(*t)->DisplayToken(0), " hello");
}

}  // namespace
}  // namespace factlens
