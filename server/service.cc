#include "server/service.h"

#include <ATen/ATen.h>

#include <chrono>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "analysis/attribution.h"
#include "analysis/components.h"
#include "analysis/cpu_threads.h"
#include "analysis/decompose.h"
#include "analysis/device.h"
#include "analysis/forward.h"
#include "analysis/locate.h"
#include "analysis/output_head.h"
#include "analysis/rank.h"
#include "analysis/report_format.h"
#include "analysis/status_macros.h"
#include "analysis/text_input.h"
#include "analysis/tracing.h"
#include "server/convert.h"
#include "server/status_mapping.h"

namespace factlens {

void RecordGpuMemory(const ServerMetrics& metrics, const std::vector<c10::Device>& devices) {
  for (const GpuMemory& m : GpuMemoryStats(devices)) {
    const std::string device = absl::StrCat("cuda:", m.index);
    for (const auto& [kind, bytes] : {std::pair<const char*, uint64_t>{"allocated", m.allocated},
                                      {"reserved", m.reserved},
                                      {"peak_allocated", m.peak_allocated},
                                      {"free", m.free},
                                      {"total", m.total}}) {
      metrics.gpu_memory_bytes->WithLabels({device, kind}).Set(static_cast<double>(bytes));
    }
  }
}
namespace {

std::optional<int32_t> OptionalPosition(bool has, int32_t value) {
  return has ? std::optional<int32_t>(value) : std::nullopt;
}

LocateOptions ToLocateOptions(const v1::LocateOptions& o, std::optional<int32_t> position) {
  LocateOptions options;
  options.position = position.value_or(-1);
  options.mode = ToRankMode(o.mode());
  options.metric = ToMetric(o.attribution().metric());
  options.include_final_norm_bias = o.attribution().include_final_norm_bias();
  if (o.top_ffn_neurons() != 0) options.top_ffn_neurons = o.top_ffn_neurons();
  if (o.top_attention_neurons() != 0) options.top_attention_neurons = o.top_attention_neurons();
  if (o.top_tokens() != 0) options.top_tokens = o.top_tokens();
  options.ablate_top_ffn_neurons = !o.skip_ablation();
  return options;
}

absl::Status CheckLocateLimits(const v1::LocateOptions& o, int max_top_k) {
  for (const auto& [field, value] :
       {std::pair<const char*, int64_t>{"options.top_ffn_neurons", o.top_ffn_neurons()},
        {"options.top_attention_neurons", o.top_attention_neurons()},
        {"options.top_tokens", o.top_tokens()}}) {
    absl::StatusOr<int64_t> k = TopK(field, value, 1, max_top_k);
    if (!k.ok()) return k.status();
  }
  return absl::OkStatus();
}

// The prompt, position and top_k every positional request carries, validated.
struct PromptAt {
  std::vector<int64_t> ids;
  int64_t position = 0;
  int64_t top_k = 0;
};

template <typename Request>
absl::StatusOr<PromptAt> ParsePromptAt(const ServedModel& m, const Request& request,
                                       const ServiceOptions& options) {
  PromptAt out;
  FACTLENS_ASSIGN_OR_RETURN(out.ids, PromptIds(m, request.prompt(), options.max_prompt_tokens));
  FACTLENS_ASSIGN_OR_RETURN(out.top_k, TopK("top_k", request.top_k(), 10, options.max_top_k));
  FACTLENS_ASSIGN_OR_RETURN(
      out.position, ResolvePosition(OptionalPosition(request.has_position(), request.position()),
                                    out.ids.size()));
  return out;
}

// The number of most probable next tokens an Ablate response lists.
constexpr int64_t kAblatePredictions = 10;

// One LocateFacts item: its report, or its error as a gRPC code and a message naming the item.
void FillItemResult(const ServedModel& m, int index, const absl::StatusOr<FactReport>& report,
                    v1::ItemResult* out) {
  out->set_index(index);
  if (report.ok()) {
    FillFactReport(*m.tokenizer, *report, out->mutable_report());
    return;
  }
  const grpc::Status mapped = ToGrpcStatus(report.status());
  out->mutable_error()->set_code(mapped.error_code());
  out->mutable_error()->set_message(absl::StrCat("items[", index, "].", mapped.error_message()));
}

}  // namespace

std::string StatusCodeName(grpc::StatusCode code) {
  // gRPC's codes are the canonical codes, numbered as absl::StatusCode's.
  const int index = static_cast<int>(code);
  std::string name = absl::StatusCodeToString(static_cast<absl::StatusCode>(index));
  return name.empty() ? absl::StrCat("CODE_", index) : name;
}

FactLensService::FactLensService(const ModelRegistry* registry, ServiceOptions options,
                                 RequestObserver observer, const ServerMetrics* metrics)
    : registry_(registry),
      options_(std::move(options)),
      observer_(std::move(observer)),
      metrics_(metrics) {}

absl::StatusOr<std::shared_ptr<const ForwardTrace>> FactLensService::FullTrace(
    const ServedModel& m, const std::vector<int64_t>& ids) const {
  bool computed = false;
  absl::StatusOr<std::shared_ptr<const ForwardTrace>> trace = m.traces.GetOrCompute(ids, [&] {
    computed = true;
    return Forward(*m.model, ids, FullCapture());
  });
  if (metrics_) {
    metrics_->trace_cache_lookups_total->WithLabels({m.name, computed ? "miss" : "hit"})
        .Increment();
  }
  return trace;
}

void FactLensService::StartDraining() {
  absl::MutexLock lock(&mu_);
  draining_ = true;
}

bool FactLensService::WaitUntilIdle(absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  const auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return active_calls_ == 0; };
  return mu_.AwaitWithDeadline(absl::Condition(&idle), deadline);
}

