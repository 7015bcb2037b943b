#!/usr/bin/env bash
# Front-door benchmark: the same two backends behind pier, nginx (least_conn,
# upstream keepalive, the seed talk's /api/ location) and haproxy (leastconn,
# http-reuse), and the backends directly, each measured with wrk in
# interleaved rounds of one run, so that all four see the same machine.
#
#   deploy/bench/proxy.sh                      # 3 rounds of 10s, 64 connections
#   ROUNDS=5 DURATION=20s CONNS=128 deploy/bench/proxy.sh
#   PIER_GOMAXPROCS=1 deploy/bench/proxy.sh    # pier's GOMAXPROCS (default: the core count)
#   CEILING=1 deploy/bench/proxy.sh            # also deploy/bench/ceiling, with epoll and with io_uring:
#                                              # the least a Go proxy can do
#   PIER0_BIN=/tmp/pier-old deploy/bench/proxy.sh  # also pier0: another pier binary (an earlier
#                                              # build), same config, in the same rounds
#
# It installs nginx, haproxy, wrk and curl with apt-get when they are
# missing, builds pier and deploy/testserver, and uses only loopback ports
# (BASE_PORT..BASE_PORT+10, default 18080). Run it by hand as root; CI does not.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/../.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-64}
THREADS=${THREADS:-2}
BASE_PORT=${BASE_PORT:-18080}
B1=$((BASE_PORT + 1)) B2=$((BASE_PORT + 2))
PIER=$((BASE_PORT + 3)) NGINX=$((BASE_PORT + 4)) HAPROXY=$((BASE_PORT + 5)) API=$((BASE_PORT + 6))
CEIL=$((BASE_PORT + 7)) URING=$((BASE_PORT + 8))
PIER0=$((BASE_PORT + 9)) API0=$((BASE_PORT + 10))

need_proxies wrk

make_work

echo "building pier and testserver" >&2
go build -o "$work/pier" ./cmd/pier
go build -o "$work/testserver" ./deploy/testserver
[ -n "${CEILING:-}" ] && go build -o "$work/ceiling" ./deploy/bench/ceiling

"$work/testserver" -addr 127.0.0.1:$B1 -name b1 2>"$work/b1.log" & pids+=($!)
b1_pid=$!
"$work/testserver" -addr 127.0.0.1:$B2 -name b2 2>"$work/b2.log" & pids+=($!)
b2_pid=$!
if [ -n "${CEILING:-}" ]; then
  "$work/ceiling" -addr 127.0.0.1:$CEIL -backends 127.0.0.1:$B1,127.0.0.1:$B2 2>"$work/ceiling.log" & pids+=($!)
  ceiling_pid=$!
  "$work/ceiling" -uring -addr 127.0.0.1:$URING -backends 127.0.0.1:$B1,127.0.0.1:$B2 2>"$work/uring.log" & pids+=($!)
  uring_pid=$!
fi

cat >"$work/pier.yaml" <<EOF
proxy:
  addr: 127.0.0.1:$PIER
  routes:
    - path: /api/
      service: api
      strip: /api
EOF
env ${PIER_GOMAXPROCS:+GOMAXPROCS=$PIER_GOMAXPROCS} "$work/pier" agent -dev -node bench -http-port $API -serf-lan-port 0 -config-file "$work/pier.yaml" \
  -log-level warn 2>"$work/pier.log" & pids+=($!)
pier_pid=$!
if [ -n "${PIER0_BIN:-}" ]; then
  sed "s/127.0.0.1:$PIER\$/127.0.0.1:$PIER0/" "$work/pier.yaml" >"$work/pier0.yaml"
  env ${PIER_GOMAXPROCS:+GOMAXPROCS=$PIER_GOMAXPROCS} "$PIER0_BIN" agent -dev -node bench0 -http-port $API0 -serf-lan-port 0 -dns-port 0 \
    -config-file "$work/pier0.yaml" -log-level warn 2>"$work/pier0.log" & pids+=($!)
  pier0_pid=$!
fi

mkdir -p "$work/nginx"
{ nginx_http_head; cat <<EOF
  upstream api {
    least_conn;
    server 127.0.0.1:$B1 max_fails=1 fail_timeout=10s;
    server 127.0.0.1:$B2 max_fails=1 fail_timeout=10s;
    keepalive 64;
  }
  server {
    listen 127.0.0.1:$NGINX;
    location ~ ^/api/(.*)\$ {
      proxy_pass http://api/\$1\$is_args\$args;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header Host \$host;
      proxy_set_header X-Real-IP \$remote_addr;
    }
  }
}
EOF
} >"$work/nginx.conf"
"$NGINX_BIN" -c "$work/nginx.conf" -p "$work" & pids+=($!)
nginx_pid=$!

