#!/usr/bin/env bash
# Builds deploy/testserver (static, CGO_ENABLED=0) and its image FROM
# scratch, with no registry access: the `api` containers of
# deploy/compose.yaml.
#
#   deploy/build-testserver.sh [TAG]   # default tag: pier-testserver:dev
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${1:-pier-testserver:dev}
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$ctx/testserver" ./deploy/testserver
docker build -q -t "$tag" -f deploy/testserver/Dockerfile "$ctx" >/dev/null 2>&1 || docker build -t "$tag" -f deploy/testserver/Dockerfile "$ctx"
echo "$tag"
