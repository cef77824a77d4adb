#!/usr/bin/env bash
# Benchmarks the standalone issuer on loopback (127.0.0.1 only) and prints
# the numbers that docs/benchmarks.md records:
#
#   1. POST /token (RFC 8693 token exchange) requests/s and p50/p99 latency
#      under wrk, next to the RSA-2048 signing rate of `openssl speed` and of
#      aws-lc-rs (bench/rsa-sign, the RSA code that monoskope links).
#   2. GET /keys requests/s next to nginx serving the same JWKS bytes as a
#      static file over TLS with the same certificate.
#   3. VmRSS of the idle server with 1,000 cluster manifests and with the 2
#      example clusters.
#   4. GET /keys latency on one core across the 30 s clusters directory
#      resync, with the 2 example clusters and with 1,000 clusters.
#
# Each load test runs twice: "pinned" puts the server (or nginx) on CPU 0
# and wrk on CPU 1, "shared" lets both use every CPU.
#
# Usage: bench/run.sh [OUTPUT_DIR]
# Raw outputs and results.txt go to OUTPUT_DIR (default: a new directory
# under /tmp, printed at the end). Needs wrk, nginx, openssl, curl, taskset
# and cargo; on Debian: apt-get install -y wrk nginx curl util-linux
# iproute2 procps.
#
# Settings (environment variables):
#   DURATION=20            seconds of each measured wrk run
#   WARMUP=2               seconds of the unmeasured wrk run before each one
#   CONNECTIONS=16         wrk connections (kept open for the whole run)
#   OPENSSL_SECONDS=10     seconds of each `openssl speed` run
#   SIGN_SECONDS=5         seconds of each bench/rsa-sign mode
#   CLUSTER_COUNT=1000     manifests generated for the memory test
#   SETTLE_SECONDS=5       idle wait before VmRSS is read
#   RESYNC_SECONDS=35      seconds of each GET /keys run across the 30 s
#                          clusters resync (0 skips both runs)
#   QUIET_WAIT=300         seconds to wait for other processes to go idle
#                          before each measurement
#   BASE_PORT=18443        first of the three loopback ports used
#   MONOSKOPE_REF=REV      build this commit (git archive) instead of the
#                          working tree, into target/bench-ref
#   MONOSKOPE_BIN=PATH     use this binary instead of building one
set -euo pipefail

DURATION=${DURATION:-20}
WARMUP=${WARMUP:-2}
CONNECTIONS=${CONNECTIONS:-16}
OPENSSL_SECONDS=${OPENSSL_SECONDS:-10}
SIGN_SECONDS=${SIGN_SECONDS:-5}
CLUSTER_COUNT=${CLUSTER_COUNT:-1000}
SETTLE_SECONDS=${SETTLE_SECONDS:-5}
RESYNC_SECONDS=${RESYNC_SECONDS:-35}
QUIET_WAIT=${QUIET_WAIT:-300}
BASE_PORT=${BASE_PORT:-18443}

ISSUER_PORT=$BASE_PORT
NGINX_PORT=$((BASE_PORT + 1))
MEMORY_PORT=$((BASE_PORT + 2))

# The aims that docs/benchmarks.md states, as fractions.
TOKEN_AIM=0.70
JWKS_AIM=0.50
MEMORY_AIM_MIB=50

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH=$REPO/bench
WORK=$(mktemp -d /tmp/monoskope-bench.XXXXXX)
OUT=${1:-$(mktemp -d /tmp/monoskope-bench-results.XXXXXX)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
RESULTS=$OUT/results.txt
: >"$RESULTS"

# PIDs of every server this script started; cleanup stops exactly these.
STARTED_PIDS=()
STARTED_PID=

log() {
  printf '[bench %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2
}

fail() {
  log "ERROR: $*"
  exit 1
}

stop_pid() {
  local pid=$1
  if ! kill -0 "$pid" 2>/dev/null; then
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  local tries
  for tries in $(seq 1 50); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  log "process $pid did not stop within 5 s of SIGTERM; sending SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
  local pid
  for pid in "${STARTED_PIDS[@]}"; do
    stop_pid "$pid"
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Records "key value" in results.txt and echoes it.
record() {
  printf '%s %s\n' "$1" "$2" | tee -a "$RESULTS" >&2
}

# Prints $1 / $2 with 2 decimals, or "n/a" when $2 is zero or missing.
ratio() {
  awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 == 0) print "n/a"; else printf "%.2f\n", a / b }'
}

