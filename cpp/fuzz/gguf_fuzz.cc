// libFuzzer target: the GGUF reader (GgufFile: header, metadata, tensor infos, data section),
// every typed metadata lookup, every tensor read (dequantised), ConfigFromGguf and the whole
// GGUF model loader. Only cascade::Error may escape the reader.
#include <cstddef>
#include <cstdint>

#include "fuzz_file.h"
#include "model/gguf.h"
#include "model/loader.h"
#include "pjrt/errors.h"

using namespace cascade;

namespace {

void Touch(const GgufFile& f) {
  volatile uint64_t sink = f.version() + f.alignment() + f.data_offset() + f.file_size();
  for (const auto& [key, v] : f.metadata()) {
    // Typed lookups: each either returns or throws ModelFormatError for the wrong type.
    try { sink = sink + f.GetString(key).size(); } catch (const Error&) {}
    try { sink = sink + static_cast<uint64_t>(f.GetInt(key)); } catch (const Error&) {}
    try { sink = sink + (f.GetFloat(key) > 0.5); } catch (const Error&) {}
    try { sink = sink + f.GetBool(key); } catch (const Error&) {}
    try { sink = sink + f.GetStringArray(key).size(); } catch (const Error&) {}
    try { sink = sink + f.GetIntArray(key).size(); } catch (const Error&) {}
    try { sink = sink + f.GetFloatArray(key).size(); } catch (const Error&) {}
    try { sink = sink + f.GetArrayLength(key); } catch (const Error&) {}
    sink = sink + v.strings.size() + v.ints.size() + v.floats.size();
  }
  for (const auto& info : f.tensors()) {
    sink = sink + info.dims().size();
    if (info.layout_known && info.size) sink = sink + f.TensorData(info)[0] + f.TensorData(info)[info.size - 1];
    try {
      HostTensor t = f.ReadTensor(info);
      sink = sink + t.data.size();
    } catch (const Error&) {}
    try {
      HostTensor t = f.ReadTensorF32(info);
      sink = sink + t.data.size();
    } catch (const Error&) {}
  }
  try {
    ModelConfig c = ConfigFromGguf(f);
    sink = sink + c.vocab_size;
  } catch (const Error&) {}
  (void)sink;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::MemFile file(data, size);
  try {
    GgufFile f(file.path());
    Touch(f);
  } catch (const Error&) {
  }
  // The whole loader, except for files that declare more layers than they have tensors for
  // (each layer needs 9): LoadGgufModel builds every expected name and shape first, so a 4 KB
  // file claiming 65536 layers takes ~1 s (~15 s under ASan) before it fails on a missing tensor;
  // see BadInputs.GgufManyLayersFewTensors in cpp/tests/bad_inputs_test.cc. Those would only
  // make the fuzzer time out on a known finding.
  bool load = true;
  try {
    GgufFile f(file.path());
    const ModelConfig c = ConfigFromGguf(f);
    load = static_cast<uint64_t>(c.num_layers) * 9 <= f.tensors().size();
  } catch (const Error&) {
  }
  if (load) {
    try {
      ModelWeights w = LoadGgufModel(file.path());
      (void)w;
    } catch (const Error&) {
    }
  }
  return 0;
}
