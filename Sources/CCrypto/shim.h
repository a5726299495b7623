#pragma once
// OpenSSL's libcrypto (Debian libssl-dev): SHA-256 content hashes of adapter files.
#include <openssl/evp.h>