# Prints "met" when $1 >= $2, "missed" otherwise.
aim_status() {
  awk -v value="$1" -v aim="$2" 'BEGIN { print (value + 0 >= aim + 0) ? "met" : "missed" }'
}

require_tools() {
  local tool missing=()
  for tool in wrk nginx openssl curl taskset cargo awk sed ss pgrep git; do
    command -v "$tool" >/dev/null || missing+=("$tool")
  done
  if ((${#missing[@]} > 0)); then
    fail "missing tools: ${missing[*]} (Debian: apt-get install -y wrk nginx curl util-linux iproute2 procps)"
  fi
  if (($(nproc) < 2)); then
    fail "this benchmark pins the server and wrk to CPUs 0 and 1, but nproc is $(nproc)"
  fi
  local port
  for port in "$ISSUER_PORT" "$NGINX_PORT" "$MEMORY_PORT"; do
    if ss -Hltn "sport = :$port" | grep -q .; then
      fail "port $port on 127.0.0.1 is in use: stop its listener or set BASE_PORT"
    fi
  done
}

record_machine() {
  record date "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  record cpu_model "$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
  record cpu_family_model "$(awk -F': ' '/^cpu family/ { f = $2 } /^model\t/ { m = $2 } END { print f "/" m }' /proc/cpuinfo)"
  record cpu_count "$(nproc)"
  record avx512ifma "$(grep -qw avx512ifma /proc/cpuinfo && echo yes || echo no)"
  record memory_total_kib "$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo)"
  record kernel "$(uname -r)"
  record wrk_version "$(wrk -v 2>&1 | head -n 1 | awk '{ print $2 }')"
  record nginx_version "$(nginx -v 2>&1 | sed 's/^nginx version: //')"
  record openssl_version "$(openssl version)"
  record rustc_version "$(rustc -V)"
  record git_commit "$(git -C "$REPO" rev-parse --short HEAD)"
  record working_tree_changes "$(git -C "$REPO" status --porcelain -- src Cargo.toml Cargo.lock | wc -l | tr -d ' ') files in src/, Cargo.toml, Cargo.lock"
  record loadavg_at_start "$(cut -d' ' -f1-3 /proc/loadavg)"
}

# Builds monoskope (unless MONOSKOPE_BIN is set) and copies the binary into
# $WORK, so that a rebuild during the run does not change what is measured.
# With MONOSKOPE_REF, builds that commit from a clean `git archive` instead of
# the working tree.
prepare_binaries() {
  local source=${MONOSKOPE_BIN:-}
  if [[ -z $source && -n ${MONOSKOPE_REF:-} ]]; then
    local target_dir=$REPO/target/bench-ref
    log "building monoskope at $MONOSKOPE_REF from git archive (target dir $target_dir)"
    mkdir -p "$WORK/src"
    git -C "$REPO" archive "$MONOSKOPE_REF" | tar -x -C "$WORK/src"
    (cd "$WORK/src" && CARGO_TARGET_DIR=$target_dir cargo build --release --locked --quiet)
    source=$target_dir/release/monoskope
    record monoskope_ref "$MONOSKOPE_REF = $(git -C "$REPO" rev-parse --short "$MONOSKOPE_REF")"
  elif [[ -z $source ]]; then
    log "building monoskope from the working tree (cargo build --release)"
    (cd "$REPO" && cargo build --release --quiet)
    source=$REPO/target/release/monoskope
    record monoskope_ref "working tree at $(git -C "$REPO" rev-parse --short HEAD)"
  else
    record monoskope_ref "MONOSKOPE_BIN=$source"
  fi
  [[ -x $source ]] || fail "monoskope binary $source not found or not executable"
  cp "$source" "$WORK/monoskope"
  record monoskope_binary_sha256 "$(sha256sum "$WORK/monoskope" | cut -c1-16)"

  log "building bench/rsa-sign (cargo build --release)"
  (cd "$BENCH/rsa-sign" && cargo build --release --quiet)
  cp "$BENCH/rsa-sign/target/release/rsa-sign-bench" "$WORK/rsa-sign-bench"
}

# Prints the sign/s column of the last "rsa 2048 bits" line of openssl speed.
openssl_sign_rate() {
  awk '/^rsa +2048 bits/ { rate = $(NF - 1) } END { print rate }' "$1"
}

measure_rsa_baselines() {
  wait_for_quiet "openssl speed"
  log "openssl speed rsa2048 on CPU 0 for ${OPENSSL_SECONDS} s"
  taskset -c 0 openssl speed -seconds "$OPENSSL_SECONDS" rsa2048 >"$OUT/openssl-1core.txt" 2>&1
  record openssl_sign_per_s_1core "$(openssl_sign_rate "$OUT/openssl-1core.txt")"

  wait_for_quiet "openssl speed -multi 2"
  log "openssl speed -multi 2 rsa2048 for ${OPENSSL_SECONDS} s"
  openssl speed -seconds "$OPENSSL_SECONDS" -multi 2 rsa2048 >"$OUT/openssl-multi2.txt" 2>&1
  record openssl_sign_per_s_multi2 "$(openssl_sign_rate "$OUT/openssl-multi2.txt")"
}

# Measures the aws-lc-rs signing rates with the dev signing key, so it runs
# after the first server start has generated that key.
measure_aws_lc_sign() {
  local der=$WORK/signing-key.der
  openssl rsa -in "$WORK/state/signing/tls.key" -traditional -outform DER -out "$der" 2>/dev/null
  wait_for_quiet "bench/rsa-sign"
  log "bench/rsa-sign on CPU 0, ${SIGN_SECONDS} s per mode"
  taskset -c 0 "$WORK/rsa-sign-bench" "$der" "$SIGN_SECONDS" >"$OUT/rsa-sign.txt"
  local mode rate
  while read -r mode rate; do
    record "aws_lc_sign_per_s_1core_${mode//-/_}" "$rate"
  done <"$OUT/rsa-sign.txt"
}

# Starts `monoskope serve --dev` on CPUS ("all" for no pinning), waits
# until /readyz returns 200, and sets STARTED_PID.
start_issuer() {
  local name=$1 port=$2 clusters_dir=$3 cpus=$4 log_level=$5
  local command=("$WORK/monoskope" serve --dev --listen "127.0.0.1:$port" --state-dir "$WORK/state"
    --clusters-dir "$clusters_dir")
  if [[ $cpus != all ]]; then
    command=(taskset -c "$cpus" "${command[@]}")
  fi
  RUST_LOG=$log_level "${command[@]}" >"$OUT/$name.stdout" 2>"$OUT/$name.log" &
  STARTED_PID=$!
  STARTED_PIDS+=("$STARTED_PID")
  wait_ready "$name" "https://127.0.0.1:$port/readyz" "$STARTED_PID"
}

# Polls URL (at most 100 times, 0.1 s apart) until it returns 200.
wait_ready() {
  local name=$1 url=$2 pid=$3 attempt
  for attempt in $(seq 1 100); do
    if ! kill -0 "$pid" 2>/dev/null; then
      fail "$name exited during startup; see $OUT/$name.log"
    fi
    if [[ -f $WORK/state/ca.crt ]] &&
      [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 2 --cacert "$WORK/state/ca.crt" "$url") == 200 ]]; then
      return 0
    fi
    sleep 0.1
  done
  fail "$name did not answer 200 on $url within 10 s; see $OUT/$name.log"
}

# Starts nginx in the foreground (daemon off) on CPUS with WORKERS worker
# processes, serving $WORK/jwks.json at /keys, and sets STARTED_PID.
start_nginx() {
  local name=$1 cpus=$2 workers=$3
  local dir=$WORK/nginx-$name
  mkdir -p "$dir/www" "$dir/temp"
  cp "$WORK/jwks.json" "$dir/www/keys"
  # Workers run as the `nobody` user when the master runs as root, so www/
  # must be readable by others.
  chmod 755 "$WORK" "$dir" "$dir/www"
  chmod 644 "$dir/www/keys"
  cat >"$dir/nginx.conf" <<EOF
daemon off;
worker_processes $workers;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events {
    worker_connections 1024;
}
http {
    access_log off;
    client_body_temp_path $dir/temp/client;
    proxy_temp_path $dir/temp/proxy;
    fastcgi_temp_path $dir/temp/fastcgi;
    uwsgi_temp_path $dir/temp/uwsgi;
    scgi_temp_path $dir/temp/scgi;
    sendfile on;
    keepalive_timeout 75s;
    # The default (1000) would close each wrk connection after 1000
    # requests and add TLS handshakes that the issuer never pays.
    keepalive_requests 100000000;
    server {
        listen 127.0.0.1:$NGINX_PORT ssl;
        ssl_certificate $WORK/state/tls/tls.crt;
        ssl_certificate_key $WORK/state/tls/tls.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        root $dir/www;
        location = /keys {
            types { }
            default_type application/jwk-set+json;
            add_header Cache-Control "public, max-age=300";
        }
    }
}
EOF
  local command=(nginx -e "$dir/error.log" -p "$dir" -c "$dir/nginx.conf")
  if [[ $cpus != all ]]; then
    command=(taskset -c "$cpus" "${command[@]}")
  fi
  "${command[@]}" >"$OUT/nginx-$name.stdout" 2>&1 &
  STARTED_PID=$!
  STARTED_PIDS+=("$STARTED_PID")
  wait_ready "nginx-$name" "https://127.0.0.1:$NGINX_PORT/keys" "$STARTED_PID"
}

# Sum of utime and stime of the given PIDs (all their threads), in clock ticks.
cpu_ticks_of() {
  local pid total=0
  for pid in "$@"; do
    total=$((total + $(awk '{ print $14 + $15 }' "/proc/$pid/stat")))
  done
  echo "$total"
}

# Busy clock ticks of the whole machine (all CPUs).
machine_busy_ticks() {
  awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat
}

# Waits (at most QUIET_WAIT seconds) until the machine is nearly idle, so
# that other work on a shared machine does not end up in the numbers. Every
# measurement still records the CPU time that others used during it.
wait_for_quiet() {
  local what=$1 waited=0 before after busy_cores
  while true; do
    before=$(machine_busy_ticks)
    sleep 1
    after=$(machine_busy_ticks)
    busy_cores=$(awk -v a="$before" -v b="$after" -v t="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f\n", (b - a) / t }')
    if awk -v busy="$busy_cores" 'BEGIN { exit !(busy < 0.15) }'; then
      return 0
    fi
    waited=$((waited + 1))
    if ((waited >= QUIET_WAIT)); then
      log "WARNING: the machine is still busy ($busy_cores cores) after ${QUIET_WAIT} s; measuring $what anyway"
      return 0
    fi
    if ((waited == 1 || waited % 30 == 0)); then
      log "waiting for other processes to go idle before $what ($busy_cores cores busy)"
    fi
  done
}

# Converts a wrk latency such as 812.00us, 6.83ms or 1.20s to milliseconds.
to_ms() {
  awk -v value="$1" 'BEGIN {
    if (value ~ /us$/) { sub(/us$/, "", value); printf "%.2f\n", value / 1000 }
    else if (value ~ /ms$/) { sub(/ms$/, "", value); printf "%.2f\n", value }
    else if (value ~ /s$/) { sub(/s$/, "", value); printf "%.2f\n", value * 1000 }
    else print "n/a"
  }'
}

