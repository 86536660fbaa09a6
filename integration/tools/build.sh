#!/usr/bin/env bash
# Builds into integration/tools/bin, each at the exact version its module
# pins: crictl and critest (cri-tools, go.mod); kubelet, kube-apiserver,
# kube-controller-manager, kube-scheduler, kubectl and kube-proxy (one
# kubernetes release, kubernetes/go.mod); etcd (the version that release
# requires, etcd/go.mod). Used by the Makefile and CI. Idempotent: a binary
# newer than its module's go.mod and go.sum and this script is kept, so CI
# builds each once per run. The six kubernetes binaries are one `go build`
# (they share most packages). Cold (empty GOCACHE) on 2 cores: about 12-15
# minutes for those, 1-2 for etcd, 2 for cri-tools; relinking all of them
# with a warm cache (after an edit here) a minute or two. Each build prints
# its time.
#
# Arguments pick what to build: crictl, critest, kubernetes, etcd (`make
# crictl`, which `make demo` uses, is `build.sh crictl`); none means all.
#
# The module proxy here refuses version lists (so `go install pkg@vX` fails
# for cri-tools); each module names the exact version and go.sum pins
# everything, and the local module cache is tried before the proxy.
set -euo pipefail

cd "$(dirname "$0")"
# cri-tools' version, as go.mod pins it (without the v).
version=$(awk '$1 == "sigs.k8s.io/cri-tools" { sub(/^v/, "", $2); print $2 }' go.mod)
ldflags="-X sigs.k8s.io/cri-tools/pkg/version.Version=${version}"

export GOWORK=off
export GOFLAGS=-mod=readonly
export GOPROXY="file://$(go env GOMODCACHE)/cache/download,https://proxy.golang.org"

# fresh BIN [MODDIR]: true when BIN exists and is newer than every input.
fresh() {
	local mod=${2:-.}
	[[ -x $1 && $1 -nt $mod/go.mod && $1 -nt $mod/go.sum && $1 -nt build.sh ]]
}

# timed CMD...: runs CMD and says how long it took.
timed() {
	local start=$SECONDS
	"$@"
	echo "  took $((SECONDS - start))s"
}

mkdir -p bin
# Builds go to a temporary directory in bin/ and are moved into place, so a
# half-written binary never looks fresh.
tmp=$(mktemp -d bin/.build.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

# want NAME: true when NAME is to be built (no arguments: everything).
want() {
	((${#targets[@]} == 0)) && return 0
	local w
	for w in "${targets[@]}"; do
		[[ $w == "$1" ]] && return 0
	done
	return 1
}
targets=("$@")
for t in "${targets[@]}"; do
	case $t in
	crictl | critest | kubernetes | etcd) ;;
	*)
		echo "build.sh: unknown target $t (want crictl, critest, kubernetes or etcd)" >&2
		exit 2
		;;
	esac
done

if ! want crictl; then
	:
elif fresh bin/crictl; then
	echo "bin/crictl is up to date"
else
	echo "building bin/crictl (cri-tools v${version})"
	timed go build -ldflags "$ldflags" -o "$tmp/crictl" sigs.k8s.io/cri-tools/cmd/crictl
	mv "$tmp/crictl" bin/crictl
fi
if ! want critest; then
	:
elif fresh bin/critest; then
	echo "bin/critest is up to date"
else
	echo "building bin/critest (cri-tools v${version})"
	timed go test -c -ldflags "$ldflags" -o "$tmp/critest" sigs.k8s.io/cri-tools/cmd/critest
	mv "$tmp/critest" bin/critest
fi

kube_version=v1.37.2 # keep in step with k8s.io/kubernetes in kubernetes/go.mod
# -s -w: no symbol table or DWARF, as Kubernetes' own release builds; the
# links are the slow part of a rebuild, and the binaries a sixth smaller.
kube_ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	kube_ldflags+=" -X ${pkg}.gitVersion=${kube_version} -X ${pkg}.gitMajor=1 -X ${pkg}.gitMinor=37 -X ${pkg}.gitTreeState=clean"
done
stale=()
want kubernetes && for b in kubelet kube-apiserver kube-controller-manager kube-scheduler kubectl kube-proxy; do
	if fresh "bin/$b" kubernetes; then
		echo "bin/$b is up to date"
	else
		stale+=("$b")
	fi
done
if ((${#stale[@]})); then
	echo "building ${stale[*]} (kubernetes ${kube_version}, one go build)"
	(cd kubernetes && timed go build -ldflags "$kube_ldflags" -o "../$tmp/" "${stale[@]/#/k8s.io/kubernetes/cmd/}")
	for b in "${stale[@]}"; do
		mv "$tmp/$b" "bin/$b"
	done
fi

etcd_version=v3.7.0 # keep in step with go.etcd.io/etcd/server/v3 in etcd/go.mod (what kubernetes/go.mod requires)
if ! want etcd; then
	:
elif fresh bin/etcd etcd; then
	echo "bin/etcd is up to date"
else
	echo "building bin/etcd (etcd ${etcd_version})"
	# The server module's root is etcd's main package (etcdmain.Main).
	(cd etcd && timed go build -ldflags "-s -w" -o "../$tmp/etcd" go.etcd.io/etcd/server/v3)
	mv "$tmp/etcd" bin/etcd
fi
