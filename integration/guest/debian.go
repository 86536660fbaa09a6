package guest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
)

// KernelSeries is the Debian kernel ABI series the guest uses: bookworm's
// linux-image-6.1.0-NN-amd64 (the standard flavour; the cloud flavour has
// no 9p), whose vmlinux has CONFIG_PVH=y, or linux-image-6.1.0-NN-arm64,
// whose vmlinuz is already an uncompressed arm64 Image.
const KernelSeries = "6.1.0"

// Guest architectures, as GOARCH and Debian both name them.
const (
	ArchAMD64 = "amd64"
	ArchARM64 = "arm64"
)

// checkArch returns arch with its default (amd64), or an error for one
// the guest is not built for.
func checkArch(arch string) (string, error) {
	switch arch {
	case "":
		return ArchAMD64, nil
	case ArchAMD64, ArchARM64:
		return arch, nil
	}
	return "", fmt.Errorf("guest architecture %q: want %s or %s", arch, ArchAMD64, ArchARM64)
}

// Kernel is a Debian kernel package unpacked in a Cache.
type Kernel struct {
	// Version is the kernel release (uname -r), e.g. "6.1.0-56-amd64";
	// the package is linux-image-<Version>.
	Version string
	// Vmlinux is the uncompressed kernel QEMU boots directly: the ELF
	// vmlinux, checked for PVH (amd64), or the arm64 Image, checked for
	// its magic.
	Vmlinux string
	// ModulesDir is lib/modules/<Version> of the package, with the
	// modules.dep that `depmod -b` wrote.
	ModulesDir string
}

// Cache holds Debian packages fetched with `apt-get download` and
// unpacked with `dpkg-deb -x`, for reuse across builds. Methods lock the
// directory (flock), so concurrent test processes can share one.
//
// Layout: kernel-<version>/ (the unpacked linux-image package plus
// vmlinux, or Image for arm64), busybox-static_<debian version>/bin/busybox
// (amd64), busybox-static-arm64_<debian version>/bin/busybox, libc6_<debian
// version>/ and libc6-arm64_<debian version>/ (the node image), .lock. The
// .deb files are removed once unpacked.
//
// Arch picks the packages' architecture ("" is amd64). arm64 packages
// need `dpkg --add-architecture arm64 && apt-get update` once (`make
// deps` does it).
type Cache struct {
	Dir  string
	Arch string
	Log  io.Writer // progress messages; nil for none
}

func (c *Cache) arch() (string, error) { return checkArch(c.Arch) }

func (c *Cache) logf(format string, args ...any) {
	if c.Log != nil {
		fmt.Fprintf(c.Log, format+"\n", args...)
	}
}

