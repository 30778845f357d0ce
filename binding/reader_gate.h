// Backpressure between a native generation and the JavaScript reader of its stream: the
// generating thread sends tokens through a ThreadSafeFunction and then waits here while more
// than kMaxUnread of them are still unread (Cascade.stream's consumer stopped pulling), so a
// stalled reader pauses the generation instead of letting it race ahead. abort / cancel /
// dispose wake it (issue #18).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>

namespace cascade {

class ReaderGate {
 public:
  static constexpr int64_t kMaxUnread = 64;  // tokens; a few steps of a speculative round

  void Reset() {
    std::lock_guard<std::mutex> lock(mu_);
    sent_ = consumed_ = 0;
  }
  void Sent(int64_t n) {
    std::lock_guard<std::mutex> lock(mu_);
    sent_ += n;
  }
  void Consumed(int64_t n) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      consumed_ += n;
    }
    cv_.notify_all();
  }
  void Wake() { cv_.notify_all(); }
  // Returns when the reader has caught up to within kMaxUnread tokens, or `stop` is set.
  void WaitForReader(const std::atomic<bool>& stop) {
    std::unique_lock<std::mutex> lock(mu_);
    // A bounded wait per round, so a Wake that races with the check costs at most that.
    while (sent_ - consumed_ > kMaxUnread && !stop.load())
      cv_.wait_for(lock, std::chrono::milliseconds(50));
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int64_t sent_ = 0, consumed_ = 0;
};

}  // namespace cascade
