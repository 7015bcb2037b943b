#!/usr/bin/env bash
# KV writes, CAS and linearizable reads on 3 pier servers and on 3 etcd
# members (Debian's etcd-server), one cluster after the other on the same
# loopback, with the same load generator (deploy/bench/kv, its own module:
# pier over plain net/http and the Consul KV API, etcd with its Go client):
#
#   put       CLIENTS concurrent clients spread over the 3 members, each
#             writing a random one of KEYS keys (VALUE_SIZE bytes)
#   cas       the same clients reading a random one of CAS_KEYS keys
#             linearizably and writing it back on the index they read
#             (pier ?cas=ModifyIndex, etcd a Txn on ModRevision)
#   read      linearizable reads (pier ?consistent, etcd's default Get)
#   failover  FAILOVER_RATE writes/s through a member that is not the
#             leader; the leader is killed (SIGKILL) FAILOVER_KILL_AFTER
#             seconds in; the longest time between two successful writes
#
# For each: ops/s, p50/p99/p999 latency, errors, and the servers' CPU per
# operation (utime+stime of the 3 server processes from /proc over the
# operations done: the generator shares the 2 cores, so ops/s alone
# depends on it).
#
# pier: the agents run with PIER_SERVER_ARGS (default: 3 Raft servers,
# each with its own -server-port on 127.0.0.1); the clients are spread over
# all three, so two thirds of the writes reach a follower, which forwards
# them to the leader. If the agents ever name different leaders (no Raft
# group: flags that start no servers), the script says so under the table.
#
# Usage: deploy/bench/kv.sh   (from anywhere; needs go, curl; installs
#        etcd-server with apt-get when etcd is missing). Run it by hand; CI
#        does not. About 2 minutes with the defaults.
# Knobs: DURATION=10s CLIENTS=64 VALUE_SIZE=100 KEYS=1000 CAS_KEYS=64
#        MAX_OPS=1000000 FAILOVER_RATE=100 FAILOVER_DURATION=15s
#        FAILOVER_KILL_AFTER=5 FAILOVER_OP_TIMEOUT=2s TARGETS="etcd pier"
#        MODES="put cas read failover" (a subset runs only those) BASE_PORT=23000 (uses
#        BASE_PORT+11..+63 on 127.0.0.1) PIER_SERVER_ARGS
set -euo pipefail
cd "$(dirname "$0")/../.."

# How a pier server is started, beside the per-agent ports and data dir.
PIER_SERVER_ARGS=${PIER_SERVER_ARGS:--server -bootstrap-expect 3}
DURATION=${DURATION:-10s}
CLIENTS=${CLIENTS:-64}
VALUE_SIZE=${VALUE_SIZE:-100}
KEYS=${KEYS:-1000}
CAS_KEYS=${CAS_KEYS:-64}
MAX_OPS=${MAX_OPS:-1000000}
FAILOVER_RATE=${FAILOVER_RATE:-100}
FAILOVER_DURATION=${FAILOVER_DURATION:-15s}
FAILOVER_KILL_AFTER=${FAILOVER_KILL_AFTER:-5}
FAILOVER_OP_TIMEOUT=${FAILOVER_OP_TIMEOUT:-2s}
TARGETS=${TARGETS:-etcd pier}
MODES=${MODES:-put cas read failover}
BASE_PORT=${BASE_PORT:-23000}
READY_TRIES=300 # x 0.1 s: the longest wait for a cluster to answer

need=()
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v curl >/dev/null 2>&1 || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v go >/dev/null 2>&1 || { echo "kv.sh: go is missing" >&2; exit 1; }

work=$(mktemp -d -t pier-kvbench.XXXXXX)
pids=() # every process started here, killed on exit
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "== building pier and the load generator" >&2
go build -o "$work/pier" ./cmd/pier
(cd deploy/bench/kv && go build -o "$work/kv" .)

tck=$(getconf CLK_TCK)
# cpu_ticks PID... -> utime+stime of those still running, summed
cpu_ticks() {
  local p
  for p in "$@"; do [ -r "/proc/$p/stat" ] && awk '{print $14+$15}' "/proc/$p/stat"; done | awk '{n+=$1} END {print n+0}'
}
field() { sed -nE "s/.*\"$1\":([^,}]*).*/\1/p" <<<"$2" | tr -d '"'; }

results="$work/results"
: >"$results"
echo "== $(date -u +%FT%TZ) $(nproc) cores ($(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== pier $(git describe --always --dirty 2>/dev/null || echo '?'), $(etcd --version | head -1), $(go version | cut -d' ' -f3)"
echo "== PIER_SERVER_ARGS='$PIER_SERVER_ARGS' CLIENTS=$CLIENTS VALUE_SIZE=$VALUE_SIZE DURATION=$DURATION KEYS=$KEYS CAS_KEYS=$CAS_KEYS"

