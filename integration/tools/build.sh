#!/usr/bin/env bash
# Builds crictl and critest (cri-tools, version pinned in go.mod) into
# integration/tools/bin. Used by the Makefile and CI. Idempotent: a binary
# newer than go.mod, go.sum and this script is kept.
#
# The module proxy here refuses version lists (so `go install pkg@vX` fails
# for cri-tools); this module names the exact version and go.sum pins
# everything, and the local module cache is tried before the proxy.
set -euo pipefail

cd "$(dirname "$0")"
version=1.36.0 # keep in step with sigs.k8s.io/cri-tools in go.mod
ldflags="-X sigs.k8s.io/cri-tools/pkg/version.Version=${version}"

export GOWORK=off
export GOFLAGS=-mod=readonly
export GOPROXY="file://$(go env GOMODCACHE)/cache/download,https://proxy.golang.org"

# fresh BIN: true when BIN exists and is newer than every input.
fresh() {
	[[ -x $1 && $1 -nt go.mod && $1 -nt go.sum && $1 -nt build.sh ]]
}

mkdir -p bin
if fresh bin/crictl; then
	echo "bin/crictl is up to date"
else
	echo "building bin/crictl (cri-tools v${version})"
	go build -ldflags "$ldflags" -o bin/crictl.tmp sigs.k8s.io/cri-tools/cmd/crictl
	mv bin/crictl.tmp bin/crictl # never leave a half-written binary that looks fresh
fi
if fresh bin/critest; then
	echo "bin/critest is up to date"
else
	echo "building bin/critest (cri-tools v${version})"
	go test -c -ldflags "$ldflags" -o bin/critest.tmp sigs.k8s.io/cri-tools/cmd/critest
	mv bin/critest.tmp bin/critest
fi
