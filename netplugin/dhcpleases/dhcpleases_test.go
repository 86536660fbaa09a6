package dhcpleases

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// sample is in the format bootpd writes (tabs, unpadded octets, hex
// expiry); the second guest has two leases, the newer one last but one.
const sample = `{
	name=macvz-a
	ip_address=192.168.64.2
	hw_address=1,2:a:b:c:d:e
	identifier=1,2:a:b:c:d:e
	lease=0x66f2b1c3
}
{
	name=macvz-b
	ip_address=192.168.64.3
	hw_address=1,6e:4:c2:a:0:1
	identifier=1,6e:4:c2:a:0:1
	lease=0x66f2b2ff
}
{
	name=macvz-b
	ip_address=192.168.64.9
	hw_address=1,6e:4:c2:a:0:1
	identifier=1,6e:4:c2:a:0:1
	lease=0x66f2c000
}
{
	name=other
	ip_address=192.168.64.4
	hw_address=ff,1:2:3:4:5:6
	identifier=some-client
	lease=0x66f2b000
	unknown_key=ignored
}
`

func TestParse(t *testing.T) {
	leases, err := Parse(strings.NewReader(sample))
	if err != nil {
		t.Fatal(err)
	}
	if len(leases) != 3 {
		t.Fatalf("%d leases; want 3 (the hw_address=ff block is no Ethernet lease)", len(leases))
	}
	l := leases[1]
	if l.Name != "macvz-b" || !l.IP.Equal(net.ParseIP("192.168.64.3")) ||
		l.HWAddress.String() != "6e:04:c2:0a:00:01" || l.ID != "1,6e:4:c2:a:0:1" ||
		!l.Expiry.Equal(time.Unix(0x66f2b2ff, 0)) {
		t.Fatalf("lease %+v", l)
	}
	if _, err := Find(leases, net.HardwareAddr{1, 2, 3, 4, 5, 6}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("the type-ff block's address was taken for a MAC: %v", err)
	}

	mac, _ := net.ParseMAC("6e:04:c2:0a:00:01")
	ip, err := Find(leases, mac)
	if err != nil || ip.String() != "192.168.64.9" {
		t.Fatalf("Find = %v, %v; want the newest lease 192.168.64.9", ip, err)
	}
	mac, _ = net.ParseMAC("02:0a:0b:0c:0d:0e")
	if ip, err := Find(leases, mac); err != nil || ip.String() != "192.168.64.2" {
		t.Fatalf("Find = %v, %v", ip, err)
	}
	mac, _ = net.ParseMAC("02:00:00:00:00:99")
	if _, err := Find(leases, mac); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown MAC: %v", err)
	}
}

// linuxGuest is a block as bootpd writes it for a Linux guest whose DHCP
// client sends a DUID-based client identifier (systemd-networkd's
// default): hardware type ff and a DUID longer than a MAC.
const linuxGuest = `{
	name=debian
	ip_address=192.168.64.7
	hw_address=ff,f1:f5:dd:7f:0:2:0:0:ab:11:28:3:f9:a:6e:b2:d2:6e
	identifier=ff,f1:f5:dd:7f:0:2:0:0:ab:11:28:3:f9:a:6e:b2:d2:6e
	lease=0x66f2b400
}
`

