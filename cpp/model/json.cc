#include "model/json.h"

#include <charconv>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "model/mapped_file.h"
#include "pjrt/errors.h"

namespace cascade {
namespace json {

const char* TypeName(Type type) {
  switch (type) {
    case Type::kNull: return "null";
    case Type::kBool: return "boolean";
    case Type::kNumber: return "number";
    case Type::kString: return "string";
    case Type::kArray: return "array";
    case Type::kObject: return "object";
  }
  return "unknown";
}

Value Value::Bool(bool b) {
  Value v;
  v.type_ = Type::kBool;
  v.bool_ = b;
  return v;
}
Value Value::Number(double d) {
  Value v;
  v.type_ = Type::kNumber;
  v.number_ = d;
  return v;
}
Value Value::Integer(int64_t i) {
  Value v;
  v.type_ = Type::kNumber;
  v.is_int_ = true;
  v.int_ = i;
  v.number_ = static_cast<double>(i);
  return v;
}
Value Value::String(std::string s) {
  Value v;
  v.type_ = Type::kString;
  v.string_ = std::move(s);
  return v;
}
Value Value::Array(std::vector<Value> items) {
  Value v;
  v.type_ = Type::kArray;
  v.array_ = std::move(items);
  return v;
}
Value Value::Object() {
  Value v;
  v.type_ = Type::kObject;
  return v;
}

static void TypeMismatch(Type have, const char* want) {
  throw ModelFormatError(std::string("JSON value is ") + TypeName(have) + ", not " + want);
}

bool Value::as_bool() const {
  if (type_ != Type::kBool) TypeMismatch(type_, "boolean");
  return bool_;
}
double Value::as_number() const {
  if (type_ != Type::kNumber) TypeMismatch(type_, "number");
  return number_;
}
int64_t Value::as_int() const {
  if (type_ != Type::kNumber) TypeMismatch(type_, "integer");
  if (!is_int_) throw ModelFormatError("JSON number is not an integer");
  return int_;
}
const std::string& Value::as_string() const {
  if (type_ != Type::kString) TypeMismatch(type_, "string");
  return string_;
}
const std::vector<Value>& Value::as_array() const {
  if (type_ != Type::kArray) TypeMismatch(type_, "array");
  return array_;
}
const std::vector<std::pair<std::string, Value>>& Value::as_object() const {
  if (type_ != Type::kObject) TypeMismatch(type_, "object");
  return object_;
}
const Value* Value::find(const std::string& key) const {
  if (type_ != Type::kObject) return nullptr;
  auto it = index_.find(key);
  return it == index_.end() ? nullptr : &object_[it->second].second;
}
void Value::Set(const std::string& key, Value value) {
  if (type_ != Type::kObject) TypeMismatch(type_, "object");
  auto it = index_.find(key);
  if (it != index_.end()) {
    object_[it->second].second = std::move(value);
    return;
  }
  index_.emplace(key, object_.size());
  object_.emplace_back(key, std::move(value));
}
size_t Value::size() const {
  if (type_ == Type::kArray) return array_.size();
  if (type_ == Type::kObject) return object_.size();
  return 0;
}

class Parser {
 public:
  Parser(std::string_view text, const std::string& source, int max_depth)
      : s_(text), source_(source), max_depth_(max_depth) {}

  Value ParseDocument() {
    SkipWs();
    Value v = ParseValue(0);
    SkipWs();
    if (pos_ != s_.size()) Fail("unexpected data after the JSON value");
    return v;
  }

 private:
  [[noreturn]] void Fail(const std::string& msg) const { FailAt(pos_, msg); }
  [[noreturn]] void FailAt(size_t at, const std::string& msg) const {
    size_t line = 1, col = 1;
    for (size_t i = 0; i < at && i < s_.size(); ++i) {
      if (s_[i] == '\n') {
        ++line;
        col = 1;
      } else {
        ++col;
      }
    }
    throw ModelFormatError(source_ + ": invalid JSON at line " + std::to_string(line) +
                           " column " + std::to_string(col) + " (byte " + std::to_string(at) +
                           "): " + msg);
  }

  void SkipWs() {
    while (pos_ < s_.size()) {
      char c = s_[pos_];
      if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
        ++pos_;
      } else {
        break;
      }
    }
  }

