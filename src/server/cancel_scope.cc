#include <vector>

#include "moe/server/backend.h"

namespace moe::server {

bool CancelScope::cancelled() const {
  std::lock_guard<std::mutex> lock(mu_);
  return cancelled_;
}

uint64_t CancelScope::Reserve() {
  std::lock_guard<std::mutex> lock(mu_);
  uint64_t key = next_key_++;
  tickets_[key] = 0;
  return key;
}

void CancelScope::Arm(uint64_t key, uint64_t ticket) {
  bool cancel_now = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = tickets_.find(key);
    if (it == tickets_.end()) return;  // already done
    it->second = ticket;
    cancel_now = cancelled_;
  }
  if (cancel_now) backend_->Cancel(ticket);
}

void CancelScope::Release(uint64_t key) {
  std::lock_guard<std::mutex> lock(mu_);
  tickets_.erase(key);
}

void CancelScope::Cancel() {
  std::vector<uint64_t> armed;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (cancelled_) return;
    cancelled_ = true;
    for (const auto& [key, ticket] : tickets_) {
      if (ticket != 0) armed.push_back(ticket);
    }
  }
  // Outside the lock: the backend may complete requests (and Release) synchronously.
  for (uint64_t t : armed) backend_->Cancel(t);
}

}  // namespace moe::server
