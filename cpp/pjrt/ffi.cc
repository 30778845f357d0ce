#include "pjrt/ffi.h"

#include <cstddef>

#include "xla/pjrt/c/pjrt_c_api_ffi_extension.h"

namespace cascade {
namespace {

const PJRT_FFI_Extension* FfiExtension(const Api& api) {
  const PJRT_Extension_Base* base = api.FindExtension(PJRT_Extension_Type_FFI);
  if (!base) return nullptr;
  // An older plugin's extension struct may end before register_handler.
  if (base->struct_size < offsetof(PJRT_FFI_Extension, register_handler) + sizeof(void*)) return nullptr;
  const auto* ext = reinterpret_cast<const PJRT_FFI_Extension*>(base);
  return ext->register_handler ? ext : nullptr;
}

}  // namespace

bool HasFfiHandlerRegistration(const Api& api) { return FfiExtension(api) != nullptr; }

void RegisterFfiHandler(const Api& api, const std::string& target, const std::string& platform, void* handler) {
  const PJRT_FFI_Extension* ext = FfiExtension(api);
  if (!ext)
    throw PluginIncompatibleError(api.path() + " has no PJRT FFI extension with register_handler, so custom call " +
                                  target + " cannot be registered");
  if (!handler) throw InvalidArgumentError("RegisterFfiHandler: null handler for " + target);
  auto args = CASCADE_PJRT_STRUCT(PJRT_FFI_Register_Handler_Args);
  args.target_name = target.data();
  args.target_name_size = target.size();
  args.handler = handler;
  args.platform_name = platform.data();
  args.platform_name_size = platform.size();
  args.traits = static_cast<PJRT_FFI_Handler_TraitsBits>(0);
  api.Check(ext->register_handler(&args), "PJRT_FFI_Register_Handler");
}

}  // namespace cascade
