#!/usr/bin/env bash
# Runs every test (golden tests against committed fixtures; no network, no Python needed).
#
#   bash scripts/test.sh              # everything CI runs (below)
#   bash scripts/test.sh --filter X   # only `swift test -c release --filter X`
#
# Everything: the whole suite once; the package in examples/library-usage, which uses the library
# by path as a dependency, built and run; then the same built tests again under conditions that
# must not change any result: the portable element-wise kernels (ZEROSEG_KERNELS=portable), one
# OpenBLAS thread, every library default at one thread, two copies at once (scripts/test-conditions.sh);
# with ZEROSEG_FUZZ_SMOKE=N, a fuzz smoke (scripts/fuzz.sh --smoke N: every fuzz target's corpus and
# past crashes replayed, then N seconds of fuzzing each); last, the served web page in headless Chromium (scripts/browser-test.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
ZEROSEG_SKIP_BUILD=1 bash scripts/setup.sh
export HF_HUB_OFFLINE=1
if [ $# -gt 0 ]; then
  exec swift test -c release "$@"
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
swift test -c release 2>&1 | grep --line-buffered -v -E '^\[[0-9]+/[0-9]+\]' | tee "$log"
[ "${PIPESTATUS[0]}" -eq 0 ] || exit 1
summary=$(grep -E '^(✔|✘) Test run with' "$log" | tail -1)

echo "== examples/library-usage: the library as another package's dependency" >&2
(cd examples/library-usage && swift build 2>&1 | grep -v -E '^\[[0-9]+/[0-9]+\]' >&2 && .build/debug/zeroseg-example ../chelsea.jpg)

echo "== the suite again with the portable kernels" >&2
ZEROSEG_KERNELS=portable swift test -c release --skip-build > "$log" 2>&1 || { cat "$log"; exit 1; }
echo "portable kernels: $(grep -E '^(✔|✘) Test run with' "$log" | tail -1)" >&2

bash scripts/test-conditions.sh

# Fuzz smoke (scripts/fuzz.sh), opt-in: ZEROSEG_FUZZ_SMOKE=N builds the libFuzzer + AddressSanitizer
# executable (.build-fuzz: every target and dependency again, with sanitizers: far longer than the
# few minutes CI may grow, see docs/reliability.md), replays every target's committed corpus and
# past crash inputs, then fuzzes each target N seconds. Without it, the past crash inputs still run
# in the suite above, through the normal build (FuzzRegressionTests).
if [ -n "${ZEROSEG_FUZZ_SMOKE:-}" ]; then
  echo "== fuzz smoke: replay + ${ZEROSEG_FUZZ_SMOKE} s per target (scripts/fuzz.sh)" >&2
  bash scripts/fuzz.sh --smoke "${ZEROSEG_FUZZ_SMOKE}" >&2
fi

# The web page of `zeroseg serve` in headless Chromium (installs chromium and selenium when
# missing; ZEROSEG_SKIP_BROWSER=1 skips it).
if [ "${ZEROSEG_SKIP_BROWSER:-0}" != 1 ]; then
  echo "== the web page in headless Chromium (scripts/browser-test.sh)" >&2
  ZEROSEG_BIN=.build/release/zeroseg bash scripts/browser-test.sh >&2
fi
echo "$summary"
