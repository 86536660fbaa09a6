//go:build linux

// Package nettest holds what the network tests share: building the
// plugins, throw-away network namespaces, sockets opened inside them, and
// plugin directories whose plugins run inside a namespace. Nothing here
// touches the host's own interfaces: every link, address and rule is made
// in a namespace the test creates and deletes.
package nettest

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/macvz/macvz/integration/testutil"
)

// Packages the tests build into their plugin directory.
var Packages = []string{
	"github.com/macvz/macvz/cmd/macvz-net",
	"github.com/containernetworking/plugins/plugins/ipam/host-local",
	"github.com/containernetworking/plugins/plugins/meta/portmap",
	"github.com/containernetworking/plugins/plugins/main/bridge", // the benchmark's baseline
}

// Main is a TestMain body: it builds the plugins into a temporary
// directory, stores its path in *binDir, runs the tests and removes it.
func Main(m *testing.M, binDir *string) int {
	dir, err := os.MkdirTemp("", "macvz-net-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	if err := Build(dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	*binDir = dir
	return m.Run()
}

// Build builds Packages into dir (one binary each, named after the last
// path element).
func Build(dir string) error {
	goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(goBin); err != nil {
		goBin = "go"
	}
	cmd := exec.Command(goBin, append([]string{"build", "-o", dir + string(os.PathSeparator)}, Packages...)...)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build: %v\n%s", err, out)
	}
	return nil
}

// Require skips (outside CI) or fails (CI=true) a test that cannot make
// namespaces, taps and nftables rules.
func Require(t testing.TB) {
	t.Helper()
	testutil.RequireRoot(t)
	testutil.RequireTool(t, "ip", "iproute2")
	testutil.RequireTool(t, "nft", "nftables")
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		testutil.Unavailable(t, "needs /dev/net/tun (modprobe tun)")
	}
}

// Run runs a command and returns its combined output; failure fails t.
func Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// NetNS is a named network namespace (ip netns) owned by a test.
type NetNS struct {
	Name string
	Path string
}

// NewNetNS makes a namespace named macvz-test-<tag>-<random> with its
// loopback up, deleted when t ends.
func NewNetNS(t testing.TB, tag string) *NetNS {
	t.Helper()
	b := make([]byte, 4)
	rand.Read(b)
	n := &NetNS{Name: "macvz-test-" + tag + "-" + hex.EncodeToString(b)}
	n.Path = "/var/run/netns/" + n.Name
	Run(t, "ip", "netns", "add", n.Name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", n.Name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", n.Name, err, out)
		}
	})
	n.IP(t, "link", "set", "lo", "up")
	return n
}

// NSName is Name (for interfaces that need a method).
func (n *NetNS) NSName() string { return n.Name }

// IP runs `ip -n <ns> args...`.
func (n *NetNS) IP(t testing.TB, args ...string) string {
	t.Helper()
	return Run(t, "ip", append([]string{"-n", n.Name}, args...)...)
}

// Exec runs a command inside the namespace.
func (n *NetNS) Exec(t testing.TB, name string, args ...string) string {
	t.Helper()
	return Run(t, "ip", append([]string{"netns", "exec", n.Name, name}, args...)...)
}

// Do runs f with the calling thread inside the namespace (sockets made in
// f belong to it).
func (n *NetNS) Do(f func() error) error {
	return ns.WithNetNSPath(n.Path, func(ns.NetNS) error { return f() })
}

// Dial connects from inside the namespace.
func (n *NetNS) Dial(network, addr string) (c net.Conn, err error) {
	derr := n.Do(func() error {
		d := net.Dialer{Timeout: 5 * time.Second}
		c, err = d.Dial(network, addr)
		return nil
	})
	if derr != nil {
		return nil, derr
	}
	return c, err
}

// Listen listens inside the namespace.
func (n *NetNS) Listen(network, addr string) (l net.Listener, err error) {
	if derr := n.Do(func() error { l, err = net.Listen(network, addr); return nil }); derr != nil {
		return nil, derr
	}
	return l, err
}

// ListenPacket listens for datagrams inside the namespace.
func (n *NetNS) ListenPacket(network, addr string) (pc net.PacketConn, err error) {
	if derr := n.Do(func() error { pc, err = net.ListenPacket(network, addr); return nil }); derr != nil {
		return nil, derr
	}
	return pc, err
}

// PluginDir makes a plugin directory for libcni: the plugins named in
// inNS run inside n (a script that execs `ip netns exec`), every other
// file of realDir is linked as is. CNI_PATH given to a wrapped plugin
// still lists this directory, so its delegates (host-local) are found and
// run inside n too, as its children.
func PluginDir(t testing.TB, n *NetNS, realDir string, inNS ...string) string {
	t.Helper()
	dir := t.TempDir()
	entries, err := os.ReadDir(realDir)
	if err != nil {
		t.Fatal(err)
	}
	wrap := map[string]bool{}
	for _, name := range inNS {
		wrap[name] = true
	}
	for _, e := range entries {
		src := filepath.Join(realDir, e.Name())
		dst := filepath.Join(dir, e.Name())
		if wrap[e.Name()] {
			script := fmt.Sprintf("#!/bin/sh\nexec ip netns exec %s %s \"$@\"\n", n.Name, src)
			err = os.WriteFile(dst, []byte(script), 0o755)
		} else {
			err = os.Symlink(src, dst)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// WriteScript writes an executable shell script (a fake plugin).
func WriteScript(t testing.TB, path, body string) {
	t.Helper()
	if err := os.WriteFile(path, []byte("#!/bin/sh\n"+body), 0o755); err != nil {
		t.Fatal(err)
	}
}

// Links lists the namespace's links as `ip -d link show` prints them.
func (n *NetNS) Links(t testing.TB) string { return n.IP(t, "-d", "link", "show") }

// Ruleset is `nft list ruleset` inside the namespace.
func (n *NetNS) Ruleset(t testing.TB) string { return n.Exec(t, "nft", "list", "ruleset") }

// Contains reports whether out has every one of subs, for messages.
func Contains(out string, subs ...string) bool {
	for _, s := range subs {
		if !strings.Contains(out, s) {
			return false
		}
	}
	return true
}

// Serve answers every TCP connection on l with "hello <remote addr>\n"
// until l is closed.
func Serve(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			fmt.Fprintf(c, "hello %s\n", c.RemoteAddr())
		}()
	}
}

// ServeUDP answers every datagram with "hello <remote addr>\n".
func ServeUDP(pc net.PacketConn) {
	buf := make([]byte, 2048)
	for {
		_, from, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		pc.WriteTo([]byte(fmt.Sprintf("hello %s\n", from)), from)
	}
}

// Hello dials addr from n and returns the server's greeting line.
func Hello(n *NetNS, network, addr string) (string, error) {
	c, err := n.Dial(network, addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if strings.HasPrefix(network, "udp") {
		if _, err := c.Write([]byte("hi")); err != nil {
			return "", err
		}
	}
	buf := make([]byte, 256)
	var out bytes.Buffer
	for !bytes.Contains(out.Bytes(), []byte("\n")) {
		k, err := c.Read(buf)
		out.Write(buf[:k])
		if err != nil {
			break
		}
	}
	if out.Len() == 0 {
		return "", fmt.Errorf("%s %s: no answer", network, addr)
	}
	return strings.TrimSpace(out.String()), nil
}