absl::Status FactLensService::Authenticate(const grpc::ServerContext& context) const {
  if (options_.bearer_tokens.empty()) return absl::OkStatus();
  const auto& metadata = context.client_metadata();
  const auto it = metadata.find("authorization");
  if (it == metadata.end())
    return absl::UnauthenticatedError("missing 'authorization: Bearer <token>' metadata");
  const std::string value(it->second.data(), it->second.size());
  constexpr absl::string_view kPrefix = "Bearer ";
  if (value.size() > kPrefix.size() &&
      value.compare(0, kPrefix.size(), std::string(kPrefix)) == 0) {
    const std::string token = value.substr(kPrefix.size());
    bool match = false;
    for (const std::string& allowed : options_.bearer_tokens) {
      // Constant-time comparison of equal-length tokens.
      if (allowed.size() != token.size()) continue;
      unsigned char diff = 0;
      for (size_t i = 0; i < token.size(); ++i)
        diff |= static_cast<unsigned char>(allowed[i] ^ token[i]);
      match = match || diff == 0;
    }
    if (match) return absl::OkStatus();
  }
  return absl::UnauthenticatedError("invalid bearer token");
}

grpc::Status FactLensService::Serve(grpc::ServerContext* context, const char* rpc,
                                    const std::string& model, bool queued, const Work& work) {
  return Handle(context, rpc, model, queued, [&](RequestRecord& record) -> absl::Status {
    absl::StatusOr<std::shared_ptr<const ServedModel>> served = registry_->Get(model);
    absl::Status status = served.status();
    if (served.ok()) {
      record.model = (*served)->name;
      Gauge* in_flight =
          metrics_ ? &metrics_->requests_in_flight->WithLabels({record.model}) : nullptr;
      if (in_flight) in_flight->Increment();
      const auto client_deadline = context->deadline();
      const absl::Time deadline = client_deadline == std::chrono::system_clock::time_point::max()
                                      ? absl::Now() + options_.default_deadline
                                      : absl::FromChrono(client_deadline);
      std::optional<Slot> slot;
      if (queued) {
        absl::StatusOr<Slot> acquired =
            (*served)->queue.Acquire(deadline, [context] { return context->IsCancelled(); });
        status = acquired.status();
        if (acquired.ok()) slot.emplace(*std::move(acquired));
      }
      if (status.ok()) {
        if (slot) record.queue_wait_seconds = absl::ToDoubleSeconds(slot->queue_wait());
        const c10::Device device = (*served)->model->device();
        try {
          const DeviceStreamScope stream(device);
          status = work(**served);
        } catch (const std::exception& e) {
          status = StatusFromException(e, rpc, device);
        }
        // gRPC runs requests on changing threads: an idle OpenMP team left on this one would slow
        // every later request's parallel regions.
        ReleaseCpuThreads();
        if (metrics_ && device.is_cuda()) RecordGpuMemory(*metrics_, {device});
        if ((status.ok() || absl::IsCancelled(status)) && context->IsCancelled()) {
          status = absl::Now() >= deadline ? absl::DeadlineExceededError("deadline exceeded")
                                           : absl::CancelledError("cancelled by the client");
        }
      }
      if (in_flight) in_flight->Decrement();
    }
    return status;
  });
}

