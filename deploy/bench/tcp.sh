#!/usr/bin/env bash
# TCP route benchmark: the same two echo instances behind pier's TCP route
# (proxy.tcp) and nginx's stream module (least_conn), and one instance
# directly, measured by deploy/bench/tcpload in interleaved rounds of one
# run, so that all see the same machine.
#
#   deploy/bench/tcp.sh                                   # 3 rounds of 10s
#   ROUNDS=5 DURATION=20s STREAM_CONNS=16 CONNECT_CONNS=32 deploy/bench/tcp.sh
#   ENGINES="goroutines eventloop" CONNECT_DURATION=3s deploy/bench/tcp.sh
#
# Each engine in ENGINES (proxy.engine; default both) is a pier agent of
# its own. Connect rounds last CONNECT_DURATION (default DURATION) and,
# with LINGER0=1 (the default), the client and the instances close with
# SO_LINGER 0: a reset, so the run leaves no TIME_WAIT sockets (tens of
# thousands otherwise, which use up the ephemeral ports of everything else
# on the machine); every target is measured the same way.
#
# Two measures per target: stream (each connection writes 64 KiB and reads
# it back, in a loop: MB/s echoed) and connect (connect, 16 bytes there and
# back, close: connections/s). CPU is the proxy's (pier's process; nginx's
# master and workers; direct: the instance), from /proc, per MB or per
# connection. It installs nginx and the stream module with apt-get when
# missing and uses loopback ports BASE_PORT..BASE_PORT+5 (default 19000).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/../.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
STREAM_CONNS=${STREAM_CONNS:-16}
CONNECT_CONNS=${CONNECT_CONNS:-32}
BASE_PORT=${BASE_PORT:-19000}
ENGINES=${ENGINES:-goroutines eventloop}
CONNECT_DURATION=${CONNECT_DURATION:-$DURATION}
LINGER0=${LINGER0:-1}
B1=$((BASE_PORT + 1)) B2=$((BASE_PORT + 2))
NGINX=$((BASE_PORT + 4))
lflag=()
[ "$LINGER0" = 1 ] && lflag=(-linger0)

