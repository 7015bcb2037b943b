#!/usr/bin/env bash
# The latency of a single KV PUT, pier against Consul v1.22.7, one after
# the other on the same loopback in one run, in two modes:
#
#   dev     `agent -dev`: a server of one, Raft in memory, no disk
#   server  `agent -server -bootstrap-expect 1 -data-dir D`: a server of one
#           whose Raft log is on disk (fsync per append) on both
#
# One client, one PUT at a time (deploy/bench/kv -mode put -clients 1, plain
# net/http speaking Consul's KV API to both, one kept-alive connection):
# WARMUP unmeasured PUTs, then OPS measured ones (bounded by DURATION), each
# a VALUE_SIZE-byte value to a random one of KEYS keys. Reported per target
# and mode: p50, p90, p99, mean and max of a PUT as the client sees it, and
# the server's CPU per PUT (utime+stime from /proc).
#
# Consul is built from its source on the Go module proxy into CACHE_DIR,
# once (5 to 10 minutes on 2 cores; started first, in the background, while
# pier builds): v1.22.7's go.mod replaces its submodules with directories
# its module zip lacks, so the replaces are dropped, and its commands use
# ACL fields that the api v1.33.7 it names lacks, so api v1.34.1 is
# required. CONSUL=/path/to/consul skips the build.
#
# PROFILE=1 also runs, after each target's measured run of each mode, 3 s more of
# the same sequential PUTs under a CPU profile from its /debug/pprof
# (enable_debug in a config file) and an `strace -c -f` of its system calls
# (fsync counts); both are kept under OUT_DIR and summarized after the
# table.
#
# Usage: deploy/bench/consul-put.sh   (from anywhere; needs go, curl; about
#        1 minute once Consul is built). Run by hand; CI does not.
# Knobs: OPS=2000 WARMUP=200 VALUE_SIZE=100 KEYS=1000 DURATION=120s
#        MODES="dev server" TARGETS="consul pier" BASE_PORT=24000 (uses
#        BASE_PORT+1..+9 on 127.0.0.1) CACHE_DIR=~/.cache/pier-bench CONSUL
#        PROFILE=0 OUT_DIR=/tmp/pier-consul-put
set -euo pipefail
cd "$(dirname "$0")/../.."
. deploy/bench/lib.sh

OPS=${OPS:-2000}
WARMUP=${WARMUP:-200}
VALUE_SIZE=${VALUE_SIZE:-100}
KEYS=${KEYS:-1000}
DURATION=${DURATION:-120s}
MODES=${MODES:-dev server}
TARGETS=${TARGETS:-consul pier}
BASE_PORT=${BASE_PORT:-24000}
CACHE_DIR=${CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pier-bench}
CONSUL_VERSION=v1.22.7
CONSUL_API=v1.34.1
CONSUL=${CONSUL:-$CACHE_DIR/consul-$CONSUL_VERSION}
PROFILE=${PROFILE:-0}
OUT_DIR=${OUT_DIR:-/tmp/pier-consul-put}
READY_TRIES=600 # x 0.1 s: the longest wait for a leader that takes writes

need=()
command -v curl >/dev/null 2>&1 || need+=(curl)
[ "$PROFILE" = 1 ] && ! command -v strace >/dev/null 2>&1 && need+=(strace)
install_missing "${need[@]}"
command -v go >/dev/null 2>&1 || { echo "consul-put.sh: go is missing" >&2; exit 1; }

make_work -t pier-consul-put.XXXXXX
build_pid=""

# build_consul: Consul's source from the module proxy, built in a copy of
# it into $CONSUL (through a temporary name, so that an interrupted build
# leaves nothing that looks finished).
build_consul() {
  local src tmp m
  src=$(go mod download -json "github.com/hashicorp/consul@$CONSUL_VERSION" | sed -n 's/^\s*"Dir": "\(.*\)",$/\1/p')
  [ -n "$src" ] || { echo "go mod download of consul@$CONSUL_VERSION failed" >&2; return 1; }
  tmp="$work/consul-src"
  cp -r "$src" "$tmp" && chmod -R u+w "$tmp"
  cd "$tmp"
  for m in api envoyextensions proto-public sdk troubleshoot; do
    go mod edit -dropreplace "github.com/hashicorp/consul/$m"
  done
  go mod edit -require "github.com/hashicorp/consul/api@$CONSUL_API"
  mkdir -p "$(dirname "$CONSUL")"
  GOFLAGS=-mod=mod CGO_ENABLED=0 go build -o "$CONSUL.tmp" .
  mv "$CONSUL.tmp" "$CONSUL"
}

