#include "model/decoder.h"

#include <chrono>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/ffi_handlers.h"
#include "kernels/int8_matmul.h"
#include "model/matmul_mode.h"
#include "pjrt/errors.h"
#include "util/huge_pages.h"

namespace cascade {

DType DefaultKvDtype(bool cpu_plugin, bool fused_layers, WeightPrecision precision, bool draft) {
  if (precision == WeightPrecision::kF32) return DType::kF32;
  if (!cpu_plugin) return DType::kBF16;
  const bool bf16_weights = precision == WeightPrecision::kBF16 || precision == WeightPrecision::kBF16Q4;
  return bf16_weights && fused_layers && !draft ? DType::kBF16 : DType::kF32;
}

DType DefaultKvDtype(const Client& client, WeightPrecision precision, MatmulMode matmul, bool draft) {
  return DefaultKvDtype(client.platform_name() == "cpu", UsesLayerArena(ChooseMatmulMode(client, precision, matmul)),
                        precision, draft);
}

namespace {

// The order of a precision's q4 values, its kernel's (kernels/int8_matmul.h): bf16q4's per CPU
// (kernels/ffi_handlers.h BlockStoredBf16Kind), the q4 draft's interleaved.
kernels::Q4Order Q4OrderOf(WeightPrecision precision) {
  return precision == WeightPrecision::kBF16Q4 ? kernels::Q4OrderOf(kernels::BlockStoredBf16Kind())
                                               : kernels::Q4Order::kInterleaved;
}

void CheckDims(const HostTensor& t, const std::vector<int64_t>& dims, const std::string& name) {
  if (t.dims != dims)
    throw Error(ErrorKind::kModelFormat, "tensor " + name + " is " + ShapeString(t.dtype, t.dims) + ", expected " +
                                             ShapeString(t.dtype, dims));
}

HostTensor Transpose(const HostTensor& t) {
  const int64_t rows = t.dims[0], cols = t.dims[1];
  HostTensor out(t.dtype, {cols, rows});
  const size_t es = DTypeSize(t.dtype);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c)
      std::memcpy(&out.data[(c * rows + r) * es], &t.data[(r * cols + c) * es], es);
  return out;
}

// The host tensors for the layout entries starting at `i` (one dense tensor, or int8 values and
// scales); advances i past them.
std::vector<HostTensor> PrepareAt(const ModelWeights& weights, const std::vector<WeightParam>& layout, size_t& i,
                                  WeightPrecision precision) {
  const WeightParam& p = layout[i];
  // kInt8's copy of a tied head quantises the embedding (model/programs.h).
  const bool tied_copy = p.tensor == "lm_head.weight" && weights.config.tied_embeddings;
  const HostTensor& src = weights.at(tied_copy ? "model.embed_tokens.weight" : p.tensor);
  std::vector<int64_t> canonical = p.dims;
  if (p.transposed) std::swap(canonical[0], canonical[1]);
  if (p.role == WeightParam::Role::kQ4Values) canonical[1] *= 2;  // two weights per byte
  CheckDims(src, canonical, p.tensor);
  if (p.transposed) {
    ++i;
    std::vector<HostTensor> out;
    out.push_back(Transpose(ToF32(src)));
    return out;
  }
  if (p.role == WeightParam::Role::kQ4Values) {
    HostTensor f = ToF32(src);
    const int64_t out_rows = canonical[0], in = canonical[1];
    std::vector<HostTensor> out;
    out.emplace_back(DType::kU8, p.dims);
    out.emplace_back(DType::kF16, std::vector<int64_t>{out_rows, in / kernels::kQ4Block});
    out.emplace_back(DType::kF16, std::vector<int64_t>{out_rows, in / kernels::kQ4Block});
    const kernels::Q4Order order = Q4OrderOf(precision);
    kernels::QuantizeQ4Rows(f.as<float>(), in, out_rows, out[0].as<uint8_t>(), out[1].as<uint16_t>(),
                            out[2].as<uint16_t>(), order);
    // f16 block scales and minimums hold |values| <= 65504: beyond that (or NaN weights) the
    // draft would compute NaN; say so instead.
    for (const HostTensor* t : {&out[1], &out[2]})
      for (int64_t j = 0; j < t->element_count(); ++j)
        if ((t->as<uint16_t>()[j] & 0x7C00) == 0x7C00)
          throw InvalidArgumentError("q4 weights: " + p.tensor + " has a 32-weight block q4 cannot hold (|w| or its " +
                                     "range beyond 65504, or NaN); use another precision for this model");
    if (precision == WeightPrecision::kBF16Q4 &&
        !kernels::Q4HoldsBf16Exactly(f.as<float>(), in, out_rows, out[0].as<uint8_t>(), out[1].as<uint16_t>(),
                                     out[2].as<uint16_t>(), order))
      throw InvalidArgumentError("bf16q4 weights: " + p.tensor + " is not made of 4-bit blocks (its bf16 weights " +
                                 "differ from what its q4 blocks hold); use bf16 for this model");
    i += 3;
    return out;
  }
  if (p.role == WeightParam::Role::kQ8Values) {  // kBF16Q4's head: 8-bit blocks holding its bf16 weights
    HostTensor f = ToF32(src);
    const int64_t out_rows = canonical[0], in = canonical[1];
    std::vector<HostTensor> out;
    out.emplace_back(DType::kS8, p.dims);
    out.emplace_back(DType::kF16, std::vector<int64_t>{out_rows, in / 32});
    if (!kernels::QuantizeQ8Rows(f.as<float>(), in, out_rows, out[0].as<int8_t>(), out[1].as<uint16_t>()))
      throw InvalidArgumentError("bf16q4 weights: " + p.tensor + " (the head) is not made of 8-bit blocks (its bf16 " +
                                 "weights differ from what its q8 blocks hold); use bf16 for this model");
    i += 2;
    return out;
  }
  if (p.role == WeightParam::Role::kInt8Values) {
    Int8Matrix q = QuantizeInt8PerChannel(src);
    i += 2;
    std::vector<HostTensor> out;
    out.push_back(std::move(q.values));
    out.push_back(std::move(q.scales));
    return out;
  }
  ++i;
  std::vector<HostTensor> out;
  out.push_back(p.dtype == DType::kBF16 ? ToBF16(src) : ToF32(src));
  return out;
}

}  // namespace