grpc::Status FactLensService::Handle(grpc::ServerContext* context, const char* rpc,
                                     const std::string& model, bool queued,
                                     const std::function<absl::Status(RequestRecord&)>& work) {
  const auto start = std::chrono::steady_clock::now();
  RequestRecord record;
  record.rpc = rpc;
  // The log keeps a bounded prefix of what the client sent (a name is at most kMaxModelNameBytes).
  record.model = model.substr(0, kMaxModelNameBytes + 1);
  record.peer = context->peer();
  bool draining;
  {
    absl::MutexLock lock(&mu_);
    ++active_calls_;
    draining = draining_;
  }
  absl::Status status = Authenticate(*context);
  if (status.ok() && draining) {
    status = absl::UnavailableError("the server is shutting down");
  }
  if (status.ok() && model.size() > kMaxModelNameBytes) {
    status = absl::InvalidArgumentError(absl::StrCat(
        "model: a name of ", model.size(), " bytes; names are at most ", kMaxModelNameBytes));
  }
  if (status.ok()) status = work(record);
  const grpc::Status result = ToGrpcStatus(status);
  record.code = result.error_code();
  if (HidesMessage(status.code())) record.error = std::string(status.message());
  record.latency_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (metrics_) {
    // Only served model names become label values, so cardinality stays bounded.
    const std::string model_label = registry_->Loaded(record.model) ? record.model : "";
    metrics_->requests_total->WithLabels({record.rpc, model_label, StatusCodeName(record.code)})
        .Increment();
    metrics_->request_duration_seconds->WithLabels({record.rpc, model_label})
        .Observe(record.latency_seconds);
    if (queued && !model_label.empty()) {
      metrics_->queue_wait_seconds->WithLabels({model_label}).Observe(record.queue_wait_seconds);
    }
  }
  if (observer_) observer_(record);
  {
    absl::MutexLock lock(&mu_);
    --active_calls_;
  }
  return result;
}

grpc::Status FactLensService::ListModels(grpc::ServerContext* context, const v1::ListModelsRequest*,
                                         v1::ListModelsResponse* response) {
  return Handle(context, "ListModels", "", /*queued=*/false, [&](RequestRecord&) {
    FillModelList(response);
    return absl::OkStatus();
  });
}

void FactLensService::FillModelList(v1::ListModelsResponse* response) const {
  for (const ModelSpec& spec : registry_->specs()) {
    v1::ModelInfo* info = response->add_models();
    info->set_name(spec.name);
    info->set_source(spec.source);
    const std::shared_ptr<const ServedModel> served = registry_->Loaded(spec.name);
    info->set_ready(served != nullptr);
    if (!served) continue;
    const ModelConfig& c = served->model->config();
    info->set_family(std::string(ModelFamilyName(c.family)));
    info->set_layers(c.n_layers);
    info->set_heads(c.n_heads);
    info->set_kv_heads(c.n_kv_heads);
    info->set_head_dim(c.head_dim);
    info->set_d_model(c.d_model);
    info->set_ffn_width(c.d_ffn);
    info->set_vocab_size(c.vocab_size);
    info->set_max_positions(c.max_positions);
    info->set_dtype(std::string(ComputeDTypeName(served->model->dtype())));
    info->set_weights_dtype(std::string(ComputeDTypeName(served->model->weights_dtype())));
    info->set_device(served->model->device().str());
  }
}

