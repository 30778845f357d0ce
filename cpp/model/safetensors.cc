#include "model/safetensors.h"

#include <sys/stat.h>

#include <algorithm>
#include <cstring>
#include <dirent.h>
#include <limits>
#include <set>

#include "model/json.h"
#include "pjrt/errors.h"

namespace cascade {

namespace {

struct DtypeDesc {
  const char* name;
  uint64_t bits;
  bool supported;
  DType dtype;
};

constexpr DtypeDesc kDtypes[] = {
    {"F32", 32, true, DType::kF32},      {"F16", 16, true, DType::kF16},
    {"BF16", 16, true, DType::kBF16},    {"F64", 64, false, DType::kF64},
    {"I64", 64, false, DType::kS64},     {"U64", 64, false, DType::kS64},
    {"I32", 32, false, DType::kS32},     {"U32", 32, false, DType::kU32},
    {"I16", 16, false, DType::kS32},     {"U16", 16, false, DType::kS32},
    {"I8", 8, false, DType::kS8},        {"U8", 8, false, DType::kU8},
    {"BOOL", 8, false, DType::kPred},    {"F8_E4M3", 8, false, DType::kU8},
    {"F8_E5M2", 8, false, DType::kU8},   {"F8_E8M0", 8, false, DType::kU8},
};

const DtypeDesc* FindDtype(const std::string& name) {
  for (const auto& d : kDtypes)
    if (name == d.name) return &d;
  return nullptr;
}

bool IsDirectory(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}
bool IsFile(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}
bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}
std::string DirName(const std::string& path) {
  auto slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}
std::string Join(const std::string& dir, const std::string& name) {
  if (dir.empty() || dir.back() == '/') return dir + name;
  return dir + "/" + name;
}

// weight_map of an index file: tensor name -> shard path.
std::map<std::string, std::string> ReadIndex(const std::string& index_path) {
  json::Value root = json::ParseFile(index_path);
  if (!root.is_object()) throw ModelFormatError(index_path + ": the index is not a JSON object");
  const json::Value* wm = root.find("weight_map");
  if (!wm || !wm->is_object())
    throw ModelFormatError(index_path + ": missing or non-object \"weight_map\"");
  const std::string dir = DirName(index_path);
  std::map<std::string, std::string> out;
  for (const auto& [name, file] : wm->as_object()) {
    if (!file.is_string())
      throw ModelFormatError(index_path + ": weight_map entry for tensor \"" + name +
                             "\" is not a string");
    const std::string& f = file.as_string();
    if (f.empty() || f.find('/') != std::string::npos || f.find('\\') != std::string::npos ||
        f == "." || f == ".." || f.find('\0') != std::string::npos)
      throw ModelFormatError(index_path + ": weight_map entry for tensor \"" + name +
                             "\" names \"" + f + "\", which is not a plain file name");
    out.emplace(name, Join(dir, f));
  }
  return out;
}

}  // namespace

