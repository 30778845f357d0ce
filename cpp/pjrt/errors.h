// Typed errors of the core. Every PJRT_Error is turned into a cascade::PjrtError at the boundary;
// everything we reject before the plugin sees it is an InvalidArgumentError.
#pragma once

#include <stdexcept>
#include <string>

namespace cascade {

enum class ErrorKind {
  kPjrt,                // the plugin returned a PJRT_Error (code() holds its PJRT_Error_Code)
  kPluginNotFound,      // no file at the plugin path
  kPluginIncompatible,  // the file is not a PJRT plugin, or its API version is unsupported
  kInvalidArgument,     // rejected before reaching the plugin
  kDisposed,            // use after close/dispose
  kModelFormat,         // a model file is truncated, corrupt or inconsistent
  kAborted,             // cancelled through an abort signal
  kOutOfMemory,         // what would be uploaded does not fit the device's memory (checked before allocating)
  kInternal,
};

const char* ErrorKindName(ErrorKind kind);

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& message, int code = 0)
      : std::runtime_error(message), kind_(kind), code_(code) {}
  ErrorKind kind() const { return kind_; }
  // For kPjrt: the PJRT_Error_Code (absl status code numbering). 0 otherwise.
  int code() const { return code_; }

 private:
  ErrorKind kind_;
  int code_;
};

class PjrtError : public Error {
 public:
  PjrtError(const std::string& message, int code) : Error(ErrorKind::kPjrt, message, code) {}
};

class PluginNotFoundError : public Error {
 public:
  explicit PluginNotFoundError(const std::string& message)
      : Error(ErrorKind::kPluginNotFound, message) {}
};

class PluginIncompatibleError : public Error {
 public:
  explicit PluginIncompatibleError(const std::string& message)
      : Error(ErrorKind::kPluginIncompatible, message) {}
};

class InvalidArgumentError : public Error {
 public:
  explicit InvalidArgumentError(const std::string& message)
      : Error(ErrorKind::kInvalidArgument, message) {}
};

class DisposedError : public Error {
 public:
  explicit DisposedError(const std::string& message) : Error(ErrorKind::kDisposed, message) {}
};

// A model file (GGUF, safetensors, config.json) is truncated, corrupt or inconsistent. The message
// names the file and the tensor or field.
class ModelFormatError : public Error {
 public:
  explicit ModelFormatError(const std::string& message) : Error(ErrorKind::kModelFormat, message) {}
};

// The weights and caches a load would upload do not fit the device's memory. Thrown before
// anything is allocated; the message gives both sizes and where the limit came from.
class OutOfMemoryError : public Error {
 public:
  explicit OutOfMemoryError(const std::string& message) : Error(ErrorKind::kOutOfMemory, message) {}
};

// Names of PJRT_Error_Code values (absl::StatusCode numbering), for messages.
const char* PjrtErrorCodeName(int code);

}  // namespace cascade