grpc::Status FactLensService::Tokenize(grpc::ServerContext* context,
                                       const v1::TokenizeRequest* request,
                                       v1::TokenizeResponse* response) {
  return Serve(
      context, "Tokenize", request->model(), false, [&](const ServedModel& m) -> absl::Status {
        FACTLENS_RETURN_IF_ERROR(
            CheckTextLength("text", request->text(), options_.max_prompt_tokens));
        absl::StatusOr<Encoding> encoding =
            m.tokenizer->Encode(request->text(), request->add_special_tokens());
        if (!encoding.ok())
          return absl::InvalidArgumentError(absl::StrCat("text: ", encoding.status().message()));
        for (size_t i = 0; i < encoding->ids.size(); ++i) {
          response->add_ids(encoding->ids[i]);
          response->add_tokens(encoding->tokens[i]);
          response->add_display_tokens(ShowToken(*m.tokenizer, encoding->ids[i]));
          response->add_offset_begin(static_cast<int64_t>(encoding->offsets[i].first));
          response->add_offset_end(static_cast<int64_t>(encoding->offsets[i].second));
        }
        return absl::OkStatus();
      });
}

grpc::Status FactLensService::Detokenize(grpc::ServerContext* context,
                                         const v1::DetokenizeRequest* request,
                                         v1::DetokenizeResponse* response) {
  return Serve(
      context, "Detokenize", request->model(), false, [&](const ServedModel& m) -> absl::Status {
        if (request->ids_size() > options_.max_prompt_tokens) {
          return absl::ResourceExhaustedError(
              absl::StrCat("ids: ", request->ids_size(), " ids exceed the server's limit of ",
                           options_.max_prompt_tokens, " (--max_prompt_tokens)"));
        }
        std::vector<int32_t> ids;
        for (int64_t id : request->ids()) {
          if (id < 0 || id >= m.model->config().vocab_size) {
            return absl::InvalidArgumentError(
                absl::StrCat("ids: ", id, " is outside the vocabulary"));
          }
          ids.push_back(static_cast<int32_t>(id));
        }
        absl::StatusOr<std::string> text = m.tokenizer->Decode(ids, request->skip_special_tokens());
        if (!text.ok())
          return absl::InvalidArgumentError(absl::StrCat("ids: ", text.status().message()));
        response->set_text(*text);
        return absl::OkStatus();
      });
}

grpc::Status FactLensService::Predict(grpc::ServerContext* context,
                                      const v1::PredictRequest* request,
                                      v1::PredictResponse* response) {
  return Serve(context, "Predict", request->model(), true,
               [&](const ServedModel& m) -> absl::Status {
                 FACTLENS_ASSIGN_OR_RETURN(const PromptAt at, ParsePromptAt(m, *request, options_));
                 FACTLENS_ASSIGN_OR_RETURN(const std::vector<TokenScore> predictions,
                                           PredictNext(*m.model, at.ids, at.position, at.top_k));
                 for (const TokenScore& t : predictions)
                   FillTokenScore(*m.tokenizer, t.token_id, t.score, response->add_predictions());
                 for (int64_t id : at.ids) response->add_input_ids(id);
                 return absl::OkStatus();
               });
}

