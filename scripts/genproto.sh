#!/usr/bin/env bash
# Regenerates the committed Go code under proto/ from the .proto files.
# Installs protoc (Debian) and the Go plugins (pinned) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${HOME}/.cache/smimeca/bin"
mkdir -p "$BIN"
export PATH="$BIN:$PATH"
if ! command -v protoc >/dev/null; then
  apt-get update && apt-get install -y protobuf-compiler
fi
GOBIN="$BIN" go install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
GOBIN="$BIN" go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.2
protoc -I proto \
  --go_out=proto --go_opt=paths=source_relative \
  --go-grpc_out=proto --go-grpc_opt=paths=source_relative \
  proto/smimeca/v1/*.proto
echo "generated: $(ls proto/smimeca/v1/*.go | tr '\n' ' ')"
