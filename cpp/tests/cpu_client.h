// The XLA CPU plugin's client with one device, shared by a test binary's tests.
#pragma once

#include <memory>

#include "pjrt/api.h"
#include "pjrt/client.h"
#include "pjrt/plugin_locator.h"

namespace cascade::testing {

inline std::shared_ptr<Client> CpuClient() {
  static std::shared_ptr<Client> client = [] {
    ClientOptions options;
    options.cpu_device_count = 1;
    return Client::Create(Api::Load(LocatePlugin("cpu")), options);
  }();
  return client;
}

}  // namespace cascade::testing