# Per target: eps (HTTP or client endpoints, comma list), ep[i], spid[i]
# (the server processes), and for pier srv (each agent's server address).
declare -a ep spid
eps="" srv=""

start_etcd() {
  local i cluster=""
  for i in 1 2 3; do cluster+="${cluster:+,}e$i=http://127.0.0.1:$((BASE_PORT + 20 + i))"; done
  ep=() spid=()
  for i in 1 2 3; do
    local cp=$((BASE_PORT + 10 + i)) pp=$((BASE_PORT + 20 + i))
    etcd --name "e$i" --data-dir "$work/etcd$i" \
      --listen-client-urls "http://127.0.0.1:$cp" --advertise-client-urls "http://127.0.0.1:$cp" \
      --listen-peer-urls "http://127.0.0.1:$pp" --initial-advertise-peer-urls "http://127.0.0.1:$pp" \
      --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token pier-kvbench \
      --logger zap --log-level warn >"$work/etcd$i.log" 2>&1 &
    pids+=($!) spid+=($!) ep+=("127.0.0.1:$cp")
  done
  eps=$(IFS=,; echo "${ep[*]}") srv=""
}

start_pier() {
  local i
  ep=() spid=() srv=""
  for i in 1 2 3; do
    local http=$((BASE_PORT + 30 + i)) serf=$((BASE_PORT + 40 + i)) server=$((BASE_PORT + 50 + i)) wan=$((BASE_PORT + 60 + i))
    local join=()
    [ "$i" -gt 1 ] && join=(-join "127.0.0.1:$((BASE_PORT + 41))")
    # shellcheck disable=SC2086 # PIER_SERVER_ARGS is a list of flags
    "$work/pier" agent -node "kv$i" -bind 127.0.0.1 -client 127.0.0.1 -http-port "$http" \
      -serf-lan-port "$serf" -serf-wan-port "$wan" -server-port "$server" -dns-port 0 -data-dir "$work/pier$i" \
      -log-level warn $PIER_SERVER_ARGS "${join[@]}" >"$work/pier$i.log" 2>&1 &
    pids+=($!) spid+=($!) ep+=("127.0.0.1:$http")
    srv+="${srv:+,}127.0.0.1:$server"
    if [ "$i" = 1 ]; then # the others join it: wait until it answers
      for n in $(seq 1 "$READY_TRIES"); do
        curl -sf --max-time 1 -o /dev/null "http://127.0.0.1:$http/v1/agent/self" && break
        kill -0 "${spid[0]}" 2>/dev/null || { cat "$work/pier1.log" >&2; exit 1; }
        [ "$n" = "$READY_TRIES" ] && { echo "pier kv1 did not answer" >&2; cat "$work/pier1.log" >&2; exit 1; }
        sleep 0.1
      done
    fi
  done
  eps=$(IFS=,; echo "${ep[*]}")
}

# leader TARGET -> the index in ep of the leader, or nothing; agree is set
# to whether every member named the same leader
agree=""
leader() {
  local out
  out=$("$work/kv" -target "$1" -endpoints "$eps" -server-addrs "$srv" -mode leader -op-timeout 2s 2>/dev/null) || return 0
  agree=$(field agree "$out")
  field leader "$out"
}

