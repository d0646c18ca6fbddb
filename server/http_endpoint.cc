#include "server/http_endpoint.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <exception>
#include <iterator>
#include <list>
#include <string>
#include <system_error>
#include <thread>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "server/http_endpoint_internal.h"

namespace factlens {
namespace {

using Clock = std::chrono::steady_clock;
using http_internal::ParseRequestHead;
using http_internal::RequestHead;

constexpr absl::string_view kMetricsContentType = "text/plain; version=0.0.4; charset=utf-8";
constexpr absl::string_view kTextContentType = "text/plain; charset=utf-8";

// After a response is written the connection is half-closed and what the client still sends (a
// request body, say) is read and dropped, for at most this long and this much: closing a socket
// with unread input resets the connection, which can destroy the response before the client has
// read it.
constexpr auto kLingerTime = std::chrono::milliseconds(1000);
constexpr size_t kMaxLingerBytes = size_t{1} << 20;
// Out of file descriptors with no connection to close: stop accepting for this long.
constexpr auto kAcceptPause = std::chrono::milliseconds(100);
constexpr int kMaxAcceptsPerWake = 64;  // Then other events get their turn.
constexpr int kMaxEvents = 256;

std::string ErrnoText(int error) { return std::generic_category().message(error); }

const char* ReasonPhrase(int code) {
  switch (code) {
    case 200:
      return "OK";
    case 400:
      return "Bad Request";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 431:
      return "Request Header Fields Too Large";
    case 500:
      return "Internal Server Error";
    case 503:
      return "Service Unavailable";
  }
  return "Unknown";
}

// A complete response; the body is left out for HEAD (Content-Length still describes it).
std::string Response(int code, absl::string_view content_type, absl::string_view body,
                     bool head_only, absl::string_view extra_headers = "") {
  std::string response =
      absl::StrCat("HTTP/1.1 ", code, " ", ReasonPhrase(code), "\r\nContent-Type: ", content_type,
                   "\r\nContent-Length: ", body.size(),
                   "\r\nCache-Control: no-store\r\nConnection: close\r\n", extra_headers, "\r\n");
  if (!head_only) response.append(body.data(), body.size());
  return response;
}

struct ListenAddress {
  sockaddr_storage storage{};
  socklen_t length = 0;
};

// Parses one listening address: HOST:PORT with an IPv4 literal or [IPv6] literal, or PORT.
absl::StatusOr<ListenAddress> ParseListenAddress(absl::string_view address) {
  auto invalid = [&](absl::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics address \"", address, "\": ", why,
                     " (expected HOST:PORT with an IPv4 literal or [IPv6] literal, or PORT)"));
  };
  constexpr absl::string_view kBadIpv4 = "host must be a numeric IPv4 address such as 127.0.0.1";
  std::string host;  // Empty: every IPv4 interface.
  bool ipv6 = false;
  absl::string_view port = address;
  if (absl::StartsWith(address, "[")) {
    const size_t close = address.find("]:");
    if (close == absl::string_view::npos) return invalid("missing \"]:\" after IPv6 host");
    host = std::string(address.substr(1, close - 1));
    port = address.substr(close + 2);
    ipv6 = true;
    if (host.empty()) return invalid("empty IPv6 host");
    for (char c : host) {
      if (!absl::ascii_isxdigit(c) && c != ':' && c != '.') return invalid("bad IPv6 host");
    }
  } else if (const size_t colon = address.rfind(':'); colon != absl::string_view::npos) {
    host = std::string(address.substr(0, colon));
    port = address.substr(colon + 1);
    if (host.empty()) return invalid("empty host");
    int dots = 0;
    for (char c : host) {
      if (c == '.') {
        ++dots;
      } else if (!absl::ascii_isdigit(c)) {
        return invalid(kBadIpv4);
      }
    }
    if (dots != 3) return invalid(kBadIpv4);
  }
  if (port.empty() || port.size() > 5) return invalid("bad port");
  for (char c : port) {
    if (!absl::ascii_isdigit(c)) return invalid("bad port");
  }
  int port_number = 0;
  if (!absl::SimpleAtoi(port, &port_number) || port_number > 65535) {
    return invalid("port out of range");
  }
  ListenAddress result;
  if (ipv6) {
    auto* v6 = reinterpret_cast<sockaddr_in6*>(&result.storage);
    if (inet_pton(AF_INET6, host.c_str(), &v6->sin6_addr) != 1) return invalid("bad IPv6 host");
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(static_cast<uint16_t>(port_number));
    result.length = sizeof(sockaddr_in6);
  } else {
    auto* v4 = reinterpret_cast<sockaddr_in*>(&result.storage);
    if (host.empty()) {
      v4->sin_addr.s_addr = htonl(INADDR_ANY);
    } else if (inet_pton(AF_INET, host.c_str(), &v4->sin_addr) != 1) {
      return invalid(kBadIpv4);
    }
    v4->sin_family = AF_INET;
    v4->sin_port = htons(static_cast<uint16_t>(port_number));
    result.length = sizeof(sockaddr_in);
  }
  return result;
}

}  // namespace

