#!/usr/bin/env bash
# Builds the fuzz targets (Tests/Fuzz: one libFuzzer executable, .build-fuzz/release/zeroseg-fuzz,
# every Swift and C target built with --sanitize=fuzzer --sanitize=address) and runs each target for
# a bounded time with -rss_limit_mb=2048 -timeout=2. Prints per target the executions, the coverage
# (cov = edges, ft = features, from libFuzzer's final line) and any crash with its reproducer; exits
# non-zero on any crash, sanitizer report, timeout or out-of-memory stop.
#
#   bash scripts/fuzz.sh                      # every target, 60 s each
#   bash scripts/fuzz.sh --seconds 900        # every target, 15 min each
#   bash scripts/fuzz.sh --target png --target jpeg --seconds 300
#   bash scripts/fuzz.sh --replay             # only run the committed corpus and every past crash (no fuzzing)
#   bash scripts/fuzz.sh --smoke 15           # CI: replay, then fuzz 15 s each
#   bash scripts/fuzz.sh --list               # the targets and what they cover
#   options: --no-build (use the last build), --runs N (stop a target after N executions too)
#
# Layout: Tests/Fuzz/Sources (the harnesses), Tests/Fuzz/TARGET/corpus (seeds, made by
# Tests/Fuzz/make_seeds.py), Tests/Fuzz/TARGET/regressions (past crash inputs, replayed every time;
# each also a unit test in Tests/ZeroSegTests/FuzzRegressionTests.swift), Tests/Fuzz/TARGET/dict.
# The committed corpus is read-only here: libFuzzer's new inputs go to a temporary working corpus
# (deleted at the end; ZEROSEG_FUZZ_KEEP=DIR keeps them in DIR/TARGET). Crash inputs are copied to
# .build-fuzz/artifacts/TARGET/ with the command that reproduces them.
#
# Coverage: swiftc's -sanitize=fuzzer alone adds no coverage instrumentation when combined with
# -sanitize=address under whole-module optimisation or -enable-testing (checked with readelf: no
# __sancov sections), so the Swift targets were fuzzed blind; -sanitize-coverage=edge,inline-8bit-
# counters,pc-table,trace-cmp asks for it explicitly (libFuzzer's own defaults).
#
# Leak detection is off (-detect_leaks=0): the Swift runtime and Foundation allocate caches on
# first use (type metadata, the tokenizer's word cache), which LeakSanitizer reports as leaks of the
# input that first needed them.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/opt/swift/usr/bin:$PATH"

seconds=60
smoke=""
replay_only=0
build=1
runs=""
targets=()
list=0
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds="$2"; shift 2 ;;
    --target) targets+=("$2"); shift 2 ;;
    --replay) replay_only=1; shift ;;
    --smoke) smoke="$2"; seconds="$2"; shift 2 ;;
    --no-build) build=0; shift ;;
    --runs) runs="$2"; shift 2 ;;
    --list) list=1; shift ;;
    -h|--help) sed -n '2,/^set -e/p' "$0" | sed 's/^# \{0,1\}//; /^set -e/d'; exit 0 ;;
    *) echo "fuzz.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

bin=.build-fuzz/release/zeroseg-fuzz
if [ "$build" = 1 ]; then
  ZEROSEG_SKIP_BUILD=1 bash scripts/setup.sh >&2
  echo "== building the fuzz targets (.build-fuzz, --sanitize=fuzzer --sanitize=address)" >&2
  start=$(date +%s)
  ZEROSEG_FUZZ=1 swift build -c release --sanitize=fuzzer --sanitize=address --scratch-path .build-fuzz \
    --product zeroseg-fuzz -Xswiftc -enable-testing -Xswiftc -sanitize-coverage=edge,inline-8bit-counters,pc-table,trace-cmp 2>&1 | grep -v -E '^\[[0-9]+/[0-9]+\]' >&2
  echo "fuzz build: $(( $(date +%s) - start )) s" >&2
fi
[ -x "$bin" ] || { echo "fuzz.sh: $bin is missing (run without --no-build)" >&2; exit 2; }

