#include "server/http_endpoint.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <atomic>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "server/metrics.h"

namespace factlens {
namespace {

struct HttpResponse {
  int status = 0;
  std::map<std::string, std::string> headers;  // lower-case names
  std::string body;
};

// A minimal HTTP/1.1 client (one request per connection) over a loopback socket.
absl::StatusOr<HttpResponse> Request(int port, absl::string_view method, absl::string_view path) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return absl::InternalError("socket() failed");
  timeval timeout{10, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return absl::UnavailableError(absl::StrCat("connect to port ", port, " failed"));
  }
  const std::string request = absl::StrCat(method, " ", path,
                                           " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: "
                                           "close\r\nContent-Length: 0\r\n\r\n");
  if (send(fd, request.data(), request.size(), 0) != static_cast<ssize_t>(request.size())) {
    close(fd);
    return absl::InternalError("send failed");
  }
  std::string raw;
  char buf[4096];
  ssize_t n;
  while ((n = recv(fd, buf, sizeof(buf), 0)) > 0) raw.append(buf, n);
  close(fd);
  const size_t header_end = raw.find("\r\n\r\n");
  if (header_end == std::string::npos) {
    return absl::DataLossError(absl::StrCat("no complete header in: ", raw));
  }
  HttpResponse response;
  std::vector<std::string> lines = absl::StrSplit(raw.substr(0, header_end), "\r\n");
  std::vector<std::string> status_line = absl::StrSplit(lines[0], absl::MaxSplits(' ', 2));
  if (status_line.size() < 2 || !absl::SimpleAtoi(status_line[1], &response.status)) {
    return absl::DataLossError(absl::StrCat("bad status line: ", lines[0]));
  }
  for (size_t i = 1; i < lines.size(); ++i) {
    const size_t colon = lines[i].find(':');
    if (colon == std::string::npos) continue;
    response.headers[absl::AsciiStrToLower(lines[i].substr(0, colon))] =
        std::string(absl::StripAsciiWhitespace(lines[i].substr(colon + 1)));
  }
  response.body = raw.substr(header_end + 4);
  return response;
}

// One endpoint for the whole suite: civetweb takes ~2 s to stop.
class HttpEndpointTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    registry_ = new MetricsRegistry();
    auto counter = registry_->AddCounter("demo_requests_total", "Demo requests.", {"code"});
    ASSERT_TRUE(counter.ok()) << counter.status();
    counter_ = *counter;
    ready_ = new std::atomic<bool>(false);
    endpoint_ = new HttpEndpoint(registry_, [](std::string* reason) {
      if (ready_->load()) return true;
      *reason = "model gpt2-facts-tiny still loading";
      return false;
    });
    absl::StatusOr<int> port = endpoint_->Start("127.0.0.1:0");
    ASSERT_TRUE(port.ok()) << port.status();
    ASSERT_GT(*port, 0);
    port_ = *port;
  }
  static void TearDownTestSuite() {
    delete endpoint_;  // Stops it.
    delete ready_;
    delete registry_;
  }

  static MetricsRegistry* registry_;
  static CounterFamily* counter_;
  static std::atomic<bool>* ready_;
  static HttpEndpoint* endpoint_;
  static int port_;
};

MetricsRegistry* HttpEndpointTest::registry_ = nullptr;
CounterFamily* HttpEndpointTest::counter_ = nullptr;
std::atomic<bool>* HttpEndpointTest::ready_ = nullptr;
HttpEndpoint* HttpEndpointTest::endpoint_ = nullptr;
int HttpEndpointTest::port_ = 0;

TEST_F(HttpEndpointTest, PortIsReported) {
  EXPECT_TRUE(endpoint_->running());
  EXPECT_EQ(endpoint_->port(), port_);
}

TEST_F(HttpEndpointTest, MetricsServesTheRegistry) {
  counter_->WithLabels({"OK"}).Increment(41);
  counter_->WithLabels({"OK"}).Increment();
  absl::StatusOr<HttpResponse> response = Request(port_, "GET", "/metrics");
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->status, 200);
  EXPECT_EQ(response->headers["content-type"], "text/plain; version=0.0.4; charset=utf-8");
  EXPECT_EQ(response->body, registry_->Render());
  EXPECT_TRUE(absl::StrContains(response->body, "demo_requests_total{code=\"OK\"} 42\n"))
      << response->body;
  EXPECT_EQ(response->headers["content-length"], absl::StrCat(response->body.size()));
}

TEST_F(HttpEndpointTest, MetricsIgnoresQueryString) {
  absl::StatusOr<HttpResponse> response = Request(port_, "GET", "/metrics?name[]=x");
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->status, 200);
  EXPECT_TRUE(absl::StrContains(response->body, "# TYPE demo_requests_total counter\n"));
}

TEST_F(HttpEndpointTest, HeadHasNoBody) {
  absl::StatusOr<HttpResponse> response = Request(port_, "HEAD", "/metrics");
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->status, 200);
  EXPECT_EQ(response->body, "");
  EXPECT_EQ(response->headers["content-length"], absl::StrCat(registry_->Render().size()));
}

