// JS classes over the core runtime: NativeClient and NativeExecutable. Each holds a shared_ptr
// to the core object; dispose() drops it. Work in flight holds its own reference, so disposing
// during a compile or execute is safe: the core object goes away when the work finishes.
#include <napi.h>

#include <memory>
#include <mutex>

#include "marshal.h"
#include "pjrt/api.h"
#include "pjrt/client.h"
#include "promise_worker.h"
#include "runtime.h"

namespace cascade::binding {

namespace {

struct AddonData {
  Napi::FunctionReference client_ctor;
  Napi::FunctionReference executable_ctor;
};

class NativeExecutable : public Napi::ObjectWrap<NativeExecutable> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "NativeExecutable",
                       {InstanceMethod("execute", &NativeExecutable::Execute),
                        InstanceMethod("signature", &NativeExecutable::Signature),
                        InstanceMethod("dispose", &NativeExecutable::Dispose)});
  }
  explicit NativeExecutable(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativeExecutable>(info) {}
  void Attach(std::shared_ptr<LoadedExecutable> exe) { exe_ = std::move(exe); }

 private:
  std::shared_ptr<LoadedExecutable> Live(Napi::Env env) {
    if (!exe_) throw ToJsError(env, DisposedError("the executable has been disposed"));
    return exe_;
  }

  // execute(perDevice: Tensor[][]): Promise<Tensor[][]>
  Napi::Value Execute(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    auto exe = Live(env);
    auto inputs = std::make_shared<std::vector<std::vector<HostTensor>>>();
    try {
      if (info.Length() < 1 || !info[0].IsArray())
        throw InvalidArgumentError("execute: expected an array with one argument list per device");
      Napi::Array devices = info[0].As<Napi::Array>();
      for (uint32_t d = 0; d < devices.Length(); ++d) {
        Napi::Value list = devices.Get(d);
        if (!list.IsArray())
          throw InvalidArgumentError("execute: device " + std::to_string(d) + ": expected an array of tensors");
        Napi::Array args = list.As<Napi::Array>();
        inputs->emplace_back();
        for (uint32_t i = 0; i < args.Length(); ++i)
          inputs->back().push_back(
              TensorFromJs(args.Get(i), "execute: device " + std::to_string(d) + ", argument " + std::to_string(i)));
      }
    } catch (const Error& e) {
      throw ToJsError(env, e);
    }
    auto outputs = std::make_shared<std::vector<std::vector<HostTensor>>>();
    return PromiseWorker::Start(
        env, "cascade.execute", [exe, inputs, outputs] { *outputs = exe->ExecuteHost(*inputs); },
        [outputs](Napi::Env env) -> Napi::Value {
          Napi::Array per_device = Napi::Array::New(env, outputs->size());
          for (size_t d = 0; d < outputs->size(); ++d) {
            Napi::Array list = Napi::Array::New(env, (*outputs)[d].size());
            for (size_t o = 0; o < (*outputs)[d].size(); ++o) list.Set(o, TensorToJs(env, std::move((*outputs)[d][o])));
            per_device.Set(d, list);
          }
          return per_device;
        });
  }

  Napi::Value Signature(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    auto exe = Live(env);
    Napi::Object out = Napi::Object::New(env);
    const auto& sig = exe->signature();
    Napi::Array params = Napi::Array::New(env, sig.params.size());
    for (size_t i = 0; i < sig.params.size(); ++i) params.Set(i, TensorTypeToJs(env, sig.params[i]));
    Napi::Array results = Napi::Array::New(env, sig.results.size());
    for (size_t i = 0; i < sig.results.size(); ++i) results.Set(i, TensorTypeToJs(env, sig.results[i]));
    Napi::Array devices = Napi::Array::New(env, exe->device_indices().size());
    for (size_t i = 0; i < exe->device_indices().size(); ++i)
      devices.Set(i, Napi::Number::New(env, static_cast<double>(exe->device_indices()[i])));
    out.Set("parameters", params);
    out.Set("results", results);
    out.Set("deviceIndices", devices);
    out.Set("replicas", Napi::Number::New(env, exe->replicas()));
    return out;
  }

  Napi::Value Dispose(const Napi::CallbackInfo& info) {
    exe_.reset();
    return info.Env().Undefined();
  }

  std::shared_ptr<LoadedExecutable> exe_;
};

