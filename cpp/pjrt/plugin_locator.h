// Where plugins live on disk when nobody names a path. The TypeScript resolver (src/plugin/)
// also downloads into this cache; the C++ side (driver, C++ tests) only looks.
//   cache root: $CASCADE_CACHE_DIR, else $XDG_CACHE_HOME/cascade-xla, else ~/.cache/cascade-xla
//   CPU plugin: <root>/plugins/xla-cpu-pjrt-0.0.1/xla_cpu_pjrt.so
#pragma once

#include <string>

namespace cascade {

std::string CacheRoot();
// 'cpu' -> $CASCADE_PJRT_PLUGIN or the cached CPU plugin; anything else is returned as a path.
// Throws PluginNotFoundError with what to do when nothing is found.
std::string LocatePlugin(const std::string& spec);

}  // namespace cascade
