#include "server/http_endpoint.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "server/http_endpoint_internal.h"
#include "server/metrics.h"

namespace factlens {
namespace {

struct HttpResponse {
  int status = 0;
  std::map<std::string, std::string> headers;  // lower-case names
  std::string body;
};

using Millis = std::chrono::milliseconds;
using SteadyClock = std::chrono::steady_clock;

double MillisSince(SteadyClock::time_point start) {
  return std::chrono::duration<double, std::milli>(SteadyClock::now() - start).count();
}

// A raw response: status line, headers, body.
absl::StatusOr<HttpResponse> ParseResponse(absl::string_view raw) {
  const size_t header_end = raw.find("\r\n\r\n");
  if (header_end == absl::string_view::npos) {
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
  response.body = std::string(raw.substr(header_end + 4));
  return response;
}

// A client socket on 127.0.0.1 that closes itself in every outcome.
class Socket {
 public:
  // Connects to 127.0.0.1:`port`; with `receive_buffer` > 0 SO_RCVBUF is set first. ok() tells.
  explicit Socket(int port, int receive_buffer = 0) {
    fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd_ < 0) return;
    if (receive_buffer > 0) {
      setsockopt(fd_, SOL_SOCKET, SO_RCVBUF, &receive_buffer, sizeof(receive_buffer));
    }
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) Reset();
  }
  ~Socket() { Reset(); }
  Socket(Socket&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  Socket& operator=(Socket&&) = delete;

  bool ok() const { return fd_ >= 0; }
  int fd() const { return fd_; }
  void Reset() {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }

  bool Send(absl::string_view data) const {
    while (!data.empty()) {
      const ssize_t n = send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return false;
      data.remove_prefix(static_cast<size_t>(n));
    }
    return true;
  }

  // Whether something can be read (data, end of input or a reset) within `timeout_ms`.
  bool Readable(int timeout_ms) const {
    pollfd p{fd_, POLLIN, 0};
    return poll(&p, 1, timeout_ms) > 0;
  }

  // Reads until the server ends the connection (end of input or reset) or `timeout_ms` passes.
  struct Reading {
    std::string data;
    bool ended = false;
  };
  Reading ReadUntilClosed(int timeout_ms) const {
    Reading reading;
    const auto deadline = SteadyClock::now() + Millis(timeout_ms);
    char buffer[65536];
    while (true) {
      const auto left = std::chrono::duration_cast<Millis>(deadline - SteadyClock::now()).count();
      if (left <= 0 || !Readable(static_cast<int>(left))) return reading;
      const ssize_t n = recv(fd_, buffer, sizeof(buffer), 0);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        reading.ended = true;
        return reading;
      }
      reading.data.append(buffer, static_cast<size_t>(n));
    }
  }

 private:
  int fd_ = -1;
};

// A minimal HTTP/1.1 client (one request per connection) over a loopback socket.
absl::StatusOr<HttpResponse> Request(int port, absl::string_view method, absl::string_view path) {
  Socket socket(port);
  if (!socket.ok())
    return absl::UnavailableError(absl::StrCat("connect to port ", port, " failed"));
  const std::string request = absl::StrCat(method, " ", path,
                                           " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: "
                                           "close\r\nContent-Length: 0\r\n\r\n");
  if (!socket.Send(request)) return absl::InternalError("send failed");
  Socket::Reading reading = socket.ReadUntilClosed(10000);
  if (!reading.ended) return absl::DeadlineExceededError("no end of response within 10 s");
  return ParseResponse(reading.data);
}

// Request() that also reports how long it took.
absl::StatusOr<HttpResponse> TimedRequest(int port, absl::string_view path, double* millis) {
  const auto start = SteadyClock::now();
  absl::StatusOr<HttpResponse> response = Request(port, "GET", path);
  *millis = MillisSince(start);
  return response;
}

// One endpoint for most of the suite.
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

TEST_F(HttpEndpointTest, PortInUseIsUnavailableWithTheSystemsReason) {
  MetricsRegistry registry;
  HttpEndpoint other(&registry, nullptr);
  const std::string address = absl::StrCat("127.0.0.1:", port_);
  absl::StatusOr<int> result = other.Start(address);
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), absl::StatusCode::kUnavailable);
  // "metrics endpoint: cannot bind to 127.0.0.1:NNNN: Address already in use".
  EXPECT_TRUE(absl::StrContains(result.status().message(), "cannot bind"))
      << result.status().message();
  EXPECT_TRUE(absl::StrContains(result.status().message(), address)) << result.status().message();
  EXPECT_TRUE(absl::StrContains(result.status().message(), "Address already in use"))
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

