package imagetree

import (
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/containerd/errdefs"
)

// maxLinks is how many symlinks one resolution follows (Linux's limit).
const maxLinks = 40

// Resolve is the host path of sub (an image volume's image_sub_path) in
// the tree at root, as the guest would resolve it with root as "/": a
// symlink in the image ("etc" -> "/private/etc", "lib" -> "usr/lib") is
// followed inside the tree, never out of it, so the path a host bind
// mount opens has no symlink left. sub must be relative and name an
// existing file or directory (NotFound otherwise).
func Resolve(root, sub string) (string, error) {
	if sub == "" {
		return root, nil
	}
	if path.IsAbs(sub) || strings.Contains(sub, "\x00") {
		return "", fmt.Errorf("image sub path %q must be relative: %w", sub, errdefs.ErrInvalidArgument)
	}
	var cur []string // resolved components, each a real directory or the final entry
	todo := strings.Split(sub, "/")
	links := 0
	for len(todo) > 0 {
		c := todo[0]
		todo = todo[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			if len(cur) > 0 {
				cur = cur[:len(cur)-1]
			}
			continue
		}
		p := filepath.Join(append([]string{root}, append(cur, c)...)...)
		fi, err := os.Lstat(p)
		if os.IsNotExist(err) {
			return "", fmt.Errorf("image sub path %q: %q is not in the image: %w", sub, path.Join(append(cur, c)...), errdefs.ErrNotFound)
		}
		if err != nil {
			return "", err
		}
		if fi.Mode()&os.ModeSymlink == 0 {
			if len(todo) > 0 && !fi.IsDir() {
				return "", fmt.Errorf("image sub path %q: %q is not a directory: %w", sub, path.Join(append(cur, c)...), errdefs.ErrInvalidArgument)
			}
			cur = append(cur, c)
			continue
		}
		if links++; links > maxLinks {
			return "", fmt.Errorf("image sub path %q: too many symbolic links: %w", sub, errdefs.ErrInvalidArgument)
		}
		target, err := os.Readlink(p)
		if err != nil {
			return "", err
		}
		if path.IsAbs(target) {
			cur = nil // from the tree's root, as in the guest
		}
		todo = append(strings.Split(target, "/"), todo...)
	}
	return filepath.Join(append([]string{root}, cur...)...), nil
}
