package dhcpleases

import (
	"errors"
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
	if len(leases) != 4 {
		t.Fatalf("%d leases", len(leases))
	}
	l := leases[1]
	if l.Name != "macvz-b" || !l.IP.Equal(net.ParseIP("192.168.64.3")) ||
		l.HWAddress.String() != "6e:04:c2:0a:00:01" || l.ID != "1,6e:4:c2:a:0:1" ||
		!l.Expiry.Equal(time.Unix(0x66f2b2ff, 0)) {
		t.Fatalf("lease %+v", l)
	}
	if leases[3].HWAddress.String() != "01:02:03:04:05:06" || leases[3].ID != "some-client" {
		t.Fatalf("lease %+v", leases[3])
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

func TestParseErrors(t *testing.T) {
	for _, bad := range []string{
		"{\nname=x\n",                        // not closed
		"}\n",                                // no open
		"name=x\n",                           // outside a block
		"{\n{\n}\n}\n",                       // nested
		"{\nip_address=300.1.1.1\n}\n",       // bad IP
		"{\nhw_address=1,2:3:4\n}\n",         // short MAC
		"{\nhw_address=1,2:3:4:5:6:zz\n}\n",  // bad octet
		"{\nhw_address=1,2:3:4:5:6:123\n}\n", // long octet
		"{\nlease=0xnothex\n}\n",             // bad expiry
		"{\njust text\n}\n",                  // not key=value
	} {
		if _, err := Parse(strings.NewReader(bad)); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
	if l, err := Parse(strings.NewReader("")); err != nil || len(l) != 0 {
		t.Errorf("empty file: %v, %v", l, err)
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
}
