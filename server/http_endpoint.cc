#include "server/http_endpoint.h"

#include <CivetServer.h>
#include <arpa/inet.h>
#include <civetweb.h>
#include <dlfcn.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <exception>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

// Debian 12's civetweb creates every thread with a 100 KB stack (pthread_attr_setstacksize(&attr,
// 102400), compiled in). glibc puts a thread's static TLS on its stack, and with libtorch's CUDA
// libraries loaded the process's static TLS alone is ~190 KB (cuBLASLt 94 KB, libtorch_cpu 26 KB,
// cusparseLt 16 KB, ...), so pthread_create fails with EINVAL and the endpoint cannot start
// ("Cannot create threads: error 0 [null context when constructing CivetServer]"; the same with
// OpenBLAS's LAPACK loaded). Any executable that links this file defines the function below, which
// it exports because libcivetweb.so refers to it, so civetweb's calls bind here: requests under
// 1 MiB are raised to 1 MiB, then glibc's own function does the work. Other callers asking for
// 1 MiB or more (and those that never set a size) are unaffected.
extern "C" int pthread_attr_setstacksize(pthread_attr_t* attr, size_t size) {
  using SetStackSize = int (*)(pthread_attr_t*, size_t);
  static const auto glibc =
      reinterpret_cast<SetStackSize>(dlsym(RTLD_NEXT, "pthread_attr_setstacksize"));
  constexpr size_t kMinimumStack = size_t{1} << 20;
  return glibc(attr, std::max(size, kMinimumStack));
}

namespace factlens {
namespace {

constexpr absl::string_view kMetricsContentType = "text/plain; version=0.0.4; charset=utf-8";
constexpr absl::string_view kTextContentType = "text/plain; charset=utf-8";

// civetweb reports start-up failures (e.g. "cannot bind to ...") through the log_message callback,
// synchronously on the thread that constructs CivetServer; Start() points this at a buffer for
// the duration of the constructor. Messages on other threads (workers) are left to civetweb,
// which writes them to error_log_file when one is configured.
thread_local std::vector<std::string>* t_start_messages = nullptr;

int CaptureLogMessage(const mg_connection* /*conn*/, const char* message) {
  if (t_start_messages != nullptr && message != nullptr) t_start_messages->emplace_back(message);
  return 0;  // Let civetweb also write its error_log_file, if any.
}

const char* ReasonPhrase(int code) {
  switch (code) {
    case 200:
      return "OK";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 500:
      return "Internal Server Error";
    case 503:
      return "Service Unavailable";
  }
  return "Unknown";
}

// Writes a complete response; the body is left out for HEAD (Content-Length still describes it).
void Respond(mg_connection* conn, bool head, int code, absl::string_view content_type,
             absl::string_view body, absl::string_view extra_headers = "") {
  const std::string header =
      absl::StrCat("HTTP/1.1 ", code, " ", ReasonPhrase(code), "\r\nContent-Type: ", content_type,
                   "\r\nContent-Length: ", body.size(),
                   "\r\nCache-Control: no-store\r\nConnection: close\r\n", extra_headers, "\r\n");
  mg_write(conn, header.data(), header.size());
  if (!head && !body.empty()) mg_write(conn, body.data(), body.size());
}

// Checks that `address` is one listening address in the syntax civetweb's listening_ports takes.
absl::Status ValidateAddress(absl::string_view address) {
  auto invalid = [&](absl::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics address \"", address, "\": ", why,
                     " (expected HOST:PORT with an IPv4 literal or [IPv6] literal, or PORT)"));
  };
  absl::string_view host;
  absl::string_view port = address;
  if (absl::StartsWith(address, "[")) {
    const size_t close = address.find("]:");
    if (close == absl::string_view::npos) return invalid("missing \"]:\" after IPv6 host");
    host = address.substr(1, close - 1);
    port = address.substr(close + 2);
    if (host.empty()) return invalid("empty IPv6 host");
    for (char c : host) {
      if (!absl::ascii_isxdigit(c) && c != ':' && c != '.') return invalid("bad IPv6 host");
    }
    if ((mg_check_feature(MG_FEATURES_IPV6) & MG_FEATURES_IPV6) == 0) {
      return absl::InvalidArgumentError("civetweb was built without IPv6 support");
    }
  } else if (const size_t colon = address.rfind(':'); colon != absl::string_view::npos) {
    host = address.substr(0, colon);
    port = address.substr(colon + 1);
    if (host.empty()) return invalid("empty host");
    int dots = 0;
    for (char c : host) {
      if (c == '.') {
        ++dots;
      } else if (!absl::ascii_isdigit(c)) {
        return invalid("host must be a numeric IPv4 address such as 127.0.0.1");
      }
    }
    if (dots != 3) return invalid("host must be a numeric IPv4 address such as 127.0.0.1");
  }
  if (port.empty() || port.size() > 5) return invalid("bad port");
  for (char c : port) {
    if (!absl::ascii_isdigit(c)) return invalid("bad port");
  }
  int port_number = 0;
  if (!absl::SimpleAtoi(port, &port_number) || port_number > 65535) {
    return invalid("port out of range");
  }
  return absl::OkStatus();
}

