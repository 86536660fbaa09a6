package cri

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/errdefs"

	"github.com/macvz/macvz/runtime/adminapi"
	"github.com/macvz/macvz/runtime/sandbox"
	"github.com/macvz/macvz/runtime/shim"
	"github.com/macvz/macvz/runtime/store"
)

// The admin API's VMs (`macvz vm`): every sandbox, the node VM's
// included (the operator sees everything), read from the records after
// a refresh, as ListPodSandbox reads them.

// maxSpecFile bounds the spec.json InspectVM reads (the daemon writes
// it; a VM spec is a few KiB).
const maxSpecFile = 1 << 20

func (a *adminServer) ListVMs(ctx context.Context, _ *adminapi.ListVMsRequest) (*adminapi.ListVMsResponse, error) {
	sbs, err := a.s.st.Sandboxes(nil)
	if err != nil {
		return nil, err
	}
	names := a.imageNames(ctx)
	out := &adminapi.ListVMsResponse{}
	for _, sb := range sbs {
		out.Vms = append(out.Vms, a.vmOf(a.s.ctl.Refresh(ctx, sb), names))
	}
	sort.Slice(out.Vms, func(i, j int) bool { return out.Vms[i].CreatedUnixNano < out.Vms[j].CreatedUnixNano })
	return out, nil
}

func (a *adminServer) InspectVM(ctx context.Context, r *adminapi.InspectVMRequest) (*adminapi.InspectVMResponse, error) {
	sb, err := a.findSandbox(r.GetPod())
	if err != nil {
		return nil, err
	}
	sb = a.s.ctl.Refresh(ctx, sb)
	resp := &adminapi.InspectVMResponse{
		Vm:         a.vmOf(sb, a.imageNames(ctx)),
		Dir:        sb.Dir,
		ConsoleLog: filepath.Join(sb.Dir, sandbox.ConsoleLogFile),
	}
	if resp.Spec, err = readSmallFile(filepath.Join(sb.Dir, shim.SpecFile), maxSpecFile); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("sandbox %s: the VM spec: %w", sb.ID, err)
	}
	if b, err := readSmallFile(filepath.Join(sb.Dir, shim.PIDFile), 64); err == nil {
		if pid, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64); err == nil && pid > 0 && processAlive(int(pid)) {
			resp.ShimPid = pid
		}
	}
	socks, _ := filepath.Glob(filepath.Join(sb.Dir, "*.sock"))
	for _, p := range socks {
		if fi, err := os.Lstat(p); err == nil && fi.Mode()&fs.ModeSocket != 0 {
			resp.Sockets = append(resp.Sockets, p)
		}
	}
	return resp, nil
}

// Console sends the VM's console log (its rotated part first), then,
// with follow, what the VM writes next, across rotations, until the
// caller goes or the sandbox is removed.
func (a *adminServer) Console(r *adminapi.ConsoleRequest, stream adminapi.Admin_ConsoleServer) error {
	sb, err := a.findSandbox(r.GetPod())
	if err != nil {
		return err
	}
	path := filepath.Join(sb.Dir, sandbox.ConsoleLogFile)
	send := func(b []byte) error { return stream.Send(&adminapi.ConsoleChunk{Data: b}) }
	return followConsole(stream.Context(), path, r.GetFollow(), consolePoll, send, func() bool {
		_, err := a.s.st.Sandbox(sb.ID)
		return errdefs.IsNotFound(err)
	})
}

// consolePoll is how often a followed console is checked for more.
var consolePoll = 250 * time.Millisecond

// followConsole sends path.1 (the rotated part, when there is one) and
// path, then with follow polls path for growth, and for a rotation (a
// new file at path: the rest of the old one is sent first), until ctx
// ends or gone says the sandbox is gone. Files are opened without
// following a symbolic link.
func followConsole(ctx context.Context, path string, follow bool, poll time.Duration, send func([]byte) error, gone func() bool) error {
	buf := make([]byte, 64<<10)
	drain := func(f *os.File) error {
		for {
			n, err := f.Read(buf)
			if n > 0 {
				if err := send(append([]byte(nil), buf[:n]...)); err != nil {
					return err
				}
			}
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return err
			}
		}
	}
	if old, err := openLog(path + ".1"); err == nil {
		err = drain(old)
		old.Close()
		if err != nil {
			return err
		}
	}
	f, err := openLog(path)
	for errors.Is(err, fs.ErrNotExist) {
		if !follow {
			return fmt.Errorf("no console log at %s: the VM has not booted yet: %w", path, errdefs.ErrNotFound)
		}
		if gone() {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(poll):
		}
		f, err = openLog(path)
	}
	if err != nil {
		return err
	}
	defer func() { f.Close() }()
	for {
		if err := drain(f); err != nil {
			return err
		}
		if !follow {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(poll):
		}
		// Rotated: the rest of the old file, then the new one.
		if fi, err := os.Lstat(path); err == nil {
			if cur, err := f.Stat(); err == nil && !os.SameFile(fi, cur) {
				if err := drain(f); err != nil {
					return err
				}
				if nf, err := openLog(path); err == nil {
					f.Close()
					f = nf
				}
			}
		} else if gone() {
			return nil
		}
	}
}

