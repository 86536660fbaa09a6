package dhcpleases

import (
	"net"
	"strings"
	"testing"
)

// FuzzParse reads arbitrary text as a leases file (any local process that
// gets a lease names itself in it), put between two good blocks: no
// panic, no error (only a read fails Parse), both good leases are there
// whatever the text in between (one bad block never hides the others),
// every lease is an Ethernet one with an IP, and Find answers from them.
func FuzzParse(f *testing.F) {
	f.Add("{\n\tname=macvz-guest\n\tip_address=192.168.64.5\n\thw_address=1,6e:4:c2:a:0:1\n\tidentifier=1,6e:4:c2:a:0:1\n\tlease=0x66f2b1c3\n}\n")
	f.Add("{\nip_address=fd00::5\nhw_address=1,6e:04:c2:0a:00:01\nlease=0X7fffffffffffffff\n}\n{\nname=x\n}\n")
	f.Add("{\nip_address=192.168.64.7\nhw_address=ff,f1:f5:dd:7f:0:2:0:0:ab:11:28:3:f9:a:6e:b2:d2:6e\n}\n")
	f.Add("{\nip_address=192.168.64.7\nhw_address=ff,1:2:3:4:5:6\n}\n")
	f.Add("{\n{\n}\n")
	f.Add("}\n")
	f.Add("{\n")
	f.Add("{\nhw_address=1,:::::\n}")
	f.Add("{\nlease=-0x1\nname==\n}")
	f.Add("name=outside\n")
	f.Add("{\r\nip_address=10.0.0.1\r\n}\r\n")
	f.Add("{\nhw_address=1,6e:4:c2:a:0:1:2\n}\n" + strings.Repeat("x", 70000))
	const (
		first = "{\nname=first\nip_address=192.168.64.2\nhw_address=1,2:0:0:0:0:1\n}\n"
		last  = "{\nname=last\nip_address=192.168.64.3\nhw_address=1,2:0:0:0:0:2\n}\n"
	)
	f.Fuzz(func(t *testing.T, text string) {
		leases, err := Parse(strings.NewReader(first + text + "\n" + last))
		if err != nil {
			if len(text) < 1<<20 {
				t.Fatalf("an error for %d bytes in memory: %v", len(text), err)
			}
			return
		}
		var sawFirst, sawLast bool
		for _, l := range leases {
			if len(l.HWAddress) != 6 || l.IP == nil {
				t.Fatalf("lease %+v: not an Ethernet lease with an IP", l)
			}
			sawFirst = sawFirst || (l.Name == "first" && l.IP.String() == "192.168.64.2" && l.HWAddress.String() == "02:00:00:00:00:01")
			sawLast = sawLast || (l.Name == "last" && l.IP.String() == "192.168.64.3" && l.HWAddress.String() == "02:00:00:00:00:02")
			ip, err := Find(leases, l.HWAddress)
			if err != nil || ip == nil {
				t.Fatalf("Find(%v) = %v, %v; a lease has it", l.HWAddress, ip, err)
			}
		}
		if !sawFirst || !sawLast {
			t.Fatalf("the good blocks around the text: first %v, last %v (%d leases)", sawFirst, sawLast, len(leases))
		}
		if _, err := Find(leases, net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}); err == nil {
			for _, l := range leases {
				if l.HWAddress.String() == "ff:ff:ff:ff:ff:ff" {
					return
				}
			}
			t.Fatal("Find answered for a MAC no lease has")
		}
	})
}

// FuzzParseHWAddress: no panic, and what parses is type 1 and 6 bytes
// that read back the same way.
func FuzzParseHWAddress(f *testing.F) {
	for _, s := range []string{"1,6e:4:c2:a:0:1", "6e:04:c2:0a:00:01", "1,", "ff,1:2:3:4:5:6", "ff,f1:f5:dd:7f:0:2:0:0:ab:11:28:3:f9:a:6e:b2:d2:6e", ":::::", "1,6e:4:c2:a:0:1:2", "+1:2:3:4:5:6", "0x1:2:3:4:5:6", "ff:ff:ff:ff:ff:ff"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		hw, err := ParseHWAddress(s)
		if err != nil {
			return
		}
		if len(hw) != 6 {
			t.Fatalf("%q: %d bytes", s, len(hw))
		}
		if !strings.HasPrefix(s, "1,") {
			t.Fatalf("%q: parsed without hardware type 1", s)
		}
		again, err := ParseHWAddress("1," + hw.String())
		if err != nil || again.String() != hw.String() {
			t.Fatalf("%q → %v does not read back (%v)", s, hw, err)
		}
	})
}
