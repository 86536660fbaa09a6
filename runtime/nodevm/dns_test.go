package nodevm

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// HostDNS skips what a VM cannot reach (systemd-resolved's stub, a
// link-local server) and falls back to the next file.
func TestHostDNS(t *testing.T) {
	dir := t.TempDir()
	stub := filepath.Join(dir, "stub")
	upstream := filepath.Join(dir, "upstream")
	os.WriteFile(stub, []byte("# stub\nnameserver 127.0.0.53\noptions edns0 trust-ad\nsearch lan\n"), 0o644)
	os.WriteFile(upstream, []byte("nameserver 192.0.2.53\nnameserver fe80::1%eth0\nnameserver 2001:db8::53\nsearch corp.example lan\noptions ndots:2\n"), 0o644)
	d := HostDNS(filepath.Join(dir, "missing"), stub, upstream)
	if d == nil || !slices.Equal(d.GetServers(), []string{"192.0.2.53", "2001:db8::53"}) ||
		!slices.Equal(d.GetSearches(), []string{"corp.example", "lan"}) || !slices.Equal(d.GetOptions(), []string{"ndots:2"}) {
		t.Errorf("HostDNS = %v", d)
	}
	if d := HostDNS(stub); d != nil {
		t.Errorf("HostDNS of the stub alone = %v, want nil", d)
	}
}