all=()
for d in Tests/Fuzz/*/; do
  t=$(basename "$d")
  [ -d "$d/corpus" ] && all+=("$t")
done
if [ "$list" = 1 ]; then
  ZEROSEG_FUZZ_TARGET=--list "$bin" 2>&1 | sed -n '2,$p'
  exit 0
fi
[ ${#targets[@]} -eq 0 ] && targets=("${all[@]}")
for t in "${targets[@]}"; do
  [ -d "Tests/Fuzz/$t/corpus" ] || { echo "fuzz.sh: no target $t (have: ${all[*]})" >&2; exit 2; }
done

work=$(mktemp -d "${TMPDIR:-/tmp}/zeroseg-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT
export ZEROSEG_FUZZ_SCRATCH="$work/scratch"
mkdir -p "$ZEROSEG_FUZZ_SCRATCH"
export ASAN_OPTIONS="detect_leaks=0:${ASAN_OPTIONS:-}"
common=(-rss_limit_mb=2048 -timeout=2 -detect_leaks=0)

failed=0
summary=()
for t in "${targets[@]}"; do
  dir="Tests/Fuzz/$t"
  art="$work/artifacts/$t"
  mkdir -p "$art" "$work/corpus/$t"
  log="$work/$t.log"
  export ZEROSEG_FUZZ_TARGET="$t"
  status=ok

  # 1. Replay: every committed seed and every past crash input, once each.
  inputs=()
  while IFS= read -r -d '' f; do inputs+=("$f"); done < <(find "$dir/corpus" "$dir/regressions" -type f -print0 2>/dev/null | sort -z)
  if ! "$bin" "${common[@]}" -artifact_prefix="$art/" "${inputs[@]}" > "$log" 2>&1; then status=failed; fi
  replayed=${#inputs[@]}

  # 2. Fuzz (not with --replay): the working corpus first (libFuzzer writes new inputs only there),
  #    then the seeds and regressions, read-only.
  execs="-" rate="-" cov="-" ft="-" new="-" rss="-"
  if [ "$status" = ok ] && [ "$replay_only" = 0 ]; then
    dict=()
    [ -f "$dir/dict" ] && dict=(-dict="$dir/dict")
    extra=()
    [ -n "$runs" ] && extra=(-runs="$runs")
    if ! "$bin" "${common[@]}" -max_total_time="$seconds" -print_final_stats=1 -artifact_prefix="$art/" \
         "${dict[@]}" "${extra[@]}" "$work/corpus/$t" "$dir/corpus" $( [ -d "$dir/regressions" ] && echo "$dir/regressions" ) >> "$log" 2>&1; then
      status=failed
    fi
    execs=$(grep -a -o 'stat::number_of_executed_units: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$' || echo -)
    rate=$(grep -a -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$' || echo -)
    new=$(grep -a -o 'stat::new_units_added: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$' || echo -)
    rss=$(grep -a -o 'stat::peak_rss_mb: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$' || echo -)
    last=$(grep -a -E '^#[0-9]+.*cov: [0-9]+ ft: [0-9]+' "$log" | tail -1 || true)
    cov=$(echo "$last" | grep -o 'cov: [0-9]*' | grep -o '[0-9]*' || echo -)
    ft=$(echo "$last" | grep -o 'ft: [0-9]*' | grep -o '[0-9]*' || echo -)
    if [ -n "${ZEROSEG_FUZZ_KEEP:-}" ]; then mkdir -p "$ZEROSEG_FUZZ_KEEP/$t"; cp -n "$work/corpus/$t"/* "$ZEROSEG_FUZZ_KEEP/$t"/ 2>/dev/null || true; fi
  fi
  if grep -a -q -E 'ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error:|SUMMARY: (Address|Undefined)|ALARM: working on the last Unit|==[0-9]+== ERROR|Fatal error:' "$log"; then
    status=failed
  fi
  printf '%-12s replayed %4d inputs; executions %10s (%6s/s), cov %6s, ft %6s, new units %5s, peak RSS %5s MB: %s\n' \
    "$t" "$replayed" "$execs" "$rate" "$cov" "$ft" "$new" "$rss" "$status" >&2
  summary+=("$(printf '%-12s %10s %8s %7s %7s %s' "$t" "$execs" "$rate" "$cov" "$ft" "$status")")
  if [ "$status" != ok ]; then
    failed=1
    keep=".build-fuzz/artifacts/$t"
    mkdir -p "$keep"
    grep -a -E 'ERROR|SUMMARY|Fatal error|runtime error|ALARM|Test unit written|Running:|==[0-9]+==' "$log" | head -40 >&2 || true
    for f in "$art"/*; do
      [ -e "$f" ] || continue
      cp "$f" "$keep/"
      echo "  reproducer: $keep/$(basename "$f")" >&2
      echo "  reproduce:  ZEROSEG_FUZZ_TARGET=$t $bin $keep/$(basename "$f")" >&2
    done
    cp "$log" "$keep/last.log"
    echo "  full log:   $keep/last.log" >&2
  fi
done

echo "== fuzz summary ($([ "$replay_only" = 1 ] && echo "replay only" || echo "$seconds s per target"); machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'))" >&2
printf '%-12s %10s %8s %7s %7s %s\n' target executions exec/s cov ft result >&2
printf '%s\n' "${summary[@]}" >&2
if [ "$failed" != 0 ]; then
  echo "fuzz: FAILED (crash, sanitizer report, timeout or out-of-memory above)" >&2
  exit 1
fi
echo "fuzz: no crash, no sanitizer report, no timeout, no out-of-memory" >&2
