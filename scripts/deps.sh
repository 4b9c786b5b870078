#!/usr/bin/env bash
# Installs what the tests need on a bare machine (Debian + Go):
#   Debian: scep (micromdm's scepclient/scepserver), openssl, curl (a device fetching its DDM assets over mutual TLS), gcc (for -race),
#           ldap-utils (ldapsearch) and slapd (the directory the publisher writes to),
#           certmonger and dbus (a stock SCEP client, on a private session bus),
#           softhsm2 (the PKCS#11 token of `make run` and the tests) and opensc
#           (pkcs11-tool, which reads the token's key attributes), postgresql (the
#           shared database of several nodes; tests start throw-away clusters),
#           libssl-dev and pkg-config (the libcrypto build tag: RSA key files in OpenSSL)
#   Go:     grpcurl and staticcheck, into ~/.cache/smimeca/bin
# apt-get update runs once, and only when something has to be installed.
set -euo pipefail
BIN="${HOME}/.cache/smimeca/bin"
mkdir -p "$BIN"

need_apt=()
command -v scepclient >/dev/null || need_apt+=(scep)
command -v openssl    >/dev/null || need_apt+=(openssl)
command -v curl       >/dev/null || need_apt+=(curl)
command -v gcc        >/dev/null || need_apt+=(gcc)
command -v ldapsearch >/dev/null || need_apt+=(ldap-utils)
[ -x /usr/sbin/slapd ]           || need_apt+=(slapd)
[ -x /usr/sbin/certmonger ]      || need_apt+=(certmonger)
command -v dbus-daemon >/dev/null || need_apt+=(dbus)
command -v softhsm2-util >/dev/null || need_apt+=(softhsm2)
command -v pkcs11-tool >/dev/null || need_apt+=(opensc)
ls -d /usr/lib/postgresql/*/bin >/dev/null 2>&1 || need_apt+=(postgresql)
command -v pkg-config >/dev/null || need_apt+=(pkg-config)
[ -f /usr/include/openssl/evp.h ] || need_apt+=(libssl-dev)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "deps: apt-get install ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

GRPCURL_VERSION=v1.9.3
# go install leaves no version in the binary; a stamp file records it.
if [ ! -x "$BIN/grpcurl" ] || [ ! -f "$BIN/.grpcurl-${GRPCURL_VERSION}" ]; then
  echo "deps: go install grpcurl@${GRPCURL_VERSION}"
  GOBIN="$BIN" go install "github.com/fullstorydev/grpcurl/cmd/grpcurl@${GRPCURL_VERSION}"
  touch "$BIN/.grpcurl-${GRPCURL_VERSION}"
fi
STATICCHECK_VERSION=v0.8.2 # staticcheck 2026.2.2, for Go 1.26
if [ ! -x "$BIN/staticcheck" ] || [ ! -f "$BIN/.staticcheck-${STATICCHECK_VERSION}" ]; then
  echo "deps: go install staticcheck@${STATICCHECK_VERSION}"
  GOBIN="$BIN" go install "honnef.co/go/tools/cmd/staticcheck@${STATICCHECK_VERSION}"
  touch "$BIN/.staticcheck-${STATICCHECK_VERSION}"
fi
echo "deps: $(command -v scepclient), $(openssl version | cut -d' ' -f1-2), softhsm2 $(softhsm2-util --version), $(command -v ldapsearch), /usr/sbin/slapd, grpcurl ${GRPCURL_VERSION}, staticcheck ${STATICCHECK_VERSION}"
