#include "kernels/tiny_candidates.h"

#include <algorithm>
#include <functional>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include "kernels/decoder_layers.h"
#include "kernels/thread_team.h"

namespace cascade {
namespace kernels {

void TopKIds(const float* values, int64_t n, int64_t k, int32_t* ids) {
  using Entry = std::pair<float, int32_t>;
  auto worse = [](const Entry& a, const Entry& b) {  // a ranks above b
    return a.first != b.first ? a.first > b.first : a.second < b.second;
  };
  // A threshold first (a cascade draft step's top 256 of 49152: 79 us with the heap alone, most
  // of it in ~1400 heap insertions): t = the k-th largest of the maxima of groups of 64 values
  // (fewer values a group for a larger k, down to 8, so that there are at least 2k groups: K0 =
  // 512 or 1024 took the heap path before). At least k values are >= t (one in each of those
  // groups), so the top k are among the values >= t: usually a few times k, sorted in the order
  // below. (NaN never passes a comparison.)
  int64_t group = 64;
  while (group > 8 && n / group < 2 * k) group /= 2;
  const int64_t groups = n / group;
  if (k >= 1 && groups >= 2 * k) {
    std::vector<float> maxima(static_cast<size_t>(groups));
    for (int64_t g = 0; g < groups; ++g) {
      // 8 independent maxima (vectorised; one chain of maxss took 4 cycles a value).
      float m[8];
      for (int j = 0; j < 8; ++j) m[j] = -std::numeric_limits<float>::infinity();
      for (int64_t i = g * group; i < (g + 1) * group; i += 8)
        for (int j = 0; j < 8; ++j) m[j] = values[i + j] > m[j] ? values[i + j] : m[j];
      float top = m[0];
      for (int j = 1; j < 8; ++j) top = m[j] > top ? m[j] : top;
      maxima[g] = top;
    }
    std::nth_element(maxima.begin(), maxima.begin() + (k - 1), maxima.end(), std::greater<float>());
    const float t = maxima[k - 1];
    if (t > -std::numeric_limits<float>::infinity()) {
      std::vector<Entry> kept;
      kept.reserve(static_cast<size_t>(2 * k));
      for (int64_t v = 0; v < n; ++v)
        if (values[v] >= t) kept.push_back({values[v], static_cast<int32_t>(v)});
      std::partial_sort(kept.begin(), kept.begin() + k, kept.end(), worse);
      for (int64_t j = 0; j < k; ++j) ids[j] = kept[j].second;
      return;
    }
  }
  // A min-heap of the best k so far: its top is the worst kept (smallest value; of equal values,
  // the highest id). Ids arrive in increasing order, so an equal value never displaces a kept one.
  // NaN ranks below everything (as -inf, after every real -inf by id).
  auto value = [&](int64_t v) { return std::isnan(values[v]) ? -std::numeric_limits<float>::infinity() : values[v]; };
  std::vector<Entry> heap;
  heap.reserve(static_cast<size_t>(k));
  for (int64_t v = 0; v < k; ++v) heap.push_back({value(v), static_cast<int32_t>(v)});
  std::make_heap(heap.begin(), heap.end(), worse);
  float threshold = heap.front().first;
  for (int64_t v = k; v < n; ++v) {
    if (!(values[v] > threshold)) continue;  // (a NaN never enters here)
    std::pop_heap(heap.begin(), heap.end(), worse);
    heap.back() = {values[v], static_cast<int32_t>(v)};
    std::push_heap(heap.begin(), heap.end(), worse);
    threshold = heap.front().first;
  }
  std::sort(heap.begin(), heap.end(), worse);
  for (int64_t j = 0; j < k; ++j) ids[j] = heap[j].second;
}

void TinyCandidates(const TinyParams& p, const KernelImpls& impls, const float* x, int64_t T, int64_t k, int32_t* ids,
                    ThreadTeam& team) {
  const int64_t d = p.d, H = p.hidden, V = p.vocab;
  // Features h [T, H]: W1 x + b1, LayerNorm (biased variance), affine, ReLU; in f32.
  std::vector<float> h(static_cast<size_t>(T * H));
  for (int64_t t = 0; t < T; ++t) {
    float* z = h.data() + t * H;
    std::copy(p.b1, p.b1 + H, z);
    const float* xt = x + t * d;
    for (int64_t i = 0; i < d; ++i) {
      const float xi = xt[i];
      const float* row = p.w1t + i * H;
      for (int64_t j = 0; j < H; ++j) z[j] += xi * row[j];
    }
    double mean = 0, var = 0;
    for (int64_t j = 0; j < H; ++j) mean += z[j];
    mean /= static_cast<double>(H);
    for (int64_t j = 0; j < H; ++j) var += (z[j] - mean) * (z[j] - mean);
    var /= static_cast<double>(H);
    const float r = static_cast<float>(1.0 / std::sqrt(var + p.eps)), m = static_cast<float>(mean);
    for (int64_t j = 0; j < H; ++j) z[j] = std::max(0.0f, (z[j] - m) * r * p.ln_w[j] + p.ln_b[j]);
  }
  // Logits [T, V] (b2 added), then the top k of each row.
  std::vector<float> logits(static_cast<size_t>(T * V));
  WeightMatrix w2{WeightMatrix::Kind::kInt8, p.w2, p.w2_scale, H, V};
  if (p.w2_q4) w2 = {WeightMatrix::Kind::kQ4, p.w2, nullptr, H, V, p.w2_block_scale, p.w2_block_min};
  TeamMatmul(w2, impls, h.data(), T, logits.data(), team);
  for (int64_t t = 0; t < T; ++t) {
    float* row = logits.data() + t * V;
    for (int64_t v = 0; v < V; ++v) row[v] += p.b2[v];
    TopKIds(row, V, k, ids + t * k);
  }
}

}  // namespace kernels
}  // namespace cascade