# Runs wrk against URL and records requests/s, p50, p99, errors, and the CPU
# time that the server (SERVER_PIDS, space-separated) and the whole machine
# used during the measured run.
run_wrk() {
  local name=$1 server_pids=$2 wrk_cpus=$3 threads=$4 url=$5
  shift 5
  local command=(wrk -t"$threads" -c"$CONNECTIONS" --latency "$@")
  if [[ $wrk_cpus != all ]]; then
    command=(taskset -c "$wrk_cpus" "${command[@]}")
  fi

  wait_for_quiet "wrk $name"
  log "wrk $name: ${WARMUP} s warm-up, ${DURATION} s measured, $CONNECTIONS connections, $threads threads"
  timeout $((WARMUP + 30)) "${command[@]}" -d"${WARMUP}s" "$url" >"$OUT/wrk-$name-warmup.txt"

  local ticks=$(getconf CLK_TCK)
  local server_before machine_before server_after machine_after
  # shellcheck disable=SC2086 # one word per PID
  server_before=$(cpu_ticks_of $server_pids)
  machine_before=$(machine_busy_ticks)
  local TIMEFORMAT='%U %S'
  { time timeout $((DURATION + 30)) "${command[@]}" -d"${DURATION}s" "$url" >"$OUT/wrk-$name.txt"; } \
    2>"$OUT/wrk-$name.time"
  # shellcheck disable=SC2086
  server_after=$(cpu_ticks_of $server_pids)
  machine_after=$(machine_busy_ticks)

  local file=$OUT/wrk-$name.txt
  local rps p50 p99 max non2xx socket_errors
  rps=$(awk '/^Requests\/sec:/ { print $2 }' "$file")
  p50=$(to_ms "$(awk '$1 == "50%" { print $2 }' "$file")")
  p99=$(to_ms "$(awk '$1 == "99%" { print $2 }' "$file")")
  max=$(to_ms "$(awk '$1 == "Latency" && NF == 5 { print $4 }' "$file")")
  non2xx=$(awk '/Non-2xx or 3xx responses:/ { print $NF }' "$file")
  socket_errors=$(awk -F'[ ,]+' '/Socket errors:/ { print $4 + $6 + $8 + $10 }' "$file")

  local server_cpu machine_cpu wrk_cpu
  server_cpu=$(awk -v a="$server_before" -v b="$server_after" -v t="$ticks" 'BEGIN { printf "%.2f\n", (b - a) / t }')
  machine_cpu=$(awk -v a="$machine_before" -v b="$machine_after" -v t="$ticks" 'BEGIN { printf "%.2f\n", (b - a) / t }')
  wrk_cpu=$(tail -n 1 "$OUT/wrk-$name.time" | awk '{ printf "%.2f\n", $1 + $2 }')

  record "${name}_requests_per_s" "$rps"
  record "${name}_p50_ms" "$p50"
  record "${name}_p99_ms" "$p99"
  record "${name}_max_ms" "$max"
  record "${name}_non_2xx" "${non2xx:-0}"
  record "${name}_socket_errors" "${socket_errors:-0}"
  record "${name}_server_cpu_s" "$server_cpu"
  record "${name}_wrk_cpu_s" "$wrk_cpu"
  record "${name}_machine_busy_cpu_s" "$machine_cpu"
  record "${name}_other_cpu_s" "$(awk -v m="$machine_cpu" -v s="$server_cpu" -v w="$wrk_cpu" \
    'BEGIN { o = m - s - w; printf "%.2f\n", (o < 0 ? 0 : o) }')"
  record "${name}_requests_per_server_cpu_s" "$(awk -v r="$rps" -v d="$DURATION" -v c="$server_cpu" \
    'BEGIN { if (c == 0) print "n/a"; else printf "%.1f\n", r * d / c }')"
  local other_cores
  other_cores=$(awk -v m="$machine_cpu" -v s="$server_cpu" -v w="$wrk_cpu" -v d="$DURATION" \
    'BEGIN { o = (m - s - w) / d; printf "%.2f\n", (o < 0 ? 0 : o) }')
  if awk -v o="$other_cores" 'BEGIN { exit !(o >= 0.10) }'; then
    record "${name}_disturbed" "yes: other processes used $other_cores cores on average"
    log "WARNING: other processes used $other_cores cores during wrk $name; rerun on a quiet machine"
  fi
  if [[ ${non2xx:-0} != 0 || ${socket_errors:-0} != 0 ]]; then
    log "WARNING: wrk $name saw ${non2xx:-0} non-2xx responses and ${socket_errors:-0} socket errors"
  fi
}

