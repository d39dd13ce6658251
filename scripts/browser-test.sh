#!/usr/bin/env bash
# Headless-browser test of the page `zeroseg serve` serves at `/` (scripts/browser_test.py).
#
# Installs what it lacks (Debian's chromium and chromium-driver, selenium from PyPI), builds
# zeroseg (release), makes the tiny synthetic model and an index of examples/ (grid regions)
# when missing, starts `zeroseg serve` (with a --token) on a free loopback port, runs the test,
# stops the server.
#
#   scripts/browser-test.sh [--port N] [--scratch-path DIR] [--screenshot OUT.png] [--timeout S]
#
# ZEROSEG_BIN=path skips the build and uses that binary. Every wait is bounded.
set -euo pipefail
cd "$(dirname "$0")/.."

port=0
scratch=.build
screenshot=/tmp/zs-browser/serve-page.png
timeout=120
model=/tmp/zs-tiny
index=/tmp/zs-browser-index
while [ $# -gt 0 ]; do
    case "$1" in
        --port) port="$2"; shift 2 ;;
        --scratch-path) scratch="$2"; shift 2 ;;
        --screenshot) screenshot="$2"; shift 2 ;;
        --timeout) timeout="$2"; shift 2 ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) echo "browser-test.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

say() { echo "browser-test.sh: $*" >&2; }

# ---- tools
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
    say "installing chromium and chromium-driver"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
fi
if ! python3 -c 'import selenium' 2>/dev/null; then
    say "installing selenium"
    python3 -m pip install -q "selenium==4.51.0"
fi

# ---- zeroseg, the model, the index
if [ -n "${ZEROSEG_BIN:-}" ]; then
    bin="$ZEROSEG_BIN"
else
    say "swift build -c release --scratch-path $scratch"
    swift build -c release --scratch-path "$scratch" >&2
    bin="$scratch/release/zeroseg"
fi
[ -x "$bin" ] || { say "no zeroseg binary at $bin"; exit 1; }
if [ ! -f "$model/config.json" ]; then
    say "making the tiny synthetic model in $model"
    "$bin" weights synth --arch tiny --seed 0 --out "$model" >&2
fi
say "indexing examples/ into $index"
"$bin" index examples --out "$index" --model "$model" --regions grid --quiet >&2

# ---- the server
work=$(mktemp -d /tmp/zs-browser-test.XXXXXX)
log="$work/serve.log"
server=""
cleanup() {
    if [ -n "$server" ] && kill -0 "$server" 2>/dev/null; then
        kill "$server" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$server" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$server" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# With a token, so that the page's Authorization header is tested on every request.
token="browser-test-$$"
"$bin" serve --host 127.0.0.1 --port "$port" --model "$model" --index "$index" --token "$token" 2>"$log" &
server=$!
url=""
for _ in $(seq 600); do  # 60 s
    url=$(grep -o 'listening on http://[^ ]*' "$log" | head -1 | sed 's/^listening on //' || true)
    [ -n "$url" ] && break
    if ! kill -0 "$server" 2>/dev/null; then
        say "zeroseg serve exited before listening:"; tail -5 "$log" >&2; exit 1
    fi
    sleep 0.1
done
[ -n "$url" ] || { say "zeroseg serve printed no 'listening on' line in 60 s"; tail -5 "$log" >&2; exit 1; }
say "server at $url"

mkdir -p "$(dirname "$screenshot")"
status=0
python3 scripts/browser_test.py --url "$url" --image examples/chelsea.jpg \
    --classes "cat,grass|lawn,wall,floor" --token "$token" --screenshot "$screenshot" --timeout "$timeout" || status=$?
if [ "$status" -ne 0 ]; then
    say "server log (last lines):"; tail -5 "$log" >&2
fi
exit "$status"
