#!/usr/bin/env bash
# Builds HashiCorp Vault from the Go module proxy (tools/vault) once and
# caches it under ~/.cache/smimeca/vault-<version>/vault; prints its path.
# About 10 CPU-minutes cold on 2 cores, instant afterwards.
# Do not run `go mod tidy` in tools/vault (test-only imports of Vault's
# packages are not served by the proxy); v1.21.4 does not build.
set -euo pipefail
VERSION=1.21.0
OUT="${HOME}/.cache/smimeca/vault-${VERSION}/vault"
if [ -x "$OUT" ] && "$OUT" version 2>/dev/null | grep -q "v${VERSION}"; then
  echo "$OUT"; exit 0
fi
cd "$(dirname "$0")/../tools/vault"
mkdir -p "$(dirname "$OUT")"
echo "vault: building v${VERSION} (first time only, several minutes)…" >&2
go build -mod=mod -trimpath -ldflags="-s -w -X github.com/hashicorp/vault/version.Version=${VERSION}" -o "$OUT.tmp" .
mv "$OUT.tmp" "$OUT"
"$OUT" version >&2
echo "$OUT"
