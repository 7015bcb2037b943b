#!/usr/bin/env bash
# What a front door costs (issue 22): nginx (worker_processes 2, upstream
# keepalive), haproxy (nbthread 2) and pier on both engines (goroutines,
# eventloop) in front of the same two backends (deploy/testserver, as
# proxy.sh), measured in one run:
#
#   - at fixed rates (vegeta, constant rate, so latency is measured from
#     when each request was due): p50, p99, p99.9 and the proxy's own CPU
#     per request (utime+stime from /proc/PID/stat over the attack, divided
#     by the requests sent; nginx: master and workers summed);
#   - the memory that IDLE idle keep-alive client connections add: the
#     proxy's resident set (VmRSS of /proc/PID/status, nginx's processes
#     summed) before and 3 s after they are all open and answered, per
#     connection. Each of these rounds starts a fresh proxy, so no round
#     reuses memory an earlier one freed.
#
# Rounds are interleaved (each round measures every proxy in turn) and the
# table gives medians, with each figure as a ratio to nginx's.
#
#   deploy/bench/efficiency.sh                        # 3 rounds, 2,000 and 5,000 req/s for 10s, 5,000 idle conns
#   ROUNDS=5 RATES="1000 2000 5000" DURATION=20s IDLE=5000 deploy/bench/efficiency.sh
#   TARGETS="nginx pier-el" deploy/bench/efficiency.sh  # a subset (nginx is always measured: the ratios need it)
#   SKIP_IDLE=1 / SKIP_RATES=1                         # one half only
#   PIER_GODEBUG=schedtrace=2000000000                 # GODEBUG for pier only (see deploy/bench/README.md)
#   PIER_EL0_BIN=/tmp/pier-old deploy/bench/efficiency.sh  # also pier-el0: another pier binary (an
#                                                      # earlier build) on the eventloop engine
#
# It needs nginx and haproxy (apt-get installs them when missing) and vegeta
# v12.13.0 (go install github.com/tsenart/vegeta/v12@v12.13.0 when missing),
# builds pier, deploy/testserver and deploy/bench/idleconns, and uses only
# loopback ports BASE_PORT..BASE_PORT+10 (default 18180). Run it by hand as
# root; CI does not. Every attack is bounded by DURATION, every wait by a
# timeout.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/../.."

ROUNDS=${ROUNDS:-3}
RATES=${RATES:-"2000 5000"}
DURATION=${DURATION:-10s}
IDLE=${IDLE:-5000}
BASE_PORT=${BASE_PORT:-18180}
B1=$((BASE_PORT + 1)) B2=$((BASE_PORT + 2))
declare -A port=([pier-gr]=$((BASE_PORT + 3)) [pier-el]=$((BASE_PORT + 4)) [nginx]=$((BASE_PORT + 5)) [haproxy]=$((BASE_PORT + 6)))
declare -A api=([pier-gr]=$((BASE_PORT + 7)) [pier-el]=$((BASE_PORT + 8)))
port[pier-el0]=$((BASE_PORT + 9)) api[pier-el0]=$((BASE_PORT + 10))
read -r -a targets <<<"${TARGETS:-nginx haproxy pier-gr pier-el${PIER_EL0_BIN:+ pier-el0}}"
[[ " ${targets[*]} " == *" nginx "* ]] || targets=(nginx "${targets[@]}")

need_proxies
VEGETA=$(command -v vegeta || echo "$(go env GOPATH)/bin/vegeta")
[ -x "$VEGETA" ] || { go install github.com/tsenart/vegeta/v12@v12.13.0 && VEGETA="$(go env GOPATH)/bin/vegeta"; }
ulimit -n 20000

make_work
echo "building pier, testserver and idleconns" >&2
go build -o "$work/pier" ./cmd/pier
go build -o "$work/testserver" ./deploy/testserver
go build -o "$work/idleconns" ./deploy/bench/idleconns
mkdir -p "$work/nginx"

"$work/testserver" -addr 127.0.0.1:$B1 -name b1 2>"$work/b1.log" & pids+=($!)
"$work/testserver" -addr 127.0.0.1:$B2 -name b2 2>"$work/b2.log" & pids+=($!)

{ nginx_http_head 2 16384; cat <<EOF
  upstream api {
    least_conn;
    server 127.0.0.1:$B1 max_fails=1 fail_timeout=10s;
    server 127.0.0.1:$B2 max_fails=1 fail_timeout=10s;
    keepalive 64;
  }
  server {
    listen 127.0.0.1:${port[nginx]};
    location ~ ^/api/(.*)\$ {
      proxy_pass http://api/\$1\$is_args\$args;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header Host \$host;
      proxy_set_header X-Real-IP \$remote_addr;
    }
    location / { return 404; }
  }
}
EOF
} >"$work/nginx.conf"
haproxy_api_cfg "${port[haproxy]}" 2 9000 "timeout http-keep-alive 75s" "http-request return status 404 unless { path_beg /api/ }" >"$work/haproxy.cfg"
for t in pier-gr pier-el pier-el0; do
  engine=goroutines
  [ "$t" != pier-gr ] && engine=eventloop
  cat >"$work/$t.yaml" <<EOF
