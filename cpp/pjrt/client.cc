#include "pjrt/client.h"

#include <algorithm>
#include <cstring>
#include <fstream>
#include <numeric>
#include <sstream>

#include "pjrt/event.h"

namespace cascade {

namespace {

std::string View(const char* data, size_t size) { return data ? std::string(data, size) : std::string(); }

void AppendVarint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}

}  // namespace

// xla.CompileOptionsProto, hand-encoded (protobuf wire format), because PJRT_Client_Compile wants
// it serialised and empty options abort the plugin (a CHECK in the device assignment):
//   CompileOptionsProto.executable_build_options (field 3, length-delimited: tag 0x1a, length)
//     ExecutableBuildOptionsProto.num_replicas   (field 4, varint: tag 0x20, value)
//     ExecutableBuildOptionsProto.num_partitions (field 5, varint: tag 0x28, value)
// One device: 1a 04 20 01 28 01. Four replicas (pmap style): 1a 04 20 04 28 01.
std::string EncodeCompileOptions(int replicas, int partitions) {
  std::string build;
  build.push_back(0x20);
  AppendVarint(build, static_cast<uint64_t>(replicas));
  build.push_back(0x28);
  AppendVarint(build, static_cast<uint64_t>(partitions));
  std::string out;
  out.push_back(0x1a);
  AppendVarint(out, build.size());
  return out + build;
}

// ---------------------------------------------------------------------------------------------
// Client

Client::Client(std::shared_ptr<const Api> api, PJRT_Client* client) : api_(std::move(api)), client_(client) {}

std::shared_ptr<Client> Client::Create(std::shared_ptr<const Api> api, const ClientOptions& options) {
  std::vector<PJRT_NamedValue> values;
  static const char kCpuDeviceCount[] = "cpu_device_count";
  if (options.cpu_device_count) {
    if (*options.cpu_device_count < 1 || *options.cpu_device_count > 1024)
      throw InvalidArgumentError("cpu_device_count must be in 1..1024, got " +
                                 std::to_string(*options.cpu_device_count));
    auto v = CASCADE_PJRT_STRUCT(PJRT_NamedValue);
    v.name = kCpuDeviceCount;
    v.name_size = sizeof(kCpuDeviceCount) - 1;
    v.type = PJRT_NamedValue_kInt64;
    v.int64_value = *options.cpu_device_count;
    v.value_size = 1;
    values.push_back(v);
  }
  auto args = CASCADE_PJRT_STRUCT(PJRT_Client_Create_Args);
  args.create_options = values.data();
  args.num_options = values.size();
  CASCADE_PJRT_CALL(*api, Client_Create, &args);
  std::shared_ptr<Client> client(new Client(api, args.client));
  client->compile_cache_ = options.compile_cache;

  auto name = CASCADE_PJRT_STRUCT(PJRT_Client_PlatformName_Args);
  name.client = client->client_;
  CASCADE_PJRT_CALL(*api, Client_PlatformName, &name);
  client->platform_name_ = View(name.platform_name, name.platform_name_size);

  auto version = CASCADE_PJRT_STRUCT(PJRT_Client_PlatformVersion_Args);
  version.client = client->client_;
  CASCADE_PJRT_CALL(*api, Client_PlatformVersion, &version);
  client->platform_version_ = View(version.platform_version, version.platform_version_size);

  client->ReadDevices();
  return client;
}

Client::~Client() {
  auto args = CASCADE_PJRT_STRUCT(PJRT_Client_Destroy_Args);
  args.client = client_;
  try {
    CASCADE_PJRT_CALL(*api_, Client_Destroy, &args);
  } catch (const Error&) {
    // Nothing sensible to do in a destructor; the process keeps running.
  }
}

