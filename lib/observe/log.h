// Structured logs: one JSON object per line on stderr, written with a
// single write(2) so lines from different threads never interleave.
// Never log message bodies or AUTH secrets.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace smtpd::observe {

enum class Level { kDebug, kInfo, kWarn, kError };

// Builds one log line: LogLine(Level::kInfo, "transaction").add("id", x).emit().
class LogLine {
 public:
  LogLine(Level level, std::string_view event);
  LogLine& add(std::string_view key, std::string_view value);
  LogLine& add(std::string_view key, const char* value) { return add(key, std::string_view(value)); }
  LogLine& add(std::string_view key, const std::string& value) { return add(key, std::string_view(value)); }
  LogLine& add(std::string_view key, int64_t value);
  LogLine& add(std::string_view key, uint64_t value);
  LogLine& add(std::string_view key, int value) { return add(key, static_cast<int64_t>(value)); }
  LogLine& add(std::string_view key, bool value);
  LogLine& add(std::string_view key, double value);
  LogLine& add(std::string_view key, const std::vector<std::string>& values);
  void emit();

 private:
  void key(std::string_view k);
  void text_value(std::string_view k, std::string_view rendered);
  Level level_;
  bool text_;
  std::string event_;
  std::string queue_id_;  // text format: shown first, as Postfix does
  std::string buf_;
};

void set_min_level(Level level);
// Log format: false (default) one JSON object per line; true a
// Postfix-like human line: "TIME smtpd[PID]: QUEUEID: event: key=value, ...".
void set_text_format(bool text);
// Appends s to out as a JSON string (with quotes), escaping as RFC 8259 7.
void append_json_string(std::string& out, std::string_view s);

}  // namespace smtpd::observe