# Writes the token exchange form for wrk and checks that one exchange works.
prepare_token_exchange() {
  local session_token
  session_token=$("$WORK/monoskope" token --state-dir "$WORK/state" --user jane@example.com --group developers \
    2>/dev/null)
  printf '%s' "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange" \
    "&subject_token=$session_token" \
    "&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Ajwt" \
    "&audience=test-cluster&scope=default" >"$WORK/token-exchange.form"

  local status
  status=$(curl -s -o "$OUT/token-exchange-sample.json" -w '%{http_code}' --max-time 5 \
    --cacert "$WORK/state/ca.crt" -H 'Content-Type: application/x-www-form-urlencoded' \
    --data-binary "@$WORK/token-exchange.form" "https://127.0.0.1:$ISSUER_PORT/token")
  if [[ $status != 200 ]] || ! grep -q '"access_token"' "$OUT/token-exchange-sample.json"; then
    fail "a single token exchange returned HTTP $status, not 200 with an access_token: $(head -c 300 "$OUT/token-exchange-sample.json")"
  fi
}

# Records protocol, cipher suite and key exchange that openssl s_client
# negotiates, to show that both servers use comparable TLS.
record_tls() {
  local name=$1 port=$2
  local brief
  brief=$(timeout 10 openssl s_client -connect "127.0.0.1:$port" -brief </dev/null 2>&1 || true)
  record "${name}_tls" "$(printf '%s\n' "$brief" |
    awk -F': ' '/^(Protocol version|Ciphersuite|Server Temp Key):/ { printf "%s%s", sep, $2; sep = ", " }')"
}

