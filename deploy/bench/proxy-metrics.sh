#!/usr/bin/env bash
# The cost of metrics on the front door: the same two backends behind three
# pier agents, measured with wrk in interleaved rounds of one run, so that
# all three see the same machine:
#   off      telemetry.disable: true (no collectors at all)
#   metrics  the default: every metric on (/metrics served)
#   access   metrics on and proxy.access_log: json (to a file)
# A reduced variant of proxy.sh (no nginx or haproxy).
#
#   deploy/bench/proxy-metrics.sh                   # 5 rounds of 10s, 64 connections
#   ROUNDS=3 DURATION=5s deploy/bench/proxy-metrics.sh
#
# Needs wrk and curl (installed with apt-get when missing); uses loopback
# ports BASE_PORT..BASE_PORT+9 (default 19080). Run it by hand; CI does not.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/../.."

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-64}
THREADS=${THREADS:-2}
BASE_PORT=${BASE_PORT:-19080}
B1=$((BASE_PORT + 1)) B2=$((BASE_PORT + 2))

need=()
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v curl >/dev/null 2>&1 || need+=(curl)
install_missing ${need[@]+"${need[@]}"}

make_work

echo "building pier and testserver" >&2
go build -o "$work/pier" ./cmd/pier
go build -o "$work/testserver" ./deploy/testserver
"$work/testserver" -addr 127.0.0.1:$B1 -name b1 2>"$work/b1.log" & pids+=($!)
"$work/testserver" -addr 127.0.0.1:$B2 -name b2 2>"$work/b2.log" & pids+=($!)

targets=(off metrics access)
declare -A proxyPort apiPort pid
i=3
for t in "${targets[@]}"; do
  proxyPort[$t]=$((BASE_PORT + i)) apiPort[$t]=$((BASE_PORT + i + 1))
  i=$((i + 2))
  {
    echo "proxy:"
    echo "  addr: 127.0.0.1:${proxyPort[$t]}"
    echo "  routes: [{path: /api/, service: api, strip: /api}]"
    [ "$t" = access ] && echo "  access_log: json"
    [ "$t" = off ] && printf 'telemetry:\n  disable: true\n'
    true
  } >"$work/$t.yaml"
  "$work/pier" agent -dev -node "bench-$t" -http-port "${apiPort[$t]}" -serf-lan-port 0 -dns-port 0 \
    -config-file "$work/$t.yaml" -log-level warn 2>"$work/$t.log" & pids+=($!)
  pid[$t]=$!
done

for n in $(seq 1 100); do
  ok=1
  for u in http://127.0.0.1:$B1/ http://127.0.0.1:$B2/; do ready "$u" || ok=0; done
  for t in "${targets[@]}"; do ready "http://127.0.0.1:${apiPort[$t]}/v1/agent/self" || ok=0; done
  [ $ok = 1 ] && break
  [ "$n" = 100 ] && { echo "something did not start; logs in $work" >&2; cat "$work"/*.log >&2; exit 1; }
  sleep 0.1
done
for t in "${targets[@]}"; do
  for b in 1 2; do
    curl -sf -X PUT -d "{\"ID\":\"api-$b\",\"Name\":\"api\",\"Address\":\"127.0.0.1\",\"Port\":$((BASE_PORT + b))}" \
      "http://127.0.0.1:${apiPort[$t]}/v1/agent/service/register" >/dev/null
  done
  body=$(curl -sf --max-time 5 "http://127.0.0.1:${proxyPort[$t]}/api/hello") || { echo "$t does not answer" >&2; exit 1; }
  case "$body" in "hello from b"*) ;; *) echo "$t answered: $body" >&2; exit 1 ;; esac
done
code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:${apiPort[off]}/metrics")
[ "$code" = 404 ] || { echo "metrics are not off on the off agent: /metrics answered $code" >&2; exit 1; }
curl -sf "http://127.0.0.1:${apiPort[metrics]}/metrics" | grep -q '^pier_proxy_requests_total' ||
  { echo "the metrics agent has no pier_proxy_requests_total" >&2; exit 1; }

results="$work/results"
: >"$results"
echo "warming up" >&2
for t in "${targets[@]}"; do wrk -t"$THREADS" -c"$CONNS" -d2s "http://127.0.0.1:${proxyPort[$t]}/api/hello" >/dev/null; done
for r in $(seq 1 "$ROUNDS"); do
  for t in "${targets[@]}"; do
    wrk_round "$r" "$t" "http://127.0.0.1:${proxyPort[$t]}/api/hello" "${pid[$t]}"
  done
done
counted=$(curl -sf "http://127.0.0.1:${apiPort[metrics]}/metrics" | awk '/^pier_proxy_requests_total\{.*route="\/api\/"/ {n+=$2} END {printf "%d", n}')
sleep 1.5 # the access log is flushed every second
lines=$(grep -c '"uri":"/api/hello"' "$work/access.log" || true)

echo
echo "$(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), wrk -t$THREADS -c$CONNS -d$DURATION, $ROUNDS interleaved rounds; medians:"
print_medians "${targets[@]}"
awk -v m="$rps_metrics" -v o="$rps_off" -v a="$rps_access" 'BEGIN {printf "metrics/off %.3f, access-log/off %.3f\n", m/o, a/o}'
echo "pier_proxy_requests_total on the metrics agent: $counted; access log lines of the access agent: $lines"