grpc::Status FactLensService::Decompose(grpc::ServerContext* context,
                                        const v1::DecomposeRequest* request,
                                        v1::DecomposeResponse* response) {
  return Serve(
      context, "Decompose", request->model(), true, [&](const ServedModel& m) -> absl::Status {
        FACTLENS_ASSIGN_OR_RETURN(const std::vector<int64_t> ids,
                                  PromptIds(m, request->prompt(), options_.max_prompt_tokens));
        DecomposeOptions options;
        ResolvedTarget target;
        options.include_heads = request->include_heads();
        options.cumulative = request->cumulative();
        FACTLENS_ASSIGN_OR_RETURN(
            options.logit_lens_top_k,
            TopK("logit_lens_top_k", request->logit_lens_top_k(), 0, options_.max_top_k));
        if (request->target().target_case() != v1::Target::TARGET_NOT_SET) {
          FACTLENS_ASSIGN_OR_RETURN(target, TargetId(m, request->target(), request->prompt(),
                                                     options_.max_prompt_tokens));
          options.target = AttributionTarget{target.id, -1, ToMetric(request->options().metric()),
                                             request->options().include_final_norm_bias()};
        }
        std::vector<int32_t> requested(request->positions().begin(), request->positions().end());
        if (requested.empty()) requested.push_back(-1);
        if (requested.size() > ids.size()) {
          return absl::InvalidArgumentError("positions: more positions than tokens");
        }
        std::vector<int64_t> positions;
        for (int32_t p : requested) {
          absl::StatusOr<int64_t> resolved = ResolvePosition(p, ids.size());
          if (!resolved.ok())
            return absl::InvalidArgumentError(
                absl::StrCat("positions: ", resolved.status().message()));
          positions.push_back(*resolved);
        }
        FACTLENS_ASSIGN_OR_RETURN(const std::shared_ptr<const ForwardTrace> trace,
                                  FullTrace(m, ids));
        for (int64_t id : ids) response->add_input_ids(id);
        if (options.target) response->set_target_id(options.target->token_id);
        // A text target continues the prompt: its spelling is checked at the last position.
        FACTLENS_ASSIGN_OR_RETURN(
            const std::optional<std::string> warning,
            TargetSpacingWarning(*m.model, *m.tokenizer, ids, ids.size() - 1, target));
        if (warning) response->add_warnings(*warning);
        for (int64_t position : positions) {
          FACTLENS_ASSIGN_OR_RETURN(
              const PositionDecomposition decomposition,
              factlens::Decompose(*m.model, *trace, position, options,
                                  [context] { return context->IsCancelled(); }));
          FillDecomposition(*m.tokenizer, decomposition, ids[position], request->include_vectors(),
                            response->add_positions());
        }
        return absl::OkStatus();
      });
}

grpc::Status FactLensService::Rank(grpc::ServerContext* context, const v1::RankRequest* request,
                                   v1::RankResponse* response) {
  return Serve(context, "Rank", request->model(), true, [&](const ServedModel& m) -> absl::Status {
    FACTLENS_ASSIGN_OR_RETURN(const PromptAt at, ParsePromptAt(m, *request, options_));
    FACTLENS_ASSIGN_OR_RETURN(
        const ResolvedTarget target,
        TargetId(m, request->target(), request->prompt(), options_.max_prompt_tokens));
    FACTLENS_ASSIGN_OR_RETURN(const RankLevel level, ToRankLevel(request->level()));
    FACTLENS_ASSIGN_OR_RETURN(const std::shared_ptr<const ForwardTrace> trace,
                              FullTrace(m, at.ids));
    FACTLENS_ASSIGN_OR_RETURN(
        const std::unique_ptr<Attribution> attribution,
        Attribution::Create(*m.model, *trace,
                            {target.id, at.position, ToMetric(request->options().metric()),
                             request->options().include_final_norm_bias()}));
    FACTLENS_ASSIGN_OR_RETURN(
        const ComponentRanking ranking,
        RankComponents(*attribution, level, at.top_k,
                       request->bottom() ? RankOrder::kBottom : RankOrder::kTop,
                       ToRankMode(request->mode()), [context] { return context->IsCancelled(); }));
    FACTLENS_ASSIGN_OR_RETURN(
        const std::optional<std::string> warning,
        TargetSpacingWarning(*m.model, *m.tokenizer, at.ids, at.position, target));
    for (int64_t id : at.ids) response->add_input_ids(id);
    response->set_target_id(target.id);
    if (warning) response->add_warnings(*warning);
    for (const RankedComponent& ranked : ranking.components) {
      FillRankedComponent(*m.tokenizer, at.ids, ranked, response->add_components());
    }
    response->set_mode(ToProto(ranking.mode));
    response->set_evaluated(ranking.evaluated);
    response->set_total(ranking.total);
    return absl::OkStatus();
  });
}