if [[ " $TARGETS " == *" consul "* ]] && [ ! -x "$CONSUL" ]; then
  echo "== building Consul $CONSUL_VERSION into $CONSUL in the background (5 to 10 minutes on 2 cores; log: $work/consul-build.log)" >&2
  (build_consul) >"$work/consul-build.log" 2>&1 &
  build_pid=$!
  pids+=("$build_pid")
fi

echo "== building pier and the load generator" >&2
go build -o "$work/pier" ./cmd/pier
(cd deploy/bench/kv && go build -o "$work/kv" .)

if [ -n "$build_pid" ]; then
  echo "== waiting for the Consul build" >&2
  wait "$build_pid" || { echo "the Consul build failed:" >&2; tail -n 30 "$work/consul-build.log" >&2; exit 1; }
fi

tck=$(getconf CLK_TCK)
field() { sed -nE "s/.*\"$1\":([^,}]*).*/\1/p" <<<"$2" | tr -d '"'; }
mkdir -p "$OUT_DIR"
results="$work/results"
: >"$results"

echo "== $(date -u +%FT%TZ) $(nproc) cores ($(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== pier $(git describe --always --dirty 2>/dev/null || echo '?'), $([ -x "$CONSUL" ] && "$CONSUL" version | head -1), $(go version | cut -d' ' -f3)"
echo "== OPS=$OPS WARMUP=$WARMUP VALUE_SIZE=$VALUE_SIZE KEYS=$KEYS DURATION=$DURATION, 1 client, sequential"

http=$((BASE_PORT + 1))
spid=""

# start TARGET MODE: one agent on 127.0.0.1 with its ports under
# BASE_PORT, HTTP on $http; sets spid
start() {
  local t=$1 m=$2 dir="$work/$1-$2" args=()
  mkdir -p "$dir"
  case $m in
    dev) args=(-dev) ;;
    server) args=(-server -bootstrap-expect 1 -data-dir "$dir/data") ;;
    *) echo "MODES: dev or server, not $m" >&2; exit 1 ;;
  esac
  case $t in
    consul)
      local dbg=()
      [ "$PROFILE" = 1 ] && dbg=(-hcl 'enable_debug = true')
      # No update check nor anonymous signature: nothing leaves loopback.
      CHECKPOINT_DISABLE=1 "$CONSUL" agent "${args[@]}" -node "c-$m" -bind 127.0.0.1 -client 127.0.0.1 \
        -http-port "$http" -dns-port -1 -grpc-port -1 -grpc-tls-port -1 -serf-lan-port $((BASE_PORT + 2)) \
        -serf-wan-port $((BASE_PORT + 3)) -server-port $((BASE_PORT + 4)) \
        -hcl 'disable_update_check = true' -hcl 'disable_anonymous_signature = true' \
        "${dbg[@]}" -log-level warn >"$dir/log" 2>&1 &
      ;;
    pier)
      local cfg=()
      if [ "$PROFILE" = 1 ]; then
        echo '{"enable_debug": true}' >"$dir/debug.json"
        cfg=(-config-file "$dir/debug.json")
      fi
      "$work/pier" agent "${args[@]}" "${cfg[@]}" -node "p-$m" -bind 127.0.0.1 -client 127.0.0.1 \
        -http-port "$http" -dns-port 0 -serf-lan-port $((BASE_PORT + 5)) -server-port $((BASE_PORT + 6)) \
        -log-level warn >"$dir/log" 2>&1 &
      ;;
    *) echo "TARGETS: consul or pier, not $t" >&2; exit 1 ;;
  esac
  spid=$!
  pids+=("$spid")
  # Ready once a PUT through the HTTP API succeeds: a leader takes writes.
  local n
  for n in $(seq 1 "$READY_TRIES"); do
    [ "$(curl -s --max-time 1 -X PUT -d x "http://127.0.0.1:$http/v1/kv/bench-ready" 2>/dev/null)" = true ] && return 0
    kill -0 "$spid" 2>/dev/null || { echo "$t ($m) exited:" >&2; tail -n 20 "$dir/log" >&2; exit 1; }
    [ "$n" = "$READY_TRIES" ] && { echo "$t ($m) took no write in $((READY_TRIES / 10)) s:" >&2; tail -n 20 "$dir/log" >&2; exit 1; }
    sleep 0.1
  done
}

