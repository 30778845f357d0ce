// libFuzzer target: LoadTiny (the tiny model's safetensors file, its __metadata__ and the six
// tensors), without and with a draft config to check against. Only cascade::Error may escape.
#include <cstddef>
#include <cstdint>

#include "fuzz_file.h"
#include "model/tiny.h"
#include "pjrt/errors.h"

using namespace cascade;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::MemFile file(data, size);
  try {
    TinyWeights t = LoadTiny(file.path());
    volatile int64_t sink = t.byte_size();
    ValidateTiny(t);
    ModelConfig draft;
    draft.hidden_size = 8;
    draft.vocab_size = 16;
    try {
      CheckTinyFitsDraft(t, draft);
    } catch (const Error&) {}
    (void)sink;
  } catch (const Error&) {
  }
  try {
    ModelConfig draft;
    draft.hidden_size = 8;
    draft.vocab_size = 16;
    TinyWeights t = LoadTiny(file.path(), &draft);
    (void)t;
  } catch (const Error&) {
  }
  return 0;
}
