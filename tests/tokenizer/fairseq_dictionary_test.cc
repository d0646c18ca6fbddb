// fairseq dict.txt word-level tokenizer (analysis/tokenizer/fairseq_dictionary.h): loading like
// fairseq's Dictionary.add_from_file (ids, #fairseq:overwrite, duplicate and malformed lines),
// encoding like fairseq LM scoring (Python whitespace split, <unk>, the </s> start token),
// decoding, DisplayToken, FromModelDirectory, and the ids of the baevski-tiny fixture
// (tests/data/fairseq-reference/baevski-tiny: dict.txt + reference.json). Expected values were
// derived from fairseq's dictionary.py / tokenizer.py and checked with Python 3.11.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "analysis/tokenizer/tokenizer.h"
#include "tests/file_util.h"

namespace factlens {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;
using Json = nlohmann::json;
using Offsets = std::vector<std::pair<size_t, size_t>>;

const std::string kFixtureDir =
    std::string(FACTLENS_SOURCE_DIR) + "/tests/data/fairseq-reference/baevski-tiny";

const Tokenizer& Fixture() {
  static const Tokenizer* const t = [] {
    auto loaded = Tokenizer::FromFairseqDictFile(kFixtureDir + "/dict.txt");
    if (!loaded.ok()) {
      ADD_FAILURE() << loaded.status();
      std::abort();
    }
    return loaded->release();
  }();
  return *t;
}

std::unique_ptr<Tokenizer> Load(const std::string& dict) {
  auto t = Tokenizer::FromFairseqDictString(dict);
  EXPECT_TRUE(t.ok()) << t.status();
  if (!t.ok()) return nullptr;
  return std::move(*t);
}

std::vector<int32_t> Ids(const Tokenizer& t, const std::string& text, bool specials) {
  auto enc = t.Encode(text, specials);
  EXPECT_TRUE(enc.ok()) << enc.status();
  return enc.ok() ? enc->ids : std::vector<int32_t>{-1};
}

// The status of loading `dict`; expects InvalidArgument.
std::string LoadError(const std::string& dict) {
  auto t = Tokenizer::FromFairseqDictString(dict);
  EXPECT_FALSE(t.ok()) << "loaded: " << dict;
  if (t.ok()) return "";
  EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument) << t.status();
  return std::string(t.status().message());
}

using testing::WriteAll;  // tests/file_util.h, like testing::ScopedTempDir

// ---------------------------------------------------------------- the fixture dictionary

TEST(FairseqFixture, Vocabulary) {
  const Tokenizer& t = Fixture();
  EXPECT_EQ(t.vocab_size(), 704);  // 700 lines + 4 specials (fixture README: vocab 704)
  EXPECT_EQ(t.IdToToken(0), "<s>");
  EXPECT_EQ(t.IdToToken(1), "<pad>");
  EXPECT_EQ(t.IdToToken(2), "</s>");
  EXPECT_EQ(t.IdToToken(3), "<unk>");
  EXPECT_EQ(t.IdToToken(4), "the");  // line 0
  EXPECT_EQ(t.IdToToken(5), ",");
  EXPECT_EQ(t.IdToToken(13), "@-@");
  EXPECT_EQ(t.IdToToken(701), "madeupword0000");
  EXPECT_EQ(t.IdToToken(703), "madeupword0002");
  EXPECT_EQ(t.IdToToken(704), std::nullopt);
  EXPECT_EQ(t.IdToToken(-1), std::nullopt);
  EXPECT_EQ(t.TokenToId("the"), 4);
  EXPECT_EQ(t.TokenToId("The"), 14);
  EXPECT_EQ(t.TokenToId("</s>"), 2);
  EXPECT_EQ(t.TokenToId("<unk>"), 3);
  EXPECT_EQ(t.TokenToId("Paris "), std::nullopt);
  EXPECT_EQ(t.TokenToId("nonexistent"), std::nullopt);
  EXPECT_EQ(t.bos_id(), 2);  // the start token fairseq LM scoring prepends
  EXPECT_EQ(t.eos_id(), 2);
  for (int32_t id = 0; id < t.vocab_size(); ++id) {
    const auto word = t.IdToToken(id);
    ASSERT_TRUE(word.has_value()) << id;
    EXPECT_EQ(t.TokenToId(*word), id) << *word;
  }
}

