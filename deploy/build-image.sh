#!/usr/bin/env bash
# Builds the pier binary (static, CGO_ENABLED=0) and the image FROM scratch,
# with no registry access.
#
#   deploy/build-image.sh [TAG]        # default tag: pier:dev
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${1:-pier:dev}
version=${PIER_VERSION:-$(git describe --always --dirty 2>/dev/null || echo dev)}
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT

CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${version}" -o "$ctx/pier" ./cmd/pier
cp /etc/ssl/certs/ca-certificates.crt "$ctx/"
echo 'pier:x:65532:65532:pier:/data:/sbin/nologin' > "$ctx/passwd"
echo 'pier:x:65532:' > "$ctx/group"
mkdir "$ctx/data"
docker build -q -t "$tag" -f deploy/Dockerfile "$ctx" >/dev/null 2>&1 || docker build -t "$tag" -f deploy/Dockerfile "$ctx"
echo "$tag"
