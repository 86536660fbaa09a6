#!/usr/bin/env bash
# `make demo`: installs and builds only what the demo runs (the apt
# packages of `make demo-deps`, beside `make demo-build`: the daemon, the
# shim, the amd64 agent, the CNI plugin, crictl, the test registry and
# pushimage; then `make demo-guest`: the QEMU test guest), then a local
# registry, the macvz daemon, and crictl driving it, and prints how long
# each phase took. Everything lives in a temporary directory and a network
# namespace of its own (the pod network's bridge, taps and NAT rules are
# made there, never on this machine's interfaces); both are removed on
# exit, and any process the demo left in its namespace is ended.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
	echo "make demo needs root (apt, a network namespace, taps, QEMU): run it as root" >&2
	exit 1
fi

MAKE=${MAKE:-make}
BIN=$PWD/bin
CRICTL=$PWD/integration/tools/bin/crictl
work=$(mktemp -d /tmp/macvz-demo.XXXXXX)
ns=macvz-demo-$$
pids=()
bg_pid=

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }
crictl() { "$CRICTL" --config "$work/crictl.yaml" --runtime-endpoint "unix://$work/macvz.sock" --image-endpoint "unix://$work/macvz.sock" "$@"; }

# Phase timing: phase NAME ends the running phase and starts NAME; the
# summary prints at exit, after the cleanup it times.
t0=$EPOCHREALTIME
phase_names=()
phase_us=()
phase_notes=()
phase_name=
phase_start=
now_us() { echo "${EPOCHREALTIME/./}"; }
phase() {
	local t
	t=$(now_us)
	if [ -n "$phase_name" ]; then
		phase_names+=("$phase_name")
		phase_us+=($((t - phase_start)))
		phase_notes+=("")
	fi
	phase_name=$1
	phase_start=$t
}
summary() {
	local status=$1 i us
	say "timing${2:+ ($2)}"
	for i in "${!phase_names[@]}"; do
		us=${phase_us[$i]}
		printf '  %-16s %6d.%d s%s\n' "${phase_names[$i]}" $((us / 1000000)) $((us / 100000 % 10)) "${phase_notes[$i]}"
	done
	us=$(($(now_us) - ${t0/./}))
	printf '  %-16s %6d.%d s%s\n' total $((us / 1000000)) $((us / 100000 % 10)) "$([ "$status" = 0 ] || echo "  (failed: exit status $status)")"
}

cleanup() {
	local status=$? failed=$phase_name
	[ -z "$bg_pid" ] || wait "$bg_pid" 2>/dev/null || true
	[ "$status" = 0 ] || failed="failed during: $failed"
	[ "$status" = 0 ] || phase "cleanup"
	[ -S "$work/macvz.sock" ] && crictl rmp -f -a >/dev/null 2>&1 || true
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	if [ -e "/run/netns/$ns" ]; then
		# Whatever still runs in the demo's namespace is the demo's (a
		# shim or QEMU the daemon did not stop on a failed run).
		local left
		left=$(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ')
		if [ -n "$left" ]; then
			echo "ending what the demo left in its namespace: $left"
			# shellcheck disable=SC2086
			kill $left 2>/dev/null || true
			sleep 1
			# shellcheck disable=SC2086
			kill -KILL $left 2>/dev/null || true
		fi
		ip netns del "$ns" 2>/dev/null || true
	fi
	rm -rf "$work" || echo "could not remove $work" >&2
	phase ""
	[ "$status" = 0 ] || summary "$status" "$failed"
	[ "$status" != 0 ] || summary 0
	exit "$status"
}
trap cleanup EXIT

# Two jobs run in the background beside the build, as they mostly wait
# on the network while it compiles: apt from the start, then, once apt is
# done and the demo's binaries (whose packages it shares) are built, the
# guest's Debian packages beside crictl's build. bg NAME TARGET starts
# one; bg_wait NAME waits for it, prints its output and times it.
bg() {
	local name=$1 target=$2
	echo "$name: make $target, in the background"
	(
		start=$(now_us) rc=0
		"$MAKE" --no-print-directory "$target" >"$work/$name.log" 2>&1 || rc=$?
		echo "$rc $start $(now_us)" >"$work/$name.done"
	) &
	bg_pid=$!
}
bg_wait() {
	local name=$1 rc start end
	wait "$bg_pid" || true
	bg_pid=
	read -r rc start end <"$work/$name.done"
	sed "s/^/[$name] /" "$work/$name.log"
	phase_names+=("$name")
	phase_us+=($((end - start)))
	phase_notes+=("  (beside the build)")
	if [ "$rc" != 0 ]; then
		echo "make for $name failed (exit status $rc)" >&2
		exit 1
	fi
}
export CGO_ENABLED=0 # as make demo-build does: see the Makefile
phase "build"
say "building what the demo runs (make demo-build: demo-bins, then crictl)"
bg apt demo-deps
"$MAKE" --no-print-directory demo-bins
bg_wait apt
bg "guest packages" demo-guest-prefetch
"$MAKE" --no-print-directory crictl
bg_wait "guest packages"
phase "guest image"
say "the QEMU test guest (make demo-guest)"
"$MAKE" --no-print-directory demo-guest

phase "registry + push"
ip netns add "$ns"
ip -n "$ns" link set lo up
# inns runs a command in the demo's network namespace. Background jobs
# use `ip netns exec` directly, so that $! is the program's own pid.
inns() { ip netns exec "$ns" "$@"; }

say "starting a local OCI registry"
ip netns exec "$ns" "$BIN/testregistry" -addr 127.0.0.1:0 -root "$work/registry" >"$work/registry.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do grep -q listening "$work/registry.log" && break; sleep 0.1; done
reg=$(sed -n 's/^testregistry listening on //p' "$work/registry.log")
echo "registry at $reg"

say "pushing a Tart-format VM image (Apple-LZ4 disk chunks), an ordinary OCI image and the Linux test guest"
inns "$BIN/pushimage" -registry "$reg" -kind tart -repo demo/macos -tag 15 -disk-mib 64
inns "$BIN/pushimage" -registry "$reg" -kind oci -repo demo/app -tag 1
inns "$BIN/pushimage" -registry "$reg" -kind layout -layout "$BIN/guest/oci" -repo macvz/guest

phase "daemon start"
say "starting macvz serve"
cat >"$work/config.toml" <<TOML
root = "$work/root"
state = "$work/state"
socket = "$work/macvz.sock"

[network]
conf_dir = "$work/net.d"
bin_dirs = ["$BIN"]

[registry.hosts."$reg"]
insecure = true
TOML
mkdir -p "$work/net.d"
cat >"$work/net.d/10-macvz.conflist" <<JSON
{"cniVersion": "1.1.0", "name": "macvz", "plugins": [{
  "type": "macvz-net", "mode": "bridge-tap", "bridge": "macvz0",
  "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.88.0.0/16"}]],
           "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "$work/ipam"},
  "capabilities": {"portMappings": true, "dns": true, "mac": true}}]}