SafetensorsFile::SafetensorsFile(const std::string& path) : file_(path) {
  if (file_.size() < 8)
    Fail("truncated: " + std::to_string(file_.size()) +
         " bytes is too short for the 8-byte header length");
  uint64_t n;
  std::memcpy(&n, file_.data(), 8);  // little-endian host (checked in gguf.cc)
  if (n > kMaxHeaderBytes)
    Fail("header length " + std::to_string(n) + " exceeds the limit of " +
         std::to_string(kMaxHeaderBytes) + " bytes");
  if (n > file_.size() - 8)
    Fail("truncated: header length " + std::to_string(n) + " but only " +
         std::to_string(file_.size() - 8) + " bytes follow it");
  if (n < 2) Fail("header of " + std::to_string(n) + " bytes cannot hold a JSON object");
  data_offset_ = 8 + n;
  const uint64_t data_size = file_.size() - data_offset_;

  std::string_view text(reinterpret_cast<const char*>(file_.data() + 8), static_cast<size_t>(n));
  json::Value header = json::Parse(text, path + " (header)");
  if (!header.is_object()) Fail("header is a JSON " + std::string(json::TypeName(header.type())) + ", not an object");

  for (const auto& [name, entry] : header.as_object()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) Fail("\"__metadata__\" is not an object");
      for (const auto& [k, v] : entry.as_object()) {
        if (!v.is_string()) Fail("\"__metadata__\" entry \"" + k + "\" is not a string");
        metadata_[k] = v.as_string();
      }
      continue;
    }
    const std::string what = "tensor \"" + name + "\"";
    if (!entry.is_object()) Fail(what + ": header entry is not an object");
    SafetensorsTensorInfo t;
    t.name = name;
    const json::Value* dt = entry.find("dtype");
    if (!dt || !dt->is_string()) Fail(what + ": missing or non-string \"dtype\"");
    t.dtype_name = dt->as_string();
    const DtypeDesc* desc = FindDtype(t.dtype_name);
    if (!desc) Fail(what + ": unknown dtype \"" + t.dtype_name + "\"");
    t.supported = desc->supported;
    t.dtype = desc->dtype;

    const json::Value* shape = entry.find("shape");
    if (!shape || !shape->is_array()) Fail(what + ": missing or non-array \"shape\"");
    uint64_t elements = 1;
    for (const auto& d : shape->as_array()) {
      if (!d.is_integer() || d.as_int() < 0) Fail(what + ": \"shape\" holds a value that is not a non-negative integer");
      const uint64_t v = static_cast<uint64_t>(d.as_int());
      if (!CheckedMul(elements, v, &elements) ||
          elements > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        Fail(what + ": \"shape\" element count overflows");
      t.shape.push_back(d.as_int());
    }
    const json::Value* offs = entry.find("data_offsets");
    if (!offs || !offs->is_array() || offs->size() != 2)
      Fail(what + ": \"data_offsets\" must be an array of two integers");
    for (const auto& o : offs->as_array())
      if (!o.is_integer() || o.as_int() < 0)
        Fail(what + ": \"data_offsets\" holds a value that is not a non-negative integer");
    t.begin = static_cast<uint64_t>(offs->as_array()[0].as_int());
    t.end = static_cast<uint64_t>(offs->as_array()[1].as_int());
    if (t.begin > t.end)
      Fail(what + ": data_offsets [" + std::to_string(t.begin) + ", " + std::to_string(t.end) +
           "] are out of order");
    if (t.end > data_size)
      Fail(what + ": data_offsets end " + std::to_string(t.end) +
           " lies past the end of the data section (" + std::to_string(data_size) + " bytes)");
    uint64_t bits, bytes;
    if (!CheckedMul(elements, desc->bits, &bits)) Fail(what + ": byte size overflows");
    bytes = bits / 8;
    if (t.end - t.begin != bytes)
      Fail(what + ": data_offsets span " + std::to_string(t.end - t.begin) + " bytes but " +
           t.dtype_name + " shape needs " + std::to_string(bytes));
    index_.emplace(name, tensors_.size());
    tensors_.push_back(std::move(t));
  }

  std::vector<const SafetensorsTensorInfo*> sorted;
  for (const auto& t : tensors_)
    if (t.end > t.begin) sorted.push_back(&t);
  std::sort(sorted.begin(), sorted.end(),
            [](const SafetensorsTensorInfo* a, const SafetensorsTensorInfo* b) {
              return a->begin < b->begin;
            });
  for (size_t k = 1; k < sorted.size(); ++k)
    if (sorted[k - 1]->end > sorted[k]->begin)
      Fail("tensor \"" + sorted[k - 1]->name + "\" data_offsets [" +
           std::to_string(sorted[k - 1]->begin) + ", " + std::to_string(sorted[k - 1]->end) +
           "] overlap tensor \"" + sorted[k]->name + "\" at " + std::to_string(sorted[k]->begin));
}

void SafetensorsFile::Fail(const std::string& what) const {
  throw ModelFormatError(path() + ": " + what);
}

