#!/usr/bin/env bash
# HTTP/2 and gRPC benchmark: pier and nginx (http2, grpc_pass) in front of
# the same backends in one run, interleaved rounds:
#   - HTTP/2 requests/s with h2load over TLS and over h2c (prior knowledge),
#     to two HTTP/1.1 backends (deploy/testserver) through /api/;
#   - gRPC unary calls/s with grpcload (deploy/bench/grpcload), over h2c,
#     to two gRPC instances (grpcload -serve);
#   - the same three at a fixed rate, with p50 and p99 from grpcload;
# with the CPU time of the proxy (nginx: master and workers) per request,
# from /proc.
#
#   deploy/bench/h2grpc.sh                        # 3 rounds of 10s
#   ROUNDS=5 DURATION=20 RATE=4000 deploy/bench/h2grpc.sh
#   GO_SERVER=1 deploy/bench/h2grpc.sh            # and a second pier, "piergo", with http2.server: go
#   BEFORE=/tmp/pier-old deploy/bench/h2grpc.sh   # and a second pier, "before", that binary (built from
#                                                 # another tree), in the same rounds: before/after in one run
#
# It installs nginx, nghttp2-client (h2load), curl and openssl with apt-get
# when missing, builds pier, deploy/testserver and grpcload, and uses only
# loopback ports BASE_PORT..BASE_PORT+9 (default 18280; +10..+12 with
# GO_SERVER=1 or BEFORE). Run it by hand.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/../.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}   # seconds
CONNS=${CONNS:-16}         # client connections
STREAMS=${STREAMS:-8}      # h2load: streams in flight per connection
THREADS=${THREADS:-1}      # h2load threads
RATE=${RATE:-3000}         # requests (calls) per second in the fixed-rate runs
BASE_PORT=${BASE_PORT:-18280}
B1=$((BASE_PORT + 1)) B2=$((BASE_PORT + 2)) G1=$((BASE_PORT + 3)) G2=$((BASE_PORT + 4))
PIER=$((BASE_PORT + 5)) PIER_TLS=$((BASE_PORT + 6)) NGINX=$((BASE_PORT + 7)) NGINX_TLS=$((BASE_PORT + 8)) API=$((BASE_PORT + 9))
PIER_GO=$((BASE_PORT + 10)) PIER_GO_TLS=$((BASE_PORT + 11)) API_GO=$((BASE_PORT + 12))
GO_SERVER=${GO_SERVER:-0}  # 1: also a pier whose HTTP/2 server is net/http's (http2.server: go)
BEFORE=${BEFORE:-}         # a pier binary: also that pier, "before", with the same config (not with GO_SERVER=1)
if [ -n "$BEFORE" ]; then
  [ "$GO_SERVER" != 1 ] || { echo "BEFORE and GO_SERVER=1 share ports: one or the other" >&2; exit 2; }
  [ -x "$BEFORE" ] || { echo "BEFORE=$BEFORE: not an executable" >&2; exit 2; }
fi

need=()
command -v h2load >/dev/null 2>&1 || need+=(nghttp2-client)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null 2>&1 || need+=(nginx)
install_missing ${need[@]+"${need[@]}"}
NGINX_BIN=$(command -v nginx || echo /usr/sbin/nginx)
systemctl stop nginx >/dev/null 2>&1 || true

make_work
echo "building pier, testserver and grpcload" >&2
go build -o "$work/pier" ./cmd/pier
go build -o "$work/testserver" ./deploy/testserver
go build -o "$work/grpcload" ./deploy/bench/grpcload
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null

"$work/testserver" -addr 127.0.0.1:$B1 -name b1 2>"$work/b1.log" & pids+=($!)
"$work/testserver" -addr 127.0.0.1:$B2 -name b2 2>"$work/b2.log" & pids+=($!)
"$work/grpcload" -serve 127.0.0.1:$G1 -name g1 2>"$work/g1.log" & pids+=($!)
"$work/grpcload" -serve 127.0.0.1:$G2 -name g2 2>"$work/g2.log" & pids+=($!)

# pier_config H2C_PORT TLS_PORT HTTP2_SERVER
pier_config() {
  cat <<EOF
proxy:
  addr: 127.0.0.1:$1
  h2c: true
  http2:
    server: $3
  tls:
    addr: 127.0.0.1:$2
    certs:
      - cert_file: $work/cert.pem
        key_file: $work/key.pem
  routes:
    - path: /api/
      service: api
      strip: /api
    - path: /grpc.testing.TestService/
      service: grpc
      proto: grpc
EOF
}
pier_config $PIER $PIER_TLS lean >"$work/pier.yaml"
"$work/pier" agent -dev -node bench -http-port $API -serf-lan-port 0 -config-file "$work/pier.yaml" \
  -log-level warn 2>"$work/pier.log" & pids+=($!)
