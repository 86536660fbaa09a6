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
// the expiry as hexadecimal Unix seconds. Unknown keys are ignored. Only
// type 1 (Ethernet) is a VM's NIC: a client that identifies itself with
// a DUID (Linux guests' DHCP clients do) gets "ff,<DUID>" there, and such
// a block, like any block that does not parse, is skipped, never the
// whole file.
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

// Lease is one Ethernet lease (a block whose hw_address is type 1 with a
// 6-byte MAC, and that has an ip_address).
type Lease struct {
	Name      string
	IP        net.IP
	HWAddress net.HardwareAddr // 6 bytes
	// ID is the client identifier as written ("1,<mac>" or a string).
	ID     string
	Expiry time.Time // zero when the block has no lease key
}

// ErrNotEthernet: a hw_address of another ARP hardware type than 1
// (Ethernet), such as the "ff,<DUID>" that Linux guests' DHCP clients
// make bootpd write.
var ErrNotEthernet = errors.New("not an Ethernet address")

// Parse reads every Ethernet lease. A block that is not one (another
// hardware type, no address, a malformed line) is skipped and the
// parsing goes on: one odd client must not hide the others' leases (the
// file holds every client of the host's DHCP server). The error is only
// a read error.
func Parse(r io.Reader) ([]Lease, error) {
	leases, _, err := ParseAll(r)
	return leases, err
}

// ParseAll is Parse that also says which blocks and lines it skipped
// and why, each naming its line.
func ParseAll(r io.Reader) (leases []Lease, skipped []error, err error) {
	var (
		cur   *Lease
		bad   error // why the current block is skipped
		hasHW bool
		start int
	)
	skip := func(format string, args ...any) {
		skipped = append(skipped, fmt.Errorf("dhcpd_leases "+format, args...))
	}
	end := func() {
		switch {
		case bad != nil:
			skip("block of line %d skipped: %w", start, bad)
		case !hasHW:
			skip("block of line %d skipped: no hw_address", start)
		case cur.IP == nil:
			skip("block of line %d skipped: no ip_address", start)
		default:
			leases = append(leases, *cur)
		}
		cur, bad, hasHW = nil, nil, false
	}
	s := bufio.NewScanner(r)
	s.Buffer(make([]byte, 64*1024), 1024*1024)
	for n := 1; s.Scan(); n++ {
		line := strings.TrimSpace(s.Text())
		switch {
		case line == "":
			continue
		case line == "{":
			if cur != nil {
				bad = fmt.Errorf("not closed before the block of line %d", n)
				end()
			}
			cur, start = &Lease{}, n
			continue
		case line == "}":
			if cur == nil {
				skip("line %d: } without {", n)
				continue
			}
			end()
			continue
		}
		if cur == nil {
			skip("line %d: %q outside a block", n, line)
			continue
		}
		if bad != nil {
			continue
		}
		key, val, ok := strings.Cut(line, "=")
		if !ok {
			bad = fmt.Errorf("line %d: %q is not key=value", n, line)
			continue
		}
		switch key {
		case "name":
			cur.Name = val
		case "ip_address":
			if cur.IP = net.ParseIP(val); cur.IP == nil {
				bad = fmt.Errorf("line %d: bad ip_address %q", n, val)
			}
		case "hw_address":
			hw, err := ParseHWAddress(val)
			if err != nil {
				bad = fmt.Errorf("line %d: %w", n, err)
				continue
			}
			cur.HWAddress, hasHW = hw, true
		case "identifier":
			cur.ID = val
		case "lease":
			secs, err := strconv.ParseInt(strings.TrimPrefix(strings.ToLower(val), "0x"), 16, 64)
			if err != nil {
				bad = fmt.Errorf("line %d: bad lease %q", n, val)
				continue
			}
			cur.Expiry = time.Unix(secs, 0)
		}
	}
	if err := s.Err(); err != nil {
		return nil, skipped, err
	}
	if cur != nil {
		bad = errors.New("not closed")
		end()
	}
	return leases, skipped, nil
}

// ParseHWAddress parses "<type>,<mac>": type 1 (Ethernet) and a 6-byte
// MAC whose octets have one or two hex digits. Another type is
// ErrNotEthernet.
func ParseHWAddress(s string) (net.HardwareAddr, error) {
	typ, mac, ok := strings.Cut(s, ",")
	if !ok {
		return nil, fmt.Errorf("hardware address %q has no type", s)
	}
	if typ != "1" {
		return nil, fmt.Errorf("hardware address %q (type %q): %w", s, typ, ErrNotEthernet)
	}
	parts := strings.Split(mac, ":")
	if len(parts) != 6 {
		return nil, fmt.Errorf("bad hardware address %q: %w", s, ErrNotEthernet)
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
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w %s (%s does not exist)", ErrNotFound, mac, path)
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	leases, skipped, err := ParseAll(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	ip, err := Find(leases, mac)
	if err != nil && len(skipped) > 0 {
		// Say what was passed over: a block of this MAC may be among them.
		return nil, fmt.Errorf("%w (%s: %d blocks or lines skipped, the first: %v)", err, path, len(skipped), skipped[0])
	}
	return ip, err
}
