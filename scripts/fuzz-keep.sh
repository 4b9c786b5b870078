#!/usr/bin/env bash
# Copies the inputs Go's fuzzer found interesting (kept in its cache, not in
# the repository) into each target's testdata/fuzz directory, so that every
# `go test` run replays them. Run it after a long `make fuzz FUZZTIME=2000000x`;
# `make fuzz-keep` passes the targets (package/FuzzName) as arguments.
set -euo pipefail
cd "$(dirname "$0")/.."
cache="$(go env GOCACHE)/fuzz/$(go list -m)"
for target in "$@"; do
  pkg="${target%/*}" name="${target##*/}"
  src="$cache/$pkg/$name" dst="$pkg/testdata/fuzz/$name"
  [ -d "$src" ] || continue
  mkdir -p "$dst"
  n=0
  for f in "$src"/*; do
    [ -e "$dst/$(basename "$f")" ] || { cp "$f" "$dst/"; n=$((n + 1)); }
  done
  echo "fuzz-keep: $target: $n new inputs ($(ls "$dst" | wc -l) kept)"
done
