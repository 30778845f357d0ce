// libFuzzer target: the safetensors reader (header length, JSON header, data offsets) and every
// tensor read. Only cascade::Error may escape.
#include <cstddef>
#include <cstdint>

#include "fuzz_file.h"
#include "model/safetensors.h"
#include "pjrt/errors.h"

using namespace cascade;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::MemFile file(data, size);
  try {
    SafetensorsFile f(file.path());
    volatile uint64_t sink = f.data_offset() + f.metadata().size();
    for (const auto& info : f.tensors()) {
      sink = sink + info.shape.size() + info.end - info.begin;
      try {
        HostTensor t = f.ReadTensor(info);
        sink = sink + t.data.size();
      } catch (const Error&) {}
    }
    (void)sink;
  } catch (const Error&) {
  }
  return 0;
}