  bool Eat(char c) {
    if (pos_ < s_.size() && s_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }

  void ExpectWord(const char* word) {
    size_t n = std::char_traits<char>::length(word);
    if (s_.substr(pos_, n) != word) Fail("invalid literal");
    pos_ += n;
  }

  Value ParseValue(int depth) {
    if (pos_ >= s_.size()) Fail("unexpected end of input");
    char c = s_[pos_];
    switch (c) {
      case '{': return ParseObject(depth + 1);
      case '[': return ParseArray(depth + 1);
      case '"': return Value::String(ParseString());
      case 't': ExpectWord("true"); return Value::Bool(true);
      case 'f': ExpectWord("false"); return Value::Bool(false);
      case 'n': ExpectWord("null"); return Value();
      default:
        if (c == '-' || (c >= '0' && c <= '9')) return ParseNumber();
        Fail(std::string("unexpected character '") + PrintableChar(c) + "'");
    }
  }

  static std::string PrintableChar(char c) {
    unsigned char u = static_cast<unsigned char>(c);
    if (u >= 0x20 && u < 0x7f) return std::string(1, c);
    char buf[8];
    std::snprintf(buf, sizeof(buf), "\\x%02x", u);
    return buf;
  }

  Value ParseObject(int depth) {
    if (depth > max_depth_) Fail("nesting deeper than " + std::to_string(max_depth_));
    ++pos_;  // '{'
    Value obj = Value::Object();
    SkipWs();
    if (Eat('}')) return obj;
    while (true) {
      SkipWs();
      if (pos_ >= s_.size() || s_[pos_] != '"') Fail("expected a string key");
      size_t key_at = pos_;
      std::string key = ParseString();
      SkipWs();
      if (!Eat(':')) Fail("expected ':' after object key");
      SkipWs();
      Value v = ParseValue(depth);
      if (obj.index_.count(key)) FailAt(key_at, "duplicate object key \"" + key + "\"");
      obj.index_.emplace(key, obj.object_.size());
      obj.object_.emplace_back(std::move(key), std::move(v));
      SkipWs();
      if (Eat(',')) continue;
      if (Eat('}')) return obj;
      Fail("expected ',' or '}' in object");
    }
  }

  Value ParseArray(int depth) {
    if (depth > max_depth_) Fail("nesting deeper than " + std::to_string(max_depth_));
    ++pos_;  // '['
    std::vector<Value> items;
    SkipWs();
    if (Eat(']')) return Value::Array(std::move(items));
    while (true) {
      SkipWs();
      items.push_back(ParseValue(depth));
      SkipWs();
      if (Eat(',')) continue;
      if (Eat(']')) return Value::Array(std::move(items));
      Fail("expected ',' or ']' in array");
    }
  }

  Value ParseNumber() {
    size_t start = pos_;
    bool integral = true;
    Eat('-');
    if (pos_ >= s_.size()) Fail("truncated number");
    if (s_[pos_] == '0') {
      ++pos_;
      if (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') Fail("leading zero in number");
    } else if (s_[pos_] >= '1' && s_[pos_] <= '9') {
      while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') ++pos_;
    } else {
      Fail("invalid number");
    }
    if (Eat('.')) {
      integral = false;
      if (pos_ >= s_.size() || s_[pos_] < '0' || s_[pos_] > '9') Fail("expected digits after '.'");
      while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') ++pos_;
    }
    if (pos_ < s_.size() && (s_[pos_] == 'e' || s_[pos_] == 'E')) {
      integral = false;
      ++pos_;
      if (!Eat('+')) Eat('-');
      if (pos_ >= s_.size() || s_[pos_] < '0' || s_[pos_] > '9') Fail("expected exponent digits");
      while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') ++pos_;
    }
    const char* b = s_.data() + start;
    const char* e = s_.data() + pos_;
    if (integral) {
      int64_t i = 0;
      auto r = std::from_chars(b, e, i);
      if (r.ec == std::errc() && r.ptr == e) return Value::Integer(i);
      // Too large for int64: keep it as a double.
    }
    double d = 0;
    auto r = std::from_chars(b, e, d);
    if (r.ptr != e) FailAt(start, "invalid number");
    if (r.ec == std::errc::result_out_of_range || !std::isfinite(d))
      FailAt(start, "number out of range");
    return Value::Number(d);
  }

  unsigned Hex4() {
    if (s_.size() - pos_ < 4) Fail("truncated \\u escape");
    unsigned v = 0;
    for (int i = 0; i < 4; ++i) {
      char c = s_[pos_++];
      v <<= 4;
      if (c >= '0' && c <= '9') v |= c - '0';
      else if (c >= 'a' && c <= 'f') v |= c - 'a' + 10;
      else if (c >= 'A' && c <= 'F') v |= c - 'A' + 10;
      else Fail("invalid hex digit in \\u escape");
    }
    return v;
  }

  static void AppendUtf8(std::string& out, uint32_t cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }

  // Validates one UTF-8 sequence starting at pos_ (first byte >= 0x80) and appends it.
  void CopyUtf8(std::string& out) {
    size_t at = pos_;
    unsigned char c = static_cast<unsigned char>(s_[pos_]);
    int len;
    uint32_t cp;
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
      cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      cp = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      cp = c & 0x07;
    } else {
      FailAt(at, "invalid UTF-8 in string");
    }
    if (s_.size() - pos_ < static_cast<size_t>(len)) FailAt(at, "truncated UTF-8 in string");
    for (int i = 1; i < len; ++i) {
      unsigned char cc = static_cast<unsigned char>(s_[pos_ + i]);
      if ((cc & 0xC0) != 0x80) FailAt(at, "invalid UTF-8 in string");
      cp = (cp << 6) | (cc & 0x3F);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
        (cp >= 0xD800 && cp <= 0xDFFF))
      FailAt(at, "invalid UTF-8 in string");
    out.append(s_.data() + pos_, len);
    pos_ += len;
  }

  std::string ParseString() {
    ++pos_;  // opening quote
    std::string out;
    while (true) {
      if (pos_ >= s_.size()) Fail("unterminated string");
      char c = s_[pos_];
      unsigned char u = static_cast<unsigned char>(c);
      if (c == '"') {
        ++pos_;
        return out;
      }
      if (u < 0x20) Fail("control character in string");
      if (u >= 0x80) {
        CopyUtf8(out);
        continue;
      }
      if (c != '\\') {
        out += c;
        ++pos_;
        continue;
      }
      ++pos_;
      if (pos_ >= s_.size()) Fail("unterminated escape");
      char e = s_[pos_++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          uint32_t cp = Hex4();
          if (cp >= 0xDC00 && cp <= 0xDFFF) Fail("unpaired low surrogate in \\u escape");
          if (cp >= 0xD800 && cp <= 0xDBFF) {
            if (s_.size() - pos_ < 2 || s_[pos_] != '\\' || s_[pos_ + 1] != 'u')
              Fail("unpaired high surrogate in \\u escape");
            pos_ += 2;
            uint32_t lo = Hex4();
            if (lo < 0xDC00 || lo > 0xDFFF) Fail("unpaired high surrogate in \\u escape");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          }
          AppendUtf8(out, cp);
          break;
        }
        default: Fail(std::string("invalid escape '\\") + PrintableChar(e) + "'");
      }
    }
  }

