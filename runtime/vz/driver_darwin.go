//go:build darwin

package vz

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/Code-Hex/vz/v3"
	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	"github.com/macvz/macvz/runtime/boundedlog"
	"github.com/macvz/macvz/runtime/vm"
)

// Driver is the vz backend: one process (the shim) hosts one VM in the
// framework's own dispatch queue, a macOS guest or an arm64 Linux guest
// (linuxplan.go).
type Driver struct{}

// New returns the vz driver.
func New() *Driver { return &Driver{} }

// Name implements vm.Driver.
func (*Driver) Name() string { return "vz" }

// limits reads the framework's bounds for a VM's size.
func limits() Limits {
	return Limits{
		MinCPUs: int(vz.VirtualMachineConfigurationMinimumAllowedCPUCount()), MaxCPUs: int(vz.VirtualMachineConfigurationMaximumAllowedCPUCount()),
		MinMemory: vz.VirtualMachineConfigurationMinimumAllowedMemorySize(), MaxMemory: vz.VirtualMachineConfigurationMaximumAllowedMemorySize(),
	}
}

// Validate implements vm.Driver.
func (*Driver) Validate(spec *vm.Spec) error {
	_, err := NewPlan(spec, limits())
	return err
}

// Restorable implements vm.Driver: macOS guests, on macOS 14 and later;
// never a Linux guest (errLinuxRestore).
func (*Driver) Restorable(spec *vm.Spec) error {
	return Restorable(spec, hostMacOSMajor())
}

// hostMacOSMajor is this host's macOS major release (0: unknown).
func hostMacOSMajor() int {
	v, err := unix.Sysctl("kern.osproductversion")
	if err != nil {
		return 0
	}
	return MacOSMajor(v)
}

// Create implements vm.Driver: the configuration is built and validated
// by the framework here, so a bad spec fails before Start.
func (*Driver) Create(ctx context.Context, spec *vm.Spec) (vm.Machine, error) {
	p, err := NewPlan(spec, limits())
	if err != nil {
		return nil, err
	}
	m := &machine{spec: spec, plan: p, log: slog.With("sandbox", spec.ID), done: make(chan struct{}), state: vm.StateCreated}
	if m.config, m.files, err = buildConfig(p, &m.agentLine); err != nil {
		return nil, err
	}
	return m, nil
}

