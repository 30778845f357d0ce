#include "util/huge_pages.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace cascade {
namespace {

#if defined(__linux__) && !defined(MADV_COLLAPSE)
constexpr int MADV_COLLAPSE = 25;  // <linux/mman.h> since Linux 6.1; Debian 12's glibc headers lack it
#endif
constexpr uintptr_t kHugePage = uintptr_t{2} << 20;
constexpr uintptr_t kJoinGap = uintptr_t{64} << 10;

std::vector<std::pair<uintptr_t, uintptr_t>> Joined(std::vector<std::pair<uintptr_t, uintptr_t>> spans) {
  std::sort(spans.begin(), spans.end());
  std::vector<std::pair<uintptr_t, uintptr_t>> joined;
  for (const auto& s : spans) {
    if (!joined.empty() && s.first <= joined.back().second + kJoinGap)
      joined.back().second = std::max(joined.back().second, s.second);
    else
      joined.push_back(s);
  }
  return joined;
}

// The aligned regions inside [lo, hi).
void AddRegions(uintptr_t lo, uintptr_t hi, std::vector<uintptr_t>* regions) {
  for (uintptr_t r = (lo + kHugePage - 1) & ~(kHugePage - 1); r + kHugePage <= hi; r += kHugePage) regions->push_back(r);
}

bool Collapse(uintptr_t region) {
#if defined(__linux__)
  return madvise(reinterpret_cast<void*>(region), kHugePage, MADV_COLLAPSE) == 0;
#else
  (void)region;
  return false;
#endif
}

// Region by region: one the kernel refuses leaves the others collapsed.
HugePageReport CollapseRegions(const std::vector<uintptr_t>& regions) {
  HugePageReport report;
  for (uintptr_t r : regions) {
    if (Collapse(r))
      report.bytes += kHugePage;
    else
      ++report.refused;
  }
  return report;
}

}  // namespace

bool HugePagesDisabled() { return std::getenv("CASCADE_NO_HUGE_PAGES") != nullptr; }

bool CanCollapseHugePages() {
  static const bool can = [] {
#if defined(__linux__)
    const size_t bytes = 2 * kHugePage;
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return false;
    std::memset(p, 1, bytes);
    const uintptr_t region = (reinterpret_cast<uintptr_t>(p) + kHugePage - 1) & ~(kHugePage - 1);
    const bool ok = region + kHugePage <= reinterpret_cast<uintptr_t>(p) + bytes && Collapse(region);
    munmap(p, bytes);
    return ok;
#else
    return false;
#endif
  }();
  return can;
}

HugePageReport CollapseIntoHugePages(const std::vector<std::pair<const void*, size_t>>& ranges) {
  std::vector<std::pair<uintptr_t, uintptr_t>> spans;
  for (const auto& [p, n] : ranges)
    if (p && n > 0) spans.push_back({reinterpret_cast<uintptr_t>(p), reinterpret_cast<uintptr_t>(p) + n});
  std::vector<uintptr_t> regions;
  for (const auto& [lo, hi] : Joined(std::move(spans))) AddRegions(lo, hi, &regions);
  return CollapseRegions(regions);
}

HugePageCollapser::HugePageCollapser() : worker_([this] { Loop(); }) {}

HugePageCollapser::~HugePageCollapser() { Finish(); }

void HugePageCollapser::Add(const void* data, size_t bytes) {
  if (!data || bytes == 0) return;
  {
    std::lock_guard<std::mutex> lock(mu_);
    const uintptr_t p = reinterpret_cast<uintptr_t>(data);
    ranges_.push_back({p, p + bytes});
    added_ = true;
  }
  wake_.notify_one();
}

HugePageReport HugePageCollapser::Finish() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    finishing_ = true;
  }
  wake_.notify_one();
  if (worker_.joinable()) worker_.join();
  return report_;
}

std::vector<uintptr_t> HugePageCollapser::Ready() {
  ranges_ = Joined(std::move(ranges_));
  std::vector<uintptr_t> regions, ready;
  for (const auto& [lo, hi] : ranges_) AddRegions(lo, hi, &regions);
  for (uintptr_t r : regions)
    if (done_.insert(r).second) ready.push_back(r);
  return ready;
}

void HugePageCollapser::Loop() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    wake_.wait(lock, [this] { return added_ || finishing_; });
    added_ = false;
    const bool last = finishing_;
    const std::vector<uintptr_t> ready = Ready();
    lock.unlock();
    const HugePageReport part = CollapseRegions(ready);
    lock.lock();
    report_.bytes += part.bytes;
    report_.refused += part.refused;
    if (last) return;
  }
}

void HugePageFree::operator()(void* p) const {
#if defined(__linux__)
  if (p) munmap(p, bytes);
#else
  std::free(p);
#endif
}

std::unique_ptr<float[], HugePageFree> AllocateFloatsInHugePages(size_t count) {
  const size_t bytes = std::max<size_t>(1, count * sizeof(float));
#if defined(__linux__)
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
  madvise(p, bytes, MADV_HUGEPAGE);  // a hint: 4 KiB pages where THP is off
  return std::unique_ptr<float[], HugePageFree>(static_cast<float*>(p), HugePageFree{bytes});
#else
  void* p = std::calloc(1, bytes);
  if (!p) throw std::bad_alloc();
  return std::unique_ptr<float[], HugePageFree>(static_cast<float*>(p), HugePageFree{bytes});
#endif
}

}  // namespace cascade