// TestParseSkipsBadBlocks: a block that is not an Ethernet lease, or does
// not parse, is skipped with its line named; the blocks around it are
// still read.
func TestParseSkipsBadBlocks(t *testing.T) {
	good := func(last byte, ip string) string {
		return fmt.Sprintf("{\n\tname=g\n\tip_address=%s\n\thw_address=1,2:0:0:0:0:%x\n\tlease=0x66f2b1c3\n}\n", ip, last)
	}
	for name, bad := range map[string]string{
		"DUID":               linuxGuest,
		"type ff, 6 octets":  "{\nip_address=192.168.64.4\nhw_address=ff,1:2:3:4:5:6\n}\n",
		"no type":            "{\nip_address=192.168.64.4\nhw_address=1:2:3:4:5:6\n}\n",
		"not closed":         "{\nname=x\n",
		"} without {":        "}\n",
		"outside a block":    "name=x\n",
		"bad IP":             "{\nip_address=300.1.1.1\nhw_address=1,2:3:4:5:6:7\n}\n",
		"short MAC":          "{\nip_address=192.168.64.4\nhw_address=1,2:3:4\n}\n",
		"bad octet":          "{\nip_address=192.168.64.4\nhw_address=1,2:3:4:5:6:zz\n}\n",
		"long octet":         "{\nip_address=192.168.64.4\nhw_address=1,2:3:4:5:6:123\n}\n",
		"bad expiry":         "{\nip_address=192.168.64.4\nhw_address=1,2:3:4:5:6:7\nlease=0xnothex\n}\n",
		"not key=value":      "{\njust text\n}\n",
		"no hw_address":      "{\nip_address=192.168.64.4\n}\n",
		"no ip_address":      "{\nhw_address=1,2:3:4:5:6:7\n}\n",
		"bad line, then key": "{\njust text\nip_address=192.168.64.4\nhw_address=1,2:3:4:5:6:7\n}\n",
	} {
		text := good(1, "192.168.64.2") + bad + good(2, "192.168.64.3")
		leases, skipped, err := ParseAll(strings.NewReader(text))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if len(skipped) == 0 || !strings.Contains(skipped[0].Error(), "line") {
			t.Errorf("%s: skipped %v; want the bad part named with its line", name, skipped)
		}
		if len(leases) != 2 || leases[0].IP.String() != "192.168.64.2" || leases[1].IP.String() != "192.168.64.3" {
			t.Errorf("%s: leases %+v; want the two good ones", name, leases)
		}
		if l, err := Parse(strings.NewReader(text)); err != nil || len(l) != 2 {
			t.Errorf("%s: Parse = %d leases, %v", name, len(l), err)
		}
	}
	_, skipped, _ := ParseAll(strings.NewReader(linuxGuest))
	if len(skipped) != 1 || !errors.Is(skipped[0], ErrNotEthernet) {
		t.Errorf("DUID block: skipped %v; want one ErrNotEthernet", skipped)
	}
	if l, s, err := ParseAll(strings.NewReader("")); err != nil || len(l) != 0 || len(s) != 0 {
		t.Errorf("empty file: %v, %v, %v", l, s, err)
	}
	// A line longer than the scanner takes is a read error, not a skip.
	if _, err := Parse(strings.NewReader("{\nname=" + strings.Repeat("x", 2<<20) + "\n}\n")); err == nil {
		t.Error("a 2 MiB line: no error")
	}
}

func TestLookupIP(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "dhcpd_leases")
	mac, _ := net.ParseMAC("02:0a:0b:0c:0d:0e")
	if _, err := LookupIP(path, mac); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing file: %v", err)
	}
	if err := os.WriteFile(path, []byte(sample), 0o644); err != nil {
		t.Fatal(err)
	}
	ip, err := LookupIP(path, mac)
	if err != nil || ip.String() != "192.168.64.2" {
		t.Fatalf("LookupIP = %v, %v", ip, err)
	}
	// A Linux guest's DUID block among them changes nothing, and a MAC
	// without a lease says what was skipped.
	if err := os.WriteFile(path, []byte(linuxGuest+sample), 0o644); err != nil {
		t.Fatal(err)
	}
	if ip, err := LookupIP(path, mac); err != nil || ip.String() != "192.168.64.2" {
		t.Fatalf("with a DUID block: LookupIP = %v, %v", ip, err)
	}
	mac, _ = net.ParseMAC("02:00:00:00:00:99")
	if _, err := LookupIP(path, mac); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "2 blocks or lines skipped") {
		t.Fatalf("unknown MAC: %v", err)
	}
}
