#!/usr/bin/env bash
# dnsperf against pier and against unbound serving the same record, in the
# same run, interleaved (pier, unbound, pier, unbound, ...), so that both see
# the same machine load.
#
# pier: `pier agent -dev` with redis1 (172.16.0.2) registered through the
# HTTP API, answering redis.service.consul A from its catalog.
# unbound: a local-data static zone with the same record (TTL 0, as pier's).
# Then the same for a forwarded name: pier forwarding example.org A to the
# unbound above, answered from pier's cache after the first query.
#
# Two measurements per server and round:
#   throughput: dnsperf as fast as it can (-q outstanding queries, -c clients)
#   latency:    dnsperf -v at a fixed rate (LATENCY_QPS), p50/p99/max from
#               every reply's own latency
#
# Usage: deploy/bench/dns.sh   (from anywhere; needs dnsperf, unbound, curl, go)
# Knobs: ROUNDS=3 DURATION=10 CLIENTS=4 OUTSTANDING=100 LATENCY_QPS=20000
#        UNBOUND_THREADS=2 (one per core, as unbound's docs advise)
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/../.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-4}
OUTSTANDING=${OUTSTANDING:-100}
LATENCY_QPS=${LATENCY_QPS:-20000}
UNBOUND_THREADS=${UNBOUND_THREADS:-2}

for cmd in dnsperf unbound curl go; do
  if ! command -v "$cmd" >/dev/null 2>&1; then
    echo "dns.sh: $cmd is missing (apt-get install dnsperf unbound curl)" >&2
    exit 1
  fi
done
UNBOUND=$(command -v unbound)

make_work -t pier-dnsbench.XXXXXX

echo "== building pier"
go build -o "$work/pier" ./cmd/pier

echo "== starting pier"
pier_args=(agent -dev -node bench -http-port 0 -dns-port 0 -serf-lan-port 0)
if "$work/pier" agent -h 2>&1 | grep -q -- '-proxy-addr'; then
  pier_args+=(-proxy-addr 127.0.0.1:0) # -dev would take :8080 otherwise
fi
"$work/pier" "${pier_args[@]}" >"$work/pier.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 300); do
  grep -q 'pier agent running' "$work/pier.log" 2>/dev/null && break
  if ! kill -0 "${pids[0]}" 2>/dev/null; then cat "$work/pier.log" >&2; exit 1; fi
  sleep 0.1
