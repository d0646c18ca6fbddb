#include "server/metrics.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <set>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace factlens {
namespace {

// std::atomic<double>::fetch_add is C++20; a CAS loop does the same in C++17.
void AtomicAdd(std::atomic<double>& target, double amount) {
  double current = target.load(std::memory_order_relaxed);
  while (!target.compare_exchange_weak(current, current + amount, std::memory_order_relaxed)) {
  }
}

bool IsValidMetricName(absl::string_view name) {
  if (name.empty()) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':';
    if (!alpha && !(i > 0 && c >= '0' && c <= '9')) return false;
  }
  return true;
}

bool IsValidLabelName(absl::string_view name) {
  if (name.empty() || absl::StartsWith(name, "__")) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
    if (!alpha && !(i > 0 && c >= '0' && c <= '9')) return false;
  }
  return true;
}

// HELP text escaping: backslash and newline (not double quote).
std::string EscapeHelp(absl::string_view help) {
  std::string out;
  out.reserve(help.size());
  for (char c : help) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

const char* TypeName(MetricFamily::Type type) {
  switch (type) {
    case MetricFamily::Type::kCounter:
      return "counter";
    case MetricFamily::Type::kGauge:
      return "gauge";
    case MetricFamily::Type::kHistogram:
      return "histogram";
  }
  return "untyped";
}

void AppendSample(std::string* out, absl::string_view name, absl::string_view labels,
                  double value) {
  absl::StrAppend(out, name, labels, " ", FormatMetricValue(value), "\n");
}

}  // namespace

std::string FormatMetricValue(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "+Inf" : "-Inf";
  // Integral values: plain digits (2^63 = 9.22e18 is the int64 limit; the cast below is exact).
  if (value == std::trunc(value) && std::fabs(value) < 9.2e18) {
    return absl::StrCat(static_cast<int64_t>(value));
  }
  // Shortest round-trip representation (C++17 <charconv>), e.g. "0.001", "1e-07", "1.5e+20".
  char buf[64];
  const std::to_chars_result result = std::to_chars(buf, buf + sizeof(buf), value);
  if (result.ec != std::errc()) return "NaN";  // Not reachable: 64 bytes fit any double.
  return std::string(buf, result.ptr);
}

std::string EscapeLabelValue(absl::string_view value) {
  std::string out;
  out.reserve(value.size());
  for (char c : value) {
    switch (c) {
      case '\\':
        out += "\\\\";
        break;
      case '"':
        out += "\\\"";
        break;
      case '\n':
        out += "\\n";
        break;
      default:
        out += c;
    }
  }
  return out;
}

// ---- Counter / Gauge / Histogram ----

void Counter::Increment(double amount) {
  if (!(amount >= 0.0)) return;  // Negative or NaN.
  AtomicAdd(value_, amount);
}

void Gauge::Increment(double amount) { AtomicAdd(value_, amount); }

Histogram::Histogram(const std::vector<double>* upper_bounds)
    : upper_bounds_(upper_bounds), counts_(new std::atomic<uint64_t>[upper_bounds->size() + 1]) {
  for (size_t i = 0; i <= upper_bounds_->size(); ++i) counts_[i].store(0);
}

void Histogram::Observe(double value) {
  // First bound >= value; NaN compares false everywhere and lands in +Inf.
  const size_t bucket =
      std::isnan(value) ? upper_bounds_->size()
                        : std::lower_bound(upper_bounds_->begin(), upper_bounds_->end(), value) -
                              upper_bounds_->begin();
  counts_[bucket].fetch_add(1, std::memory_order_relaxed);
  AtomicAdd(sum_, value);
}

Histogram::Snapshot Histogram::Read() const {
  Snapshot snapshot;
  snapshot.cumulative_counts.resize(upper_bounds_->size() + 1);
  uint64_t running = 0;
  for (size_t i = 0; i <= upper_bounds_->size(); ++i) {
    running += counts_[i].load(std::memory_order_relaxed);
    snapshot.cumulative_counts[i] = running;
  }
  snapshot.count = running;
  snapshot.sum = sum_.load(std::memory_order_relaxed);
  return snapshot;
}

