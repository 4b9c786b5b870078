#!/usr/bin/env bash
# Cost flat in the work (#12): enrolments/s and GetUserBundle p50/p99 on
# fresh stores and on stores holding SCALE_CERTS issued certificates over
# SCALE_DEVICES devices and SCALE_USERS users × 4 escrowed certificates, for
# bbolt and PostgreSQL, and 3 nodes vs 1 on the full PostgreSQL store; prints
# a markdown table. The default (a million certificates) takes about an hour
# on a 2-core machine and up to ~25 GB of disk under $TMPDIR (the stores
# take ~10 GB; PostgreSQL may keep up to 16 GB of WAL with -pg-opts).
set -euo pipefail
cd "$(dirname "$0")/.."
export SMIMECA_VAULT_BIN="$(./scripts/vault.sh)"
go build -o bin/scalebench ./tools/scalebench
./bin/scalebench -smimeca bin/smimeca -certs "${SCALE_CERTS:-1000000}" -devices "${SCALE_DEVICES:-250000}" \
  -users "${SCALE_USERS:-250000}" -rounds "${BENCH_RUNS:-3}" "$@"