void Client::ReadDevices() {
  const Api& api = *api_;
  auto list = CASCADE_PJRT_STRUCT(PJRT_Client_AddressableDevices_Args);
  list.client = client_;
  CASCADE_PJRT_CALL(api, Client_AddressableDevices, &list);
  for (size_t i = 0; i < list.num_addressable_devices; ++i) {
    DeviceInfo info;
    info.raw = list.addressable_devices[i];

    auto desc = CASCADE_PJRT_STRUCT(PJRT_Device_GetDescription_Args);
    desc.device = info.raw;
    CASCADE_PJRT_CALL(api, Device_GetDescription, &desc);

    auto id = CASCADE_PJRT_STRUCT(PJRT_DeviceDescription_Id_Args);
    id.device_description = desc.device_description;
    CASCADE_PJRT_CALL(api, DeviceDescription_Id, &id);
    info.id = id.id;

    auto kind = CASCADE_PJRT_STRUCT(PJRT_DeviceDescription_Kind_Args);
    kind.device_description = desc.device_description;
    CASCADE_PJRT_CALL(api, DeviceDescription_Kind, &kind);
    info.kind = View(kind.device_kind, kind.device_kind_size);

    auto str = CASCADE_PJRT_STRUCT(PJRT_DeviceDescription_ToString_Args);
    str.device_description = desc.device_description;
    CASCADE_PJRT_CALL(api, DeviceDescription_ToString, &str);
    info.description = View(str.to_string, str.to_string_size);

    if (api.HasSlot(offsetof(PJRT_Api, PJRT_Device_LocalHardwareId))) {
      auto hw = CASCADE_PJRT_STRUCT(PJRT_Device_LocalHardwareId_Args);
      hw.device = info.raw;
      CASCADE_PJRT_CALL(api, Device_LocalHardwareId, &hw);
      info.local_hardware_id = hw.local_hardware_id;
    }

    PJRT_Memory* default_memory = nullptr;
    if (api.HasSlot(offsetof(PJRT_Api, PJRT_Device_DefaultMemory))) {
      auto def = CASCADE_PJRT_STRUCT(PJRT_Device_DefaultMemory_Args);
      def.device = info.raw;
      try {
        CASCADE_PJRT_CALL(api, Device_DefaultMemory, &def);
        default_memory = def.memory;
      } catch (const PjrtError&) {
        // Some plugins do not implement memories; the device is still usable.
      }
    }
    if (api.HasSlot(offsetof(PJRT_Api, PJRT_Device_AddressableMemories))) {
      auto mems = CASCADE_PJRT_STRUCT(PJRT_Device_AddressableMemories_Args);
      mems.device = info.raw;
      try {
        CASCADE_PJRT_CALL(api, Device_AddressableMemories, &mems);
      } catch (const PjrtError&) {
        mems.num_memories = 0;
      }
      for (size_t m = 0; m < mems.num_memories; ++m) {
        MemoryInfo mem;
        mem.raw = mems.memories[m];
        auto mk = CASCADE_PJRT_STRUCT(PJRT_Memory_Kind_Args);
        mk.memory = mem.raw;
        CASCADE_PJRT_CALL(api, Memory_Kind, &mk);
        mem.kind = View(mk.kind, mk.kind_size);
        auto mid = CASCADE_PJRT_STRUCT(PJRT_Memory_Id_Args);
        mid.memory = mem.raw;
        CASCADE_PJRT_CALL(api, Memory_Id, &mid);
        mem.id = mid.id;
        mem.is_default = mem.raw == default_memory;
        info.memories.push_back(std::move(mem));
      }
    }
    devices_.push_back(std::move(info));
  }
  if (devices_.empty()) throw PjrtError("the PJRT client has no addressable devices", 5);
}

size_t Client::DeviceIndex(PJRT_Device* device) const {
  for (size_t i = 0; i < devices_.size(); ++i)
    if (devices_[i].raw == device) return i;
  throw Error(ErrorKind::kInternal, "the plugin returned a device that is not addressable by this client");
}

std::optional<MemoryStats> Client::DeviceMemoryStats(size_t device_index) const {
  if (device_index >= devices_.size()) throw InvalidArgumentError("no device " + std::to_string(device_index));
  if (!api_->HasSlot(offsetof(PJRT_Api, PJRT_Device_MemoryStats))) return std::nullopt;
  auto args = CASCADE_PJRT_STRUCT(PJRT_Device_MemoryStats_Args);
  args.device = devices_[device_index].raw;
  try {
    CASCADE_PJRT_CALL(*api_, Device_MemoryStats, &args);
  } catch (const PjrtError&) {
    return std::nullopt;  // UNIMPLEMENTED on the CPU plugin
  }
  MemoryStats stats;
  stats.bytes_in_use = args.bytes_in_use;
  if (args.peak_bytes_in_use_is_set) stats.peak_bytes_in_use = args.peak_bytes_in_use;
  if (args.bytes_limit_is_set) stats.bytes_limit = args.bytes_limit;
  return stats;
}

