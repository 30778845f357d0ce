// libFuzzer target: ConfigFromHfJson on arbitrary JSON (config.json), then the tensor shapes the
// config implies (what the safetensors loader checks the checkpoint against). Only
// cascade::Error may escape.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "model/json.h"
#include "model/loader.h"
#include "pjrt/errors.h"

using namespace cascade;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    const json::Value v = json::Parse(text, "config.json");
    const ModelConfig c = ConfigFromHfJson(v, "config.json");
    volatile size_t sink = ExpectedTensorShapes(c).size();
    (void)sink;
  } catch (const Error&) {
  }
  return 0;
}