TEST_F(HttpEndpointTest, Healthz) {
  absl::StatusOr<HttpResponse> response = Request(port_, "GET", "/healthz");
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->status, 200);
  EXPECT_EQ(response->body, "ok\n");
}

TEST_F(HttpEndpointTest, ReadyzFollowsTheCallback) {
  ready_->store(false);
  absl::StatusOr<HttpResponse> response = Request(port_, "GET", "/readyz");
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->status, 503);
  EXPECT_EQ(response->body, "not ready: model gpt2-facts-tiny still loading\n");

  ready_->store(true);
  response = Request(port_, "GET", "/readyz");
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->status, 200);
  EXPECT_EQ(response->body, "ready\n");
}

TEST_F(HttpEndpointTest, UnknownPathsAre404) {
  for (const char* path : {"/", "/metricsx", "/metrics/", "/foo/bar", "/healthz/x"}) {
    absl::StatusOr<HttpResponse> response = Request(port_, "GET", path);
    ASSERT_TRUE(response.ok()) << path << ": " << response.status();
    EXPECT_EQ(response->status, 404) << path;
  }
}

TEST_F(HttpEndpointTest, OtherMethodsAre405) {
  for (const char* method : {"POST", "PUT", "DELETE", "PATCH", "OPTIONS"}) {
    absl::StatusOr<HttpResponse> response = Request(port_, method, "/metrics");
    ASSERT_TRUE(response.ok()) << method << ": " << response.status();
    EXPECT_EQ(response->status, 405) << method;
    EXPECT_EQ(response->headers["allow"], "GET, HEAD") << method;
  }
}

TEST_F(HttpEndpointTest, SecondStartIsRejected) {
  EXPECT_EQ(endpoint_->Start("127.0.0.1:0").status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(endpoint_->port(), port_);
}

TEST_F(HttpEndpointTest, PortInUseGivesCivetwebsReason) {
  MetricsRegistry registry;
  HttpEndpoint other(&registry, nullptr);
  absl::StatusOr<int> result = other.Start(absl::StrCat("127.0.0.1:", port_));
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), absl::StatusCode::kUnavailable);
  // civetweb's own words, e.g. "cannot bind to 127.0.0.1:NNNN: 98 (Address already in use)".
  EXPECT_TRUE(absl::StrContains(result.status().message(), "cannot bind"))
      << result.status().message();
  EXPECT_FALSE(other.running());
  EXPECT_EQ(other.port(), 0);
}

TEST(HttpEndpointAddressTest, MalformedAddressesAreInvalidArgument) {
  MetricsRegistry registry;
  HttpEndpoint endpoint(&registry, nullptr);
  for (const char* address :
       {"", "127.0.0.1", "127.0.0.1:", "127.0.0.1:65536", "127.0.0.1:9x", "localhost:9090",
        "1.2.3:80", ":9090", "127.0.0.1:80,127.0.0.1:81", "::1:9090", "[::1]", "[]:80"}) {
    EXPECT_EQ(endpoint.Start(address).status().code(), absl::StatusCode::kInvalidArgument)
        << "\"" << address << "\"";
  }
  EXPECT_FALSE(endpoint.running());
}

TEST(HttpEndpointLifecycleTest, StopReleasesThePortAndDefaultsToReady) {
  MetricsRegistry registry;
  HttpEndpoint endpoint(&registry, nullptr);  // No readiness callback: always ready.
  absl::StatusOr<int> port = endpoint.Start("127.0.0.1:0");
  ASSERT_TRUE(port.ok()) << port.status();
  absl::StatusOr<HttpResponse> response = Request(*port, "GET", "/readyz");
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->status, 200);
  // An empty registry is an empty (valid) exposition.
  response = Request(*port, "GET", "/metrics");
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->status, 200);
  EXPECT_EQ(response->body, "");

  endpoint.Stop();
  EXPECT_FALSE(endpoint.running());
  EXPECT_EQ(endpoint.port(), 0);
  EXPECT_FALSE(Request(*port, "GET", "/healthz").ok()) << "still answering after Stop()";
  endpoint.Stop();  // Idempotent.

  // The same port can be bound again after Stop().
  absl::StatusOr<int> again = endpoint.Start(absl::StrCat("127.0.0.1:", *port));
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(*again, *port);
  response = Request(*port, "GET", "/healthz");
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->status, 200);
}

TEST(HttpEndpointLifecycleTest, ThrowingReadinessCallbackIs500) {
  MetricsRegistry registry;
  HttpEndpoint endpoint(&registry, [](std::string*) -> bool { throw std::runtime_error("boom"); });
  absl::StatusOr<int> port = endpoint.Start("127.0.0.1:0");
  ASSERT_TRUE(port.ok()) << port.status();
  absl::StatusOr<HttpResponse> response = Request(*port, "GET", "/readyz");
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->status, 500);
  EXPECT_EQ(response->body, "internal error: boom\n");
  // The server survives it.
  response = Request(*port, "GET", "/healthz");
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->status, 200);
}

}  // namespace
}  // namespace factlens