pier_pid=$!
apis=($API) targets=(pier)
second=
if [ "$GO_SERVER" = 1 ]; then
  second=piergo
  pier_config $PIER_GO $PIER_GO_TLS go >"$work/$second.yaml"
  cp "$work/pier" "$work/$second"
elif [ -n "$BEFORE" ]; then
  second=before
  pier_config $PIER_GO $PIER_GO_TLS lean >"$work/$second.yaml"
  cp "$BEFORE" "$work/$second"
fi
if [ -n "$second" ]; then
  "$work/$second" agent -dev -node bench-$second -http-port $API_GO -serf-lan-port 0 -dns-port 0 -config-file "$work/$second.yaml" \
    -log-level warn 2>"$work/$second.log" & pids+=($!)
  second_pid=$!
  apis+=($API_GO) targets+=($second)
fi
targets+=(nginx)

mkdir -p "$work/nginx"
{ nginx_http_head; cat <<EOF
  http2_max_concurrent_streams 250;
  keepalive_requests 1000000;   # per HTTP/2 connection too: the default 1000 ends h2load's connections mid-run
  upstream api {
    least_conn;
    server 127.0.0.1:$B1 max_fails=1 fail_timeout=10s;
    server 127.0.0.1:$B2 max_fails=1 fail_timeout=10s;
    keepalive 64;
  }
  upstream grpcs {
    least_conn;
    server 127.0.0.1:$G1 max_fails=1 fail_timeout=10s;
    server 127.0.0.1:$G2 max_fails=1 fail_timeout=10s;
    keepalive 64;
  }
  server {
    listen 127.0.0.1:$NGINX http2;
    listen 127.0.0.1:$NGINX_TLS ssl http2;
    ssl_certificate $work/cert.pem;
    ssl_certificate_key $work/key.pem;
    location ~ ^/api/(.*)\$ {
      proxy_pass http://api/\$1\$is_args\$args;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header Host \$host;
      proxy_set_header X-Real-IP \$remote_addr;
    }
    location /grpc.testing.TestService/ {
      grpc_pass grpc://grpcs;
      grpc_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      grpc_set_header X-Real-IP \$remote_addr;
    }
  }
}
EOF
} >"$work/nginx.conf"
"$NGINX_BIN" -c "$work/nginx.conf" -p "$work" & pids+=($!)
nginx_pid=$!