# Saves the JWKS response headers of both servers and fails unless both
# return the same body.
check_same_jwks() {
  curl -s --max-time 5 --cacert "$WORK/state/ca.crt" -D "$OUT/jwks-headers-issuer.txt" \
    -o "$WORK/jwks-issuer.json" "https://127.0.0.1:$ISSUER_PORT/keys"
  curl -s --max-time 5 --cacert "$WORK/state/ca.crt" -D "$OUT/jwks-headers-nginx.txt" \
    -o "$WORK/jwks-nginx.json" "https://127.0.0.1:$NGINX_PORT/keys"
  cmp -s "$WORK/jwks-issuer.json" "$WORK/jwks-nginx.json" || fail "nginx serves different JWKS bytes than the issuer"
  record jwks_body_bytes "$(wc -c <"$WORK/jwks-issuer.json" | tr -d ' ')"
}

run_load_tests() {
  local mode=$1 server_cpus wrk_cpus threads nginx_workers
  if [[ $mode == pinned ]]; then
    server_cpus=0 wrk_cpus=1 threads=1 nginx_workers=1
  else
    server_cpus=all wrk_cpus=all threads=2 nginx_workers=$(nproc)
  fi

  start_issuer "issuer-$mode" "$ISSUER_PORT" "$REPO/examples/clusters" "$server_cpus" warn
  local issuer_pid=$STARTED_PID
  record "issuer_${mode}_threads" "$(awk '/^Threads:/ { print $2 }' "/proc/$issuer_pid/status")"
  if [[ ! -f $WORK/jwks.json ]]; then
    curl -s --max-time 5 --cacert "$WORK/state/ca.crt" -o "$WORK/jwks.json" "https://127.0.0.1:$ISSUER_PORT/keys"
    record_tls issuer "$ISSUER_PORT"
  fi
  prepare_token_exchange

  TOKEN_EXCHANGE_BODY=$WORK/token-exchange.form run_wrk "token_$mode" "$issuer_pid" "$wrk_cpus" "$threads" \
    "https://127.0.0.1:$ISSUER_PORT/token" -s "$BENCH/token-exchange.lua"
  run_wrk "jwks_issuer_$mode" "$issuer_pid" "$wrk_cpus" "$threads" "https://127.0.0.1:$ISSUER_PORT/keys"
  record "issuer_${mode}_vmrss_kib_after_load" "$(awk '/^VmRSS:/ { print $2 }' "/proc/$issuer_pid/status")"

  start_nginx "$mode" "$server_cpus" "$nginx_workers"
  local nginx_pid=$STARTED_PID
  if [[ $mode == pinned ]]; then
    check_same_jwks
    record_tls nginx "$NGINX_PORT"
  fi
  # The workers serve the requests; the master only supervises them.
  local nginx_workers_pids
  nginx_workers_pids=$(pgrep -P "$nginx_pid" | tr '\n' ' ')
  [[ -n $nginx_workers_pids ]] || fail "nginx ($nginx_pid) has no worker process; see $WORK/nginx-$mode/error.log"
  run_wrk "jwks_nginx_$mode" "$nginx_workers_pids" "$wrk_cpus" "$threads" "https://127.0.0.1:$NGINX_PORT/keys"

  stop_pid "$nginx_pid"
  stop_pid "$issuer_pid"
}

