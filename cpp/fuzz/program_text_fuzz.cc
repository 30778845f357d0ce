// libFuzzer target: the checks every StableHLO text passes before a plugin sees it
// (CheckProgramText: nesting depth and size, issue #18's crash; ParseMainSignature: the types
// execute() checks arguments against). No plugin is loaded. Properties besides memory safety:
// only cascade::Error escapes, and a text that passes CheckProgramText nests no deeper than
// kMaxProgramNesting (recounted here independently of the checker's code).
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "pjrt/errors.h"
#include "pjrt/program_signature.h"

using namespace cascade;

namespace {
// Bracket depth outside "..." literals, with "->" not closing anything.
int MaxDepth(const std::string& s) {
  int depth = 0, worst = 0;
  bool quoted = false;
  for (size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    if (quoted) {
      if (c == '\\') ++i;
      else if (c == '"') quoted = false;
    } else if (c == '"') {
      quoted = true;
    } else if (c == '(' || c == '[' || c == '{' || c == '<') {
      worst = std::max(worst, ++depth);
    } else if ((c == ')' || c == ']' || c == '}' || (c == '>' && !(i > 0 && s[i - 1] == '-'))) && depth > 0) {
      --depth;
    }
  }
  return worst;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  bool passed = true;
  try {
    CheckProgramText(text);
  } catch (const Error&) {
    passed = false;
  }
  if (passed && MaxDepth(text) > kMaxProgramNesting) {
    std::fprintf(stderr, "CheckProgramText passed a text nesting %d deep\n", MaxDepth(text));
    std::abort();
  }
  try {
    (void)ParseMainSignature(text);
  } catch (const Error&) {
  }
  return 0;
}