std::optional<Client::AvailableMemory> Client::AvailableDeviceMemory(size_t device_index) const {
  auto stats = DeviceMemoryStats(device_index);
  if (stats && stats->bytes_limit)
    return AvailableMemory{std::max<int64_t>(0, *stats->bytes_limit - stats->bytes_in_use),
                           "PJRT memory stats of device " + std::to_string(device_index)};
  if (platform_name_ != "cpu") return std::nullopt;
  std::ifstream meminfo("/proc/meminfo");
  std::string line;
  while (std::getline(meminfo, line)) {
    std::istringstream fields(line);
    std::string key;
    int64_t kib = 0;
    if (fields >> key >> kib && key == "MemAvailable:") return AvailableMemory{kib * 1024, "MemAvailable in /proc/meminfo"};
  }
  return std::nullopt;
}

std::shared_ptr<LoadedExecutable> Client::Compile(const std::string& stablehlo, const CompileOptions& options) {
  if (stablehlo.find_first_not_of(" \t\r\n") == std::string::npos)
    throw InvalidArgumentError("compile: the StableHLO program text is empty");
  if (options.replicas < 1 || static_cast<size_t>(options.replicas) > devices_.size())
    throw InvalidArgumentError("compile: replicas must be in 1.." + std::to_string(devices_.size()) +
                               " (the client's devices), got " + std::to_string(options.replicas));
  CheckProgramText(stablehlo);  // nesting the plugin's parser cannot take (it crashes)
  // Read @main's signature before compiling: if the text has none, the compiler explains why.
  std::optional<ProgramSignature> signature = ParseMainSignature(stablehlo);

  const std::string compile_options = EncodeCompileOptions(options.replicas, 1);
  auto exe = std::make_shared<LoadedExecutable>(shared_from_this(), CompileOrLoad(stablehlo, compile_options),
                                                signature ? *signature : ProgramSignature{}, options.replicas);
  if (!signature)
    throw InvalidArgumentError("compile: the program compiled but has no func.func @main whose signature "
                               "cascade-xla can read, so its arguments cannot be checked");
  if (exe->num_outputs() != signature->results.size())
    throw Error(ErrorKind::kInternal, "compile: @main declares " + std::to_string(signature->results.size()) +
                                          " results but the executable has " + std::to_string(exe->num_outputs()));
  return exe;
}

PJRT_LoadedExecutable* Client::CompileOrLoad(const std::string& stablehlo, const std::string& compile_options) {
  const Api& api = *api_;
  const bool cacheable = compile_cache_.enabled() && api.HasSlot(offsetof(PJRT_Api, PJRT_Executable_Serialize)) &&
                         api.HasSlot(offsetof(PJRT_Api, PJRT_Executable_DeserializeAndLoad));
  std::string key;
  if (cacheable) {
    key = CompileCache::Key(stablehlo, compile_options, api.path(), platform_version_, devices_.size());
    if (auto payload = compile_cache_.Load(key)) {
      auto load = CASCADE_PJRT_STRUCT(PJRT_Executable_DeserializeAndLoad_Args);
      load.client = client_;
      load.serialized_executable = payload->data();
      load.serialized_executable_size = payload->size();
      try {
        CASCADE_PJRT_CALL(api, Executable_DeserializeAndLoad, &load);
        return load.loaded_executable;
      } catch (const PjrtError&) {
        compile_cache_.Remove(key);  // stale (e.g. another plugin build): compile afresh
      }
    }
  }

  static const char kFormat[] = "mlir";
  std::string code = stablehlo;
  auto program = CASCADE_PJRT_STRUCT(PJRT_Program);
  program.code = code.data();
  program.code_size = code.size();
  program.format = kFormat;
  program.format_size = sizeof(kFormat) - 1;
  auto args = CASCADE_PJRT_STRUCT(PJRT_Client_Compile_Args);
  args.client = client_;
  args.program = &program;
  args.compile_options = compile_options.data();
  args.compile_options_size = compile_options.size();
  CASCADE_PJRT_CALL(api, Client_Compile, &args);

  if (cacheable) {
    auto get = CASCADE_PJRT_STRUCT(PJRT_LoadedExecutable_GetExecutable_Args);
    get.loaded_executable = args.executable;
    try {
      CASCADE_PJRT_CALL(api, LoadedExecutable_GetExecutable, &get);
      auto ser = CASCADE_PJRT_STRUCT(PJRT_Executable_Serialize_Args);
      ser.executable = get.executable;
      PJRT_Error* error = CASCADE_PJRT_FN(api, Executable_Serialize)(&ser);
      if (!error) {
        compile_cache_.Store(key, std::string(ser.serialized_bytes, ser.serialized_bytes_size));
        if (ser.serialized_executable_deleter) ser.serialized_executable_deleter(ser.serialized_executable);
      }
      auto destroy = CASCADE_PJRT_STRUCT(PJRT_Executable_Destroy_Args);
      destroy.executable = get.executable;
      api.raw()->PJRT_Executable_Destroy(&destroy);
      api.Check(error, "PJRT_Executable_Serialize");
    } catch (const PjrtError&) {
      // Not serialisable on this plugin: the executable still works, it just is not cached.
    }
  }
  return args.executable;
}

