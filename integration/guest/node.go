package guest

import (
	"bytes"
	"context"
	"debug/buildinfo"
	"debug/elf"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"strings"
	"time"

	"github.com/macvz/macvz/runtime/nodevm/memvol"
)

// The node image: the guest a node VM boots (issue 16). It is the test
// guest's kernel, modules, busybox and agent as /init, plus an unmodified
// kubelet binary and what kubelet needs from the file system. The image
// starts no kubelet itself: the host starts it through the agent, as a
// process of the running VM.

// RefNode is the node image's tag in its layout.
const RefNode = "node"

// Annotations of the node image's manifest (and of its index entry).
const (
	// AnnotationImageKind says what a macvz guest image is for: "node".
	AnnotationImageKind = "io.macvz.image.kind"
	// AnnotationKubeletVersion is the version of the kubelet the node
	// image carries (e.g. "v1.37.2").
	AnnotationKubeletVersion = "io.macvz.node.kubelet-version"
)

// ImageKindNode is AnnotationImageKind's value on the node image.
const ImageKindNode = "node"

// KubeletPath is where the node image has kubelet. /usr/bin is a link to
// /bin in the guest, so the archive holds it as /bin/kubelet.
const KubeletPath = "/usr/bin/kubelet"

// DefaultCACerts is the host's CA bundle (Debian's ca-certificates),
// which the node image carries at the same path.
const DefaultCACerts = "/etc/ssl/certs/ca-certificates.crt"

// NodeMinMemoryBytes is the node image's minimum guest memory. The
// initramfs stays in RAM (its archive while the kernel unpacks it, then
// the unpacked files, kubelet among them, for the VM's life) and kubelet
// needs about 100 MiB more once it runs; see the package README.
const NodeMinMemoryBytes = 1 << 30

// A dynamically linked kubelet (a cgo build, as the tools' one) gets its
// loader and libraries from Debian's libc6 of the guest's arch, the same
// Debian as the packages the guest is made of: it runs if it was linked
// against that glibc or an older one.

// NodeOptions make Build write the node image instead of the test
// guest's tags.
type NodeOptions struct {
	// Kubelet is the host path of the kubelet binary (of the guest's
	// arch), copied unmodified to KubeletPath. Required.
	Kubelet string
	// KubeletVersion is recorded in AnnotationKubeletVersion; empty
	// means KubeletVersion finds it.
	KubeletVersion string
	// CACerts is the host path of the CA bundle copied to
	// DefaultCACerts in the guest; empty means DefaultCACerts.
	CACerts string
}

// nodeDirs are the directories kubelet writes to or reads from (its root
// dir, the pod and container log directories, its config directory).
var nodeDirs = []string{"/var/lib/kubelet", "/var/log/pods", "/var/log/containers", "/etc/kubernetes", "/etc/kubernetes/manifests", "/var/lib", "/var/log"}

// nodeOSRelease is the node image's /etc/os-release.
func nodeOSRelease(kubeletVersion string) string {
	return `NAME="macvz node"
ID=macvz-node
PRETTY_NAME="macvz node image (kubelet ` + kubeletVersion + `)"
VERSION_ID="` + strings.TrimPrefix(kubeletVersion, "v") + `"
HOME_URL="https://github.com/macvz/macvz"
`
}

// nodeFstab is the node image's /etc/fstab.
const nodeFstab = "# kubelet's root dir: a file system its cAdvisor knows\ntmpfs /var/lib/kubelet tmpfs mode=0755,nosuid,nodev 0 0\n"