HostTensor ToF32(const HostTensor& t) {
  if (t.dtype == DType::kF32) return t;
  HostTensor out(DType::kF32, t.dims);
  float* o = out.as<float>();
  const int64_t n = t.element_count();
  if (t.dtype == DType::kBF16) {
    for (int64_t i = 0; i < n; ++i) o[i] = BF16ToF32(t.as<uint16_t>()[i]);
  } else if (t.dtype == DType::kF16) {
    for (int64_t i = 0; i < n; ++i) o[i] = F16ToF32(t.as<uint16_t>()[i]);
  } else {
    throw InvalidArgumentError(std::string("ToF32: unsupported dtype ") + DTypeName(t.dtype));
  }
  return out;
}

HostTensor ToBF16(const HostTensor& t) {
  if (t.dtype == DType::kBF16) return t;
  HostTensor f = ToF32(t);
  HostTensor out(DType::kBF16, t.dims);
  const int64_t n = t.element_count();
  for (int64_t i = 0; i < n; ++i) out.as<uint16_t>()[i] = F32ToBF16(f.as<float>()[i]);
  return out;
}

Int8Matrix QuantizeInt8PerChannel(const HostTensor& w) {
  if (w.dims.size() != 2) throw InvalidArgumentError("QuantizeInt8PerChannel: need a matrix, got " + ShapeString(w.dtype, w.dims));
  HostTensor f = ToF32(w);
  const int64_t rows = w.dims[0], cols = w.dims[1];
  Int8Matrix q{HostTensor(DType::kS8, w.dims), HostTensor(DType::kF32, {rows})};
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = f.as<float>() + r * cols;
    float m = 0;
    for (int64_t c = 0; c < cols; ++c) m = std::max(m, std::fabs(row[c]));
    float s = m > 0 ? m / 127.0f : 1.0f;
    q.scales.as<float>()[r] = s;
    int8_t* out = q.values.as<int8_t>() + r * cols;
    for (int64_t c = 0; c < cols; ++c)
      out[c] = static_cast<int8_t>(std::clamp(std::nearbyint(row[c] / s), -127.0f, 127.0f));
  }
  return q;
}

