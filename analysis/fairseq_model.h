// fairseq `transformer_lm` checkpoints — Baevski & Auli's adaptive-input language model
// ("Baevski-18", `transformer_lm_wiki103`) and plain fairseq LMs — loaded from the directory
// fairseq ships: model.pt (torch.save, legacy or zip container, fp32 or fp16 storages) and
// dict.txt. No conversion step: model.pt is read by a bounded unpickler that never executes
// anything (analysis/torch_checkpoint.h).
//
// What is read (docs/fairseq.md has the whole specification):
// - Shapes give d, the layer count, the FFN width, the adaptive bands (sizes, dims, any number of
//   them, any factor) and whether the adaptive-softmax projections are tied; `args` (argparse
//   Namespace, 2018–2020 styles) or `cfg.model` (omegaconf) give the head count,
//   activation_fn, no_scale_embedding, max_target_positions, decoder_learned_pos.
// - Attention weights as q_proj/k_proj/v_proj or the legacy in_proj_weight/in_proj_bias (rows
//   [q; k; v]); layer norms as self_attn_layer_norm/final_layer_norm or the legacy
//   layer_norms.0/layer_norms.2.
// - A final LayerNorm iff decoder.layer_norm.* is present (Baevski-18 has none).
#ifndef FACTLENS_ANALYSIS_FAIRSEQ_MODEL_H_
#define FACTLENS_ANALYSIS_FAIRSEQ_MODEL_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "analysis/weights.h"

namespace factlens {

// True when `directory` holds model.pt and no config.json (a Hugging Face directory wins).
bool IsFairseqModelDirectory(const std::string& directory);

// Reads a fairseq LM directory for Model::Load, which converts the weights (StoredModel). Errors:
// NotFound (no model.pt or dict.txt), DataLoss (corrupt checkpoint, a missing or misshaped weight,
// a dict.txt whose size disagrees with the vocabulary: the message names the tensor or file and,
// for container damage, the byte offset), Unimplemented (architectures outside transformer_lm:
// learned positions, encoder attention, an adaptive-softmax head with its own input projection),
// InvalidArgument (bad options). Thread-safe.
absl::StatusOr<StoredModel> ReadFairseqModel(const std::string& directory,
                                             const LoadOptions& options);

}  // namespace factlens

#endif  // FACTLENS_ANALYSIS_FAIRSEQ_MODEL_H_
