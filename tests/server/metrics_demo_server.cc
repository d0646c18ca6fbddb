// Tests-only: serves ServerMetrics on a loopback port and moves factlens_requests_total a few
// times a second, for tests/server/prometheus_scrape_test.sh (a real Prometheus scrape).
//
//   metrics_demo_server [--address=127.0.0.1:0] [--port_file=PATH] [--max_seconds=120]
//
// Writes the bound port to --port_file (atomically, via rename) once listening; exits 0 on
// SIGTERM/SIGINT or after --max_seconds, 1 on a start-up error.

#include <chrono>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "server/http_endpoint.h"
#include "server/metrics.h"

namespace {

volatile std::sig_atomic_t g_stop = 0;
void OnSignal(int) { g_stop = 1; }

}  // namespace

int main(int argc, char** argv) {
  std::string address = "127.0.0.1:0";
  std::string port_file;
  int max_seconds = 120;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (absl::StartsWith(arg, "--address=")) {
      address = arg.substr(10);
    } else if (absl::StartsWith(arg, "--port_file=")) {
      port_file = arg.substr(12);
    } else if (absl::StartsWith(arg, "--max_seconds=") &&
               absl::SimpleAtoi(arg.substr(14), &max_seconds)) {
    } else {
      std::cerr << "unknown or bad argument: " << arg << "\n";
      return 2;
    }
  }
  std::signal(SIGTERM, OnSignal);
  std::signal(SIGINT, OnSignal);

  factlens::MetricsRegistry registry;
  absl::StatusOr<factlens::ServerMetrics> metrics =
      factlens::ServerMetrics::Create(&registry, {"0.1.0-demo", "deadbeef", "1.13.1"});
  if (!metrics.ok()) {
    std::cerr << metrics.status() << "\n";
    return 1;
  }
  const std::string model = "gpt2-facts-tiny";
  metrics->model_ready->WithLabels({model}).Set(1);
  metrics->model_load_seconds->WithLabels({model}).Set(0.75);
  metrics->model_resident_bytes->WithLabels({model, "cpu"}).Set(12582912);
  // Label values that need escaping, to prove Prometheus parses them.
  metrics->requests_total->WithLabels({"Locate\"Fact\\", "odd\nmodel", "OK"}).Increment();

  factlens::HttpEndpoint endpoint(&registry, [](std::string*) { return true; });
  absl::StatusOr<int> port = endpoint.Start(address);
  if (!port.ok()) {
    std::cerr << port.status() << "\n";
    return 1;
  }
  std::cout << "listening on port " << *port << std::endl;
  if (!port_file.empty()) {
    const std::string tmp = port_file + ".tmp";
    std::ofstream(tmp) << *port << "\n";
    if (std::rename(tmp.c_str(), port_file.c_str()) != 0) {
      std::cerr << "cannot write " << port_file << "\n";
      return 1;
    }
  }

  factlens::Counter& ok = metrics->requests_total->WithLabels({"LocateFact", model, "OK"});
  factlens::Histogram& latency =
      metrics->request_duration_seconds->WithLabels({"LocateFact", model});
  factlens::Histogram& queue_wait = metrics->queue_wait_seconds->WithLabels({model});
  factlens::Gauge& in_flight = metrics->requests_in_flight->WithLabels({model});
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(max_seconds);
  for (int tick = 0; !g_stop && std::chrono::steady_clock::now() < deadline; ++tick) {
    ok.Increment();
    latency.Observe(0.002 * (tick % 50));
    queue_wait.Observe(0.0005 * (tick % 7));
    in_flight.Set(tick % 3);
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  endpoint.Stop();
  return 0;
}
