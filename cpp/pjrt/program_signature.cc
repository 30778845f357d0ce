#include "pjrt/program_signature.h"

#include <cctype>

#include "pjrt/errors.h"

namespace cascade {

namespace {

class Cursor {
 public:
  Cursor(const std::string& s, size_t pos) : s_(s), pos_(pos) {}
  void SkipSpace() {
    while (pos_ < s_.size()) {
      if (std::isspace(static_cast<unsigned char>(s_[pos_]))) {
        ++pos_;
      } else if (s_.compare(pos_, 2, "//") == 0) {
        while (pos_ < s_.size() && s_[pos_] != '\n') ++pos_;
      } else {
        break;
      }
    }
  }
  bool Eat(const char* token) {
    SkipSpace();
    size_t n = std::char_traits<char>::length(token);
    if (s_.compare(pos_, n, token) == 0) {
      pos_ += n;
      return true;
    }
    return false;
  }
  void Expect(const char* token) {
    if (!Eat(token)) Fail(std::string("expected '") + token + "'");
  }
  char Peek() {
    SkipSpace();
    return pos_ < s_.size() ? s_[pos_] : '\0';
  }
  std::string Ident() {
    SkipSpace();
    size_t start = pos_;
    while (pos_ < s_.size() && (std::isalnum(static_cast<unsigned char>(s_[pos_])) || s_[pos_] == '_' ||
                                s_[pos_] == '.' || s_[pos_] == '$' || s_[pos_] == '-'))
      ++pos_;
    return s_.substr(start, pos_ - start);
  }
  // Skips a balanced {...} attribute dictionary, capturing its text.
  std::string SkipBraces() {
    SkipSpace();
    size_t start = pos_;
    int depth = 0;
    bool in_string = false;
    for (; pos_ < s_.size(); ++pos_) {
      char c = s_[pos_];
      if (in_string) {
        if (c == '\\') ++pos_;
        else if (c == '"') in_string = false;
      } else if (c == '"') {
        in_string = true;
      } else if (c == '{') {
        ++depth;
      } else if (c == '}') {
        if (--depth == 0) {
          ++pos_;
          return s_.substr(start, pos_ - start);
        }
      }
    }
    Fail("unbalanced '{'");
  }
  [[noreturn]] void Fail(const std::string& what) {
    size_t line = 1;
    for (size_t i = 0; i < pos_ && i < s_.size(); ++i) line += s_[i] == '\n';
    throw InvalidArgumentError("cannot read the signature of @main (line " + std::to_string(line) + "): " + what);
  }

  TensorType TensorTypeHere() {
    if (!Eat("tensor<")) Fail("expected a ranked tensor type");
    TensorType t{};
    // dims: NxMx...elem
    for (;;) {
      SkipSpace();
      if (pos_ < s_.size() && s_[pos_] == '?') Fail("dynamic dimensions are not supported");
      if (pos_ < s_.size() && std::isdigit(static_cast<unsigned char>(s_[pos_]))) {
        size_t start = pos_;
        while (pos_ < s_.size() && std::isdigit(static_cast<unsigned char>(s_[pos_]))) ++pos_;
        if (pos_ >= s_.size() || s_[pos_] != 'x') {
          pos_ = start;
          break;
        }
        // std::stoll would throw std::out_of_range past 2^63 (found by the program_text fuzzer).
        if (pos_ - start > 15) Fail("a dimension of " + std::to_string(pos_ - start) + " digits is too large");
        t.dims.push_back(std::stoll(s_.substr(start, pos_ - start)));
        ++pos_;  // 'x'
        continue;
      }
      break;
    }
    std::string elem = Ident();
    auto dtype = DTypeFromMlir(elem);
    if (!dtype) Fail("unsupported element type '" + elem + "'");
    t.dtype = *dtype;
    SkipSpace();
    if (Peek() == ',') {  // encoding attribute (e.g. sparsity): skip to the closing '>'
      int depth = 1;
      while (pos_ < s_.size() && depth > 0) {
        char c = s_[++pos_];
        if (c == '<') ++depth;
        if (c == '>') --depth;
      }
    }
    Expect(">");
    return t;
  }

