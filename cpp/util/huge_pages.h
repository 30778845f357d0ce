// Weights in 2 MiB pages on Linux. A decode step streams every weight once; in 4 KiB pages that is
// a page walk every 4 KiB of each stream, and two cores reading 64 MB right after a 1 GiB read got
// 8-11 GB/s here in 4 KiB pages against 26-28 in 2 MiB pages (kernel_bench --kinds pages;
// docs/bench/decoder.md, session 34). THP is usually enabled
// for madvise'd memory only, and the CPU plugin allocates and fills device buffers itself, so the
// buffers are turned into huge pages after their upload: MADV_COLLAPSE (Linux 6.1+) copies each
// whole 2 MiB-aligned region into one huge page in place, every byte kept, concurrent readers and
// writers safe. Where the kernel refuses (older kernels, THP off, no free huge page), nothing
// changes but the speed.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <set>
#include <thread>
#include <utility>
#include <vector>

namespace cascade {

// CASCADE_NO_HUGE_PAGES set (to anything): weights stay in the pages the plugin gave them (for
// side-by-side measurements, and a way out should a kernel misbehave).
bool HugePagesDisabled();

// Whether this process can collapse memory into huge pages (tried once on a scratch mapping).
bool CanCollapseHugePages();

struct HugePageReport {
  size_t bytes = 0;   // bytes put into huge pages
  int refused = 0;    // 2 MiB regions the kernel did not collapse
};

// Collapses the 2 MiB-aligned regions that `ranges` cover. Ranges less than 64 KiB apart count as
// one, as an allocator lays consecutive buffers out (the CPU plugin's per-layer weight arenas sit
// a malloc header apart), so regions across their seams are covered too.
HugePageReport CollapseIntoHugePages(const std::vector<std::pair<const void*, size_t>>& ranges);

// The same in the background while a model uploads (the upload converts weights on one core; the
// ~2-4 ms a region costs here runs on the other): Add each buffer as it lands, Finish() collapses
// what is left and waits. A region is collapsed once every byte of it is covered by added ranges.
class HugePageCollapser {
 public:
  HugePageCollapser();
  ~HugePageCollapser();  // Finish()
  HugePageCollapser(const HugePageCollapser&) = delete;
  HugePageCollapser& operator=(const HugePageCollapser&) = delete;

  void Add(const void* data, size_t bytes);
  HugePageReport Finish();

 private:
  void Loop();
  // Regions covered by ranges_ and not collapsed yet, in address order.
  std::vector<uintptr_t> Ready();

  std::mutex mu_;
  std::condition_variable wake_;
  std::vector<std::pair<uintptr_t, uintptr_t>> ranges_;
  std::set<uintptr_t> done_;
  bool added_ = false, finishing_ = false;
  HugePageReport report_;
  std::thread worker_;
};

// Zeroed memory for `count` floats, in huge pages where the kernel gives them (MADV_HUGEPAGE before the
// first touch): the read-bandwidth probes, so the bound they measure is the memory's, not the
// page walks' (a kernel reading 2 MiB pages otherwise measured above "the bound").
struct HugePageFree {
  size_t bytes = 0;
  void operator()(void* p) const;
};
std::unique_ptr<float[], HugePageFree> AllocateFloatsInHugePages(size_t count);

}  // namespace cascade
