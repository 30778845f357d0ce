// The one home of wall-clock timing for stage statistics and tools.
#pragma once

#include <chrono>

namespace cascade {

using Clock = std::chrono::steady_clock;

// Milliseconds since `start`.
inline double MsSince(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

}  // namespace cascade
