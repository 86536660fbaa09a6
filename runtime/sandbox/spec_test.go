package sandbox

import (
	"bytes"
	"context"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/macvz/macvz/runtime/store"
	"github.com/macvz/macvz/runtime/vm"
	"github.com/macvz/macvz/vmimage"
)

// The neutral half of the macOS backend: an unpacked Tart or agoda image
// (their descriptors as vmimage writes them) becomes a vm.Spec that the
// vz driver only has to turn into framework objects.
func TestVMSpecMacOS(t *testing.T) {
	hw, id := []byte("hardware model plist"), []byte("machine id plist")
	tart := &vmimage.Descriptor{Kind: vmimage.KindTart, OS: "darwin", Arch: "arm64", Disk: vmimage.DiskFile, NVRAM: vmimage.NVRAMFile,
		HardwareModel: hw, MachineID: id, MinCPUs: 4, MinMemoryBytes: 8 << 30}
	agoda := &vmimage.Descriptor{Kind: vmimage.KindAgoda, OS: "darwin", Arch: "arm64", Disk: vmimage.DiskFile, NVRAM: vmimage.AuxFile,
		HardwareModel: hw, MachineID: id}
	for _, tc := range []struct {
		name     string
		desc     *vmimage.Descriptor
		machine  string
		wantAux  string
		wantID   []byte
		wantCPUs int
	}{
		{"tart, fresh identifier", tart, "fresh", vmimage.NVRAMFile, nil, 4},
		{"tart, the image's identifier", tart, "image", vmimage.NVRAMFile, id, 4},
		{"agoda", agoda, "fresh", vmimage.AuxFile, nil, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig(t.TempDir())
			cfg.ImageMachineID = tc.machine == "image"
			s := &Controller{cfg: cfg}
			clone := "/var/lib/macvz/snapshots/snapshots/7"
			cpus, mem := s.vmSize(store.Resources{}, nil, tc.desc)
			spec, err := s.vmSpec("sb1", "/run/macvz/sandboxes/sb1", clone, tc.desc, cpus, mem)
			if err != nil {
				t.Fatal(err)
			}
			if spec.Boot.Kind != vm.BootMacOS || !bytes.Equal(spec.Boot.HardwareModel, hw) || !bytes.Equal(spec.Boot.MachineID, tc.wantID) {
				t.Errorf("boot: %+v", spec.Boot)
			}
			// The aux storage and the disk are the sandbox's clone's.
			if spec.Boot.AuxStorage != filepath.Join(clone, tc.wantAux) {
				t.Errorf("aux storage %s", spec.Boot.AuxStorage)
			}
			if len(spec.Disks) != 1 || spec.Disks[0].Path != filepath.Join(clone, vmimage.DiskFile) || spec.Disks[0].ReadOnly {
				t.Errorf("disks %+v", spec.Disks)
			}
			if spec.CPUs != min(tc.wantCPUs, cpus) || spec.MemoryBytes < tc.desc.MinMemoryBytes {
				t.Errorf("size: %d CPUs, %d bytes", spec.CPUs, spec.MemoryBytes)
			}
			if len(spec.Shares) != 2 || spec.Shares[0].Tag != sharedTag || spec.Shares[1].Tag != sharedROTag || !spec.Shares[1].ReadOnly {
				t.Errorf("shares %+v", spec.Shares)
			}
		})
	}
	s := &Controller{cfg: testConfig(t.TempDir())}
	bad := *tart
	bad.HardwareModel = nil
	if _, err := s.vmSpec("sb1", "/d", "/c", &bad, 4, 8<<30); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("no hardware model: %v", err)
	}
}

func TestVMSize(t *testing.T) {
	s := &Controller{cfg: Config{DefaultCPUs: 1, DefaultMemoryBytes: 512 << 20}}
	desc := &vmimage.Descriptor{MinCPUs: 1, MinMemoryBytes: 256 << 20}
	res := func(milli, mem int64) store.Resources { return store.Resources{MilliCPU: milli, MemoryBytes: mem} }
	for _, tc := range []struct {
		name   string
		pod    store.Resources
		ctrs   []store.Resources
		desc   *vmimage.Descriptor
		cpus   int
		memMiB int64
	}{
		{"defaults", res(0, 0), nil, desc, 1, 512},
		{"pod limit", res(1500, 1<<30), nil, desc, min(2, runtime.NumCPU()), 1024},
		{"containers summed", res(0, 0), []store.Resources{res(500, 300<<20), res(1000, 200<<20)}, desc, min(2, runtime.NumCPU()), 500},
		{"pod wins over containers", res(500, 0), []store.Resources{res(4000, 4<<30)}, desc, 1, 512},
		{"image minimum wins", res(0, 100<<20), nil, &vmimage.Descriptor{MinMemoryBytes: 2 << 30}, 1, 2048},
		{"clamped to the host", res(640000, 0), nil, desc, runtime.NumCPU(), 512},
		{"rounded up to MiB", res(0, 300<<20+1), nil, desc, 1, 301},
	} {
		cpus, mem := s.vmSize(tc.pod, tc.ctrs, tc.desc)
		if cpus != tc.cpus || mem != tc.memMiB<<20 {
			t.Errorf("%s: %d CPUs, %d MiB; want %d, %d", tc.name, cpus, mem>>20, tc.cpus, tc.memMiB)
		}
	}
}

func TestAgentWait(t *testing.T) {
	if got := agentWait(context.Background(), time.Minute); got != time.Minute {
		t.Errorf("no deadline: %v", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if got := agentWait(ctx, time.Minute); got > 19*time.Second || got < 18*time.Second {
		t.Errorf("20 s deadline: %v", got)
	}
	if got := agentWait(ctx, 5*time.Second); got != 5*time.Second {
		t.Errorf("boot timeout first: %v", got)
	}
	short, cancel2 := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel2()
	if got := agentWait(short, time.Minute); got != time.Second {
		t.Errorf("almost no time left: %v", got)
	}
}

func TestNodeShares(t *testing.T) {
	spec := store.SandboxSpec{NodeShares: []string{"/var/lib/kubelet/pods", "/var/log/pods"}}
	for _, tc := range []struct{ path, tag, sub string }{
		{"/var/lib/kubelet/pods", "macvz-node0", "."},
		{"/var/lib/kubelet/pods/u1/volumes/kubernetes.io~secret/tok", "macvz-node0", "u1/volumes/kubernetes.io~secret/tok"},
		{"/var/log/pods/ns_p_u1", "macvz-node1", "ns_p_u1"},
		{path: "/var/lib/kubelet/pods-other"},
		{path: "/var/lib/kubelet"},
		{path: "/etc"},
	} {
		tag, sub, ok := nodeShareOf(spec, tc.path)
		if ok != (tc.tag != "") || tag != tc.tag || sub != tc.sub {
			t.Errorf("%s: %q %q %v, want %q %q", tc.path, tag, sub, ok, tc.tag, tc.sub)
		}
	}
	if _, _, ok := nodeShareOf(store.SandboxSpec{}, "/var/lib/kubelet/pods"); ok {
		t.Error("a pod's sandbox has node shares")
	}
	m := nodeShareMounts(spec, "linux")
	if len(m) != 2 || m[1] != (shareMount{"macvz-node1", "/run/macvz/shared-node/1", false}) {
		t.Errorf("nodeShareMounts: %+v", m)
	}
}