grpc::Status FactLensService::Trace(grpc::ServerContext* context, const v1::TraceRequest* request,
                                    v1::TraceResponse* response) {
  return Serve(context, "Trace", request->model(), true, [&](const ServedModel& m) -> absl::Status {
    absl::StatusOr<PromptAt> at = ParsePromptAt(m, *request, options_);
    if (!at.ok()) return at.status();
    FACTLENS_ASSIGN_OR_RETURN(const std::shared_ptr<const ForwardTrace> trace,
                              FullTrace(m, at->ids));
    const v1::Component& n = request->neuron();
    absl::StatusOr<NeuronTrace> traced;
    if (n.kind() == v1::Component::FFN_NEURON) {
      traced = TraceFfnNeuron(*m.model, *trace, n.layer(), n.neuron(), at->position, at->top_k);
    } else if (n.kind() == v1::Component::ATTENTION_NEURON) {
      traced = TraceAttentionNeuron(*m.model, *trace, n.layer(), n.source_position(), n.head(),
                                    n.neuron(), at->top_k);
    } else {
      return absl::InvalidArgumentError("neuron.kind: must be FFN_NEURON or ATTENTION_NEURON");
    }
    if (!traced.ok())
      return absl::InvalidArgumentError(absl::StrCat("neuron.", traced.status().message()));
    for (int64_t id : at->ids) response->add_input_ids(id);
    response->set_position(static_cast<int32_t>(traced->position));
    for (const KeyTrace& key : traced->keys) {
      v1::KeyTrace* out = response->add_keys();
      out->set_key_name(key.key.name);
      const at::Tensor layers = key.layer_scores.to(at::kCPU).contiguous();
      const at::Tensor heads = key.head_scores.to(at::kCPU).contiguous();
      out->mutable_layer_scores()->Add(layers.data_ptr<double>(),
                                       layers.data_ptr<double>() + layers.numel());
      out->mutable_head_scores()->Add(heads.data_ptr<double>(),
                                      heads.data_ptr<double>() + heads.numel());
      out->set_total(key.total);
      for (const SubvalueScore& s : key.top_subvalues) {
        v1::RankedComponent* sub = out->add_top_ffn_subvalues();
        *sub->mutable_component() = ToProto({ComponentKind::kFfnNeuron, s.layer, 0, 0, s.neuron});
        sub->set_score(s.score);
      }
    }
    return absl::OkStatus();
  });
}

grpc::Status FactLensService::ProjectToVocab(grpc::ServerContext* context,
                                             const v1::ProjectToVocabRequest* request,
                                             v1::ProjectToVocabResponse* response) {
  return Serve(
      context, "ProjectToVocab", request->model(), true, [&](const ServedModel& m) -> absl::Status {
        absl::StatusOr<PromptAt> at = ParsePromptAt(m, *request, options_);
        if (!at.ok()) return at.status();
        absl::StatusOr<ComponentRef> ref = ToComponentRef(request->component());
        if (!ref.ok()) return ref.status();
        FACTLENS_ASSIGN_OR_RETURN(const std::shared_ptr<const ForwardTrace> trace,
                                  FullTrace(m, at->ids));
        absl::StatusOr<at::Tensor> vector = ComponentVector(*m.model, *trace, at->position, *ref);
        if (!vector.ok()) return vector.status();
        const std::unique_ptr<const FrozenOutputHead> head =
            m.model->output_head().FreezeAt(trace->final_residual[at->position]);
        const auto [top, bottom] = head->TopAndBottom(*vector, at->top_k);
        for (const TokenScore& t : top)
          FillTokenScore(*m.tokenizer, t.token_id, t.score, response->add_top());
        for (const TokenScore& t : bottom)
          FillTokenScore(*m.tokenizer, t.token_id, t.score, response->add_bottom());
        response->set_final_scale(head->final_scale());
        return absl::OkStatus();
      });
}

