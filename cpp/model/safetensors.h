// safetensors reader (8-byte little-endian header length, JSON header, data section) over a
// read-only mapping, and checkpoints sharded with model.safetensors.index.json. F32, F16 and BF16
// tensors are read; other dtypes are validated but reading them throws a clear error.
//
// Errors: ModelFormatError whose message names the file and the tensor or header field.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "model/mapped_file.h"
#include "pjrt/dtype.h"

namespace cascade {

struct SafetensorsTensorInfo {
  std::string name;
  std::string dtype_name;     // as written: "F32", "BF16", "I64", ...
  bool supported = false;     // F32, F16 or BF16
  DType dtype = DType::kF32;  // valid when supported
  std::vector<int64_t> shape;
  uint64_t begin = 0;         // data_offsets, relative to the data section
  uint64_t end = 0;
};

class SafetensorsFile {
 public:
  static constexpr uint64_t kMaxHeaderBytes = uint64_t{100} << 20;  // as the reference library

  explicit SafetensorsFile(const std::string& path);

  const std::string& path() const { return file_.path(); }
  const std::vector<SafetensorsTensorInfo>& tensors() const { return tensors_; }
  const SafetensorsTensorInfo* FindTensor(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }  // __metadata__
  uint64_t data_offset() const { return data_offset_; }

  HostTensor ReadTensor(const std::string& name) const;
  HostTensor ReadTensor(const SafetensorsTensorInfo& info) const;

 private:
  [[noreturn]] void Fail(const std::string& what) const;
  MappedFile file_;
  uint64_t data_offset_ = 0;
  std::vector<SafetensorsTensorInfo> tensors_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

// The files of a checkpoint: `path` is a .safetensors file, a model.safetensors.index.json, or a
// directory holding either (the index wins; otherwise model.safetensors, otherwise the only
// *.safetensors file). Shard names in an index must be plain file names in the index's directory.
std::vector<std::string> SafetensorsCheckpointFiles(const std::string& path);

// Reads the tensors of a checkpoint (as SafetensorsCheckpointFiles resolves it) for which
// `want(name)` is true (all when `want` is empty). With an index, every tensor its weight_map
// lists must be in the shard it names; a tensor in two shards is an error.
std::map<std::string, HostTensor> LoadSafetensors(
    const std::string& path, const std::function<bool(const std::string&)>& want = {});

}  // namespace cascade