// lock takes the cache's exclusive lock; call the result to release it.
func (c *Cache) lock() (func(), error) {
	if err := os.MkdirAll(c.Dir, 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(c.Dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("locking %s: %w", c.Dir, err)
	}
	return func() { f.Close() }, nil
}

var kernelPackageRE = map[string]*regexp.Regexp{
	ArchAMD64: regexp.MustCompile(`^linux-image-(` + regexp.QuoteMeta(KernelSeries) + `-([0-9]+)-amd64)$`),
	ArchARM64: regexp.MustCompile(`^linux-image-(` + regexp.QuoteMeta(KernelSeries) + `-([0-9]+)-arm64)$`),
}

// NewestKernel returns the newest kernel release of KernelSeries, standard
// amd64 flavour, that apt's package lists offer (e.g. "6.1.0-56-amd64").
func NewestKernel(ctx context.Context) (string, error) { return NewestKernelArch(ctx, ArchAMD64) }

// NewestKernelArch is NewestKernel for the arch flavour ("6.1.0-56-arm64").
func NewestKernelArch(ctx context.Context, arch string) (string, error) {
	arch, err := checkArch(arch)
	if err != nil {
		return "", err
	}
	pattern := "^linux-image-" + regexp.QuoteMeta(KernelSeries) + "-[0-9]+-" + arch + "$"
	out, err := exec.CommandContext(ctx, "apt-cache", "search", "--names-only", pattern).Output()
	if err != nil {
		return "", fmt.Errorf("apt-cache search %s: %w%s", pattern, err, stderrOf(err))
	}
	var names []string
	for _, line := range strings.Split(string(out), "\n") {
		name, _, _ := strings.Cut(line, " ")
		if kernelPackageRE[arch].MatchString(name) {
			names = append(names, name)
		}
	}
	best, err := newestKernel(arch, names)
	if err != nil {
		hint := "run `apt-get update` (`make deps` does)"
		if arch != ArchAMD64 {
			hint = "run `dpkg --add-architecture " + arch + " && apt-get update` (`make deps` does)"
		}
		return "", fmt.Errorf("%w in apt's package lists: they are missing or stale; %s", err, hint)
	}
	return best, nil
}

// newestKernel picks the highest ABI number among arch's linux-image
// package names (or kernel-<version> directory names).
func newestKernel(arch string, names []string) (string, error) {
	best, bestABI := "", -1
	for _, n := range names {
		m := kernelPackageRE[arch].FindStringSubmatch(strings.Replace(n, "kernel-", "linux-image-", 1))
		if m == nil {
			continue
		}
		if abi, _ := strconv.Atoi(m[2]); abi > bestABI {
			best, bestABI = m[1], abi
		}
	}
	if best == "" {
		return "", fmt.Errorf("no linux-image-%s-NN-%s package", KernelSeries, arch)
	}
	return best, nil
}

// Kernel returns the unpacked kernel of the given release, fetching it on
// first use. An empty version means the newest of the cache's
// architecture that apt offers (or, when apt's lists have none, the newest
// already in the cache). Fetching a new release removes the other
// releases of that architecture from the cache.
func (c *Cache) Kernel(ctx context.Context, version string) (*Kernel, error) {
	arch, err := c.arch()
	if err != nil {
		return nil, err
	}
	unlock, err := c.lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	newest := version == ""
	if newest {
		v, err := NewestKernelArch(ctx, arch)
		if err != nil {
			cached, _ := filepath.Glob(filepath.Join(c.Dir, "kernel-*-"+arch))
			for i := range cached {
				cached[i] = filepath.Base(cached[i])
			}
			v2, err2 := newestKernel(arch, cached)
			if err2 != nil {
				return nil, err
			}
			c.logf("guest: %v; using the cached kernel %s", err, v2)
			v = v2
		}
		version = v
	}
	if !kernelPackageRE[arch].MatchString("linux-image-" + version) {
		return nil, fmt.Errorf("kernel version %q: want %s-NN-%s", version, KernelSeries, arch)
	}
	k := &Kernel{
		Version:    version,
		Vmlinux:    filepath.Join(c.Dir, "kernel-"+version, kernelFile(arch)),
		ModulesDir: filepath.Join(c.Dir, "kernel-"+version, "lib", "modules", version),
	}
	if _, err := os.Stat(k.Vmlinux); err == nil {
		return k, nil
	}
	if err := c.fetchKernel(ctx, arch, version); err != nil {
		return nil, err
	}
	if newest {
		old, _ := filepath.Glob(filepath.Join(c.Dir, "kernel-*-"+arch))
		for _, d := range old {
			if filepath.Base(d) != "kernel-"+version {
				c.logf("guest: removing the older %s from the cache", filepath.Base(d))
				os.RemoveAll(d)
			}
		}
	}
	return k, nil
}

// kernelFile is the name of the kernel QEMU boots in a kernel-<version>
// directory.
func kernelFile(arch string) string {
	if arch == ArchARM64 {
		return "Image"
	}
	return "vmlinux"
}

func (c *Cache) fetchKernel(ctx context.Context, arch, version string) error {
	pkg := "linux-image-" + version
	tmp, err := os.MkdirTemp(c.Dir, ".kernel-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	deb, err := c.download(ctx, pkg, tmp)
	if err != nil {
		return err
	}
	root := filepath.Join(tmp, "root")
	c.logf("guest: unpacking %s", filepath.Base(deb))
	if err := run(ctx, "", "dpkg-deb", "-x", deb, root); err != nil {
		return err
	}
	os.Remove(deb)
	vmlinuz := filepath.Join(root, "boot", "vmlinuz-"+version)
	if _, err := os.Stat(vmlinuz); err != nil {
		return fmt.Errorf("%s: %w", pkg, err)
	}
	depmod, err := lookSbin("depmod")
	if err != nil {
		return fmt.Errorf("%w (apt-get install kmod)", err)
	}
	if err := run(ctx, "", depmod, "-b", root, version); err != nil {
		return err
	}
	if arch == ArchARM64 {
		// Debian's arm64 vmlinuz is the uncompressed Image already.
		if err := CheckARM64Image(vmlinuz); err != nil {
			return err
		}
		if err := os.Rename(vmlinuz, filepath.Join(root, kernelFile(arch))); err != nil {
			return err
		}
	} else {
		vmlinux := filepath.Join(root, kernelFile(arch))
		c.logf("guest: extracting vmlinux from %s", filepath.Base(vmlinuz))
		if err := ExtractVmlinux(ctx, vmlinuz, vmlinux); err != nil {
			return err
		}
		if err := CheckPVH(vmlinux); err != nil {
			return err
		}
	}
	dst := filepath.Join(c.Dir, "kernel-"+version)
	os.RemoveAll(dst) // a half-made one (no vmlinux)
	return os.Rename(root, dst)
}

// Busybox returns the path of busybox-static's /bin/busybox for the
// cache's architecture, fetching the package on first use.
func (c *Cache) Busybox(ctx context.Context) (string, error) {
	root, err := c.unpacked(ctx, "busybox-static", "bin/busybox")
	if err != nil {
		return "", err
	}
	return filepath.Join(root, "bin", "busybox"), nil
}

// BusyboxDynamic returns the path of Debian's busybox (the dynamically
// linked one) for the cache's architecture. Unlike busybox-static, its
// shell runs commands found in PATH, not its own applets first: a masked
// /bin/ls is what the shell's ls runs.
func (c *Cache) BusyboxDynamic(ctx context.Context) (string, error) {
	root, err := c.unpacked(ctx, "busybox", "bin/busybox")
	if err != nil {
		return "", err
	}
	return filepath.Join(root, "bin", "busybox"), nil
}

// Libc returns the root of Debian's libc6 package for the cache's
// architecture, unpacked (fetched on first use): the dynamic loader and
// the C library a dynamically linked program needs.
func (c *Cache) Libc(ctx context.Context) (string, error) {
	return c.unpacked(ctx, "libc6", "")
}

// unpacked returns the directory of the Debian package name, for the
// cache's architecture, unpacked with dpkg-deb: <name>_<debian version>
// for amd64, <name>-<arch>_<debian version> for another architecture.
// The package is fetched on first use; want, when not "", is a path the
// package must have.
func (c *Cache) unpacked(ctx context.Context, name, want string) (string, error) {
	arch, err := c.arch()
	if err != nil {
		return "", err
	}
	// amd64 keeps the directory name it always had.
	prefix, pkg := name+"_", name
	if arch != ArchAMD64 {
		prefix, pkg = name+"-"+arch+"_", name+":"+arch
	}
	unlock, err := c.lock()
	if err != nil {
		return "", err
	}
	defer unlock()
	have, _ := filepath.Glob(filepath.Join(c.Dir, prefix+"*", want))
	if len(have) > 0 {
		sort.Strings(have)
		return strings.TrimSuffix(strings.TrimSuffix(have[len(have)-1], want), "/"), nil
	}
	tmp, err := os.MkdirTemp(c.Dir, "."+name+"-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	deb, err := c.download(ctx, pkg, tmp)
	if err != nil {
		return "", err
	}
	root := filepath.Join(tmp, "root")
	if err := run(ctx, "", "dpkg-deb", "-x", deb, root); err != nil {
		return "", err
	}
	if _, err := os.Stat(filepath.Join(root, want)); err != nil {
		return "", fmt.Errorf("%s: %w", name, err)
	}
	// busybox-static_1%3a1.35.0-4+deb12u1+b1_amd64.deb -> busybox-static_1%3a1.35.0-4+deb12u1+b1
	// (busybox-static-arm64_1%3a1.35.0-4+deb12u1+b1 for arm64)
	version := strings.TrimSuffix(strings.TrimPrefix(filepath.Base(deb), name+"_"), "_"+arch+".deb")
	dst := filepath.Join(c.Dir, prefix+version)
	if err := os.Rename(root, dst); err != nil {
		return "", err
	}
	return dst, nil
}

// download runs `apt-get download pkg` in dir and returns the .deb. pkg
// may name an architecture (busybox-static:arm64).
func (c *Cache) download(ctx context.Context, pkg, dir string) (string, error) {
	c.logf("guest: apt-get download %s", pkg)
	args := []string{"download"}
	if os.Geteuid() == 0 {
		// The _apt sandbox user cannot write to our private temp dir.
		args = append(args, "-o", "APT::Sandbox::User=root")
	}
	args = append(args, pkg)
	if err := run(ctx, dir, "apt-get", args...); err != nil {
		msg := err.Error()
		if strings.Contains(msg, "Unable to locate package") || strings.Contains(msg, "no installation candidate") ||
			strings.Contains(msg, "Can't select") {
			hint := "`apt-get update`"
			if _, arch, ok := strings.Cut(pkg, ":"); ok {
				hint = "`dpkg --add-architecture " + arch + " && apt-get update`"
			}
			return "", fmt.Errorf("%w\napt's package lists do not have %s: run %s (`make deps` does)", err, pkg, hint)
		}
		return "", err
	}
	name, _, _ := strings.Cut(pkg, ":")
	debs, _ := filepath.Glob(filepath.Join(dir, name+"_*.deb"))
	if len(debs) != 1 {
		return "", fmt.Errorf("apt-get download %s left %d .deb files", pkg, len(debs))
	}
	return debs[0], nil
}

// run runs a command; its error includes the command's output.
func run(ctx context.Context, dir, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		if errors.Is(err, exec.ErrNotFound) {
			return fmt.Errorf("%s: %w", name, err)
		}
		return fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, bytes.TrimSpace(out.Bytes()))
	}
	return nil
}

func stderrOf(err error) string {
	var ee *exec.ExitError
	if errors.As(err, &ee) && len(ee.Stderr) > 0 {
		return ": " + string(bytes.TrimSpace(ee.Stderr))
	}
	return ""
}

// lookSbin finds an administration tool also when PATH lacks the sbin
// directories (a non-root shell on Debian).
func lookSbin(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, d := range []string{"/usr/sbin", "/sbin"} {
		p := filepath.Join(d, name)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: %w", name, exec.ErrNotFound)
}