JSON
ip netns exec "$ns" "$BIN/macvz" serve --config "$work/config.toml" 2>"$work/macvz.log" &
pids+=($!)
for _ in $(seq 100); do [ -S "$work/macvz.sock" ] && break; sleep 0.1; done
: >"$work/crictl.yaml"
run crictl version

phase "image pulls"
say "what crictl sees"
run crictl pull "$reg/demo/macos:15"
run crictl pull "$reg/demo/app:1"
run crictl images
printf '$ crictl inspecti %s  (abridged)\n' "$reg/demo/macos:15"
crictl inspecti -o json "$reg/demo/macos:15" | grep -E '"(id|size|kind|bootable|base)"'
run crictl imagefsinfo
run crictl rmi "$reg/demo/app:1"
run crictl images

run crictl pull "$reg/macvz/guest:httpd"

phase "pod start"
say "a pod is a VM: run one on the Linux test guest (QEMU) and exec into it"
cat >"$work/pod.json" <<JSON
{"metadata": {"name": "demo", "namespace": "default", "uid": "demo-1"},
 "hostname": "demo-pod", "log_directory": "$work/logs",
 "port_mappings": [{"host_port": 8080, "container_port": 80}],
 "dns_config": {"servers": ["10.96.0.10"], "searches": ["default.svc.cluster.local"]}}
JSON
cat >"$work/web.json" <<JSON
{"metadata": {"name": "web"}, "image": {"image": "$reg/macvz/guest:httpd"}, "log_path": "web.log"}
JSON
cat >"$work/shell.json" <<JSON
{"metadata": {"name": "shell"}, "image": {"image": "$reg/macvz/guest:httpd"},
 "command": ["/bin/sh", "-c", "echo hello from a container in a VM; sleep 3600"], "log_path": "shell.log"}
JSON
start=$EPOCHREALTIME
pod=$(run crictl --timeout 2m runp "$work/pod.json" | tail -1)
web=$(crictl --timeout 2m create "$pod" "$work/web.json" "$work/pod.json")
run crictl --timeout 2m start "$web"
echo "pod running in $(( (${EPOCHREALTIME/./} - ${start/./}) / 1000 )) ms (VM boot included)"

phase "exec"
shell=$(crictl create "$pod" "$work/shell.json" "$work/pod.json")
run crictl start "$shell"
run crictl pods
run crictl ps
run crictl exec -s "$shell" uname -a
run crictl exec -s "$shell" hostname
run crictl exec -s "$shell" cat /etc/resolv.conf
run crictl exec -s "$shell" ip -4 addr show eth0
ip=$(crictl inspectp -o go-template --template '{{.status.network.ip}}' "$pod")
echo "pod IP: $ip"
echo "$ inns busybox wget -q -O - http://$ip/    (the pod IP, from the node)"
inns busybox wget -q -O - "http://$ip/"
echo "$ inns busybox wget -q -O - http://127.0.0.1:8080/    (hostPort 8080 -> 80)"
inns busybox wget -q -O - http://127.0.0.1:8080/
run crictl logs "$shell"
run crictl stats

phase "cleanup"
say "stopping and removing the pod, the daemon, the registry and the namespace"
run crictl stopp "$pod"
run crictl rmp "$pod"
run crictl pods
