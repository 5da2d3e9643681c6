// A one-shot event for tests of concurrent code, on std::mutex so ThreadSanitizer sees its
// ordering (Debian's abseil is not TSan-instrumented, so absl::Notification would look racy).
#pragma once

#include <condition_variable>
#include <mutex>

namespace moe::testing {

class Notification {
 public:
  void Notify() {
    std::lock_guard<std::mutex> lock(mu_);
    notified_ = true;
    cv_.notify_all();
  }
  void WaitForNotification() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [this] { return notified_; });
  }
  bool HasBeenNotified() {
    std::lock_guard<std::mutex> lock(mu_);
    return notified_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool notified_ = false;
};

}  // namespace moe::testing