class NativeClient : public Napi::ObjectWrap<NativeClient> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "NativeClient",
                       {InstanceMethod("info", &NativeClient::Info),
                        InstanceMethod("compile", &NativeClient::Compile),
                        InstanceMethod("memoryStats", &NativeClient::MemoryStatsJs),
                        InstanceMethod("close", &NativeClient::Close)});
  }
  explicit NativeClient(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativeClient>(info) {}
  void Attach(std::shared_ptr<Client> client) { client_ = std::move(client); }
  std::shared_ptr<Client> shared() {
    if (!client_) throw ToJsError(Env(), DisposedError("the runtime has been closed"));
    return client_;
  }

 private:
  std::shared_ptr<Client> Live(Napi::Env env) {
    if (!client_) throw ToJsError(env, DisposedError("the runtime has been closed"));
    return client_;
  }

  Napi::Value Info(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    auto client = Live(env);
    const Api& api = client->api();
    Napi::Object out = Napi::Object::New(env);
    out.Set("pluginPath", api.path());
    Napi::Object version = Napi::Object::New(env);
    version.Set("major", api.major_version());
    version.Set("minor", api.minor_version());
    out.Set("apiVersion", version);
    Napi::Object header = Napi::Object::New(env);
    header.Set("major", PJRT_API_MAJOR);
    header.Set("minor", PJRT_API_MINOR);
    out.Set("headerApiVersion", header);
    out.Set("platform", client->platform_name());
    out.Set("platformVersion", client->platform_version());
    Napi::Object attrs = Napi::Object::New(env);
    try {
      for (const auto& [k, v] : api.Attributes()) attrs.Set(k, v);
    } catch (const Error&) {
    }
    out.Set("attributes", attrs);
    auto ext = api.Extensions();
    Napi::Array extensions = Napi::Array::New(env, ext.size());
    for (size_t i = 0; i < ext.size(); ++i) extensions.Set(i, ExtensionTypeName(ext[i]));
    out.Set("extensions", extensions);
    const auto& devs = client->devices();
    Napi::Array devices = Napi::Array::New(env, devs.size());
    for (size_t i = 0; i < devs.size(); ++i) {
      Napi::Object d = Napi::Object::New(env);
      d.Set("index", static_cast<double>(i));
      d.Set("id", devs[i].id);
      d.Set("kind", devs[i].kind);
      d.Set("localHardwareId", devs[i].local_hardware_id);
      d.Set("description", devs[i].description);
      Napi::Array mems = Napi::Array::New(env, devs[i].memories.size());
      for (size_t m = 0; m < devs[i].memories.size(); ++m) {
        Napi::Object mem = Napi::Object::New(env);
        mem.Set("id", devs[i].memories[m].id);
        mem.Set("kind", devs[i].memories[m].kind);
        mem.Set("isDefault", devs[i].memories[m].is_default);
        mems.Set(m, mem);
      }
      d.Set("memories", mems);
      devices.Set(i, d);
    }
    out.Set("devices", devices);
    return out;
  }

  // compile(text: string, replicas: number): Promise<NativeExecutable>
  Napi::Value Compile(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    auto client = Live(env);
    if (info.Length() < 2 || !info[0].IsString() || !info[1].IsNumber())
      throw ToJsError(env, InvalidArgumentError("compile(text: string, replicas: number)"));
    auto text = std::make_shared<std::string>(info[0].As<Napi::String>().Utf8Value());
    CompileOptions options;
    options.replicas = info[1].As<Napi::Number>().Int32Value();
    auto exe = std::make_shared<std::shared_ptr<LoadedExecutable>>();
    auto* data = env.GetInstanceData<AddonData>();
    return PromiseWorker::Start(
        env, "cascade.compile", [client, text, options, exe] { *exe = client->Compile(*text, options); },
        [exe, data](Napi::Env env) -> Napi::Value {
          Napi::Object obj = data->executable_ctor.New({});
          NativeExecutable::Unwrap(obj)->Attach(std::move(*exe));
          return obj;
        });
  }

  Napi::Value MemoryStatsJs(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    auto client = Live(env);
    const size_t index = info.Length() > 0 && info[0].IsNumber() ? info[0].As<Napi::Number>().Uint32Value() : 0;
    try {
      auto stats = client->DeviceMemoryStats(index);
      if (!stats) return env.Null();
      Napi::Object out = Napi::Object::New(env);
      out.Set("bytesInUse", static_cast<double>(stats->bytes_in_use));
      if (stats->peak_bytes_in_use) out.Set("peakBytesInUse", static_cast<double>(*stats->peak_bytes_in_use));
      if (stats->bytes_limit) out.Set("bytesLimit", static_cast<double>(*stats->bytes_limit));
      return out;
    } catch (const Error& e) {
      throw ToJsError(env, e);
    }
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    client_.reset();  // PJRT_Client_Destroy runs once executables and buffers holding it are gone
    return info.Env().Undefined();
  }

  std::shared_ptr<Client> client_;
};

// openClient(pluginPath: string, options: { cpuDeviceCount?: number }): Promise<NativeClient>
Napi::Value OpenClient(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString())
    throw ToJsError(env, InvalidArgumentError("openClient(pluginPath: string, options?)"));
  const std::string path = info[0].As<Napi::String>().Utf8Value();
  ClientOptions options;
  if (info.Length() > 1 && info[1].IsObject()) {
    Napi::Value count = info[1].As<Napi::Object>().Get("cpuDeviceCount");
    if (count.IsNumber()) options.cpu_device_count = count.As<Napi::Number>().Int64Value();
  }
  auto client = std::make_shared<std::shared_ptr<Client>>();
  auto* data = env.GetInstanceData<AddonData>();
  return PromiseWorker::Start(
      env, "cascade.open", [path, options, client] { *client = Client::Create(Api::Load(path), options); },
      [client, data](Napi::Env env) -> Napi::Value {
        Napi::Object obj = data->client_ctor.New({});
        NativeClient::Unwrap(obj)->Attach(std::move(*client));
        return obj;
      });
}

}  // namespace

std::shared_ptr<Client> ClientFromJs(Napi::Env env, const Napi::Value& value) {
  auto* data = env.GetInstanceData<AddonData>();
  if (!value.IsObject() || !value.As<Napi::Object>().InstanceOf(data->client_ctor.Value()))
    throw ToJsError(env, InvalidArgumentError("expected a runtime client"));
  return NativeClient::Unwrap(value.As<Napi::Object>())->shared();
}

Napi::Object InitRuntime(Napi::Env env, Napi::Object exports) {
  auto* data = new AddonData();
  data->client_ctor = Napi::Persistent(NativeClient::Define(env));
  data->executable_ctor = Napi::Persistent(NativeExecutable::Define(env));
  env.SetInstanceData(data);
  exports.Set("openClient", Napi::Function::New(env, OpenClient, "openClient"));
  exports.Set("pjrtHeaderVersion", Napi::String::New(env, std::to_string(PJRT_API_MAJOR) + "." +
                                                              std::to_string(PJRT_API_MINOR)));
  return exports;
}

}  // namespace cascade::binding
