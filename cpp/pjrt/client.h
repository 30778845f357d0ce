// PJRT client, devices, memories, buffers and loaded executables, each with one owner type.
//
// Ownership: Buffer and LoadedExecutable hold a shared_ptr to their Client, so the client is
// destroyed last, whatever order callers drop their handles in (PJRT requires events, then
// buffers, then executables, then the client). Devices and memories are views owned by the client.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "pjrt/api.h"
#include "pjrt/compile_cache.h"
#include "pjrt/dtype.h"
#include "pjrt/program_signature.h"

namespace cascade {

class Client;

struct MemoryInfo {
  PJRT_Memory* raw = nullptr;
  int id = 0;
  std::string kind;  // "device", "pinned_host", "unpinned_host", ...
  bool is_default = false;
};

struct DeviceInfo {
  PJRT_Device* raw = nullptr;
  int id = 0;                 // global device id
  int local_hardware_id = -1;
  std::string kind;           // e.g. "cpu", "NVIDIA H200"
  std::string description;    // ToString of the device description
  std::vector<MemoryInfo> memories;
};

struct MemoryStats {
  int64_t bytes_in_use = 0;
  std::optional<int64_t> peak_bytes_in_use;
  std::optional<int64_t> bytes_limit;
};

struct ClientOptions {
  // For the XLA CPU plugin: the number of CPU devices ("cpu_device_count"). Unset: plugin default.
  // Other plugins reject unknown create options, so only set this for CPU plugins.
  std::optional<int64_t> cpu_device_count;
  // Where compiled executables are kept between processes (see compile_cache.h).
  CompileCache compile_cache = CompileCache::FromEnvironment();
};

struct CompileOptions {
  int replicas = 1;  // pmap-style: one replica per device, devices 0..replicas-1
};

// Serialises xla.CompileOptionsProto for `replicas` replicas and one partition (see .cc).
std::string EncodeCompileOptions(int replicas, int partitions);

// A device-resident array.
class Buffer {
 public:
  Buffer(std::shared_ptr<Client> client, PJRT_Buffer* buffer, size_t device_index);
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer();

  DType dtype() const { return dtype_; }
  const std::vector<int64_t>& dims() const { return dims_; }
  size_t device_index() const { return device_index_; }
  PJRT_Buffer* raw() const { return buffer_; }
  size_t byte_size() const { return static_cast<size_t>(ElementCount(dims_)) * DTypeSize(dtype_); }

  // Copies the array to host memory as a dense row-major tensor (blocks until done).
  HostTensor ToHost() const;
  // Marks this buffer as consumed (donated to an execution): the destructor then skips the
  // device memory (already deleted by the runtime) but still destroys the handle.
  void MarkDonated() { donated_ = true; }
  bool donated() const { return donated_; }

  // The buffer's bytes when the plugin keeps it in host memory, dense and row-major (client.cc);
  // nullptr otherwise. (The CPU plugin: what ToHost copies, and where util/huge_pages.h collapses.)
  const void* ReadableHostData() const;

 private:
  std::shared_ptr<Client> client_;
  PJRT_Buffer* buffer_;
  size_t device_index_;
  DType dtype_ = DType::kF32;
  std::vector<int64_t> dims_;
  bool donated_ = false;
};

class LoadedExecutable {
 public:
  LoadedExecutable(std::shared_ptr<Client> client, PJRT_LoadedExecutable* exe, ProgramSignature signature,
                   int replicas);
  LoadedExecutable(const LoadedExecutable&) = delete;
  LoadedExecutable& operator=(const LoadedExecutable&) = delete;
  ~LoadedExecutable();

  const ProgramSignature& signature() const { return signature_; }
  int replicas() const { return replicas_; }
  size_t num_outputs() const { return num_outputs_; }
  // Indices (into Client::devices()) of the devices this executable runs on, in replica order.
  const std::vector<size_t>& device_indices() const { return device_indices_; }

  // Runs on every device: args[d] are device d's arguments (on that device). Validates count,
  // dtype, shape and placement first. Donated (aliased) inputs are marked donated afterwards.
  std::vector<std::vector<std::unique_ptr<Buffer>>> Execute(const std::vector<std::vector<Buffer*>>& args);

  // Convenience: uploads host tensors, runs, and copies every output back.
  std::vector<std::vector<HostTensor>> ExecuteHost(const std::vector<std::vector<HostTensor>>& args);

 private:
  void ValidateArguments(const std::vector<std::vector<Buffer*>>& args) const;

  std::shared_ptr<Client> client_;
  PJRT_LoadedExecutable* exe_;
  ProgramSignature signature_;
  int replicas_;
  size_t num_outputs_ = 0;
  std::vector<size_t> device_indices_;
};

class Client : public std::enable_shared_from_this<Client> {
 public:
  static std::shared_ptr<Client> Create(std::shared_ptr<const Api> api, const ClientOptions& options);
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;
  ~Client();

  const Api& api() const { return *api_; }
  std::shared_ptr<const Api> api_ptr() const { return api_; }
  PJRT_Client* raw() const { return client_; }
  const std::string& platform_name() const { return platform_name_; }
  const std::string& platform_version() const { return platform_version_; }
  // Addressable devices, in the plugin's order.
  const std::vector<DeviceInfo>& devices() const { return devices_; }
  size_t DeviceIndex(PJRT_Device* device) const;  // throws if unknown
  std::optional<MemoryStats> DeviceMemoryStats(size_t device_index) const;
  // Bytes a load may still place on the device, and where that figure comes from: the plugin's
  // bytes_limit - bytes_in_use when it reports them; on the CPU plugin (no memory stats; its
  // device memory is host memory) MemAvailable from /proc/meminfo. nullopt when neither is known.
  struct AvailableMemory {
    int64_t bytes = 0;
    std::string source;  // "PJRT memory stats of device N" or "MemAvailable in /proc/meminfo"
  };
  std::optional<AvailableMemory> AvailableDeviceMemory(size_t device_index) const;

  // Compiles StableHLO text ("mlir" format) for `options.replicas` devices.
  std::shared_ptr<LoadedExecutable> Compile(const std::string& stablehlo, const CompileOptions& options);

  // Copies a host tensor to device `device_index` and waits until the copy is done.
  std::unique_ptr<Buffer> ToDevice(const HostTensor& tensor, size_t device_index);

 private:
  Client(std::shared_ptr<const Api> api, PJRT_Client* client);
  void ReadDevices();

  // Compiles (or loads from the compile cache) and returns the raw executable.
  PJRT_LoadedExecutable* CompileOrLoad(const std::string& stablehlo, const std::string& compile_options);

  std::shared_ptr<const Api> api_;
  PJRT_Client* client_;
  CompileCache compile_cache_;
  std::string platform_name_;
  std::string platform_version_;
  std::vector<DeviceInfo> devices_;
};

}  // namespace cascade
