#include "model/config.h"

namespace cascade {

const char* ModelFamilyName(ModelFamily family) {
  switch (family) {
    case ModelFamily::kLlama: return "llama";
    case ModelFamily::kGemma: return "gemma";
  }
  return "unknown";
}

}  // namespace cascade