// ---- Clients that misbehave (issue 13): none of them may delay a probe. ----

// What every idle client sends: a request line and one header, then nothing.
constexpr absl::string_view kPartialRequest = "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n";

TEST_F(HttpEndpointTest, ProbesAnswerPromptlyWhile200ConnectionsIdle) {
  std::vector<Socket> idle;
  for (int i = 0; i < 200; ++i) {
    idle.emplace_back(port_);
    ASSERT_TRUE(idle.back().ok()) << "connection " << i;
    ASSERT_TRUE(idle.back().Send(kPartialRequest)) << "connection " << i;
  }
  std::this_thread::sleep_for(Millis(50));  // Let the endpoint accept and read them all.
  for (const char* path : {"/healthz", "/readyz", "/metrics"}) {
    double millis = 0;
    absl::StatusOr<HttpResponse> response = TimedRequest(port_, path, &millis);
    ASSERT_TRUE(response.ok()) << path << ": " << response.status();
    EXPECT_NE(response->status, 0) << path;
    std::cout << "[ measured ] GET " << path << " with 200 idle connections: " << millis << " ms\n";
    EXPECT_LT(millis, 2000) << path;
  }
  // The idle connections were held open, not dropped to make room.
  for (size_t i = 0; i < idle.size(); ++i) {
    EXPECT_FALSE(idle[i].Readable(0)) << "idle connection " << i << " was closed";
  }
}

TEST_F(HttpEndpointTest, SlowlorisDoesNotDelayProbes) {
  Socket slow(port_);
  ASSERT_TRUE(slow.ok());
  ASSERT_TRUE(slow.Send("GET /healthz HTTP/1.1\r\nX-Slow: "));
  double slowest = 0;
  for (int i = 0; i < 10; ++i) {  // One byte every 100 ms, a probe in between.
    const auto round = SteadyClock::now();
    ASSERT_TRUE(slow.Send("a"));
    double millis = 0;
    absl::StatusOr<HttpResponse> response = TimedRequest(port_, "/healthz", &millis);
    ASSERT_TRUE(response.ok()) << response.status();
    EXPECT_EQ(response->status, 200);
    slowest = std::max(slowest, millis);
    std::this_thread::sleep_for(Millis(100) - (SteadyClock::now() - round));
  }
  std::cout << "[ measured ] slowest GET /healthz beside a slowloris client: " << slowest
            << " ms\n";
  EXPECT_LT(slowest, 2000);
  // The slow client is still served once its head is complete (within the 5 s deadline).
  ASSERT_TRUE(slow.Send("\r\n\r\n"));
  absl::StatusOr<HttpResponse> response = ParseResponse(slow.ReadUntilClosed(2000).data);
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->status, 200);
  EXPECT_EQ(response->body, "ok\n");
}

TEST_F(HttpEndpointTest, RequestBodyIsIgnoredAndTheResponseArrivesWhole) {
  Socket client(port_);
  ASSERT_TRUE(client.ok());
  const std::string body(100000, 'b');
  ASSERT_TRUE(client.Send(
      absl::StrCat("POST /metrics HTTP/1.1\r\nContent-Length: ", body.size(), "\r\n\r\n", body)));
  absl::StatusOr<HttpResponse> response = ParseResponse(client.ReadUntilClosed(2000).data);
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->status, 405);
  EXPECT_EQ(response->body, "method not allowed\n");
}