std::vector<HostTensor> PrepareWeightParams(const ModelWeights& weights, WeightPrecision precision) {
  auto layout = WeightParamLayout(weights.config, precision);
  std::vector<HostTensor> out;
  for (size_t i = 0; i < layout.size();)
    for (auto& t : PrepareAt(weights, layout, i, precision)) out.push_back(std::move(t));
  return out;
}

ModelWeights EffectiveWeights(const ModelWeights& weights, WeightPrecision precision) {
  ModelWeights out;
  out.config = weights.config;
  out.source = weights.source;
  auto layout = WeightParamLayout(weights.config, precision);
  // A tied head with a quantised copy of its own is, as the program sees it, an untied one.
  for (const WeightParam& p : layout)
    if (p.tensor == "lm_head.weight") out.config.tied_embeddings = false;
  for (size_t i = 0; i < layout.size();) {
    const std::string name = layout[i].tensor;
    const bool transposed = layout[i].transposed;
    auto prepared = PrepareAt(weights, layout, i, precision);
    if (transposed) prepared[0] = Transpose(prepared[0]);
    if (prepared.size() == 3) {  // q4 blocks
      const int64_t rows = prepared[0].dims[0], in = prepared[0].dims[1] * 2;
      HostTensor f(DType::kF32, {rows, in});
      for (int64_t r = 0; r < rows; ++r)
        kernels::DequantizeQ4Row(prepared[0].as<uint8_t>(), prepared[1].as<uint16_t>(), prepared[2].as<uint16_t>(), in,
                                 rows, r, f.as<float>() + r * in, Q4OrderOf(precision));
      // kQ4Bf16: the bf16 weights they hold; kQ4ExactBf16 multiplies by the blocks' own.
      if (precision == WeightPrecision::kBF16Q4 && kernels::BlockStoredBf16Kind() == kernels::WeightMatrix::Kind::kQ4Bf16)
        f = ToF32(ToBF16(f));
      out.tensors[name] = std::move(f);
    } else if (prepared.size() == 2) {  // int8 with a scale per row, or 8-bit blocks (bf16q4's head)
      const HostTensor& v = prepared[0];
      const HostTensor& s = prepared[1];
      const bool blocks = s.dtype == DType::kF16;
      HostTensor f(DType::kF32, v.dims);
      const int64_t rows = v.dims[0], cols = v.dims[1];
      for (int64_t r = 0; r < rows; ++r) {
        if (blocks) {
          kernels::DequantizeQ8Row(v.as<int8_t>(), s.as<uint16_t>(), cols, rows, r, f.as<float>() + r * cols);
          continue;
        }
        for (int64_t c = 0; c < cols; ++c)
          f.as<float>()[r * cols + c] = static_cast<float>(v.as<int8_t>()[r * cols + c]) * s.as<float>()[r];
      }
      out.tensors[name] = blocks ? ToF32(ToBF16(f)) : std::move(f);  // blocks: the bf16 weights they hold
    } else {
      out.tensors[name] = ToF32(prepared[0]);
    }
  }
  return out;
}