// The listening socket, the open connections and the thread that serves them: an epoll loop
// (level-triggered) over non-blocking sockets. Every member but Start() and Stop() runs on that
// thread only.
class HttpEndpoint::Loop {
 public:
  Loop(const MetricsRegistry* registry, const ReadinessCallback* readiness,
       const HttpEndpointOptions& options)
      : registry_(registry), readiness_(readiness), options_(options) {}
  ~Loop() {
    Stop();
    for (Connection& c : connections_) close(c.fd);
    for (int fd : {listen_fd_, epoll_fd_, wake_fd_}) {
      if (fd >= 0) close(fd);
    }
  }
  Loop(const Loop&) = delete;
  Loop& operator=(const Loop&) = delete;

  // Binds, listens and starts the thread. Returns the bound port.
  absl::StatusOr<int> Start(absl::string_view address);
  // Wakes the thread and joins it; connections stay open until the destructor.
  void Stop() {
    if (!thread_.joinable()) return;
    stop_.store(true);
    const uint64_t one = 1;
    while (write(wake_fd_, &one, sizeof(one)) < 0 && errno == EINTR) {
    }
    thread_.join();
  }

 private:
  enum class State {
    kReading,    // until the request head is complete (header deadline)
    kWriting,    // the response is being written (write deadline)
    kLingering,  // written and half-closed; reading what the client still sends (linger deadline)
  };
  struct Connection {
    int fd = -1;
    State state = State::kReading;
    bool closed = false;
    bool saw_newline = false;  // A line of the request head has ended.
    uint32_t events = 0;       // What epoll watches for.
    Clock::time_point deadline;
    std::string in;                        // The request head received so far.
    std::string out;                       // The response.
    size_t written = 0;                    // Bytes of `out` sent.
    size_t drained = 0;                    // Bytes read and dropped while lingering.
    std::list<Connection>::iterator self;  // In connections_, or in closed_ once closed.
  };

  void Run();
  void Accept(Clock::time_point now);
  void OnEvent(Connection* c, uint32_t events, Clock::time_point now);
  void ReadRequest(Connection* c, Clock::time_point now);
  void Respond(Connection* c, const RequestHead& request, Clock::time_point now);
  std::string Route(absl::string_view path, bool head_only);
  void QueueResponse(Connection* c, std::string response, Clock::time_point now);
  void Flush(Connection* c, Clock::time_point now);
  void Drain(Connection* c);
  void Close(Connection* c);
  void SweepDeadlines(Clock::time_point now);
  void SetEvents(Connection* c, uint32_t events);
  void SetDeadline(Connection* c, Clock::time_point deadline) {
    c->deadline = deadline;
    next_deadline_ = std::min(next_deadline_, deadline);
  }
  // Marks `c` the most recently active connection.
  void Touch(Connection* c) { connections_.splice(connections_.end(), connections_, c->self); }

  const MetricsRegistry* registry_;
  const ReadinessCallback* readiness_;
  const HttpEndpointOptions options_;

  int listen_fd_ = -1;
  int epoll_fd_ = -1;
  int wake_fd_ = -1;     // An eventfd: Stop() writes to it to wake epoll_wait.
  char listen_tag_ = 0;  // Their addresses tell the listening socket and the eventfd apart from
  char wake_tag_ = 0;    // connections in epoll's event data.
  std::atomic<bool> stop_{false};
  std::thread thread_;

  // Open connections, least recently active first (so front() is the one idle the longest).
  std::list<Connection> connections_;
  // Closed during the current batch of events (later events of the batch may still name them);
  // freed after it.
  std::list<Connection> closed_;
  // No connection's deadline is earlier than this.
  Clock::time_point next_deadline_ = Clock::time_point::max();
  bool accept_paused_ = false;
  Clock::time_point accept_resume_;
};

