# Sourced by scripts/load-test.sh and scripts/api-fuzz.sh: start and stop one `zeroseg serve` on
# loopback, every wait bounded. Needs $bin (the zeroseg binary) and $who (the caller's name, for
# messages); sets server_pid and url.
server_pid=""
url=""

# start_server LOG SERVE-ARGS...: starts `zeroseg serve --host 127.0.0.1 --port 0 SERVE-ARGS`,
# waits at most 60 s for its "listening on" line.
start_server() {
  local log="$1"; shift
  "$bin" serve --host 127.0.0.1 --port 0 "$@" >"$log" 2>&1 &
  server_pid=$!
  url=""
  for _ in $(seq 1 600); do   # at most 60 s
    url=$(grep -o -m1 -E 'listening on http://127\.0\.0\.1:[0-9]+' "$log" | sed 's/^listening on //' || true)
    [ -n "$url" ] && return 0
    kill -0 "$server_pid" 2>/dev/null || { echo "$who: the server exited:" >&2; cat "$log" >&2; exit 1; }
    sleep 0.1
  done
  echo "$who: no 'listening on' line within 60 s:" >&2; cat "$log" >&2; exit 1
}

# stop_server: SIGTERM (the server drains: at most 35 s), then SIGKILL.
stop_server() {
  [ -n "$server_pid" ] || return 0
  kill -TERM "$server_pid" 2>/dev/null || true
  for _ in $(seq 1 350); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=""
}

# kill_server: at once (for the EXIT trap).
kill_server() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -KILL "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
}
