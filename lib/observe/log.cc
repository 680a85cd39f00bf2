#include "lib/observe/log.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <ctime>

namespace smtpd::observe {
namespace {

std::atomic<int> g_min_level{static_cast<int>(Level::kInfo)};
std::atomic<bool> g_text{false};

// Text format: bare when safe, else double-quoted with JSON escapes.
std::string text_quote(std::string_view s) {
  bool plain = !s.empty();
  for (char c : s) {
    const auto u = static_cast<unsigned char>(c);
    plain = plain && u > 0x20 && u != 0x7f && c != '"' && c != ',' && c != '=';
  }
  if (plain) return std::string(s);
  std::string out;
  append_json_string(out, s);
  return out;
}

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
void set_text_format(bool text) { g_text = text; }

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

LogLine::LogLine(Level level, std::string_view event)
    : level_(level), text_(g_text.load(std::memory_order_relaxed)), event_(event) {
  if (text_) return;
  buf_ = "{\"ts\":\"" + timestamp() + "\",\"level\":\"" + level_name(level) + "\",\"event\":";
  append_json_string(buf_, event);
}

void LogLine::key(std::string_view k) {
  buf_ += ',';
  append_json_string(buf_, k);
  buf_ += ':';
}

void LogLine::text_value(std::string_view k, std::string_view rendered) {
  buf_ += buf_.empty() ? "" : ", ";
  buf_ += k;
  buf_ += '=';
  buf_ += rendered;
}

LogLine& LogLine::add(std::string_view k, std::string_view value) {
  if (text_) {
    if (k == "queue_id") {
      queue_id_ = std::string(value);
    } else if (k == "from" || k == "to") {
      text_value(k, "<" + text_quote(value).append(">"));
    } else {
      text_value(k, value.empty() ? "\"\"" : text_quote(value));
    }
    return *this;
  }
  key(k);
  append_json_string(buf_, value);
  return *this;
}

LogLine& LogLine::add(std::string_view k, int64_t value) {
  if (text_) {
    text_value(k, std::to_string(value));
    return *this;
  }
  key(k);
  buf_ += std::to_string(value);
  return *this;
}

LogLine& LogLine::add(std::string_view k, uint64_t value) {
  if (text_) {
    text_value(k, std::to_string(value));
    return *this;
  }
  key(k);
  buf_ += std::to_string(value);
  return *this;
}

LogLine& LogLine::add(std::string_view k, bool value) {
  if (text_) {
    text_value(k, value ? "yes" : "no");
    return *this;
  }
  key(k);
  buf_ += value ? "true" : "false";
  return *this;
}

LogLine& LogLine::add(std::string_view k, double value) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.6g", value);
  if (text_) {
    text_value(k, buf);
    return *this;
  }
  key(k);
  buf_ += buf;
  return *this;
}

LogLine& LogLine::add(std::string_view k, const std::vector<std::string>& values) {
  if (text_) {
    std::string joined;
    for (size_t i = 0; i < values.size(); ++i) {
      joined += (i ? "," : "");
      joined += (k == "to" || k == "from") ? "<" + text_quote(values[i]) + ">" : text_quote(values[i]);
    }
    text_value(k, joined.empty() ? "\"\"" : joined);
    return *this;
  }
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
  if (text_) {
    // "2026-12-05T00:41:36.123456Z smtpd[812]: warn: 000661D7A72A4E18: transaction: from=<a@b>, ..."
    std::string line = timestamp() + " smtpd[" + std::to_string(::getpid()) + "]: ";
    if (level_ != Level::kInfo) line += std::string(level_name(level_)) + ": ";
    if (!queue_id_.empty()) line += queue_id_ + ": ";
    line += event_;
    if (!buf_.empty()) line += ": " + buf_;
    buf_ = std::move(line);
    buf_ += '\n';
  } else {
    buf_ += "}\n";
  }
  size_t done = 0;
  while (done < buf_.size()) {
    const ssize_t n = ::write(STDERR_FILENO, buf_.data() + done, buf_.size() - done);
    if (n <= 0) return;  // nowhere to report a logging failure
    done += static_cast<size_t>(n);
  }
}

}  // namespace smtpd::observe