absl::StatusOr<int> HttpEndpoint::Loop::Start(absl::string_view address) {
  absl::StatusOr<ListenAddress> parsed = ParseListenAddress(address);
  if (!parsed.ok()) return parsed.status();
  auto unavailable = [&](absl::string_view what, int error) {
    return absl::UnavailableError(
        absl::StrCat("metrics endpoint: ", what, " ", address, ": ", ErrnoText(error)));
  };
  const int family = parsed->storage.ss_family;
  listen_fd_ = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (listen_fd_ < 0) return unavailable("cannot create a socket for", errno);
  const int on = 1;
  setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
  if (family == AF_INET6) setsockopt(listen_fd_, IPPROTO_IPV6, IPV6_V6ONLY, &on, sizeof(on));
  if (bind(listen_fd_, reinterpret_cast<const sockaddr*>(&parsed->storage), parsed->length) != 0) {
    return unavailable("cannot bind to", errno);
  }
  if (listen(listen_fd_, SOMAXCONN) != 0) return unavailable("cannot listen on", errno);
  sockaddr_storage bound{};
  socklen_t bound_length = sizeof(bound);
  if (getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&bound), &bound_length) != 0) {
    return unavailable("cannot read the port bound for", errno);
  }
  const int port = ntohs(family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port
                                            : reinterpret_cast<sockaddr_in*>(&bound)->sin_port);

  epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
  if (epoll_fd_ < 0) return unavailable("cannot create an epoll instance for", errno);
  wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (wake_fd_ < 0) return unavailable("cannot create an eventfd for", errno);
  epoll_event event{};
  event.events = EPOLLIN;
  event.data.ptr = &listen_tag_;
  if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, listen_fd_, &event) != 0) {
    return unavailable("cannot watch the socket of", errno);
  }
  event.data.ptr = &wake_tag_;
  if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, wake_fd_, &event) != 0) {
    return unavailable("cannot watch the eventfd of", errno);
  }
  try {
    thread_ = std::thread([this] { Run(); });
  } catch (const std::system_error& e) {
    return absl::UnavailableError(
        absl::StrCat("metrics endpoint on ", address, ": cannot create its thread: ", e.what()));
  }
  return port;
}

void HttpEndpoint::Loop::Run() {
  epoll_event events[kMaxEvents];
  while (!stop_.load()) {
    Clock::time_point wake = next_deadline_;
    if (accept_paused_) wake = std::min(wake, accept_resume_);
    int timeout_ms = -1;
    if (wake != Clock::time_point::max()) {
      const auto wait = std::chrono::ceil<std::chrono::milliseconds>(wake - Clock::now()).count();
      timeout_ms = static_cast<int>(std::clamp<decltype(wait)>(wait, 0, 60000));
    }
    const int n = epoll_wait(epoll_fd_, events, kMaxEvents, timeout_ms);
    if (n < 0) {
      if (errno == EINTR) continue;
      return;  // EBADF/EINVAL: cannot happen while the descriptors are ours.
    }
    const Clock::time_point now = Clock::now();
    for (int i = 0; i < n; ++i) {
      void* tag = events[i].data.ptr;
      if (tag == &wake_tag_) {
        uint64_t count = 0;
        while (read(wake_fd_, &count, sizeof(count)) < 0 && errno == EINTR) {
        }
      } else if (tag == &listen_tag_) {
        Accept(now);
      } else {
        auto* c = static_cast<Connection*>(tag);
        if (c->closed) continue;
        try {
          OnEvent(c, events[i].events, now);
        } catch (...) {  // std::bad_alloc building a response: drop this connection, not the loop.
          Close(c);
        }
      }
    }
    if (now >= next_deadline_) SweepDeadlines(now);
    closed_.clear();
    if (accept_paused_ && now >= accept_resume_) {
      epoll_event event{};
      event.events = EPOLLIN;
      event.data.ptr = &listen_tag_;
      if (epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, listen_fd_, &event) == 0) accept_paused_ = false;
    }
  }
}

