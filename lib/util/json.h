// Minimal JSON writer: objects, arrays, strings, numbers, booleans, null.
// Output is compact, one value per call to str(); read JSON back with yaml-cpp.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace sctrain::json {

inline void escape_into(std::string& out, std::string_view s) {
  out += '"';
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  out += '"';
}

// Streaming writer. Keys and values alternate inside objects:
//   Writer w; w.begin_object(); w.key("n").value(3); w.end_object(); w.str();
class Writer {
 public:
  Writer& begin_object() { sep(); out_ += '{'; first_.push_back(true); return *this; }
  Writer& end_object() { out_ += '}'; first_.pop_back(); return *this; }
  Writer& begin_array() { sep(); out_ += '['; first_.push_back(true); return *this; }
  Writer& end_array() { out_ += ']'; first_.pop_back(); return *this; }
  Writer& key(std::string_view k) {
    sep();
    escape_into(out_, k);
    out_ += ':';
    after_key_ = true;
    return *this;
  }
  Writer& value(std::string_view s) { sep(); escape_into(out_, s); return *this; }
  Writer& value(const char* s) { return value(std::string_view(s)); }
  Writer& value(const std::string& s) { return value(std::string_view(s)); }
  Writer& value(bool b) { sep(); out_ += b ? "true" : "false"; return *this; }
  Writer& value(int v) { return value(static_cast<int64_t>(v)); }
  Writer& value(int64_t v) { sep(); out_ += std::to_string(v); return *this; }
  Writer& value(uint64_t v) { sep(); out_ += std::to_string(v); return *this; }
  Writer& value(double v) {
    sep();
    if (!std::isfinite(v)) {
      out_ += "null";  // JSON has no NaN/Inf
    } else {
      char buf[32];
      std::snprintf(buf, sizeof buf, "%.10g", v);
      out_ += buf;
    }
    return *this;
  }
  Writer& null() { sep(); out_ += "null"; return *this; }
  template <typename T>
  Writer& value(const std::optional<T>& v) { return v ? value(*v) : null(); }
  template <typename T>
  Writer& value(const std::vector<T>& v) {
    begin_array();
    for (const auto& x : v) value(x);
    return end_array();
  }
  // key(k).value(v) in one call
  template <typename T>
  Writer& field(std::string_view k, const T& v) { key(k); return value(v); }
  const std::string& str() const { return out_; }

 private:
  void sep() {
    if (after_key_) { after_key_ = false; return; }
    if (!first_.empty()) {
      if (!first_.back()) out_ += ',';
      first_.back() = false;
    }
  }
  std::string out_;
  std::vector<bool> first_;
  bool after_key_ = false;
};

}  // namespace sctrain::json
