// The PJRT FFI extension (xla/pjrt/c/pjrt_c_api_ffi_extension.h): registering typed XLA FFI
// handlers (custom call targets) with a loaded plugin.
#pragma once

#include <string>

#include "pjrt/api.h"

namespace cascade {

// True when the plugin chains an FFI extension large enough to hold register_handler and the
// slot is set.
bool HasFfiHandlerRegistration(const Api& api);

// Registers `handler` (an XLA_FFI_Handler*) as custom call target `target` for `platform` (XLA
// canonicalises it: "Host" and "cpu" both mean the CPU backend). Must happen before a program
// calling the target is compiled. Throws PluginIncompatibleError when the plugin has no usable
// FFI extension, PjrtError when the plugin refuses.
void RegisterFfiHandler(const Api& api, const std::string& target, const std::string& platform, void* handler);

}  // namespace cascade
