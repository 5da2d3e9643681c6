// Minimal HTTP GET and Prometheus text parsing for the load generator.
#include "prom_scrape.h"

#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"

namespace moe::loadgen {
namespace {

using Clock = std::chrono::steady_clock;

struct Url {
  std::string host;
  std::string port;
  std::string path;
};

StatusOr<Url> ParseUrl(const std::string& url) {
  constexpr char kScheme[] = "http://";
  if (!absl::StartsWith(url, kScheme)) {
    return absl::InvalidArgumentError(absl::StrCat("URL '", url, "' must start with http://"));
  }
  std::string rest = url.substr(sizeof(kScheme) - 1);
  Url u;
  size_t slash = rest.find('/');
  std::string authority = rest.substr(0, slash);
  u.path = slash == std::string::npos ? "/" : rest.substr(slash);
  size_t colon = authority.rfind(':');
  if (colon == std::string::npos) {
    u.host = authority;
    u.port = "80";
  } else {
    u.host = authority.substr(0, colon);
    u.port = authority.substr(colon + 1);
  }
  if (u.host.empty() || u.port.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("URL '", url, "' has no host or port"));
  }
  return u;
}

// Closes the socket on every return path.
class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

// Milliseconds left until `deadline` (>= 0).
int MsLeft(Clock::time_point deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
  return left.count() > 0 ? static_cast<int>(left.count()) : 0;
}

Status WaitFor(int fd, short events, Clock::time_point deadline, const std::string& what) {
  pollfd p{fd, events, 0};
  int rc = poll(&p, 1, MsLeft(deadline));
  if (rc == 0) return absl::UnavailableError(absl::StrCat(what, ": timed out"));
  if (rc < 0) return absl::UnavailableError(absl::StrCat(what, ": ", std::strerror(errno)));
  return absl::OkStatus();
}

StatusOr<std::string> DecodeChunked(const std::string& body) {
  std::string out;
  size_t pos = 0;
  while (true) {
    size_t eol = body.find("\r\n", pos);
    if (eol == std::string::npos) return absl::DataLossError("chunked body: truncated size line");
    size_t size = std::strtoul(body.substr(pos, eol - pos).c_str(), nullptr, 16);
    pos = eol + 2;
    if (size == 0) return out;
    if (pos + size > body.size()) return absl::DataLossError("chunked body: truncated chunk");
    out.append(body, pos, size);
    pos += size + 2;  // chunk data and its CRLF
  }
}

}  // namespace

StatusOr<std::string> HttpGet(const std::string& url, int timeout_ms) {
  MOE_ASSIGN_OR_RETURN(Url u, ParseUrl(url));
  const Clock::time_point deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* addrs = nullptr;
  if (int rc = getaddrinfo(u.host.c_str(), u.port.c_str(), &hints, &addrs); rc != 0) {
    return absl::UnavailableError(absl::StrCat("resolve ", u.host, ": ", gai_strerror(rc)));
  }
  std::unique_ptr<addrinfo, void (*)(addrinfo*)> addrs_owner(addrs, freeaddrinfo);
  Fd fd(socket(addrs->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (fd.get() < 0) return absl::UnavailableError(absl::StrCat("socket: ", std::strerror(errno)));
  if (connect(fd.get(), addrs->ai_addr, addrs->ai_addrlen) != 0 && errno != EINPROGRESS) {
    return absl::UnavailableError(absl::StrCat("connect ", url, ": ", std::strerror(errno)));
  }
  MOE_RETURN_IF_ERROR(WaitFor(fd.get(), POLLOUT, deadline, "connect " + url));
  int err = 0;
  socklen_t len = sizeof(err);
  getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len);
  if (err != 0)
    return absl::UnavailableError(absl::StrCat("connect ", url, ": ", std::strerror(err)));

  const std::string request = absl::StrCat("GET ", u.path, " HTTP/1.0\r\nHost: ", u.host, ":",
                                           u.port, "\r\nConnection: close\r\n\r\n");
  for (size_t sent = 0; sent < request.size();) {
    MOE_RETURN_IF_ERROR(WaitFor(fd.get(), POLLOUT, deadline, "send " + url));
    ssize_t n = send(fd.get(), request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && errno != EAGAIN) {
      return absl::UnavailableError(absl::StrCat("send ", url, ": ", std::strerror(errno)));
    }
    if (n > 0) sent += static_cast<size_t>(n);
  }
  std::string response;
  char buf[16384];
  while (true) {
    MOE_RETURN_IF_ERROR(WaitFor(fd.get(), POLLIN, deadline, "read " + url));
    ssize_t n = recv(fd.get(), buf, sizeof(buf), 0);
    if (n == 0) break;
    if (n < 0 && errno != EAGAIN) {
      return absl::UnavailableError(absl::StrCat("read ", url, ": ", std::strerror(errno)));
    }
    if (n > 0) response.append(buf, static_cast<size_t>(n));
  }
  size_t header_end = response.find("\r\n\r\n");
  if (header_end == std::string::npos) {
    return absl::DataLossError(absl::StrCat(url, ": response has no header end"));
  }
  std::string headers = response.substr(0, header_end);
  std::string status_line = headers.substr(0, headers.find("\r\n"));
  std::vector<std::string> parts = absl::StrSplit(status_line, ' ');
  if (parts.size() < 2 || parts[1] != "200") {
    return absl::FailedPreconditionError(absl::StrCat(url, ": ", status_line));
  }
  std::string body = response.substr(header_end + 4);
  if (absl::StrContains(absl::AsciiStrToLower(headers), "transfer-encoding: chunked")) {
    return DecodeChunked(body);
  }
  return body;
}

std::map<std::string, double> ParsePrometheusText(const std::string& text) {
  std::map<std::string, double> samples;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    // The series ends at the last '}' if it has labels, else at the first space.
    size_t end = line.find('{') != std::string::npos ? line.rfind('}') + 1 : line.find(' ');
    if (end == std::string::npos || end == 0 || end >= line.size()) continue;
    std::vector<std::string> rest =
        absl::StrSplit(line.substr(end), ' ', absl::SkipWhitespace());  // value [timestamp]
    double value = 0;
    if (rest.empty()) continue;
    if (rest[0] == "+Inf" || rest[0] == "-Inf" || rest[0] == "NaN") continue;
    if (!absl::SimpleAtod(rest[0], &value)) continue;
    samples[line.substr(0, end)] = value;
  }
  return samples;
}

StatusOr<double> SumSeries(const std::map<std::string, double>& samples, const std::string& name) {
  double sum = 0;
  bool found = false;
  for (auto it = samples.lower_bound(name); it != samples.end(); ++it) {
    const std::string& key = it->first;
    if (!absl::StartsWith(key, name)) break;
    if (key.size() != name.size() && key[name.size()] != '{') continue;
    sum += it->second;
    found = true;
  }
  if (!found) return absl::NotFoundError(absl::StrCat("metric ", name, " not exposed"));
  return sum;
}

StatusOr<HistogramTotals> ReadHistogram(const std::map<std::string, double>& samples,
                                        const std::string& name) {
  HistogramTotals h;
  MOE_ASSIGN_OR_RETURN(h.sum, SumSeries(samples, name + "_sum"));
  MOE_ASSIGN_OR_RETURN(h.count, SumSeries(samples, name + "_count"));
  return h;
}

}  // namespace moe::loadgen
