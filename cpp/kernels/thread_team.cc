#include "kernels/thread_team.h"

#include <sched.h>

#include <chrono>
#include <cstdlib>

#include "kernels/cpu_relax.h"

namespace cascade {
namespace kernels {
namespace {

constexpr uint64_t kIndexBits = 24, kIndexMask = (uint64_t{1} << kIndexBits) - 1;
constexpr uint64_t kMaxTasks = kIndexMask;
// How long an idle helper spins before it sleeps: longer than the gap between the matrices of a
// decode step (attention, norms: ~10-100 us), shorter than the gap between steps on a busy host.
constexpr auto kSpin = std::chrono::microseconds(300);
// How long Run waits for its helpers' last tasks before it yields the CPU to them.
constexpr auto kSpinBeforeYield = std::chrono::microseconds(50);

uint64_t Pack(uint64_t generation, uint64_t n, uint64_t next) {
  return (generation << (2 * kIndexBits)) | (n << kIndexBits) | next;
}
uint64_t Generation(uint64_t w) { return w >> (2 * kIndexBits); }
uint64_t Count(uint64_t w) { return (w >> kIndexBits) & kIndexMask; }
uint64_t Next(uint64_t w) { return w & kIndexMask; }
bool HasWork(uint64_t w) { return Next(w) < Count(w); }

int DefaultHelpers() {
  if (const char* v = std::getenv("CASCADE_KERNEL_THREADS")) {
    int n = std::atoi(v);
    if (n >= 1 && n <= 64) return n - 1;
  }
  cpu_set_t set;
  int cpus = 0;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) cpus = CPU_COUNT(&set);
  if (cpus < 1) cpus = static_cast<int>(std::thread::hardware_concurrency());
  if (cpus < 1) cpus = 1;
  return cpus - 1 < 7 ? cpus - 1 : 7;
}

}  // namespace

ThreadTeam::ThreadTeam(int helpers) {
  for (int i = 0; i < helpers; ++i) threads_.emplace_back([this] { HelperLoop(); });
}

ThreadTeam::~ThreadTeam() {
  {
    std::lock_guard<std::mutex> lock(sleep_mu_);
    stop_.store(true);
  }
  wake_.notify_all();
  for (std::thread& t : threads_) t.join();
}

ThreadTeam& ThreadTeam::Global() {
  // Never destroyed: kernels may run from XLA threads during process exit.
  static ThreadTeam* team = new ThreadTeam(DefaultHelpers());
  return *team;
}

bool ThreadTeam::TryClaim(uint64_t* index) {
  uint64_t w = job_.load(std::memory_order_acquire);
  while (HasWork(w)) {
    if (job_.compare_exchange_weak(w, w + 1, std::memory_order_acq_rel, std::memory_order_acquire)) {
      *index = Next(w);
      return true;
    }
  }
  return false;
}

// Claims and runs tasks of the current job until none is left. A claim succeeds only on the job
// word it read, so task_ (set before that word was published) belongs to the claimed job, and the
// job cannot end before this task is counted done.
void ThreadTeam::Work() {
  uint64_t i;
  while (TryClaim(&i)) {
    (*task_)(static_cast<int64_t>(i));
    done_.fetch_add(1, std::memory_order_acq_rel);
  }
}

void ThreadTeam::Run(int64_t n, const std::function<void(int64_t)>& task) {
  if (n <= 0) return;
  std::unique_lock<std::mutex> lock(run_mu_, std::try_to_lock);
  if (threads_.empty() || n == 1 || static_cast<uint64_t>(n) > kMaxTasks || !lock.owns_lock()) {
    for (int64_t i = 0; i < n; ++i) task(i);
    return;
  }
  task_ = &task;
  done_.store(0, std::memory_order_relaxed);
  const uint64_t generation = (Generation(job_.load(std::memory_order_relaxed)) + 1) & 0xffff;
  job_.store(Pack(generation, static_cast<uint64_t>(n), 0), std::memory_order_seq_cst);
  if (sleepers_.load(std::memory_order_seq_cst) > 0) {
    std::lock_guard<std::mutex> l(sleep_mu_);
    wake_.notify_all();
  }
  Work();
  // Only tasks a helper has claimed are still running. Spin briefly, then yield: a helper that
  // shares this CPU (the other one busy, e.g. with a thread of XLA's pool) only runs when this
  // thread gives the CPU up, and spinning until the scheduler's tick (4 ms) cost 4-6 ms in ~20%
  // of the sampled decode steps on a 2-vCPU host (session 22).
  const auto yield_after = std::chrono::steady_clock::now() + kSpinBeforeYield;
  while (done_.load(std::memory_order_acquire) < n) {
    for (int k = 0; k < 16; ++k) CASCADE_CPU_RELAX();
    if (std::chrono::steady_clock::now() > yield_after) sched_yield();
  }
}

void ThreadTeam::HelperLoop() {
  for (;;) {
    auto spin_until = std::chrono::steady_clock::now() + kSpin;
    while (!HasWork(job_.load(std::memory_order_acquire))) {
      if (stop_.load(std::memory_order_relaxed)) return;
      for (int k = 0; k < 32; ++k) CASCADE_CPU_RELAX();
      if (std::chrono::steady_clock::now() > spin_until) {
        std::unique_lock<std::mutex> lock(sleep_mu_);
        sleepers_.fetch_add(1, std::memory_order_seq_cst);
        wake_.wait(lock, [this] { return stop_.load() || HasWork(job_.load(std::memory_order_seq_cst)); });
        sleepers_.fetch_sub(1, std::memory_order_seq_cst);
        spin_until = std::chrono::steady_clock::now() + kSpin;
      }
    }
    Work();
  }
}

}  // namespace kernels
}  // namespace cascade