DecoderModel::DecoderModel(std::shared_ptr<Client> client, const ModelWeights& weights, const DecoderOptions& options)
    : client_(std::move(client)), config_(weights.config), options_(options) {
  ValidateDecoderConfig(config_);
  if (options_.max_context < 1) throw InvalidArgumentError("DecoderModel: max_context must be >= 1");
  if (options_.device_index >= client_->devices().size())
    throw InvalidArgumentError("DecoderModel: no device " + std::to_string(options_.device_index));
  if (options_.replicas < 1 || static_cast<size_t>(options_.replicas) > client_->devices().size())
    throw InvalidArgumentError("DecoderModel: replicas must be in 1.." + std::to_string(client_->devices().size()) +
                               " (the client's devices), got " + std::to_string(options_.replicas));
  if (options_.replicas > 1 && options_.device_index != 0)
    throw InvalidArgumentError("DecoderModel: replicated models start at device 0");
  replicas_.resize(static_cast<size_t>(options_.replicas));
  for (size_t r = 0; r < replicas_.size(); ++r) replicas_[r].device = options_.replicas > 1 ? r : options_.device_index;
  const bool cpu = client_->platform_name() == "cpu";
  layer_arena_ = UsesLayerArena(ChooseMatmulMode(*client_, options_.precision, options_.matmul));
  kv_dtype_ = options_.kv_dtype.value_or(DefaultKvDtype(cpu, layer_arena_, options_.precision));  // (not a draft)
  if (kv_dtype_ != DType::kF32 && kv_dtype_ != DType::kBF16)
    throw InvalidArgumentError("DecoderModel: kv_dtype must be f32 or bf16");
  // One tensor group at a time, so the host holds at most one converted matrix at once (besides
  // the current layer's arena, filled piece by piece and uploaded after the layer's last piece).
  auto layout = WeightParamLayout(config_, options_.precision);
  std::vector<ArenaPiece> pieces;
  HostTensor arena;
  if (layer_arena_) {
    pieces = LayerArenaPieces(config_, options_.precision);
    arena = HostTensor(DType::kU8, {LayerArenaBytes(config_, options_.precision)});
  }
  // On the CPU plugin the weights go into 2 MiB pages as they land, on the other core
  // (util/huge_pages.h: decode steps 5-16% faster, docs/bench/decoder.md session 34).
  std::unique_ptr<HugePageCollapser> collapser;
  if (cpu && !HugePagesDisabled()) collapser = std::make_unique<HugePageCollapser>();
  auto upload = [&](const HostTensor& t) {
    for (auto& rep : replicas_) {
      rep.weights.push_back(client_->ToDevice(t, rep.device));
      if (collapser) collapser->Add(rep.weights.back()->ReadableHostData(), rep.weights.back()->byte_size());
    }
  };
  size_t next_piece = 0;
  for (size_t i = 0; i < layout.size();) {
    const size_t first = i;
    std::vector<HostTensor> group = PrepareAt(weights, layout, i, options_.precision);
    if (next_piece < pieces.size() && pieces[next_piece].param == first) {
      for (const HostTensor& t : group) {
        const ArenaPiece& piece = pieces[next_piece++];
        if (static_cast<int64_t>(t.data.size()) != piece.bytes)
          throw Error(ErrorKind::kInternal, "DecoderModel: " + layout[piece.param].name() + " does not fit its arena piece");
        uint8_t* at = arena.data.data() + piece.offset;
        const WeightParam& param = layout[piece.param];
        const ArenaPacking packing = ArenaPackingOf(config_, param, options_.precision);
        if (packing == ArenaPacking::kF32Panels)  // [in, out] -> panels (kernels/int8_matmul.h)
          kernels::PackF32Panels(t.as<float>(), param.dims[0], param.dims[1], reinterpret_cast<float*>(at));
        else if (packing == ArenaPacking::kInt8Panels)  // [out, in] -> panels of 16 rows
          kernels::PackInt8Panels(t.as<int8_t>(), param.dims[1], param.dims[0], at);
        else
          std::memcpy(at, t.data.data(), t.data.size());
      }
      if (next_piece == pieces.size() || pieces[next_piece].layer != pieces[next_piece - 1].layer) upload(arena);
      continue;
    }
    for (const HostTensor& t : group) upload(t);
  }
  if (collapser) huge_page_bytes_ = static_cast<int64_t>(collapser->Finish().bytes);
  ResetCache();
}

void DecoderModel::ResetCache() {
  ++cache_version_;
  HostTensor zeros(KvCacheStorage(kv_dtype_, layer_arena_), KvCacheDims(config_, options_.max_context));
  for (auto& rep : replicas_) {
    rep.k_cache = client_->ToDevice(zeros, rep.device);
    rep.v_cache = client_->ToDevice(zeros, rep.device);
  }
}

void DecoderModel::SwapCache(KvCache& other) {
  ++cache_version_;
  if (other.empty()) {
    HostTensor zeros(KvCacheStorage(kv_dtype_, layer_arena_), KvCacheDims(config_, options_.max_context));
    for (auto& rep : replicas_) {
      other.k.push_back(client_->ToDevice(zeros, rep.device));
      other.v.push_back(client_->ToDevice(zeros, rep.device));
    }
  }
  if (other.k.size() != replicas_.size() || other.v.size() != replicas_.size())
    throw InvalidArgumentError("SwapCache: the cache has " + std::to_string(other.k.size()) + " replicas, the model " +
                               std::to_string(replicas_.size()));
  for (size_t r = 0; r < replicas_.size(); ++r) {
    std::swap(replicas_[r].k_cache, other.k[r]);
    std::swap(replicas_[r].v_cache, other.v[r]);
  }
}

