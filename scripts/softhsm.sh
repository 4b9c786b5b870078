#!/usr/bin/env bash
# Creates, once, the SoftHSM2 token smimeca keeps its CA keys in, under DIR
# (default: data/softhsm), and prints the token's --kms URI:
#   DIR/softhsm2.conf  SoftHSM2's configuration: export SOFTHSM2_CONF=DIR/softhsm2.conf
#   DIR/tokens/        the token (SoftHSM2 stores private keys encrypted under the PIN)
#   DIR/pin            the user PIN smimeca logs in with (0600; or pass $SMIMECA_KMS_PIN)
#   DIR/so-pin         the security officer's PIN, to reset the user PIN (0600)
# `make run` and the tests use it; a hardware HSM needs none of this, only its
# vendor's module in the URI. Installs softhsm2 (Debian) when it is missing.
set -euo pipefail
DIR="${1:-data/softhsm}"
LABEL="${SMIMECA_TOKEN_LABEL:-smimeca}"
find_module() {
  MODULE=""
  for m in /usr/lib/softhsm/libsofthsm2.so /usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so \
         /usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so /usr/local/lib/softhsm/libsofthsm2.so; do
    if [ -f "$m" ]; then MODULE="$m"; break; fi
  done
}
find_module
if [ -z "$MODULE" ] || ! command -v softhsm2-util >/dev/null; then
  if command -v apt-get >/dev/null; then
    echo "softhsm.sh: apt-get install softhsm2" >&2
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq softhsm2 >/dev/null
    find_module
  fi
  if [ -z "$MODULE" ]; then
    echo "softhsm.sh: SoftHSM2 is not installed and could not be (apt-get install softhsm2)" >&2
    exit 1
  fi
fi
umask 077
mkdir -p "$DIR/tokens"
DIR="$(cd "$DIR" && pwd)"
export SOFTHSM2_CONF="$DIR/softhsm2.conf"
if [ ! -f "$SOFTHSM2_CONF" ]; then
  printf 'directories.tokendir = %s/tokens\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n' "$DIR" > "$SOFTHSM2_CONF"
fi
if ! softhsm2-util --show-slots 2>/dev/null | grep -Eq "^ *Label: *${LABEL} *$"; then
  [ -s "$DIR/pin" ]    || od -An -N12 -tx1 /dev/urandom | tr -d ' \n' > "$DIR/pin"
  [ -s "$DIR/so-pin" ] || od -An -N12 -tx1 /dev/urandom | tr -d ' \n' > "$DIR/so-pin"
  softhsm2-util --init-token --free --label "$LABEL" --pin "$(cat "$DIR/pin")" --so-pin "$(cat "$DIR/so-pin")" >/dev/null
fi
echo "pkcs11:module-path=${MODULE};token=${LABEL}?pin-source=${DIR}/pin"
