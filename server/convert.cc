#include "server/convert.h"

#include <google/protobuf/util/json_util.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "analysis/report_format.h"
#include "analysis/status_macros.h"
#include "analysis/text_input.h"

namespace factlens {

absl::StatusOr<std::vector<int64_t>> PromptIds(const ServedModel& model, const v1::Prompt& prompt,
                                               int max_prompt_tokens) {
  std::vector<int64_t> ids;
  switch (prompt.input_case()) {
    case v1::Prompt::kText: {
      FACTLENS_RETURN_IF_ERROR(CheckTextLength("prompt", prompt.text(), max_prompt_tokens));
      absl::StatusOr<std::vector<int64_t>> encoded = EncodePrompt(*model.tokenizer, prompt.text());
      if (!encoded.ok()) return encoded.status();
      ids = *std::move(encoded);
      break;
    }
    case v1::Prompt::kTokenIds:
      ids.assign(prompt.token_ids().ids().begin(), prompt.token_ids().ids().end());
      if (ids.empty()) return absl::InvalidArgumentError("prompt.token_ids: is empty");
      for (size_t i = 0; i < ids.size(); ++i) {
        if (ids[i] < 0 || ids[i] >= model.model->config().vocab_size) {
          return absl::InvalidArgumentError(absl::StrCat("prompt.token_ids[", i, "]: ", ids[i],
                                                         " is outside the vocabulary [0, ",
                                                         model.model->config().vocab_size, ")"));
        }
      }
      break;
    default:
      return absl::InvalidArgumentError("prompt: give text or token_ids");
  }
  if (static_cast<int64_t>(ids.size()) > max_prompt_tokens) {
    return absl::ResourceExhaustedError(absl::StrCat("prompt: ", ids.size(),
                                                     " tokens exceed the server's limit of ",
                                                     max_prompt_tokens, " (--max_prompt_tokens)"));
  }
  if (static_cast<int64_t>(ids.size()) > model.model->config().max_positions) {
    return absl::InvalidArgumentError(
        absl::StrCat("prompt: ", ids.size(), " tokens exceed the model's ",
                     model.model->config().max_positions, " positions"));
  }
  return ids;
}

absl::Status CheckTextLength(const char* field, const std::string& text, int max_tokens) {
  if (text.size() <= static_cast<size_t>(max_tokens) * kMaxTokenBytes) return absl::OkStatus();
  return absl::ResourceExhaustedError(
      absl::StrCat(field, ": ", text.size(), " bytes of text are more than the server's limit of ",
                   max_tokens, " tokens (--max_prompt_tokens) can hold"));
}

absl::StatusOr<ResolvedTarget> TargetId(const ServedModel& model, const v1::Target& target,
                                        const v1::Prompt& prompt, int max_prompt_tokens) {
  switch (target.target_case()) {
    case v1::Target::kTokenId:
      if (target.token_id() < 0 || target.token_id() >= model.model->config().vocab_size) {
        return absl::InvalidArgumentError(
            absl::StrCat("target.token_id: ", target.token_id(), " is outside the vocabulary"));
      }
      return ResolvedTarget{target.token_id()};
    case v1::Target::kText:
      FACTLENS_RETURN_IF_ERROR(CheckTextLength("target", target.text(), max_prompt_tokens));
      // Without prompt text (token ids), the target text is tokenized on its own.
      return ResolveTarget(*model.tokenizer,
                           prompt.input_case() == v1::Prompt::kText ? prompt.text() : "",
                           target.text(), target.first_token());
    default:
      return absl::InvalidArgumentError("target: give text or token_id");
  }
}

absl::StatusOr<int64_t> TopK(const char* field, int64_t top_k, int64_t fallback, int64_t limit) {
  if (top_k < 0)
    return absl::InvalidArgumentError(absl::StrCat(field, ": ", top_k, " is negative"));
  if (top_k > limit) {
    return absl::ResourceExhaustedError(absl::StrCat(
        field, ": ", top_k, " exceeds the server's limit of ", limit, " (--max_top_k)"));
  }
  return top_k == 0 ? fallback : top_k;
}

absl::StatusOr<int64_t> ResolvePosition(const std::optional<int32_t>& position,
                                        int64_t num_tokens) {
  const int64_t p = position.value_or(-1);
  const int64_t resolved = p < 0 ? p + num_tokens : p;
  if (resolved < 0 || resolved >= num_tokens) {
    return absl::InvalidArgumentError(
        absl::StrCat("position: ", p, " is out of range for ", num_tokens, " tokens"));
  }
  return resolved;
}

namespace {

struct KindPair {
  v1::Component::Kind proto;
  ComponentKind kind;
};

constexpr KindPair kKinds[] = {
    {v1::Component::EMBEDDING, ComponentKind::kEmbedding},
    {v1::Component::ATTENTION_LAYER, ComponentKind::kAttentionLayer},
    {v1::Component::FFN_LAYER, ComponentKind::kFfnLayer},
    {v1::Component::HEAD, ComponentKind::kHead},
    {v1::Component::HEAD_POSITION, ComponentKind::kHeadPosition},
    {v1::Component::FFN_NEURON, ComponentKind::kFfnNeuron},
    {v1::Component::FFN_NEURON_VALUE, ComponentKind::kFfnNeuronValue},
    {v1::Component::FFN_NEURON_KEY, ComponentKind::kFfnNeuronKey},
    {v1::Component::ATTENTION_NEURON, ComponentKind::kAttentionNeuron},
    {v1::Component::ATTENTION_NEURON_VALUE, ComponentKind::kAttentionNeuronValue},
    {v1::Component::ATTENTION_NEURON_KEY, ComponentKind::kAttentionNeuronKey},
    {v1::Component::RESIDUAL, ComponentKind::kResidual},
    {v1::Component::ATTENTION_BIAS, ComponentKind::kAttentionBias},
};

}  // namespace

absl::StatusOr<ComponentRef> ToComponentRef(const v1::Component& component) {
  ComponentRef ref;
  bool found = false;
  for (const KindPair& k : kKinds) {
    if (k.proto == component.kind()) ref.kind = k.kind, found = true;
  }
  if (!found)
    return absl::InvalidArgumentError("component.kind: unspecified or not supported here");
  ref.layer = component.layer();
  ref.head = component.head();
  ref.source_position = component.source_position();
  ref.neuron = component.neuron();
  ref.key_name = component.key_name();
  return ref;
}

v1::Component ToProto(const ComponentRef& ref) {
  v1::Component out;
  for (const KindPair& k : kKinds) {
    if (k.kind == ref.kind) out.set_kind(k.proto);
  }
  out.set_layer(static_cast<int32_t>(ref.layer));
  out.set_head(static_cast<int32_t>(ref.head));
  out.set_source_position(static_cast<int32_t>(ref.source_position));
  out.set_neuron(static_cast<int32_t>(ref.neuron));
  out.set_key_name(ref.key_name);
  return out;
}

Metric ToMetric(v1::Metric metric) {
  switch (metric) {
    case v1::PROB_INCREASE:
      return Metric::kProbIncrease;
    case v1::LOGIT_INCREASE:
      return Metric::kLogitIncrease;
    default:
      return Metric::kLogProbIncrease;
  }
}

RankMode ToRankMode(v1::RankMode mode) {
  switch (mode) {
    case v1::EXHAUSTIVE:
      return RankMode::kExhaustive;
    case v1::APPROXIMATE:
      return RankMode::kApproximate;
    default:
      return RankMode::kExact;
  }
}

v1::RankMode ToProto(RankMode mode) {
  switch (mode) {
    case RankMode::kExhaustive:
      return v1::EXHAUSTIVE;
    case RankMode::kApproximate:
      return v1::APPROXIMATE;
    default:
      return v1::EXACT;
  }
}

void FillTokenScore(const Tokenizer& tokenizer, int64_t id, double score, v1::TokenScore* out) {
  out->set_id(id);
  out->set_token(ShowToken(tokenizer, id));
  out->set_score(score);
}

void FillOutcome(const TargetOutcome& outcome, v1::TargetOutcome* out) {
  out->set_log_prob(outcome.log_prob);
  out->set_prob(outcome.prob);
  out->set_rank(outcome.rank);
}

absl::StatusOr<RankLevel> ToRankLevel(v1::RankRequest::Level level) {
  switch (level) {
    case v1::RankRequest::ATTENTION_LAYER:
      return RankLevel::kAttentionLayer;
    case v1::RankRequest::FFN_LAYER:
      return RankLevel::kFfnLayer;
    case v1::RankRequest::HEAD:
      return RankLevel::kHead;
    case v1::RankRequest::HEAD_POSITION:
      return RankLevel::kHeadPosition;
    case v1::RankRequest::FFN_NEURON:
      return RankLevel::kFfnNeuron;
    case v1::RankRequest::ATTENTION_NEURON:
      return RankLevel::kAttentionNeuron;
    default:
      return absl::InvalidArgumentError(
          level == v1::RankRequest::LEVEL_UNSPECIFIED ? "level: unspecified" : "level: unknown");
  }
}

void FillRankedComponent(const Tokenizer& tokenizer, const std::vector<int64_t>& ids,
                         const RankedComponent& ranked, v1::RankedComponent* out) {
  *out->mutable_component() = ToProto(ranked.ref);
  out->set_score(ranked.score);
  out->set_coefficient(ranked.coefficient);
  if (ranked.ref.kind == ComponentKind::kHeadPosition ||
      ranked.ref.kind == ComponentKind::kAttentionNeuron) {
    const int64_t source = ids[ranked.ref.source_position];
    out->set_source_token_id(source);
    out->set_source_token(ShowToken(tokenizer, source));
  }
}

void FillLensSteps(const Tokenizer& tokenizer, const std::vector<LensStep>& steps,
                   google::protobuf::RepeatedPtrField<v1::LensStep>* out) {
  for (const LensStep& step : steps) {
    v1::LensStep* s = out->Add();
    *s->mutable_after() = ToProto(step.after);
    FillTokenScore(tokenizer, step.top.token_id, step.top.score, s->mutable_top());
    if (step.target) FillOutcome(*step.target, s->mutable_target());
  }
}

void FillDecomposition(const Tokenizer& tokenizer, const PositionDecomposition& decomposition,
                       int64_t token_id, bool include_vectors, v1::PositionDecomposition* out) {
  out->set_position(static_cast<int32_t>(decomposition.position));
  out->set_token_id(token_id);
  out->set_final_scale(decomposition.final_scale);
  out->set_reconstruction_error(decomposition.reconstruction_error);
  for (const DecomposedComponent& c : decomposition.components) {
    v1::DecomposedComponent* component = out->add_components();
    *component->mutable_component() = ToProto(c.ref);
    component->set_norm(c.norm);
    if (c.increase) component->set_increase(*c.increase);
    if (include_vectors) {
      const at::Tensor v = c.vector.to(at::kCPU, at::kFloat).contiguous();
      component->mutable_vector()->Add(v.data_ptr<float>(), v.data_ptr<float>() + v.numel());
    }
    for (const TokenScore& t : c.lens_tokens)
      FillTokenScore(tokenizer, t.token_id, t.score, component->add_top_tokens());
  }
  FillLensSteps(tokenizer, decomposition.cumulative, out->mutable_cumulative());
}

namespace {

void FillNeuron(const Tokenizer& tokenizer, const FactReport& report, const NeuronReport& n,
                v1::NeuronScore* out) {
  out->set_layer(static_cast<int32_t>(n.layer));
  out->set_neuron(static_cast<int32_t>(n.neuron));
  out->set_head(static_cast<int32_t>(n.head));
  out->set_source_position(static_cast<int32_t>(n.source_position));
  if (n.source_position >= 0) {
    out->set_source_token_id(report.input_ids[n.source_position]);
    out->set_source_token(ShowToken(tokenizer, out->source_token_id()));
  }
  out->set_score(n.score);
  out->set_coefficient(n.coefficient);
  for (const TokenScore& t : n.top_tokens)
    FillTokenScore(tokenizer, t.token_id, t.score, out->add_top_tokens());
}

void FillHead(const Tokenizer& tokenizer, const FactReport& report, const HeadScore& h,
              v1::HeadScore* out) {
  out->set_layer(static_cast<int32_t>(h.layer));
  out->set_head(static_cast<int32_t>(h.head));
  out->set_source_position(static_cast<int32_t>(h.source_position));
  if (h.source_position >= 0) {
    out->set_source_token_id(report.input_ids[h.source_position]);
    out->set_source_token(ShowToken(tokenizer, out->source_token_id()));
  }
  out->set_score(h.score);
}

}  // namespace

void FillFactReport(const Tokenizer& tokenizer, const FactReport& r, v1::FactReport* out) {
  for (int64_t id : r.input_ids) {
    out->add_input_ids(id);
    out->add_input_tokens(ShowToken(tokenizer, id));
  }
  out->set_position(static_cast<int32_t>(r.position));
  FillTokenScore(tokenizer, r.target, r.outcome.prob, out->mutable_target());
  FillOutcome(r.outcome, out->mutable_outcome());
  for (const TokenScore& t : r.predictions)
    FillTokenScore(tokenizer, t.token_id, t.score, out->add_predictions());
  out->set_final_scale(r.final_scale);
  for (double v : r.attention_layer_increase) out->add_attention_layer_increase(v);
  for (double v : r.ffn_layer_increase) out->add_ffn_layer_increase(v);
  for (const HeadScore& h : r.top_heads) FillHead(tokenizer, r, h, out->add_top_heads());
  for (const HeadScore& h : r.top_head_positions)
    FillHead(tokenizer, r, h, out->add_top_head_positions());
  for (const NeuronReport& n : r.ffn_neurons) FillNeuron(tokenizer, r, n, out->add_ffn_neurons());
  for (const NeuronReport& n : r.attention_neurons)
    FillNeuron(tokenizer, r, n, out->add_attention_neurons());
  out->set_mode(ToProto(r.ffn_ranking_stats.mode));
  out->set_ffn_evaluated(r.ffn_ranking_stats.evaluated);
  out->set_ffn_total(r.ffn_ranking_stats.total);
  out->set_attention_evaluated(r.attention_ranking_stats.evaluated);
  out->set_attention_total(r.attention_ranking_stats.total);
  for (const auto& [key, scores] : r.query_layers_ffn) {
    v1::QueryLayers* q = out->add_query_layers_ffn();
    q->set_key_name(key);
    for (double v : scores) q->add_scores(v);
  }
  out->mutable_query_layers_attention()->set_key_name("value");
  for (double v : r.query_layers_attention) out->mutable_query_layers_attention()->add_scores(v);
  for (const NeuronReport& n : r.query_ffn_neurons)
    FillNeuron(tokenizer, r, n, out->add_query_ffn_neurons());
  out->set_ablated_ffn_neurons(static_cast<int32_t>(r.ablation.removed));
  FillOutcome(r.ablation.after, out->mutable_ablated());
  out->set_metric(r.metric == Metric::kProbIncrease    ? v1::PROB_INCREASE
                  : r.metric == Metric::kLogitIncrease ? v1::LOGIT_INCREASE
                                                       : v1::LOGPROB_INCREASE);
  for (const std::string& warning : r.warnings) out->add_warnings(warning);
  FillLensSteps(tokenizer, r.cumulative, out->mutable_cumulative());
}

std::string ToJson(const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = true;
  options.always_print_primitive_fields = true;
  options.preserve_proto_field_names = true;
  std::string json;
  // Printing a generated message cannot fail (no Any fields to resolve).
  (void)google::protobuf::util::MessageToJsonString(message, &json, options);
  return json;
}

}  // namespace factlens