int64_t DecoderModel::cache_bytes() const {
  int64_t n = 0;
  for (const auto& rep : replicas_) n += static_cast<int64_t>(rep.k_cache->byte_size() + rep.v_cache->byte_size());
  return n;
}

void DecoderModel::SetTiny(const TinyWeights& tiny) {
  ValidateTiny(tiny);
  CheckTinyFitsDraft(tiny, config_);
  std::vector<std::vector<std::unique_ptr<Buffer>>> uploaded(replicas_.size());
  for (const HostTensor& t : PrepareTinyParams(tiny))
    for (size_t r = 0; r < replicas_.size(); ++r) uploaded[r].push_back(client_->ToDevice(t, replicas_[r].device));
  // Its W2 (6-25 MB, read every cascade step from the last-level cache) in 2 MiB pages too: in
  // 4 KiB pages it spans more pages than the TLB holds.
  if (client_->platform_name() == "cpu" && !HugePagesDisabled()) {
    std::vector<std::pair<const void*, size_t>> ranges;
    for (const auto& replica : uploaded)
      for (const auto& b : replica) ranges.push_back({b->ReadableHostData(), b->byte_size()});
    tiny_huge_page_bytes_ = static_cast<int64_t>(CollapseIntoHugePages(ranges).bytes);
  }
  for (size_t r = 0; r < replicas_.size(); ++r) {
    replicas_[r].tiny = std::move(uploaded[r]);
    replicas_[r].candidate_tables.clear();
  }
  if (tiny.hidden != tiny_hidden_ || tiny.input != tiny_input_)  // the candidates programs hold the tiny's shape
    for (auto it = programs_.begin(); it != programs_.end();)
      it = std::get<1>(it->first).kind == HeadKind::kCandidates ? programs_.erase(it) : std::next(it);
  tiny_hidden_ = tiny.hidden;
  tiny_input_ = tiny.input;
}

int64_t DecoderModel::tiny_bytes() const {
  int64_t n = 0;
  for (const auto& b : replicas_[0].tiny) n += static_cast<int64_t>(b->byte_size());
  return n;
}

void DecoderModel::BuildCandidateTable(int64_t k0) {
  if (!has_tiny()) throw InvalidArgumentError("BuildCandidateTable: no tiny model (SetTiny)");
  if (tiny_input_ != TinyInput::kInputEmbedding) return;  // the tiny runs inside the draft step
  if (k0 < 1 || k0 > config_.vocab_size)
    throw InvalidArgumentError("BuildCandidateTable: needs 1 <= K0 <= vocab, got " + std::to_string(k0));
  if (replicas_[0].candidate_tables.count(k0)) return;
  const int64_t V = config_.vocab_size;
  // Rows per call: the program holds a [rows, vocab] f32 logits block (1024 rows: 200 MB at a
  // 49152 vocabulary).
  const int64_t rows = std::min<int64_t>(V, 1024);
  const auto start = std::chrono::steady_clock::now();
  auto exe = client_->Compile(EmitTinyTableProgram(config_, options_.precision, tiny_hidden_, rows, k0),
                              {static_cast<int>(options_.replicas)});
  compile_ms_ += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  size_t embedding = 0;
  const auto layout = ModelParamLayout(config_, options_.precision, layer_arena_);
  while (layout[embedding].tensor != "model.embed_tokens.weight") ++embedding;

  HostTensor table(DType::kS32, {V, k0});
  const int64_t R = static_cast<int64_t>(replicas_.size());
  for (int64_t first = 0; first < V; first += rows * R) {  // replica r takes block first + r*rows
    std::vector<std::unique_ptr<Buffer>> tokens(replicas_.size());
    std::vector<std::vector<Buffer*>> args(replicas_.size());
    for (int64_t r = 0; r < R; ++r) {
      std::vector<int32_t> ids(static_cast<size_t>(rows));
      for (int64_t i = 0; i < rows; ++i) ids[i] = static_cast<int32_t>(std::min(first + r * rows + i, V - 1));
      tokens[r] = client_->ToDevice(HostTensor(DType::kS32, {rows}, ids.data(), ids.size() * 4), replicas_[r].device);
      args[r] = {replicas_[r].weights[embedding].get(), tokens[r].get()};
      for (auto& t : replicas_[r].tiny) args[r].push_back(t.get());
    }
    auto out = exe->Execute(args);
    for (int64_t r = 0; r < R; ++r) {
      const int64_t from = first + r * rows, n = std::min(rows, V - from);
      if (n <= 0) continue;
      HostTensor block = out[r][0]->ToHost();
      std::memcpy(table.as<int32_t>() + from * k0, block.as<int32_t>(), static_cast<size_t>(n * k0) * 4);
    }
  }
  for (auto& rep : replicas_) rep.candidate_tables[k0] = client_->ToDevice(table, rep.device);
}