TEST_F(HttpEndpointTest, OversizedHeadsGet431AndClose) {
  const std::string big(10000, 'a');
  std::string many_headers = "GET /healthz HTTP/1.1\r\n";
  for (int i = 0; i < 600; ++i) absl::StrAppend(&many_headers, "X-Header-", i, ": value\r\n");
  many_headers += "\r\n";
  for (const std::string& request : {
           absl::StrCat("GET /healthz HTTP/1.1\r\nX-Big: ", big, "\r\n\r\n"),
           absl::StrCat("GET /", big, " HTTP/1.1\r\n\r\n"),
           many_headers,
       }) {
    Socket client(port_);
    ASSERT_TRUE(client.ok());
    ASSERT_TRUE(client.Send(request));
    Socket::Reading reading = client.ReadUntilClosed(2000);
    EXPECT_TRUE(reading.ended) << request.substr(0, 40);
    absl::StatusOr<HttpResponse> response = ParseResponse(reading.data);
    ASSERT_TRUE(response.ok()) << response.status();
    EXPECT_EQ(response->status, 431) << request.substr(0, 40);
    EXPECT_EQ(response->headers["connection"], "close");
  }
  // A head of exactly the limit (8192 bytes) is still served.
  std::string exact = "GET /healthz HTTP/1.1\r\nX-Pad: ";
  exact += std::string(8192 - exact.size() - 4, 'p') + "\r\n\r\n";
  ASSERT_EQ(exact.size(), 8192u);
  Socket client(port_);
  ASSERT_TRUE(client.ok());
  ASSERT_TRUE(client.Send(exact));
  absl::StatusOr<HttpResponse> response = ParseResponse(client.ReadUntilClosed(2000).data);
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->status, 200);
}

TEST_F(HttpEndpointTest, GarbageGets400OrACloseAndTheEndpointSurvives) {
  // The start of a TLS 1.2 ClientHello record, and HTTP/2's connection preface.
  const std::string tls_hello("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\x9a\x4b\x11", 14);
  const std::string h2_preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
  // These two are refused as soon as they arrive, with the client still sending.
  for (const std::string& input : {tls_hello, h2_preface}) {
    Socket client(port_);
    ASSERT_TRUE(client.ok());
    ASSERT_TRUE(client.Send(input));
    Socket::Reading reading = client.ReadUntilClosed(2000);
    EXPECT_TRUE(reading.ended);
    EXPECT_TRUE(absl::StartsWith(reading.data, "HTTP/1.1 400 Bad Request\r\n")) << reading.data;
  }
  std::vector<std::string> inputs = {tls_hello,
                                     h2_preface,
                                     std::string(64, '\0'),
                                     "\xff\xfe\xfd\r\n\r\n",
                                     "GET\r\n\r\n",
                                     "\r\n\r\n\r\n",
                                     "GET / HTTP/1.1\r\n folded: x\r\n\r\n"};
  std::mt19937 random(13);
  for (int i = 0; i < 8; ++i) {
    std::string bytes(512, '\0');
    for (char& c : bytes) c = static_cast<char>(random() & 0xff);
    inputs.push_back(bytes);
  }
  for (size_t i = 0; i < inputs.size(); ++i) {
    Socket client(port_);
    ASSERT_TRUE(client.ok());
    ASSERT_TRUE(client.Send(inputs[i])) << "input " << i;
    shutdown(client.fd(), SHUT_WR);  // Nothing more comes: an incomplete head ends in a close.
    Socket::Reading reading = client.ReadUntilClosed(2000);
    EXPECT_TRUE(reading.ended) << "input " << i << ": no answer and no close within 2 s";
    EXPECT_TRUE(reading.data.empty() || absl::StartsWith(reading.data, "HTTP/1.1 400 "))
        << "input " << i << ": " << reading.data;
  }
  absl::StatusOr<HttpResponse> response = Request(port_, "GET", "/healthz");
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->status, 200);
}