const SafetensorsTensorInfo* SafetensorsFile::FindTensor(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

HostTensor SafetensorsFile::ReadTensor(const std::string& name) const {
  const SafetensorsTensorInfo* t = FindTensor(name);
  if (!t) Fail("missing tensor \"" + name + "\"");
  return ReadTensor(*t);
}

HostTensor SafetensorsFile::ReadTensor(const SafetensorsTensorInfo& t) const {
  if (!t.supported)
    Fail("tensor \"" + t.name + "\" has dtype " + t.dtype_name +
         ", which cascade-xla does not read (F32, F16 and BF16 only)");
  uint64_t start, stop;
  if (!CheckedAdd(data_offset_, t.begin, &start) || !CheckedAdd(data_offset_, t.end, &stop) ||
      stop > file_.size() || start > stop)
    Fail("tensor \"" + t.name + "\" lies outside the file");
  return HostTensor(t.dtype, t.shape, file_.data() + start, static_cast<size_t>(stop - start));
}

std::vector<std::string> SafetensorsCheckpointFiles(const std::string& path) {
  std::string index;
  if (IsDirectory(path)) {
    const std::string idx = Join(path, "model.safetensors.index.json");
    const std::string single = Join(path, "model.safetensors");
    if (IsFile(idx)) {
      index = idx;
    } else if (IsFile(single)) {
      return {single};
    } else {
      std::vector<std::string> found;
      if (DIR* d = ::opendir(path.c_str())) {
        while (dirent* e = ::readdir(d)) {
          std::string n = e->d_name;
          if (EndsWith(n, ".safetensors") && IsFile(Join(path, n))) found.push_back(Join(path, n));
        }
        ::closedir(d);
      }
      if (found.size() == 1) return found;
      throw ModelFormatError(path + ": " +
                             (found.empty() ? std::string("no .safetensors file in the directory")
                                            : std::to_string(found.size()) +
                                                  " .safetensors files but no model.safetensors.index.json"));
    }
  } else if (EndsWith(path, ".json")) {
    index = path;
  } else {
    if (!IsFile(path)) throw ModelFormatError(path + ": no such file or directory");
    return {path};
  }
  std::set<std::string> shards;
  for (const auto& [name, shard] : ReadIndex(index)) shards.insert(shard);
  if (shards.empty()) throw ModelFormatError(index + ": \"weight_map\" is empty");
  return {shards.begin(), shards.end()};
}

std::map<std::string, HostTensor> LoadSafetensors(
    const std::string& path, const std::function<bool(const std::string&)>& want) {
  std::map<std::string, HostTensor> out;
  std::string index;
  if (IsDirectory(path) && IsFile(Join(path, "model.safetensors.index.json")))
    index = Join(path, "model.safetensors.index.json");
  else if (!IsDirectory(path) && EndsWith(path, ".json"))
    index = path;

  if (index.empty()) {
    for (const auto& f : SafetensorsCheckpointFiles(path)) {
      SafetensorsFile file(f);
      for (const auto& t : file.tensors())
        if (!want || want(t.name)) out.emplace(t.name, file.ReadTensor(t));
    }
    return out;
  }

  const auto weight_map = ReadIndex(index);
  if (weight_map.empty()) throw ModelFormatError(index + ": \"weight_map\" is empty");
  std::map<std::string, std::vector<std::string>> by_shard;
  for (const auto& [name, shard] : weight_map) by_shard[shard].push_back(name);
  for (const auto& [shard, names] : by_shard) {
    if (!IsFile(shard))
      throw ModelFormatError(index + ": shard \"" + shard + "\" (for tensor \"" + names.front() +
                             "\") does not exist");
    SafetensorsFile file(shard);
    for (const auto& name : names) {
      const SafetensorsTensorInfo* t = file.FindTensor(name);
      if (!t)
        throw ModelFormatError(shard + ": missing tensor \"" + name + "\" that " + index +
                               " places in this shard");
      if (want && !want(name)) continue;
      out.emplace(name, file.ReadTensor(*t));
    }
  }
  return out;
}

}  // namespace cascade