int64_t DecoderModel::candidate_table_bytes() const {
  int64_t n = 0;
  for (const auto& [k, b] : replicas_[0].candidate_tables) n += static_cast<int64_t>(b->byte_size());
  return n;
}

void DecoderModel::Prepare(int64_t num_tokens, const HeadSpec& head) {
  Program(num_tokens, head, false);
  if (head.kind == HeadKind::kCandidates) BuildCandidateTable(head.k);
}

int64_t DecoderModel::weight_bytes() const {
  int64_t n = 0;
  for (const auto& b : replicas_[0].weights) n += static_cast<int64_t>(b->byte_size());
  return n;
}

std::string DecoderModel::ProgramText(int64_t num_tokens, const HeadSpec& head, bool tree) const {
  ProgramSpec spec;
  spec.num_tokens = num_tokens;
  spec.max_context = options_.max_context;
  spec.head = head;
  spec.tree_mask = tree;
  spec.precision = options_.precision;
  spec.kv_dtype = kv_dtype_;
  if (head.kind == HeadKind::kCandidates) {
    spec.tiny_hidden = tiny_hidden_;
    spec.tiny_input = tiny_input_;
  }
  // int8 weights on the CPU plugin: our FFI kernel when it registers (kernels/ffi_handlers.h).
  spec.matmul = ChooseMatmulMode(*client_, options_.precision, options_.matmul);
  spec.layer_arena = layer_arena_;
  return EmitDecoderProgram(config_, spec);
}

std::shared_ptr<LoadedExecutable> DecoderModel::Program(int64_t num_tokens, const HeadSpec& head, bool tree) {
  HeadSpec key_head = head;
  if (head.kind != HeadKind::kTopK && head.kind != HeadKind::kCandidates) key_head.k = 0;
  auto key = std::make_tuple(num_tokens, key_head, tree);
  auto it = programs_.find(key);
  if (it != programs_.end()) return it->second;
  const auto start = std::chrono::steady_clock::now();
  auto exe = client_->Compile(ProgramText(num_tokens, key_head, tree), {static_cast<int>(options_.replicas)});
  compile_ms_ += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  for (size_t r = 0; r < replicas_.size(); ++r) {
    if (exe->device_indices().size() != replicas_.size() || exe->device_indices()[r] != replicas_[r].device) {
      // Compile places replica r on device r; a single model elsewhere needs its own client today.
      throw InvalidArgumentError("DecoderModel: programs run on device " + std::to_string(exe->device_indices()[0]) +
                                 ", not device " + std::to_string(replicas_[r].device));
    }
  }
  programs_[key] = exe;
  return exe;
}

ForwardResult DecoderModel::Forward(const std::vector<int32_t>& tokens, int64_t start_pos, const HeadSpec& head,
                                    const ForwardInputs& inputs) {
  std::vector<Shard> shards(replicas_.size(), Shard{tokens, inputs});
  return std::move(ForwardSharded(shards, start_pos, head)[0]);
}

// The phases of ForwardSharded: CheckShards (what the plugin must never see), UploadInputs (the
// per-call buffers and the argument lists), ExecuteDonatingCaches, ReadResults.