grpc::Status FactLensService::Ablate(grpc::ServerContext* context, const v1::AblateRequest* request,
                                     v1::AblateResponse* response) {
  return Serve(
      context, "Ablate", request->model(), true, [&](const ServedModel& m) -> absl::Status {
        FACTLENS_ASSIGN_OR_RETURN(const std::vector<int64_t> ids,
                                  PromptIds(m, request->prompt(), options_.max_prompt_tokens));
        FACTLENS_ASSIGN_OR_RETURN(
            const ResolvedTarget target,
            TargetId(m, request->target(), request->prompt(), options_.max_prompt_tokens));
        FACTLENS_ASSIGN_OR_RETURN(
            const int64_t position,
            ResolvePosition(OptionalPosition(request->has_position(), request->position()),
                            ids.size()));
        if (request->ablations().empty()) return absl::InvalidArgumentError("ablations: is empty");
        if (request->ablations_size() > options_.max_top_k) {
          return absl::ResourceExhaustedError(
              absl::StrCat("ablations: more than the server's limit of ", options_.max_top_k));
        }
        std::vector<Ablation> ablations;
        for (const v1::AblationSpec& spec : request->ablations()) {
          absl::StatusOr<ComponentRef> ref = ToComponentRef(spec.component());
          if (!ref.ok())
            return absl::InvalidArgumentError(absl::StrCat("ablations: ", ref.status().message()));
          absl::StatusOr<Ablation> a = ToAblation(
              *ref, spec.all_positions() ? std::nullopt : std::optional<int64_t>(position),
              spec.scale());
          if (!a.ok())
            return absl::InvalidArgumentError(absl::StrCat("ablations: ", a.status().message()));
          ablations.push_back(*a);
        }
        FACTLENS_ASSIGN_OR_RETURN(
            const AblationComparison compared,
            CompareAblation(*m.model, ids, position, target.id, ablations, kAblatePredictions));
        FACTLENS_ASSIGN_OR_RETURN(
            const std::optional<std::string> warning,
            TargetSpacingWarning(*m.model, *m.tokenizer, ids, position, target));
        for (int64_t id : ids) response->add_input_ids(id);
        response->set_target_id(target.id);
        if (warning) response->add_warnings(*warning);
        FillOutcome(compared.before, response->mutable_before());
        FillOutcome(compared.after, response->mutable_after());
        for (const TokenScore& t : compared.predictions_after)
          FillTokenScore(*m.tokenizer, t.token_id, t.score, response->add_predictions_after());
        return absl::OkStatus();
      });
}