std::unique_ptr<Buffer> Client::ToDevice(const HostTensor& tensor, size_t device_index) {
  if (device_index >= devices_.size())
    throw InvalidArgumentError("no device " + std::to_string(device_index) + " (the client has " +
                               std::to_string(devices_.size()) + ")");
  const size_t expected = static_cast<size_t>(ElementCount(tensor.dims)) * DTypeSize(tensor.dtype);
  if (tensor.data.size() != expected)
    throw InvalidArgumentError("tensor " + ShapeString(tensor.dtype, tensor.dims) + " needs " +
                               std::to_string(expected) + " bytes, got " + std::to_string(tensor.data.size()));
  auto args = CASCADE_PJRT_STRUCT(PJRT_Client_BufferFromHostBuffer_Args);
  args.client = client_;
  args.data = tensor.data.data();
  args.type = ToPjrt(tensor.dtype);
  args.dims = tensor.dims.data();
  args.num_dims = tensor.dims.size();
  args.byte_strides = nullptr;  // dense, row-major
  args.host_buffer_semantics = PJRT_HostBufferSemantics_kImmutableUntilTransferCompletes;
  args.device = devices_[device_index].raw;
  CASCADE_PJRT_CALL(*api_, Client_BufferFromHostBuffer, &args);
  auto buffer = std::make_unique<Buffer>(shared_from_this(), args.buffer, device_index);
  Event(api_, args.done_with_host_buffer).Await("host-to-device transfer");
  return buffer;
}

// ---------------------------------------------------------------------------------------------
// Buffer

Buffer::Buffer(std::shared_ptr<Client> client, PJRT_Buffer* buffer, size_t device_index)
    : client_(std::move(client)), buffer_(buffer), device_index_(device_index) {
  const Api& api = client_->api();
  try {
    auto type = CASCADE_PJRT_STRUCT(PJRT_Buffer_ElementType_Args);
    type.buffer = buffer_;
    CASCADE_PJRT_CALL(api, Buffer_ElementType, &type);
    auto dtype = FromPjrt(type.type);
    if (!dtype)
      throw InvalidArgumentError("buffer has PJRT element type " + std::to_string(type.type) +
                                 ", which cascade-xla does not move to the host");
    dtype_ = *dtype;
    auto dims = CASCADE_PJRT_STRUCT(PJRT_Buffer_Dimensions_Args);
    dims.buffer = buffer_;
    CASCADE_PJRT_CALL(api, Buffer_Dimensions, &dims);
    dims_.assign(dims.dims, dims.dims + dims.num_dims);
  } catch (...) {
    auto d = CASCADE_PJRT_STRUCT(PJRT_Buffer_Destroy_Args);
    d.buffer = buffer_;
    client_->api().raw()->PJRT_Buffer_Destroy(&d);
    throw;
  }
}

Buffer::~Buffer() {
  auto args = CASCADE_PJRT_STRUCT(PJRT_Buffer_Destroy_Args);
  args.buffer = buffer_;
  try {
    CASCADE_PJRT_CALL(client_->api(), Buffer_Destroy, &args);
  } catch (const Error&) {
  }
}

