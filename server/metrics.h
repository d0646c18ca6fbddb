// A small, thread-safe metrics registry that renders the Prometheus text exposition format 0.0.4.
//
// prometheus-cpp is not packaged for Debian 12, so this implements the subset the server needs:
// counters, gauges and fixed-bucket histograms, each a family (name, help, fixed label names) whose
// children are addressed by label values.
//
//   MetricsRegistry registry;
//   absl::StatusOr<ServerMetrics> m = ServerMetrics::Create(&registry, build_info);
//   Counter& ok = m->requests_total->WithLabels({"LocateFact", "gpt2-facts-tiny", "OK"});
//   ok.Increment();                    // lock-free; keep the reference for the hot path
//   std::string text = registry.Render();
//
// Thread-safety: every public method of every class here may be called concurrently from any
// thread. Updating a child (Increment/Set/Observe) is lock-free (atomics); WithLabels() takes a
// short per-family mutex (a map lookup), so cache the returned reference where it matters.
// Families and children are never removed, so references stay valid for the registry's lifetime.

#ifndef FACTLENS_SERVER_METRICS_H_
#define FACTLENS_SERVER_METRICS_H_

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"

namespace factlens {

// Formats a sample value the way Prometheus' parser (Go strconv.ParseFloat) reads it back exactly:
// "+Inf", "-Inf", "NaN"; integral values below 2^63 in magnitude as plain integers ("3", not
// "3e+00"); everything else as the shortest decimal string that round-trips ("0.001", "1e-07").
std::string FormatMetricValue(double value);

// Escapes a label value for the text format: backslash, double quote and newline.
std::string EscapeLabelValue(absl::string_view value);

// A monotonically increasing value. Thread-safe, lock-free.
class Counter {
 public:
  Counter() = default;
  Counter(const Counter&) = delete;
  Counter& operator=(const Counter&) = delete;

  // Adds `amount`, which must be >= 0 and not NaN; other amounts are ignored (a counter never
  // decreases).
  void Increment(double amount = 1.0);
  double Value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0.0};
};

// A value that can go up and down. Thread-safe, lock-free.
class Gauge {
 public:
  Gauge() = default;
  Gauge(const Gauge&) = delete;
  Gauge& operator=(const Gauge&) = delete;

  void Set(double value) { value_.store(value, std::memory_order_relaxed); }
  void Increment(double amount = 1.0);
  void Decrement(double amount = 1.0) { Increment(-amount); }
  double Value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0.0};
};

// Counts observations into fixed buckets. Thread-safe, lock-free.
class Histogram {
 public:
  // `upper_bounds` are the finite bucket bounds, strictly increasing (validated by the family);
  // the +Inf bucket is implicit.
  explicit Histogram(const std::vector<double>* upper_bounds);
  Histogram(const Histogram&) = delete;
  Histogram& operator=(const Histogram&) = delete;

  // Records one observation: it falls in the first bucket whose bound is >= value (bounds are
  // inclusive, as in Prometheus). NaN goes to the +Inf bucket and makes the sum NaN.
  void Observe(double value);

  struct Snapshot {
    std::vector<uint64_t> cumulative_counts;  // one per finite bound, then +Inf (== count)
    double sum = 0.0;
    uint64_t count = 0;
  };
  // A snapshot; under concurrent Observe() calls `sum` may lag or lead the counts by the
  // observations in flight, while the counts are always cumulative and count == the +Inf bucket.
  Snapshot Read() const;

 private:
  const std::vector<double>* upper_bounds_;          // owned by the family
  std::unique_ptr<std::atomic<uint64_t>[]> counts_;  // per bucket, not cumulative; last = +Inf
  std::atomic<double> sum_{0.0};
};

// Common part of a family: name, help, label names, and rendering.
class MetricFamily {
 public:
  enum class Type { kCounter, kGauge, kHistogram };

  virtual ~MetricFamily() = default;
  MetricFamily(const MetricFamily&) = delete;
  MetricFamily& operator=(const MetricFamily&) = delete;

  const std::string& name() const { return name_; }
  const std::string& help() const { return help_; }
  const std::vector<std::string>& label_names() const { return label_names_; }
  Type type() const { return type_; }

  // Appends "# HELP", "# TYPE" and one line per sample (children sorted by label values) to `out`.
  // Families without children render only their HELP and TYPE lines.
  virtual void Render(std::string* out) const = 0;

 protected:
  MetricFamily(std::string name, std::string help, std::vector<std::string> label_names, Type type);
  // `{a="x",b="y"}` for `values`, plus `extra_name="extra_value"` when extra_name is non-empty;
  // "" when there are no labels at all.
  std::string LabelString(const std::vector<std::string>& values, absl::string_view extra_name = "",
                          absl::string_view extra_value = "") const;
  void RenderHeader(std::string* out) const;

 private:
  std::string name_;
  std::string help_;
  std::vector<std::string> label_names_;
  Type type_;
};

// A family of children of type T addressed by label values. Not instantiated by users directly:
// use CounterFamily / GaugeFamily / HistogramFamily from MetricsRegistry.
template <typename T>
class Family : public MetricFamily {
 public:
  // Returns the child for `label_values` (one per label name, in order), creating it on first use.
  // Thread-safe (short mutex). The reference stays valid for the registry's lifetime. A wrong
  // number of values is a programming error: it returns a detached child that is never rendered
  // (and counts the mistake in label_errors()) rather than crashing the server.
  T& WithLabels(const std::vector<std::string>& label_values);