# Writes CLUSTER_COUNT copies of the example test-cluster manifest, each with
# its own metadata.name, spec.clusterName and API server address.
generate_clusters() {
  local dir=$1 count=$2 i name
  mkdir -p "$dir"
  for i in $(seq -w 1 "$count"); do
    name=bench-cluster-$i
    sed -e "s/test-cluster/$name/g" -e "s/Test Cluster/Bench Cluster $i/" \
      "$REPO/examples/clusters/test-cluster.yaml" >"$dir/$name.yaml"
  done
}

measure_idle_memory() {
  local name=$1 clusters_dir=$2 expected=$3
  start_issuer "memory-$name" "$MEMORY_PORT" "$clusters_dir" all info
  local pid=$STARTED_PID
  if ! grep -q "Clusters and signing keys loaded.*clusters=$expected skipped=0" "$OUT/memory-$name.log"; then
    fail "memory-$name did not log 'clusters=$expected skipped=0'; see $OUT/memory-$name.log"
  fi
  sleep "$SETTLE_SECONDS"
  record "memory_${name}_vmrss_kib" "$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status")"
  record "memory_${name}_vmhwm_kib" "$(awk '/^VmHWM:/ { print $2 }' "/proc/$pid/status")"
  stop_pid "$pid"
}

# Serves /keys from a one-core server for RESYNC_SECONDS, which spans the
# issuer's 30 s clusters directory resync, once with the 2 example clusters
# and once with CLUSTER_COUNT clusters. The resync scans the directory on a
# runtime worker, so the difference in maximum latency is the scan's stall.
run_resync_check() {
  if ((RESYNC_SECONDS == 0)); then
    return 0
  fi
  local saved_duration=$DURATION saved_connections=$CONNECTIONS
  DURATION=$RESYNC_SECONDS CONNECTIONS=4
  local name dir pid
  for name in examples "$CLUSTER_COUNT"; do
    dir=$WORK/clusters-$name
    [[ $name == examples ]] && dir=$REPO/examples/clusters
    start_issuer "resync-$name" "$MEMORY_PORT" "$dir" 0 warn
    pid=$STARTED_PID
    run_wrk "jwks_resync_clusters_${name}_pinned" "$pid" 1 1 "https://127.0.0.1:$MEMORY_PORT/keys"
    stop_pid "$pid"
  done
  DURATION=$saved_duration CONNECTIONS=$saved_connections
}

