# macvz build, test and CI entry points. `make test` is the test command
# (README); .ci/run calls exactly that.

GO ?= go
# The Linux guests' agent and exec helper go into initramfs images, whose
# every byte the guest kernel copies at each boot: no symbol table or DWARF
# (integration/guest builds its images' alike).
GUEST_LDFLAGS := -ldflags=-s\ -w
# bash with pipefail, so `go test | tee` fails when the tests do.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c

TOOLS := integration/tools
CRICTL := $(abspath $(TOOLS)/bin/crictl)
CRITEST := $(abspath $(TOOLS)/bin/critest)
KUBELET := $(abspath $(TOOLS)/bin/kubelet)
KUBE_BIN := $(abspath $(TOOLS)/bin)
BENCHTIME ?= 1s
# apt-get needs root; CI runs as root, a workstation through sudo.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

# Commands are built only once their main package exists, so every target
# works while the tree grows.
has_main = $(wildcard cmd/$(1)/*.go)

.PHONY: all build build-host build-cross test unit fuzz fuzz-short integration critest kubelet-e2e node-e2e cluster-e2e darwin-check bench demo demo-deps demo-build demo-bins demo-guest demo-guest-prefetch tools crictl registry-tools clean deps guest-image node-image sign mac-test

all: build

# bin/macvz is the daemon for this host (the darwin daemon needs cgo and the
# macOS SDK: darwin-check type-checks it instead). The agent runs in the
# guests: static linux/amd64 for QEMU guests, linux/arm64 for arm64 Linux
# guests (QEMU's virt machine here, a Mac's node VM), darwin/arm64 for
# macOS guests.
build: build-host build-cross

# What a Linux host with QEMU guests runs (and all `make demo` builds): the
# daemon, the shim, the amd64 agent and the Go build of its exec helper
# (the guest images' /init and /usr/libexec/macvz-exec; the image builder,
# integration/guest, installs the helper's C build instead when it has a C
# compiler for the guest), the CNI plugin and host-local.
build-host:
	@mkdir -p bin
	$(if $(call has_main,macvz),$(GO) build -o bin/macvz ./cmd/macvz)
	$(if $(call has_main,macvz-shim),$(GO) build -o bin/macvz-shim ./cmd/macvz-shim)
	$(if $(call has_main,macvz-agent),CGO_ENABLED=0 GOOS=linux GOARCH=amd64 $(GO) build $(GUEST_LDFLAGS) -o bin/macvz-agent ./cmd/macvz-agent)
	$(if $(call has_main,macvz-exec),CGO_ENABLED=0 GOOS=linux GOARCH=amd64 $(GO) build $(GUEST_LDFLAGS) -o bin/macvz-exec ./cmd/macvz-exec)
	$(if $(call has_main,macvz-net),CGO_ENABLED=0 GOOS=linux GOARCH=amd64 $(GO) build -o bin/macvz-net ./cmd/macvz-net)
	$(if $(call has_main,macvz-net),CGO_ENABLED=0 $(GO) build -o bin/host-local github.com/containernetworking/plugins/plugins/ipam/host-local)
	@true

# The other platforms' binaries (each a cold compile of the standard
# library for its GOOS/GOARCH): the arm64 Linux agent, the macOS agent and
# the Mac's CNI plugin.
build-cross:
	@mkdir -p bin
	$(if $(call has_main,macvz-agent),CGO_ENABLED=0 GOOS=linux GOARCH=arm64 $(GO) build $(GUEST_LDFLAGS) -o bin/linux-arm64/macvz-agent ./cmd/macvz-agent)
	$(if $(call has_main,macvz-exec),CGO_ENABLED=0 GOOS=linux GOARCH=arm64 $(GO) build $(GUEST_LDFLAGS) -o bin/linux-arm64/macvz-exec ./cmd/macvz-exec)
	$(if $(call has_main,macvz-agent),CGO_ENABLED=0 GOOS=darwin GOARCH=arm64 $(GO) build -o bin/darwin-arm64/macvz-agent ./cmd/macvz-agent)
	$(if $(call has_main,macvz-net),CGO_ENABLED=0 GOOS=darwin GOARCH=arm64 $(GO) build -o bin/darwin-arm64/macvz-net ./cmd/macvz-net)
	@true

test: unit fuzz-short integration critest kubelet-e2e node-e2e cluster-e2e

# Unit tests are everything outside integration/; those run in `integration`
# with the tools they need built first. The list is made in the recipe so a
# package that fails to load fails the target instead of dropping out.
unit:
	pkgs=$$($(GO) list ./... | grep -v '^github.com/macvz/macvz/integration'); \
		$(GO) test -race $$pkgs

# Every Fuzz target of the module (found in *_test.go files, so new ones
# join without listing them here) fuzzed for FUZZTIME each: one `go test
# -fuzz` per target, as -fuzz takes one. Their seed corpora (and crashers
# kept in testdata/fuzz) already run as plain tests in `unit`. A failure
# leaves its input in the package's testdata/fuzz/<target>/: commit it.
# Go 1.26's coordinator can report "context deadline exceeded" when a
# duration -fuzztime ends under load, with no failing input
# (golang/go#75804, fixed in Go 1.27): such a run is reported and
# passed; one that wrote a failing input fails.
FUZZTIME ?= 60s
# `make test` (so CI) fuzzes each target briefly, by count: a count has
# no deadline to race.
fuzz-short:
	@mkdir -p bin
	$(MAKE) fuzz FUZZTIME=5000x
fuzz:
	@mkdir -p bin
	for f in $$(grep -rl --include='*_test.go' '^func Fuzz' . | grep -v '^./integration/tools/' | sort); do \
		dir=$$(dirname $$f); \
		for t in $$(sed -n 's/^func \(Fuzz[A-Za-z0-9_]*\)(.*/\1/p' $$f); do \
			echo "== $$dir $$t"; \
			if ! $(GO) test -run '^$$' -fuzz "^$$t\$$" -fuzztime $(FUZZTIME) $$dir > bin/fuzz.out 2>&1; then \
				cat bin/fuzz.out; \
				if grep -q 'Failing input written' bin/fuzz.out || ! grep -q 'context deadline exceeded' bin/fuzz.out; then exit 1; fi; \
				echo "== $$t: the fuzz coordinator's deadline race (golang/go#75804), no failing input: passed"; \
			else tail -1 bin/fuzz.out; fi; \
		done; \
	done

# The QEMU test guest (integration/guest): Debian kernel + busybox + the
# agent as /init, written as an OCI layout in bin/guest/oci (tags plain and
# httpd); push it with bin/pushimage -kind layout -layout bin/guest/oci.
# ARCH=arm64 builds the arm64 guest into bin/guest-arm64 (its OCI layout
# in bin/guest-arm64/oci): what make mac-test boots on a Mac, which cannot
# build it (Debian's packages).
guest-image: build
	$(BUILD_GUEST)
BUILD_GUEST = $(GO) run ./integration/guest/cmd/build-guest --arch $(ARCH) --out bin/guest$(if $(filter arm64,$(ARCH)),-arm64) \
		--agent $(if $(filter arm64,$(ARCH)),bin/linux-arm64/macvz-agent,bin/macvz-agent)

# The Mac bring-up kit (a Mac only): build, sign ad hoc, then the vz
# integration tests (integration/mac_test.go) against the signed daemon:
# the arm64 Linux test guest from MACVZ_GUEST_LAYOUT (built on Linux with
# make guest-image ARCH=arm64) and, when MACVZ_MACOS_IMAGE names a macOS
# image with the agent installed, a macOS pod, cold then warm. On Linux
# make darwin-check type-checks those tests.
mac-test:
	@test "$$(uname -s)" = Darwin || { echo "make mac-test runs on a Mac; here, make darwin-check type-checks its tests"; exit 1; }
	$(MAKE) sign tools
	MACVZ=$(CURDIR)/bin/macvz $(GO) test -count=1 -v -timeout 90m -run '^TestMac' ./integration/

# The node image (integration/guest/node.go): the guest a node VM boots,
# carrying an unmodified kubelet, as an OCI layout in
# bin/node-image/<ARCH>/oci (tag node); push it with bin/pushimage -kind
# layout -layout bin/node-image/<ARCH>/oci. KUBELET is a kubelet binary of
# ARCH (amd64 or arm64); without it the tools' v1.37.2 kubelet is built.
ARCH ?= amd64
NODE_AGENT = $(if $(filter arm64,$(ARCH)),bin/linux-arm64/macvz-agent,bin/macvz-agent)
node-image: build $(if $(filter command line environment,$(origin KUBELET)),,tools)
	$(GO) run ./integration/guest/cmd/build-node --arch $(ARCH) --out bin/node-image/$(ARCH) \
		--agent $(NODE_AGENT) --kubelet $(KUBELET) --cache bin/guest/cache

# Needs root (loop devices, mounts, taps, QEMU); outside CI the tests that
# lack it skip and say why, under CI=true they fail.
integration: build tools
	CRICTL=$(CRICTL) CRITEST=$(CRITEST) $(if $(call has_main,macvz),MACVZ=$(abspath bin/macvz)) \
		$(GO) test -race -count=1 -v -timeout 60m -skip '^(TestCritest|TestKubelet|TestKubeletNodeVM|TestCluster|TestNodeVM|TestNodeVMStats|TestNodeVMDevicePlugin|TestNodeImageKubelet)$$' ./integration/...

# critest (cri-tools v1.37.0) against the real daemon on QEMU, in a network
# namespace; integration/critest/skip.txt lists the specs skipped and why.
critest: build tools
	CRICTL=$(CRICTL) CRITEST=$(CRITEST) MACVZ=$(abspath bin/macvz) \
		$(GO) test -count=1 -v -timeout 60m -run '^TestCritest$$' ./integration/

# An unmodified kubelet (v1.37.2, standalone, static pods) against the real
# daemon on QEMU, in a network namespace (integration/kubelet_test.go).
kubelet-e2e: build tools
	CRICTL=$(CRICTL) KUBELET=$(KUBELET) MACVZ=$(abspath bin/macvz) \
		$(GO) test -count=1 -v -timeout 30m -run '^TestKubelet$$' ./integration/

# The node VM (integration/nodevm_test.go, nodeimage_test.go): the node
# image with kubelet v1.37.2, booted by macvz serve with [node] enabled;
# kubelet in it runs a static pod through the daemon's CRI.
node-e2e: build tools
	CRICTL=$(CRICTL) KUBELET=$(KUBELET) MACVZ=$(abspath bin/macvz) \
		$(GO) test -count=1 -v -timeout 30m -run '^(TestNodeVM|TestNodeVMStats|TestNodeVMDevicePlugin|TestNodeImageKubelet|TestKubeletNodeVM)$$' ./integration/

# A real cluster (integration/cluster_test.go): etcd, kube-apiserver,
# kube-controller-manager and kube-scheduler in a network namespace, two
# macvz nodes (macvz + kubelet, each in its own network and mount
# namespace) on a veth LAN, driven with kubectl. MACVZ_CLUSTER_LOGS=<dir>
# keeps every component's log.
cluster-e2e: build tools
	CRICTL=$(CRICTL) KUBE_BIN=$(KUBE_BIN) MACVZ=$(abspath bin/macvz) \
		$(GO) test -count=1 -v -timeout 40m -run '^TestCluster$$' ./integration/

# On a Mac: sign the binaries that host VMs with the virtualization
# entitlement (ad hoc by default; SIGN_IDENTITY for a real identity). The
# entitlements are fixed: never the restricted com.apple.vm.networking,
# with which macOS kills an ad-hoc-signed process at exec (bridged pods
# go through socket_vmnet's bridged mode, see the README).
SIGN_IDENTITY ?= -
sign: build
	codesign --force --entitlements cmd/macvz-shim/macvz.entitlements -s "$(SIGN_IDENTITY)" bin/macvz-shim bin/macvz

# make install: the daemon as a service (README, "Install"). It builds
# nothing (run `make build`, on a Mac `make sign`, as yourself first; then
# `sudo make install`) and never starts anything: it prints the command
# that does. DESTDIR stages the tree elsewhere (packaging, and
# integration/install_test.go). The binaries go to PREFIX/bin (macvz finds
# macvz-shim next to itself, `macvz image install-agent` the darwin agent),
# the CNI plugins to CNI_BIN_DIR (the daemon's network.bin_dirs default),
# config.toml and net.d/10-macvz.conflist under SYSCONFDIR/macvz only
# when none is there (a user's configuration is never overwritten; the
# default names SYSCONFDIR and CNI_BIN_DIR when they are not the
# defaults), and the service: the systemd unit on Linux (SYSTEMD_UNIT_DIR,
# /etc/systemd/system: the administrator's units, not a distribution
# package's /lib/systemd/system; empty to skip), the launchd job on a Mac
# (LAUNCHD_DIR), both with ExecStart/ProgramArguments rewritten for PREFIX
# and SYSCONFDIR.
PREFIX ?= /usr/local
SYSCONFDIR ?= /etc
CNI_BIN_DIR ?= /opt/macvz/bin
SYSTEMD_UNIT_DIR ?= /etc/systemd/system
LAUNCHD_DIR ?= /Library/LaunchDaemons
DESTDIR ?=
INSTALL_OS := $(shell uname -s)
# What runs on this host: the Linux plugin is linux/amd64, a Mac's is darwin/arm64.
INSTALL_NET := $(if $(filter Darwin,$(INSTALL_OS)),bin/darwin-arm64/macvz-net,bin/macvz-net)
INSTALL_FILES := bin/macvz bin/macvz-shim $(INSTALL_NET) bin/host-local \
	$(if $(filter Darwin,$(INSTALL_OS)),bin/darwin-arm64/macvz-agent)
# sed rewrites of the default paths, for the unit, the plist and the config.
INSTALL_SED := -e 's|/usr/local/bin/macvz|$(PREFIX)/bin/macvz|g' -e 's|/etc/macvz/|$(SYSCONFDIR)/macvz/|g' \
	-e 's|"/opt/macvz/bin"|"$(CNI_BIN_DIR)"|g'

.PHONY: install
install:
	@missing=; for f in $(INSTALL_FILES); do test -x "$$f" || missing="$$missing $$f"; done; \
		if [ -n "$$missing" ]; then echo "make install: not built:$$missing; run make build$(if $(filter Darwin,$(INSTALL_OS)), and make sign,) first" >&2; exit 1; fi
	install -d -m 0755 $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(CNI_BIN_DIR) $(DESTDIR)$(SYSCONFDIR)/macvz/net.d
	install -m 0755 bin/macvz bin/macvz-shim $(DESTDIR)$(PREFIX)/bin/
	$(if $(filter Darwin,$(INSTALL_OS)),install -m 0755 bin/darwin-arm64/macvz-agent $(DESTDIR)$(PREFIX)/bin/macvz-agent)
	install -m 0755 $(INSTALL_NET) $(DESTDIR)$(CNI_BIN_DIR)/macvz-net
	install -m 0755 bin/host-local $(DESTDIR)$(CNI_BIN_DIR)/host-local
	@cfg=$(DESTDIR)$(SYSCONFDIR)/macvz/config.toml; \
		if [ -e "$$cfg" ] || [ -L "$$cfg" ]; then echo "kept $$cfg: it exists (macvz config default prints the new defaults)"; \
		else bin/macvz config default | sed $(INSTALL_SED) > "$$cfg.tmp" && chmod 0644 "$$cfg.tmp" && mv "$$cfg.tmp" "$$cfg" && echo "wrote $$cfg"; fi
	@dir=$(DESTDIR)$(SYSCONFDIR)/macvz/net.d; \
		have=; for f in "$$dir"/*.conflist "$$dir"/*.conf "$$dir"/*.json; do [ -e "$$f" ] && have=$$f; done; \
		if [ -n "$$have" ]; then echo "kept the network configuration in $$dir ($$have)"; \
		else bin/macvz config network > "$$dir/.10-macvz.conflist.tmp" && chmod 0644 "$$dir/.10-macvz.conflist.tmp" && \
			mv "$$dir/.10-macvz.conflist.tmp" "$$dir/10-macvz.conflist" && echo "wrote $$dir/10-macvz.conflist"; fi
ifeq ($(INSTALL_OS),Darwin)
	install -d -m 0755 $(DESTDIR)$(LAUNCHD_DIR)
	sed $(INSTALL_SED) cmd/macvz/launchd/io.macvz.macvz.plist > $(DESTDIR)$(LAUNCHD_DIR)/.io.macvz.macvz.plist.tmp
	chmod 0644 $(DESTDIR)$(LAUNCHD_DIR)/.io.macvz.macvz.plist.tmp
	mv $(DESTDIR)$(LAUNCHD_DIR)/.io.macvz.macvz.plist.tmp $(DESTDIR)$(LAUNCHD_DIR)/io.macvz.macvz.plist
	@echo "next: sudo launchctl bootstrap system $(LAUNCHD_DIR)/io.macvz.macvz.plist (or, if it runs: sudo launchctl kickstart -k system/io.macvz.macvz)"
else ifneq ($(SYSTEMD_UNIT_DIR),)
	install -d -m 0755 $(DESTDIR)$(SYSTEMD_UNIT_DIR)
	sed $(INSTALL_SED) cmd/macvz/systemd/macvz.service > $(DESTDIR)$(SYSTEMD_UNIT_DIR)/.macvz.service.tmp
	chmod 0644 $(DESTDIR)$(SYSTEMD_UNIT_DIR)/.macvz.service.tmp
	mv $(DESTDIR)$(SYSTEMD_UNIT_DIR)/.macvz.service.tmp $(DESTDIR)$(SYSTEMD_UNIT_DIR)/macvz.service
	@echo "next: systemctl daemon-reload && systemctl enable --now macvz (or, if it runs: systemctl restart macvz)"
endif

# The darwin/arm64 code cannot be compiled here; type-check it (see
# integration/darwincheck).
darwin-check:
	$(GO) run ./integration/darwincheck -v

# Benchmarks only (-run '^$'); results print and are kept in bin/bench.txt;
# then critest's lifecycle benchmarks, their results in bin/critest-bench/.
# BenchmarkClusterDeploy (integration/cluster_bench_test.go) runs the
# whole cluster: one round is minutes, whatever BENCHTIME says.
bench: build tools
	@mkdir -p bin
	CRICTL=$(CRICTL) KUBE_BIN=$(KUBE_BIN) MACVZ=$(abspath bin/macvz) \
		$(GO) test -run '^$$' -bench . -benchmem -benchtime=$(BENCHTIME) -timeout 90m ./... | tee bin/bench.txt
	CRICTL=$(CRICTL) CRITEST=$(CRITEST) MACVZ=$(abspath bin/macvz) CRITEST_BENCHMARK_DIR=$(abspath bin/critest-bench) \
		$(GO) test -count=1 -v -timeout 60m -run '^TestCritest$$' ./integration/ | tail -20
	@echo; echo "Performance summary (bin/bench.txt; README: Performance):"
	@$(GO) run ./integration/cmd/benchsummary bin/bench.txt | tee bin/bench-summary.md

# `make demo` is the first command on a fresh machine: integration/demo.sh
# runs its phases, timing each (demo-deps beside demo-build, demo-guest,
# then the demo itself), and builds only what the demo runs: none of the
# tools' kubernetes, etcd and critest, nor the other platforms' binaries.
demo:
	MAKE="$(MAKE)" bash integration/demo.sh
# What build-host, crictl and registry-tools build, with cgo off (none of it
# needs cgo on Linux): every binary then shares one build of the standard
# library and of the common modules, and the host's binaries are one `go
# build`, which overlaps their compiles and links. crictl comes after them
# (not beside: two cold builds at once would each compile the standard
# library), from the cache they filled; the agent after the host's, linked
# stripped (GUEST_LDFLAGS) from the packages they compiled. A cold build on
# 2 cores takes about 330 CPU-seconds instead of 430. The tests' `make
# build` keeps the default.
demo-build: export CGO_ENABLED := 0
demo-build: demo-bins crictl
crictl: $(if $(filter demo-build,$(MAKECMDGOALS)),demo-bins)
demo-bins:
	@mkdir -p bin
	$(GO) build -o bin/ ./cmd/macvz ./cmd/macvz-shim ./cmd/macvz-net \
		github.com/containernetworking/plugins/plugins/ipam/host-local \
		./integration/cmd/testregistry ./integration/cmd/pushimage
	GOOS=linux GOARCH=amd64 $(GO) build $(GUEST_LDFLAGS) -o bin/macvz-agent ./cmd/macvz-agent
# The amd64 test guest, from the agent demo-build built (cgo off likewise,
# for build-guest to find its packages built). demo-guest-prefetch does its
# slow part ahead (the Debian packages, /bin/euid): demo.sh runs it beside
# crictl's build, once apt is done and the demo's binaries filled the cache.
demo-guest demo-guest-prefetch: export CGO_ENABLED := 0
demo-guest:
	$(BUILD_GUEST)
demo-guest-prefetch:
	$(GO) run ./integration/guest/cmd/build-guest --prefetch --out bin/guest

# The packages the demo needs: QEMU, busybox (the guest's, and the host's
# wget), kmod (depmod, for the guest's modules), iproute2 (the network
# namespace). Without Recommends: qemu-system-x86's are its GUI, UEFI
# firmware and block backends, about 140 packages and 140 MB more that the
# demo never uses (`make deps`, for the tests, installs them). apt runs
# only when a package is missing or the test guest is not built yet (its
# kernel and busybox are fetched through apt's package lists), so a
# second `make demo` skips it.
DEMO_PACKAGES := qemu-system-x86 busybox-static kmod iproute2 ca-certificates
demo-deps:
	@missing=; for p in $(DEMO_PACKAGES); do \
		dpkg-query -W -f='$${db:Status-Abbrev}' $$p 2>/dev/null | grep -q '^ii' || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ] && [ -e bin/guest/guest.json ]; then \
		echo "apt: nothing to do ($(DEMO_PACKAGES) installed, test guest built)"; exit 0; fi; \
	set -x; \
	$(SUDO) apt-get update -qq; \
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(DEMO_PACKAGES)

# crictl and critest (cri-tools, pinned in integration/tools/go.mod); kubelet,
# kube-apiserver, kube-controller-manager, kube-scheduler, kubectl and
# kube-proxy (one kubernetes release, integration/tools/kubernetes/go.mod);
# etcd (integration/tools/etcd/go.mod); the standalone test registry.
tools: crictl registry-tools
	$(TOOLS)/build.sh critest kubernetes etcd
crictl:
	$(TOOLS)/build.sh crictl
# The test registry and the tool that pushes images to it.
registry-tools:
	@mkdir -p bin
	$(GO) build -o bin/testregistry ./integration/cmd/testregistry
	$(GO) build -o bin/pushimage ./integration/cmd/pushimage

clean:
	rm -rf bin $(TOOLS)/bin

# Recommends stay on: qemu-system-x86 recommends ipxe-qemu, the option
# ROMs that -device virtio-net-pci loads.
# systemd only for systemd-analyze, which integration/install_test.go runs
# offline on the unit `make install` writes (nothing starts systemd).
# The arm64 test guest (TestArm64GuestBoot) downloads Debian's arm64
# kernel and busybox-static:arm64: dpkg gets the arm64 architecture once,
# before apt-get update, so apt's lists have them.
# gcc and the arm64 cross compiler with their libc build the guests' exec
# helper in C (cmd/macvz-exec/c; integration/guest falls back to the Go
# build without them, each process start then 60-100 ms slower under TCG).
deps:
	dpkg --print-foreign-architectures | grep -qx arm64 || $(SUDO) dpkg --add-architecture arm64
	$(SUDO) apt-get update
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y \
		qemu-system-x86 qemu-system-arm qemu-utils busybox-static cpio kmod xfsprogs e2fsprogs \
		iproute2 nftables tmux git ca-certificates systemd \
		gcc libc6-dev gcc-aarch64-linux-gnu libc6-dev-arm64-cross