// An endpoint with `options` and no readiness callback, started on 127.0.0.1:0; null (and a test
// failure) if it did not start.
std::unique_ptr<HttpEndpoint> StartEndpoint(const MetricsRegistry* registry,
                                            HttpEndpointOptions options, int* port) {
  auto endpoint = std::make_unique<HttpEndpoint>(registry, nullptr, options);
  absl::StatusOr<int> bound = endpoint->Start("127.0.0.1:0");
  if (!bound.ok()) {
    ADD_FAILURE() << bound.status();
    return nullptr;
  }
  *port = *bound;
  return endpoint;
}

TEST(HttpEndpointLimitsTest, HeaderDeadlineClosesIdleConnections) {
  MetricsRegistry registry;
  HttpEndpointOptions options;
  options.header_timeout_ms = 300;
  int port = 0;
  std::unique_ptr<HttpEndpoint> endpoint = StartEndpoint(&registry, options, &port);
  ASSERT_NE(endpoint, nullptr);
  const auto start = SteadyClock::now();
  Socket silent(port);
  Socket partial(port);
  ASSERT_TRUE(silent.ok() && partial.ok());
  ASSERT_TRUE(partial.Send(kPartialRequest));
  for (const Socket* client : {&silent, &partial}) {
    Socket::Reading reading = client->ReadUntilClosed(3000);
    EXPECT_TRUE(reading.ended) << "not closed within 3 s";
    EXPECT_EQ(reading.data, "");  // Closed without an answer.
  }
  const double millis = MillisSince(start);
  std::cout << "[ measured ] idle connections closed after " << millis
            << " ms (header deadline 300 ms)\n";
  EXPECT_GE(millis, 250);
  EXPECT_LT(millis, 2000);
  // A prompt client is served as usual.
  absl::StatusOr<HttpResponse> response = Request(port, "GET", "/healthz");
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->status, 200);
}

TEST(HttpEndpointLimitsTest, ConnectionCapEvictsTheConnectionIdleTheLongest) {
  MetricsRegistry registry;
  HttpEndpointOptions options;
  options.max_connections = 4;
  int port = 0;
  std::unique_ptr<HttpEndpoint> endpoint = StartEndpoint(&registry, options, &port);
  ASSERT_NE(endpoint, nullptr);
  std::vector<Socket> idle;  // a, b, c, d
  for (int i = 0; i < 4; ++i) {
    idle.emplace_back(port);
    ASSERT_TRUE(idle.back().ok());
    ASSERT_TRUE(idle.back().Send(kPartialRequest));
    std::this_thread::sleep_for(Millis(100));
  }
  ASSERT_TRUE(idle[0].Send("X-More: 1\r\n"));  // a is active again: b is now idle the longest.
  std::this_thread::sleep_for(Millis(100));

  // A fifth connection: b makes room, the probe is answered.
  absl::StatusOr<HttpResponse> response = Request(port, "GET", "/healthz");
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->status, 200);
  Socket::Reading evicted = idle[1].ReadUntilClosed(2000);
  EXPECT_TRUE(evicted.ended) << "the connection idle the longest was not closed";
  EXPECT_EQ(evicted.data, "");
  for (int i : {0, 2, 3}) EXPECT_FALSE(idle[i].Readable(0)) << "connection " << i << " closed";
  // The survivors are still served.
  ASSERT_TRUE(idle[0].Send("\r\n"));
  response = ParseResponse(idle[0].ReadUntilClosed(2000).data);
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->status, 200);
}

