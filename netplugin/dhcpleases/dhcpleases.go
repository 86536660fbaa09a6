// Package dhcpleases reads macOS's /var/db/dhcpd_leases: the leases that
// the DHCP server of vmnet (bootpd, serving Virtualization.framework's NAT
// and socket_vmnet's shared network) has handed out. macvz uses it to find
// a vmnet-nat guest's IP by its MAC when the guest agent has not reported
// one yet.
//
// The file is a sequence of brace-delimited blocks of key=value lines:
//
//	{
//		name=macvz-guest
//		ip_address=192.168.64.5
//		hw_address=1,6e:4:c2:a:0:1
//		identifier=1,6e:4:c2:a:0:1
//		lease=0x66f2b1c3
//	}
//
// hw_address is "<ARP hardware type>,<MAC>" where the MAC's octets are
// written without leading zeros ("6e:4:c2:..." for 6e:04:c2:...); lease is
// the expiry as hexadecimal Unix seconds. Unknown keys are ignored.
//
// The package is platform-neutral (it parses text) and tested on Linux.
package dhcpleases

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
)

// DefaultPath is where macOS keeps the leases.
const DefaultPath = "/var/db/dhcpd_leases"

// ErrNotFound: no lease for the MAC.
var ErrNotFound = errors.New("no DHCP lease for that MAC")

// Lease is one block.
type Lease struct {
	Name      string
	IP        net.IP
	HWAddress net.HardwareAddr // nil when the block has none
	// ID is the client identifier as written ("1,<mac>" or a string).
	ID     string
	Expiry time.Time // zero when the block has no lease key
}

// Parse reads every lease; a malformed block is an error naming its line.
func Parse(r io.Reader) ([]Lease, error) {
	var (
		out   []Lease
		cur   *Lease
		start int
	)
	s := bufio.NewScanner(r)
	s.Buffer(make([]byte, 64*1024), 1024*1024)
	for n := 1; s.Scan(); n++ {
		line := strings.TrimSpace(s.Text())
		switch {
		case line == "":
			continue
		case line == "{":
			if cur != nil {
				return nil, fmt.Errorf("dhcpd_leases line %d: block inside the block of line %d", n, start)
			}
			cur, start = &Lease{}, n
			continue
		case line == "}":
			if cur == nil {
				return nil, fmt.Errorf("dhcpd_leases line %d: } without {", n)
			}
			out = append(out, *cur)
			cur = nil
			continue
		}
		if cur == nil {
			return nil, fmt.Errorf("dhcpd_leases line %d: %q outside a block", n, line)
		}
		key, val, ok := strings.Cut(line, "=")
		if !ok {
			return nil, fmt.Errorf("dhcpd_leases line %d: %q is not key=value", n, line)
		}
		switch key {
		case "name":
			cur.Name = val
		case "ip_address":
			if cur.IP = net.ParseIP(val); cur.IP == nil {
				return nil, fmt.Errorf("dhcpd_leases line %d: bad ip_address %q", n, val)
			}
		case "hw_address":
			hw, err := ParseHWAddress(val)
			if err != nil {
				return nil, fmt.Errorf("dhcpd_leases line %d: %w", n, err)
			}
			cur.HWAddress = hw
		case "identifier":
			cur.ID = val
		case "lease":
			secs, err := strconv.ParseInt(strings.TrimPrefix(strings.ToLower(val), "0x"), 16, 64)
			if err != nil {
				return nil, fmt.Errorf("dhcpd_leases line %d: bad lease %q", n, val)
			}
			cur.Expiry = time.Unix(secs, 0)
		}
	}
	if err := s.Err(); err != nil {
		return nil, err
	}
	if cur != nil {
		return nil, fmt.Errorf("dhcpd_leases: block of line %d not closed", start)
	}
	return out, nil
}

// ParseHWAddress parses "<type>,<mac>" (or a bare MAC) with octets of one
// or two hex digits.
func ParseHWAddress(s string) (net.HardwareAddr, error) {
	if _, mac, ok := strings.Cut(s, ","); ok {
		s = mac
	}
	parts := strings.Split(s, ":")
	if len(parts) != 6 {
		return nil, fmt.Errorf("bad hardware address %q", s)
	}
	hw := make(net.HardwareAddr, 6)
	for i, p := range parts {
		v, err := strconv.ParseUint(p, 16, 8)
		if err != nil || len(p) == 0 || len(p) > 2 {
			return nil, fmt.Errorf("bad hardware address %q", s)
		}
		hw[i] = byte(v)
	}
	return hw, nil
}

// ParseFile parses the leases file at path.
func ParseFile(path string) ([]Lease, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return Parse(f)
}

// Find returns the IP of mac's newest lease (latest expiry; on a tie the
// later block) among leases.
func Find(leases []Lease, mac net.HardwareAddr) (net.IP, error) {
	var best *Lease
	for i := range leases {
		l := &leases[i]
		if l.IP == nil || l.HWAddress.String() != mac.String() {
			continue
		}
		if best == nil || !l.Expiry.Before(best.Expiry) {
			best = l
		}
	}
	if best == nil {
		return nil, fmt.Errorf("%w %s", ErrNotFound, mac)
	}
	return best.IP, nil
}

// LookupIP returns the IP leased to mac in the file at path (DefaultPath
// when empty). A missing file is ErrNotFound: vmnet has leased nothing yet.
func LookupIP(path string, mac net.HardwareAddr) (net.IP, error) {
	if path == "" {
		path = DefaultPath
	}
	leases, err := ParseFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w %s (%s does not exist)", ErrNotFound, mac, path)
	}
	if err != nil {
		return nil, err
	}
	return Find(leases, mac)
}
