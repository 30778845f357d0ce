// A persistent cache of compiled executables (PJRT_Executable_Serialize / DeserializeAndLoad),
// so a program is compiled by XLA once per machine rather than once per process: the 30-layer
// decoder programs take 5-13 s each to compile on a 2-core CPU.
//
// Location: $CASCADE_COMPILE_CACHE_DIR, else <CacheRoot()>/xla-cache; CASCADE_COMPILE_CACHE=0
// turns it off. Entries are keyed by a 128-bit hash of (program text, compile options, plugin
// file identity, platform version, device count) and carry a checksum of their payload, checked
// before anything reaches the plugin; a damaged entry is deleted and the program recompiled.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace cascade {

class CompileCache {
 public:
  // The cache configured by the environment (disabled when CASCADE_COMPILE_CACHE=0).
  static CompileCache FromEnvironment();
  CompileCache() = default;
  explicit CompileCache(std::string dir) : dir_(std::move(dir)) {}

  bool enabled() const { return !dir_.empty(); }
  const std::string& dir() const { return dir_; }

  static std::string Key(const std::string& program, const std::string& compile_options, const std::string& plugin_path,
                         const std::string& platform_version, size_t devices);
  // The payload stored under `key`, if present and intact.
  std::optional<std::string> Load(const std::string& key) const;
  // Stores atomically (temp file + rename); failures are ignored: the cache is an optimisation.
  void Store(const std::string& key, const std::string& payload) const;
  void Remove(const std::string& key) const;

 private:
  std::string Path(const std::string& key) const;
  std::string dir_;
};

}  // namespace cascade
