#include "pjrt/plugin_locator.h"

#include <sys/stat.h>

#include <cstdlib>

#include "pjrt/errors.h"

namespace cascade {

namespace {
bool IsFile(const std::string& path) {
  struct stat st {};
  return stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}
std::string Env(const char* name) {
  const char* v = std::getenv(name);
  return v ? std::string(v) : std::string();
}
}  // namespace

std::string CacheRoot() {
  if (!Env("CASCADE_CACHE_DIR").empty()) return Env("CASCADE_CACHE_DIR");
  if (!Env("XDG_CACHE_HOME").empty()) return Env("XDG_CACHE_HOME") + "/cascade-xla";
  return (Env("HOME").empty() ? std::string("/tmp") : Env("HOME")) + "/.cache/cascade-xla";
}

std::string LocatePlugin(const std::string& spec) {
  if (spec != "cpu") return spec;
  if (!Env("CASCADE_PJRT_PLUGIN").empty()) return Env("CASCADE_PJRT_PLUGIN");
  const std::string cached = CacheRoot() + "/plugins/xla-cpu-pjrt-0.0.1/xla_cpu_pjrt.so";
  if (IsFile(cached)) return cached;
  throw PluginNotFoundError("no XLA CPU PJRT plugin at " + cached +
                            "; run `npx cascade-xla plugin fetch cpu` (or npm install) or set CASCADE_PJRT_PLUGIN");
}

}  // namespace cascade
