#!/usr/bin/env bash
# Builds crictl and critest (cri-tools, version pinned in go.mod) and
# kubelet (kubernetes, pinned in kubelet/go.mod) into integration/tools/bin.
# Used by the Makefile and CI. Idempotent: a binary newer than its module's
# go.mod and go.sum and this script is kept, so CI builds each once per run
# (kubelet takes about 3-5 minutes on 2 cores).
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

# fresh BIN [MODDIR]: true when BIN exists and is newer than every input.
fresh() {
	local mod=${2:-.}
	[[ -x $1 && $1 -nt $mod/go.mod && $1 -nt $mod/go.sum && $1 -nt build.sh ]]
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

kube_version=v1.36.1 # keep in step with k8s.io/kubernetes in kubelet/go.mod
if fresh bin/kubelet kubelet; then
	echo "bin/kubelet is up to date"
else
	echo "building bin/kubelet (kubernetes ${kube_version})"
	(cd kubelet && go build -ldflags "-X k8s.io/component-base/version.gitVersion=${kube_version} -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=36" \
		-o ../bin/kubelet.tmp k8s.io/kubernetes/cmd/kubelet)
	mv bin/kubelet.tmp bin/kubelet
fi
