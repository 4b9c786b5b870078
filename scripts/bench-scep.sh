#!/usr/bin/env bash
# SCEP enrolment benchmark: smimeca vs Debian's scepserver on this machine,
# plus the in-process crypto limit, in one run; then smimeca alone in the
# labs static-challenge mode (every certificate on one device record), and
# renewals on a fresh device vs one with 1 000 renewals behind it.
# Prints markdown tables.
set -euo pipefail
cd "$(dirname "$0")/.."
N="${BENCH_N:-1000}"
C="${BENCH_C:-1,16}"
go build -o bin/scepbench ./test/scepbench
echo "## one registered device per enrolment"
./bin/scepbench -smimeca bin/smimeca -scepserver "$(command -v scepserver)" -n "$N" -c "$C"
echo
echo "## static-challenge mode (smimeca alone)"
./bin/scepbench -smimeca bin/smimeca -scepserver '' -static -n "$N" -c "$C"
echo
echo "## renewals by device history (go test -bench, in-process)"
go test ./policy/ -run '^$' -bench RenewalByHistory -benchtime 300x -count 3 | grep -E '^Benchmark'