haproxy_api_cfg "$HAPROXY" "$(nproc)" 8192 >"$work/haproxy.cfg"
"$HAPROXY_BIN" -f "$work/haproxy.cfg" -db >"$work/haproxy.log" 2>&1 & pids+=($!)
haproxy_pid=$!

# Wait (bounded) for everything to listen, then register the backends.
for i in $(seq 1 100); do
  if ready http://127.0.0.1:$B1/ && ready http://127.0.0.1:$B2/ && ready http://127.0.0.1:$API/v1/agent/self &&
    ready http://127.0.0.1:$NGINX/api/ && ready http://127.0.0.1:$HAPROXY/api/; then break; fi
  [ "$i" = 100 ] && { echo "something did not start; logs in $work" >&2; cat "$work"/*.log >&2; exit 1; }
  sleep 0.1
done
for b in 1 2; do
  port=$((BASE_PORT + b))
  curl -sf -X PUT -d "{\"ID\":\"api-$b\",\"Name\":\"api\",\"Address\":\"127.0.0.1\",\"Port\":$port}" \
    http://127.0.0.1:$API/v1/agent/service/register >/dev/null
  if [ -n "${PIER0_BIN:-}" ]; then
    for i in $(seq 1 100); do ready http://127.0.0.1:$API0/v1/agent/self && break; sleep 0.1; done
    curl -sf -X PUT -d "{\"ID\":\"api-$b\",\"Name\":\"api\",\"Address\":\"127.0.0.1\",\"Port\":$port}" \
      http://127.0.0.1:$API0/v1/agent/service/register >/dev/null
  fi
done

declare -A url=(
  [direct]=http://127.0.0.1:$B1/hello
  [pier]=http://127.0.0.1:$PIER/api/hello
  [nginx]=http://127.0.0.1:$NGINX/api/hello
  [haproxy]=http://127.0.0.1:$HAPROXY/api/hello
)
targets=(direct pier nginx haproxy)
if [ -n "${PIER0_BIN:-}" ]; then
  url[pier0]=http://127.0.0.1:$PIER0/api/hello
  targets+=(pier0)
fi
if [ -n "${CEILING:-}" ]; then
  url[ceiling]=http://127.0.0.1:$CEIL/api/hello
  url[uring]=http://127.0.0.1:$URING/api/hello
  targets+=(ceiling uring)
fi
# The processes whose CPU time counts for each target (nginx: master and
# workers; direct: the one backend it hits).
declare -A procs=([direct]="$b1_pid" [pier]="$pier_pid" [nginx]="$nginx_pid" [haproxy]="$haproxy_pid" [ceiling]="${ceiling_pid:-}" [uring]="${uring_pid:-}" [pier0]="${pier0_pid:-}")
for t in "${targets[@]}"; do
  body=$(curl -sf --max-time 5 "${url[$t]}") || { echo "$t: ${url[$t]} does not answer" >&2; exit 1; }
  case "$body" in "hello from b"*) ;; *) echo "$t answered: $body" >&2; exit 1 ;; esac
done

results="$work/results"
: >"$results"
echo "warming up" >&2
for t in "${targets[@]}"; do wrk -t"$THREADS" -c"$CONNS" -d2s "${url[$t]}" >/dev/null; done
for r in $(seq 1 "$ROUNDS"); do
  for t in "${targets[@]}"; do
    wrk_round "$r" "$t" "${url[$t]}" ${procs[$t]}
  done
done

echo
echo "$(nproc) cores, wrk -t$THREADS -c$CONNS -d$DURATION, $ROUNDS interleaved rounds; medians:"
print_medians "${targets[@]}"
awk -v p="$rps_pier" -v n="$rps_nginx" -v h="$rps_haproxy" 'BEGIN {printf "pier/nginx %.2fx, pier/haproxy %.2fx\n", p/n, p/h}'
if [ -n "${PIER0_BIN:-}" ]; then
  awk -v p="$rps_pier" -v o="$rps_pier0" -v n="$rps_nginx" 'BEGIN {printf "pier0/nginx %.2fx, pier/pier0 %.2fx\n", o/n, p/o}'
fi
if [ -n "${CEILING:-}" ]; then
  awk -v c="$rps_ceiling" -v u="$rps_uring" -v n="$rps_nginx" -v p="$rps_pier" \
    'BEGIN {printf "ceiling/nginx %.2fx (epoll), uring/nginx %.2fx (io_uring), pier/ceiling %.2fx\n", c/n, u/n, p/c}'
fi
