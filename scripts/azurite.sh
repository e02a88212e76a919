#!/usr/bin/env bash
# Start or stop Azurite (Microsoft's Azure Storage emulator, blob service only) on loopback,
# from the repo's node_modules (`npm ci` installs it), with a throw-away data folder.
#
#   scripts/azurite.sh start     # port: $AZURITE_BLOB_PORT, default 10000
#   scripts/azurite.sh stop
#   scripts/azurite.sh status
#
# State (pid, port, data, log) lives in .azurite/ (git-ignored). Azurite's development account
# key is public (Microsoft documents it); it never leaves this machine and is not printed here.
set -euo pipefail
cd "$(dirname "$0")/.."

STATE=.azurite
PORT="${AZURITE_BLOB_PORT:-10000}"
BIN=node_modules/.bin/azurite-blob

running() {
  [[ -f $STATE/pid ]] && kill -0 "$(cat "$STATE/pid")" 2>/dev/null
}

listening() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

start() {
  if running; then
    echo "azurite: already running (pid $(cat "$STATE/pid"), port $(cat "$STATE/port"))"
    return 0
  fi
  if [[ ! -x $BIN ]]; then
    echo "azurite: $BIN not found; run \`npm ci\` first" >&2
    return 1
  fi
  if listening "$PORT"; then
    echo "azurite: port $PORT is already taken; set AZURITE_BLOB_PORT to a free port" >&2
    return 1
  fi
  mkdir -p "$STATE"
  local data
  data=$(mktemp -d "${TMPDIR:-/tmp}/azurite-XXXXXX")
  echo "$data" >"$STATE/data"
  echo "$PORT" >"$STATE/port"
  # setsid: its own process group, so `stop` ends Azurite and nothing else.
  setsid "$BIN" --blobHost 127.0.0.1 --blobPort "$PORT" --location "$data" \
    --skipApiVersionCheck --loose --silent >"$STATE/log" 2>&1 &
  echo $! >"$STATE/pid"
  for _ in $(seq 1 100); do
    if listening "$PORT"; then
      echo "azurite: blob service on http://127.0.0.1:$PORT (pid $(cat "$STATE/pid"), data $data)"
      return 0
    fi
    if ! running; then break; fi
    sleep 0.2
  done
  echo "azurite: did not start; log follows" >&2
  cat "$STATE/log" >&2 || true
  stop || true
  return 1
}

stop() {
  if running; then
    local pid
    pid=$(cat "$STATE/pid")
    kill -- "-$pid" 2>/dev/null || kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    echo "azurite: stopped (pid $pid)"
  fi
  if [[ -f $STATE/data ]]; then
    rm -rf "$(cat "$STATE/data")"
  fi
  rm -f "$STATE/pid" "$STATE/port" "$STATE/data"
}

status() {
  if running; then
    echo "azurite: running (pid $(cat "$STATE/pid"), port $(cat "$STATE/port"))"
  else
    echo "azurite: not running"
    return 1
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
