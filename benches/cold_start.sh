#!/usr/bin/env bash
# Cold start on the real runtime: `spin up` → the first answered `/healthz`, with an empty
# Wasmtime compile cache each run (a fresh directory holding a copy of spin.toml and the
# component). Components are measured interleaved, RUNS times each, so load drifts hit all alike.
#
#   PATH=$PATH:../shared/bin bash benches/cold_start.sh <component.wasm> [<other.wasm> …]
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${RUNS:-3}"
spin="${SPIN_BIN:-spin}"
command -v "$spin" >/dev/null || { echo "cold_start.sh: no spin on PATH (or SPIN_BIN)" >&2; exit 2; }
[ $# -ge 1 ] || { echo "usage: $0 <component.wasm> [<other.wasm> …]" >&2; exit 2; }
port=39471
for run in $(seq 1 "$runs"); do
  for wasm in "$@"; do
    dir="$(mktemp -d)"
    mkdir -p "$dir/target/wasm32-wasip2/release"
    cp spin.toml "$dir/"
    cp "$wasm" "$dir/target/wasm32-wasip2/release/gong_crm_bridge.wasm"
    printf '[cache]\ndirectory = "%s/cache"\n' "$dir" > "$dir/cache.toml"
    start=$(date +%s.%N)
    (cd "$dir" && exec "$spin" up --listen "127.0.0.1:$port" --cache "$dir/cache.toml" --variable api_token=cold-start >"$dir/log" 2>&1) &
    pid=$!
    until curl -s -o /dev/null "http://127.0.0.1:$port/healthz"; do
      sleep 0.02
      kill -0 "$pid" 2>/dev/null || { echo "spin up exited: $(tail -3 "$dir/log")" >&2; exit 1; }
    done
    end=$(date +%s.%N)
    printf 'run %s  %9s bytes  %.2f s  %s\n' "$run" "$(stat -c %s "$wasm")" "$(echo "$end - $start" | bc)" "$wasm"
    pkill -P "$pid" 2>/dev/null || true
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    rm -rf "$dir"
    port=$((port + 1))
  done
done