// nodeFiles are what the node image adds to the guest's initramfs; libc
// is the root of the guest arch's libc6 package, for a dynamically linked
// kubelet ("" when it is static).
func nodeFiles(o *NodeOptions, kubeletVersion, libc string, memvolBin []byte) ([]File, error) {
	kubelet, err := os.ReadFile(o.Kubelet)
	if err != nil {
		return nil, fmt.Errorf("node image: kubelet: %w", err)
	}
	caPath := o.CACerts
	if caPath == "" {
		caPath = DefaultCACerts
	}
	ca, err := os.ReadFile(caPath)
	if err != nil {
		return nil, fmt.Errorf("node image: CA certificates (apt-get install ca-certificates): %w", err)
	}
	files := []File{
		{Path: "/bin/kubelet", Mode: 0o755, Data: kubelet},
		{Path: DefaultCACerts, Data: ca},
		{Path: "/etc/os-release", Data: []byte(nodeOSRelease(kubeletVersion))},
		// Paths under /var/run mean /run, as on any Linux distribution.
		{Path: "/var/run", Mode: fs.ModeSymlink | 0o777, Data: []byte("../run")},
		// kubelet's root dir on a tmpfs, which cAdvisor knows (it knows
		// no rootfs, the initramfs); the agent mounts it as init. The
		// node VM mounts the host's pods/ over it (the paths CRI names).
		{Path: "/etc/fstab", Data: []byte(nodeFstab)},
		// kubelet's mount and umount (first on its PATH): the helper for
		// the memory-backed volumes (cmd/macvz-memvol).
		{Path: memvol.HelperDir + "/" + memvol.RestoreName, Mode: 0o755, Data: memvolBin},
		{Path: memvol.HelperDir + "/mount", Mode: fs.ModeSymlink | 0o777, Data: []byte(memvol.RestoreName)},
		{Path: memvol.HelperDir + "/umount", Mode: fs.ModeSymlink | 0o777, Data: []byte(memvol.RestoreName)},
	}
	for _, d := range nodeDirs {
		files = append(files, File{Path: d, Mode: fs.ModeDir | 0o755})
	}
	if libc != "" {
		libs, err := dynamicDeps(o.Kubelet, libc)
		if err != nil {
			return nil, err
		}
		files = append(files, libs...)
	}
	return files, nil
}

// isDynamic reports whether the ELF program at path has a dynamic
// loader (PT_INTERP): kernel's and Go's static binaries have none.
func isDynamic(path string) (bool, error) {
	f, err := elf.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return true, nil
		}
	}
	return false, nil
}

// dynamicDeps are the files a dynamically linked program needs from
// libc6 (unpacked at root): its loader at the path the program names and
// the libraries it needs (DT_NEEDED, and theirs), in the package's
// library directory, as regular files (symbolic links resolved in root).
// A library libc6 does not have is an error: such a program cannot run
// in the guest.
func dynamicDeps(program, root string) ([]File, error) {
	var files []File
	done := map[string]bool{}
	var add func(bin string, isProgram bool) error
	add = func(bin string, isProgram bool) error {
		f, err := elf.Open(bin)
		if err != nil {
			return err
		}
		defer f.Close()
		if isProgram {
			for _, p := range f.Progs {
				if p.Type != elf.PT_INTERP {
					continue
				}
				b, err := io.ReadAll(p.Open())
				if err != nil {
					return err
				}
				interp := strings.TrimRight(string(b), "\x00")
				host, err := resolveIn(root, interp)
				if err != nil {
					return fmt.Errorf("%s's loader %s is not in libc6: %w", program, interp, err)
				}
				data, err := os.ReadFile(host)
				if err != nil {
					return err
				}
				files = append(files, File{Path: interp, Mode: 0o755, Data: data})
			}
		}
		needed, err := f.ImportedLibraries()
		if err != nil {
			return err
		}
		for _, lib := range needed {
			if done[lib] {
				continue
			}
			done[lib] = true
			var host, guest string
			for _, dir := range libDirs(root) {
				if h, err := resolveIn(root, filepath.Join(dir, lib)); err == nil {
					host, guest = h, filepath.Join(dir, lib)
					break
				}
			}
			if host == "" {
				return fmt.Errorf("%s needs %s, which libc6 does not have: use a statically linked kubelet (CGO_ENABLED=0)", program, lib)
			}
			data, err := os.ReadFile(host)
			if err != nil {
				return err
			}
			files = append(files, File{Path: guest, Mode: 0o755, Data: data})
			if err := add(host, false); err != nil {
				return err
			}
		}
		return nil
	}
	if err := add(program, true); err != nil {
		return nil, err
	}
	return files, nil
}