TEST(HttpEndpointLimitsTest, ClientThatNeverReadsDoesNotBlockProbes) {
  // /metrics must be larger than what the kernel's socket buffers can take in (the endpoint's
  // send buffer grows up to tcp_wmem's maximum), so that the endpoint has to wait for the client.
  size_t send_buffer_max = size_t{4} << 20;
  {
    std::ifstream tcp_wmem("/proc/sys/net/ipv4/tcp_wmem");
    size_t low = 0, initial = 0, max = 0;
    if (tcp_wmem >> low >> initial >> max) send_buffer_max = max;
  }
  ASSERT_LT(send_buffer_max, size_t{64} << 20) << "tcp_wmem's maximum is too large for this test";
  MetricsRegistry registry;
  auto gauge = registry.AddGauge("padding", "Makes /metrics megabytes long.", {"name"});
  ASSERT_TRUE(gauge.ok()) << gauge.status();
  const int children = static_cast<int>((send_buffer_max + (size_t{2} << 20)) / 80) + 1;
  for (int i = 0; i < children; ++i) {
    (*gauge)->WithLabels({absl::StrCat(std::string(60, 'x'), i)}).Set(i);
  }
  const size_t metrics_size = registry.Render().size();
  ASSERT_GT(metrics_size, send_buffer_max + (size_t{2} << 20));
  HttpEndpointOptions options;
  options.write_timeout_ms = 500;
  int port = 0;
  std::unique_ptr<HttpEndpoint> endpoint = StartEndpoint(&registry, options, &port);
  ASSERT_NE(endpoint, nullptr);

  Socket stalled(port, /*receive_buffer=*/4096);
  ASSERT_TRUE(stalled.ok());
  const auto asked = SteadyClock::now();
  ASSERT_TRUE(stalled.Send("GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"));
  std::this_thread::sleep_for(Millis(100));  // The endpoint is now stuck on a full socket buffer.
  for (const char* path : {"/healthz", "/readyz"}) {
    double millis = 0;
    absl::StatusOr<HttpResponse> response = TimedRequest(port, path, &millis);
    ASSERT_TRUE(response.ok()) << path << ": " << response.status();
    EXPECT_EQ(response->status, 200) << path;
    std::cout << "[ measured ] GET " << path << " beside a client not reading "
              << (metrics_size >> 20) << " MiB of /metrics: " << millis << " ms\n";
    EXPECT_LT(millis, 2000) << path;
  }
  // Past the write deadline the endpoint gave up on that client: it gets a part, then the end.
  std::this_thread::sleep_for(Millis(800) - (SteadyClock::now() - asked));
  Socket::Reading reading = stalled.ReadUntilClosed(5000);
  EXPECT_TRUE(reading.ended);
  EXPECT_LT(reading.data.size(), metrics_size);
  std::cout << "[ measured ] the stalled client got " << reading.data.size() << " of "
            << metrics_size << " bytes, then the connection was reset\n";
}

TEST(HttpEndpointLifecycleTest, StopIsPromptWithOpenConnections) {
  MetricsRegistry registry;
  HttpEndpoint endpoint(&registry, nullptr);
  absl::StatusOr<int> port = endpoint.Start("127.0.0.1:0");
  ASSERT_TRUE(port.ok()) << port.status();
  std::vector<Socket> idle;
  for (int i = 0; i < 50; ++i) {
    idle.emplace_back(*port);
    ASSERT_TRUE(idle.back().ok());
    ASSERT_TRUE(idle.back().Send(kPartialRequest));
  }
  std::this_thread::sleep_for(Millis(50));
  const auto start = SteadyClock::now();
  endpoint.Stop();
  const double millis = MillisSince(start);
  std::cout << "[ measured ] Stop() with 50 open connections: " << millis << " ms\n";
  EXPECT_LT(millis, 1000);
  for (const Socket& client : idle) EXPECT_TRUE(client.ReadUntilClosed(1000).ended);
}

// ---- The request-head parser on its own. ----

using http_internal::ParseRequestHead;
using http_internal::RequestHead;