void DecoderModel::CheckShards(const std::vector<Shard>& shards, int64_t start_pos, const HeadSpec& head) const {
  if (shards.size() != replicas_.size())
    throw InvalidArgumentError("Forward: one shard per replica (" + std::to_string(replicas_.size()) + "), got " +
                               std::to_string(shards.size()));
  const int64_t T = static_cast<int64_t>(shards[0].tokens.size());
  const bool logprob = head.kind == HeadKind::kTokenLogprob;
  const bool tree = !shards[0].inputs.tree_mask.empty();
  if (T < 1) throw InvalidArgumentError("Forward: no tokens");
  if (start_pos < 0 || start_pos + T > options_.max_context)
    throw InvalidArgumentError("Forward: slots " + std::to_string(start_pos) + ".." + std::to_string(start_pos + T - 1) +
                               " do not fit the cache of " + std::to_string(options_.max_context));
  if (head.kind == HeadKind::kTopK && (head.k < 1 || head.k > config_.vocab_size))
    throw InvalidArgumentError("Forward: top-k needs 1 <= k <= vocab");
  if (head.kind == HeadKind::kCandidates) {
    if (!has_tiny()) throw InvalidArgumentError("Forward: the candidates head needs a tiny model (SetTiny)");
    if (head.k < 1 || head.k > config_.vocab_size)
      throw InvalidArgumentError("Forward: the candidates head needs 1 <= K0 <= vocab, got " + std::to_string(head.k));
  }
  if (head.full_argmax && head.kind != HeadKind::kCandidates)
    throw InvalidArgumentError("Forward: full_argmax is an option of the candidates head only");
  for (const Shard& shard : shards) {
    const auto& tokens = shard.tokens;
    const auto& inputs = shard.inputs;
    if (static_cast<int64_t>(tokens.size()) != T) throw InvalidArgumentError("Forward: shards differ in length");
    for (int32_t t : tokens)
      if (t < 0 || t >= config_.vocab_size) throw InvalidArgumentError("Forward: token id " + std::to_string(t) + " out of range");
    if (logprob != !inputs.target_ids.empty() || (logprob && static_cast<int64_t>(inputs.target_ids.size()) != T))
      throw InvalidArgumentError("Forward: target_ids must hold one id per token exactly for the token_logprob head");
    for (int32_t t : inputs.target_ids)
      if (t < 0 || t >= config_.vocab_size) throw InvalidArgumentError("Forward: target id " + std::to_string(t) + " out of range");
    if (tree != !inputs.tree_mask.empty()) throw InvalidArgumentError("Forward: every shard or none has a tree mask");
    if (tree && static_cast<int64_t>(inputs.tree_mask.size()) != T * T)
      throw InvalidArgumentError("Forward: tree_mask must hold T*T entries");
    if (!inputs.position_offsets.empty() && (!tree || static_cast<int64_t>(inputs.position_offsets.size()) != T))
      throw InvalidArgumentError("Forward: position_offsets need a tree_mask and one offset per token");
  }
}

// Uploads each replica's tokens, start position and head / tree inputs into `uploaded`, and
// returns the argument lists in @main's order (model/programs.h).
std::vector<std::vector<Buffer*>> DecoderModel::UploadInputs(const std::vector<Shard>& shards, int64_t start_pos,
                                                             const HeadSpec& head,
                                                             std::vector<std::vector<std::unique_ptr<Buffer>>>& uploaded) {
  const int64_t T = static_cast<int64_t>(shards[0].tokens.size());
  const bool tree = !shards[0].inputs.tree_mask.empty();
  const int32_t start32 = static_cast<int32_t>(start_pos);
  uploaded.clear();
  uploaded.resize(replicas_.size());
  std::vector<std::vector<Buffer*>> args(replicas_.size());
  for (size_t r = 0; r < replicas_.size(); ++r) {
    const size_t dev = replicas_[r].device;
    const auto& tokens = shards[r].tokens;
    const auto& inputs = shards[r].inputs;
    auto& e = uploaded[r];
    e.push_back(client_->ToDevice(HostTensor(DType::kS32, {T}, tokens.data(), tokens.size() * 4), dev));
    e.push_back(client_->ToDevice(HostTensor(DType::kS32, {}, &start32, 4), dev));
    if (head.kind == HeadKind::kTokenLogprob)
      e.push_back(client_->ToDevice(HostTensor(DType::kS32, {T}, inputs.target_ids.data(), T * 4), dev));
    if (tree) {
      HostTensor m(DType::kPred, {T, T});
      for (int64_t i = 0; i < T * T; ++i) m.data[i] = inputs.tree_mask[i] ? 1 : 0;
      e.push_back(client_->ToDevice(m, dev));
      std::vector<int32_t> offsets = inputs.position_offsets;
      if (offsets.empty())
        for (int32_t i = 0; i < T; ++i) offsets.push_back(i);
      e.push_back(client_->ToDevice(HostTensor(DType::kS32, {T}, offsets.data(), T * 4), dev));
    }
    for (auto& w : replicas_[r].weights) args[r].push_back(w.get());
    args[r].push_back(replicas_[r].k_cache.get());
    args[r].push_back(replicas_[r].v_cache.get());
    for (auto& x : e) args[r].push_back(x.get());
    if (head.kind == HeadKind::kCandidates) {
      if (tiny_input_ == TinyInput::kInputEmbedding)
        args[r].push_back(replicas_[r].candidate_tables.at(head.k).get());
      else
        for (auto& t : replicas_[r].tiny) args[r].push_back(t.get());
    }
  }
  return args;
}