// buildConfig turns a plan into a framework configuration. The closers
// (file handles, socket_vmnet forwarders) are kept for the VM's life and
// closed when it ends.
func buildConfig(p *Plan, console io.Writer) (*vz.VirtualMachineConfiguration, []io.Closer, error) {
	var boot vz.BootLoader
	var err error
	if p.Boot == vm.BootLinux {
		boot, err = linuxBootLoader(p.Linux)
	} else {
		boot, err = vz.NewMacOSBootLoader()
	}
	if err != nil {
		return nil, nil, err
	}
	cfg, err := vz.NewVirtualMachineConfiguration(boot, uint(p.CPUs), p.Memory)
	if err != nil {
		return nil, nil, err
	}
	if p.Boot == vm.BootMacOS {
		// A Linux guest has no platform identity to keep: the framework's
		// generic platform is its default.
		platform, err := macPlatform(p)
		if err != nil {
			return nil, nil, err
		}
		cfg.SetPlatformVirtualMachineConfiguration(platform)
	}

	var disks []vz.StorageDeviceConfiguration
	for _, d := range p.Disks {
		// Cached + Fsync: see Plan.Disks (macOS 12+).
		a, err := vz.NewDiskImageStorageDeviceAttachmentWithCacheAndSync(d.Path, d.ReadOnly, vz.DiskImageCachingModeCached, vz.DiskImageSynchronizationModeFsync)
		if err != nil {
			return nil, nil, fmt.Errorf("disk %s: %w", d.Path, err)
		}
		blk, err := vz.NewVirtioBlockDeviceConfiguration(a)
		if err != nil {
			return nil, nil, err
		}
		disks = append(disks, blk)
	}
	cfg.SetStorageDevicesVirtualMachineConfiguration(disks)

	var shares []vz.DirectorySharingDeviceConfiguration
	for _, s := range p.Shares {
		share, err := directoryShare(s)
		if err != nil {
			return nil, nil, fmt.Errorf("share %s: %w", s.Tag, err)
		}
		fs, err := vz.NewVirtioFileSystemDeviceConfiguration(s.Tag)
		if err != nil {
			return nil, nil, fmt.Errorf("share %s: %w", s.Tag, err)
		}
		fs.SetDirectoryShare(share)
		shares = append(shares, fs)
	}
	cfg.SetDirectorySharingDevicesVirtualMachineConfiguration(shares)

	nics, files, err := networkDevices(p)
	if err != nil {
		return nil, nil, err
	}
	cfg.SetNetworkDevicesVirtualMachineConfiguration(nics)
	closeFiles := func() {
		for _, f := range files {
			f.Close()
		}
	}

	if p.Boot == vm.BootMacOS {
		if err := macHumanInterface(cfg); err != nil {
			closeFiles()
			return nil, nil, err
		}
	}

	if p.Entropy {
		entropy, err := vz.NewVirtioEntropyDeviceConfiguration()
		if err != nil {
			closeFiles()
			return nil, nil, err
		}
		cfg.SetEntropyDevicesVirtualMachineConfiguration([]*vz.VirtioEntropyDeviceConfiguration{entropy})
	}
	balloon, err := vz.NewVirtioTraditionalMemoryBalloonDeviceConfiguration()
	if err != nil {
		closeFiles()
		return nil, nil, err
	}
	cfg.SetMemoryBalloonDevicesVirtualMachineConfiguration([]vz.MemoryBalloonDeviceConfiguration{balloon})

	if p.ConsoleLog != "" {
		// The console goes through a pipe into a bounded log (the guest
		// decides how much it prints), not straight into a file.
		in, out, err := consolePipe(p.ConsoleLog, p.ConsoleLogMax, console)
		if err != nil {
			closeFiles()
			return nil, nil, err
		}
		files = append(files, in, out)
		att, err := vz.NewFileHandleSerialPortAttachment(in, out)
		if err != nil {
			closeFiles()
			return nil, nil, fmt.Errorf("console log %s: %w", p.ConsoleLog, err)
		}
		console, err := vz.NewVirtioConsoleDeviceSerialPortConfiguration(att)
		if err != nil {
			closeFiles()
			return nil, nil, err
		}
		cfg.SetSerialPortsVirtualMachineConfiguration([]*vz.VirtioConsoleDeviceSerialPortConfiguration{console})
	}
	sock, err := vz.NewVirtioSocketDeviceConfiguration()
	if err != nil {
		closeFiles()
		return nil, nil, err
	}
	cfg.SetSocketDevicesVirtualMachineConfiguration([]vz.SocketDeviceConfiguration{sock})

	if ok, err := cfg.Validate(); !ok || err != nil {
		closeFiles()
		return nil, nil, fmt.Errorf("vz: the framework refuses the VM configuration: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	return cfg, files, nil
}

// directoryShare is what one virtiofs device exports: one directory,
// or several (VZMultipleDirectoryShare: the guest sees each entry as a
// directory at the share's top level, each read-only or not on its own).
func directoryShare(s SharePlan) (vz.DirectoryShare, error) {
	if len(s.Dirs) == 0 {
		dir, err := vz.NewSharedDirectory(s.HostPath, s.ReadOnly)
		if err != nil {
			return nil, err
		}
		return vz.NewSingleDirectoryShare(dir)
	}
	dirs := make(map[string]*vz.SharedDirectory, len(s.Dirs))
	for _, d := range s.Dirs {
		dir, err := vz.NewSharedDirectory(d.HostPath, d.ReadOnly)
		if err != nil {
			return nil, fmt.Errorf("entry %s (%s): %w", d.Name, d.HostPath, err)
		}
		dirs[d.Name] = dir
	}
	return vz.NewMultipleDirectoryShare(dirs)
}

// macHumanInterface gives a macOS guest its display, keyboard and
// pointing device. A Linux guest gets none: its console is the virtio
// console and the agent is reached over vsock.
func macHumanInterface(cfg *vz.VirtualMachineConfiguration) error {
	// A display even for a headless VM: VMs without a graphics device
	// have shown vsock connection resets.
	gfx, err := vz.NewMacGraphicsDeviceConfiguration()
	if err != nil {
		return err
	}
	display, err := vz.NewMacGraphicsDisplayConfiguration(1920, 1200, 80)
	if err != nil {
		return err
	}
	gfx.SetDisplays(display)
	cfg.SetGraphicsDevicesVirtualMachineConfiguration([]vz.GraphicsDeviceConfiguration{gfx})

	// Keyboard and trackpad: the Mac ones (macOS 14 and 13), else USB.
	if kb, err := vz.NewMacKeyboardConfiguration(); err == nil {
		cfg.SetKeyboardsVirtualMachineConfiguration([]vz.KeyboardConfiguration{kb})
	} else if kb, err := vz.NewUSBKeyboardConfiguration(); err == nil {
		cfg.SetKeyboardsVirtualMachineConfiguration([]vz.KeyboardConfiguration{kb})
	}
	if tp, err := vz.NewMacTrackpadConfiguration(); err == nil {
		cfg.SetPointingDevicesVirtualMachineConfiguration([]vz.PointingDeviceConfiguration{tp})
	} else if pd, err := vz.NewUSBScreenCoordinatePointingDeviceConfiguration(); err == nil {
		cfg.SetPointingDevicesVirtualMachineConfiguration([]vz.PointingDeviceConfiguration{pd})
	}
	return nil
}

// macPlatform is the VM's Mac identity: the image's hardware model, its
// machine identifier (or a fresh one: two VMs running with one conflict)
// and the sandbox's own auxiliary storage (sharing one fails to lock it).
func macPlatform(p *Plan) (*vz.MacPlatformConfiguration, error) {
	hw, err := vz.NewMacHardwareModelWithData(p.HardwareModel)
	if err != nil {
		return nil, fmt.Errorf("the image's hardware model: %w", err)
	}
	if !hw.Supported() {
		return nil, fmt.Errorf("this Mac cannot run the image's hardware model (a newer macOS guest than the host supports?): %w", errdefs.ErrFailedPrecondition)
	}
	var id *vz.MacMachineIdentifier
	if len(p.MachineID) > 0 {
		id, err = vz.NewMacMachineIdentifierWithData(p.MachineID)
	} else {
		id, err = vz.NewMacMachineIdentifier()
		if err == nil && p.MachineIDFile != "" {
			// Warm start keeps it with the saved state: a restore needs
			// the identity the state was saved with.
			err = os.WriteFile(p.MachineIDFile, id.DataRepresentation(), 0o600)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("machine identifier: %w", err)
	}
	aux, err := vz.NewMacAuxiliaryStorage(p.AuxStorage)
	if err != nil {
		return nil, fmt.Errorf("auxiliary storage %s: %w", p.AuxStorage, err)
	}
	return vz.NewMacPlatformConfiguration(vz.WithMacHardwareModel(hw), vz.WithMacMachineIdentifier(id), vz.WithMacAuxiliaryStorage(aux))
}

// networkDevices makes the NICs; a socket attachment connects to
// socket_vmnet's stream socket at its path (socketnic_darwin.go).
func networkDevices(p *Plan) ([]*vz.VirtioNetworkDeviceConfiguration, []io.Closer, error) {
	var out []*vz.VirtioNetworkDeviceConfiguration
	var files []io.Closer
	fail := func(err error) ([]*vz.VirtioNetworkDeviceConfiguration, []io.Closer, error) {
		for _, f := range files {
			f.Close()
		}
		return nil, nil, err
	}
	for i, n := range p.NICs {
		var att vz.NetworkDeviceAttachment
		switch n.Kind {
		case vm.NICVmnetNAT:
			a, err := vz.NewNATNetworkDeviceAttachment()
			if err != nil {
				return fail(err)
			}
			att = a
		case vm.NICVmnetBridged:
			var found vz.BridgedNetwork
			for _, b := range vz.NetworkInterfaces() {
				if b.Identifier() == n.Interface {
					found = b
				}
			}
			if found == nil {
				// The framework lists bridgeable interfaces only to a
				// process with the restricted com.apple.vm.networking
				// entitlement, which an ad-hoc signature cannot carry.
				return fail(fmt.Errorf("nic %d: no bridgeable host interface %q: vmnet-bridged needs the com.apple.vm.networking entitlement, which Apple grants only to a developer's provisioning profile (an ad-hoc-signed binary claiming it is killed at exec); bridge pods through socket_vmnet's bridged mode instead: macvz-net \"mode\": \"socket\" with \"socket\" its bridged socket (see the README): %w", i, n.Interface, errdefs.ErrFailedPrecondition))
			}
			a, err := vz.NewBridgedNetworkDeviceAttachment(found)
			if err != nil {
				return fail(err)
			}
			att = a
		case vm.NICSocket:
			a, closers, err := socketAttachment(n.Interface)
			if err != nil {
				return fail(fmt.Errorf("nic %d: %w", i, err))
			}
			files = append(files, closers...)
			att = a
		}
		dev, err := vz.NewVirtioNetworkDeviceConfiguration(att)
		if err != nil {
			return fail(err)
		}
		mac, err := vz.NewMACAddress(n.MAC)
		if err != nil {
			return fail(err)
		}
		dev.SetMACAddress(mac)
		out = append(out, dev)
	}
	return out, files, nil
}

// machine is one VM. The framework runs it in its own queue; state
// changes arrive on StateChangedNotify.
type machine struct {
	spec   *vm.Spec
	plan   *Plan
	log    *slog.Logger
	config *vz.VirtualMachineConfiguration
	files  []io.Closer // closed when the VM ends (ended)

	mu       sync.Mutex
	v        *vz.VirtualMachine
	state    vm.State
	exit     vm.Exit
	stopping bool // Stop was called: a stop is clean within the grace
	done     chan struct{}
	doneOnce sync.Once
	// agentLine watches a Linux guest's console for the agent's first
	// line (vm.ConsoleMarker).
	agentLine vm.ConsoleWatch
}

var _ vm.ConsoleMarker = (*machine)(nil)

// AgentLineAt implements vm.ConsoleMarker.
func (m *machine) AgentLineAt() time.Time { return m.agentLine.AgentLineAt() }

// Start implements vm.Machine: boot, or restore the saved state and
// resume (macOS 14+). A framework refusal because too many VMs run
// (VZErrorDomain code 6) wraps errdefs.ErrResourceExhausted.
func (m *machine) Start(ctx context.Context) error {
	m.mu.Lock()
	if m.state != vm.StateCreated {
		st := m.state
		m.mu.Unlock()
		return fmt.Errorf("vz: machine %s is %s: %w", m.spec.ID, st, errdefs.ErrFailedPrecondition)
	}
	v, err := vz.NewVirtualMachine(m.config)
	if err != nil {
		m.mu.Unlock()
		return fmt.Errorf("vz: %w", err)
	}
	m.v = v
	m.mu.Unlock()
	go m.watch(v)

	if m.plan.RestoreFrom != "" {
		if err := v.RestoreMachineStateFromURL(m.plan.RestoreFrom); err != nil {
			m.ended("restoring the saved state failed: "+err.Error(), false)
			return startError(m.plan.Boot, "restoring the saved state", err)
		}
		if err := v.Resume(); err != nil {
			m.ended("resuming the restored VM failed: "+err.Error(), false)
			return classify("resuming the restored VM", err)
		}
	} else if err := v.Start(); err != nil {
		m.ended("starting failed: "+err.Error(), false)
		return startError(m.plan.Boot, "starting the VM", err)
	}
	m.mu.Lock()
	if m.state == vm.StateCreated {
		m.state = vm.StateRunning
	}
	m.mu.Unlock()
	m.log.Info("vz VM running", "restored", m.plan.RestoreFrom != "")
	return nil
}

// classify maps framework errors to errdefs classes.
func classify(what string, err error) error {
	var ns *vz.NSError
	if errors.As(err, &ns) && ns.Domain == "VZErrorDomain" && ns.Code == int(vz.ErrorVirtualMachineLimitExceeded) {
		return fmt.Errorf("vz: %s: the host runs as many macOS VMs as Virtualization.framework allows (two): %v: %w", what, err, errdefs.ErrResourceExhausted)
	}
	if errors.Is(err, vz.ErrUnsupportedOSVersion) {
		return fmt.Errorf("vz: %s: this macOS is too old for it: %w", what, errdefs.ErrNotImplemented)
	}
	return fmt.Errorf("vz: %s: %w", what, err)
}

// watch follows the VM's state until it stops or fails.
func (m *machine) watch(v *vz.VirtualMachine) {
	for st := range v.StateChangedNotify() {
		switch st {
		case vz.VirtualMachineStateStopped:
			m.mu.Lock()
			clean, starting := m.stopping, m.state == vm.StateCreated
			m.mu.Unlock()
			if starting {
				// A start or restore that failed: Start reports it.
				continue
			}
			reason := "guest powered off"
			if clean {
				reason = "stopped"
			}
			m.ended(reason, true)
			return
		case vz.VirtualMachineStateError:
			m.ended("the framework reported an internal error", false)
			return
		}
	}
}

// ended records the end once and closes Done.
func (m *machine) ended(reason string, clean bool) {
	m.doneOnce.Do(func() {
		m.mu.Lock()
		m.state = vm.StateStopped
		m.exit = vm.Exit{At: time.Now(), Reason: reason, Clean: clean}
		m.mu.Unlock()
		for _, f := range m.files {
			f.Close()
		}
		m.log.Info("vz VM stopped", "reason", reason, "clean", clean)
		close(m.done)
	})
}

// Stop implements vm.Machine: a stop request (the shim has asked the
// agent to shut down first: a request shows a dialog in macOS guests),
// then a hard stop once grace passes.
func (m *machine) Stop(ctx context.Context, grace time.Duration) error {
	m.mu.Lock()
	v, st := m.v, m.state
	m.stopping = true
	m.mu.Unlock()
	if st == vm.StateStopped {
		return nil
	}
	if v == nil {
		m.ended("never started", true)
		return nil
	}
	if grace > 0 && v.CanRequestStop() {
		if _, err := v.RequestStop(); err != nil {
			m.log.Warn("vz stop request failed", "err", err)
		}
		select {
		case <-m.done:
			return nil
		case <-time.After(grace):
		case <-ctx.Done():
		}
	}
	if v.CanStop() {
		if err := v.Stop(); err != nil {
			return fmt.Errorf("vz: stopping VM %s: %w", m.spec.ID, err)
		}
	}
	select {
	case <-m.done:
	case <-time.After(10 * time.Second):
		m.ended("stopped hard", false)
	}
	m.mu.Lock()
	if m.exit.Reason == "stopped" && grace == 0 {
		m.exit.Reason, m.exit.Clean = "stopped hard (no grace period)", false
	}
	m.mu.Unlock()
	return nil
}

func (m *machine) Done() <-chan struct{} { return m.done }

func (m *machine) Exit() vm.Exit {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.exit
}

func (m *machine) State() vm.State {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.state
}

// Stats implements vm.Machine. The VM runs in Apple's XPC service
// (com.apple.Virtualization.VirtualMachine), not in the shim: what this
// reports is the shim process's own use, a lower bound.
func (m *machine) Stats(ctx context.Context) (vm.Stats, error) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return vm.Stats{}, err
	}
	cpu := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	// ru_maxrss is in bytes on darwin.
	return vm.Stats{CPUNanos: uint64(cpu), MemoryBytes: uint64(ru.Maxrss)}, nil
}

// DialAgent implements vm.Machine: a vsock connection to the agent,
// given up when ctx ends (the framework's connect cannot be cancelled:
// dialContext).
func (m *machine) DialAgent(ctx context.Context) (net.Conn, error) {
	m.mu.Lock()
	v, st := m.v, m.state
	m.mu.Unlock()
	if st != vm.StateRunning || v == nil {
		return nil, fmt.Errorf("vz: machine %s is %s, not running: %w", m.spec.ID, st, errdefs.ErrFailedPrecondition)
	}
	devs := v.SocketDevices()
	if len(devs) == 0 {
		return nil, fmt.Errorf("vz: machine %s has no socket device", m.spec.ID)
	}
	dev := devs[0]
	return dialContext(ctx, func() (*vz.VirtioSocketConnection, error) { return dev.Connect(AgentPort) })
}

// Save implements vm.Machine: pause, then write the state (macOS 14+,
// macOS guests only).
func (m *machine) Save(ctx context.Context, path string) error {
	if m.plan.Boot == vm.BootLinux {
		return errLinuxRestore
	}
	m.mu.Lock()
	v, st := m.v, m.state
	m.mu.Unlock()
	if st != vm.StateRunning || v == nil {
		return fmt.Errorf("vz: machine %s is %s, not running: %w", m.spec.ID, st, errdefs.ErrFailedPrecondition)
	}
	// The library's validation has no version guard of its own: below
	// macOS 14 its Objective-C side raises an exception that kills the
	// shim and its VM. Never call it there.
	if err := CanSave(hostMacOSMajor()); err != nil {
		return err
	}
	if ok, err := m.config.ValidateSaveRestoreSupport(); !ok || err != nil {
		return unsavable(err)
	}
	if err := v.Pause(); err != nil {
		return classify("pausing the VM", err)
	}
	if err := v.SaveMachineStateToPath(path); err != nil {
		// Leave the VM as it was: running.
		if rerr := v.Resume(); rerr != nil {
			m.log.Warn("resuming after a failed save", "err", rerr)
		}
		return classify("saving the VM state", err)
	}
	return nil
}

// Resume implements vm.Machine.
func (m *machine) Resume(ctx context.Context) error {
	m.mu.Lock()
	v := m.v
	m.mu.Unlock()
	if v == nil || !v.CanResume() {
		return nil
	}
	if err := v.Resume(); err != nil {
		return classify("resuming the VM", err)
	}
	return nil
}

// consolePipe returns the guest's console input (/dev/null: nothing is
// typed into it) and the write end of a pipe whose contents a goroutine
// moves into the bounded log at path, and through watch, until every
// writer is closed.
func consolePipe(path string, limit int64, watch io.Writer) (in, out *os.File, err error) {
	log, err := boundedlog.Open(path, limit)
	if err != nil {
		return nil, nil, fmt.Errorf("console log %s: %w", path, err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		log.Close()
		return nil, nil, err
	}
	in, err = os.Open(os.DevNull)
	if err != nil {
		log.Close()
		r.Close()
		w.Close()
		return nil, nil, err
	}
	go func() {
		defer log.Close()
		defer r.Close()
		io.Copy(io.MultiWriter(watch, log), r)
	}()
	return in, w, nil
}

// SetMemoryTarget implements vm.Balloon through the VM's traditional
// virtio balloon (every VM gets one: NewPlan). macOS guests carry the
// driver; a Linux guest needs virtio_balloon.
func (m *machine) SetMemoryTarget(ctx context.Context, bytes int64) error {
	if err := vm.CheckMemoryTarget(m.spec, bytes); err != nil {
		return err
	}
	m.mu.Lock()
	v := m.v
	m.mu.Unlock()
	if v == nil || v.State() != vz.VirtualMachineStateRunning {
		return fmt.Errorf("VM %s is not running: %w", m.spec.ID, errdefs.ErrFailedPrecondition)
	}
	for _, d := range v.MemoryBalloonDevices() {
		if b := vz.AsVirtioTraditionalMemoryBalloonDevice(d); b != nil {
			b.SetTargetVirtualMachineMemorySize(uint64(bytes))
			return nil
		}
	}
	return fmt.Errorf("VM %s has no memory balloon device: %w", m.spec.ID, errdefs.ErrFailedPrecondition)
}
