package guest

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// Module is one kernel module file.
type Module struct {
	Name string   // as modprobe names it: the file name without .ko, '-' as '_'
	Path string   // relative to lib/modules/<version>, as in modules.dep
	Deps []string // its modules.dep dependencies (paths, every transitive one)
}

// ResolveModules returns the named modules and everything they depend on,
// from modulesDir's modules.dep (written by depmod), in load order: each
// module after all of its dependencies, otherwise in the order asked.
// Names built into the kernel (modules.builtin) are skipped; unknown
// names are an error.
func ResolveModules(modulesDir string, names []string) ([]Module, error) {
	deps, err := readModulesDep(filepath.Join(modulesDir, "modules.dep"))
	if err != nil {
		return nil, err
	}
	builtin := map[string]bool{}
	if b, err := os.ReadFile(filepath.Join(modulesDir, "modules.builtin")); err == nil {
		for _, l := range strings.Fields(string(b)) {
			builtin[ModuleName(l)] = true
		}
	}
	var out []Module
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(name string, from []string) error
	visit = func(name string, from []string) error {
		switch state[name] {
		case 2:
			return nil
		case 1:
			return fmt.Errorf("modules.dep: dependency cycle %s -> %s", strings.Join(from, " -> "), name)
		}
		m, ok := deps[name]
		if !ok {
			if len(from) == 0 && builtin[name] {
				state[name] = 2
				return nil
			}
			if len(from) > 0 {
				return fmt.Errorf("modules.dep: %s needs %s, which has no entry", from[len(from)-1], name)
			}
			return fmt.Errorf("kernel module %s: not in %s (nor built in)", name, filepath.Join(modulesDir, "modules.dep"))
		}
		state[name] = 1
		for _, d := range m.Deps {
			if err := visit(ModuleName(d), append(from, name)); err != nil {
				return err
			}
		}
		state[name] = 2
		out = append(out, m)
		return nil
	}
	for _, n := range names {
		if err := visit(ModuleName(n), nil); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// ModuleName is the module name of a module file name or path
// ("kernel/drivers/char/hw_random/virtio-rng.ko" -> "virtio_rng").
func ModuleName(p string) string {
	b := path.Base(p)
	if i := strings.Index(b, ".ko"); i >= 0 {
		b = b[:i]
	}
	return strings.ReplaceAll(b, "-", "_")
}

func readModulesDep(file string) (map[string]Module, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, fmt.Errorf("%w (run depmod -b)", err)
	}
	defer f.Close()
	deps := map[string]Module{}
	s := bufio.NewScanner(f)
	s.Buffer(make([]byte, 64<<10), 1<<20)
	for s.Scan() {
		p, rest, ok := strings.Cut(s.Text(), ":")
		if !ok {
			continue
		}
		if !strings.HasSuffix(p, ".ko") {
			return nil, fmt.Errorf("%s: %s is compressed; only uncompressed .ko modules are supported", file, p)
		}
		m := Module{Name: ModuleName(p), Path: p, Deps: strings.Fields(rest)}
		deps[m.Name] = m
	}
	return deps, s.Err()
}

// moduleSigMagic ends a signed kernel module. The layout (the kernel's
// include/linux/module_signature.h, written by scripts/sign-file) is:
// the module's ELF image, the PKCS#7 signature (sig_len bytes), struct
// module_signature (algo, hash, id_type, signer_len, key_id_len: one byte
// each; 3 bytes of padding; sig_len: big-endian uint32), then this magic.
const moduleSigMagic = "~Module signature appended~\n"

const (
	moduleSigInfoLen = 12
	pkeyIDPKCS7      = 2 // id_type of a PKCS#7 signature
)

// StripModuleSignature returns the module without its appended signature,
// or ko unchanged when it has none (or one in a form it does not know).
// The kernel loads an unsigned module unless signatures are enforced
// (module.sig_enforce, or lockdown under UEFI Secure Boot, neither of
// which applies to a PVH guest); it then marks itself tainted once.
// Checking a signature costs ~4 ms per module under TCG plus hashing the
// module (ext4.ko: ~50 ms).
func StripModuleSignature(ko []byte) []byte {
	n := len(ko) - len(moduleSigMagic) - moduleSigInfoLen
	if n < 0 || string(ko[len(ko)-len(moduleSigMagic):]) != moduleSigMagic {
		return ko
	}
	info := ko[n : n+moduleSigInfoLen]
	if info[2] != pkeyIDPKCS7 || info[3] != 0 || info[4] != 0 {
		return ko
	}
	sigLen := int(binary.BigEndian.Uint32(info[8:]))
	if sigLen > n {
		return ko
	}
	return ko[:n-sigLen]
}