void HttpEndpoint::Loop::Accept(Clock::time_point now) {
  if (accept_paused_) return;
  for (int i = 0; i < kMaxAcceptsPerWake; ++i) {
    const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      switch (errno) {
        case EAGAIN:
#if EWOULDBLOCK != EAGAIN
        case EWOULDBLOCK:
#endif
          return;
        case EINTR:
        case ECONNABORTED:
        case EPROTO:
        case EPERM:
        case ENETDOWN:
        case ENOPROTOOPT:
        case EHOSTDOWN:
        case ENONET:
        case EHOSTUNREACH:
        case EOPNOTSUPP:
        case ENETUNREACH:
          continue;  // That connection failed; the next one may not.
        case EMFILE:
        case ENFILE:
        case ENOBUFS:
        case ENOMEM:
          // Out of descriptors or memory: make room by closing the connection idle the longest.
          if (!connections_.empty()) {
            Close(&connections_.front());
            continue;
          }
          [[fallthrough]];
        default: {
          // Nothing to close (or an unexpected error): the listening socket would wake the loop
          // at once, again and again, so it is left unwatched for a moment.
          epoll_event event{};
          event.data.ptr = &listen_tag_;
          epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, listen_fd_, &event);
          accept_paused_ = true;
          accept_resume_ = now + kAcceptPause;
          return;
        }
      }
    }
    if (connections_.size() >= static_cast<size_t>(options_.max_connections)) {
      Close(&connections_.front());  // The one idle the longest.
    }
    Connection& c = connections_.emplace_back();
    c.self = std::prev(connections_.end());
    c.fd = fd;
    SetDeadline(&c, now + std::chrono::milliseconds(options_.header_timeout_ms));
    c.events = EPOLLIN;
    epoll_event event{};
    event.events = c.events;
    event.data.ptr = &c;
    if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &event) != 0) Close(&c);
  }
}

void HttpEndpoint::Loop::OnEvent(Connection* c, uint32_t events, Clock::time_point now) {
  switch (c->state) {
    case State::kReading:
      ReadRequest(c, now);  // recv() reports a hang-up or error too.
      break;
    case State::kWriting:
      if ((events & EPOLLERR) != 0) {
        Close(c);
      } else {
        Flush(c, now);  // On EPOLLHUP send() fails and closes.
      }
      break;
    case State::kLingering:
      Drain(c);
      break;
  }
}

void HttpEndpoint::Loop::ReadRequest(Connection* c, Clock::time_point now) {
  const size_t limit = static_cast<size_t>(options_.max_header_bytes);
  char buffer[4096];
  while (c->state == State::kReading) {
    // Never more than the limit: a head that has not ended by then is an error (431) anyway.
    const size_t want = std::min(sizeof(buffer), limit - c->in.size());
    const ssize_t n = recv(c->fd, buffer, want, 0);
    if (n == 0) {  // The client gave up before its request was complete.
      Close(c);
      return;
    }
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) Close(c);
      return;
    }
    const bool newline = std::memchr(buffer, '\n', static_cast<size_t>(n)) != nullptr;
    c->in.append(buffer, static_cast<size_t>(n));
    Touch(c);
    // Parse when a line has ended, while the request line is still arriving (to refuse garbage
    // early), or at the limit; not for every byte of a header line sent slowly.
    if (!newline && c->saw_newline && c->in.size() < limit) continue;
    c->saw_newline = c->saw_newline || newline;
    const RequestHead request = ParseRequestHead(c->in, limit);
    switch (request.outcome) {
      case RequestHead::Outcome::kIncomplete:
        break;
      case RequestHead::Outcome::kComplete:
        Respond(c, request, now);
        break;
      case RequestHead::Outcome::kError:
        QueueResponse(c,
                      Response(request.error_status, kTextContentType,
                               request.error_status == 400
                                   ? absl::StrCat("bad request: ", request.error, "\n")
                                   : absl::StrCat(request.error, "\n"),
                               /*head_only=*/false),
                      now);
        break;
    }
  }
}

void HttpEndpoint::Loop::Respond(Connection* c, const RequestHead& request, Clock::time_point now) {
  std::string response;
  if (request.method != "GET" && request.method != "HEAD") {
    response = Response(405, kTextContentType, "method not allowed\n", /*head_only=*/false,
                        "Allow: GET, HEAD\r\n");
  } else {
    const bool head_only = request.method == "HEAD";
    try {
      response = Route(request.path, head_only);
    } catch (const std::exception& e) {
      response = Response(500, kTextContentType, absl::StrCat("internal error: ", e.what(), "\n"),
                          head_only);
    } catch (...) {
      response = Response(500, kTextContentType, "internal error\n", head_only);
    }
  }
  QueueResponse(c, std::move(response), now);
}

std::string HttpEndpoint::Loop::Route(absl::string_view path, bool head_only) {
  if (path == "/metrics") {
    return Response(200, kMetricsContentType, registry_->Render(), head_only);
  }
  if (path == "/healthz") return Response(200, kTextContentType, "ok\n", head_only);
  if (path == "/readyz") {
    std::string reason;
    const bool ready = !*readiness_ || (*readiness_)(&reason);
    if (ready) return Response(200, kTextContentType, "ready\n", head_only);
    if (reason.empty()) reason = "unspecified";
    return Response(503, kTextContentType, absl::StrCat("not ready: ", reason, "\n"), head_only);
  }
  return Response(404, kTextContentType, "not found\n", head_only);
}

