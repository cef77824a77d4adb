#!/usr/bin/env bash
# Wall time of `monoctl get cluster-credentials` on a cache hit and on a
# cache miss against a local dev issuer, with starting /bin/true as the
# baseline measured in the same run. Loopback only; prints a Markdown table.
#
#   bench/monoctl.sh [RUNS]        # default 500 runs for the cache hit
set -euo pipefail

runs=${1:-500}
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/monoctl-bench.XXXXXX)
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

command -v hyperfine >/dev/null || { echo "hyperfine is required (apt-get install hyperfine)" >&2; exit 1; }
(cd "$repo" && cargo build --release --quiet --bin monoskope --bin monoctl)
monoskope="$repo/target/release/monoskope"
monoctl="$repo/target/release/monoctl"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
issuer="https://127.0.0.1:$port"
RUST_LOG=warn "$monoskope" serve --dev --listen "127.0.0.1:$port" --state-dir "$work/state" \
  --clusters-dir "$repo/examples/clusters" > "$work/server.out" 2> "$work/server.log" &
server_pid=$!
for _ in $(seq 1 100); do
  curl -sf --cacert "$work/state/ca.crt" "$issuer/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done

# monoctl's configuration and a session, as `monoctl login` leaves them.
export MONOCTL_CONFIG="$work/monoctl.yaml" MONOCTL_CACHE_DIR="$work/cache"
printf 'server: %s\ncaFile: %s\n' "$issuer" "$work/state/ca.crt" > "$MONOCTL_CONFIG"
session=$("$monoskope" token --state-dir "$work/state" --user jane@example.com --group developers 2>/dev/null)
key=$(printf '%s\0' "$issuer" | sha256sum | cut -c1-32)
mkdir -p -m 0700 "$MONOCTL_CACHE_DIR/sessions"
printf '{"issuer":"%s","token":"%s","expiresAt":%s,"email":"jane@example.com","groups":["developers"]}' \
  "$issuer" "$session" "$(( $(date +%s) + 3600 ))" > "$MONOCTL_CACHE_DIR/sessions/$key.json"
chmod 0600 "$MONOCTL_CACHE_DIR/sessions/$key.json"

"$monoctl" get cluster-credentials test-cluster default > /dev/null   # fills the cache

hyperfine --shell=none --warmup 50 --runs "$runs" --export-json "$work/hit.json" \
  --command-name '/bin/true' '/bin/true' \
  --command-name 'cache hit' "$monoctl get cluster-credentials test-cluster default" > "$work/hit.txt"
hyperfine --shell=none --warmup 5 --runs 100 --export-json "$work/miss.json" \
  --prepare "find $MONOCTL_CACHE_DIR/tokens -name '*.json' -delete" \
  --command-name 'cache miss' "$monoctl get cluster-credentials test-cluster default" > "$work/miss.txt"

python3 - "$work/hit.json" "$work/miss.json" <<'EOF'
import json, sys
results = {r["command"]: r for path in sys.argv[1:] for r in json.load(open(path))["results"]}
base = results["/bin/true"]["mean"]
print("| command | mean | median | p99 (approx.) | ratio to /bin/true |")
print("|---|---|---|---|---|")
for name in ["/bin/true", "cache hit", "cache miss"]:
    r = results[name]
    times = sorted(r["times"])
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
    print(f"| {name} | {r['mean']*1000:.2f} ms | {r['median']*1000:.2f} ms | {p99*1000:.2f} ms | {r['mean']/base:.2f} |")
EOF
