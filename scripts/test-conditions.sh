#!/usr/bin/env bash
# Runs the whole test suite (release) under three conditions, from one build (the first run's):
#   1. OPENBLAS_NUM_THREADS=1 (zeroseg sets OpenBLAS to 1 thread itself; this checks nothing
#      depends on OpenBLAS's own setting);
#   2. ZEROSEG_THREADS=1: every library default (`defaultThreads`, so also the CLI's --threads
#      default in the CLI tests) at 1 thread;
#   3. load: two copies of the suite at once.
# Exits non-zero if any run fails. Logs: $TMPDIR/zeroseg-conditions.*.log
set -uo pipefail
cd "$(dirname "$0")/.."
ZEROSEG_SKIP_BUILD=1 bash scripts/setup.sh || exit 1
export HF_HUB_OFFLINE=1
logs=${TMPDIR:-/tmp}/zeroseg-conditions
run() {  # name, build|skip, env assignments...: runs the suite once
  local name=$1 build=$2; shift 2
  local skip=(--skip-build); [ "$build" = build ] && skip=()
  env "$@" swift test -c release "${skip[@]}" >"$logs.$name.log" 2>&1
  local rc=$?
  echo "test-conditions: $name: exit $rc, $(grep -E '^(✔|✘) Test run with' "$logs.$name.log" | tail -1)" >&2
  return $rc
}
failed=0
run openblas1 build OPENBLAS_NUM_THREADS=1 || failed=1  # builds (if needed), then runs
run threads1 skip ZEROSEG_THREADS=1 || failed=1
run load-a skip ZEROSEG_CONDITION=a & a=$!
run load-b skip ZEROSEG_CONDITION=b & b=$!
wait $a || failed=1
wait $b || failed=1
if [ $failed -ne 0 ]; then echo "test-conditions: FAILED (logs: $logs.*.log)" >&2; exit 1; fi
echo "test-conditions: all runs passed" >&2