TEST(FairseqFixture, ReferenceCasesRoundTrip) {
  const Json ref = Json::parse(testing::ReadFileToString(kFixtureDir + "/reference.json"));
  const Tokenizer& t = Fixture();
  ASSERT_EQ(ref.at("cases").size(), 4u);
  for (const Json& c : ref.at("cases")) {
    const std::vector<int32_t> ids = c.at("input_ids").get<std::vector<int32_t>>();
    ASSERT_FALSE(ids.empty());
    ASSERT_EQ(ids[0], 2);  // fairseq LM inputs start with </s>
    const std::vector<int32_t> words(ids.begin() + 1, ids.end());
    auto text = t.Decode(words);
    ASSERT_TRUE(text.ok()) << text.status();
    // Decode -> Encode gives the ids back. <unk> (3) decodes to the literal "<unk>", which
    // fairseq's Dictionary.index maps to 3 again, so it round-trips too.
    EXPECT_EQ(Ids(t, *text, true), ids) << *text;
    EXPECT_EQ(Ids(t, *text, false), words) << *text;
    EXPECT_EQ(t.IdToToken(c.at("target").get<int32_t>()), c.at("target_word").get<std::string>());
  }
  // Case 1 contains <unk>; case 3 is the start token alone (empty text).
  EXPECT_THAT(ref["cases"][1]["input_ids"].get<std::vector<int32_t>>(), ::testing::Contains(3));
  EXPECT_EQ(*t.Decode(std::vector<int32_t>{}), "");
}

TEST(FairseqFixture, EncodesLikeLmScoring) {
  const Tokenizer& t = Fixture();
  auto enc = t.Encode("The capital of France is", true);
  ASSERT_TRUE(enc.ok()) << enc.status();
  EXPECT_THAT(enc->ids, ElementsAre(2, 14, 142, 7, 139, 15));
  EXPECT_THAT(enc->tokens, ElementsAre("</s>", "The", "capital", "of", "France", "is"));
  EXPECT_THAT(enc->special, ElementsAre(true, false, false, false, false, false));
  EXPECT_EQ(enc->offsets, (Offsets{{0, 0}, {0, 3}, {4, 11}, {12, 14}, {15, 21}, {22, 24}}));
  EXPECT_EQ(enc->byte_offsets, enc->offsets);
  EXPECT_EQ(*t.Decode(enc->ids), "</s> The capital of France is");
  EXPECT_EQ(*t.Decode(enc->ids, /*skip_special_tokens=*/true), "The capital of France is");
  // Case-sensitive; out-of-dictionary words are <unk> with the original word's offsets.
  enc = t.Encode("THE Capital of Paris", false);
  ASSERT_TRUE(enc.ok());
  EXPECT_THAT(enc->ids, ElementsAre(3, 3, 7, 140));
  EXPECT_THAT(enc->tokens, ElementsAre("<unk>", "<unk>", "of", "Paris"));
  EXPECT_THAT(enc->special, ElementsAre(false, false, false, false));
  EXPECT_EQ(enc->offsets, (Offsets{{0, 3}, {4, 11}, {12, 14}, {15, 20}}));
  // WikiText-103 tokenisation: punctuation and @-@ are separate words.
  EXPECT_THAT(Ids(t, "the city , the state @-@ of", false), ElementsAre(4, 99, 5, 4, 109, 13, 7));
  EXPECT_THAT(Ids(t, "the city, the", false), ElementsAre(4, 3, 4));
}

TEST(FairseqFixture, FromModelDirectoryFindsDictTxt) {
  // The fixture directory has model.pt + dict.txt and no tokenizer.json / tokenizer.model.
  auto t = Tokenizer::FromModelDirectory(kFixtureDir);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ((*t)->vocab_size(), 704);
  EXPECT_EQ((*t)->bos_id(), 2);
  EXPECT_THAT(Ids(**t, "the capital", true), ElementsAre(2, 4, 142));
}

// ---------------------------------------------------------------- encoding

TEST(FairseqEncode, EmptyAndWhitespaceOnlyText) {
  const Tokenizer& t = Fixture();
  for (const std::string text : {"", " ", "\n", " \t\r\n \xc2\xa0\xe3\x80\x80"}) {
    auto enc = t.Encode(text, true);
    ASSERT_TRUE(enc.ok());
    EXPECT_THAT(enc->ids, ElementsAre(2));
    EXPECT_THAT(enc->tokens, ElementsAre("</s>"));
    EXPECT_EQ(enc->offsets, (Offsets{{0, 0}}));
    EXPECT_EQ(enc->byte_offsets, (Offsets{{0, 0}}));
    EXPECT_THAT(enc->special, ElementsAre(true));
    enc = t.Encode(text, false);
    ASSERT_TRUE(enc.ok());
    EXPECT_TRUE(enc->ids.empty());
    EXPECT_TRUE(enc->tokens.empty() && enc->offsets.empty() && enc->byte_offsets.empty() &&
                enc->special.empty());
  }
}

