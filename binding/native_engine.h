// NativeEngine: a loaded CascadeEngine (cpp/cascade/engine.h) as a JS object: info, generate,
// evaluate, cancel/abort, releaseSequence, dispose. Made by loadEngine (binding/load_engine.cc).
#pragma once

#include <napi.h>

#include <memory>

#include "cascade/engine.h"

namespace cascade::binding {

// Defines the NativeEngine class (once, at addon init).
void DefineNativeEngine(Napi::Env env);
// A NativeEngine object that owns `engine`.
Napi::Object WrapEngine(std::shared_ptr<CascadeEngine> engine);
// Hands the memory of a released model back to the system (glibc's malloc_trim).
void ReleaseFreedMemory();

// The engine, owned so that when its last reference goes, on any thread, ReleaseFreedMemory runs.
std::shared_ptr<CascadeEngine> TrimmedWhenReleased(std::shared_ptr<CascadeEngine> engine);

}  // namespace cascade::binding
