package dhcpleases

import (
	"net"
	"strings"
	"testing"
)

// FuzzParse reads arbitrary text as a leases file (any local process that
// gets a lease names itself in it): no panic; what parses is leases with
// 6-byte hardware addresses, and Find answers from them.
func FuzzParse(f *testing.F) {
	f.Add("{\n\tname=macvz-guest\n\tip_address=192.168.64.5\n\thw_address=1,6e:4:c2:a:0:1\n\tidentifier=1,6e:4:c2:a:0:1\n\tlease=0x66f2b1c3\n}\n")
	f.Add("{\nip_address=fd00::5\nhw_address=6e:04:c2:0a:00:01\nlease=0X7fffffffffffffff\n}\n{\nname=x\n}\n")
	f.Add("{\n{\n}\n")
	f.Add("}\n")
	f.Add("{\nhw_address=1,:::::\n}")
	f.Add("{\nlease=-0x1\nname==\n}")
	f.Add("name=outside\n")
	f.Add("{\r\nip_address=10.0.0.1\r\n}\r\n")
	f.Add("{\nhw_address=1,6e:4:c2:a:0:1:2\n}\n" + strings.Repeat("x", 70000))
	f.Fuzz(func(t *testing.T, text string) {
		leases, err := Parse(strings.NewReader(text))
		if err != nil {
			if len(leases) != 0 {
				t.Fatalf("leases with an error: %v", err)
			}
			return
		}
		for _, l := range leases {
			if l.HWAddress != nil && len(l.HWAddress) != 6 {
				t.Fatalf("hardware address %v", l.HWAddress)
			}
			if l.HWAddress == nil || l.IP == nil {
				continue
			}
			ip, err := Find(leases, l.HWAddress)
			if err != nil || ip == nil {
				t.Fatalf("Find(%v) = %v, %v; a lease has it", l.HWAddress, ip, err)
			}
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

// FuzzParseHWAddress: no panic, and what parses is 6 bytes that read
// back the same way.
func FuzzParseHWAddress(f *testing.F) {
	for _, s := range []string{"1,6e:4:c2:a:0:1", "6e:04:c2:0a:00:01", "1,", ":::::", "1,6e:4:c2:a:0:1:2", "+1:2:3:4:5:6", "0x1:2:3:4:5:6", "ff:ff:ff:ff:ff:ff"} {
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
		again, err := ParseHWAddress(hw.String())
		if err != nil || again.String() != hw.String() {
			t.Fatalf("%q → %v does not read back (%v)", s, hw, err)
		}
	})
}
