#!/usr/bin/env bash
# Fuzzes `zeroseg serve`'s API from its own OpenAPI document with schemathesis (docs/serve-load.md):
# a server on loopback with the tiny random model and an index of examples/ (so /v1/search and
# /v1/images/{id} answer), then `schemathesis run` on every operation of /openapi.json, bounded
# in examples per operation and in time. It fails when schemathesis reports a failed check, when
# the server's /metrics count any 5xx other than 503, when the server dies or is unhealthy
# afterwards, or when the time limit is reached.
#
#   bash scripts/api-fuzz.sh [--max-examples 100] [--seconds 900] [--seed 0] [--bin PATH]
#                            [--report-dir DIR]
#
# The checks and why some are left out: scripts/load/schemathesis.toml. The version used is
# pinned in scripts/load/requirements.txt (pip installs it when schemathesis is missing). The
# server binary: --bin, else $ZEROSEG_BIN, else .build/release/zeroseg (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

max_examples=100
seconds=900
seed=0
bin="${ZEROSEG_BIN:-.build/release/zeroseg}"
report_dir=""

usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --max-examples) max_examples="$2"; shift 2 ;;
    --seconds) seconds="$2"; shift 2 ;;
    --seed) seed="$2"; shift 2 ;;
    --bin) bin="$2"; shift 2 ;;
    --report-dir) report_dir="$2"; shift 2 ;;
    -h|--help) usage ;;
    *) echo "api-fuzz: unknown argument $1" >&2; usage ;;
  esac
done
[[ "$max_examples" =~ ^[0-9]+$ && "$max_examples" -ge 1 && "$max_examples" -le 100000 ]] || { echo "api-fuzz: --max-examples must be 1...100000" >&2; exit 2; }
[[ "$seconds" =~ ^[0-9]+$ && "$seconds" -ge 10 && "$seconds" -le 86400 ]] || { echo "api-fuzz: --seconds must be 10...86400" >&2; exit 2; }
[[ "$seed" =~ ^[0-9]+$ ]] || { echo "api-fuzz: --seed must be a whole number" >&2; exit 2; }
[ -x "$bin" ] || { echo "api-fuzz: no server binary at $bin (bash scripts/setup.sh builds .build/release/zeroseg; or --bin PATH)" >&2; exit 2; }
command -v curl >/dev/null || { echo "api-fuzz: needs curl" >&2; exit 2; }
command -v python3 >/dev/null || { echo "api-fuzz: needs python3" >&2; exit 2; }
if ! command -v schemathesis >/dev/null; then
  echo "api-fuzz: installing schemathesis (pip, scripts/load/requirements.txt)" >&2
  python3 -m pip install -q -r scripts/load/requirements.txt >&2
fi
schemathesis --version >&2

tmp=$(mktemp -d)
who=api-fuzz
source scripts/load/server.sh
cleanup() {
  kill_server
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "api-fuzz: making the tiny random model and an index of examples/" >&2
"$bin" weights synth --arch tiny --seed 0 --out "$tmp/model" >/dev/null 2>"$tmp/setup.log" || { cat "$tmp/setup.log" >&2; exit 1; }
"$bin" index examples --out "$tmp/index" --model "$tmp/model" --regions grid >/dev/null 2>>"$tmp/setup.log" || { cat "$tmp/setup.log" >&2; exit 1; }

log="$tmp/server.log"
start_server "$log" --model "$tmp/model" --index "$tmp/index"
echo "api-fuzz: server at $url; schemathesis with at most $max_examples examples per operation, ${seconds} s at most" >&2

# The document says servers: 127.0.0.1:8080; --url points schemathesis at this server instead.
# Settings (checks, phases, timeouts) are in the config file; the bounds are given here.
# Hypothesis keeps caches in .hypothesis/ of the working directory: here, in the temporary one.
export HYPOTHESIS_STORAGE_DIRECTORY="$tmp/hypothesis"
status=0
start=$(date +%s)
timeout --signal=INT --kill-after=30 "$seconds" \
  schemathesis --config-file scripts/load/schemathesis.toml run "$url/openapi.json" --url "$url" \
    --max-examples "$max_examples" --seed "$seed" --no-color \
    --report junit,ndjson --report-dir "$tmp/report" || status=$?
elapsed=$(( $(date +%s) - start ))

failures=()
case "$status" in
  0) ;;
  124|137) failures+=("the time limit of ${seconds} s was reached") ;;
  *) failures+=("schemathesis exited with $status (failed checks above)") ;;
esac
if ! kill -0 "$server_pid" 2>/dev/null; then
  failures+=("the server died (its log is above)")
  cat "$log" >&2
else
  health=$(curl -sS --max-time 10 -o /dev/null -w '%{http_code}' "$url/healthz" || echo 000)
  [ "$health" = 200 ] || failures+=("GET /healthz answered $health after the run")
  curl -sS --max-time 10 "$url/metrics" >"$tmp/metrics.txt" || true
  # Every answer the server gave, by route and status (the server's own count: an oracle
  # independent of schemathesis).
  python3 - "$tmp/metrics.txt" >"$tmp/statuses.txt" <<'EOF'
import re, sys
rows = {}
for m in re.finditer(r'^zeroseg_http_requests_total\{(.*)\} ([0-9.e+]+)$', open(sys.argv[1]).read(), re.M):
    labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
    rows[(labels.get("route", "?"), labels.get("status", "?"))] = int(float(m.group(2)))
total = sum(rows.values())
print(f"server answers: {total}")
for (route, status), n in sorted(rows.items()):
    print(f"  {route:18} {status}  {n}")
bad = {k: v for k, v in rows.items() if k[1].startswith("5") and k[1] != "503"}
if bad:
    print("BAD 5xx other than 503: " + ", ".join(f"{r} {s} x{n}" for (r, s), n in bad.items()))
EOF
  cat "$tmp/statuses.txt" >&2
  if grep -q '^BAD' "$tmp/statuses.txt"; then failures+=("$(grep '^BAD' "$tmp/statuses.txt")"); fi
fi
stop_server

if [ -n "$report_dir" ]; then
  mkdir -p "$report_dir"
  cp -r "$tmp/report/." "$report_dir/" 2>/dev/null || true
  cp "$tmp/statuses.txt" "$log" "$report_dir/" 2>/dev/null || true
  echo "api-fuzz: reports in $report_dir" >&2
fi
echo "api-fuzz: ${elapsed} s" >&2
if [ ${#failures[@]} -gt 0 ]; then
  printf 'api-fuzz: FAIL: %s\n' "${failures[@]}" >&2
  exit 1
fi
echo "api-fuzz: PASS" >&2
