#include "model/weights.h"

#include "pjrt/errors.h"

namespace cascade {

const HostTensor& ModelWeights::at(const std::string& name) const {
  auto it = tensors.find(name);
  if (it == tensors.end()) throw Error(ErrorKind::kModelFormat, source + ": missing tensor " + name);
  return it->second;
}

}  // namespace cascade