// On the CPU plugin a ready buffer in dense row-major layout already is host memory: copying it
// directly saves the plugin's asynchronous device-to-host transfer and its thread hand-offs
// (~0.1 ms per output, several outputs per decode step). nullptr: take the general path.
const void* Buffer::ReadableHostData() const try {
  const Api& api = client_->api();
  auto on_cpu = CASCADE_PJRT_STRUCT(PJRT_Buffer_IsOnCpu_Args);
  on_cpu.buffer = buffer_;
  CASCADE_PJRT_CALL(api, Buffer_IsOnCpu, &on_cpu);
  if (!on_cpu.is_on_cpu) return nullptr;
  auto layout = CASCADE_PJRT_STRUCT(PJRT_Buffer_GetMemoryLayout_Args);
  layout.buffer = buffer_;
  CASCADE_PJRT_CALL(api, Buffer_GetMemoryLayout, &layout);
  if (layout.layout.type != PJRT_Buffer_MemoryLayout_Type_Tiled || layout.layout.tiled.num_tiles != 0 ||
      layout.layout.tiled.minor_to_major_size != dims_.size())
    return nullptr;
  for (size_t i = 0; i < dims_.size(); ++i)
    if (layout.layout.tiled.minor_to_major[i] != static_cast<int64_t>(dims_.size() - 1 - i)) return nullptr;
  auto size = CASCADE_PJRT_STRUCT(PJRT_Buffer_OnDeviceSizeInBytes_Args);
  size.buffer = buffer_;
  CASCADE_PJRT_CALL(api, Buffer_OnDeviceSizeInBytes, &size);
  if (size.on_device_size_in_bytes != byte_size()) return nullptr;
  auto ready = CASCADE_PJRT_STRUCT(PJRT_Buffer_ReadyEvent_Args);
  ready.buffer = buffer_;
  CASCADE_PJRT_CALL(api, Buffer_ReadyEvent, &ready);
  Event(client_->api_ptr(), ready.event).Await("buffer ready");
  auto pointer = CASCADE_PJRT_STRUCT(PJRT_Buffer_UnsafePointer_Args);
  pointer.buffer = buffer_;
  CASCADE_PJRT_CALL(api, Buffer_UnsafePointer, &pointer);
  return reinterpret_cast<const void*>(pointer.buffer_pointer);
} catch (const std::exception&) {
  return nullptr;  // a plugin without these calls, or a failed buffer: the general path reports it
}

HostTensor Buffer::ToHost() const {
  if (donated_) throw InvalidArgumentError("buffer was donated to an execution and no longer holds data");
  HostTensor out(dtype_, dims_);
  if (out.data.empty()) return out;
  if (const void* data = ReadableHostData()) {
    std::memcpy(out.data.data(), data, out.data.size());
    return out;
  }
  // Ask for a dense row-major host layout whatever the device layout is.
  std::vector<int64_t> minor_to_major(dims_.size());
  for (size_t i = 0; i < dims_.size(); ++i) minor_to_major[i] = static_cast<int64_t>(dims_.size() - 1 - i);
  auto layout = CASCADE_PJRT_STRUCT(PJRT_Buffer_MemoryLayout);
  layout.type = PJRT_Buffer_MemoryLayout_Type_Tiled;
  layout.tiled = CASCADE_PJRT_STRUCT(PJRT_Buffer_MemoryLayout_Tiled);
  layout.tiled.minor_to_major = minor_to_major.data();
  layout.tiled.minor_to_major_size = minor_to_major.size();

  auto args = CASCADE_PJRT_STRUCT(PJRT_Buffer_ToHostBuffer_Args);
  args.src = buffer_;
  args.host_layout = &layout;
  args.dst = nullptr;  // first ask for the size
  CASCADE_PJRT_CALL(client_->api(), Buffer_ToHostBuffer, &args);
  if (args.dst_size != out.data.size())
    throw Error(ErrorKind::kInternal, "device-to-host copy of " + ShapeString(dtype_, dims_) + " needs " +
                                          std::to_string(args.dst_size) + " bytes, expected " +
                                          std::to_string(out.data.size()));
  args.dst = out.data.data();
  args.dst_size = out.data.size();
  args.event = nullptr;
  CASCADE_PJRT_CALL(client_->api(), Buffer_ToHostBuffer, &args);
  Event(client_->api_ptr(), args.event).Await("device-to-host transfer");
  return out;
}

