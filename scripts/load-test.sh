#!/usr/bin/env bash
# Load test of `zeroseg serve` (docs/serve-load.md): wrk POSTs examples/chelsea.jpg with the classes
# "cat,grass|lawn,wall,floor" to /v1/segment of a server on loopback with the tiny random model, in
# two scenarios, each on a fresh server with one worker:
#   a  --queue max(8, connections): every connection fits (1 worker + queue), so nothing is refused
#   b  --queue 2: overload, connections beyond 3 get 503 + Retry-After (and come straight back)
# It fails when a status other than 200 or 503 is seen (by wrk or in the server's /metrics), on a
# socket error or timeout, on a 503 in (a), on no 503 in (b), when the server is not healthy
# afterwards, or when its RSS at the end is more than --rss-limit-mb above the start (after a
# warm-up of 3 requests; the end is read once the server is idle again).
#
#   bash scripts/load-test.sh [--seconds 60] [--connections 8] [--out FILE.json]
#                             [--scenarios "a b"] [--bin PATH] [--rss-limit-mb 50]
#
# The server binary: --bin, else $ZEROSEG_BIN, else .build/release/zeroseg (scripts/setup.sh builds
# it). Needs wrk (installed with apt-get when missing), curl and python3. Figures are only honest on
# an otherwise idle machine: the JSON records the load average and busy compilers at each start.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=60
connections=8
out=""
scenarios="a b"
bin="${ZEROSEG_BIN:-.build/release/zeroseg}"
rss_limit_mb=50
image=examples/chelsea.jpg
classes="cat,grass|lawn,wall,floor"

usage() { sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds="$2"; shift 2 ;;
    --connections) connections="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --scenarios) scenarios="$2"; shift 2 ;;
    --bin) bin="$2"; shift 2 ;;
    --rss-limit-mb) rss_limit_mb="$2"; shift 2 ;;
    -h|--help) usage ;;
    *) echo "load-test: unknown argument $1" >&2; usage ;;
  esac
done
[[ "$seconds" =~ ^[0-9]+$ && "$seconds" -ge 1 && "$seconds" -le 3600 ]] || { echo "load-test: --seconds must be 1...3600" >&2; exit 2; }
[[ "$connections" =~ ^[0-9]+$ && "$connections" -ge 1 && "$connections" -le 256 ]] || { echo "load-test: --connections must be 1...256" >&2; exit 2; }
[[ "$rss_limit_mb" =~ ^[0-9]+$ ]] || { echo "load-test: --rss-limit-mb must be a whole number" >&2; exit 2; }
for s in $scenarios; do [[ "$s" == a || "$s" == b ]] || { echo "load-test: scenarios are a and b, not $s" >&2; exit 2; }; done
[ -x "$bin" ] || { echo "load-test: no server binary at $bin (bash scripts/setup.sh builds .build/release/zeroseg; or --bin PATH)" >&2; exit 2; }
command -v python3 >/dev/null || { echo "load-test: needs python3" >&2; exit 2; }
command -v curl >/dev/null || { echo "load-test: needs curl" >&2; exit 2; }
if ! command -v wrk >/dev/null; then
  echo "load-test: installing wrk (apt-get)" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq wrk >/dev/null
fi

