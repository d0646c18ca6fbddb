// Conversions between factlens.v1 messages and analysis/ types, with request validation.
#ifndef FACTLENS_SERVER_CONVERT_H_
#define FACTLENS_SERVER_CONVERT_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "analysis/attribution.h"
#include "analysis/components.h"
#include "analysis/decompose.h"
#include "analysis/locate.h"
#include "analysis/rank.h"
#include "analysis/text_input.h"
#include "factlens/v1/factlens.pb.h"
#include "server/model_registry.h"

namespace factlens {

struct ServiceOptions;

// The prompt's token ids. InvalidArgument naming `prompt` when it is missing, empty, invalid UTF-8
// or holds ids outside the vocabulary; ResourceExhausted when longer than max_prompt_tokens.
absl::StatusOr<std::vector<int64_t>> PromptIds(const ServedModel& model, const v1::Prompt& prompt,
                                               int max_prompt_tokens);

// The target token (see v1::Target), with its spaced alternative for a text target that may be
// missing its leading space. InvalidArgument naming `target`.
absl::StatusOr<ResolvedTarget> TargetId(const ServedModel& model, const v1::Target& target,
                                        const v1::Prompt& prompt, int max_prompt_tokens);

// Text longer than any `max_tokens` tokens can be (kMaxTokenBytes each) is ResourceExhausted
// naming `field`, before any tokenizing: a huge text costs nothing.
inline constexpr size_t kMaxTokenBytes = 1024;
absl::Status CheckTextLength(const char* field, const std::string& text, int max_tokens);

// Model names longer than this are InvalidArgument (and logged cut to this length).
inline constexpr size_t kMaxModelNameBytes = 256;

// `top_k` with 0 meaning `fallback`; InvalidArgument when negative, ResourceExhausted above
// `limit`.
absl::StatusOr<int64_t> TopK(const char* field, int64_t top_k, int64_t fallback, int64_t limit);

// A request position (absent = -1) resolved against `num_tokens`; InvalidArgument naming
// `position`.
absl::StatusOr<int64_t> ResolvePosition(const std::optional<int32_t>& position, int64_t num_tokens);

absl::StatusOr<ComponentRef> ToComponentRef(const v1::Component& component);
v1::Component ToProto(const ComponentRef& ref);
Metric ToMetric(v1::Metric metric);
RankMode ToRankMode(v1::RankMode mode);
v1::RankMode ToProto(RankMode mode);

// The analysis level of a RankRequest level; InvalidArgument naming `level` when unspecified.
absl::StatusOr<RankLevel> ToRankLevel(v1::RankRequest::Level level);
// A ranked component, with the source token (id and text) of head positions and attention
// neurons from the prompt's `ids`.
void FillRankedComponent(const Tokenizer& tokenizer, const std::vector<int64_t>& ids,
                         const RankedComponent& ranked, v1::RankedComponent* out);

void FillTokenScore(const Tokenizer& tokenizer, int64_t id, double score, v1::TokenScore* out);
void FillOutcome(const TargetOutcome& outcome, v1::TargetOutcome* out);
void FillLensSteps(const Tokenizer& tokenizer, const std::vector<LensStep>& steps,
                   google::protobuf::RepeatedPtrField<v1::LensStep>* out);
void FillFactReport(const Tokenizer& tokenizer, const FactReport& report, v1::FactReport* out);
// `message` in the protobuf JSON mapping exactly as the Python client writes it (to_dict, save,
// `factlens ... --json`): proto field names, zero values printed, int64 as strings, enums by name.
// One schema for the server's results and factlens_locate --json. Indented by 1.
std::string ToJson(const google::protobuf::Message& message);
// `token_id` is the prompt token at the decomposed position; vectors are copied (as float32)
// only when `include_vectors`.
void FillDecomposition(const Tokenizer& tokenizer, const PositionDecomposition& decomposition,
                       int64_t token_id, bool include_vectors, v1::PositionDecomposition* out);

}  // namespace factlens

#endif  // FACTLENS_SERVER_CONVERT_H_