TEST(FairseqEncode, PythonWhitespaceSeparatesWords) {
  const Tokenizer& t = Fixture();
  // Every character for which Python's str.isspace() is true (= `\s` of a str regex, which
  // fairseq's tokenize_line uses).
  const uint32_t kPythonSpaces[] = {0x09,   0x0A,   0x0B,   0x0C,   0x0D,   0x1C,   0x1D,   0x1E,
                                    0x1F,   0x20,   0x85,   0xA0,   0x1680, 0x2000, 0x2001, 0x2002,
                                    0x2003, 0x2004, 0x2005, 0x2006, 0x2007, 0x2008, 0x2009, 0x200A,
                                    0x2028, 0x2029, 0x202F, 0x205F, 0x3000};
  const auto utf8 = [](uint32_t cp) {
    std::string s;
    if (cp < 0x80) {
      s += static_cast<char>(cp);
    } else if (cp < 0x800) {
      s += static_cast<char>(0xC0 | (cp >> 6));
      s += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      s += static_cast<char>(0xE0 | (cp >> 12));
      s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      s += static_cast<char>(0x80 | (cp & 0x3F));
    }
    return s;
  };
  for (const uint32_t cp : kPythonSpaces) {
    const std::string sp = utf8(cp);
    const std::string text = sp + "the" + sp + sp + "city" + sp;
    auto enc = t.Encode(text, false);
    ASSERT_TRUE(enc.ok());
    EXPECT_THAT(enc->ids, ElementsAre(4, 99)) << "U+" << std::hex << cp;
    const size_t n = sp.size();
    EXPECT_EQ(enc->byte_offsets, (Offsets{{n, n + 3}, {3 * n + 3, 3 * n + 7}}));
    EXPECT_EQ(enc->offsets, (Offsets{{1, 4}, {6, 10}}));
  }
  // Not whitespace for Python: zero-width space, BOM, Mongolian vowel separator, NUL.
  for (const uint32_t cp : {0x200Bu, 0xFEFFu, 0x180Eu, 0x0u}) {
    EXPECT_THAT(Ids(t, "the" + utf8(cp) + "city", false), ElementsAre(3)) << std::hex << cp;
  }
}

TEST(FairseqEncode, UnicodeOffsetsAreCharacterOffsets) {
  // Words "café", "日本", "😀".
  const auto owned = Load("caf\xc3\xa9 5\n\xe6\x97\xa5\xe6\x9c\xac 4\n\xf0\x9f\x98\x80 3\n");
  ASSERT_NE(owned, nullptr);
  const Tokenizer& t = *owned;
  // "café 日本\u3000😀 naïve"
  const std::string text =
      "caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac\xe3\x80\x80\xf0\x9f\x98\x80 na\xc3\xafve";
  auto enc = t.Encode(text, true);
  ASSERT_TRUE(enc.ok());
  EXPECT_THAT(enc->ids, ElementsAre(2, 4, 5, 6, 3));
  EXPECT_THAT(enc->tokens, ElementsAre("</s>", "caf\xc3\xa9", "\xe6\x97\xa5\xe6\x9c\xac",
                                       "\xf0\x9f\x98\x80", "<unk>"));
  EXPECT_EQ(enc->offsets, (Offsets{{0, 0}, {0, 4}, {5, 7}, {8, 9}, {10, 15}}));
  EXPECT_EQ(enc->byte_offsets, (Offsets{{0, 0}, {0, 5}, {6, 12}, {15, 19}, {20, 26}}));
  // Invalid UTF-8 input is rejected by the facade, naming the byte offset.
  auto bad = t.Encode("caf\xc3 x", false);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("3"));
}

TEST(FairseqEncode, SpecialSymbolsWrittenInTheText) {
  // fairseq's Dictionary.index looks the specials up like any word.
  const Tokenizer& t = Fixture();
  auto enc = t.Encode("<s> the </s> <pad> <unk> <UNK>", false);
  ASSERT_TRUE(enc.ok());
  EXPECT_THAT(enc->ids, ElementsAre(0, 4, 2, 1, 3, 3));
  EXPECT_THAT(enc->tokens, ElementsAre("<s>", "the", "</s>", "<pad>", "<unk>", "<unk>"));
  EXPECT_THAT(enc->special, ElementsAre(true, false, true, true, true, false));
}

