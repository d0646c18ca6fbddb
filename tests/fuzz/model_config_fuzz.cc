// libFuzzer target: config.json parsing on arbitrary bytes. A parsed config must be usable by the
// loader: positive sizes and consistent head counts.
#include <cstdint>
#include <cstdlib>

#include "analysis/model_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  absl::StatusOr<factlens::ModelConfig> config =
      factlens::ParseModelConfig(absl::string_view(reinterpret_cast<const char*>(data), size));
  if (config.ok()) {
    if (config->d_model <= 0 || config->n_layers <= 0 || config->n_heads <= 0 ||
        config->head_dim <= 0 || config->vocab_size <= 0 || config->n_kv_heads <= 0 ||
        config->n_heads % config->n_kv_heads != 0) {
      std::abort();
    }
  }
  return 0;
}