TEST(ParseRequestHeadTest, CompleteHeads) {
  const std::string request = "GET /metrics?name[]=x HTTP/1.1\r\nHost: a\r\nX-Empty:\r\n\r\nBODY";
  RequestHead head = ParseRequestHead(request, 8192);
  ASSERT_EQ(head.outcome, RequestHead::Outcome::kComplete) << head.error;
  EXPECT_EQ(head.method, "GET");
  EXPECT_EQ(head.path, "/metrics");
  EXPECT_EQ(head.minor_version, 1);
  EXPECT_EQ(head.head_bytes, request.size() - 4);

  // Bare LF line endings, an empty line first, HTTP/1.0.
  head = ParseRequestHead("\r\nHEAD /healthz HTTP/1.0\nHost: a\n\n", 8192);
  ASSERT_EQ(head.outcome, RequestHead::Outcome::kComplete) << head.error;
  EXPECT_EQ(head.method, "HEAD");
  EXPECT_EQ(head.path, "/healthz");
  EXPECT_EQ(head.minor_version, 0);

  // Absolute form; any method token is syntax (the endpoint answers 405).
  head = ParseRequestHead("DELETE http://h:9/readyz?q#f HTTP/1.1\r\n\r\n", 8192);
  ASSERT_EQ(head.outcome, RequestHead::Outcome::kComplete) << head.error;
  EXPECT_EQ(head.method, "DELETE");
  EXPECT_EQ(head.path, "/readyz");
  head = ParseRequestHead("GET https://h HTTP/1.1\r\n\r\n", 8192);
  ASSERT_EQ(head.outcome, RequestHead::Outcome::kComplete) << head.error;
  EXPECT_EQ(head.path, "/");
}

TEST(ParseRequestHeadTest, EveryPrefixOfAValidHeadIsIncomplete) {
  const std::string request = "GET /readyz HTTP/1.1\r\nHost: 127.0.0.1:9090\r\nAccept: */*\r\n\r\n";
  for (size_t n = 0; n < request.size(); ++n) {
    RequestHead head = ParseRequestHead(absl::string_view(request).substr(0, n), 8192);
    EXPECT_EQ(head.outcome, RequestHead::Outcome::kIncomplete) << n << " bytes: " << head.error;
  }
}

TEST(ParseRequestHeadTest, MalformedHeadsAre400) {
  using std::string_literals::operator""s;
  for (const std::string& input : {
           "\x16\x03\x01"s,  // TLS, refused before any line ends
           "G\0ET"s,
           std::string("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
           std::string("PRI * HTTP/2"),  // refused before the line ends
           std::string("GET /\r\n\r\n"),
           std::string("GET  / HTTP/1.1\r\n\r\n"),
           std::string(" GET / HTTP/1.1\r\n\r\n"),
           std::string("GET / HTTP/1.1 \r\n\r\n"),
           std::string("GET / HTTP/1.12\r\n\r\n"),
           std::string("GET / HTTP/1.x\r\n\r\n"),
           std::string("GET /a\x7f HTTP/1.1\r\n\r\n"),
           std::string("GET metrics HTTP/1.1\r\n\r\n"),
           std::string("GET http:///x HTTP/1.1\r\n\r\n"),
           std::string("GET / HTTP/1.1\rX\r\n\r\n"),
           std::string("GET / HTTP/1.1\r\nHost : a\r\n\r\n"),
           std::string("GET / HTTP/1.1\r\n: a\r\n\r\n"),
           std::string("GET / HTTP/1.1\r\nNoColon\r\n\r\n"),
           std::string("GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n"),
           "GET / HTTP/1.1\r\nA: b\0c\r\n\r\n"s,
           std::string("GET / HTTP/1.1\r\nA: b\rc\r\n\r\n"),
       }) {
    RequestHead head = ParseRequestHead(input, 8192);
    EXPECT_EQ(head.outcome, RequestHead::Outcome::kError) << absl::CEscape(input);
    EXPECT_EQ(head.error_status, 400) << absl::CEscape(input);
    EXPECT_FALSE(head.error.empty());
  }
}

TEST(ParseRequestHeadTest, TheSizeLimitIs431) {
  const std::string request = "GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n";
  EXPECT_EQ(ParseRequestHead(request, request.size()).outcome, RequestHead::Outcome::kComplete);
  // The limit is on the head only: a body after it does not count.
  EXPECT_EQ(ParseRequestHead(request + "body", request.size()).outcome,
            RequestHead::Outcome::kComplete);
  for (size_t limit : {request.size() - 1, size_t{10}, size_t{0}}) {
    RequestHead head = ParseRequestHead(request, limit);
    EXPECT_EQ(head.outcome, RequestHead::Outcome::kError) << limit;
    EXPECT_EQ(head.error_status, 431) << limit;
  }
}

}  // namespace
}  // namespace factlens