  std::string_view s_;
  const std::string& source_;
  int max_depth_;
  size_t pos_ = 0;
};

Value Parse(std::string_view text, const std::string& source, int max_depth) {
  return Parser(text, source, max_depth).ParseDocument();
}

Value ParseFile(const std::string& path, int max_depth, uint64_t max_bytes) {
  MappedFile file(path);
  if (file.size() > max_bytes)
    throw ModelFormatError(path + ": JSON file of " + std::to_string(file.size()) +
                           " bytes is larger than the limit of " + std::to_string(max_bytes));
  std::string_view text(reinterpret_cast<const char*>(file.data()), file.size());
  return Parse(text, path, max_depth);
}

static void SerializeString(const std::string& s, std::string& out) {
  out += '"';
  for (char c : s) {
    unsigned char u = static_cast<unsigned char>(c);
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (u < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", u);
          out += buf;
        } else {
          out += c;
        }
    }
  }
  out += '"';
}

std::string Quote(const std::string& s) {
  std::string out;
  SerializeString(s, out);
  return out;
}

static void SerializeTo(const Value& v, std::string& out) {
  switch (v.type()) {
    case Type::kNull: out += "null"; break;
    case Type::kBool: out += v.as_bool() ? "true" : "false"; break;
    case Type::kNumber: {
      if (v.is_integer()) {
        out += std::to_string(v.as_int());
      } else if (!std::isfinite(v.as_number())) {
        out += "null";
      } else {
        char buf[64];
        auto r = std::to_chars(buf, buf + sizeof(buf), v.as_number());
        out.append(buf, r.ptr);
      }
      break;
    }
    case Type::kString: SerializeString(v.as_string(), out); break;
    case Type::kArray: {
      out += '[';
      bool first = true;
      for (const auto& item : v.as_array()) {
        if (!first) out += ',';
        first = false;
        SerializeTo(item, out);
      }
      out += ']';
      break;
    }
    case Type::kObject: {
      out += '{';
      bool first = true;
      for (const auto& [k, item] : v.as_object()) {
        if (!first) out += ',';
        first = false;
        SerializeString(k, out);
        out += ':';
        SerializeTo(item, out);
      }
      out += '}';
      break;
    }
  }
}

std::string Serialize(const Value& value) {
  std::string out;
  SerializeTo(value, out);
  return out;
}

}  // namespace json
}  // namespace cascade
