#!/usr/bin/env bash
# SCEP enrolment benchmark: smimeca with its CA keys in files and in a
# SoftHSM2 token (PKCS#11) vs Debian's scepserver on this machine, each key
# store's in-process crypto limit beside them, BENCH_RUNS rounds (default 5;
# the ratios' median and spread); then smimeca alone in the
# labs static-challenge mode (every certificate on one device record), and
# renewals on a fresh device vs one with 1 000 renewals behind it.
# Prints markdown tables.
set -euo pipefail
cd "$(dirname "$0")/.."
N="${BENCH_N:-1000}"
C="${BENCH_C:-1,16}"
RUNS="${BENCH_RUNS:-5}"
go build -tags "${SMIMECA_GOTAGS:-}" -o bin/scepbench ./tools/scepbench
echo "## one registered device per enrolment"
./bin/scepbench -smimeca bin/smimeca -scepserver "$(command -v scepserver)" -kms softkms,softhsm -runs "$RUNS" -n "$N" -c "$C"
echo
echo "## static-challenge mode (smimeca alone)"
./bin/scepbench -smimeca bin/smimeca -scepserver '' -kms softkms -static -n "$N" -c "$C"
echo
echo "## renewals by device history (go test -bench, in-process)"
go test ./policy/ -run '^$' -bench RenewalByHistory -benchtime 300x -count 3 | grep -E '^Benchmark'
