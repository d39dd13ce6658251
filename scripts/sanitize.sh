#!/usr/bin/env bash
# Runs the test suite under AddressSanitizer + UndefinedBehaviorSanitizer, in release mode, in its
# own scratch path (.build-asan). Fails on any sanitizer report (and on any failing test).
#
# AddressSanitizer instruments the Swift and the C/C++ targets (`--sanitize=address`).
# UndefinedBehaviorSanitizer instruments the C and C++ targets (`-fsanitize=undefined`, without
# the C++ `vptr` check, which needs a C++ runtime swiftc does not link): swiftc has no
# `-sanitize=undefined` on Linux ("unsupported option"), and Swift itself traps on overflow,
# out-of-bounds indices and bad casts in release builds, which fail the tests anyway.
#
#   bash scripts/sanitize.sh                  # the whole suite (long: see docs/reliability.md)
#   bash scripts/sanitize.sh --filter Safetensors
#
# Every Swift and C target of the package (and of its dependencies) is instrumented; the system
# libraries (OpenBLAS, oneDNN, FAISS, libjpeg, libpng, zlib, SQLite) are not, so a bad access
# inside them is only seen when it touches memory ASan guards (our buffers, malloc'd blocks).
# LeakSanitizer is off by default (ZEROSEG_LSAN=1 turns it on, with scripts/lsan.supp): at exit it
# reports memory that the toolchain's libraries keep (swift-foundation's Data/String(contentsOf:),
# swift-argument-parser's InputKey, XCTest's suite objects, Dispatch queues), and in the CLI
# processes the tests start each such report changes the exit status and adds lines to stderr,
# which the CLI tests check exactly (docs/reliability.md, "Sanitizers"). UBSan stops at the first
# report (halt_on_error=1) so that it fails the run. ZEROSEG_SANITIZER=address tells the tests that
# memory figures are inflated (ASan's redzones and quarantine): the peak-memory limits are skipped.
# Swift ships the sanitizer runtimes (/opt/swift/usr/lib/clang/*/lib/linux); `swift test` (not
# `swift build`) builds here because the tests use @testable imports.
set -euo pipefail
cd "$(dirname "$0")/.."
ZEROSEG_SKIP_BUILD=1 bash scripts/setup.sh
export HF_HUB_OFFLINE=1
leaks=0; [ "${ZEROSEG_LSAN:-0}" = 1 ] && leaks=1
export ZEROSEG_SANITIZER=address
export ASAN_OPTIONS="halt_on_error=1:abort_on_error=0:detect_leaks=$leaks:detect_stack_use_after_return=0:${ASAN_OPTIONS:-}"
export LSAN_OPTIONS="suppressions=$PWD/scripts/lsan.supp:print_suppressions=0:${LSAN_OPTIONS:-}"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:${UBSAN_OPTIONS:-}"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
ubsan=(-Xcc -fsanitize=undefined -Xcc -fno-sanitize=vptr -Xcxx -fsanitize=undefined -Xcxx -fno-sanitize=vptr)
swift test -c release --sanitize=address "${ubsan[@]}" --scratch-path .build-asan "$@" 2>&1 \
  | grep --line-buffered -v -E '^\[[0-9]+/[0-9]+\]' | tee "$log"
status=${PIPESTATUS[0]}
set -e
if grep -a -q -E "ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:|SUMMARY: (AddressSanitizer|UndefinedBehaviorSanitizer|LeakSanitizer)" "$log"; then
  echo "sanitize: a sanitizer reported a problem (above)" >&2
  exit 1
fi
if [ "$status" -ne 0 ]; then
  echo "sanitize: swift test failed (exit $status)" >&2
  exit "$status"
fi
echo "sanitize: no AddressSanitizer / UndefinedBehaviorSanitizer / LeakSanitizer report" >&2
