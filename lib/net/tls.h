// Server TLS contexts (OpenSSL): TLS 1.2 and 1.3 only, strong AEAD ciphers,
// no compression, no renegotiation. When no certificate is configured a
// self-signed one is made at start (EC P-256, one year, SAN = host name).
#pragma once

#include <openssl/ssl.h>

#include <string>

#include "absl/status/statusor.h"

namespace smtpd::net {

// Returns a new SSL_CTX owned by the caller (SSL_CTX_free).
absl::StatusOr<SSL_CTX*> make_server_tls_context(const std::string& cert_file,
                                                 const std::string& key_file,
                                                 const std::string& hostname);

}  // namespace smtpd::net
