// util/huge_pages.h: collapsing memory into 2 MiB pages keeps every byte, covers the regions its
// ranges span (pieces added in any order, a few bytes apart as an allocator places them), and the
// pages really are huge afterwards (/proc/self/smaps).
#include "util/huge_pages.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace cascade {
namespace {

constexpr size_t kHuge = size_t{2} << 20;

std::vector<uint32_t> Pattern(size_t words) {
  std::vector<uint32_t> v(words);
  for (size_t i = 0; i < words; ++i) v[i] = static_cast<uint32_t>(i * 2654435761u);
  return v;
}

// AnonHugePages of the mapping that holds p, in bytes (-1: not found).
long long AnonHugeBytesAt(const void* p) {
  std::ifstream smaps("/proc/self/smaps");
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  std::string line;
  bool inside = false;
  while (std::getline(smaps, line)) {
    unsigned long lo = 0, hi = 0;
    if (std::sscanf(line.c_str(), "%lx-%lx ", &lo, &hi) == 2 && line.find('-') < 16) {
      inside = a >= lo && a < hi;
      continue;
    }
    long long kb = 0;
    if (inside && std::sscanf(line.c_str(), "AnonHugePages: %lld kB", &kb) == 1) return kb * 1024;
  }
  return -1;
}

size_t RegionsInside(uintptr_t lo, uintptr_t hi) {
  const uintptr_t a = (lo + kHuge - 1) & ~(kHuge - 1), b = hi & ~(kHuge - 1);
  return b > a ? (b - a) / kHuge : 0;
}

TEST(HugePages, CollapseKeepsEveryByte) {
  const std::vector<uint32_t> expected = Pattern(3 * kHuge);  // 24 MiB
  std::vector<uint32_t> v = expected;
  const uintptr_t lo = reinterpret_cast<uintptr_t>(v.data()), hi = lo + v.size() * 4;
  const HugePageReport r = CollapseIntoHugePages({{v.data(), v.size() * 4}});
  EXPECT_EQ(v, expected);
  if (!CanCollapseHugePages()) GTEST_SKIP() << "this kernel does not collapse (MADV_COLLAPSE, Linux 6.1+)";
  EXPECT_EQ(r.bytes, RegionsInside(lo, hi) * kHuge);
  EXPECT_EQ(r.refused, 0);
  EXPECT_GE(AnonHugeBytesAt(v.data() + v.size() / 2), static_cast<long long>(r.bytes));
}

TEST(HugePages, CollapserTakesPiecesInAnyOrder) {
  const std::vector<uint32_t> expected = Pattern(5 * kHuge / 2);  // 20 MiB
  std::vector<uint32_t> v = expected;
  const uintptr_t lo = reinterpret_cast<uintptr_t>(v.data()), hi = lo + v.size() * 4;
  // Seven pieces with 128-byte gaps between them (malloc headers), last first.
  const size_t piece = v.size() * 4 / 7;
  HugePageCollapser collapser;
  for (int i = 6; i >= 0; --i) {
    const size_t at = static_cast<size_t>(i) * piece, end = i == 6 ? v.size() * 4 : at + piece - 128;
    collapser.Add(reinterpret_cast<const char*>(v.data()) + at, end - at);
    v[at / 4 + 7] ^= 0;  // the writer keeps writing while the collapser works
  }
  const HugePageReport r = collapser.Finish();
  EXPECT_EQ(v, expected);
  if (!CanCollapseHugePages()) GTEST_SKIP() << "this kernel does not collapse (MADV_COLLAPSE, Linux 6.1+)";
  EXPECT_EQ(r.bytes, RegionsInside(lo, hi) * kHuge);
  EXPECT_EQ(collapser.Finish().bytes, r.bytes);  // a second Finish reports the same
}

TEST(HugePages, NothingToCollapse) {
  EXPECT_EQ(CollapseIntoHugePages({}).bytes, 0u);
  EXPECT_EQ(CollapseIntoHugePages({{nullptr, 1 << 22}}).bytes, 0u);
  std::vector<char> small(4096);
  EXPECT_EQ(CollapseIntoHugePages({{small.data(), small.size()}}).bytes, 0u);
  HugePageCollapser idle;
  EXPECT_EQ(idle.Finish().bytes, 0u);
}

TEST(HugePages, ProbeMemoryIsZeroedAndWritable) {
  auto p = AllocateFloatsInHugePages(size_t{3} << 20);
  for (size_t i = 0; i < (size_t{3} << 20); i += 4099) ASSERT_EQ(p[i], 0.0f);
  p[(size_t{3} << 20) - 1] = 2.0f;
  EXPECT_EQ(p[(size_t{3} << 20) - 1], 2.0f);
}

}  // namespace
}  // namespace cascade