// ---- Families ----

MetricFamily::MetricFamily(std::string name, std::string help, std::vector<std::string> label_names,
                           Type type)
    : name_(std::move(name)),
      help_(std::move(help)),
      label_names_(std::move(label_names)),
      type_(type) {}

std::string MetricFamily::LabelString(const std::vector<std::string>& values,
                                      absl::string_view extra_name,
                                      absl::string_view extra_value) const {
  if (label_names_.empty() && extra_name.empty()) return "";
  std::string out = "{";
  for (size_t i = 0; i < label_names_.size(); ++i) {
    if (i > 0) out += ",";
    absl::StrAppend(&out, label_names_[i], "=\"", EscapeLabelValue(values[i]), "\"");
  }
  if (!extra_name.empty()) {
    if (!label_names_.empty()) out += ",";
    absl::StrAppend(&out, extra_name, "=\"", EscapeLabelValue(extra_value), "\"");
  }
  out += "}";
  return out;
}

void MetricFamily::RenderHeader(std::string* out) const {
  absl::StrAppend(out, "# HELP ", name_, " ", EscapeHelp(help_), "\n");
  absl::StrAppend(out, "# TYPE ", name_, " ", TypeName(type_), "\n");
}

template <typename T>
T& Family<T>::WithLabels(const std::vector<std::string>& label_values) {
  absl::MutexLock lock(&mu_);
  if (label_values.size() != label_names().size()) {
    label_errors_.fetch_add(1, std::memory_order_relaxed);
    if (detached_ == nullptr) detached_ = NewChild();
    return *detached_;
  }
  std::unique_ptr<T>& child = children_[label_values];
  if (child == nullptr) child = NewChild();
  return *child;
}

template class Family<Counter>;
template class Family<Gauge>;
template class Family<Histogram>;

CounterFamily::CounterFamily(std::string name, std::string help,
                             std::vector<std::string> label_names)
    : Family<Counter>(std::move(name), std::move(help), std::move(label_names), Type::kCounter) {}

std::unique_ptr<Counter> CounterFamily::NewChild() const { return std::make_unique<Counter>(); }

void CounterFamily::Render(std::string* out) const {
  RenderHeader(out);
  ForEachChild([&](const std::vector<std::string>& values, const Counter& child) {
    AppendSample(out, name(), LabelString(values), child.Value());
  });
}

GaugeFamily::GaugeFamily(std::string name, std::string help, std::vector<std::string> label_names)
    : Family<Gauge>(std::move(name), std::move(help), std::move(label_names), Type::kGauge) {}

std::unique_ptr<Gauge> GaugeFamily::NewChild() const { return std::make_unique<Gauge>(); }

void GaugeFamily::Render(std::string* out) const {
  RenderHeader(out);
  ForEachChild([&](const std::vector<std::string>& values, const Gauge& child) {
    AppendSample(out, name(), LabelString(values), child.Value());
  });
}

HistogramFamily::HistogramFamily(std::string name, std::string help,
                                 std::vector<std::string> label_names,
                                 std::vector<double> upper_bounds)
    : Family<Histogram>(std::move(name), std::move(help), std::move(label_names), Type::kHistogram),
      upper_bounds_(std::move(upper_bounds)) {}

std::unique_ptr<Histogram> HistogramFamily::NewChild() const {
  return std::make_unique<Histogram>(&upper_bounds_);
}

void HistogramFamily::Render(std::string* out) const {
  RenderHeader(out);
  const std::string bucket_name = absl::StrCat(name(), "_bucket");
  const std::string sum_name = absl::StrCat(name(), "_sum");
  const std::string count_name = absl::StrCat(name(), "_count");
  ForEachChild([&](const std::vector<std::string>& values, const Histogram& child) {
    const Histogram::Snapshot snapshot = child.Read();
    for (size_t i = 0; i < upper_bounds_.size(); ++i) {
      AppendSample(out, bucket_name, LabelString(values, "le", FormatMetricValue(upper_bounds_[i])),
                   static_cast<double>(snapshot.cumulative_counts[i]));
    }
    AppendSample(out, bucket_name, LabelString(values, "le", "+Inf"),
                 static_cast<double>(snapshot.count));
    AppendSample(out, sum_name, LabelString(values), snapshot.sum);
    AppendSample(out, count_name, LabelString(values), static_cast<double>(snapshot.count));
  });
}