proxy:
  addr: 127.0.0.1:${port[$t]}
  engine: $engine
  routes:
    - path: /api/
      service: api
      strip: /api
EOF
done

declare -A pid=()
# start TARGET: starts the proxy and waits (bounded) until it answers.
start() {
  local t=$1 i
  case $t in
  nginx) "$NGINX_BIN" -c "$work/nginx.conf" -p "$work" 2>>"$work/nginx.log" & ;;
  haproxy) "$HAPROXY_BIN" -f "$work/haproxy.cfg" -db >>"$work/haproxy.log" 2>&1 & ;;
  pier-*)
    bin="$work/pier"
    [ "$t" = pier-el0 ] && bin=$PIER_EL0_BIN
    env ${PIER_GODEBUG:+GODEBUG=$PIER_GODEBUG} "$bin" agent -dev -node "bench-$t" -http-port "${api[$t]}" -serf-lan-port 0 -dns-port 0 \
    -config-file "$work/$t.yaml" -log-level warn 2>>"$work/$t.log" & ;;
  esac
  pid[$t]=$!
  pids+=($!)
  for i in $(seq 1 100); do
    ready "http://127.0.0.1:${port[$t]}/nothing" && return 0
    sleep 0.1
  done
  echo "$t did not start; its log:" >&2
  cat "$work/$t.log" >&2 || true
  exit 1
}
stop() {
  kill "${pid[$1]}" 2>/dev/null || true
  wait "${pid[$1]}" 2>/dev/null || true
}
# rss_kb PID: resident kB of the process and its children.
rss_kb() {
  local p all=("$1")
  all+=($(pgrep -P "$1" || true))
  for p in "${all[@]}"; do awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null; done | awk '{s+=$1} END {print s+0}'
}

results="$work/results"
: >"$results"
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
load_start=$(loadavg)
echo "load average at start: $load_start" >&2

if [ -z "${SKIP_IDLE:-}" ]; then
  for r in $(seq 1 "$ROUNDS"); do
    for t in "${targets[@]}"; do
      start "$t"
      for i in $(seq 1 20); do curl -s -o /dev/null "http://127.0.0.1:${port[$t]}/nothing"; done
      sleep 1
      m0=$(rss_kb "${pid[$t]}")
      "$work/idleconns" -addr "127.0.0.1:${port[$t]}" -n "$IDLE" -path /nothing -hold 6s >"$work/idle.out" 2>"$work/idle.err" &
      ic=$!
      for i in $(seq 1 600); do grep -q '^ready' "$work/idle.out" && break; sleep 0.1; done
      sleep 3
      m1=$(rss_kb "${pid[$t]}")
      ok=yes
      wait "$ic" || ok=no
      per=$(((m1 - m0) * 1024 / IDLE))
      [ "$ok" = yes ] || { echo "round $r $t: $(cat "$work/idle.out" "$work/idle.err" | tr '\n' ' ')" >&2; per=NA; }
      echo "idle $t $r $per" >>"$results"
      printf 'round %d %-8s %d idle conns: %s B each (RSS %d -> %d kB)\n' "$r" "$t" "$IDLE" "$per" "$m0" "$m1" >&2
      stop "$t"
    done
  done
fi

# rate_round ROUND TARGET RATE: one constant-rate attack of DURATION.
rate_round() {
  local r=$1 t=$2 rate=$3 c0 c1 n
  c0=$(cpu_ticks "${pid[$t]}")
  echo "GET http://127.0.0.1:${port[$t]}/api/hello" |
    "$VEGETA" attack -rate="$rate/s" -duration="$DURATION" -timeout=10s >"$work/attack.bin"
  c1=$(cpu_ticks "${pid[$t]}")
  "$VEGETA" encode --to csv <"$work/attack.bin" | cut -d, -f2,3 | tr , ' ' | sort -k2,2n >"$work/lat"
  n=$(wc -l <"$work/lat")
  awk -v t="$t" -v r="$r" -v rate="$rate" -v d=$((c1 - c0)) -v hz="$(getconf CLK_TCK)" '
    {code[NR]=$1; lat[NR]=$2; if ($1 != 200) errs++}
    function q(p,  i) { i = int(p * NR + 0.999999); if (i < 1) i = 1; return lat[i] / 1000 }
    END {printf "rate %s %s %d %.0f %.0f %.0f %.1f %d %d\n", t, rate, r, q(0.5), q(0.99), q(0.999), NR ? d * 1e6 / hz / NR : 0, errs, NR}' \
    "$work/lat" >>"$results"
  tail -1 "$results" | awk '{printf "round %d %-8s %5d req/s: p50 %6d us  p99 %7d us  p99.9 %7d us  cpu %6.1f us/req  errors %d of %d\n", $4, $2, $3, $5, $6, $7, $8, $9, $10}' >&2
}

