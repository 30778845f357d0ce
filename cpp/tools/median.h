// The median the benchmark tools report (the upper middle of an even count).
#pragma once

#include <algorithm>
#include <vector>

namespace cascade {
namespace tools {

inline double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace tools
}  // namespace cascade
