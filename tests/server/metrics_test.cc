#include "server/metrics.h"

#include <cmath>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "gtest/gtest.h"

namespace factlens {
namespace {

TEST(FormatMetricValueTest, PrometheusParsableForms) {
  EXPECT_EQ(FormatMetricValue(0), "0");
  EXPECT_EQ(FormatMetricValue(-0.0), "0");
  EXPECT_EQ(FormatMetricValue(3), "3");
  EXPECT_EQ(FormatMetricValue(-42), "-42");
  EXPECT_EQ(FormatMetricValue(1e15), "1000000000000000");
  EXPECT_EQ(FormatMetricValue(1073741824.0), "1073741824");
  EXPECT_EQ(FormatMetricValue(0.001), "0.001");
  EXPECT_EQ(FormatMetricValue(0.1), "0.1");
  EXPECT_EQ(FormatMetricValue(2.5), "2.5");
  EXPECT_EQ(FormatMetricValue(1e-7), "1e-07");
  EXPECT_EQ(FormatMetricValue(1e20), "1e+20");
  EXPECT_EQ(FormatMetricValue(std::numeric_limits<double>::infinity()), "+Inf");
  EXPECT_EQ(FormatMetricValue(-std::numeric_limits<double>::infinity()), "-Inf");
  EXPECT_EQ(FormatMetricValue(std::nan("")), "NaN");
  // Round trip of a value with no short decimal form.
  const double third = 1.0 / 3.0;
  EXPECT_EQ(std::stod(FormatMetricValue(third)), third);
}

TEST(EscapeLabelValueTest, BackslashQuoteNewline) {
  EXPECT_EQ(EscapeLabelValue("plain"), "plain");
  EXPECT_EQ(EscapeLabelValue("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
}

TEST(MetricsRegistryTest, EmptyRegistryRendersNothing) {
  MetricsRegistry registry;
  EXPECT_EQ(registry.Render(), "");
}

TEST(MetricsRegistryTest, ExactTextForSmallRegistry) {
  MetricsRegistry registry;
  auto requests = registry.AddCounter("test_requests_total", "Requests.", {"rpc", "code"});
  ASSERT_TRUE(requests.ok()) << requests.status();
  auto temperature = registry.AddGauge("test_temperature", "A gauge\\with\nescapes.");
  ASSERT_TRUE(temperature.ok()) << temperature.status();
  auto latency = registry.AddHistogram("test_latency_seconds", "Latency.", {"rpc"}, {0.01, 0.1, 1});
  ASSERT_TRUE(latency.ok()) << latency.status();
  auto unused = registry.AddGauge("test_unused", "No children yet.", {"device"});
  ASSERT_TRUE(unused.ok()) << unused.status();

  // Created in reverse label order: rendering sorts children by label values.
  (*requests)->WithLabels({"Locate", "OK"}).Increment();
  (*requests)->WithLabels({"Locate", "OK"}).Increment(2);
  (*requests)->WithLabels({"Ablate", "NOT_FOUND"}).Increment();
  (*temperature)->WithLabels({}).Set(21.5);
  (*temperature)->WithLabels({}).Decrement(0.25);
  Histogram& locate = (*latency)->WithLabels({"Locate"});
  locate.Observe(0.005);  // first bucket
  locate.Observe(0.01);   // bounds are inclusive: still the first bucket
  locate.Observe(0.5);
  locate.Observe(7);  // only +Inf

  EXPECT_EQ(registry.Render(),
            "# HELP test_requests_total Requests.\n"
            "# TYPE test_requests_total counter\n"
            "test_requests_total{rpc=\"Ablate\",code=\"NOT_FOUND\"} 1\n"
            "test_requests_total{rpc=\"Locate\",code=\"OK\"} 3\n"
            "# HELP test_temperature A gauge\\\\with\\nescapes.\n"
            "# TYPE test_temperature gauge\n"
            "test_temperature 21.25\n"
            "# HELP test_latency_seconds Latency.\n"
            "# TYPE test_latency_seconds histogram\n"
            "test_latency_seconds_bucket{rpc=\"Locate\",le=\"0.01\"} 2\n"
            "test_latency_seconds_bucket{rpc=\"Locate\",le=\"0.1\"} 2\n"
            "test_latency_seconds_bucket{rpc=\"Locate\",le=\"1\"} 3\n"
            "test_latency_seconds_bucket{rpc=\"Locate\",le=\"+Inf\"} 4\n"
            "test_latency_seconds_sum{rpc=\"Locate\"} 7.515\n"
            "test_latency_seconds_count{rpc=\"Locate\"} 4\n"
            "# HELP test_unused No children yet.\n"
            "# TYPE test_unused gauge\n");
}

TEST(MetricsRegistryTest, UnlabelledFamiliesRenderZeroAtOnce) {
  MetricsRegistry registry;
  ASSERT_TRUE(registry.AddCounter("c_total", "C.").ok());
  ASSERT_TRUE(registry.AddHistogram("h", "H.", {}, {1}).ok());
  EXPECT_EQ(registry.Render(),
            "# HELP c_total C.\n"
            "# TYPE c_total counter\n"
            "c_total 0\n"
            "# HELP h H.\n"
            "# TYPE h histogram\n"
            "h_bucket{le=\"1\"} 0\n"
            "h_bucket{le=\"+Inf\"} 0\n"
            "h_sum 0\n"
            "h_count 0\n");
}

TEST(MetricsRegistryTest, LabelValuesAreEscaped) {
  MetricsRegistry registry;
  auto family = registry.AddGauge("g", "G.", {"path"});
  ASSERT_TRUE(family.ok());
  (*family)->WithLabels({"C:\\models\\\"tiny\"\nv2"}).Set(1);
  EXPECT_TRUE(
      absl::StrContains(registry.Render(), "g{path=\"C:\\\\models\\\\\\\"tiny\\\"\\nv2\"} 1\n"))
      << registry.Render();
}

TEST(MetricsRegistryTest, CounterIgnoresNegativeAndNaN) {
  MetricsRegistry registry;
  auto family = registry.AddCounter("c_total", "C.");
  ASSERT_TRUE(family.ok());
  Counter& c = (*family)->WithLabels({});
  c.Increment(5);
  c.Increment(-1);
  c.Increment(std::nan(""));
  EXPECT_EQ(c.Value(), 5);
}

TEST(MetricsRegistryTest, SameLabelsSameChild) {
  MetricsRegistry registry;
  auto family = registry.AddCounter("c_total", "C.", {"a"});
  ASSERT_TRUE(family.ok());
  EXPECT_EQ(&(*family)->WithLabels({"x"}), &(*family)->WithLabels({"x"}));
  EXPECT_NE(&(*family)->WithLabels({"x"}), &(*family)->WithLabels({"y"}));
}

TEST(MetricsRegistryTest, WrongLabelCountIsCountedAndNotRendered) {
  MetricsRegistry registry;
  auto family = registry.AddCounter("c_total", "C.", {"a", "b"});
  ASSERT_TRUE(family.ok());
  (*family)->WithLabels({"only-one"}).Increment();
  EXPECT_EQ((*family)->label_errors(), 1u);
  EXPECT_EQ(registry.Render(), "# HELP c_total C.\n# TYPE c_total counter\n");
}

TEST(MetricsRegistryTest, RegistrationErrors) {
  MetricsRegistry registry;
  ASSERT_TRUE(registry.AddCounter("x_total", "X.").ok());
  EXPECT_EQ(registry.AddGauge("x_total", "Dup.").status().code(), absl::StatusCode::kAlreadyExists);
  ASSERT_TRUE(registry.AddHistogram("lat", "L.", {}, {1}).ok());
  // A histogram's series names are taken too, in both directions.
  EXPECT_EQ(registry.AddCounter("lat_count", "C.").status().code(),
            absl::StatusCode::kAlreadyExists);
  ASSERT_TRUE(registry.AddGauge("q_sum", "Q.").ok());
  EXPECT_EQ(registry.AddHistogram("q", "Q.", {}, {1}).status().code(),
            absl::StatusCode::kAlreadyExists);

  EXPECT_EQ(registry.AddGauge("1bad", "B.").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(registry.AddGauge("bad-name", "B.").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(registry.AddGauge("g1", "B.", {"bad-label"}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(registry.AddGauge("g2", "B.", {"__reserved"}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(registry.AddGauge("g3", "B.", {"a", "a"}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(registry.AddHistogram("h1", "B.", {"le"}, {1}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(registry.AddHistogram("h2", "B.", {}, {1, 1}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(registry.AddHistogram("h3", "B.", {}, {2, 1}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(registry.AddHistogram("h4", "B.", {}, {std::nan("")}).status().code(),
            absl::StatusCode::kInvalidArgument);
  // A trailing +Inf is accepted and not duplicated.
  auto h5 = registry.AddHistogram("h5", "B.", {}, {1, std::numeric_limits<double>::infinity()});
  ASSERT_TRUE(h5.ok()) << h5.status();
  EXPECT_EQ((*h5)->upper_bounds(), std::vector<double>({1}));
}

TEST(MetricsRegistryTest, ConcurrentUpdatesSumCorrectly) {
  MetricsRegistry registry;
  auto counter = registry.AddCounter("c_total", "C.", {"t"});
  auto gauge = registry.AddGauge("g", "G.");
  auto histogram = registry.AddHistogram("h", "H.", {}, {0.5});
  ASSERT_TRUE(counter.ok() && gauge.ok() && histogram.ok());
  constexpr int kThreads = 8;
  constexpr int kIterations = 20000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kIterations; ++i) {
        // Half the threads share a child; all look it up every time (mutex path).
        (*counter)->WithLabels({t % 2 == 0 ? "even" : "odd"}).Increment();
        (*gauge)->WithLabels({}).Increment(t % 2 == 0 ? 1 : -0.5);
        (*histogram)->WithLabels({}).Observe(i % 2 == 0 ? 0.25 : 1.0);
        if (i % 1000 == 0) registry.Render();  // Rendering concurrently with updates.
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ((*counter)->WithLabels({"even"}).Value(), kThreads / 2 * kIterations);
  EXPECT_EQ((*counter)->WithLabels({"odd"}).Value(), kThreads / 2 * kIterations);
  EXPECT_EQ((*gauge)->WithLabels({}).Value(), kThreads / 2 * kIterations * 0.5);
  const Histogram::Snapshot snapshot = (*histogram)->WithLabels({}).Read();
  EXPECT_EQ(snapshot.count, static_cast<uint64_t>(kThreads * kIterations));
  EXPECT_EQ(snapshot.cumulative_counts[0], static_cast<uint64_t>(kThreads * kIterations / 2));
  EXPECT_EQ(snapshot.sum, kThreads * kIterations / 2 * 1.25);
}

TEST(ServerMetricsTest, RegistersTheServerFamilies) {
  MetricsRegistry registry;
  auto metrics = ServerMetrics::Create(&registry, {"0.1.0", "abc123", "1.13.1"});
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  metrics->requests_total->WithLabels({"LocateFact", "gpt2-facts-tiny", "OK"}).Increment();
  metrics->request_duration_seconds->WithLabels({"LocateFact", "gpt2-facts-tiny"}).Observe(0.2);
  const std::string text = registry.Render();
  for (const char* expected : {
           "# TYPE factlens_requests_total counter\n",
           "factlens_requests_total{rpc=\"LocateFact\",model=\"gpt2-facts-tiny\",code=\"OK\"} 1\n",
           "# TYPE factlens_request_duration_seconds histogram\n",
           "factlens_request_duration_seconds_bucket{rpc=\"LocateFact\",model=\"gpt2-facts-tiny\","
           "le=\"0.001\"} 0\n",
           "factlens_request_duration_seconds_bucket{rpc=\"LocateFact\",model=\"gpt2-facts-tiny\","
           "le=\"0.25\"} 1\n",
           "factlens_request_duration_seconds_bucket{rpc=\"LocateFact\",model=\"gpt2-facts-tiny\","
           "le=\"120\"} 1\n",
           "# TYPE factlens_queue_wait_seconds histogram\n",
           "# TYPE factlens_requests_in_flight gauge\n",
           "# TYPE factlens_model_load_seconds gauge\n",
           "# TYPE factlens_model_resident_bytes gauge\n",
           "# TYPE factlens_model_ready gauge\n",
           "# TYPE factlens_gpu_memory_bytes gauge\n",
           "factlens_build_info{version=\"0.1.0\",commit=\"abc123\",torch_version=\"1.13.1\"} 1\n",
       }) {
    EXPECT_TRUE(absl::StrContains(text, expected)) << "missing: " << expected << "\nin:\n" << text;
  }
  EXPECT_EQ(ServerMetrics::RequestDurationBuckets().front(), 0.001);
  EXPECT_EQ(ServerMetrics::RequestDurationBuckets().back(), 120);
  // A second registration in the same registry collides.
  EXPECT_EQ(ServerMetrics::Create(&registry, {}).status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(ServerMetrics::Create(nullptr, {}).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace factlens
