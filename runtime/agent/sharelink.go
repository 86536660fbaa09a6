package agent

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"google.golang.org/grpc/codes"

	api "github.com/macvz/macvz/runtime/agentapi"
)

// subpathIn is root/sub when sub is relative and stays inside root.
func subpathIn(root, sub string) (string, error) {
	clean := filepath.Clean(sub)
	if filepath.IsAbs(clean) || clean == ".." || strings.HasPrefix(clean, "../") {
		return "", fmt.Errorf("subpath %q must be relative and inside the share", sub)
	}
	return filepath.Join(root, clean), nil
}

// clearLinkTarget makes room for a symlink at target: nothing there, an
// old symlink, or an empty directory (a mount point made earlier) go;
// anything else is refused, never replaced.
func clearLinkTarget(target string) error {
	fi, err := os.Lstat(target)
	switch {
	case os.IsNotExist(err):
		return nil
	case err != nil:
		return err
	case fi.Mode()&os.ModeSymlink != 0:
		return os.Remove(target)
	case fi.IsDir():
		if err := os.Remove(target); err != nil {
			return fmt.Errorf("%s exists and is not an empty directory", target)
		}
		return nil
	default:
		return fmt.Errorf("%s exists and is not a directory or symlink", target)
	}
}

// share is a share's root in the guest: where MountShare mounted it or,
// while lazy holds its request, will mount it when a subpath of it is
// first asked for. A share is replaced, never changed, once recorded.
type share struct {
	target string
	lazy   *api.MountShareRequest
}

// rootShare mounts req's root (mountShareRoot) or, lazy, records it for
// its first use. The caller has checked req.
func (a *agent) rootShare(ctx context.Context, req *api.MountShareRequest) (*api.MountShareResponse, error) {
	if req.Lazy {
		a.mu.Lock()
		a.shares[req.Tag] = &share{target: req.Target, lazy: req}
		a.mu.Unlock()
		a.cfg.log.Info("share recorded: mounted when a container first binds a path of it", "tag", req.Tag, "fstype", req.Fstype, "target", req.Target, "ro", req.ReadOnly)
		return &api.MountShareResponse{}, nil
	}
	if err := a.mountRoot(ctx, req); err != nil {
		return nil, err
	}
	a.mu.Lock()
	a.shares[req.Tag] = &share{target: req.Target}
	a.mu.Unlock()
	a.cfg.log.Info("share mounted", "tag", req.Tag, "fstype", req.Fstype, "target", req.Target, "ro", req.ReadOnly)
	return &api.MountShareResponse{}, nil
}

// mountRoot mounts a share's root (mountShareRoot, unless a test says
// otherwise).
func (a *agent) mountRoot(ctx context.Context, req *api.MountShareRequest) error {
	if a.cfg.mountRoot != nil {
		return a.cfg.mountRoot(ctx, req)
	}
	return a.mountShareRoot(ctx, req)
}

// shareSubpath is where req.Subpath lies (src) in the share req.Tag,
// mounted at root: a lazy share is mounted now.
func (a *agent) shareSubpath(ctx context.Context, req *api.MountShareRequest) (root, src string, err error) {
	a.mu.Lock()
	sh, ok := a.shares[req.Tag]
	a.mu.Unlock()
	if !ok {
		return "", "", errf(codes.FailedPrecondition, "MountShare: share %q is not mounted; mount its root before a subpath", req.Tag)
	}
	if src, err = subpathIn(sh.target, req.Subpath); err != nil {
		return "", "", errf(codes.InvalidArgument, "MountShare: %v", err)
	}
	if sh.lazy != nil {
		if err := a.mountLazy(ctx, req.Tag); err != nil {
			return "", "", err
		}
	}
	return sh.target, src, nil
}

// mountLazy mounts a lazy share's root, once: binds asking at the same
// time wait for the first. A failed mount leaves it lazy (the next bind
// tries again); a share unmounted meanwhile is not mounted.
func (a *agent) mountLazy(ctx context.Context, tag string) error {
	a.shareMu.Lock()
	defer a.shareMu.Unlock()
	a.mu.Lock()
	sh, ok := a.shares[tag]
	a.mu.Unlock()
	switch {
	case !ok:
		return errf(codes.FailedPrecondition, "MountShare: share %q was unmounted", tag)
	case sh.lazy == nil:
		return nil
	}
	if err := a.mountRoot(ctx, sh.lazy); err != nil {
		return err
	}
	a.mu.Lock()
	a.shares[tag] = &share{target: sh.target}
	a.mu.Unlock()
	a.cfg.log.Info("share mounted on its first use", "tag", tag, "fstype", sh.lazy.Fstype, "target", sh.target, "ro", sh.lazy.ReadOnly)
	return nil
}