need=()
[ -x /usr/sbin/nginx ] || need+=(nginx-light)
[ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || need+=(libnginx-mod-stream)
install_missing ${need[@]+"${need[@]}"}
systemctl stop nginx >/dev/null 2>&1 || true

make_work
echo "building pier and tcpload" >&2
go build -o "$work/pier" ./cmd/pier
go build -o "$work/tcpload" ./deploy/bench/tcpload

"$work/tcpload" serve -addr 127.0.0.1:$B1 ${lflag[@]+"${lflag[@]}"} & pids+=($!)
b1_pid=$!
"$work/tcpload" serve -addr 127.0.0.1:$B2 ${lflag[@]+"${lflag[@]}"} & pids+=($!)

declare -A addr=([direct]=127.0.0.1:$B1 [nginx]=127.0.0.1:$NGINX)
declare -A procs=([direct]=$b1_pid)
targets=(direct)
i=0
for engine in $ENGINES; do
  port=$((BASE_PORT + 10 + 2 * i)) api=$((BASE_PORT + 11 + 2 * i))
  cat >"$work/pier-$engine.yaml" <<YAML
proxy:
  addr: 127.0.0.1:0
  engine: $engine
  tcp:
    - listen: 127.0.0.1:$port
      service: echo
services:
  - {id: echo-1, name: echo, address: 127.0.0.1, port: $B1}
  - {id: echo-2, name: echo, address: 127.0.0.1, port: $B2}
YAML
  "$work/pier" agent -dev -node "bench-$engine" -http-port $api -serf-lan-port 0 -dns-port 0 -config-file "$work/pier-$engine.yaml" \
    -log-level warn 2>"$work/pier-$engine.log" & pids+=($!)
  procs[pier-$engine]=$!
  addr[pier-$engine]=127.0.0.1:$port
  targets+=("pier-$engine")
  i=$((i + 1))
done

cat >"$work/nginx.conf" <<NGX
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes auto;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
daemon off;
events { worker_connections 8192; }
stream {
  upstream echo {
    least_conn;
    server 127.0.0.1:$B1 max_fails=1 fail_timeout=10s;
    server 127.0.0.1:$B2 max_fails=1 fail_timeout=10s;
  }
  server {
    listen 127.0.0.1:$NGINX;
    proxy_pass echo;
    proxy_timeout 10m;
  }
}
NGX
/usr/sbin/nginx -c "$work/nginx.conf" -p "$work" & pids+=($!)
procs[nginx]=$!
targets+=(nginx)
for i in $(seq 1 100); do
  ok=1
  for t in "${targets[@]}"; do "$work/tcpload" connect -addr "${addr[$t]}" -conns 1 -d 1ms >/dev/null 2>&1 &&
    [ "$("$work/tcpload" connect -addr "${addr[$t]}" -conns 1 -d 1ms | sed 's/.*"errors":\([0-9]*\).*/\1/')" = 0 ] || ok=0; done
  [ $ok = 1 ] && break
  [ "$i" = 100 ] && { echo "something did not start; logs in $work" >&2; cat "$work"/*.log >&2; exit 1; }
  sleep 0.1
done

results="$work/results"
: >"$results"
# one_round ROUND TARGET MODE CONNS: appends "target mode round value p50 p99 errors cpu_us_per_unit".
one_round() {
  local r=$1 t=$2 m=$3 n=$4 c0 c1 out d=$DURATION extra=()
  [ "$m" = connect ] && { d=$CONNECT_DURATION; extra=(${lflag[@]+"${lflag[@]}"}); }
  c0=$(cpu_ticks ${procs[$t]})
  out=$("$work/tcpload" "$m" -addr "${addr[$t]}" -conns "$n" -d "$d" ${extra[@]+"${extra[@]}"})
  c1=$(cpu_ticks ${procs[$t]})
  python3 - "$t" "$m" "$r" "$((c1 - c0))" "$(getconf CLK_TCK)" "$out" >>"$results" <<'PY'
import json, sys
t, m, r, ticks, hz, out = sys.argv[1:]
j = json.loads(out)
cpu_s = int(ticks) / int(hz)
if m == "stream":
    v = j["mb_per_s"]; unit = cpu_s * 1e6 / max(j["mb_per_s"] * j["seconds"], 1e-9)
else:
    v = j["conns_per_s"]; unit = cpu_s * 1e6 / max(j["ops"], 1)
print(t, m, r, round(v, 1), j["p50_us"], j["p99_us"], j["errors"], round(unit, 1))
PY
  tail -1 "$results" >&2
}
echo "warming up" >&2
for t in "${targets[@]}"; do "$work/tcpload" stream -addr "${addr[$t]}" -conns "$STREAM_CONNS" -d 2s >/dev/null; done
for r in $(seq 1 "$ROUNDS"); do
  for t in "${targets[@]}"; do
    one_round "$r" "$t" stream "$STREAM_CONNS"
    one_round "$r" "$t" connect "$CONNECT_CONNS"
  done
done
echo
echo "$(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), $ROUNDS interleaved rounds of $DURATION (connect: $CONNECT_DURATION, linger0=$LINGER0); medians (stream: MB/s and CPU us per MB; connect: conns/s and CPU us per connection):"
python3 - "$results" <<'PY'
import sys, statistics as st, collections
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    t, m, r, v, p50, p99, e, cpu = line.split()
    rows[(t, m)].append((float(v), int(p50), int(p99), int(e), float(cpu)))
med = {}
for (t, m), xs in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][0])):
    v, p50, p99, e, cpu = (st.median(c) for c in zip(*xs))
    med[(t, m)] = (v, p99, cpu)
    print(f"{m:8} {t:16} {v:10.1f}  p50 {p50:7.0f} us  p99 {p99:7.0f} us  cpu {cpu:7.1f}  errors {sum(x[3] for x in xs)}")
for m in ("stream", "connect"):
    n = med[("nginx", m)]
    for t in sorted(k for k, mm in med if mm == m and k.startswith("pier")):
        v = med[(t, m)]
        print(f"{m}: {t}/nginx  rate {v[0] / n[0]:.2f}x  p99 {v[1] / max(n[1], 1):.2f}x  cpu/unit {v[2] / max(n[2], 1e-9):.2f}x")
PY
