#!/usr/bin/env bash
# GetUserBundle benchmark against a real Vault; prints a markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
export SMIMECA_VAULT_BIN="$(./scripts/vault.sh)"
go build -o bin/bundlebench ./tools/bundlebench
./bin/bundlebench -smimeca bin/smimeca -calls "${BENCH_CALLS:-200}"
