#include "pjrt/api.h"

#include <dlfcn.h>
#include <sys/stat.h>

#include <climits>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>

namespace cascade {

namespace {
std::mutex g_load_mutex;
std::map<std::string, std::shared_ptr<const Api>>& LoadedPlugins() {
  static auto* plugins = new std::map<std::string, std::shared_ptr<const Api>>();
  return *plugins;
}
}  // namespace

Api::Api(std::string path, void* handle, const PJRT_Api* api)
    : path_(std::move(path)), handle_(handle), api_(api) {}

std::shared_ptr<const Api> Api::Load(const std::string& path) {
  if (path.empty()) throw PluginNotFoundError("PJRT plugin path is empty");
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) throw PluginNotFoundError("PJRT plugin not found at " + path);
  if (!S_ISREG(st.st_mode)) throw PluginIncompatibleError(path + " is not a regular file, so not a PJRT plugin");
  char real[PATH_MAX];
  const std::string key = realpath(path.c_str(), real) ? std::string(real) : path;

  std::lock_guard<std::mutex> lock(g_load_mutex);
  auto found = LoadedPlugins().find(key);
  if (found != LoadedPlugins().end()) return found->second;

  // XLA logs INFO lines (e.g. "cpu_device_count set via create_options") to stderr; keep the
  // user's setting if they chose one.
  setenv("TF_CPP_MIN_LOG_LEVEL", "1", /*overwrite=*/0);
  void* handle = dlopen(key.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!handle) {
    const char* why = dlerror();
    throw PluginIncompatibleError(path + " could not be loaded as a shared library (" +
                                  (why ? why : "unknown dlopen error") + "), so it is not a usable PJRT plugin");
  }
  using GetPjrtApiFn = const PJRT_Api* (*)();
  auto get_api = reinterpret_cast<GetPjrtApiFn>(dlsym(handle, "GetPjrtApi"));
  if (!get_api) {
    dlclose(handle);
    throw PluginIncompatibleError(path + " is not a PJRT plugin: it exports no GetPjrtApi symbol");
  }
  const PJRT_Api* raw = get_api();
  if (!raw) throw PluginIncompatibleError(path + ": GetPjrtApi() returned null");
  // The table must at least reach the error functions and the version.
  if (raw->struct_size < offsetof(PJRT_Api, PJRT_Plugin_Initialize))
    throw PluginIncompatibleError(path + ": PJRT_Api struct_size " + std::to_string(raw->struct_size) +
                                  " is too small to be a PJRT API table");
  std::shared_ptr<Api> api(new Api(key, handle, raw));
  api->major_ = raw->pjrt_api_version.major_version;
  api->minor_ = raw->pjrt_api_version.minor_version;
  if (api->major_ != PJRT_API_MAJOR || api->minor_ < kMinPjrtMinorVersion)
    throw PluginIncompatibleError(path + " implements PJRT C API " + std::to_string(api->major_) + "." +
                                  std::to_string(api->minor_) + "; cascade-xla needs " +
                                  std::to_string(PJRT_API_MAJOR) + "." + std::to_string(kMinPjrtMinorVersion) +
                                  " to " + std::to_string(PJRT_API_MAJOR) + "." + std::to_string(PJRT_API_MINOR));
  if (api->HasSlot(offsetof(PJRT_Api, PJRT_Plugin_Initialize))) {
    auto args = CASCADE_PJRT_STRUCT(PJRT_Plugin_Initialize_Args);
    CASCADE_PJRT_CALL(*api, Plugin_Initialize, &args);
  }
  LoadedPlugins()[key] = api;
  return api;
}

bool Api::HasSlot(size_t offset) const {
  if (offset + sizeof(void*) > api_->struct_size) return false;
  void* fn = nullptr;
  memcpy_fn(&fn, offset);
  return fn != nullptr;
}

void Api::memcpy_fn(void* out, size_t offset) const {
  std::memcpy(out, reinterpret_cast<const char*>(api_) + offset, sizeof(void*));
}

void Api::ThrowMissing(const char* name) const {
  throw PluginIncompatibleError(path_ + " (PJRT C API " + std::to_string(major_) + "." + std::to_string(minor_) +
                                ") does not provide " + name);
}

