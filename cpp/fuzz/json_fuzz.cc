// libFuzzer target: json::Parse on arbitrary text (with a small and the default depth bound).
// Properties checked besides memory safety: only cascade::Error escapes, whatever parses
// serialises to text that parses again, and the second serialisation is a fixed point. (The
// first one need not be: Serialize writes the double 3.0 as "3", which parses back as the integer
// 3, and -0.0 as "-0", which parses back as the integer 0.)
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "model/json.h"
#include "pjrt/errors.h"

using namespace cascade;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  for (int depth : {4, json::kDefaultMaxDepth}) {
    json::Value v;
    try {
      v = json::Parse(text, "fuzz.json", depth);
    } catch (const Error&) {
      continue;
    }
    const std::string once = json::Serialize(v);
    std::string twice;
    try {
      twice = json::Serialize(json::Parse(once, "reserialized.json", depth + 1));
    } catch (const Error& e) {
      std::fprintf(stderr, "Serialize output does not parse: %s\n%s\n", e.what(), once.c_str());
      std::abort();
    }
    std::string thrice;
    try {
      thrice = json::Serialize(json::Parse(twice, "reserialized2.json", depth + 1));
    } catch (const Error& e) {
      std::fprintf(stderr, "Serialize output does not parse: %s\n%s\n", e.what(), twice.c_str());
      std::abort();
    }
    if (twice != thrice) {
      std::fprintf(stderr, "Serialize is not a fixed point:\n%s\n%s\n%s\n", once.c_str(), twice.c_str(), thrice.c_str());
      std::abort();
    }
  }
  return 0;
}
