# Shell functions the front-door benchmarks share (proxy.sh,
# proxy-metrics.sh, dns.sh, h2grpc.sh): installing tools, a work dir whose processes
# stop on exit, waiting for a listener, and wrk rounds measured the same way
# for every target, so that numbers of different scripts compare.
# Sourced, not run: `. "$(dirname "$0")/lib.sh"` before the script's cd.

# install_missing PKG...: apt-get installs the packages named, if any.
install_missing() {
  [ $# -gt 0 ] || return 0
  echo "installing $*" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# make_work [MKTEMP-ARGS...]: sets work to a new temporary dir and pids to
# an empty list; on exit the processes in pids are killed and work removed.
# need_proxies installs curl, nginx, haproxy and the commands named as
# arguments (each a Debian package of its own name) where missing, sets
# NGINX_BIN and HAPROXY_BIN, and stops the services the packages start:
# those are not part of a run.
need_proxies() {
  local need=() c
  for c in curl "$@"; do command -v "$c" >/dev/null 2>&1 || need+=("$c"); done
  [ -x /usr/sbin/nginx ] || command -v nginx >/dev/null 2>&1 || need+=(nginx)
  [ -x /usr/sbin/haproxy ] || command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
  install_missing ${need[@]+"${need[@]}"}
  NGINX_BIN=$(command -v nginx || echo /usr/sbin/nginx)
  HAPROXY_BIN=$(command -v haproxy || echo /usr/sbin/haproxy)
  systemctl stop nginx haproxy >/dev/null 2>&1 || true
}

make_work() {
  work=$(mktemp -d "$@")
  pids=()
  trap cleanup EXIT
}
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}

# ready URL: true when URL answers at all within a second.
ready() { curl -s -o /dev/null --max-time 1 "$1"; }

# cpu_ticks PID...: user+system clock ticks of the processes and their
# child processes (nginx: master and workers; a process's threads are in
# its own line).
cpu_ticks() {
  local all=() p
  for p in "$@"; do all+=("$p") && all+=($(pgrep -P "$p" || true)); done
  for p in "${all[@]}"; do cat "/proc/$p/stat" 2>/dev/null; done | awk '{t+=$14+$15} END {print t+0}'
}

# wrk's latency in us, from "99%   1.23ms".
to_us() { awk '{v=$1; u=v; sub(/[0-9.]+/,"",u); sub(/[a-z]+$/,"",v); m=(u=="us")?1:(u=="ms")?1000:(u=="s")?1000000:1; printf "%d\n", v*m}'; }

# wrk_round ROUND TARGET URL PID...: one wrk run of DURATION against URL,
# THREADS threads and CONNS connections; appends "target round req/s p50
# p99 errors cpu" to $results and prints the same to stderr. The CPU is
# that of the PIDs, in microseconds per request.
wrk_round() {
  local r=$1 t=$2 u=$3 c0 c1 out rps reqs cpu p50 p99 errs
  shift 3
  c0=$(cpu_ticks "$@")
  out=$(wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency "$u")
  c1=$(cpu_ticks "$@")
  rps=$(awk '/^Requests\/sec/ {print int($2)}' <<<"$out")
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  cpu=$(awk -v d=$((c1 - c0)) -v n="$reqs" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.1f", n ? d * 1e6 / hz / n : 0}')
  p50=$(awk '$1=="50%" {print $2}' <<<"$out" | to_us)
  p99=$(awk '$1=="99%" {print $2}' <<<"$out" | to_us)
  errs=$(awk '/Non-2xx/ {n+=$NF} /Socket errors/ {gsub(/,/,""); n+=$4+$6+$8+$10} END {print n+0}' <<<"$out")
  echo "$t $r $rps $p50 $p99 $errs $cpu" >>"$results"
  printf 'round %d %-8s %8d req/s  p50 %6d us  p99 %6d us  cpu %5s us/req  errors %d\n' "$r" "$t" "$rps" "$p50" "$p99" "$cpu" "$errs" >&2
}

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2)?a[(NR+1)/2]:int((a[NR/2]+a[NR/2+1])/2)}'; }

# print_medians TARGET...: the table of each target's medians over the
# rounds in $results; sets rps_TARGET to its median req/s.
print_medians() {
  local t rps p50 p99 errs cpu
  printf '%-8s %10s %10s %10s %12s %8s\n' target req/s p50_us p99_us cpu_us/req errors
  for t in "$@"; do
    rps=$(awk -v t="$t" '$1==t {print $3}' "$results" | median)
    p50=$(awk -v t="$t" '$1==t {print $4}' "$results" | median)
    p99=$(awk -v t="$t" '$1==t {print $5}' "$results" | median)
    errs=$(awk -v t="$t" '$1==t {n+=$6} END {print n+0}' "$results")
    cpu=$(awk -v t="$t" '$1==t {print $7}' "$results" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
    printf '%-8s %10d %10d %10d %12s %8d\n' "$t" "$rps" "$p50" "$p99" "$cpu" "$errs"
    eval "rps_$t=$rps"
  done
}

# nginx_http_head prints the start of an nginx.conf for a benchmark: one
# worker per core (or $1 workers), in the foreground, every file it writes
# under $work/nginx, no access log, $2 connections per worker (4096), and an
# open http block for the caller to go on with.
nginx_http_head() {
  local workers=${1:-auto} conns=${2:-4096}
  cat <<EOF
worker_processes $workers;
worker_rlimit_nofile $((conns + 4096));
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
daemon off;
events { worker_connections $conns; }
http {
  access_log off;
  client_body_temp_path $work/nginx;
  proxy_temp_path $work/nginx;
  fastcgi_temp_path $work/nginx;
  uwsgi_temp_path $work/nginx;
  scgi_temp_path $work/nginx;
EOF
}

# haproxy_api_cfg prints an haproxy.cfg that serves the benchmarks' route:
# /api/ on 127.0.0.1:$1 to the backends $B1 and $B2 by least connections,
# with $2 threads and $3 connections; $4, if set, is one more line for the
# defaults and $5 for the frontend.
haproxy_api_cfg() {
  cat <<EOF
global
  nbthread $2
  maxconn $3
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
${4:+  $4
}  option forwardfor
  http-reuse always
frontend fe
  bind 127.0.0.1:$1
${5:+  $5
}  http-request set-header X-Real-IP %[src]
  http-request replace-path ^/api/(.*) /\1
  default_backend api
backend api
  balance leastconn
  server b1 127.0.0.1:$B1 check inter 10s
  server b2 127.0.0.1:$B2 check inter 10s
EOF
}