TEST(FairseqEncode, ConcurrentEncodeIsConsistent) {
  const Tokenizer& t = Fixture();
  const std::string text = "the city of Paris is the capital of France \xc2\xa0 zzz";
  const std::vector<int32_t> expected = Ids(t, text, true);
  std::vector<std::thread> threads;
  std::vector<int> bad(8, 0);
  for (int k = 0; k < 8; ++k) {
    threads.emplace_back([&, k] {
      for (int i = 0; i < 200; ++i) {
        auto enc = t.Encode(text, true);
        if (!enc.ok() || enc->ids != expected) ++bad[k];
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int k = 0; k < 8; ++k) EXPECT_EQ(bad[k], 0);
}

// ---------------------------------------------------------------- decoding and display

TEST(FairseqDecode, JoinsWordsAndSkipsSpecials) {
  const Tokenizer& t = Fixture();
  EXPECT_EQ(*t.Decode({2, 14, 142, 3, 0, 1, 7}), "</s> The capital <unk> <s> <pad> of");
  EXPECT_EQ(*t.Decode({2, 14, 142, 3, 0, 1, 7}, true), "The capital of");
  EXPECT_EQ(*t.Decode({2, 3}, true), "");
  EXPECT_EQ(*t.Decode({703}), "madeupword0002");
  for (const int32_t bad : {-1, 704, 1 << 30}) {
    auto d = t.Decode({4, bad}, true);
    ASSERT_FALSE(d.ok());
    EXPECT_EQ(d.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(d.status().message()), HasSubstr("position 1"));
  }
}

TEST(FairseqDecode, DisplayToken) {
  const Tokenizer& t = Fixture();
  EXPECT_EQ(*t.DisplayToken(140), " Paris");  // like GPT-2's "ĠParis"
  EXPECT_EQ(*t.DisplayToken(5), " ,");
  EXPECT_EQ(*t.DisplayToken(13), " @-@");
  EXPECT_EQ(*t.DisplayToken(0), "<s>");
  EXPECT_EQ(*t.DisplayToken(1), "<pad>");
  EXPECT_EQ(*t.DisplayToken(2), "</s>");
  EXPECT_EQ(*t.DisplayToken(3), "<unk>");
  EXPECT_EQ(t.DisplayToken(704).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(t.DisplayToken(-5).status().code(), absl::StatusCode::kInvalidArgument);
}

// ---------------------------------------------------------------- dict.txt parsing

TEST(FairseqParse, IdsFollowLines) {
  auto t = Load("b 10\na 5\nmadeupword0000 0\n");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->vocab_size(), 7);
  EXPECT_EQ(t->TokenToId("b"), 4);
  EXPECT_EQ(t->TokenToId("a"), 5);
  EXPECT_EQ(t->TokenToId("madeupword0000"), 6);
  // An empty file is valid: only the specials.
  t = Load("");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->vocab_size(), 4);
  EXPECT_THAT(Ids(*t, "a b", true), ElementsAre(2, 3, 3));
  // No final newline; CRLF and lone CR end lines like Python's universal newlines.
  t = Load("a 1\r\nb 2\rc 3");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->vocab_size(), 7);
  EXPECT_THAT(Ids(*t, "c b a", false), ElementsAre(6, 5, 4));
}

TEST(FairseqParse, SplitsOnTheLastSpaceLikePython) {
  // line.rstrip().rsplit(" ", 1): the word may contain spaces (and end with one), trailing
  // whitespace (Unicode too) is dropped, the count is read like int() (whitespace, sign, `_`).
  auto t = Load(
      "a b 5\n"
      "x  7\n"
      "tab\t \t3 \t\xc2\xa0\n"
      "neg -1\n"
      "plus +2\n"
      "under 1_000\n"
      "zero 007\n"
      "\xe3\x80\x80lead 1\n"
      " 0\n"
      "fullwidth \xef\xbc\x95\n"      // int("５") == 5
      "arabic \xd9\xa1_\xd9\xa2\n");  // int("١_٢") == 12
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->vocab_size(), 15);
  EXPECT_EQ(t->IdToToken(4), "a b");
  EXPECT_EQ(t->IdToToken(5), "x ");
  EXPECT_EQ(t->IdToToken(6), "tab\t");
  EXPECT_EQ(t->IdToToken(7), "neg");
  EXPECT_EQ(t->IdToToken(8), "plus");
  EXPECT_EQ(t->IdToToken(9), "under");
  EXPECT_EQ(t->IdToToken(10), "zero");
  EXPECT_EQ(t->IdToToken(11), "\xe3\x80\x80lead");
  EXPECT_EQ(t->IdToToken(12), "");
  // Such words can be decoded but never produced by the whitespace split.
  EXPECT_EQ(*t->Decode({4, 12, 5}), "a b  x ");
  EXPECT_THAT(Ids(*t, "a b x lead", false), ElementsAre(3, 3, 3, 3));
}