void Api::Check(PJRT_Error* error, const char* call) const {
  if (!error) return;
  auto msg = CASCADE_PJRT_STRUCT(PJRT_Error_Message_Args);
  msg.error = error;
  api_->PJRT_Error_Message(&msg);
  std::string message(msg.message ? msg.message : "", msg.message ? msg.message_size : 0);

  int code = 2;  // UNKNOWN
  auto code_args = CASCADE_PJRT_STRUCT(PJRT_Error_GetCode_Args);
  code_args.error = error;
  if (api_->PJRT_Error_GetCode && !api_->PJRT_Error_GetCode(&code_args)) code = code_args.code;

  auto destroy = CASCADE_PJRT_STRUCT(PJRT_Error_Destroy_Args);
  destroy.error = error;
  api_->PJRT_Error_Destroy(&destroy);
  throw PjrtError(std::string(call) + " failed (" + PjrtErrorCodeName(code) + "): " + message, code);
}

std::vector<std::pair<std::string, std::string>> Api::Attributes() const {
  std::vector<std::pair<std::string, std::string>> out;
  if (!HasSlot(offsetof(PJRT_Api, PJRT_Plugin_Attributes))) return out;
  auto args = CASCADE_PJRT_STRUCT(PJRT_Plugin_Attributes_Args);
  CASCADE_PJRT_CALL(*this, Plugin_Attributes, &args);
  for (size_t i = 0; i < args.num_attributes; ++i) {
    const PJRT_NamedValue& v = args.attributes[i];
    std::string name(v.name, v.name_size), value;
    switch (v.type) {
      case PJRT_NamedValue_kString: value.assign(v.string_value, v.value_size); break;
      case PJRT_NamedValue_kInt64: value = std::to_string(v.int64_value); break;
      case PJRT_NamedValue_kInt64List:
        for (size_t j = 0; j < v.value_size; ++j) value += (j ? "." : "") + std::to_string(v.int64_array_value[j]);
        break;
      case PJRT_NamedValue_kFloat: value = std::to_string(v.float_value); break;
      case PJRT_NamedValue_kBool: value = v.bool_value ? "true" : "false"; break;
      default: value = "?";
    }
    out.emplace_back(std::move(name), std::move(value));
  }
  return out;
}

std::vector<PJRT_Extension_Type> Api::Extensions() const {
  std::vector<PJRT_Extension_Type> out;
  for (const PJRT_Extension_Base* e = api_->extension_start; e && out.size() < 64; e = e->next) out.push_back(e->type);
  return out;
}

const PJRT_Extension_Base* Api::FindExtension(PJRT_Extension_Type type) const {
  int guard = 0;
  for (const PJRT_Extension_Base* e = api_->extension_start; e && guard < 64; e = e->next, ++guard)
    if (e->type == type) return e;
  return nullptr;
}

std::string ExtensionTypeName(PJRT_Extension_Type type) {
  switch (type) {
    case PJRT_Extension_Type_Gpu_Custom_Call: return "gpu_custom_call";
    case PJRT_Extension_Type_Profiler: return "profiler";
    case PJRT_Extension_Type_Custom_Partitioner: return "custom_partitioner";
    case PJRT_Extension_Type_Stream: return "stream";
    case PJRT_Extension_Type_Layouts: return "layouts";
    case PJRT_Extension_Type_FFI: return "ffi";
    case PJRT_Extension_Type_MemoryDescriptions: return "memory_descriptions";
    case PJRT_Extension_Type_Triton: return "triton";
    case PJRT_Extension_Type_RawBuffer: return "raw_buffer";
    case PJRT_Extension_Type_PhaseCompile: return "phase_compile";
    case PJRT_Extension_Type_Example: return "example";
    case PJRT_Extension_Type_CrossHostTransfers: return "cross_host_transfers";
    case PJRT_Extension_Type_ExecutableMetadata: return "executable_metadata";
    case PJRT_Extension_Type_Callback: return "callback";
    case PJRT_Extension_Type_HostAllocator: return "host_allocator";
    case PJRT_Extension_Type_TpuTopology: return "tpu_topology";
    case PJRT_Extension_Type_TpuExecutable: return "tpu_executable";
    case PJRT_Extension_Type_Megascale: return "megascale";
    default: return "extension_" + std::to_string(static_cast<int>(type));
  }
}

}  // namespace cascade
