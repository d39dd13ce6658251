#!/usr/bin/env bash
# Runs every test with the portable element-wise kernels (plain C over libm) instead of the
# AVX2/AVX-512 ones the CPU would get: the path of CPUs without AVX2 and of other architectures,
# which must pass the same golden tests. Arguments go to `swift test` (e.g. --filter Golden).
set -euo pipefail
cd "$(dirname "$0")/.."
export ZEROSEG_KERNELS=portable
ZEROSEG_SKIP_BUILD=1 bash scripts/setup.sh
export HF_HUB_OFFLINE=1
exec swift test -c release "$@"