for i in $(seq 1 100); do
  if ready http://127.0.0.1:$B1/ && ready http://127.0.0.1:$B2/ && ready http://127.0.0.1:$API/v1/agent/self &&
    { [ -z "$second" ] || ready http://127.0.0.1:$API_GO/v1/agent/self; } &&
    curl -s -o /dev/null --max-time 1 --http2-prior-knowledge http://127.0.0.1:$NGINX/api/; then break; fi
  [ "$i" = 100 ] && { echo "something did not start; logs in $work" >&2; cat "$work"/*.log >&2; exit 1; }
  sleep 0.1
done
for a in "${apis[@]}"; do
  for s in api:1:$B1 api:2:$B2 grpc:1:$G1 grpc:2:$G2; do
    IFS=: read -r name n port <<<"$s"
    curl -sf -X PUT -d "{\"ID\":\"$name-$n\",\"Name\":\"$name\",\"Address\":\"127.0.0.1\",\"Port\":$port}" \
      http://127.0.0.1:$a/v1/agent/service/register >/dev/null
  done
done

declare -A port=([pier]=$PIER [nginx]=$NGINX) tport=([pier]=$PIER_TLS [nginx]=$NGINX_TLS) pid=([pier]=$pier_pid [nginx]=$nginx_pid)
if [ -n "$second" ]; then port[$second]=$PIER_GO tport[$second]=$PIER_GO_TLS pid[$second]=$second_pid; fi
for t in "${targets[@]}"; do
  v=$(curl -sk --http2 -o /dev/null -w '%{http_version} %{http_code}' https://127.0.0.1:${tport[$t]}/api/hello)
  [ "$v" = "2 200" ] || { echo "$t over TLS: $v" >&2; exit 1; }
  v=$(curl -s --http2-prior-knowledge -o /dev/null -w '%{http_version} %{http_code}' http://127.0.0.1:${port[$t]}/api/hello)
  [ "$v" = "2 200" ] || { echo "$t over h2c: $v" >&2; exit 1; }
  "$work/grpcload" -target 127.0.0.1:${port[$t]} -duration 1s -concurrency 4 -conns 1 >/dev/null || { echo "$t: gRPC fails" >&2; exit 1; }
done

results="$work/results"
: >"$results"

# record TEST TARGET ROUND RPS P50 P99 ERRORS CPU_TICKS REQUESTS
record() {
  local cpu
  cpu=$(awk -v d="$8" -v n="$9" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.1f", n ? d * 1e6 / hz / n : 0}')
  echo "$1 $2 $3 $4 $5 $6 $7 $cpu" >>"$results"
  printf 'round %d %-10s %-7s %8d req/s  p50 %6s us  p99 %6s us  cpu %5s us/req  errors %d\n' "$3" "$1" "$2" "$4" "$5" "$6" "$cpu" "$7" >&2
}

# h2load_round ROUND TEST TARGET URL: requests/s, closed loop.
h2load_round() {
  local r=$1 test=$2 t=$3 u=$4 c0 c1 out rps done failed
  c0=$(cpu_ticks ${pid[$t]})
  out=$(h2load -c "$CONNS" -m "$STREAMS" -t "$THREADS" -D "$DURATION" "$u" 2>&1)
  c1=$(cpu_ticks ${pid[$t]})
  rps=$(awk '/^finished in/ {gsub(/,/,""); print int($4)}' <<<"$out")
  done=$(awk '/^requests:/ {print $8}' <<<"$out")
  failed=$(awk '/^requests:/ {print $10 + $12}' <<<"$out")
  record "$test" "$t" "$r" "$rps" - - "$failed" $((c1 - c0)) "$done"
}

# grpcload_round ROUND TEST TARGET KIND ADDR PATH [RATE]
grpcload_round() {
  local r=$1 test=$2 t=$3 kind=$4 addr=$5 path=$6 rate=${7:-0} c0 c1 out
  c0=$(cpu_ticks ${pid[$t]})
  out=$("$work/grpcload" -kind "$kind" -target "$addr" -path "$path" -conns "$CONNS" -concurrency $((CONNS * STREAMS)) \
    -duration "${DURATION}s" -rate "$rate")
  c1=$(cpu_ticks ${pid[$t]})
  read -r calls errs rps p50 p99 < <(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(d["calls"], d["errors"], int(d["calls_per_s"]), d["p50_us"], d["p99_us"])' "$out")
  record "$test" "$t" "$r" "$rps" "$p50" "$p99" "$errs" $((c1 - c0)) "$calls"
}

echo "warming up" >&2
for t in "${targets[@]}"; do
  h2load -c "$CONNS" -m "$STREAMS" -D 2 http://127.0.0.1:${port[$t]}/api/hello >/dev/null 2>&1
  "$work/grpcload" -target 127.0.0.1:${port[$t]} -duration 2s >/dev/null
done
for r in $(seq 1 "$ROUNDS"); do
  for t in "${targets[@]}"; do
    h2load_round "$r" h2-tls "$t" https://127.0.0.1:${tport[$t]}/api/hello
    h2load_round "$r" h2c "$t" http://127.0.0.1:${port[$t]}/api/hello
    grpcload_round "$r" grpc "$t" grpc 127.0.0.1:${port[$t]} /
    grpcload_round "$r" h2-tls@rate "$t" h2tls 127.0.0.1:${tport[$t]} /api/hello "$RATE"
    grpcload_round "$r" h2c@rate "$t" h2c 127.0.0.1:${port[$t]} /api/hello "$RATE"
    grpcload_round "$r" grpc@rate "$t" grpc 127.0.0.1:${port[$t]} / "$RATE"
  done
done

echo
echo "$(nproc) cores, $CONNS connections x $STREAMS streams, ${DURATION}s, $ROUNDS interleaved rounds, fixed rate $RATE/s; medians:"
printf '%-12s %-7s %10s %10s %10s %12s %8s\n' test target req/s p50_us p99_us cpu_us/req errors
for test in h2-tls h2c grpc h2-tls@rate h2c@rate grpc@rate; do
  for t in "${targets[@]}"; do
    sel() { awk -v a="$test" -v b="$t" -v c="$1" '$1==a && $2==b {print $c}' "$results"; }
    printf '%-12s %-7s %10s %10s %10s %12s %8s\n' "$test" "$t" "$(sel 4 | median)" "$(sel 5 | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')" \
      "$(sel 6 | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')" "$(sel 8 | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')" "$(sel 7 | awk '{n+=$1} END {print n+0}')"
  done
done
