#!/usr/bin/env bash
# Runs every test (golden tests against committed fixtures; no network, no Python needed).
#
#   bash scripts/test.sh             # everything CI runs (below)
#   bash scripts/test.sh --filter X  # only `swift test -c release --filter X`
#
# Everything: the whole suite; then the same built tests again under the conditions that must not
# change a result (one OpenBLAS thread; every library default at one thread; two copies at once,
# as load; the portable element-wise kernels); then the package in examples/library-usage, which
# uses the library by path as a dependency, is built and run.
set -euo pipefail
cd "$(dirname "$0")/.."
ZEROSEG_SKIP_BUILD=1 bash scripts/setup.sh
export HF_HUB_OFFLINE=1
if [ $# -gt 0 ]; then
  exec swift test -c release "$@"
fi
swift test -c release 2>&1 | grep -v -E '^\[[0-9]+/[0-9]+\]'
status=${PIPESTATUS[0]}; [ "$status" -eq 0 ] || exit "$status"
bash scripts/test-conditions.sh --skip-build
echo "== examples/library-usage: the library as another package's dependency" >&2
(cd examples/library-usage && swift build 2>&1 | grep -v -E '^\[[0-9]+/[0-9]+\]' >&2 \
  && .build/debug/zeroseg-example ../chelsea.jpg)
# last: the suite's own summary line again for readers of the log's end
swift test -c release --skip-build 2>&1 | tail -1
