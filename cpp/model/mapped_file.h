// A read-only memory mapping of a whole file, for the weight loaders. Every access goes through
// bounds-checked helpers, so a parser can never read past the mapping.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace cascade {

class MappedFile {
 public:
  // Maps `path` read-only. Throws ModelFormatError (naming the file) if it cannot be opened,
  // is not a regular file, or cannot be mapped. An empty file maps to size() == 0.
  explicit MappedFile(const std::string& path);
  ~MappedFile();
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::string& path() const { return path_; }
  const uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }
  // True when [offset, offset + length) lies inside the mapping (overflow-safe).
  bool Contains(uint64_t offset, uint64_t length) const {
    return offset <= size_ && length <= size_ - offset;
  }

 private:
  void Release();
  std::string path_;
  const uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
  void* map_ = nullptr;
};

// Overflow-checked arithmetic on sizes read from files: false when the result would wrap.
inline bool CheckedAdd(uint64_t a, uint64_t b, uint64_t* out) {
  return !__builtin_add_overflow(a, b, out);
}
inline bool CheckedMul(uint64_t a, uint64_t b, uint64_t* out) {
  return !__builtin_mul_overflow(a, b, out);
}

}  // namespace cascade
