package netplugin

import (
	"crypto/sha256"
	"encoding/hex"
	"net"
	"strings"
)

// TapPrefix starts the name of every tap device the plugin makes.
const TapPrefix = "mvz"

// TagPrefix starts the comment of every nftables rule and the alias of
// every tap the plugin makes: "macvz <network key> <ifname> <containerID>".
const TagPrefix = "macvz "

// maxTag is the longest comment nft shows in full (NFT_USERDATA_MAXLEN is
// 256, the nft tool limits comments to 128 bytes with the NUL).
const maxTag = 127

func sum(parts ...string) string {
	h := sha256.Sum256([]byte(strings.Join(parts, "\x00")))
	return hex.EncodeToString(h[:])
}

// networkKey is a short, stable stand-in for a network name in tags.
func networkKey(network string) string { return sum("net", network)[:8] }

// TapName is the tap device of one attachment: "mvz" and 11 hex digits of
// a hash of (network, containerID, ifName) — 14 characters, under the
// kernel's 15, the same on every call so QEMU, DEL and GC can find it.
func TapName(network, containerID, ifName string) string {
	return TapPrefix + sum("tap", network, containerID, ifName)[:11]
}

// GuestMAC is the guest NIC's MAC for one attachment: a locally
// administered unicast address derived from (network, containerID,
// ifName), so a re-ADD or a daemon restart gives the same one.
func GuestMAC(network, containerID, ifName string) string {
	h, _ := hex.DecodeString(sum("mac", network, containerID, ifName)[:12])
	h[0] = (h[0] | 0x02) &^ 0x01 // locally administered, unicast
	return net.HardwareAddr(h).String()
}

// BridgeMAC is the fixed MAC given to a bridge the plugin creates, so the
// bridge's address (the guests' gateway) never changes as ports come and
// go (a bridge without one takes the lowest port MAC).
func BridgeMAC(bridge string) net.HardwareAddr {
	h, _ := hex.DecodeString(sum("bridge", bridge)[:12])
	h[0] = (h[0] | 0x02) &^ 0x01
	return h
}

// networkTagPrefix starts the tags of one network's rules and taps.
func networkTagPrefix(network string) string {
	return TagPrefix + networkKey(network) + " "
}

// Tag identifies one attachment's nftables rules and tap alias.
func Tag(network, ifName, containerID string) string {
	t := networkTagPrefix(network) + ifName + " " + containerID
	if len(t) > maxTag {
		t = networkTagPrefix(network) + ifName + " #" + sum("id", containerID)[:32]
	}
	return t
}

// Names of the host-side interface in a macOS result, where there is no
// host device: the attachment kind (vmnet-bridged names the real host
// interface instead).
const (
	HostVmnetNAT = "macvz.vmnet-nat"
	HostSocket   = "macvz.socket"
)
