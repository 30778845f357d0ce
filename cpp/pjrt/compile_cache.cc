#include "pjrt/compile_cache.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>

#include "pjrt/plugin_locator.h"

namespace cascade {

namespace {

constexpr char kMagic[8] = {'C', 'X', 'L', 'A', 'X', 'E', '0', '1'};

uint64_t Fnv1a(const std::string& data, uint64_t seed) {
  uint64_t h = 1469598103934665603ULL ^ seed;
  for (unsigned char c : data) {
    h ^= c;
    h *= 1099511628211ULL;
  }
  return h;
}

std::string Hex(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

bool MakeDirs(const std::string& dir) {
  std::string partial;
  std::stringstream ss(dir);
  std::string part;
  if (!dir.empty() && dir[0] == '/') partial = "/";
  while (std::getline(ss, part, '/')) {
    if (part.empty()) continue;
    partial += part + "/";
    if (mkdir(partial.c_str(), 0755) != 0 && errno != EEXIST) return false;
  }
  return true;
}

}  // namespace

CompileCache CompileCache::FromEnvironment() {
  const char* off = std::getenv("CASCADE_COMPILE_CACHE");
  if (off && (std::strcmp(off, "0") == 0 || std::strcmp(off, "false") == 0 || std::strcmp(off, "off") == 0))
    return CompileCache();
  const char* dir = std::getenv("CASCADE_COMPILE_CACHE_DIR");
  return CompileCache(dir && *dir ? std::string(dir) : CacheRoot() + "/xla-cache");
}

std::string CompileCache::Key(const std::string& program, const std::string& compile_options,
                              const std::string& plugin_path, const std::string& platform_version, size_t devices) {
  struct stat st {};
  std::string plugin_identity = plugin_path;
  if (stat(plugin_path.c_str(), &st) == 0)
    plugin_identity += ":" + std::to_string(st.st_size) + ":" + std::to_string(static_cast<long long>(st.st_mtime));
  const std::string all = program + '\0' + compile_options + '\0' + plugin_identity + '\0' + platform_version + '\0' +
                          std::to_string(devices);
  return Hex(Fnv1a(all, 0)) + Hex(Fnv1a(all, 0x9e3779b97f4a7c15ULL));
}

std::string CompileCache::Path(const std::string& key) const { return dir_ + "/" + key + ".xlaexe"; }

std::optional<std::string> CompileCache::Load(const std::string& key) const {
  if (!enabled()) return std::nullopt;
  std::ifstream in(Path(key), std::ios::binary);
  if (!in) return std::nullopt;
  std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  // magic[8] | payload size u64 | checksum u64 | payload
  if (data.size() < 24 || std::memcmp(data.data(), kMagic, 8) != 0) {
    Remove(key);
    return std::nullopt;
  }
  uint64_t size, checksum;
  std::memcpy(&size, data.data() + 8, 8);
  std::memcpy(&checksum, data.data() + 16, 8);
  std::string payload = data.substr(24);
  if (payload.size() != size || Fnv1a(payload, 1) != checksum) {
    Remove(key);
    return std::nullopt;
  }
  return payload;
}

void CompileCache::Store(const std::string& key, const std::string& payload) const {
  if (!enabled() || !MakeDirs(dir_)) return;
  std::random_device rd;
  // "<entry>.tmp<pid>-<random>": the next start removes it once that process is gone
  // (removeStaleTemps in src/utils/cache.ts).
  const std::string tmp = Path(key) + ".tmp" + std::to_string(static_cast<long>(::getpid())) + "-" +
                          Hex((static_cast<uint64_t>(rd()) << 32) | rd());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) return;
    const uint64_t size = payload.size(), checksum = Fnv1a(payload, 1);
    out.write(kMagic, 8);
    out.write(reinterpret_cast<const char*>(&size), 8);
    out.write(reinterpret_cast<const char*>(&checksum), 8);
    out.write(payload.data(), static_cast<std::streamsize>(payload.size()));
    if (!out) {
      std::remove(tmp.c_str());
      return;
    }
  }
  if (std::rename(tmp.c_str(), Path(key).c_str()) != 0) std::remove(tmp.c_str());
}

void CompileCache::Remove(const std::string& key) const {
  if (enabled()) std::remove(Path(key).c_str());
}

}  // namespace cascade
