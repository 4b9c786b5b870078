#!/usr/bin/env bash
# Starts a throw-away PostgreSQL cluster (Debian's package) in DIR, listening
# on 127.0.0.1:PORT with trust authentication for the local user "smimeca",
# and prints its DSN; `scripts/postgres.sh DIR stop` stops it. When run as
# root the cluster runs as the unprivileged "postgres" user (DIR must be
# reachable by it, e.g. under /tmp). For tests and `make cluster`: a
# production database is the operator's, with its own users and TLS.
# PG_OPTS adds server settings ("-c shared_buffers=2GB …"), for benchmarks.
set -euo pipefail
DIR="$1"
PORT="${2:-55432}"
BIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)"
if [ -z "$BIN" ]; then
  echo "postgres.sh: apt-get install postgresql" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null
  BIN="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
fi
AS=()
if [ "$(id -u)" -eq 0 ]; then AS=(runuser -u postgres --); fi
if [ "$PORT" = "stop" ]; then
  "${AS[@]}" "$BIN/pg_ctl" -D "$DIR/data" -m fast -w stop >/dev/null
  exit 0
fi
mkdir -p "$DIR"
chmod 700 "$DIR"
if [ "$(id -u)" -eq 0 ]; then chown postgres: "$DIR"; fi
if [ ! -f "$DIR/data/PG_VERSION" ]; then
  "${AS[@]}" "$BIN/initdb" -D "$DIR/data" -U smimeca --auth=trust -E UTF8 --no-instructions >/dev/null
fi
"${AS[@]}" "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/log" -w \
  -o "-c listen_addresses=127.0.0.1 -p $PORT -k $DIR -c max_connections=200 ${PG_OPTS:-}" start >/dev/null
echo "postgres://smimeca@127.0.0.1:${PORT}/smimeca?sslmode=disable"
