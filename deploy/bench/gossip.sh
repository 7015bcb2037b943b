#!/usr/bin/env bash
# Join convergence and write propagation of pier agents beside plain
# memberlist (v0.6.0, DefaultLANConfig, no node meta) in the same run: for
# each size, N separate processes on loopback addresses (127.0.x.y), the
# first started alone, the other N-1 at once, each joining the first.
#
#   join:   time until every node lists every member (pier's "member alive"
#           log lines; the plain node prints the same from its EventDelegate)
#   writes: 100 writes, one every 100 ms on a node taken in turn (pier: a
#           service registration through the HTTP API, seen on every node
#           with a blocking query on /v1/catalog/services; plain: a
#           broadcast through a TransmitLimitedQueue whose receivers pass it
#           on, as pier's do); p50/p99/max of the time until the last node
#           has it
#
# Usage: deploy/bench/gossip.sh   (from anywhere; needs go)
#   idle:   CPU seconds per node per minute over IDLE once the writes are done
#           (user and system time of every node's process, from /proc)
#
#   start:  when the last process said it was running, and the CPU time each
#           process had used by then (/proc/PID/task/*/schedstat)
#
# What one start costs alone (CPU, page faults, exec to joined), starts one
# after the other: go run ./deploy/bench/gossip start -pier PATH -n 20
#
# Knobs: SIZES="50 100" WRITES=100 TIMEOUT=120s ROUNDS=1 IDLE=30s
#        SETTLE=0s (pause between the join's convergence and the first write)
# 100 agents is about what a 2-core machine holds; each size takes about a
# minute per kind, bounded by TIMEOUT for the join and for the writes.
set -euo pipefail
cd "$(dirname "$0")/../.."

SIZES=${SIZES:-50 100}
WRITES=${WRITES:-100}
TIMEOUT=${TIMEOUT:-120s}
ROUNDS=${ROUNDS:-1}
IDLE=${IDLE:-30s}
SETTLE=${SETTLE:-0s}

work=$(mktemp -d -t pier-gossipbench.XXXXXX)
trap 'rm -rf "$work"' EXIT
echo "== building pier and the bench driver"
# Both static (CGO_ENABLED=0), as pier ships (deploy/build-image.sh): a cgo
# build adds the dynamic loader and libc's thread start to every process.
CGO_ENABLED=0 go build -o "$work/pier" ./cmd/pier
CGO_ENABLED=0 go build -o "$work/gossip" ./deploy/bench/gossip
ulimit -n 65536 2>/dev/null || true

for round in $(seq 1 "$ROUNDS"); do
  for n in $SIZES; do
    for kind in plain pier; do
      echo "== round $round: $kind, $n nodes"
      "$work/gossip" run -kind "$kind" -pier "$work/pier" -n "$n" -writes "$WRITES" -timeout "$TIMEOUT" -idle "$IDLE" -settle "$SETTLE"
    done
  done
done
