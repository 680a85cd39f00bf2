#include "control/ctl_format.h"

#include <google/protobuf/util/json_util.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <functional>
#include <map>
#include <sstream>

#include "lib/observe/log.h"

namespace smtpd::control {
namespace {

std::string shorten(const std::string& s, size_t n) {
  if (s.size() <= n) return s;
  return s.substr(0, n - 3) + "...";
}

void emit_yaml(YAML::Emitter& out, const YAML::Node& n) {
  if (n.IsMap()) {
    // Sorted keys: protobuf prints map fields in no fixed order.
    std::map<std::string, YAML::Node> sorted;
    for (const auto& kv : n) sorted.emplace(kv.first.Scalar(), kv.second);
    out << YAML::BeginMap;
    for (const auto& [k, v] : sorted) {
      out << YAML::Key << k << YAML::Value;
      emit_yaml(out, v);
    }
    out << YAML::EndMap;
  } else if (n.IsSequence()) {
    out << YAML::BeginSeq;
    for (const auto& item : n) emit_yaml(out, item);
    out << YAML::EndSeq;
  } else if (n.IsScalar()) {
    // JSON strings stay strings in YAML: quote what would read as another type.
    const std::string& v = n.Scalar();
    if (n.Tag() == "!" || v.empty()) {
      out << YAML::DoubleQuoted << v;
    } else {
      out << v;
    }
  } else {
    out << YAML::Null;
  }
}

YAML::Node json_to_node(const std::string& json) { return YAML::Load(json); }

bool json_number(const std::string& v) {
  size_t i = 0;
  if (i < v.size() && v[i] == '-') ++i;
  const size_t digits = i;
  while (i < v.size() && std::isdigit(static_cast<unsigned char>(v[i]))) ++i;
  if (i == digits) return false;
  if (i < v.size() && v[i] == '.') {
    const size_t frac = ++i;
    while (i < v.size() && std::isdigit(static_cast<unsigned char>(v[i]))) ++i;
    if (i == frac) return false;
  }
  return i == v.size();
}

// JSON strings: the escaping the logs use (RFC 8259 7).
void json_string(const std::string& v, std::string& out) { observe::append_json_string(out, v); }

// YAML (a superset of JSON) to JSON text, for protobuf's JSON parser.
void node_to_json(const YAML::Node& x, std::string& out) {
  if (x.IsMap()) {
    out += '{';
    bool first = true;
    for (const auto& kv : x) {
      if (!first) out += ',';
      first = false;
      json_string(kv.first.Scalar(), out);
      out += ':';
      node_to_json(kv.second, out);
    }
    out += '}';
  } else if (x.IsSequence()) {
    out += '[';
    bool first = true;
    for (const auto& item : x) {
      if (!first) out += ',';
      first = false;
      node_to_json(item, out);
    }
    out += ']';
  } else if (!x.IsDefined() || x.IsNull()) {
    out += "null";
  } else {
    const std::string& v = x.Scalar();
    const bool plain = x.Tag() != "!";
    if (plain && (json_number(v) || v == "true" || v == "false")) {
      out += v;
    } else {
      json_string(v, out);
    }
  }
}

// Canonical JSON: keys sorted, two-space indentation, strings kept as
// strings (protobuf quotes 64-bit numbers), UTF-8 as is.
void write_json(const YAML::Node& x, std::string& out, int depth, bool pretty) {
  const std::string pad = pretty ? "\n" + std::string(2 * (depth + 1), ' ') : "";
  const std::string end = pretty ? "\n" + std::string(2 * depth, ' ') : "";
  if (x.IsMap()) {
    std::map<std::string, YAML::Node> sorted;
    for (const auto& kv : x) sorted.emplace(kv.first.Scalar(), kv.second);
    if (sorted.empty()) {
      out += "{}";
      return;
    }
    out += '{';
    bool first = true;
    for (const auto& [k, v] : sorted) {
      out += (first ? "" : ",") + pad;
      first = false;
      json_string(k, out);
      out += pretty ? ": " : ":";
      write_json(v, out, depth + 1, pretty);
    }
    out += end + "}";
  } else if (x.IsSequence()) {
    if (x.size() == 0) {
      out += "[]";
      return;
    }
    out += '[';
    bool first = true;
    for (const auto& item : x) {
      out += (first ? "" : ",") + pad;
      first = false;
      write_json(item, out, depth + 1, pretty);
    }
    out += end + "]";
  } else {
    node_to_json(x, out);
  }
}

}  // namespace

std::string render_table(const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> width;
  for (const auto& r : rows) {
    if (width.size() < r.size()) width.resize(r.size(), 0);
    for (size_t i = 0; i < r.size(); ++i) width[i] = std::max(width[i], r[i].size());
  }
  std::string out;
  for (const auto& r : rows) {
    std::string line;
    for (size_t i = 0; i < r.size(); ++i) {
      line += r[i];
      if (i + 1 < r.size()) line += std::string(width[i] - r[i].size() + 3, ' ');
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    out += line + "\n";
  }
  return out;
}

std::string human_age(int64_t seconds) {
  if (seconds < 0) return "-";
  if (seconds < 120) return std::to_string(seconds) + "s";
  if (seconds < 2 * 3600) return std::to_string(seconds / 60) + "m";
  if (seconds < 2 * 86400) return std::to_string(seconds / 3600) + "h";
  return std::to_string(seconds / 86400) + "d";
}

std::string human_size(uint64_t n) {
  if (n < 1024) return std::to_string(n);
  const char* units = "KMGT";
  double v = static_cast<double>(n);
  int u = -1;
  while (v >= 1024 && u < 3) {
    v /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, v < 10 ? "%.1f%c" : "%.0f%c", v, units[u]);
  return buf;
}

std::string human_next(int64_t next_unix_ms, int64_t now_ms) {
  if (next_unix_ms == 0) return "-";
  if (next_unix_ms <= now_ms) return "now";
  return "in " + human_age((next_unix_ms - now_ms + 999) / 1000);
}

std::string to_json(const google::protobuf::Message& m, bool multiline) {
  google::protobuf::util::JsonPrintOptions o;
  o.add_whitespace = multiline;
  o.always_print_primitive_fields = true;  // stable: every field, even when zero
  o.preserve_proto_field_names = true;     // the .proto names, as documented
  std::string raw;
  (void)google::protobuf::util::MessageToJsonString(m, &raw, o);
  std::string out;
  write_json(YAML::Load(raw), out, 0, multiline);
  if (multiline) out += "\n";
  return out;
}

std::string json_to_yaml(const std::string& json) {
  YAML::Emitter out;
  emit_yaml(out, json_to_node(json));
  return std::string(out.c_str()) + "\n";
}

absl::Status from_json_or_yaml(const std::string& text, google::protobuf::Message* m) {
  std::string json = text;
  const size_t first = text.find_first_not_of(" \t\r\n");
  if (first == std::string::npos) return absl::InvalidArgumentError("empty document");
  if (text[first] != '{') {
    try {
      json.clear();
      node_to_json(YAML::Load(text), json);
    } catch (const YAML::Exception& e) {
      return absl::InvalidArgumentError(std::string("not YAML: ") + e.what());
    }
  }
  google::protobuf::util::JsonParseOptions o;
  o.ignore_unknown_fields = false;
  const auto s = google::protobuf::util::JsonStringToMessage(json, m, o);
  if (!s.ok()) return absl::InvalidArgumentError(std::string(s.message()));
  return absl::OkStatus();
}

std::string state_name(v1::MessageState s) {
  switch (s) {
    case v1::MESSAGE_STATE_QUEUED: return "queued";
    case v1::MESSAGE_STATE_DEFERRED: return "deferred";
    case v1::MESSAGE_STATE_HELD: return "held";
    case v1::MESSAGE_STATE_DELIVERING: return "delivering";
    default: return "unknown";
  }
}

std::string recipient_state_name(v1::RecipientState s) {
  switch (s) {
    case v1::RECIPIENT_STATE_QUEUED: return "queued";
    case v1::RECIPIENT_STATE_DEFERRED: return "deferred";
    case v1::RECIPIENT_STATE_DELIVERING: return "delivering";
    case v1::RECIPIENT_STATE_DELIVERED: return "delivered";
    case v1::RECIPIENT_STATE_FAILED: return "failed";
    default: return "unknown";
  }
}

std::vector<std::vector<std::string>> message_rows(const std::vector<v1::MessageSummary>& messages, bool wide,
                                                   int64_t now_ms, const std::string& first_column,
                                                   const std::vector<std::string>& first_values) {
  std::vector<std::vector<std::string>> rows;
  std::vector<std::string> header = {"ID", "AGE", "STATE", "SIZE", "FROM", "TO", "ATTEMPTS", "NEXT", "LAST REPLY"};
  if (!first_column.empty()) header.insert(header.begin(), first_column);
  rows.push_back(header);
  for (size_t k = 0; k < messages.size(); ++k) {
    const v1::MessageSummary& m = messages[k];
    std::string to;
    if (wide) {
      for (int i = 0; i < m.recipients_size(); ++i) to += (i ? "," : "") + m.recipients(i);
    } else if (m.recipients_size() > 0) {
      to = shorten(m.recipients(0), 32);
      if (m.recipients_size() > 1) to += " +" + std::to_string(m.recipients_size() - 1);
    }
    if (to.empty()) to = "-";
    const std::string from = m.sender().empty() ? "<>" : (wide ? m.sender() : shorten(m.sender(), 32));
    const std::string reply = m.last_reply().empty() ? "-" : (wide ? m.last_reply() : shorten(m.last_reply(), 48));
    std::vector<std::string> row = {m.id(),
                                    human_age((now_ms - m.arrival_unix_ms()) / 1000),
                                    state_name(m.state()),
                                    human_size(m.size()),
                                    from,
                                    to,
                                    std::to_string(m.attempts()),
                                    human_next(m.next_attempt_unix_ms(), now_ms),
                                    reply};
    if (!first_column.empty()) row.insert(row.begin(), k < first_values.size() ? first_values[k] : "");
    rows.push_back(std::move(row));
  }
  return rows;
}

std::string line_diff(const std::string& before, const std::string& after) {
  auto split = [](const std::string& s) {
    std::vector<std::string> out;
    std::istringstream in(s);
    for (std::string line; std::getline(in, line);) out.push_back(line);
    return out;
  };
  const auto a = split(before), b = split(after);
  if (a == b) return "";
  // Longest common subsequence, then walk it.
  std::vector<std::vector<int>> lcs(a.size() + 1, std::vector<int>(b.size() + 1, 0));
  for (size_t i = a.size(); i-- > 0;) {
    for (size_t j = b.size(); j-- > 0;) {
      lcs[i][j] = a[i] == b[j] ? lcs[i + 1][j + 1] + 1 : std::max(lcs[i + 1][j], lcs[i][j + 1]);
    }
  }
  std::string out;
  size_t i = 0, j = 0;
  while (i < a.size() || j < b.size()) {
    if (i < a.size() && j < b.size() && a[i] == b[j]) {
      out += "  " + a[i] + "\n";
      ++i;
      ++j;
    } else if (j < b.size() && (i == a.size() || lcs[i][j + 1] >= lcs[i + 1][j])) {
      out += "+ " + b[j++] + "\n";
    } else {
      out += "- " + a[i++] + "\n";
    }
  }
  return out;
}

}  // namespace smtpd::control