TEST(FairseqParse, MalformedLinesNameTheLine) {
  struct Case {
    std::string dict;
    std::string where;
  };
  const Case cases[] = {
      {"a 1\nnospace\n", "line 2:"},
      {"a 1\nb\t2\n", "line 2:"},            // only an ASCII space separates the count
      {"a 1\nb two\n", "line 2:"},           // not an integer
      {"a 1\nb 1.5\n", "line 2:"},           // not an integer
      {"a 1\nb 0x10\n", "line 2:"},          // int() is base 10
      {"a 1\nb 1__0\n", "line 2:"},          // `_` only between digits
      {"a 1\nb _1\n", "line 2:"},            //
      {"a 1\nb 1_\n", "line 2:"},            //
      {"a 1\nb -\n", "line 2:"},             //
      {"a 1\nb \xc2\xb2\n", "line 2:"},      // superscript two: a digit, not decimal (No)
      {"a 1\nb \xe2\x85\xa0\n", "line 2:"},  // Roman numeral one (Nl)
      {"a 1\nb \n", "line 2:"},              // rstrip() leaves "b"
      {"a 1\n\nb 2\n", "line 2:"},           // blank lines are errors in fairseq too
      {"a 1\r\n\r\nb 2\n", "line 2:"},       // CRLF counts as one line break
      {"a 1\rb\n", "line 2:"},               // a lone CR ends a line
      {"a 1\nb 2\nc 3 #fairseq:overwrite extra\n", "line 3:"},
      {"#fairseq:overwrite\n", "line 1:"},
      {"a #fairseq:overwrite\n", "line 1:"},
      {"a 1\nb x #fairseq:overwrite\n", "line 2:"},
  };
  for (const Case& c : cases) {
    const std::string msg = LoadError(c.dict);
    EXPECT_THAT(msg, HasSubstr(c.where)) << c.dict;
    EXPECT_THAT(msg, HasSubstr("expected \"<word> <count>\"")) << c.dict;
  }
  // The message quotes (the start of) the line.
  EXPECT_THAT(LoadError("a 1\nhello world\n"), HasSubstr("got \"hello world\""));
  EXPECT_THAT(LoadError("x 1\n" + std::string(100, 'w') + "\xc3\xa9\xc3\xa9 y\n"),
              HasSubstr("..."));
}

TEST(FairseqParse, InvalidUtf8NamesTheLine) {
  const std::string msg = LoadError("a 1\nb 2\nc\xff 3\n");
  EXPECT_THAT(msg, HasSubstr("line 3:"));
  EXPECT_THAT(msg, HasSubstr("UTF-8"));
  EXPECT_THAT(LoadError("a 1\n\xed\xa0\x80 2\n"), HasSubstr("line 2:"));  // surrogate
  // fairseq decodes the whole file first: invalid UTF-8 is reported before an earlier bad line.
  EXPECT_THAT(LoadError("bad\nc\xff 3\n"), HasSubstr("line 2: invalid UTF-8"));
}

TEST(FairseqParse, DuplicateWordsAreErrors) {
  std::string msg = LoadError("a 1\nb 2\na 3\n");
  EXPECT_THAT(msg, HasSubstr("line 3:"));
  EXPECT_THAT(msg, HasSubstr("duplicate word \"a\""));
  EXPECT_THAT(msg, HasSubstr("line 1"));
  EXPECT_THAT(msg, HasSubstr("#fairseq:overwrite"));
  // The specials are in the dictionary before the first line.
  for (const std::string special : {"<s>", "<pad>", "</s>", "<unk>"}) {
    msg = LoadError("a 1\n" + special + " 7\n");
    EXPECT_THAT(msg, HasSubstr("line 2:"));
    EXPECT_THAT(msg, HasSubstr("special symbol"));
  }
  // Case matters; "a " (with a trailing space) is another word than "a".
  auto t = Load("a 1\nA 2\na  3\n");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->vocab_size(), 7);
}

