#!/usr/bin/env bash
# Runs the concurrency tests (Tests/ZeroSegTests/ConcurrencyTests.swift: one model and one segmenter
# used from 4 threads at once, the thread budget, the split matrix products) under ThreadSanitizer,
# in release mode, in its own scratch path (.build-tsan). Fails on any ThreadSanitizer report.
#
#   bash scripts/tsan.sh              # the concurrency suites (~3 min from a warm build)
#   bash scripts/tsan.sh --filter .   # the whole suite (also clean, ~100 s of tests)
#
# No suppressions: libopenblas (not instrumented, called single-threaded from several threads at
# once) gave no report. A deliberate race (the thread budget as a plain global) is reported.
# Swift ships the ThreadSanitizer runtime (/opt/swift/usr/lib/clang/*/lib/linux); `swift test`
# (not `swift build`) builds here because the tests use @testable imports.
set -euo pipefail
cd "$(dirname "$0")/.."
ZEROSEG_SKIP_BUILD=1 bash scripts/setup.sh
export HF_HUB_OFFLINE=1
export TSAN_OPTIONS="halt_on_error=1 abort_on_error=0 exitcode=66 second_deadlock_stack=1 ${TSAN_OPTIONS:-}"
args=("$@")
[ ${#args[@]} -eq 0 ] && args=(--filter 'ConcurrencyTests|ThreadBudgetTests')
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
swift test -c release --sanitize=thread --scratch-path .build-tsan "${args[@]}" 2>&1 | grep -v -E '^\[[0-9]+/[0-9]+\]' | tee "$log"
status=${PIPESTATUS[0]}
set -e
if grep -q "WARNING: ThreadSanitizer" "$log"; then
  echo "tsan: ThreadSanitizer reported a problem (above)" >&2
  exit 1
fi
if [ "$status" -ne 0 ]; then
  echo "tsan: swift test failed (exit $status)" >&2
  exit "$status"
fi
echo "tsan: no ThreadSanitizer report" >&2