void HttpEndpoint::Loop::QueueResponse(Connection* c, std::string response, Clock::time_point now) {
  std::string().swap(c->in);  // The request (and any body after it) is no longer needed.
  c->out = std::move(response);
  c->written = 0;
  c->state = State::kWriting;
  SetDeadline(c, now + std::chrono::milliseconds(options_.write_timeout_ms));
  Flush(c, now);
}

void HttpEndpoint::Loop::Flush(Connection* c, Clock::time_point now) {
  while (c->written < c->out.size()) {
    const ssize_t n =
        send(c->fd, c->out.data() + c->written, c->out.size() - c->written, MSG_NOSIGNAL);
    if (n > 0) {
      c->written += static_cast<size_t>(n);
      Touch(c);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      SetEvents(c, EPOLLOUT);
      return;
    }
    Close(c);  // EPIPE, ECONNRESET: the client is gone.
    return;
  }
  std::string().swap(c->out);
  shutdown(c->fd, SHUT_WR);
  c->state = State::kLingering;
  SetDeadline(c, now + kLingerTime);
  SetEvents(c, EPOLLIN);
}

void HttpEndpoint::Loop::Drain(Connection* c) {
  char buffer[4096];
  while (true) {
    const ssize_t n = recv(c->fd, buffer, sizeof(buffer), 0);
    if (n > 0) {
      c->drained += static_cast<size_t>(n);
      if (c->drained > kMaxLingerBytes) break;
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    break;  // End of input (the client closed too) or an error.
  }
  Close(c);
}

void HttpEndpoint::Loop::Close(Connection* c) {
  if (c->closed) return;
  c->closed = true;
  if (c->state == State::kWriting) {
    // A response cut short: reset, so the kernel drops the unsent bytes instead of keeping them
    // (and retrying) for a client that does not read.
    const linger reset{1, 0};
    setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &reset, sizeof(reset));
  }
  close(c->fd);  // Also removes it from the epoll set.
  c->fd = -1;
  closed_.splice(closed_.end(), connections_, c->self);
}

void HttpEndpoint::Loop::SweepDeadlines(Clock::time_point now) {
  next_deadline_ = Clock::time_point::max();
  for (auto it = connections_.begin(); it != connections_.end();) {
    Connection& c = *it++;  // Close() moves c out of the list.
    if (c.deadline <= now) {
      Close(&c);
    } else {
      next_deadline_ = std::min(next_deadline_, c.deadline);
    }
  }
}

void HttpEndpoint::Loop::SetEvents(Connection* c, uint32_t events) {
  if (c->events == events) return;
  epoll_event event{};
  event.events = events;
  event.data.ptr = c;
  if (epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, c->fd, &event) != 0) {
    Close(c);
    return;
  }
  c->events = events;
}

HttpEndpoint::HttpEndpoint(const MetricsRegistry* registry, ReadinessCallback readiness,
                           HttpEndpointOptions options)
    : registry_(registry), readiness_(std::move(readiness)), options_(options) {
  for (int* value : {&options_.header_timeout_ms, &options_.write_timeout_ms,
                     &options_.max_header_bytes, &options_.max_connections}) {
    *value = std::max(*value, 1);
  }
}

HttpEndpoint::~HttpEndpoint() { Stop(); }

absl::StatusOr<int> HttpEndpoint::Start(absl::string_view address) {
  absl::MutexLock lifecycle(&lifecycle_mu_);
  {
    absl::MutexLock lock(&mu_);
    if (loop_ != nullptr) {
      return absl::FailedPreconditionError(
          absl::StrCat("metrics endpoint already listening on port ", port_));
    }
  }
  if (registry_ == nullptr) return absl::InvalidArgumentError("metrics endpoint: null registry");
  auto loop = std::make_unique<Loop>(registry_, &readiness_, options_);
  absl::StatusOr<int> port = loop->Start(address);
  if (!port.ok()) return port.status();  // ~Loop closes what was opened.
  absl::MutexLock lock(&mu_);
  loop_ = std::move(loop);
  port_ = *port;
  return *port;
}

void HttpEndpoint::Stop() {
  absl::MutexLock lifecycle(&lifecycle_mu_);
  std::unique_ptr<Loop> loop;
  {
    absl::MutexLock lock(&mu_);
    loop = std::move(loop_);
    port_ = 0;
  }
  loop.reset();  // Wakes and joins the thread, then closes every socket.
}

int HttpEndpoint::port() const {
  absl::MutexLock lock(&mu_);
  return port_;
}

bool HttpEndpoint::running() const {
  absl::MutexLock lock(&mu_);
  return loop_ != nullptr;
}

}  // namespace factlens
