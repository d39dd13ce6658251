#!/usr/bin/env bash
# Installs the Debian packages zeroseg needs (once) and builds it in release mode.
# Idempotent: a second run installs nothing and rebuilds only what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
pkgs=(libopenblas-dev libjpeg-dev libpng-dev libutf8proc-dev zlib1g-dev libvlfeat-dev pkg-config libfreetype-dev fonts-dejavu-core libsqlite3-dev libfaiss-dev libdnnl-dev)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if [ "${ZEROSEG_SKIP_BUILD:-0}" != "1" ]; then
  swift build -c release 2>&1 | grep -v -E '^\[[0-9]+/[0-9]+\]' >&2
  echo "setup: built $(pwd)/.build/release/zeroseg" >&2
fi
