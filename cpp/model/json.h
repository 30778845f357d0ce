// A small, strict JSON parser (RFC 8259) for safetensors headers, config.json and index files.
// Strict: no comments, no trailing commas, no NaN/Infinity, no leading zeros, valid UTF-8 only,
// no unpaired surrogates, no duplicate object keys, nesting bounded by max_depth. Errors are
// ModelFormatError naming the source, line, column and byte offset.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace cascade {
namespace json {

enum class Type { kNull, kBool, kNumber, kString, kArray, kObject };
const char* TypeName(Type type);  // "null", "boolean", "number", "string", "array", "object"

class Value {
 public:
  Value() = default;  // null
  static Value Null() { return Value(); }
  static Value Bool(bool b);
  static Value Number(double d);
  static Value Integer(int64_t i);
  static Value String(std::string s);
  static Value Array(std::vector<Value> items);
  static Value Object();  // empty; add members with Set()

  Type type() const { return type_; }
  bool is_null() const { return type_ == Type::kNull; }
  bool is_bool() const { return type_ == Type::kBool; }
  bool is_number() const { return type_ == Type::kNumber; }
  // A number written without fraction or exponent that fits int64 (e.g. data_offsets).
  bool is_integer() const { return type_ == Type::kNumber && is_int_; }
  bool is_string() const { return type_ == Type::kString; }
  bool is_array() const { return type_ == Type::kArray; }
  bool is_object() const { return type_ == Type::kObject; }

  // Typed accessors; throw ModelFormatError("JSON value is <type>, not <wanted>") on a mismatch.
  bool as_bool() const;
  double as_number() const;
  int64_t as_int() const;  // only for is_integer()
  const std::string& as_string() const;
  const std::vector<Value>& as_array() const;
  const std::vector<std::pair<std::string, Value>>& as_object() const;  // in file order

  // Object member by key, or nullptr (also nullptr when this is not an object).
  const Value* find(const std::string& key) const;
  // Adds or replaces an object member (this must be an object).
  void Set(const std::string& key, Value value);
  size_t size() const;  // array items or object members; 0 otherwise

 private:
  Type type_ = Type::kNull;
  bool bool_ = false;
  bool is_int_ = false;
  double number_ = 0;
  int64_t int_ = 0;
  std::string string_;
  std::vector<Value> array_;
  std::vector<std::pair<std::string, Value>> object_;
  std::unordered_map<std::string, size_t> index_;
  friend class Parser;
};

constexpr int kDefaultMaxDepth = 64;

// Parses a complete JSON text (whitespace around one value). `source` names the file in errors.
Value Parse(std::string_view text, const std::string& source, int max_depth = kDefaultMaxDepth);
// Reads and parses a file; refuses files larger than max_bytes.
Value ParseFile(const std::string& path, int max_depth = kDefaultMaxDepth,
                uint64_t max_bytes = uint64_t{256} << 20);

// Serialises (compact, keys in stored order). Strings are escaped; non-finite numbers become null.
std::string Serialize(const Value& value);
// A string as a JSON string literal (quoted and escaped), as Serialize writes strings.
std::string Quote(const std::string& s);

}  // namespace json
}  // namespace cascade