done
line=$(grep 'pier agent running' "$work/pier.log") || { cat "$work/pier.log" >&2; exit 1; }
http=$(sed -E 's/.* http=([0-9.:]+).*/\1/' <<<"$line")
pier_dns=$(sed -E 's/.* dns=([0-9.:]+).*/\1/' <<<"$line")
pier_port=${pier_dns##*:}
curl -sS -X PUT -d '{"ID":"redis1","Name":"redis","Tags":["master","v1"],"Address":"172.16.0.2","Port":8000}' \
  "http://$http/v1/agent/service/register" >/dev/null

echo "== starting unbound ($UNBOUND_THREADS threads)"
ub_port=${UNBOUND_PORT:-$((20000 + RANDOM % 20000))}
cat >"$work/unbound.conf" <<EOF
server:
  interface: 127.0.0.1
  port: $ub_port
  num-threads: $UNBOUND_THREADS
  so-reuseport: yes
  do-daemonize: no
  chroot: ""
  username: ""
  directory: "$work"
  pidfile: "$work/unbound.pid"
  logfile: ""
  use-syslog: no
  verbosity: 0
  do-ip6: no
  access-control: 127.0.0.0/8 allow
  module-config: "iterator"
  local-zone: "consul." static
  local-data: "redis.service.consul. 0 IN A 172.16.0.2"
  local-zone: "example.org." static
  local-data: "example.org. 3600 IN A 192.0.2.1"
remote-control:
  control-enable: no
EOF
"$UNBOUND" -d -c "$work/unbound.conf" >"$work/unbound.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
  dig +short +time=1 +tries=1 @127.0.0.1 -p "$ub_port" redis.service.consul 2>/dev/null | grep -q 172.16.0.2 && break
  if ! kill -0 "${pids[1]}" 2>/dev/null; then cat "$work/unbound.log" >&2; echo "unbound did not start (port $ub_port taken? set UNBOUND_PORT)" >&2; exit 1; fi
  sleep 0.1
done

# pier forwards example.org to unbound (a second pier, so that the first
# one's recursors stay what -dev gives it).
fwd_args=("${pier_args[@]}")
fwd_args[3]=fwd
"$work/pier" "${fwd_args[@]}" -recursor "127.0.0.1:$ub_port" >"$work/fwd.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 300); do grep -q 'pier agent running' "$work/fwd.log" && break; sleep 0.1; done
fwd_dns=$(grep 'pier agent running' "$work/fwd.log" | sed -E 's/.* dns=([0-9.:]+).*/\1/')
fwd_port=${fwd_dns##*:}

for p in "$pier_port" "$ub_port"; do
  got=$(dig +short @127.0.0.1 -p "$p" redis.service.consul)
  [ "$got" = 172.16.0.2 ] || { echo "port $p answers $got for redis.service.consul" >&2; exit 1; }
done
[ "$(dig +short @127.0.0.1 -p "$fwd_port" example.org)" = 192.0.2.1 ] || { echo "forwarding does not work" >&2; exit 1; }

echo "redis.service.consul A" >"$work/service.txt"
echo "example.org A" >"$work/forward.txt"

# throughput PORT FILE -> "qps avg_ms lost"
throughput() {
  dnsperf -s 127.0.0.1 -p "$1" -d "$2" -l "$DURATION" -c "$CLIENTS" -q "$OUTSTANDING" 2>&1 |
    awk '/Queries per second/ {q=$4} /Average Latency/ {a=$4*1000} /Queries lost/ {l=$3}
         END {printf "%.0f %.3f %s\n", q, a, l}'
}
# latency PORT FILE -> "p50_ms p99_ms max_ms"
latency() {
  dnsperf -s 127.0.0.1 -p "$1" -d "$2" -l "$DURATION" -c "$CLIENTS" -Q "$LATENCY_QPS" -v 2>/dev/null |
    awk '/^> / {print $NF*1000}' | sort -n |
    awk '{v[NR]=$1} END {if (NR==0) {print "- - -"; exit}
         printf "%.3f %.3f %.3f\n", v[int(NR*0.50)+1], v[int(NR*0.99)+1], v[NR]}'
}

printf '\n%-5s %-26s %10s %9s %6s %9s %9s %9s\n' round "server (query)" "q/s" "avg ms" lost "p50 ms" "p99 ms" "max ms"
results="$work/results"
for r in $(seq 1 "$ROUNDS"); do
  for target in "pier $pier_port service" "unbound $ub_port service" "pier-fwd $fwd_port forward"; do
    set -- $target
    read -r qps avg lost < <(throughput "$2" "$work/$3.txt")
    read -r p50 p99 pmax < <(latency "$2" "$work/$3.txt")
    label="$1 ($(cut -d' ' -f1 "$work/$3.txt"))"
    printf '%-5s %-26s %10s %9s %6s %9s %9s %9s\n' "$r" "$label" "$qps" "$avg" "$lost" "$p50" "$p99" "$pmax"
    echo "$1 $qps $p99" >>"$results"
  done
done

echo
awk '{n[$1]++; q[$1]+=$2; if ($3+0 > p[$1]) p[$1]=$3}
     END {for (s in n) printf "%-9s mean %8.0f q/s over %d rounds, worst p99 %.3f ms at %s q/s\n", s, q[s]/n[s], n[s], p[s], "'"$LATENCY_QPS"'"}' "$results" | sort
echo "(CPU: $(nproc) cores; dnsperf -c $CLIENTS -q $OUTSTANDING -l $DURATION; unbound $("$UNBOUND" -V | awk 'NR==1{print $2}') with $UNBOUND_THREADS threads)"
