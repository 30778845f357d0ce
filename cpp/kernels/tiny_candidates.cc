#include "kernels/tiny_candidates.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include "kernels/decoder_layers.h"
#include "kernels/thread_team.h"

namespace cascade {
namespace kernels {

void TopKIds(const float* values, int64_t n, int64_t k, int32_t* ids) {
  // A min-heap of the best k so far: its top is the worst kept (smallest value; of equal values,
  // the highest id). Ids arrive in increasing order, so an equal value never displaces a kept one.
  using Entry = std::pair<float, int32_t>;
  auto worse = [](const Entry& a, const Entry& b) {  // a ranks above b
    return a.first != b.first ? a.first > b.first : a.second < b.second;
  };
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
