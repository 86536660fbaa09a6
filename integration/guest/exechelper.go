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
	"strings"
)

// ExecHelperCSource is the exec helper's C build (the same program as
// ExecHelperPackage without a Go runtime), relative to the module root.
const ExecHelperCSource = "cmd/macvz-exec/c/macvz-exec.c"

// ErrNoCCompiler: no C compiler here builds static binaries for the arch.
var ErrNoCCompiler = errors.New("no C compiler for the guest's architecture")

// gnuTriples are the Debian cross compilers' prefixes by architecture.
var gnuTriples = map[string]string{"amd64": "x86_64-linux-gnu", "arm64": "aarch64-linux-gnu"}

// cCompilers are the compilers tried for arch, in order: the
// architecture's own (Debian's gcc-<triple> packages install it for the
// host's architecture too), then the host's gcc and cc for the host's
// own.
func cCompilers(arch string) []string {
	var cs []string
	if t, ok := gnuTriples[arch]; ok {
		cs = append(cs, t+"-gcc")
	}
	if arch == hostArch() {
		cs = append(cs, "gcc", "cc")
	}
	return cs
}

// BuildExecHelperC compiles the C exec helper for arch into out, static
// and stripped (the kernel copies the initramfs at every boot). It
// returns ErrNoCCompiler when no compiler for arch is installed; a
// compiler that fails (no libc headers, no static libc) is an error that
// says what to install.
func BuildExecHelperC(ctx context.Context, arch, out string) error {
	arch, err := checkArch(arch)
	if err != nil {
		return err
	}
	root, err := ModuleRoot()
	if err != nil {
		return err
	}
	cc := ""
	for _, c := range cCompilers(arch) {
		if p, err := exec.LookPath(c); err == nil {
			cc = p
			break
		}
	}
	if cc == "" {
		return fmt.Errorf("%w (%s): apt-get install -y %s", ErrNoCCompiler, arch, cPackages(arch))
	}
	cmd := exec.CommandContext(ctx, cc, "-static", "-Os", "-s", "-Wall", "-Wextra", "-Werror",
		"-o", out, filepath.Join(root, ExecHelperCSource))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s for %s (needs %s): %w\n%s", filepath.Base(cc), ExecHelperCSource, arch, cPackages(arch), err, stderr.Bytes())
	}
	return nil
}

// crossPackages are Debian's cross compiler and libc packages by target
// architecture (the package names spell x86-64 with a hyphen).
var crossPackages = map[string]string{
	"amd64": "gcc-x86-64-linux-gnu libc6-dev-amd64-cross",
	"arm64": "gcc-aarch64-linux-gnu libc6-dev-arm64-cross",
}

// cPackages are the Debian packages that build the helper for arch.
func cPackages(arch string) string {
	if arch == hostArch() {
		return "gcc libc6-dev"
	}
	return crossPackages[arch]
}

// Exec helper builds, as Info.ExecHelper names them.
const (
	ExecHelperC  = "c"
	ExecHelperGo = "go"
)

// BuildExecHelper builds the guest's exec helper for arch into out and
// returns its bytes and which build it is: the C build when a compiler
// for arch is here, else the Go build (ExecHelperPackage), which does the
// same and costs each process start its runtime's start-up (60-100 ms
// under TCG). log hears why when it is the Go one.
func BuildExecHelper(ctx context.Context, arch, out string, log io.Writer) ([]byte, string, error) {
	err := BuildExecHelperC(ctx, arch, out)
	if err == nil {
		b, err := os.ReadFile(out)
		return b, ExecHelperC, err
	}
	if log != nil {
		first, _, _ := strings.Cut(err.Error(), "\n")
		fmt.Fprintf(log, "guest: the exec helper is the Go build (%v)\n", first)
	}
	b, err := buildInto(ctx, arch, ExecHelperPackage, out)
	return b, ExecHelperGo, err
}