# ready TARGET: every member answers, a leader is known and a write through
# each member succeeds (with Raft: once the group is formed)
ready() {
  local n e
  for n in $(seq 1 "$READY_TRIES"); do
    local lead
    lead=$(leader "$1")
    if [ -n "$lead" ]; then
      local ok=1
      for e in "${ep[@]}"; do
        "$work/kv" -target "$1" -endpoints "$e" -mode put -clients 1 -keys 1 -max-ops 1 -duration 2s -op-timeout 2s \
          >"$work/probe.json" 2>&1 || ok=0
        grep -q '"ops":1,' "$work/probe.json" || ok=0
      done
      if [ $ok = 1 ]; then
        "$work/kv" -target "$1" -endpoints "$eps" -server-addrs "$srv" -mode leader -op-timeout 2s >"$work/$1.leader" 2>&1 || true
        return 0
      fi
    fi
    for p in "${spid[@]}"; do
      kill -0 "$p" 2>/dev/null || { echo "a $1 member exited" >&2; tail -n 20 "$work"/*.log >&2; exit 1; }
    done
    sleep 0.1
  done
  echo "$1 did not form a cluster in $((READY_TRIES / 10)) s; logs:" >&2
  tail -n 20 "$work"/*.log >&2
  exit 1
}

# measure TARGET MODE ARGS... : one run of the generator, its JSON line and
# the servers' CPU per operation appended to $results
measure() {
  local t=$1 mode=$2 c0 c1 out ops cpu
  shift 2
  c0=$(cpu_ticks "${spid[@]}")
  out=$("$work/kv" -target "$t" -endpoints "$eps" -mode "$mode" -clients "$CLIENTS" -value-size "$VALUE_SIZE" \
    -duration "$DURATION" -max-ops "$MAX_OPS" "$@")
  c1=$(cpu_ticks "${spid[@]}")
  ops=$(field ops "$out")
  cpu=$(awk -v d=$((c1 - c0)) -v n="$ops" -v hz="$tck" 'BEGIN {printf "%.1f", n ? d * 1e6 / hz / n : 0}')
  echo "$out" >&2
  echo "$t $mode $cpu $out" >>"$results"
}

# failover TARGET: writes through a member that is not the leader, kills
# the leader FAILOVER_KILL_AFTER seconds in
failover() {
  local t=$1 lead via gen out
  lead=$(leader "$t")
  [ -n "$lead" ] || { echo "$t: no leader for the failover run" >&2; return; }
  via=$(((lead + 1) % 3))
  "$work/kv" -target "$t" -endpoints "${ep[$via]}" -mode failover -rate "$FAILOVER_RATE" -value-size "$VALUE_SIZE" \
    -duration "$FAILOVER_DURATION" -op-timeout "$FAILOVER_OP_TIMEOUT" >"$work/failover.json" &
  gen=$!
  pids+=("$gen")
  sleep "$FAILOVER_KILL_AFTER"
  echo "   killing the leader, member $((lead + 1)) (pid ${spid[$lead]}); writing through member $((via + 1))" >&2
  { kill -9 "${spid[$lead]}" && wait "${spid[$lead]}"; } 2>/dev/null || true
  wait "$gen" || true
  out=$(cat "$work/failover.json")
  [ -n "$out" ] || out='{"ops":0,"errors":0,"ops_per_s":0,"first_error":"the generator failed (no write succeeded?)"}'
  echo "$out" >&2
  echo "$t failover - $out" >>"$results"
}

stop_members() {
  local p
  for p in "${spid[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${spid[@]}"; do
    for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
  done
}

# has MODE: whether MODES names it
has() { case " $MODES " in *" $1 "*) return 0 ;; esac; return 1; }

for t in $TARGETS; do
  echo "== $t: starting 3 members" >&2
  case $t in
    etcd) start_etcd ;;
    pier) start_pier ;;
    *) echo "TARGETS: etcd or pier, not $t" >&2; exit 1 ;;
  esac
  ready "$t"
  echo "== $t: $MODES ($CLIENTS clients, $DURATION each)" >&2
  if has put; then measure "$t" put -keys "$KEYS"; fi
  if has cas; then
    "$work/kv" -target "$t" -endpoints "$eps" -mode fill -keys "$CAS_KEYS" -value-size "$VALUE_SIZE" >/dev/null
    measure "$t" cas -keys "$CAS_KEYS" -fill=false
  fi
  if has read; then
    "$work/kv" -target "$t" -endpoints "$eps" -mode fill -keys "$KEYS" -value-size "$VALUE_SIZE" >/dev/null
    measure "$t" read -keys "$KEYS" -fill=false
  fi
  if has failover; then
    echo "== $t: failover ($FAILOVER_RATE writes/s, the leader killed after $FAILOVER_KILL_AFTER s)" >&2
    failover "$t"
  fi
  stop_members
done

echo
echo "load at the end $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-5s %-9s %9s %8s %8s %8s %7s %10s  %s\n' target mode ops/s p50_ms p99_ms p999_ms errors cpu_us/op notes
while read -r t mode cpu json; do
  notes=""
  case $mode in
    cas) notes="won $(field cas_ok "$json") ($(printf '%.0f' "$(field cas_ok_per_s "$json")")/s), lost $(field cas_conflict "$json")" ;;
    failover) notes="longest time without a successful write: $(field max_gap_ms "$json") ms, from $(printf '%.2f' "$(field gap_at_s "$json")") s" ;;
  esac
  err=$(field first_error "$json")
  [ -n "$err" ] && notes+="${notes:+; }first error: $err"
  rate=$(field ops_per_s "$json")
  printf '%-5s %-9s %9.0f %8s %8s %8s %7s %10s  %s\n' "$t" "$mode" "${rate:-0}" "$(field p50_ms "$json")" \
    "$(field p99_ms "$json")" "$(field p999_ms "$json")" "$(field errors "$json")" "$cpu" "$notes"
done <"$results"
if [ -f "$work/pier.leader" ] && grep -q '"agree":false' "$work/pier.leader"; then
  echo "pier: the agents named different leaders ($(cat "$work/pier.leader")): there is no Raft group, and these"
  echo "are the numbers of each agent's gossip KV (last writer wins; CAS and ?consistent are per agent, not linearizable)"
fi