 private:
  const std::string& s_;
  size_t pos_;
};

int AliasingOutput(const std::string& attrs) {
  const std::string key = "tf.aliasing_output";
  size_t at = attrs.find(key);
  if (at == std::string::npos) return -1;
  at = attrs.find('=', at);
  if (at == std::string::npos) return -1;
  ++at;
  while (at < attrs.size() && std::isspace(static_cast<unsigned char>(attrs[at]))) ++at;
  size_t end = at;
  while (end < attrs.size() && std::isdigit(static_cast<unsigned char>(attrs[end]))) ++end;
  if (end - at > 9) throw InvalidArgumentError("program signature: tf.aliasing_output " + attrs.substr(at, 20) + "... is out of range");
  return end > at ? std::stoi(attrs.substr(at, end - at)) : -1;
}

}  // namespace

std::optional<ProgramSignature> ParseMainSignature(const std::string& text) {
  size_t at = 0;
  for (;;) {
    at = text.find("@main", at);
    if (at == std::string::npos) return std::nullopt;
    size_t after = at + 5;
    while (after < text.size() && std::isspace(static_cast<unsigned char>(text[after]))) ++after;
    if (after < text.size() && text[after] == '(') {
      // Must be a func.func definition, not a call site.
      size_t line_start = text.rfind('\n', at);
      line_start = line_start == std::string::npos ? 0 : line_start + 1;
      if (text.substr(line_start, at - line_start).find("func") != std::string::npos) {
        at = after;
        break;
      }
    }
    at = after;
  }
  Cursor c(text, at);
  ProgramSignature sig;
  c.Expect("(");
  if (!c.Eat(")")) {
    for (;;) {
      c.Expect("%");
      c.Ident();
      c.Expect(":");
      sig.params.push_back(c.TensorTypeHere());
      sig.aliasing_output.push_back(c.Peek() == '{' ? AliasingOutput(c.SkipBraces()) : -1);
      if (c.Eat(")")) break;
      c.Expect(",");
    }
  }
  if (c.Eat("->")) {
    if (c.Eat("(")) {
      if (!c.Eat(")")) {
        for (;;) {
          sig.results.push_back(c.TensorTypeHere());
          if (c.Peek() == '{') c.SkipBraces();
          if (c.Eat(")")) break;
          c.Expect(",");
        }
      }
    } else {
      sig.results.push_back(c.TensorTypeHere());
    }
  }
  return sig;
}

std::string TypeString(const TensorType& type) { return ShapeString(type.dtype, type.dims); }

void CheckProgramText(const std::string& text) {
  if (text.size() > kMaxProgramBytes)
    throw InvalidArgumentError("compile: the program text is " + std::to_string(text.size()) + " bytes, more than the " +
                               std::to_string(kMaxProgramBytes) + " accepted");
  int depth = 0;
  int64_t line = 1;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (c == '\n') ++line;
    if (in_string) {
      if (c == '\\') ++i;  // an escaped character, whatever it is
      else if (c == '"') in_string = false;
      continue;
    }
    switch (c) {
      case '"': in_string = true; break;
      case '(': case '[': case '{': case '<':
        if (++depth > kMaxProgramNesting)
          throw InvalidArgumentError("compile: the program nests brackets more than " + std::to_string(kMaxProgramNesting) +
                                     " deep (line " + std::to_string(line) +
                                     "); the plugin's parser would overflow its stack on such text");
        break;
      case '>':
        if (i > 0 && text[i - 1] == '-') break;  // "->"
        [[fallthrough]];
      case ')': case ']': case '}':
        if (depth > 0) --depth;
        break;
      default: break;
    }
  }
}

}  // namespace cascade