if [ -z "${SKIP_RATES:-}" ]; then
  for t in "${targets[@]}"; do start "$t"; done
  for t in "${targets[@]}"; do
    case $t in pier-*)
      for b in 1 2; do
        curl -sf -X PUT -d "{\"ID\":\"api-$b\",\"Name\":\"api\",\"Address\":\"127.0.0.1\",\"Port\":$((BASE_PORT + b))}" \
          "http://127.0.0.1:${api[$t]}/v1/agent/service/register" >/dev/null
      done
      ;;
    esac
  done
  for t in "${targets[@]}"; do
    for i in $(seq 1 50); do
      body=$(curl -s --max-time 2 "http://127.0.0.1:${port[$t]}/api/hello" || true)
      [[ "$body" == "hello from b"* ]] && break
      [ "$i" = 50 ] && { echo "$t answered: $body" >&2; exit 1; }
      sleep 0.1
    done
  done
  echo "warming up" >&2
  for t in "${targets[@]}"; do
    echo "GET http://127.0.0.1:${port[$t]}/api/hello" | "$VEGETA" attack -rate=1000/s -duration=2s >/dev/null
  done
  for r in $(seq 1 "$ROUNDS"); do
    for rate in $RATES; do
      for t in "${targets[@]}"; do rate_round "$r" "$t" "$rate"; done
    done
  done
fi
load_end=$(loadavg)

# med FIELD KIND TARGET [RATE]: the median of column FIELD over the
# results lines of KIND (rate, idle) for TARGET (and RATE).
med() {
  awk -v f="$1" -v k="$2" -v t="$3" -v rt="${4:-}" '$1==k && $2==t && (rt=="" || $3==rt) && $f!="NA" {print $f}' "$results" |
    sort -g | awk '{a[NR]=$1} END {if (!NR) print "NA"; else print (NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2}'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (a=="NA" || b=="NA" || b==0) print "-"; else printf "%.2fx", a/b}'; }

echo
echo "$(nproc) cores; vegeta constant rate, $DURATION per attack; $IDLE idle connections; $ROUNDS interleaved rounds, medians"
echo "load average: $load_start at start, $load_end at end"
if [ -z "${SKIP_RATES:-}" ]; then
  printf '\n| proxy | rate | p50 | p99 | p99.9 | CPU per request | errors of sent |\n|---|---|---|---|---|---|---|\n'
  for rate in $RATES; do
    n50=$(med 5 rate nginx "$rate") n99=$(med 6 rate nginx "$rate") n999=$(med 7 rate nginx "$rate") ncpu=$(med 8 rate nginx "$rate")
    for t in "${targets[@]}"; do
      p50=$(med 5 rate "$t" "$rate") p99=$(med 6 rate "$t" "$rate") p999=$(med 7 rate "$t" "$rate") cpu=$(med 8 rate "$t" "$rate")
      errs=$(awk -v t="$t" -v rate="$rate" '$1=="rate" && $2==t && $3==rate {e+=$9; n+=$10} END {printf "%d of %d", e, n}' "$results")
      awk -v t="$t" -v rate="$rate" -v a="$p50" -v b="$p99" -v c="$p999" -v d="$cpu" \
        -v ra="$(ratio "$p50" "$n50")" -v rb="$(ratio "$p99" "$n99")" -v rc="$(ratio "$p999" "$n999")" -v rd="$(ratio "$cpu" "$ncpu")" -v e="$errs" \
        'BEGIN {printf "| %s | %d/s | %.2f ms (%s) | %.2f ms (%s) | %.2f ms (%s) | %.1f us (%s) | %s |\n", t, rate, a/1000, ra, b/1000, rb, c/1000, rc, d, rd, e}'
    done
  done
fi
if [ -z "${SKIP_IDLE:-}" ]; then
  printf '\n| proxy | memory per idle keep-alive connection (VmRSS delta / %d) |\n|---|---|\n' "$IDLE"
  nidle=$(med 4 idle nginx)
  for t in "${targets[@]}"; do
    m=$(med 4 idle "$t")
    all=$(awk -v t="$t" '$1=="idle" && $2==t {printf "%s%s", s, $4; s=", "}' "$results")
    printf '| %s | %s B (%s; rounds: %s) |\n' "$t" "$m" "$(ratio "$m" "$nidle")" "$all"
  done
fi