// ---------------------------------------------------------------------------------------------
// LoadedExecutable

LoadedExecutable::LoadedExecutable(std::shared_ptr<Client> client, PJRT_LoadedExecutable* exe,
                                   ProgramSignature signature, int replicas)
    : client_(std::move(client)), exe_(exe), signature_(std::move(signature)), replicas_(replicas) {
  const Api& api = client_->api();
  auto devs = CASCADE_PJRT_STRUCT(PJRT_LoadedExecutable_AddressableDevices_Args);
  devs.executable = exe_;
  CASCADE_PJRT_CALL(api, LoadedExecutable_AddressableDevices, &devs);
  for (size_t i = 0; i < devs.num_addressable_devices; ++i)
    device_indices_.push_back(client_->DeviceIndex(devs.addressable_devices[i]));

  auto get = CASCADE_PJRT_STRUCT(PJRT_LoadedExecutable_GetExecutable_Args);
  get.loaded_executable = exe_;
  CASCADE_PJRT_CALL(api, LoadedExecutable_GetExecutable, &get);
  auto outs = CASCADE_PJRT_STRUCT(PJRT_Executable_NumOutputs_Args);
  outs.executable = get.executable;
  PJRT_Error* error = CASCADE_PJRT_FN(api, Executable_NumOutputs)(&outs);
  auto destroy = CASCADE_PJRT_STRUCT(PJRT_Executable_Destroy_Args);
  destroy.executable = get.executable;
  api.raw()->PJRT_Executable_Destroy(&destroy);
  api.Check(error, "PJRT_Executable_NumOutputs");
  num_outputs_ = outs.num_outputs;
}

LoadedExecutable::~LoadedExecutable() {
  auto args = CASCADE_PJRT_STRUCT(PJRT_LoadedExecutable_Destroy_Args);
  args.executable = exe_;
  try {
    CASCADE_PJRT_CALL(client_->api(), LoadedExecutable_Destroy, &args);
  } catch (const Error&) {
  }
}

void LoadedExecutable::ValidateArguments(const std::vector<std::vector<Buffer*>>& args) const {
  if (args.size() != device_indices_.size())
    throw InvalidArgumentError("execute: the executable runs on " + std::to_string(device_indices_.size()) +
                               " device(s); got argument lists for " + std::to_string(args.size()));
  const auto& params = signature_.params;
  for (size_t d = 0; d < args.size(); ++d) {
    if (args[d].size() != params.size())
      throw InvalidArgumentError("execute: device " + std::to_string(d) + ": @main takes " +
                                 std::to_string(params.size()) + " argument(s), got " + std::to_string(args[d].size()));
    // A decode step passes ~700 weights: the message is only built for an argument that fails.
    for (size_t i = 0; i < params.size(); ++i) {
      const Buffer* b = args[d][i];
      if (b && !b->donated() && b->dtype() == params[i].dtype && b->dims() == params[i].dims &&
          b->device_index() == device_indices_[d])
        continue;
      const std::string where = "execute: device " + std::to_string(d) + ", argument " + std::to_string(i);
      if (!b) throw InvalidArgumentError(where + " is null");
      if (b->donated()) throw InvalidArgumentError(where + " was donated to an earlier execution");
      if (b->dtype() != params[i].dtype || b->dims() != params[i].dims)
        throw InvalidArgumentError(where + ": expected " + TypeString(params[i]) + ", got " +
                                   ShapeString(b->dtype(), b->dims()));
      throw InvalidArgumentError(where + " lives on device " + std::to_string(b->device_index()) +
                                 ", expected device " + std::to_string(device_indices_[d]));
    }
  }
}