TEST(FairseqParse, OverwriteFlag) {
  // An overwriting line gets its own id (k + 4); the word now maps to the newest id and the old
  // id still decodes to the word (fairseq's add_symbol(overwrite=True)).
  auto t = Load("a 1\nb 2\na 3 #fairseq:overwrite\nc 4 #fairseq:overwrite\n");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->vocab_size(), 8);
  EXPECT_EQ(t->TokenToId("a"), 6);
  EXPECT_EQ(t->TokenToId("c"), 7);  // the flag on a new word is harmless
  EXPECT_EQ(t->IdToToken(4), "a");
  EXPECT_EQ(t->IdToToken(6), "a");
  EXPECT_THAT(Ids(*t, "a b c", true), ElementsAre(2, 6, 5, 7));
  EXPECT_EQ(*t->Decode({4, 6}), "a a");
  // Overwriting a special: the text "</s>" becomes an ordinary word; the start token stays 2.
  t = Load("x 1\n</s> 0 #fairseq:overwrite\n");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->TokenToId("</s>"), 5);
  EXPECT_EQ(t->bos_id(), 2);
  auto enc = t->Encode("</s> x", true);
  ASSERT_TRUE(enc.ok());
  EXPECT_THAT(enc->ids, ElementsAre(2, 5, 4));
  EXPECT_THAT(enc->special, ElementsAre(true, false, false));
  EXPECT_EQ(*t->DisplayToken(5), " </s>");
  EXPECT_EQ(*t->Decode({2, 5, 4}, true), "</s> x");  // only ids 0..3 are skipped
  // A duplicate after an overwrite still needs the flag.
  EXPECT_THAT(LoadError("a 1\na 2 #fairseq:overwrite\na 3\n"), HasSubstr("line 3:"));
}

TEST(FairseqParse, SizeLimit) {
  std::string big(64u << 20, 'x');
  big += " 1\n";
  const std::string msg = LoadError(big);
  EXPECT_THAT(msg, HasSubstr("too large"));
}

// ---------------------------------------------------------------- files and directories

TEST(FairseqFiles, FileErrorsNameThePath) {
  testing::ScopedTempDir dir;
  EXPECT_EQ(Tokenizer::FromFairseqDictFile(dir.path() + "/missing.txt").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(Tokenizer::FromFairseqDictFile(dir.path()).status().code(),
            absl::StatusCode::kNotFound);
  const std::string path = dir.path() + "/dict.txt";
  WriteAll(path, "a 1\nb\n");
  auto t = Tokenizer::FromFairseqDictFile(path);
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(t.status().message()), HasSubstr(path + ": line 2:"));
  // FromModelDirectory reports the same error.
  auto d = Tokenizer::FromModelDirectory(dir.path());
  ASSERT_FALSE(d.ok());
  EXPECT_THAT(std::string(d.status().message()), HasSubstr(path + ": line 2:"));
}

TEST(FairseqFiles, ModelDirectoryPrefersTokenizerJson) {
  testing::ScopedTempDir dir;
  auto missing = Tokenizer::FromModelDirectory(dir.path());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr("dict.txt"));
  WriteAll(dir.path() + "/dict.txt", "hello 3\nworld 2\n");
  auto from_dict = Tokenizer::FromModelDirectory(dir.path());
  ASSERT_TRUE(from_dict.ok()) << from_dict.status();
  EXPECT_EQ((*from_dict)->vocab_size(), 6);
  EXPECT_THAT(Ids(**from_dict, "hello world", true), ElementsAre(2, 4, 5));
  WriteAll(dir.path() + "/tokenizer.json", R"({
    "version": "1.0", "added_tokens": [], "normalizer": null, "pre_tokenizer": null,
    "post_processor": null, "decoder": null,
    "model": {"type": "BPE", "dropout": null, "unk_token": null, "fuse_unk": false,
              "byte_fallback": false, "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]}
  })");
  auto from_json = Tokenizer::FromModelDirectory(dir.path());
  ASSERT_TRUE(from_json.ok()) << from_json.status();
  EXPECT_EQ((*from_json)->vocab_size(), 3);
}

}  // namespace
}  // namespace factlens
