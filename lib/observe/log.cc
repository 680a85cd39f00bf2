#include "lib/observe/log.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <ctime>

namespace smtpd::observe {
namespace {

std::atomic<int> g_min_level{static_cast<int>(Level::kInfo)};

const char* level_name(Level l) {
  switch (l) {
    case Level::kDebug: return "debug";
    case Level::kInfo: return "info";
    case Level::kWarn: return "warn";
    case Level::kError: return "error";
  }
  return "info";
}

std::string timestamp() {
  const auto now = std::chrono::system_clock::now();
  const auto us = std::chrono::duration_cast<std::chrono::microseconds>(now.time_since_epoch()).count();
  const time_t secs = static_cast<time_t>(us / 1000000);
  struct tm tm;
  gmtime_r(&secs, &tm);
  char buf[96];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ", tm.tm_year + 1900,
                tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                static_cast<int>(us % 1000000));
  return buf;
}

}  // namespace

void set_min_level(Level level) { g_min_level = static_cast<int>(level); }

void append_json_string(std::string& out, std::string_view s) {
  out += '"';
  for (char c : s) {
    const auto u = static_cast<unsigned char>(c);
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (u < 0x20 || u == 0x7f) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", u);
          out += buf;
        } else {
          out += c;  // UTF-8 passes through; invalid octets stay as they are
        }
    }
  }
  out += '"';
}

LogLine::LogLine(Level level, std::string_view event) : level_(level) {
  buf_ = "{\"ts\":\"" + timestamp() + "\",\"level\":\"" + level_name(level) + "\",\"event\":";
  append_json_string(buf_, event);
}

void LogLine::key(std::string_view k) {
  buf_ += ',';
  append_json_string(buf_, k);
  buf_ += ':';
}

LogLine& LogLine::add(std::string_view k, std::string_view value) {
  key(k);
  append_json_string(buf_, value);
  return *this;
}

LogLine& LogLine::add(std::string_view k, int64_t value) {
  key(k);
  buf_ += std::to_string(value);
  return *this;
}

LogLine& LogLine::add(std::string_view k, uint64_t value) {
  key(k);
  buf_ += std::to_string(value);
  return *this;
}

LogLine& LogLine::add(std::string_view k, bool value) {
  key(k);
  buf_ += value ? "true" : "false";
  return *this;
}

LogLine& LogLine::add(std::string_view k, double value) {
  key(k);
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.6g", value);
  buf_ += buf;
  return *this;
}

LogLine& LogLine::add(std::string_view k, const std::vector<std::string>& values) {
  key(k);
  buf_ += '[';
  for (size_t i = 0; i < values.size(); ++i) {
    if (i) buf_ += ',';
    append_json_string(buf_, values[i]);
  }
  buf_ += ']';
  return *this;
}

void LogLine::emit() {
  if (static_cast<int>(level_) < g_min_level.load(std::memory_order_relaxed)) return;
  buf_ += "}\n";
  size_t done = 0;
  while (done < buf_.size()) {
    const ssize_t n = ::write(STDERR_FILENO, buf_.data() + done, buf_.size() - done);
    if (n <= 0) return;  // nowhere to report a logging failure
    done += static_cast<size_t>(n);
  }
}

}  // namespace smtpd::observe
