#include "pjrt/errors.h"

namespace cascade {

const char* ErrorKindName(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::kPjrt: return "PjrtError";
    case ErrorKind::kPluginNotFound: return "PluginNotFoundError";
    case ErrorKind::kPluginIncompatible: return "PluginIncompatibleError";
    case ErrorKind::kInvalidArgument: return "InvalidArgumentError";
    case ErrorKind::kDisposed: return "DisposedError";
    case ErrorKind::kModelFormat: return "ModelFormatError";
    case ErrorKind::kAborted: return "AbortError";
    case ErrorKind::kOutOfMemory: return "OutOfMemoryError";
    case ErrorKind::kInternal: return "InternalError";
  }
  return "Error";
}

const char* PjrtErrorCodeName(int code) {
  static const char* const kNames[] = {
      "OK",       "CANCELLED",         "UNKNOWN",        "INVALID_ARGUMENT",   "DEADLINE_EXCEEDED",
      "NOT_FOUND", "ALREADY_EXISTS",   "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
      "ABORTED",  "OUT_OF_RANGE",      "UNIMPLEMENTED",  "INTERNAL",           "UNAVAILABLE",
      "DATA_LOSS", "UNAUTHENTICATED"};
  if (code >= 0 && code < static_cast<int>(sizeof(kNames) / sizeof(kNames[0]))) return kNames[code];
  return "UNKNOWN_CODE";
}

}  // namespace cascade
