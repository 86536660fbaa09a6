// build-guest writes macvz's QEMU test guest image (integration/guest):
//
//	go run ./integration/guest/cmd/build-guest --out bin/guest --agent bin/macvz-agent
//
// With --hostile it also builds cmd/macvz-agent with -tags hostile into
// <out>/macvz-agent-hostile and adds the hostile tags (guest.RefHostile,
// guest.RefHostileGarbage), test guests that attack the host.
//
// With --arch arm64 it builds the arm64 guest (Debian's arm64 kernel and
// busybox; --agent is then a linux/arm64 binary, bin/linux-arm64/macvz-agent):
//
//	go run ./integration/guest/cmd/build-guest --arch arm64 --out bin/guest-arm64 --agent bin/linux-arm64/macvz-agent
//
// With --prefetch it only fetches the Debian packages into the cache and
// builds /bin/euid (guest.Prefetch), needing no --agent: make demo runs it
// while the agent is still being built.
//
// Output: <out>/oci (OCI image layout, tags plain and httpd), <out>/vmlinux
// (<out>/Image for arm64) and <out>/initrd (for booting QEMU directly),
// <out>/guest.json, and the Debian package cache <out>/cache.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/macvz/macvz/integration/guest"
)

func main() {
	var o guest.Options
	testInit := flag.Bool("test-init", false, "use integration/guest/testinit as /init instead of --agent")
	hostile := flag.Bool("hostile", false, "also write the hostile tags (an agent built with -tags hostile that attacks the host)")
	prefetch := flag.Bool("prefetch", false, "only fetch the Debian packages into the cache and build /bin/euid, then exit (no --agent needed)")
	flag.StringVar(&o.Out, "out", "bin/guest", "output directory")
	flag.StringVar(&o.Agent, "agent", "", "static linux binary of --arch to install as /init (bin/macvz-agent)")
	flag.StringVar(&o.Arch, "arch", guest.ArchAMD64, "guest architecture: amd64 or arm64")
	flag.StringVar(&o.Cache, "cache", "", "Debian package cache (default <out>/cache)")
	flag.StringVar(&o.KernelVersion, "kernel", "", "kernel release, e.g. "+guest.KernelSeries+"-56-amd64 (default: the newest apt offers)")
	flag.StringVar(&o.Cmdline, "cmdline", guest.DefaultCmdline, "kernel command line recorded in the images")
	flag.BoolVar(&o.Gzip, "gzip", false, "gzip the initramfs")
	modules := flag.String("modules", "", "comma-separated kernel modules to load (default for amd64: "+strings.Join(guest.DefaultModules, ",")+"; arm64 adds gpio_keys)")
	flag.Parse()
	if *modules != "" {
		o.Modules = strings.Split(*modules, ",")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	o.Log = os.Stderr
	if *prefetch {
		if flag.NArg() != 0 || o.Agent != "" || *testInit || *hostile {
			fmt.Fprintln(os.Stderr, "usage: build-guest --prefetch [--out DIR] [--arch ARCH] [--cache DIR] [--kernel VERSION]")
			os.Exit(2)
		}
		if err := guest.Prefetch(ctx, o); err != nil {
			fail(err)
		}
		fmt.Println("guest packages fetched, /bin/euid built")
		return
	}
	if flag.NArg() != 0 || (o.Agent == "") == !*testInit {
		fmt.Fprintln(os.Stderr, "usage: build-guest [--out DIR] (--agent PATH | --test-init) [flags]")
		flag.PrintDefaults()
		os.Exit(2)
	}
	if *testInit {
		o.Agent = filepath.Join(o.Out, "testinit")
		if err := os.MkdirAll(o.Out, 0o755); err != nil {
			fail(err)
		}
		if err := guest.BuildStaticArch(ctx, o.Arch, guest.TestInitPackage, o.Agent); err != nil {
			fail(err)
		}
	}
	tags := []string{guest.RefPlain, guest.RefHTTPD}
	if *hostile {
		if err := os.MkdirAll(o.Out, 0o755); err != nil {
			fail(err)
		}
		o.HostileAgent = filepath.Join(o.Out, "macvz-agent-hostile")
		if err := guest.BuildStaticArch(ctx, o.Arch, guest.AgentPackage, o.HostileAgent, guest.HostileTag); err != nil {
			fail(err)
		}
		tags = append(tags, guest.RefHostile, guest.RefHostileGarbage)
	}
	res, err := guest.Build(ctx, o)
	if err != nil {
		fail(err)
	}
	fmt.Printf("%s (tags %s)\n%s\n%s\n", res.Layout, strings.Join(tags, ", "), res.Kernel, res.Initrd)
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "build-guest:", err)
	os.Exit(1)
}
