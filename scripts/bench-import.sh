#!/usr/bin/env bash
# Bulk PFX import benchmark against a real Vault; prints a markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
export SMIMECA_VAULT_BIN="$(./scripts/vault.sh)"
go build -o bin/importbench ./tools/importbench
./bin/importbench -smimeca bin/smimeca -n "${BENCH_N:-10000}" -users "${BENCH_USERS:-1000}" -c "${BENCH_C:-8}"
