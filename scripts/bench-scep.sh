#!/usr/bin/env bash
# SCEP enrolment benchmark: smimeca vs Debian's scepserver on this machine,
# plus the in-process crypto limit, in one run. Prints a markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
N="${BENCH_N:-1000}"
C="${BENCH_C:-1,16}"
go build -o bin/scepbench ./test/scepbench
./bin/scepbench -smimeca bin/smimeca -scepserver "$(command -v scepserver)" -n "$N" -c "$C"