// Runs `exe`; the caches are donated (results 0 and 1 are the same device memory, updated in
// place) and become the new ones. A failure after the old caches were given up resets them.
std::vector<std::vector<std::unique_ptr<Buffer>>> DecoderModel::ExecuteDonatingCaches(
    LoadedExecutable& exe, const std::vector<std::vector<Buffer*>>& args) {
  std::vector<std::vector<std::unique_ptr<Buffer>>> out;
  try {
    out = exe.Execute(args);
  } catch (...) {
    for (auto& rep : replicas_)
      if (rep.k_cache->donated() || rep.v_cache->donated()) {
        ResetCache();  // an old cache is gone; start clean
        break;
      }
    throw;
  }
  for (size_t r = 0; r < replicas_.size(); ++r) {
    replicas_[r].k_cache = std::move(out[r][0]);
    replicas_[r].v_cache = std::move(out[r][1]);
  }
  return out;
}

// The head's outputs (results 2..) of one replica, as HeadOutputs lists them.
ForwardResult DecoderModel::ReadResults(const std::vector<std::unique_ptr<Buffer>>& o, int64_t T, const HeadSpec& head) {
  auto floats = [](const Buffer& b) {
    HostTensor t = b.ToHost();
    return std::vector<float>(t.as<float>(), t.as<float>() + t.element_count());
  };
  auto ints = [](const Buffer& b) {
    HostTensor t = b.ToHost();
    return std::vector<int32_t>(t.as<int32_t>(), t.as<int32_t>() + t.element_count());
  };
  ForwardResult r;
  r.num_tokens = T;
  switch (head.kind) {
    case HeadKind::kLogits:
      r.logits = floats(*o[2]);
      break;
    case HeadKind::kArgmax:
      r.argmax = ints(*o[2]);
      break;
    case HeadKind::kTopK:
      r.topk_values = floats(*o[2]);
      r.topk_indices = ints(*o[3]);
      r.logsumexp = floats(*o[4]);
      break;
    case HeadKind::kTokenLogprob:
      r.token_logprobs = floats(*o[2]);
      r.argmax = ints(*o[3]);
      break;
    case HeadKind::kCandidates:
      r.candidate_ids = ints(*o[2]);
      r.candidate_logits = floats(*o[3]);
      r.argmax = ints(*o[4]);
      if (head.full_argmax) r.full_argmax = ints(*o[5]);
      break;
    case HeadKind::kHidden:
      r.hidden = floats(*o[2]);
      r.logits = floats(*o[3]);
      break;
  }
  return r;
}

std::vector<ForwardResult> DecoderModel::ForwardSharded(const std::vector<Shard>& shards, int64_t start_pos,
                                                        const HeadSpec& head) {
  CheckShards(shards, start_pos, head);
  ++cache_version_;
  const int64_t T = static_cast<int64_t>(shards[0].tokens.size());
  auto exe = Program(T, head, !shards[0].inputs.tree_mask.empty());
  if (head.kind == HeadKind::kCandidates) BuildCandidateTable(head.k);
  std::vector<std::vector<std::unique_ptr<Buffer>>> uploaded;
  const std::vector<std::vector<Buffer*>> args = UploadInputs(shards, start_pos, head, uploaded);
  const auto out = ExecuteDonatingCaches(*exe, args);
  std::vector<ForwardResult> results;
  for (const auto& o : out) results.push_back(ReadResults(o, T, head));
  return results;
}

}  // namespace cascade