// ---- Registry ----

absl::Status MetricsRegistry::CheckNew(absl::string_view name,
                                       const std::vector<std::string>& label_names,
                                       bool histogram) const {
  if (!IsValidMetricName(name)) {
    return absl::InvalidArgumentError(absl::StrCat("invalid metric name \"", name, "\""));
  }
  std::set<std::string> seen;
  for (const std::string& label : label_names) {
    if (!IsValidLabelName(label)) {
      return absl::InvalidArgumentError(
          absl::StrCat("metric ", name, ": invalid label name \"", label, "\""));
    }
    if (histogram && label == "le") {
      return absl::InvalidArgumentError(
          absl::StrCat("histogram ", name, ": \"le\" is reserved for buckets"));
    }
    if (!seen.insert(label).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("metric ", name, ": duplicate label name \"", label, "\""));
    }
  }
  // Series names the new family would write, against those each existing family writes.
  auto series = [](absl::string_view family_name, bool is_histogram) {
    std::vector<std::string> names = {std::string(family_name)};
    if (is_histogram) {
      for (const char* suffix : {"_bucket", "_sum", "_count"}) {
        names.push_back(absl::StrCat(family_name, suffix));
      }
    }
    return names;
  };
  const std::vector<std::string> wanted = series(name, histogram);
  for (const auto& family : families_) {
    for (const std::string& existing :
         series(family->name(), family->type() == MetricFamily::Type::kHistogram)) {
      if (std::find(wanted.begin(), wanted.end(), existing) != wanted.end()) {
        return absl::AlreadyExistsError(absl::StrCat(
            "metric ", name, " clashes with already registered metric ", family->name()));
      }
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<CounterFamily*> MetricsRegistry::AddCounter(std::string name, std::string help,
                                                           std::vector<std::string> label_names) {
  absl::MutexLock lock(&mu_);
  if (absl::Status status = CheckNew(name, label_names, false); !status.ok()) return status;
  auto family =
      std::make_unique<CounterFamily>(std::move(name), std::move(help), std::move(label_names));
  CounterFamily* result = family.get();
  if (result->label_names().empty()) result->WithLabels({});
  families_.push_back(std::move(family));
  return result;
}

absl::StatusOr<GaugeFamily*> MetricsRegistry::AddGauge(std::string name, std::string help,
                                                       std::vector<std::string> label_names) {
  absl::MutexLock lock(&mu_);
  if (absl::Status status = CheckNew(name, label_names, false); !status.ok()) return status;
  auto family =
      std::make_unique<GaugeFamily>(std::move(name), std::move(help), std::move(label_names));
  GaugeFamily* result = family.get();
  if (result->label_names().empty()) result->WithLabels({});
  families_.push_back(std::move(family));
  return result;
}

absl::StatusOr<HistogramFamily*> MetricsRegistry::AddHistogram(std::string name, std::string help,
                                                               std::vector<std::string> label_names,
                                                               std::vector<double> upper_bounds) {
  if (!upper_bounds.empty() && std::isinf(upper_bounds.back()) && upper_bounds.back() > 0) {
    upper_bounds.pop_back();
  }
  for (size_t i = 0; i < upper_bounds.size(); ++i) {
    if (!std::isfinite(upper_bounds[i])) {
      return absl::InvalidArgumentError(
          absl::StrCat("histogram ", name, ": bucket bounds must be finite"));
    }
    if (i > 0 && !(upper_bounds[i] > upper_bounds[i - 1])) {
      return absl::InvalidArgumentError(
          absl::StrCat("histogram ", name, ": bucket bounds must be strictly increasing"));
    }
  }
  absl::MutexLock lock(&mu_);
  if (absl::Status status = CheckNew(name, label_names, true); !status.ok()) return status;
  auto family = std::make_unique<HistogramFamily>(std::move(name), std::move(help),
                                                  std::move(label_names), std::move(upper_bounds));
  HistogramFamily* result = family.get();
  if (result->label_names().empty()) result->WithLabels({});
  families_.push_back(std::move(family));
  return result;
}

std::string MetricsRegistry::Render() const {
  std::string out;
  absl::MutexLock lock(&mu_);
  for (const auto& family : families_) family->Render(&out);
  return out;
}

// ---- ServerMetrics ----

std::vector<double> ServerMetrics::RequestDurationBuckets() {
  return {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120};
}

std::vector<double> ServerMetrics::QueueWaitBuckets() {
  return {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
}

absl::StatusOr<ServerMetrics> ServerMetrics::Create(MetricsRegistry* registry,
                                                    const BuildInfo& build) {
  if (registry == nullptr) return absl::InvalidArgumentError("ServerMetrics: null registry");
  ServerMetrics m;
  // Assigns the family or returns the registration error.
#define FACTLENS_ASSIGN_FAMILY(field, expr)         \
  do {                                              \
    auto family_or = (expr);                        \
    if (!family_or.ok()) return family_or.status(); \
    m.field = *family_or;                           \
  } while (0)
  FACTLENS_ASSIGN_FAMILY(
      requests_total, registry->AddCounter("factlens_requests_total",
                                           "RPCs finished, by method, model and gRPC status code.",
                                           {"rpc", "model", "code"}));
  FACTLENS_ASSIGN_FAMILY(
      request_duration_seconds,
      registry->AddHistogram("factlens_request_duration_seconds",
                             "RPC latency from arrival to reply, queue wait included.",
                             {"rpc", "model"}, RequestDurationBuckets()));
  FACTLENS_ASSIGN_FAMILY(
      queue_wait_seconds,
      registry->AddHistogram("factlens_queue_wait_seconds",
                             "Time a request waited in its model's queue before running.",
                             {"model"}, QueueWaitBuckets()));
  FACTLENS_ASSIGN_FAMILY(
      requests_in_flight,
      registry->AddGauge("factlens_requests_in_flight",
                         "Requests admitted for a model and not yet answered (queued or running).",
                         {"model"}));
  FACTLENS_ASSIGN_FAMILY(model_load_seconds,
                         registry->AddGauge("factlens_model_load_seconds",
                                            "Seconds the last load of a model took.", {"model"}));
  FACTLENS_ASSIGN_FAMILY(
      model_resident_bytes,
      registry->AddGauge("factlens_model_resident_bytes",
                         "Bytes of a loaded model's weights, by the device holding them.",
                         {"model", "device"}));
  FACTLENS_ASSIGN_FAMILY(
      model_ready, registry->AddGauge("factlens_model_ready",
                                      "1 when a model is loaded and serving, else 0.", {"model"}));
  FACTLENS_ASSIGN_FAMILY(
      gpu_memory_bytes,
      registry->AddGauge("factlens_gpu_memory_bytes",
                         "GPU memory by device and kind: allocated, reserved (allocator cache "
                         "included), peak_allocated, free and total (the card's, all processes); "
                         "only for devices that serve a model.",
                         {"device", "kind"}));
  FACTLENS_ASSIGN_FAMILY(
      trace_cache_lookups_total,
      registry->AddCounter("factlens_trace_cache_lookups_total",
                           "Forward-trace cache lookups by RPCs that analyse a prompt; result is "
                           "hit or miss.",
                           {"model", "result"}));
  FACTLENS_ASSIGN_FAMILY(build_info, registry->AddGauge("factlens_build_info",
                                                        "Build information; the value is always 1.",
                                                        {"version", "commit", "torch_version"}));
#undef FACTLENS_ASSIGN_FAMILY
  m.build_info->WithLabels({build.version, build.commit, build.torch_version}).Set(1);
  return m;
}

}  // namespace factlens
