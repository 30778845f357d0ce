// A small team of worker threads for the CPU kernels: the calling thread plus helpers that spin
// briefly between jobs, so a decode step can hand every matrix to both cores without paying a
// thread wake-up (tens of microseconds) per matrix. XLA's intra-op pool (ffi::ThreadPool) costs a
// wake-up per task: measured in session 2, splitting our matmuls through it gained nothing.
//
//   ThreadTeam::Global().Run(n, [&](int64_t i) { ... });   // task(0..n-1), each exactly once
//
// Tasks are claimed one at a time from a shared counter, so a helper that the OS has not
// scheduled simply claims nothing and the caller does the work. Which thread runs a task never
// changes its result: every kernel computes each output element in one task with a fixed order.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace cascade {
namespace kernels {

class ThreadTeam {
 public:
  // helpers: extra threads besides the caller (0: everything runs on the caller).
  explicit ThreadTeam(int helpers);
  ~ThreadTeam();
  ThreadTeam(const ThreadTeam&) = delete;
  ThreadTeam& operator=(const ThreadTeam&) = delete;

  // The process-wide team: helpers = CASCADE_KERNEL_THREADS - 1 when set (1..64), else the
  // number of CPUs this process may run on, minus one (at most 7).
  static ThreadTeam& Global();

  int helpers() const { return static_cast<int>(threads_.size()); }

  // Runs task(0..n-1) on the caller and the helpers; returns when all are done. A second caller
  // while a job is in flight (e.g. two devices executing at once) runs its tasks on itself.
  void Run(int64_t n, const std::function<void(int64_t)>& task);

 private:
  void HelperLoop();
  bool TryClaim(uint64_t* index);
  void Work();

  // One word so a claim validates the job it belongs to: [generation:16 | n:24 | next:24].
  std::atomic<uint64_t> job_{0};
  std::atomic<int64_t> done_{0};
  const std::function<void(int64_t)>* task_ = nullptr;
  std::mutex run_mu_;  // one job at a time

  std::mutex sleep_mu_;
  std::condition_variable wake_;
  std::atomic<int> sleepers_{0};
  std::atomic<bool> stop_{false};
  std::vector<std::thread> threads_;
};

}  // namespace kernels
}  // namespace cascade