// libDirs are the guest directories of libc6's libraries (the multiarch
// directory under /lib and /usr/lib), those the package at root has.
func libDirs(root string) []string {
	var dirs []string
	for _, pattern := range []string{"/lib/*-linux-gnu", "/usr/lib/*-linux-gnu"} {
		m, _ := filepath.Glob(filepath.Join(root, pattern))
		for _, d := range m {
			dirs = append(dirs, strings.TrimPrefix(d, root))
		}
	}
	return dirs
}

// resolveIn is the host path of the guest path p in the tree at root,
// following symbolic links as the guest would (absolute targets are
// under root).
func resolveIn(root, p string) (string, error) {
	for range 16 {
		host := filepath.Join(root, p)
		fi, err := os.Lstat(host)
		if err != nil {
			return "", err
		}
		if fi.Mode()&fs.ModeSymlink == 0 {
			if !fi.Mode().IsRegular() {
				return "", fmt.Errorf("%s is not a regular file", p)
			}
			return host, nil
		}
		target, err := os.Readlink(host)
		if err != nil {
			return "", err
		}
		if !filepath.IsAbs(target) {
			target = filepath.Join(filepath.Dir(p), target)
		}
		p = target
	}
	return "", fmt.Errorf("%s: too many symbolic links", p)
}

// KubeletVersion is the version of the kubelet binary at path, built for
// arch: what `kubelet --version` says when this host runs it, else what
// its Go build information says (see kubeletVersionFromBuildInfo).
func KubeletVersion(ctx context.Context, path, arch string) (string, error) {
	if arch == hostArch() {
		ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		var stderr bytes.Buffer
		cmd := exec.CommandContext(ctx, path, "--version")
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			return "", fmt.Errorf("%s --version: %w: %s", path, err, strings.TrimSpace(stderr.String()))
		}
		v, ok := strings.CutPrefix(strings.TrimSpace(string(out)), "Kubernetes ")
		if !ok || !strings.HasPrefix(v, "v") || strings.ContainsAny(v, " \n") {
			return "", fmt.Errorf("%s --version: %q is not \"Kubernetes vX.Y.Z\"", path, strings.TrimSpace(string(out)))
		}
		return v, nil
	}
	bi, err := buildinfo.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("kubelet %s: no Go build information (%w): give its version", path, err)
	}
	v := kubeletVersionFromBuildInfo(bi)
	if v == "" {
		return "", fmt.Errorf("kubelet %s: its Go build information names no kubernetes version: give its version", path)
	}
	return v, nil
}

// ldflagsVersion finds the version kubernetes' build stamps into
// component-base (what `kubelet --version` prints).
var ldflagsVersion = regexp.MustCompile(`k8s\.io/component-base/version\.gitVersion=([^\s'"]+)`)

// kubeletVersionFromBuildInfo is the kubernetes version of a kubelet
// binary from its Go build information: the gitVersion its -ldflags
// stamped (kubernetes' own build and ours set it), else the version of
// the k8s.io/kubernetes module it was built from (a module build; a
// build inside the kubernetes tree says "(devel)", which is no version).
// "" when neither says.
func kubeletVersionFromBuildInfo(bi *debug.BuildInfo) string {
	for _, s := range bi.Settings {
		if s.Key == "-ldflags" {
			if m := ldflagsVersion.FindStringSubmatch(s.Value); m != nil {
				return m[1]
			}
		}
	}
	mods := append([]*debug.Module{&bi.Main}, bi.Deps...)
	for _, m := range mods {
		if m.Path != "k8s.io/kubernetes" {
			continue
		}
		if m.Replace != nil {
			m = m.Replace
		}
		if strings.HasPrefix(m.Version, "v") {
			return m.Version
		}
	}
	return ""
}
