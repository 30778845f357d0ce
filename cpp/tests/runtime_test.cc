// The PJRT runtime layer against the real XLA CPU plugin: no mock.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "pjrt/api.h"
#include "pjrt/client.h"
#include "pjrt/plugin_locator.h"

namespace cascade {
namespace {

std::shared_ptr<Client> OpenCpu(int devices) {
  auto api = Api::Load(LocatePlugin("cpu"));
  ClientOptions options;
  options.cpu_device_count = devices;
  return Client::Create(api, options);
}

HostTensor F32(std::vector<int64_t> dims, std::vector<float> values) {
  return HostTensor(DType::kF32, std::move(dims), values.data(), values.size() * sizeof(float));
}

TEST(CompileOptions, EncodesReplicasAndPartitions) {
  EXPECT_EQ(EncodeCompileOptions(1, 1), std::string("\x1a\x04\x20\x01\x28\x01", 6));
  EXPECT_EQ(EncodeCompileOptions(4, 1), std::string("\x1a\x04\x20\x04\x28\x01", 6));
  // Varints past 127 take two bytes.
  EXPECT_EQ(EncodeCompileOptions(300, 1), std::string("\x1a\x05\x20\xac\x02\x28\x01", 7));
}

TEST(ProgramSignature, ReadsMainParamsResultsAndAliasing) {
  auto sig = ParseMainSignature(R"(module @m {
  func.func public @main(%arg0: tensor<2x3xf32>, %arg1: tensor<i32> {tf.aliasing_output = 1 : i32},
                         %arg2: tensor<4xbf16>) -> (tensor<3xf32> {jax.result_info = "x"}, tensor<i32>) {
    return %0, %1 : tensor<3xf32>, tensor<i32>
  }
})");
  ASSERT_TRUE(sig.has_value());
  ASSERT_EQ(sig->params.size(), 3u);
  EXPECT_EQ(sig->params[0].dims, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(sig->params[1].dtype, DType::kS32);
  EXPECT_TRUE(sig->params[1].dims.empty());
  EXPECT_EQ(sig->params[2].dtype, DType::kBF16);
  EXPECT_EQ(sig->aliasing_output, (std::vector<int>{-1, 1, -1}));
  ASSERT_EQ(sig->results.size(), 2u);
  EXPECT_EQ(sig->results[0].dims, (std::vector<int64_t>{3}));
  EXPECT_FALSE(ParseMainSignature("module {}").has_value());
  EXPECT_THROW(ParseMainSignature("func.func @main(%a: tensor<?xf32>) -> tensor<f32>"), InvalidArgumentError);
  // Found by the program_text fuzzer: numbers past int64 / int32 escaped as std::out_of_range.
  EXPECT_THROW(ParseMainSignature("func.func public @main(%k: tensor<29999999999999999999x2xf32>) -> tensor<f32>"),
               InvalidArgumentError);
  EXPECT_THROW(ParseMainSignature("func.func @main(%k: tensor<2xf32> {tf.aliasing_output = 99999999999 : i32}) -> "
                                  "tensor<2xf32>"),
               InvalidArgumentError);
  // The plugin's parser crashes on deep nesting: refused before it (issue #18).
  EXPECT_THROW(CheckProgramText(std::string(300, '(') + std::string(300, ')')), InvalidArgumentError);
  EXPECT_NO_THROW(CheckProgramText(std::string(200, '{') + "\"}}}}\" -> " + std::string(200, '}')));
}

TEST(Plugin, MissingPathIsPluginNotFound) {
  EXPECT_THROW(Api::Load("/nonexistent/plugin.so"), PluginNotFoundError);
}

TEST(Plugin, NonPluginFileIsIncompatible) {
  EXPECT_THROW(Api::Load("/etc/hostname"), PluginIncompatibleError);      // not an ELF file
  EXPECT_THROW(Api::Load("/lib/x86_64-linux-gnu/libz.so.1"), PluginIncompatibleError);  // no GetPjrtApi
}

TEST(Plugin, ReportsVersionAndAttributes) {
  auto api = Api::Load(LocatePlugin("cpu"));
  EXPECT_EQ(api->major_version(), 0);
  EXPECT_GE(api->minor_version(), kMinPjrtMinorVersion);
  EXPECT_EQ(Api::Load(LocatePlugin("cpu")).get(), api.get()) << "a plugin is loaded once per process";
}

TEST(Client, OpensFourCpuDevicesWithMemories) {
  auto client = OpenCpu(4);
  EXPECT_EQ(client->platform_name(), "cpu");
  ASSERT_EQ(client->devices().size(), 4u);
  for (const auto& d : client->devices()) {
    EXPECT_FALSE(d.kind.empty());
    bool has_default = false;
    for (const auto& m : d.memories) has_default |= m.is_default;
    EXPECT_TRUE(d.memories.empty() || has_default);
  }
}

constexpr char kAffine[] = R"(
func.func @main(%x: tensor<2x3xf32>, %w: tensor<3x2xf32>, %b: tensor<2xf32>) -> (tensor<2x2xf32>, tensor<f32>) {
  %y = stablehlo.dot_general %x, %w, contracting_dims = [1] x [0] : (tensor<2x3xf32>, tensor<3x2xf32>) -> tensor<2x2xf32>
  %bb = stablehlo.broadcast_in_dim %b, dims = [1] : (tensor<2xf32>) -> tensor<2x2xf32>
  %z = stablehlo.add %y, %bb : tensor<2x2xf32>
  %zero = stablehlo.constant dense<0.0> : tensor<f32>
  %s = stablehlo.reduce(%z init: %zero) applies stablehlo.add across dimensions = [0, 1] : (tensor<2x2xf32>, tensor<f32>) -> tensor<f32>
  return %z, %s : tensor<2x2xf32>, tensor<f32>
}
)";

TEST(Executable, RunsOnEveryDeviceWithItsOwnInputs) {
  auto client = OpenCpu(4);
  auto exe = client->Compile(kAffine, {4});
  EXPECT_EQ(exe->num_outputs(), 2u);
  ASSERT_EQ(exe->device_indices().size(), 4u);
  std::vector<std::vector<HostTensor>> args;
  for (int d = 0; d < 4; ++d) {
    float k = static_cast<float>(d + 1);
    args.push_back({F32({2, 3}, {1 * k, 2, 3, 4, 5, 6}), F32({3, 2}, {1, 0, 0, 1, 1, 1}), F32({2}, {k, -k})});
  }
  auto out = exe->ExecuteHost(args);
  ASSERT_EQ(out.size(), 4u);
  for (int d = 0; d < 4; ++d) {
    float k = static_cast<float>(d + 1);
    const float* z = out[d][0].as<float>();
    // x @ w = [[x00 + x02, x01 + x02], [x10 + x12, x11 + x12]]
    float expect[4] = {k + 3 + k, 2 + 3 - k, 4 + 6 + k, 5 + 6 - k};
    for (int i = 0; i < 4; ++i) EXPECT_FLOAT_EQ(z[i], expect[i]) << "device " << d << " element " << i;
    EXPECT_FLOAT_EQ(*out[d][1].as<float>(), expect[0] + expect[1] + expect[2] + expect[3]);
  }
}

TEST(Executable, RejectsBadArgumentsBeforeThePlugin) {
  auto client = OpenCpu(2);
  auto exe = client->Compile(kAffine, {1});
  std::vector<std::vector<HostTensor>> ok = {{F32({2, 3}, {0, 0, 0, 0, 0, 0}), F32({3, 2}, {0, 0, 0, 0, 0, 0}), F32({2}, {0, 0})}};
  EXPECT_NO_THROW(exe->ExecuteHost(ok));
  auto too_few = ok;
  too_few[0].pop_back();
  EXPECT_THROW(exe->ExecuteHost(too_few), InvalidArgumentError);
  auto bad_shape = ok;
  bad_shape[0][2] = F32({3}, {0, 0, 0});
  EXPECT_THROW(exe->ExecuteHost(bad_shape), InvalidArgumentError);
  auto bad_dtype = ok;
  int32_t ints[2] = {0, 0};
  bad_dtype[0][2] = HostTensor(DType::kS32, {2}, ints, sizeof(ints));
  EXPECT_THROW(exe->ExecuteHost(bad_dtype), InvalidArgumentError);
  auto two_devices = ok;
  two_devices.push_back(ok[0]);
  EXPECT_THROW(exe->ExecuteHost(two_devices), InvalidArgumentError);
  EXPECT_THROW(client->Compile(kAffine, {3}), InvalidArgumentError);
}

TEST(Executable, MalformedProgramIsPjrtErrorWithCompilerMessage) {
  auto client = OpenCpu(1);
  try {
    client->Compile("func.func @main(%x: tensor<2xf32>) -> tensor<2xf32> {\n  %y = stablehlo.frobnicate %x\n}\n", {1});
    FAIL() << "compiled a malformed program";
  } catch (const PjrtError& e) {
    EXPECT_NE(std::string(e.what()).find("frobnicate"), std::string::npos) << e.what();
  }
}

TEST(Buffer, RoundTripsEveryDtype) {
  auto client = OpenCpu(1);
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16, DType::kS32, DType::kS8, DType::kU8, DType::kPred}) {
    HostTensor t(dtype, {3, 5});
    for (size_t i = 0; i < t.data.size(); ++i) t.data[i] = static_cast<uint8_t>(dtype == DType::kPred ? (i % 2) : (i * 37 + 11));
    if (dtype == DType::kBF16 || dtype == DType::kF16)  // keep the bit patterns finite
      for (size_t i = 1; i < t.data.size(); i += 2) t.data[i] &= 0x3f;
    auto back = client->ToDevice(t, 0)->ToHost();
    EXPECT_EQ(back.dims, t.dims);
    EXPECT_EQ(back.data, t.data) << DTypeName(dtype);
  }
}

}  // namespace
}  // namespace cascade

