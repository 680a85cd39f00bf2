// RFC 5321 section 4.1.2 address grammar (Reverse-path / Forward-path),
// extended by RFC 6531 section 3.3 for UTF-8 local parts and U-label domains.
// Pure functions, no I/O: used by the server session, the SMTP client, the
// control plane and the fuzzers.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace smtpd::smtp {

struct Mailbox {
  std::string local;   // as written, quoted string kept with its quotes
  std::string domain;  // as written; address literals keep their brackets
  bool domain_is_literal = false;

  bool empty() const { return local.empty() && domain.empty(); }
  // "local@domain", or "local" alone for <postmaster>.
  std::string str() const;
  // Domain in lower case for policy lookups (ASCII only: U-labels unchanged).
  std::string domain_lower() const;
};

struct Path {
  bool null = false;        // "<>" (RFC 5321 4.5.5)
  bool postmaster = false;  // "<postmaster>" without a domain (4.5.1)
  Mailbox mailbox;
  bool utf8 = false;        // contains non-ASCII octets

  // The path without angle brackets: "" for the null path.
  std::string str() const;
};

enum class PathError {
  kNone,
  kSyntax,
  kTooLong,           // RFC 5321 4.5.3.1: local 64, domain 255, path 256 octets
  kUtf8NotPermitted,  // non-ASCII without SMTPUTF8 (RFC 6531 3.4)
};

struct PathOptions {
  bool allow_null = false;        // reverse path
  bool allow_postmaster = false;  // forward path
  bool allow_utf8 = false;        // the transaction said SMTPUTF8
};

struct PathParse {
  PathError error = PathError::kNone;
  Path path;
  size_t consumed = 0;  // octets of input up to and including '>'
};

// Parses a path that starts at input[0] ('<'); the rest of input (ESMTP
// parameters) is left alone. Source routes (A-d-l) are accepted and dropped
// as RFC 5321 4.1.1.3 and appendix C require.
PathParse parse_path(std::string_view input, const PathOptions& options);

// Parses a bare "local@domain" (no angle brackets), as the control plane and
// tests receive addresses.
PathParse parse_mailbox(std::string_view input, bool allow_utf8);

// Length of a well-formed UTF-8 sequence for a non-ASCII lead octet at s[i]
// (RFC 3629), or 0 when the octets there are not valid UTF-8.
size_t utf8_sequence_length(std::string_view s, size_t i);

// RFC 3461 section 4: xtext ("+" followed by two upper-case hex digits for
// octets outside "!".."~", "+" and "=").
bool is_xtext(std::string_view s);

}  // namespace smtpd::smtp
