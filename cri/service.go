// Package cri serves the CRI v1 RuntimeService and ImageService. It
// translates CRI calls into calls of the sandbox controller
// (runtime/sandbox: VM boot, stop, network, volumes), the image store
// (vmimage/imagestore) and a sandbox's shim (runtime/shim: processes in
// the guest), and nothing else; one file per verb, as in containerd's
// internal/cri/server, and errors become gRPC codes in errors.go.
package cri

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/macvz/macvz/cri/config"
	"github.com/macvz/macvz/cri/opmetrics"
	"github.com/macvz/macvz/netplugin/cnimgr"
	"github.com/macvz/macvz/netplugin/portproxy"
	"github.com/macvz/macvz/runtime/nodevm"
	"github.com/macvz/macvz/runtime/sandbox"
	"github.com/macvz/macvz/runtime/shim"
	"github.com/macvz/macvz/runtime/store"
	"github.com/macvz/macvz/runtime/vm"
	"github.com/macvz/macvz/runtime/vz"
	"github.com/macvz/macvz/snapshotter"
	"github.com/macvz/macvz/vmimage"
	"github.com/macvz/macvz/vmimage/imagestore"
)

// Service implements runtimeapi.RuntimeServiceServer and
// runtimeapi.ImageServiceServer.
type Service struct {
	// The generated bases satisfy the interfaces' unexported methods;
	// every RPC is implemented explicitly in this package.
	runtimeapi.UnimplementedRuntimeServiceServer
	runtimeapi.UnimplementedImageServiceServer

	cfg    *config.Config
	sn     *snapshotter.Snapshotter
	images imageStore
	st     *store.Store
	ports  *portproxy.Manager  // hostPorts the network leaves to the daemon
	ctl    *sandbox.Controller // sandbox VMs: boot, stop, network, volumes
	stream *streamServer       // exec, attach and port-forward sessions
	listed *listConfigs        // configs parsed and items built for the List verbs
	node   *nodevm.Supervisor  // the node VM, when [node] enables it
	// podCIDRMu serialises UpdateRuntimeConfig (runtime_config_update.go).
	podCIDRMu sync.Mutex
	// events feeds the GetContainerEvents streams (container_events.go).
	events *containerEvents
	// metrics are the operators' metrics, nil when [metrics] is off;
	// metricsURL is where they are served, once they are (opmetrics.go).
	metrics    *opmetrics.Metrics
	metricsURL atomic.Pointer[string]
}

// registryHosts is the image store's view of [registry.hosts].
func registryHosts(r config.Registry) map[string]imagestore.Host {
	out := make(map[string]imagestore.Host, len(r.Hosts))
	for name, h := range r.Hosts {
		out[name] = imagestore.Host{Mirrors: h.Mirrors, Insecure: h.Insecure, SkipVerify: h.SkipVerify}
	}
	return out
}

// deps are what a Service drives besides its own stores: NewService
// passes the real ones, unit tests fakes.
type deps struct {
	// shims starts, finds and kills the sandboxes' shims; shimBinary is
	// the binary the real ones run ("" = this executable's `macvz shim`).
	shims      shim.Launcher
	shimBinary string
	// openImages opens the image store with the service's options.
	openImages func(context.Context, imagestore.Options) (imageStore, error)
	// metrics, when set, are fed by the service (opmetrics.go).
	metrics *opmetrics.Metrics
}

// NewService opens the stores under cfg.Root and returns a ready service.
func NewService(ctx context.Context, cfg *config.Config) (*Service, error) {
	if err := cfg.ResolvePaths(); err != nil {
		return nil, err
	}
	shimBin := shimBinary()
	if cfg.Backend == "vz" {
		// The process that creates VMs is the shim: without the
		// entitlement every pod would fail at its first start.
		bin := shimBin
		if bin == "" {
			bin, _ = os.Executable()
		}
		if err := vz.CheckEntitlements(bin, false); err != nil {
			return nil, fmt.Errorf("backend vz: %w", err)
		}
		for _, w := range vz.HostWarnings() {
			slog.Warn(w)
		}
	}
	m, shims := newMetrics(cfg)
	return newService(ctx, cfg, deps{shims: shims, shimBinary: shimBin, openImages: openImageStore, metrics: m})
}

