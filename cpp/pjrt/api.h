// The loaded PJRT plugin: one owner for the dlopen handle and the PJRT_Api table.
//
// Every call into the plugin goes through CASCADE_PJRT_CALL, which checks that the plugin's
// PJRT_Api struct is large enough to hold the function slot and that the slot is non-null
// (a plugin built against an older header has a shorter table), then turns a returned
// PJRT_Error into a cascade::PjrtError. We compile against API 0.90 and accept plugins >= 0.57.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "pjrt/errors.h"
#include "xla/pjrt/c/pjrt_c_api.h"

namespace cascade {

constexpr int kMinPjrtMinorVersion = 57;

class Api {
 public:
  // Loads (once per process and real path) the plugin at `path`, checks its API version and
  // initialises it. Plugins are never unloaded: XLA plugins do not support dlclose.
  static std::shared_ptr<const Api> Load(const std::string& path);

  const PJRT_Api* raw() const { return api_; }
  const std::string& path() const { return path_; }
  int major_version() const { return major_; }
  int minor_version() const { return minor_; }

  // True if the plugin's PJRT_Api table covers the slot at `offset` and the slot is set.
  bool HasSlot(size_t offset) const;

  // Returns the function in the slot, or throws PluginIncompatibleError naming it.
  template <typename Fn>
  Fn* Function(size_t offset, const char* name) const {
    if (!HasSlot(offset)) ThrowMissing(name);
    Fn* fn;
    memcpy_fn(&fn, offset);
    return fn;
  }

  // Converts a PJRT_Error into PjrtError (destroying it); no-op on nullptr.
  void Check(PJRT_Error* error, const char* call) const;

  // Plugin attributes (xla_version, stablehlo_current_version, ...) rendered as strings.
  std::vector<std::pair<std::string, std::string>> Attributes() const;
  // The extension types chained from PJRT_Api::extension_start.
  std::vector<PJRT_Extension_Type> Extensions() const;
  const PJRT_Extension_Base* FindExtension(PJRT_Extension_Type type) const;

 private:
  Api(std::string path, void* handle, const PJRT_Api* api);
  [[noreturn]] void ThrowMissing(const char* name) const;
  void memcpy_fn(void* out, size_t offset) const;

  std::string path_;
  // The dlopen handle. Never closed: a loaded plugin stays for the process's life (its threads
  // and static state outlive any client; LoadedPlugins in api.cc shares it between clients).
  [[maybe_unused]] void* handle_;
  const PJRT_Api* api_;
  int major_ = 0;
  int minor_ = 0;
};

std::string ExtensionTypeName(PJRT_Extension_Type type);

// A PJRT argument struct, zero-initialised, with struct_size set (through CASCADE_PJRT_STRUCT):
// the one place that fills it, as zml's pjrtStruct does.
template <typename T>
T PjrtStruct(size_t struct_size) {
  T value{};
  value.struct_size = struct_size;
  return value;
}

}  // namespace cascade

// CASCADE_PJRT_STRUCT(PJRT_Client_Create_Args): the struct with its header's *_STRUCT_SIZE.
#define CASCADE_PJRT_STRUCT(type) ::cascade::PjrtStruct<type>(type##_STRUCT_SIZE)

#define CASCADE_PJRT_FN(api, name) \
  (api).Function<PJRT_##name>(offsetof(PJRT_Api, PJRT_##name), "PJRT_" #name)
#define CASCADE_PJRT_CALL(api, name, args) \
  (api).Check(CASCADE_PJRT_FN(api, name)(args), "PJRT_" #name)