  // How many WithLabels() calls had the wrong number of label values.
  uint64_t label_errors() const { return label_errors_.load(std::memory_order_relaxed); }

 protected:
  using MetricFamily::MetricFamily;
  virtual std::unique_ptr<T> NewChild() const = 0;
  // Calls `fn(label_values, child)` for each child in label-value order, under the mutex.
  template <typename Fn>
  void ForEachChild(Fn fn) const {
    absl::MutexLock lock(&mu_);
    for (const auto& [values, child] : children_) fn(values, *child);
  }

 private:
  mutable absl::Mutex mu_;
  std::map<std::vector<std::string>, std::unique_ptr<T>> children_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<T> detached_ ABSL_GUARDED_BY(mu_);
  std::atomic<uint64_t> label_errors_{0};
};

class CounterFamily final : public Family<Counter> {
 public:
  CounterFamily(std::string name, std::string help, std::vector<std::string> label_names);
  void Render(std::string* out) const override;

 protected:
  std::unique_ptr<Counter> NewChild() const override;
};

class GaugeFamily final : public Family<Gauge> {
 public:
  GaugeFamily(std::string name, std::string help, std::vector<std::string> label_names);
  void Render(std::string* out) const override;

 protected:
  std::unique_ptr<Gauge> NewChild() const override;
};

class HistogramFamily final : public Family<Histogram> {
 public:
  // `upper_bounds` must already be validated (MetricsRegistry::AddHistogram does).
  HistogramFamily(std::string name, std::string help, std::vector<std::string> label_names,
                  std::vector<double> upper_bounds);
  void Render(std::string* out) const override;
  const std::vector<double>& upper_bounds() const { return upper_bounds_; }

 protected:
  std::unique_ptr<Histogram> NewChild() const override;

 private:
  const std::vector<double> upper_bounds_;
};

// Owns metric families and renders them in registration order. Thread-safe: registration and
// Render() may run concurrently with each other and with updates.
class MetricsRegistry {
 public:
  MetricsRegistry() = default;
  MetricsRegistry(const MetricsRegistry&) = delete;
  MetricsRegistry& operator=(const MetricsRegistry&) = delete;

  // Each Add* validates and registers a family; the returned pointer is owned by the registry and
  // valid for its lifetime. Errors (InvalidArgument): a name not matching [a-zA-Z_:][a-zA-Z0-9_:]*,
  // a label name not matching [a-zA-Z_][a-zA-Z0-9_]* or starting with "__", duplicate label names;
  // AlreadyExists: a name (or a histogram's _bucket/_sum/_count series) already registered.
  // A family without label names has its single child created at once, so it renders as 0.
  absl::StatusOr<CounterFamily*> AddCounter(std::string name, std::string help,
                                            std::vector<std::string> label_names = {});
  absl::StatusOr<GaugeFamily*> AddGauge(std::string name, std::string help,
                                        std::vector<std::string> label_names = {});
  // `upper_bounds`: finite, strictly increasing; a trailing +Inf is accepted and dropped (the +Inf
  // bucket is always present); may be empty (only +Inf). "le" is not allowed as a label name.
  absl::StatusOr<HistogramFamily*> AddHistogram(std::string name, std::string help,
                                                std::vector<std::string> label_names,
                                                std::vector<double> upper_bounds);

  // The whole registry in text format 0.0.4 (each line ends in '\n'; "" when empty).
  std::string Render() const;

 private:
  absl::Status CheckNew(absl::string_view name, const std::vector<std::string>& label_names,
                        bool histogram) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  mutable absl::Mutex mu_;
  std::vector<std::unique_ptr<MetricFamily>> families_ ABSL_GUARDED_BY(mu_);
};

// Labels of factlens_build_info.
struct BuildInfo {
  std::string version;
  std::string commit;
  std::string torch_version;
};

// The families the factlens server exports (see docs/metrics.md). Plain pointers into the
// registry passed to Create(); copyable; valid for that registry's lifetime.
struct ServerMetrics {
  // Registers every family in `registry` (which must outlive the result) and sets
  // factlens_build_info{version,commit,torch_version} = 1. Fails if a name is already taken.
  static absl::StatusOr<ServerMetrics> Create(MetricsRegistry* registry, const BuildInfo& build);

  // 1 ms .. 120 s.
  static std::vector<double> RequestDurationBuckets();
  // 1 ms .. 60 s.
  static std::vector<double> QueueWaitBuckets();

  CounterFamily* requests_total = nullptr;              // {rpc, model, code}
  HistogramFamily* request_duration_seconds = nullptr;  // {rpc, model}
  HistogramFamily* queue_wait_seconds = nullptr;        // {model}
  GaugeFamily* requests_in_flight = nullptr;            // {model}
  GaugeFamily* model_load_seconds = nullptr;            // {model}
  GaugeFamily* model_resident_bytes = nullptr;          // {model, device}
  GaugeFamily* model_ready = nullptr;                   // {model}, 0 or 1
  GaugeFamily* gpu_memory_bytes = nullptr;              // {device, kind}; set only for CUDA models
  CounterFamily* trace_cache_lookups_total = nullptr;   // {model, result}: result hit | miss
  GaugeFamily* build_info = nullptr;                    // {version, commit, torch_version} = 1
};

}  // namespace factlens

#endif  // FACTLENS_SERVER_METRICS_H_