std::vector<std::vector<std::unique_ptr<Buffer>>> LoadedExecutable::Execute(
    const std::vector<std::vector<Buffer*>>& args) {
  ValidateArguments(args);
  const size_t num_devices = args.size();
  const size_t num_args = signature_.params.size();
  std::vector<std::vector<PJRT_Buffer*>> arg_raw(num_devices, std::vector<PJRT_Buffer*>(num_args));
  std::vector<PJRT_Buffer* const*> arg_lists(num_devices);
  std::vector<std::vector<PJRT_Buffer*>> out_raw(num_devices, std::vector<PJRT_Buffer*>(num_outputs_, nullptr));
  std::vector<PJRT_Buffer**> out_lists(num_devices);
  std::vector<PJRT_Event*> done(num_devices, nullptr);
  for (size_t d = 0; d < num_devices; ++d) {
    for (size_t i = 0; i < num_args; ++i) arg_raw[d][i] = args[d][i]->raw();
    arg_lists[d] = arg_raw[d].data();
    out_lists[d] = out_raw[d].data();
  }
  auto options = CASCADE_PJRT_STRUCT(PJRT_ExecuteOptions);
  auto exec = CASCADE_PJRT_STRUCT(PJRT_LoadedExecutable_Execute_Args);
  exec.executable = exe_;
  exec.options = &options;
  exec.argument_lists = arg_lists.data();
  exec.num_devices = num_devices;
  exec.num_args = num_args;
  exec.output_lists = out_lists.data();
  exec.device_complete_events = done.data();
  CASCADE_PJRT_CALL(client_->api(), LoadedExecutable_Execute, &exec);

  // Own everything the plugin handed out before anything can throw, then await completion.
  std::vector<Event> events;
  for (PJRT_Event* e : done)
    if (e) events.emplace_back(client_->api_ptr(), e);
  std::vector<std::vector<std::unique_ptr<Buffer>>> outputs(num_devices);
  std::exception_ptr failure;
  for (size_t d = 0; d < num_devices; ++d) {
    for (size_t o = 0; o < num_outputs_; ++o) {
      try {
        outputs[d].push_back(std::make_unique<Buffer>(client_, out_raw[d][o], device_indices_[d]));
      } catch (...) {
        if (!failure) failure = std::current_exception();
      }
    }
  }
  for (size_t i = 0; i < signature_.aliasing_output.size(); ++i)
    if (signature_.aliasing_output[i] >= 0)
      for (size_t d = 0; d < num_devices; ++d) args[d][i]->MarkDonated();
  for (Event& e : events) {
    try {
      e.Await("execution");
    } catch (...) {
      if (!failure) failure = std::current_exception();
    }
  }
  if (failure) std::rethrow_exception(failure);
  return outputs;
}

std::vector<std::vector<HostTensor>> LoadedExecutable::ExecuteHost(const std::vector<std::vector<HostTensor>>& args) {
  if (args.size() != device_indices_.size())
    throw InvalidArgumentError("execute: the executable runs on " + std::to_string(device_indices_.size()) +
                               " device(s); got argument lists for " + std::to_string(args.size()));
  const auto& params = signature_.params;
  for (size_t d = 0; d < args.size(); ++d) {
    if (args[d].size() != params.size())
      throw InvalidArgumentError("execute: device " + std::to_string(d) + ": @main takes " +
                                 std::to_string(params.size()) + " argument(s), got " + std::to_string(args[d].size()));
    for (size_t i = 0; i < params.size(); ++i)
      if (args[d][i].dtype != params[i].dtype || args[d][i].dims != params[i].dims)
        throw InvalidArgumentError("execute: device " + std::to_string(d) + ", argument " + std::to_string(i) +
                                   ": expected " + TypeString(params[i]) + ", got " +
                                   ShapeString(args[d][i].dtype, args[d][i].dims));
  }
  std::vector<std::vector<std::unique_ptr<Buffer>>> owned(args.size());
  std::vector<std::vector<Buffer*>> views(args.size());
  for (size_t d = 0; d < args.size(); ++d)
    for (const HostTensor& t : args[d]) {
      owned[d].push_back(client_->ToDevice(t, device_indices_[d]));
      views[d].push_back(owned[d].back().get());
    }
  auto outputs = Execute(views);
  std::vector<std::vector<HostTensor>> host(outputs.size());
  for (size_t d = 0; d < outputs.size(); ++d)
    for (auto& b : outputs[d]) host[d].push_back(b->ToHost());
  return host;
}

}  // namespace cascade
