#include "analysis/report_format.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace factlens {
namespace {

// Query-layer slot names: 0 = embedding, 2m+1 = attention layer m, 2m+2 = FFN layer m.
std::string SlotName(size_t slot) {
  if (slot == 0) return "emb";
  return absl::StrCat(slot % 2 == 1 ? "attn" : "ffn", (slot - 1) / 2);
}

std::string TokenList(const Tokenizer& tokenizer, const std::vector<TokenScore>& tokens,
                      size_t limit) {
  std::vector<std::string> shown;
  for (size_t i = 0; i < tokens.size() && i < limit; ++i) {
    shown.push_back(absl::StrCat("\"", ShowToken(tokenizer, tokens[i].token_id), "\""));
  }
  return absl::StrJoin(shown, " ");
}

}  // namespace

std::string ShowToken(const Tokenizer& tokenizer, int64_t id) {
  absl::StatusOr<std::string> shown = tokenizer.DisplayToken(static_cast<int32_t>(id));
  return shown.ok() ? *shown : absl::StrCat("<id ", id, ">");
}

std::string FormatFactReport(const FactReport& r, const Tokenizer& tokenizer) {
  std::string out;
  std::vector<std::string> prompt;
  for (int64_t id : r.input_ids) prompt.push_back(ShowToken(tokenizer, id));
  for (const std::string& warning : r.warnings) absl::StrAppend(&out, "Warning: ", warning, "\n");
  absl::StrAppend(&out, "Prompt tokens: ", absl::StrJoin(prompt, "|"), "\n");
  absl::StrAppendFormat(&out,
                        "Target \"%s\" (id %d) at position %d: p = %.6f, log p = %.4f, rank %d\n",
                        ShowToken(tokenizer, r.target), r.target, r.position, r.outcome.prob,
                        r.outcome.log_prob, r.outcome.rank);
  absl::StrAppendFormat(&out, "Metric: %s; final-norm scale sigma = %.6f\n\n", MetricName(r.metric),
                        r.final_scale);
  absl::StrAppend(&out, "Prediction (top next tokens)\n");
  for (const TokenScore& t : r.predictions) {
    absl::StrAppendFormat(&out, "  %-16s %.6f\n",
                          absl::StrCat("\"", ShowToken(tokenizer, t.token_id), "\""), t.score);
  }
  absl::StrAppend(&out, "\nPer-layer increase (attention | FFN)\n");
  for (size_t l = 0; l < r.attention_layer_increase.size(); ++l) {
    absl::StrAppendFormat(&out, "  layer %2d  %+10.5f | %+10.5f\n", l,
                          r.attention_layer_increase[l], r.ffn_layer_increase[l]);
  }
  absl::StrAppend(&out, "\nLogit lens: the target and the top token after each sublayer\n");
  for (size_t i = 0; i < r.cumulative.size(); ++i) {
    const LensStep& step = r.cumulative[i];
    absl::StrAppendFormat(&out, "  after %-6s rank %6d  log p %9.4f  top %s\n", SlotName(i),
                          step.target ? step.target->rank : 0,
                          step.target ? step.target->log_prob : 0,
                          absl::StrCat("\"", ShowToken(tokenizer, step.top.token_id), "\""));
  }
  absl::StrAppend(&out, "\nTop heads\n");
  for (const HeadScore& h : r.top_heads)
    absl::StrAppendFormat(&out, "  L%d.H%d  %+10.5f\n", h.layer, h.head, h.score);
  absl::StrAppend(&out, "\nTop head x source positions\n");
  for (const HeadScore& h : r.top_head_positions) {
    absl::StrAppendFormat(&out, "  L%d.H%d <- pos %d \"%s\"  %+10.5f\n", h.layer, h.head,
                          h.source_position, ShowToken(tokenizer, r.input_ids[h.source_position]),
                          h.score);
  }
  absl::StrAppendFormat(&out, "\nTop FFN value neurons (%s: %d of %d evaluated exactly)\n",
                        RankModeName(r.ffn_ranking_stats.mode), r.ffn_ranking_stats.evaluated,
                        r.ffn_ranking_stats.total);
  for (size_t i = 0; i < r.ffn_neurons.size() && i < 20; ++i) {
    const NeuronReport& n = r.ffn_neurons[i];
    absl::StrAppendFormat(&out, "  L%d.N%-5d %+10.5f  coef %+8.4f  %s\n", n.layer, n.neuron,
                          n.score, n.coefficient, TokenList(tokenizer, n.top_tokens, 6));
  }
  absl::StrAppendFormat(&out, "\nTop attention neurons (%s: %d of %d evaluated exactly)\n",
                        RankModeName(r.attention_ranking_stats.mode),
                        r.attention_ranking_stats.evaluated, r.attention_ranking_stats.total);
  for (size_t i = 0; i < r.attention_neurons.size() && i < 20; ++i) {
    const NeuronReport& n = r.attention_neurons[i];
    absl::StrAppendFormat(&out, "  L%d.H%d.d%-3d <- pos %d \"%s\"  %+10.5f  coef %+8.4f  %s\n",
                          n.layer, n.head, n.neuron, n.source_position,
                          ShowToken(tokenizer, r.input_ids[n.source_position]), n.score,
                          n.coefficient, TokenList(tokenizer, n.top_tokens, 6));
  }
  absl::StrAppend(&out, "\nQuery layers (which components activate the top neurons)\n");
  auto slots = [](const std::vector<double>& v) {
    std::vector<std::string> parts;
    for (size_t s = 0; s < v.size(); ++s)
      parts.push_back(absl::StrFormat("%s %+.4f", SlotName(s), v[s]));
    return absl::StrJoin(parts, "  ");
  };
  for (const auto& [key, scores] : r.query_layers_ffn)
    absl::StrAppend(&out, "  FFN key ", key, ": ", slots(scores), "\n");
  absl::StrAppend(&out, "  attention key value: ", slots(r.query_layers_attention), "\n");
  absl::StrAppend(&out, "\nQuery FFN neurons of the top attention neurons\n");
  for (const NeuronReport& n : r.query_ffn_neurons) {
    absl::StrAppendFormat(&out, "  L%d.N%-5d %+10.5f  %s\n", n.layer, n.neuron, n.score,
                          TokenList(tokenizer, n.top_tokens, 6));
  }
  if (r.ablation.removed > 0) {
    absl::StrAppendFormat(
        &out,
        "\nAblation: zeroing the top %d FFN neurons at position %d: p %.6f -> %.6f, "
        "log p %.4f -> %.4f, rank %d -> %d\n",
        r.ablation.removed, r.position, r.ablation.before.prob, r.ablation.after.prob,
        r.ablation.before.log_prob, r.ablation.after.log_prob, r.ablation.before.rank,
        r.ablation.after.rank);
  }
  return out;
}

}  // namespace factlens
