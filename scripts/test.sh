#!/usr/bin/env bash
# Runs every test (golden tests against committed fixtures; no network, no Python needed).
set -euo pipefail
cd "$(dirname "$0")/.."
ZEROSEG_SKIP_BUILD=1 bash scripts/setup.sh
export HF_HUB_OFFLINE=1
swift test -c release "$@"