// newService is NewService with its shims and image store given; cfg's
// paths are resolved.
func newService(ctx context.Context, cfg *config.Config, d deps) (_ *Service, retErr error) {
	// What is opened is closed again, last first, when a later step fails.
	var undo []func() error
	defer func() {
		if retErr != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
		}
	}()
	sn, err := snapshotter.New(filepath.Join(cfg.Root, "snapshots"))
	if err != nil {
		return nil, fmt.Errorf("snapshotter: %w", err)
	}
	undo = append(undo, sn.Close)
	st, err := store.Open(filepath.Join(cfg.Root, "runtime.db"))
	if err != nil {
		return nil, fmt.Errorf("runtime state: %w", err)
	}
	undo = append(undo, st.Close)
	cacheDir := cfg.Network.CacheDir
	if cacheDir == "" {
		cacheDir = filepath.Join(cfg.Root, "cni")
	}
	netMgr, err := cnimgr.New(cnimgr.Config{ConfDir: cfg.Network.ConfDir, BinDirs: cfg.Network.BinDirs, CacheDir: cacheDir, Network: cfg.Network.Name})
	if err != nil {
		return nil, fmt.Errorf("network: %w", err)
	}
	s := &Service{cfg: cfg, sn: sn, st: st, ports: portproxy.New(), metrics: d.metrics, listed: newListConfigs()}
	s.events = newContainerEvents(s.watchExits)
	undo = append(undo, func() error { s.ports.Close(); return nil })
	s.images, err = d.openImages(ctx, imagestore.Options{
		Root:                   filepath.Join(cfg.Root, "images"),
		Snapshotter:            sn,
		Hosts:                  registryHosts(cfg.Registry),
		MaxConcurrentDownloads: cfg.Image.MaxConcurrentDownloads,
		MaxUnpackedSize:        cfg.Image.MaxUnpackedSize,
		KeepDiskChunks:         cfg.Image.KeepDiskChunks,
		InUse:                  s.imageInUse,
		PullDone:               s.pullDone(),
	})
	if err != nil {
		return nil, fmt.Errorf("image store: %w", err)
	}
	undo = append(undo, s.images.Close)
	if s.stream, err = newStreamServer(cfg.Stream, streamRuntime{s}); err != nil {
		return nil, err
	}
	// Records written before sandboxes had a typed spec get one, from
	// their CRI config, before the controller reads them.
	s.fillSpecs()
	// The conflist rendered from network.conf_template follows an edited
	// template before the controller's GC reads the network.
	s.restorePodCIDRs()
	// The controller re-attaches to the shims that outlived the previous
	// daemon before anything is collected: their disk clones are in use.
	s.ctl = sandbox.New(ctx, s.withRecorder(controllerConfig(cfg, d.shimBinary)), sandbox.Deps{Store: st, Snapshotter: sn, Network: netMgr, Ports: s.ports, Shims: d.shims, Stopped: s.stopped, Addressed: s.addressed})
	// A crash can leave half-made clones and unreferenced blobs; reclaim
	// them before serving, as containerd's GC does at start.
	if err := sn.Cleanup(ctx); err != nil {
		slog.Warn("snapshot cleanup failed", "err", err)
	}
	if err := s.images.Collect(ctx); err != nil {
		slog.Warn("image garbage collection failed", "err", err)
	}
	return s, nil
}

// Close releases the stores. In-flight RPCs must have finished; the
// container event streams, which never finish on their own, are ended.
// The shims and their VMs keep running: the next daemon re-attaches.
func (s *Service) Close() error {
	s.events.close()
	s.stream.Close()
	s.ports.Close()
	s.ctl.Close()
	return errors.Join(s.images.Close(), s.st.Close(), s.sn.Close())
}

// controllerConfig is the sandbox controller's part of the daemon's
// configuration.
func controllerConfig(cfg *config.Config, shimBin string) sandbox.Config {
	c := sandbox.Config{
		Backend:            cfg.Backend,
		StateDir:           filepath.Join(cfg.State, "sandboxes"),
		WarmStates:         cfg.VM.WarmStates,
		WarmPool:           cfg.VM.WarmPool,
		ShimBinary:         shimBin,
		ShimLogLevel:       cfg.Log.Level,
		BootTimeout:        time.Duration(cfg.VM.BootTimeout),
		ConsoleLogMax:      cfg.VM.ConsoleLogMaxBytes,
		DefaultCPUs:        cfg.VM.DefaultCPUs,
		DefaultMemoryBytes: cfg.VM.DefaultMemoryBytes,
		MaxLinuxVMs:        cfg.VM.MaxLinuxVMs,
		MaxMacOSVMs:        cfg.VM.MaxMacOSVMs,
		MaxConcurrentBoots: concurrentBoots(cfg.VM.MaxConcurrentBoots),
		QEMU:               vm.QEMUOptions{Binary: cfg.QEMU.Binary, Accel: cfg.QEMU.Accel},
		ImageMachineID:     cfg.VZ.MachineIdentifier == "image",
		VolumeRoots:        cfg.VZ.VolumeRoots,
	}
	if cfg.VM.WarmStart {
		c.WarmDir = filepath.Join(cfg.Root, "warm")
	}
	return c
}

// shimBinary is the macvz-shim next to this executable, or "" (this
// executable's `macvz shim`) when there is none: the small binary keeps
// every VM's shim small.
func shimBinary() string {
	self, err := os.Executable()
	if err != nil {
		return ""
	}
	p := filepath.Join(filepath.Dir(self), "macvz-shim")
	if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
		return p
	}
	slog.Info("no macvz-shim next to the daemon; VMs run under `macvz shim`", "looked for", p)
	return ""
}

// imageInUse reports whether a sandbox or container uses an image ID.
func (s *Service) imageInUse(id string) bool {
	if s.ctl == nil || s.ctl.InUse(id) {
		// Until the controller settled the records, everything is in use.
		return true
	}
	cs, err := s.st.Containers(func(c *store.Container) bool { return c.ImageID == id || slices.Contains(c.VolumeImages, id) })
	return err != nil || len(cs) > 0
}

// imageUser is the user an image runs as by default: the OCI config's
// User, or a VM image's default process user.
func (s *Service) imageUser(ctx context.Context, img imagestore.Image) (string, error) {
	if img.Kind == vmimage.KindNone {
		cfg, _, err := s.images.OCIConfig(ctx, img)
		return cfg.Config.User, err
	}
	b, err := s.images.Config(ctx, img)
	if err != nil {
		return "", err
	}
	p, err := vmimage.DefaultProcess(img.Kind, b)
	if err != nil || p == nil {
		return "", err
	}
	return p.User, nil
}

// concurrentBoots is vm.max_concurrent_boots as the sandbox controller
// takes it: 0 there is no bound, here it is the host's CPU count.
func concurrentBoots(n int) int {
	switch {
	case n < 0:
		return 0
	case n == 0:
		return runtime.NumCPU()
	}
	return n
}