tmp=$(mktemp -d)
sampler_pid=""
who=load-test
source scripts/load/server.sh
cleanup() {
  [ -n "$sampler_pid" ] && kill "$sampler_pid" 2>/dev/null || true
  kill_server
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
hwm_kb() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
busy_compilers() { pgrep -c -x swift-frontend 2>/dev/null || true; }

echo "load-test: making the tiny random model" >&2
"$bin" weights synth --arch tiny --seed 0 --out "$tmp/model" >/dev/null 2>"$tmp/synth.log" || { cat "$tmp/synth.log" >&2; exit 1; }

segment_once() {
  curl -sS --max-time 120 -o /dev/null -w '%{http_code}' -F "image=@$image;type=image/jpeg" -F "classes=$classes" "$url/v1/segment" || echo 000
}

# The server is idle when no request waits, computes or is in flight (at most 120 s).
wait_idle() {
  for _ in $(seq 1 240); do
    local m
    m=$(curl -sS --max-time 5 "$url/metrics" || true)
    if echo "$m" | grep -qE '^zeroseg_queue_length 0(\.0)?$' && echo "$m" | grep -qE '^zeroseg_workers_busy 0(\.0)?$'; then return 0; fi
    sleep 0.5
  done
  echo "load-test: the server did not become idle within 120 s" >&2
  return 1
}

results=()
for s in $scenarios; do
  if [ "$s" = a ]; then queue=$(( connections > 8 ? connections : 8 )); else queue=2; fi
  echo "load-test: scenario $s: 1 worker, --queue $queue, $connections connections, ${seconds} s" >&2
  load_before=$(cut -d' ' -f1-3 /proc/loadavg)
  compilers_before=$(busy_compilers)
  start_server "$tmp/server-$s.log" --model "$tmp/model" --workers 1 --queue "$queue"
  curl -sS --max-time 10 "$url/v1/info" >"$tmp/info-$s.json"
  for i in 1 2 3; do
    code=$(segment_once)
    [ "$code" = 200 ] || { echo "load-test: warm-up request $i answered $code" >&2; cat "$tmp/server-$s.log" >&2; exit 1; }
  done
  rss_start=$(rss_kb "$server_pid")
  : >"$tmp/rss-$s.txt"
  (
    t0=$(date +%s)
    for _ in $(seq 1 $(( seconds / 5 + 40 ))); do   # bounded: the run plus the drain
      kill -0 "$server_pid" 2>/dev/null || exit 0
      echo "$(( $(date +%s) - t0 )) $(rss_kb "$server_pid")" >>"$tmp/rss-$s.txt"
      sleep 5
    done
  ) &
  sampler_pid=$!
  timeout $(( seconds + 180 )) wrk -t "$connections" -c "$connections" -d "${seconds}s" --timeout 60s \
    -s scripts/load/segment.lua "$url/v1/segment" -- "$image" "$classes" >"$tmp/wrk-$s.txt" 2>"$tmp/wrk-$s.err" \
    || { echo "load-test: wrk failed:" >&2; cat "$tmp/wrk-$s.err" "$tmp/wrk-$s.txt" >&2; exit 1; }
  idle=true
  wait_idle || idle=false
  health=$(curl -sS --max-time 10 -o /dev/null -w '%{http_code}' "$url/healthz" || echo 000)
  rss_end=$(rss_kb "$server_pid")
  rss_peak=$(hwm_kb "$server_pid")
  curl -sS --max-time 10 "$url/metrics" >"$tmp/metrics-$s.txt" || true
  kill "$sampler_pid" 2>/dev/null || true; wait "$sampler_pid" 2>/dev/null || true; sampler_pid=""
  stop_server
  cat "$tmp/wrk-$s.err" >&2
  python3 - "$s" "$queue" "$connections" "$seconds" "$load_before" "$compilers_before" "$rss_start" "$rss_end" "$rss_peak" \
    "$health" "$idle" "$rss_limit_mb" "$tmp/wrk-$s.txt" "$tmp/rss-$s.txt" "$tmp/metrics-$s.txt" "$tmp/info-$s.json" \
    >"$tmp/result-$s.json" <<'EOF'
import json, re, sys
(s, queue, conns, secs, load, compilers, rss0, rss1, peak, health, idle, limit,
 wrk_path, rss_path, metrics_path, info_path) = sys.argv[1:]
line = next((l for l in open(wrk_path) if l.startswith("ZEROSEG_WRK_JSON ")), None)
if line is None:
    sys.exit("load-test: wrk printed no ZEROSEG_WRK_JSON line:\n" + open(wrk_path).read())
w = json.loads(line.split(" ", 1)[1])
server = {}
for m in re.finditer(r'^zeroseg_http_requests_total\{(.*)\} ([0-9.e+]+)$', open(metrics_path).read(), re.M):
    labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
    if labels.get("route") == "/v1/segment":
        server[labels["status"]] = server.get(labels["status"], 0) + int(float(m.group(2)))
samples = [[int(a), int(b)] for a, b in (l.split() for l in open(rss_path) if l.strip())]
info = json.load(open(info_path))
rss0, rss1, peak, limit = int(rss0), int(rss1), int(peak), int(limit)
st = w["statuses"]
failures = []
if st["other"]: failures.append(f"statuses other than 200/503: {st['other_by_status']}")
bad = {k: v for k, v in server.items() if k not in ("200", "503")}
if bad: failures.append(f"the server's metrics count statuses other than 200/503 on /v1/segment: {bad}")
errs = {k: v for k, v in w["errors"].items() if k != "status" and v}
if errs: failures.append(f"socket errors or timeouts: {errs}")
if st["200"] == 0: failures.append("no 200 at all")
if s == "a" and st["503"]: failures.append(f"{st['503']} refusals (503) although every connection fits in 1 worker + queue {queue}")
if s == "b" and not st["503"]: failures.append("no 503: the server was not overloaded")
if health != "200": failures.append(f"GET /healthz answered {health} after the run")
if idle != "true": failures.append("the server was not idle within 120 s after the run")
if rss1 - rss0 > limit * 1024: failures.append(f"RSS grew by {(rss1 - rss0) / 1024:.1f} MB (limit {limit} MB)")
print(json.dumps({
    "scenario": s, "workers": 1, "queue": int(queue), "connections": int(conns), "seconds": int(secs),
    "threads_per_request": info["limits"]["threads"], "model": info["model"],
    "machine_load_before": {"loadavg_1_5_15": load, "busy_swift_frontend": int(compilers or 0)},
    "wrk": w, "server_segment_statuses": server,
    "rss_kb": {"start_after_warmup": rss0, "end_idle": rss1, "peak_vmhwm": peak, "growth": rss1 - rss0, "samples_every_5s": samples},
    "healthz_after": int(health), "passed": not failures, "failures": failures,
}))
EOF
  results+=("$tmp/result-$s.json")
done

python3 - "$out" "${results[@]}" <<'EOF'
import json, platform, subprocess, sys
out, paths = sys.argv[1], sys.argv[2:]
runs = [json.load(open(p)) for p in paths]
try:
    cpu = next(l.split(":", 1)[1].strip() for l in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines() if l.startswith("Model name"))
except Exception:
    cpu = platform.processor()
import os
doc = {"tool": "wrk", "endpoint": "POST /v1/segment", "image": "examples/chelsea.jpg", "classes": "cat,grass|lawn,wall,floor",
       "cpu": cpu, "cpus": os.cpu_count(), "scenarios": runs, "passed": all(r["passed"] for r in runs)}
if out:
    with open(out, "w") as f: json.dump(doc, f, indent=1); f.write("\n")
ms = lambda us: f"{us / 1000:.1f}" if us is not None else "-"
for r in runs:
    w = r["wrk"]; l = w["latency_us"]; l2 = w["latency_200_us"]; l5 = w["latency_503_us"]; st = w["statuses"]; rss = r["rss_kb"]
    print(f"scenario {r['scenario']}: 1 worker x {r['threads_per_request']} threads, queue {r['queue']}, {r['connections']} connections, "
          f"{w['seconds']:.1f} s (load before: {r['machine_load_before']['loadavg_1_5_15']}, busy swift-frontend: {r['machine_load_before']['busy_swift_frontend']})")
    print(f"  requests {w['requests']}: 200 x {st['200']}, 503 x {st['503']}, other x {st['other']}; "
          f"{w['requests_per_second']:.2f} req/s, {w['ok_per_second']:.2f} ok/s")
    print(f"  latency all (ms): p50 {ms(l['p50'])}  p90 {ms(l['p90'])}  p99 {ms(l['p99'])}  max {ms(l['max'])}")
    if l2.get("count"): print(f"  latency 200 (ms): p50 {ms(l2['p50'])}  p90 {ms(l2['p90'])}  p99 {ms(l2['p99'])}  max {ms(l2['max'])}")
    if l5.get("count"): print(f"  latency 503 (ms): p50 {ms(l5['p50'])}  p90 {ms(l5['p90'])}  p99 {ms(l5['p99'])}  max {ms(l5['max'])}")
    print(f"  server /metrics statuses on /v1/segment (warm-up included): {r['server_segment_statuses']}")
    print(f"  RSS MB: start {rss['start_after_warmup'] / 1024:.1f}, end {rss['end_idle'] / 1024:.1f} "
          f"(growth {rss['growth'] / 1024:+.1f}), peak {rss['peak_vmhwm'] / 1024:.1f}; "
          f"samples: {' '.join(f'{t}s:{k / 1024:.0f}' for t, k in rss['samples_every_5s'])}")
    print(f"  {'PASS' if r['passed'] else 'FAIL: ' + '; '.join(r['failures'])}")
if out: print(f"load-test: wrote {out}")
sys.exit(0 if doc["passed"] else 1)
EOF