// The loopback-reachable host for a listening host: the wildcard becomes loopback.
std::string WakeHost(absl::string_view address) {
  if (absl::StartsWith(address, "[")) {
    const std::string host(address.substr(1, address.find(']') - 1));
    in6_addr any{};
    inet_pton(AF_INET6, host.c_str(), &any);
    return IN6_IS_ADDR_UNSPECIFIED(&any) ? "::1" : host;
  }
  const size_t colon = address.rfind(':');
  const std::string host =
      colon == absl::string_view::npos ? "0.0.0.0" : std::string(address.substr(0, colon));
  return host == "0.0.0.0" ? "127.0.0.1" : host;
}

// Opens and closes one TCP connection to host:port, ignoring every failure.
void Poke(const std::string& host, int port) {
  sockaddr_storage storage{};
  socklen_t length = 0;
  auto* v4 = reinterpret_cast<sockaddr_in*>(&storage);
  auto* v6 = reinterpret_cast<sockaddr_in6*>(&storage);
  if (inet_pton(AF_INET, host.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(static_cast<uint16_t>(port));
    length = sizeof(sockaddr_in);
  } else if (inet_pton(AF_INET6, host.c_str(), &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(static_cast<uint16_t>(port));
    length = sizeof(sockaddr_in6);
  } else {
    return;
  }
  const int fd = socket(storage.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return;
  connect(fd, reinterpret_cast<sockaddr*>(&storage), length);
  close(fd);
}

}  // namespace

// Serves every path; registered for all URIs. Never lets an exception reach civetweb's C code.
class HttpEndpoint::Handler : public CivetHandler {
 public:
  Handler(const MetricsRegistry* registry, const ReadinessCallback* readiness)
      : registry_(registry), readiness_(readiness) {}

  bool handleGet(CivetServer*, mg_connection* conn, int* status) override {
    return Serve(conn, /*head=*/false, status);
  }
  bool handleHead(CivetServer*, mg_connection* conn, int* status) override {
    return Serve(conn, /*head=*/true, status);
  }
  bool handlePost(CivetServer*, mg_connection* conn, int* status) override {
    return NotAllowed(conn, status);
  }
  bool handlePut(CivetServer*, mg_connection* conn, int* status) override {
    return NotAllowed(conn, status);
  }
  bool handleDelete(CivetServer*, mg_connection* conn, int* status) override {
    return NotAllowed(conn, status);
  }
  bool handleOptions(CivetServer*, mg_connection* conn, int* status) override {
    return NotAllowed(conn, status);
  }
  bool handlePatch(CivetServer*, mg_connection* conn, int* status) override {
    return NotAllowed(conn, status);
  }
  // The two-argument overloads are only called by the defaults of the ones above.
  using CivetHandler::handleDelete;
  using CivetHandler::handleGet;
  using CivetHandler::handleHead;
  using CivetHandler::handleOptions;
  using CivetHandler::handlePatch;
  using CivetHandler::handlePost;
  using CivetHandler::handlePut;

 private:
  bool NotAllowed(mg_connection* conn, int* status) {
    *status = 405;
    Respond(conn, false, 405, kTextContentType, "method not allowed\n", "Allow: GET, HEAD\r\n");
    return true;
  }

  bool Serve(mg_connection* conn, bool head, int* status) {
    int code = 500;
    try {
      code = Route(conn, head);
    } catch (const std::exception& e) {
      Respond(conn, head, 500, kTextContentType, absl::StrCat("internal error: ", e.what(), "\n"));
    } catch (...) {
      Respond(conn, head, 500, kTextContentType, "internal error\n");
    }
    *status = code;
    return true;
  }

  int Route(mg_connection* conn, bool head) {
    const mg_request_info* info = mg_get_request_info(conn);
    const absl::string_view path =
        (info != nullptr && info->local_uri != nullptr) ? info->local_uri : "";
    if (path == "/metrics") {
      const std::string body = registry_->Render();
      Respond(conn, head, 200, kMetricsContentType, body);
      return 200;
    }
    if (path == "/healthz") {
      Respond(conn, head, 200, kTextContentType, "ok\n");
      return 200;
    }
    if (path == "/readyz") {
      std::string reason;
      const bool ready = !*readiness_ || (*readiness_)(&reason);
      if (ready) {
        Respond(conn, head, 200, kTextContentType, "ready\n");
        return 200;
      }
      if (reason.empty()) reason = "unspecified";
      Respond(conn, head, 503, kTextContentType, absl::StrCat("not ready: ", reason, "\n"));
      return 503;
    }
    Respond(conn, head, 404, kTextContentType, "not found\n");
    return 404;
  }

  const MetricsRegistry* registry_;
  const ReadinessCallback* readiness_;
};

HttpEndpoint::HttpEndpoint(const MetricsRegistry* registry, ReadinessCallback readiness,
                           HttpEndpointOptions options)
    : registry_(registry),
      readiness_(std::move(readiness)),
      options_(std::move(options)),
      handler_(std::make_unique<Handler>(registry_, &readiness_)) {}

HttpEndpoint::~HttpEndpoint() { Stop(); }

absl::StatusOr<int> HttpEndpoint::Start(absl::string_view address) {
  absl::MutexLock lock(&mu_);
  if (server_ != nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("metrics endpoint already listening on port ", port_));
  }
  if (registry_ == nullptr) return absl::InvalidArgumentError("metrics endpoint: null registry");
  if (absl::Status status = ValidateAddress(address); !status.ok()) return status;

  std::vector<std::string> civet_options = {
      "listening_ports",    std::string(address),
      "num_threads",        absl::StrCat(options_.num_threads > 0 ? options_.num_threads : 1),
      "request_timeout_ms", absl::StrCat(options_.request_timeout_ms),
      "enable_keep_alive",  "no",
  };
  if (!options_.error_log_file.empty()) {
    civet_options.push_back("error_log_file");
    civet_options.push_back(options_.error_log_file);
  }
  CivetCallbacks callbacks;
  callbacks.log_message = &CaptureLogMessage;

  std::vector<std::string> messages;
  std::unique_ptr<CivetServer> server;
  std::string failure;
  t_start_messages = &messages;
  try {
    server = std::make_unique<CivetServer>(civet_options, &callbacks);
  } catch (const std::exception& e) {
    failure = e.what();  // CivetException: "null context when constructing CivetServer. ..."
  } catch (...) {
    failure = "unknown exception constructing CivetServer";
  }
  t_start_messages = nullptr;
  if (server != nullptr && server->getContext() == nullptr) {
    server.reset();
    failure = "civetweb returned no context";
  }
  if (server == nullptr) {
    std::string reason =
        messages.empty() ? "civetweb gave no reason" : absl::StrJoin(messages, "; ");
    return absl::UnavailableError(absl::StrCat("cannot start metrics endpoint on ", address, ": ",
                                               reason, " [", failure, "]"));
  }

  // Every path goes to the one handler: exact URIs first, then the catch-all pattern.
  for (const char* uri : {"/metrics", "/healthz", "/readyz", "/", "**"}) {
    server->addHandler(uri, handler_.get());
  }

  int bound_port = 0;
  try {
    for (const mg_server_port& p : server->getListeningPortsFull()) {
      if (p.port > 0) {
        bound_port = p.port;
        break;
      }
    }
  } catch (...) {
  }
  if (bound_port <= 0) {
    server->close();
    return absl::InternalError(
        absl::StrCat("metrics endpoint on ", address, ": civetweb reports no listening port"));
  }
  server_ = std::move(server);
  port_ = bound_port;
  wake_host_ = WakeHost(address);
  return bound_port;
}

void HttpEndpoint::Stop() {
  std::unique_ptr<CivetServer> server;
  int port = 0;
  std::string wake_host;
  {
    absl::MutexLock lock(&mu_);
    server = std::move(server_);
    port = port_;
    wake_host = std::move(wake_host_);
    port_ = 0;
  }
  if (server == nullptr) return;
  // civetweb's master thread sleeps in poll() for up to 2 s between checks of its stop flag; a
  // connection to the listening socket wakes it, so close() returns in milliseconds. Best effort:
  // if the poke cannot connect, close() just takes its 2 s.
  std::atomic<bool> closed{false};
  std::thread waker;
  try {
    waker = std::thread([&closed, &wake_host, port] {
      while (!closed.load()) {
        Poke(wake_host, port);
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
    });
  } catch (...) {  // std::system_error: no thread, no poke.
  }
  try {
    server->close();  // Joins civetweb's threads; in-flight handlers finish first.
  } catch (...) {
  }
  closed.store(true);
  if (waker.joinable()) waker.join();
}

int HttpEndpoint::port() const {
  absl::MutexLock lock(&mu_);
  return port_;
}

bool HttpEndpoint::running() const {
  absl::MutexLock lock(&mu_);
  return server_ != nullptr;
}

}  // namespace factlens