grpc::Status FactLensService::LocateFact(grpc::ServerContext* context,
                                         const v1::LocateFactRequest* request,
                                         grpc::ServerWriter<v1::LocateFactEvent>* writer) {
  return Serve(
      context, "LocateFact", request->model(), true, [&](const ServedModel& m) -> absl::Status {
        FACTLENS_ASSIGN_OR_RETURN(const std::vector<int64_t> ids,
                                  PromptIds(m, request->prompt(), options_.max_prompt_tokens));
        FACTLENS_ASSIGN_OR_RETURN(
            const ResolvedTarget target,
            TargetId(m, request->target(), request->prompt(), options_.max_prompt_tokens));
        FACTLENS_RETURN_IF_ERROR(CheckLocateLimits(request->options(), options_.max_top_k));
        const LocateOptions options = ToLocateOptions(
            request->options(), OptionalPosition(request->has_position(), request->position()));
        // One event per stage change: LocateFact also calls back repeatedly within long stages
        // so that a cancelled call stops there.
        v1::Progress last;
        last.set_fraction(-1);
        FACTLENS_ASSIGN_OR_RETURN(
            const FactReport report,
            factlens::LocateFact(*m.model, *m.tokenizer, ids, target, options,
                                 [&](const std::string& stage, double fraction) {
                                   if (context->IsCancelled()) return false;
                                   if (stage == last.stage() && fraction == last.fraction())
                                     return true;
                                   last.set_stage(stage);
                                   last.set_fraction(fraction);
                                   v1::LocateFactEvent event;
                                   *event.mutable_progress() = last;
                                   return writer->Write(event);
                                 }));
        v1::LocateFactEvent event;
        FillFactReport(*m.tokenizer, report, event.mutable_report());
        if (!writer->Write(event)) return absl::CancelledError("the client went away");
        return absl::OkStatus();
      });
}

grpc::Status FactLensService::LocateFacts(grpc::ServerContext* context,
                                          const v1::LocateFactsRequest* request,
                                          grpc::ServerWriter<v1::LocateFactsEvent>* writer) {
  return Serve(
      context, "LocateFacts", request->model(), true, [&](const ServedModel& m) -> absl::Status {
        if (request->items().empty()) return absl::InvalidArgumentError("items: is empty");
        if (request->items_size() > options_.max_batch_items) {
          return absl::ResourceExhaustedError(
              absl::StrCat("items: ", request->items_size(), " exceed the server's limit of ",
                           options_.max_batch_items, " (--max_batch_items)"));
        }
        FACTLENS_RETURN_IF_ERROR(CheckLocateLimits(request->options(), options_.max_top_k));
        const LocateOptions options = ToLocateOptions(request->options(), std::nullopt);
        std::vector<absl::StatusOr<TextFact>> facts;
        for (const v1::FactItem& item : request->items()) {
          facts.push_back([&]() -> absl::StatusOr<TextFact> {
            FACTLENS_ASSIGN_OR_RETURN(std::vector<int64_t> ids,
                                      PromptIds(m, item.prompt(), options_.max_prompt_tokens));
            FACTLENS_ASSIGN_OR_RETURN(
                ResolvedTarget target,
                TargetId(m, item.target(), item.prompt(), options_.max_prompt_tokens));
            return TextFact{std::move(ids), std::move(target)};
          }());
        }
        FACTLENS_ASSIGN_OR_RETURN(
            const BatchAggregate aggregate,
            factlens::LocateFacts(
                *m.model, *m.tokenizer, facts, options,
                [&](size_t i, const absl::StatusOr<FactReport>& report) {
                  v1::LocateFactsEvent event;
                  FillItemResult(m, static_cast<int>(i), report, event.mutable_item());
                  return !context->IsCancelled() && writer->Write(event);
                },
                [&](const std::string&, double) { return !context->IsCancelled(); }));
        const int failed = request->items_size() - static_cast<int>(aggregate.facts);
        v1::LocateFactsEvent event;
        v1::BatchAggregate* out = event.mutable_aggregate();
        for (int64_t v : aggregate.ffn_neurons_per_layer) out->add_ffn_neurons_per_layer(v);
        for (int64_t v : aggregate.attention_neurons_per_layer)
          out->add_attention_neurons_per_layer(v);
        for (double v : aggregate.mean_attention_layer_increase)
          out->add_mean_attention_layer_increase(v);
        for (double v : aggregate.mean_ffn_layer_increase) out->add_mean_ffn_layer_increase(v);
        out->set_facts(static_cast<int32_t>(aggregate.facts));
        out->set_failed(failed);
        if (!writer->Write(event)) return absl::CancelledError("the client went away");
        return absl::OkStatus();
      });
}

}  // namespace factlens