stop() {
  kill "$spid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$spid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$spid" 2>/dev/null || true
  wait "$spid" 2>/dev/null || true
}

# observe TARGET MODE: with PROFILE=1, after the measured run, a
# second sequential run of 3 s under a CPU profile (/debug/pprof) and
# `strace -c -f` of the agent, apart so that neither slows the measured
# PUTs; the system call counts divided by that run's PUTs are per PUT.
observe() {
  [ "$PROFILE" = 1 ] || return 0
  local out="$OUT_DIR/$1-$2" st pp
  strace -c -f -p "$spid" -o "$out.strace" 2>/dev/null &
  st=$!
  sleep 0.5 # strace attaches to every thread
  curl -s -o "$out.cpu.pprof" "http://127.0.0.1:$http/debug/pprof/profile?seconds=3" &
  pp=$!
  "$work/kv" -target pier -endpoints "127.0.0.1:$http" -mode put -clients 1 -keys "$KEYS" \
    -value-size "$VALUE_SIZE" -max-ops 100000000 -duration 3s >"$out.run.json"
  kill -INT "$st" 2>/dev/null || true
  wait "$st" "$pp" 2>/dev/null || true
}

for m in $MODES; do
  for t in $TARGETS; do
    echo "== $t ($m): starting" >&2
    start "$t" "$m"
    c0=$(cpu_ticks "$spid")
    out=$("$work/kv" -target pier -endpoints "127.0.0.1:$http" -mode put -clients 1 -keys "$KEYS" \
      -value-size "$VALUE_SIZE" -warmup "$WARMUP" -max-ops "$OPS" -duration "$DURATION")
    c1=$(cpu_ticks "$spid")
    ops=$(field ops "$out")
    cpu=$(awk -v d=$((c1 - c0)) -v n="$((ops + WARMUP))" -v hz="$tck" 'BEGIN {printf "%.0f", n ? d * 1e6 / hz / n : 0}')
    echo "$out" >&2
    echo "$m $t $cpu $out" >>"$results"
    observe "$t" "$m"
    stop
  done
done

echo
echo "load at the end $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-7s %-7s %6s %8s %8s %8s %8s %8s %10s %6s\n' mode target puts p50_ms p90_ms p99_ms mean_ms max_ms cpu_us/put errors
while read -r m t cpu json; do
  printf '%-7s %-7s %6s %8s %8s %8s %8s %8s %10s %6s\n' "$m" "$t" "$(field ops "$json")" "$(field p50_ms "$json")" \
    "$(field p90_ms "$json")" "$(field p99_ms "$json")" "$(field mean_ms "$json")" "$(field max_ms "$json")" "$cpu" \
    "$(field errors "$json")"
  err=$(field first_error "$json")
  [ -n "$err" ] && echo "        first error: $err"
done <"$results"
echo "(cpu_us/put: the agent's utime+stime over the warm-up and the measured PUTs)"

if [ "$PROFILE" = 1 ]; then
  for m in $MODES; do
    for t in $TARGETS; do
      f="$OUT_DIR/$t-$m"
      echo
      echo "== $t ($m): system calls during a second 3 s sequential run of $(field ops "$(cat "$f.run.json" 2>/dev/null)") PUTs ($f.strace)"
      [ -s "$f.strace" ] && head -n 14 "$f.strace"
      bin="$work/pier"
      [ "$t" = consul ] && bin="$CONSUL"
      if [ -s "$f.cpu.pprof" ]; then
        echo "== $t ($m): CPU profile, top 25 by cumulative time ($f.cpu.pprof)"
        go tool pprof -top -cum -nodecount 25 "$bin" "$f.cpu.pprof" 2>/dev/null | sed -n '5,32p'
      fi
    done
  done
  cp "$work/pier" "$OUT_DIR/pier"
fi