namespace cascade {
namespace {

TEST(CompileCache, StoresLoadsAndSurvivesDamage) {
  char tmpl[] = "/tmp/cascade-xla-cache-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  ClientOptions options;
  options.cpu_device_count = 1;
  options.compile_cache = CompileCache(tmpl);
  auto client = Client::Create(Api::Load(LocatePlugin("cpu")), options);
  auto run = [&] {
    auto exe = client->Compile(kAffine, {1});
    auto out = exe->ExecuteHost({{F32({2, 3}, {1, 2, 3, 4, 5, 6}), F32({3, 2}, {1, 0, 0, 1, 1, 1}), F32({2}, {1, -1})}});
    return out[0][0].data;
  };
  const auto first = run();
  const std::string key = CompileCache::Key(kAffine, EncodeCompileOptions(1, 1), client->api().path(),
                                            client->platform_version(), client->devices().size());
  const std::string file = std::string(tmpl) + "/" + key + ".xlaexe";
  ASSERT_TRUE(options.compile_cache.Load(key).has_value()) << "nothing cached at " << file;
  EXPECT_EQ(run(), first) << "the cached executable computes the same";
  // Damage the entry: it is rejected by its checksum (never reaches the plugin) and rebuilt.
  {
    FILE* f = std::fopen(file.c_str(), "r+b");
    ASSERT_NE(f, nullptr);
    std::fseek(f, 40, SEEK_SET);
    std::fputc(0x5a, f);
    std::fclose(f);
  }
  EXPECT_FALSE(options.compile_cache.Load(key).has_value());
  EXPECT_EQ(run(), first);
  EXPECT_TRUE(options.compile_cache.Load(key).has_value());
}

}  // namespace
}  // namespace cascade
