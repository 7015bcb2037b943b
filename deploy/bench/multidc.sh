#!/usr/bin/env bash
# Two datacenters on loopback, each a pier server (a Raft group of one, in
# the WAN pool) and a client agent, and what crossing the WAN costs:
#
#   read      KV reads of dc2 (?consistent) with the same load generator
#             (deploy/bench/kv): "direct" through dc2's client agent, then
#             "via dc1" through dc1's client with ?dc=dc2 (client -> dc1
#             server -> dc2 server over the WAN). The difference of the
#             p50 and p99 is what pier adds to a cross-datacenter read,
#             loopback taking the place of the WAN's own round trip.
#   failover  a front door in dc1 with a route failover: {nearest: 1} to a
#             service that only dc2 has; the time from its registration in
#             dc2 (on dc2's client) until dc2's server has it, and until the
#             front door serves it (ROUNDS times)
#
# Usage: deploy/bench/multidc.sh   (from anywhere; needs go, curl). Run it
#        by hand; CI does not. About 1 minute with the defaults.
# Knobs: DURATION=10s CLIENTS=16 KEYS=1000 ROUNDS=5 BASE_PORT=24000 (uses
#        BASE_PORT+1..+40 on 127.0.0.1)
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/../.."

DURATION=${DURATION:-10s}
CLIENTS=${CLIENTS:-16}
KEYS=${KEYS:-1000}
ROUNDS=${ROUNDS:-5}
BASE_PORT=${BASE_PORT:-24000}
command -v curl >/dev/null 2>&1 || install_missing curl

make_work -t multidc-bench.XXXXXX
go build -o "$work/pier" ./cmd/pier
(cd deploy/bench/kv && go build -o "$work/kv" .)

# agent NAME DC N ARGS...: an agent whose ports are BASE_PORT+N*10+0..4
# (HTTP, LAN gossip, WAN gossip, server port, DNS, proxy).
agent() {
  local name=$1 dc=$2 n=$3 p=$((BASE_PORT + $3 * 10))
  shift 3
  mkdir -p "$work/$name"
  "$work/pier" agent -node "$name" -datacenter "$dc" -bind 127.0.0.1 -client 127.0.0.1 -data-dir "$work/$name" \
    -http-port "$p" -serf-lan-port $((p + 1)) -serf-wan-port $((p + 2)) -dns-port $((p + 4)) -retry-interval 1s \
    "$@" >"$work/$name.log" 2>&1 &
  pids+=($!)
}
port() { echo $((BASE_PORT + $1 * 10 + $2)); }
server() { agent "$1" "$2" "$3" -server -bootstrap-expect 1 -server-port "$(port "$3" 3)" "${@:4}"; }

server s1 dc1 0
server s2 dc2 1 -retry-join-wan "127.0.0.1:$(port 0 2)"
agent c1 dc1 2 -retry-join "127.0.0.1:$(port 0 1)"
agent c2 dc2 3 -retry-join "127.0.0.1:$(port 1 1)"
c1="127.0.0.1:$(port 2 0)" c2="127.0.0.1:$(port 3 0)"
for i in $(seq 300); do
  [ "$(curl -s --max-time 1 "http://$c1/v1/catalog/datacenters")" = '["dc1","dc2"]' ] &&
    curl -sf --max-time 1 -X PUT -d x "http://$c2/v1/kv/ready" >/dev/null &&
    curl -sf --max-time 1 "http://$c1/v1/kv/ready?dc=dc2" >/dev/null && break
  [ "$i" = 300 ] && { echo "the datacenters did not meet; logs in $work" >&2; tail -5 "$work"/*.log >&2; exit 1; }
  sleep 0.1
done

# The generator's keys are written once, in dc2, before either run.
"$work/kv" -target pier -endpoints "$c2" -mode fill -keys "$KEYS" -clients "$CLIENTS" >/dev/null
read_run() { "$work/kv" -target pier -endpoints "$1" -mode read -fill=false -keys "$KEYS" -clients "$CLIENTS" -duration "$DURATION" -warmup 1000 "${@:2}"; }
direct=$(read_run "$c2")
via=$(read_run "$c1" -dc dc2)
field() { sed -n "s/.*\"$1\":\([0-9.]*\).*/\1/p" <<<"$2"; }
printf '%-16s %10s %8s %8s %8s\n' read ops/s p50_ms p99_ms errors
for r in direct via; do
  j=${!r}
  printf '%-16s %10.0f %8.3f %8.3f %8d\n' "$([ $r = direct ] && echo "direct (dc2)" || echo "via dc1 ?dc=dc2")" \
    "$(field ops_per_s "$j")" "$(field p50_ms "$j")" "$(field p99_ms "$j")" "$(field errors "$j")"
done
awk -v a="$(field p50_ms "$direct")" -v b="$(field p50_ms "$via")" -v c="$(field p99_ms "$direct")" -v d="$(field p99_ms "$via")" \
  'BEGIN {printf "added by crossing: p50 +%.3f ms, p99 +%.3f ms\n", b - a, d - c}'

# Failover: a front door in dc1 whose route's service only dc2 has; the
# instance is dc2's client's own HTTP API (it answers /v1/status/leader).
cat >"$work/door.yaml" <<YAML
proxy:
  addr: 127.0.0.1:$(port 4 5)
  routes:
    - path: /
      service: web
      failover: {nearest: 1}
YAML
agent door dc1 4 -retry-join "127.0.0.1:$(port 0 1)" -config-file "$work/door.yaml"
door="127.0.0.1:$(port 4 5)"
for i in $(seq 300); do ready "http://127.0.0.1:$(port 4 0)/v1/agent/self" && break; sleep 0.1; done
times=() seen=()
s2="127.0.0.1:$(port 1 0)"
for r in $(seq "$ROUNDS"); do
  curl -s -X PUT "http://$c2/v1/agent/service/deregister/web" >/dev/null
  until [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://$door/v1/status/leader")" != 200 ]; do sleep 0.05; done
  t0=$(date +%s%N)
  curl -sf -X PUT -d "{\"ID\":\"web\",\"Name\":\"web\",\"Address\":\"127.0.0.1\",\"Port\":$(port 3 0)}" "http://$c2/v1/agent/service/register" >/dev/null
  # When dc2's server has it (the registration crosses dc2's LAN by gossip
  # first); the front door cannot serve it before.
  until [ "$(curl -s --max-time 1 "http://$s2/v1/health/service/web")" != '[]' ]; do sleep 0.01; done
  seen+=($((($(date +%s%N) - t0) / 1000000)))
  until [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://$door/v1/status/leader")" = 200 ]; do sleep 0.01; done
  times+=($((($(date +%s%N) - t0) / 1000000)))
done
echo "registration in dc2 to seen by dc2's server, ms: ${seen[*]} (median $(printf '%s\n' "${seen[@]}" | median))"
echo "registration in dc2 to served through dc1's failover route, ms: ${times[*]} (median $(printf '%s\n' "${times[@]}" | median))"