# Records the mean wall time of `monoskope render` over 5 runs. It scans the
# whole clusters directory once, as each resync does, so the difference
# between CLUSTER_COUNT clusters and the examples estimates one scan.
time_cluster_scan() {
  local name=$1 dir=$2 cluster=$3 run started total=0
  for run in 1 2 3 4 5; do
    started=$(date +%s%N)
    "$WORK/monoskope" render "$cluster" --state-dir "$WORK/state" --clusters-dir "$dir" --output flags >/dev/null
    total=$((total + $(date +%s%N) - started))
  done
  record "render_clusters_${name}_ms" "$(awk -v ns="$total" 'BEGIN { printf "%.1f\n", ns / 5 / 1e6 }')"
}

run_memory_tests() {
  generate_clusters "$WORK/clusters-$CLUSTER_COUNT" "$CLUSTER_COUNT"
  log "idle memory with $CLUSTER_COUNT clusters, then with the 2 examples"
  measure_idle_memory "clusters_$CLUSTER_COUNT" "$WORK/clusters-$CLUSTER_COUNT" "$CLUSTER_COUNT"
  measure_idle_memory clusters_examples "$REPO/examples/clusters" 2
  time_cluster_scan "$CLUSTER_COUNT" "$WORK/clusters-$CLUSTER_COUNT" bench-cluster-$(printf '%0*d' ${#CLUSTER_COUNT} 1)
  time_cluster_scan examples "$REPO/examples/clusters" test-cluster
}

# Reads a recorded value back from results.txt.
value() {
  awk -v key="$1" '$1 == key { $1 = ""; sub(/^ /, ""); print }' "$RESULTS"
}

summarize() {
  local token_pinned_ratio token_shared_ratio aws_lc_ratio jwks_pinned_ratio jwks_shared_ratio rss_mib
  token_pinned_ratio=$(ratio "$(value token_pinned_requests_per_s)" "$(value openssl_sign_per_s_1core)")
  token_shared_ratio=$(ratio "$(value token_shared_requests_per_s)" "$(value openssl_sign_per_s_multi2)")
  aws_lc_ratio=$(ratio "$(value token_pinned_requests_per_s)" "$(value aws_lc_sign_per_s_1core_parsed_once)")
  jwks_pinned_ratio=$(ratio "$(value jwks_issuer_pinned_requests_per_s)" "$(value jwks_nginx_pinned_requests_per_s)")
  jwks_shared_ratio=$(ratio "$(value jwks_issuer_shared_requests_per_s)" "$(value jwks_nginx_shared_requests_per_s)")
  rss_mib=$(awk -v k="$(value "memory_clusters_${CLUSTER_COUNT}_vmrss_kib")" 'BEGIN { printf "%.1f\n", k / 1024 }')

  record ratio_token_pinned_to_openssl_1core "$token_pinned_ratio"
  record ratio_token_shared_to_openssl_multi2 "$token_shared_ratio"
  record ratio_token_pinned_to_aws_lc_1core "$aws_lc_ratio"
  record ratio_jwks_issuer_to_nginx_pinned "$jwks_pinned_ratio"
  record ratio_jwks_issuer_to_nginx_shared "$jwks_shared_ratio"
  record memory_clusters_${CLUSTER_COUNT}_vmrss_mib "$rss_mib"
  record aim_token_pinned "$(aim_status "$token_pinned_ratio" "$TOKEN_AIM")"
  record aim_token_shared "$(aim_status "$token_shared_ratio" "$TOKEN_AIM")"
  record aim_jwks_pinned "$(aim_status "$jwks_pinned_ratio" "$JWKS_AIM")"
  record aim_jwks_shared "$(aim_status "$jwks_shared_ratio" "$JWKS_AIM")"
  record aim_memory "$(awk -v m="$rss_mib" -v aim="$MEMORY_AIM_MIB" 'BEGIN { print (m < aim) ? "met" : "missed" }')"
  record loadavg_at_end "$(cut -d' ' -f1-3 /proc/loadavg)"
}

main() {
  require_tools
  record_machine
  prepare_binaries
  measure_rsa_baselines
  run_load_tests pinned
  measure_aws_lc_sign
  run_load_tests shared
  run_memory_tests
  run_resync_check
  summarize
  log "done; raw outputs and results.txt are in $OUT"
}

main
