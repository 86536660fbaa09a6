package agent

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// On-demand modules. The kernel asks for a module it lacks (a file system
// type at mount, a netlink link kind, the bridge ioctl, the open of a
// character device without a driver) by running its modprobe helper,
// /proc/sys/kernel/modprobe, as "<helper> -q -- <name>" and waiting for
// it. The guest has no kmod: the agent, as init, names itself the helper
// (onDemandModules), and when the kernel runs it so, main calls Modprobe,
// which reads the guest's module index and loads the module with its
// dependencies. That is what lets the modules only a container may use
// (overlay, the bridge, fuse) load late without a container that needs
// one in its first seconds failing: its request loads it at once.

// ModprobeRequest is the module name asked for when args (os.Args) are
// the kernel's call of its modprobe helper.
func ModprobeRequest(args []string) (string, bool) {
	if len(args) != 4 || args[1] != "-q" || args[2] != "--" || args[3] == "" {
		return "", false
	}
	return args[3], true
}

// Modprobe loads the module the kernel asked for (a module name or one of
// its aliases) after those it depends on, from the guest's module index;
// it returns the helper's exit status. It runs with no console: what it
// did goes to the kernel log (dmesg), the request quoted (a process
// chooses it: a file system type, a link kind).
func Modprobe(request string) int {
	ix, err := readModuleIndex(modulesDir())
	if err == nil {
		var name string
		if name, err = ix.load(request, moduleLoaded, loadModuleFile); err == nil {
			kmsg(fmt.Sprintf("macvz-agent: modprobe %q: loaded %s", request, name))
			return 0
		}
	}
	kmsg(fmt.Sprintf("macvz-agent: modprobe %q: %v", request, err))
	return 1
}

// moduleIndex is the guest's module index, in the kernel's modules.dep
// and modules.alias formats (build-guest writes both for the modules the
// initramfs has, beside them in /lib/modules/<release>).
type moduleIndex struct {
	dir string
	// paths are the modules' files relative to dir, by module name.
	paths map[string]string
	// deps are each module's dependencies (every transitive one, as
	// depmod writes them: the last is loaded first), by module name.
	deps    map[string][]string
	aliases []moduleAlias
}

// moduleAlias is one modules.alias line: a pattern (shell glob) and the
// module it names.
type moduleAlias struct{ pattern, module string }

// readModuleIndex reads dir's modules.dep (required) and modules.alias
// (optional).
func readModuleIndex(dir string) (*moduleIndex, error) {
	ix := &moduleIndex{dir: dir, paths: map[string]string{}, deps: map[string][]string{}}
	err := eachLine(filepath.Join(dir, "modules.dep"), func(l string) error {
		p, rest, ok := strings.Cut(l, ":")
		if !ok {
			return fmt.Errorf("modules.dep: no ':' in %q", l)
		}
		name := moduleName(p)
		ix.paths[name] = p
		for _, d := range strings.Fields(rest) {
			ix.deps[name] = append(ix.deps[name], moduleName(d))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	err = eachLine(filepath.Join(dir, "modules.alias"), func(l string) error {
		f := strings.Fields(l)
		if len(f) == 3 && f[0] == "alias" {
			ix.aliases = append(ix.aliases, moduleAlias{f[1], moduleName(f[2])})
		}
		return nil
	})
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	return ix, nil
}

// eachLine calls fn with each line of file that is neither blank nor a
// '#' comment.
func eachLine(file string, fn func(string) error) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	s.Buffer(make([]byte, 64<<10), 1<<20)
	for s.Scan() {
		if l := strings.TrimSpace(s.Text()); l != "" && !strings.HasPrefix(l, "#") {
			if err := fn(l); err != nil {
				return err
			}
		}
	}
	return s.Err()
}

// resolve is the module a request names: a module of the index by its
// name ('-' and '_' alike), else the first alias matching it exactly, else
// the first whose pattern matches it.
func (ix *moduleIndex) resolve(request string) (string, bool) {
	if name := moduleName(request); ix.paths[name] != "" {
		return name, true
	}
	for _, a := range ix.aliases {
		if a.pattern == request && ix.paths[a.module] != "" {
			return a.module, true
		}
	}
	for _, a := range ix.aliases {
		if ok, _ := path.Match(a.pattern, request); ok && ix.paths[a.module] != "" {
			return a.module, true
		}
	}
	return "", false
}

// load loads the module request names after its dependencies, skipping
// those already loaded, and returns its name.
func (ix *moduleIndex) load(request string, loaded func(string) bool, load func(string) error) (string, error) {
	name, ok := ix.resolve(request)
	if !ok {
		return "", fmt.Errorf("no module in %s is named so or has it as an alias", ix.dir)
	}
	// modules.dep's last dependency loads first, the module last.
	order := slices.Clone(ix.deps[name])
	slices.Reverse(order)
	for _, m := range append(order, name) {
		if loaded(m) {
			continue
		}
		p, ok := ix.paths[m]
		if !ok {
			return name, fmt.Errorf("%s needs %s, which the index does not have", name, m)
		}
		if err := load(filepath.Join(ix.dir, p)); err != nil {
			return name, fmt.Errorf("loading %s: %w", m, err)
		}
	}
	return name, nil
}

// depNames are the index's dependencies by module name (nil for no
// index).
func (ix *moduleIndex) depNames() map[string][]string {
	if ix == nil {
		return nil
	}
	return ix.deps
}

// moduleLoaded says whether the kernel has the module (loaded or being
// loaded).
func moduleLoaded(name string) bool {
	_, err := os.Stat("/sys/module/" + name + "/initstate")
	return err == nil
}

// devNode is one modules.devname line: the device node whose open asks
// the kernel for module.
type devNode struct {
	module, name string
	char         bool
	major, minor uint32
}

// readDevNames reads a modules.devname file ("fuse fuse c10:229"); a
// missing file is none.
func readDevNames(file string) ([]devNode, error) {
	var out []devNode
	err := eachLine(file, func(l string) error {
		f := strings.Fields(l)
		if len(f) != 3 || len(f[2]) < 4 || (f[2][0] != 'c' && f[2][0] != 'b') {
			return fmt.Errorf("modules.devname: bad line %q", l)
		}
		maj, min, ok := strings.Cut(f[2][1:], ":")
		ma, err1 := strconv.ParseUint(maj, 10, 32)
		mi, err2 := strconv.ParseUint(min, 10, 32)
		if !ok || err1 != nil || err2 != nil || path.IsAbs(f[1]) || strings.Contains("/"+f[1]+"/", "/../") {
			return fmt.Errorf("modules.devname: bad line %q", l)
		}
		out = append(out, devNode{module: moduleName(f[0]), name: f[1], char: f[2][0] == 'c', major: uint32(ma), minor: uint32(mi)})
		return nil
	})
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	return out, err
}
