// build-node writes macvz's node image (integration/guest, node.go): the
// guest a node VM boots, with an unmodified kubelet binary, CA
// certificates and the directories kubelet uses, as an OCI image layout
// tagged node:
//
//	go run ./integration/guest/cmd/build-node --kubelet integration/tools/bin/kubelet \
//		--arch amd64 --agent bin/macvz-agent --out bin/node-image/amd64
//
// `make node-image KUBELET=... ARCH=amd64|arm64` runs it. --agent and
// --kubelet are binaries of --arch (the arm64 agent is
// bin/linux-arm64/macvz-agent). The kubelet's version (an annotation of
// the image) comes from `kubelet --version` when this host runs --arch,
// else from its Go build information; --kubelet-version overrides both.
//
// Output: <out>/oci (OCI image layout, tag node), <out>/vmlinux
// (<out>/Image for arm64) and <out>/initrd, <out>/guest.json. Push it
// with bin/pushimage -kind layout -layout <out>/oci.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/macvz/macvz/integration/guest"
)

func main() {
	o := guest.Options{Node: &guest.NodeOptions{}}
	flag.StringVar(&o.Out, "out", "", "output directory (default bin/node-image/<arch>)")
	flag.StringVar(&o.Agent, "agent", "", "static linux binary of --arch to install as /init (bin/macvz-agent, bin/linux-arm64/macvz-agent)")
	flag.StringVar(&o.Node.Kubelet, "kubelet", "", "kubelet binary of --arch, copied unmodified to "+guest.KubeletPath)
	flag.StringVar(&o.Node.KubeletVersion, "kubelet-version", "", "kubelet's version (default: found from the binary)")
	flag.StringVar(&o.Node.CACerts, "ca-certs", guest.DefaultCACerts, "CA bundle to install at "+guest.DefaultCACerts)
	flag.StringVar(&o.Arch, "arch", guest.ArchAMD64, "guest architecture: amd64 or arm64")
	flag.StringVar(&o.Cache, "cache", "", "Debian package cache (default: the test guest's, bin/guest/cache)")
	flag.StringVar(&o.KernelVersion, "kernel", "", "kernel release, e.g. "+guest.KernelSeries+"-56-amd64 (default: the newest apt offers)")
	flag.StringVar(&o.Cmdline, "cmdline", guest.DefaultCmdline, "kernel command line recorded in the image")
	flag.BoolVar(&o.Gzip, "gzip", false, "gzip the initramfs (smaller to push and pull, slower to boot under TCG)")
	flag.Parse()
	if flag.NArg() != 0 || o.Agent == "" || o.Node.Kubelet == "" {
		fmt.Fprintln(os.Stderr, "usage: build-node --kubelet PATH --agent PATH [--arch amd64|arm64] [--out DIR] [flags]")
		flag.PrintDefaults()
		os.Exit(2)
	}
	if o.Out == "" {
		o.Out = "bin/node-image/" + o.Arch
	}
	if o.Cache == "" {
		o.Cache = guest.DefaultCacheDir()
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	o.Log = os.Stderr
	res, err := guest.Build(ctx, o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "build-node:", err)
		os.Exit(1)
	}
	fmt.Printf("%s (tag %s, %s, kubelet %s)\n%s\n%s\n", res.Layout, guest.RefNode, res.Info.Arch, strings.TrimSpace(res.Info.KubeletVersion), res.Kernel, res.Initrd)
}
