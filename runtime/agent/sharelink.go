package agent

import (
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

// shareSubpath is where req.Subpath lies (src) in the share req.Tag,
// which an earlier MountShare mounted at root.
func (a *agent) shareSubpath(req *api.MountShareRequest) (root, src string, err error) {
	a.mu.Lock()
	root, ok := a.shares[req.Tag]
	a.mu.Unlock()
	if !ok {
		return "", "", errf(codes.FailedPrecondition, "MountShare: share %q is not mounted; mount its root before a subpath", req.Tag)
	}
	if src, err = subpathIn(root, req.Subpath); err != nil {
		return "", "", errf(codes.InvalidArgument, "MountShare: %v", err)
	}
	return root, src, nil
}
