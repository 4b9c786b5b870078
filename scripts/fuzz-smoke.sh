#!/usr/bin/env bash
# The fuzz smoke of `make test`: every target for FUZZTIME runs (default
# 5000x), two targets at a time with one worker each — on two cores one
# target's build and link overlap the other's fuzzing. A failing target's
# whole output is printed; the exit status is the first failure's.
# Usage: scripts/fuzz-smoke.sh pkg/FuzzName...
set -euo pipefail
cd "$(dirname "$0")/.."
FUZZTIME="${FUZZTIME:-5000x}"
GO="${GO:-go}"
export GO FUZZTIME
one() {
  local t="$1" out
  out="$(mktemp)"
  if "$GO" test "./${t%/*}/" -run '^$' -fuzz "^${t##*/}\$" -fuzztime "$FUZZTIME" -fuzzminimizetime 50x -parallel 1 >"$out" 2>&1; then
    echo "ok    $t ($(grep -o 'execs: [0-9]*' "$out" | tail -1))"
    rm -f "$out"
  else
    cat "$out"; rm -f "$out"
    echo "FAIL  $t"
    return 1
  fi
}
export -f one
printf '%s\n' "$@" | xargs -P "${FUZZ_LANES:-2}" -I{} bash -c 'one "$@"' _ {}