// openLog opens a regular file for reading, refusing a symbolic link.
func openLog(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if errors.Is(err, syscall.ELOOP) {
		return nil, fmt.Errorf("%s is a symbolic link; refusing to follow it: %w", path, errdefs.ErrFailedPrecondition)
	}
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("%s is not a regular file: %w", path, errdefs.ErrFailedPrecondition)
	}
	return f, nil
}

// readSmallFile reads a regular file of at most max bytes.
func readSmallFile(path string, max int64) ([]byte, error) {
	f, err := openLog(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, max)
	}
	return b, nil
}

// processAlive reports whether a process with pid exists.
func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// findSandbox resolves an operator's name for a pod: a sandbox ID or a
// unique prefix of one, else a pod name, "name" or "namespace/name".
// Several sandboxes of one pod name (earlier attempts) resolve to the
// one that is ready, when exactly one is.
func (a *adminServer) findSandbox(pod string) (store.Sandbox, error) {
	if pod == "" {
		return store.Sandbox{}, fmt.Errorf("no pod given: name a sandbox ID (or a unique prefix), or a pod as [namespace/]name: %w", errdefs.ErrInvalidArgument)
	}
	if !strings.Contains(pod, "/") {
		sb, err := a.s.st.Sandbox(pod)
		if err == nil || !errdefs.IsNotFound(err) {
			return sb, err
		}
	}
	ns, name, hasNS := strings.Cut(pod, "/")
	if !hasNS {
		ns, name = "", pod
	}
	all, err := a.s.st.Sandboxes(func(sb *store.Sandbox) bool {
		sp := store.SpecOf(*sb)
		return sp.Name == name && (!hasNS || sp.Namespace == ns)
	})
	if err != nil {
		return store.Sandbox{}, err
	}
	if len(all) > 1 {
		var ready []store.Sandbox
		for _, sb := range all {
			if sb.State == store.SandboxReady {
				ready = append(ready, sb)
			}
		}
		if len(ready) == 1 {
			all = ready
		}
	}
	switch len(all) {
	case 0:
		return store.Sandbox{}, fmt.Errorf("no sandbox has the ID (or ID prefix) or pod name %q: %w", pod, errdefs.ErrNotFound)
	case 1:
		return all[0], nil
	}
	var ids []string
	for _, sb := range all {
		sp := store.SpecOf(sb)
		ids = append(ids, fmt.Sprintf("%s (%s/%s, %s)", sb.ID[:min(13, len(sb.ID))], sp.Namespace, sp.Name, sb.State))
	}
	return store.Sandbox{}, fmt.Errorf("%q names %d sandboxes: %s; give a sandbox ID or namespace/name: %w", pod, len(all), strings.Join(ids, ", "), errdefs.ErrInvalidArgument)
}

// vmOf is a sandbox's VM as the admin API shows it.
func (a *adminServer) vmOf(sb store.Sandbox, imageNames map[string]string) *adminapi.VM {
	sp := store.SpecOf(sb)
	v := &adminapi.VM{
		SandboxId: sb.ID, PodName: sp.Name, PodNamespace: sp.Namespace, Backend: a.s.cfg.Backend,
		ImageId: sb.VMImage, Ips: sb.IPs, Slot: int32(sb.VMSlot), Os: sb.VMOS, Node: sb.Node,
		CreatedUnixNano: unixNano(sb.CreatedAt), Reason: sb.Reason,
	}
	if sb.VMImage != "" {
		v.Image = imageNames[sb.VMImage]
		if v.Image == "" {
			v.Image = sb.VMImage
		}
	}
	switch {
	case sb.State == store.SandboxReady && sb.VMStarted:
		v.State = "running"
		v.Cpus, v.MemoryBytes, v.MemoryTargetBytes = int32(sb.VMCPUs), sb.VMMemoryBytes, sb.VMMemoryTarget
		v.Boot = sb.VMBoot
		v.BootedUnixNano = unixNano(sb.VMBootedAt)
	case sb.State == store.SandboxReady:
		v.State = "created"
		v.Slot = 0
	default:
		v.State = "stopped"
		v.Slot = 0
	}
	return v
}

// imageNames maps image IDs to a name of each (a tag before a digest).
func (a *adminServer) imageNames(ctx context.Context) map[string]string {
	out := map[string]string{}
	recs, err := a.s.images.List(ctx)
	if err != nil {
		return out
	}
	for _, r := range recs {
		id := r.ID()
		if cur, ok := out[id]; !ok || (strings.Contains(cur, "@") && !strings.Contains(r.Name, "@")) || (strings.Contains(cur, "@") == strings.Contains(r.Name, "@") && r.Name < cur) {
			out[id] = r.Name
		}
	}
	return out
}
