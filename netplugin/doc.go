// Package netplugin is macvz's CNI plugin (cmd/macvz-net is its main) and,
// in subpackages, what the daemon needs around it: cnimgr (the libcni
// side: NetworkReady, Setup/Teardown/GC of a sandbox's attachment),
// portproxy (hostPorts on macOS) and dhcpleases (a vmnet guest's IP by
// MAC).
//
// # Configuration
//
// One entry of a conflist in the daemon's network directory
// (/etc/macvz/net.d), with macvz-net first; other plugins may follow:
//
//	{
//	  "cniVersion": "1.1.0",
//	  "name": "macvz",
//	  "plugins": [{
//	    "type": "macvz-net",
//	    "mode": "bridge-tap",          // default: bridge-tap on Linux, vmnet-nat on macOS
//	    "bridge": "macvz0",            // bridge-tap; default macvz0
//	    "mtu": 1500,                   // optional
//	    "hairpinMode": true,           // bridge-tap; default true
//	    "nonMasqueradeCIDRs": ["10.244.0.0/16"], // bridge-tap: reached with the pod's own IP (a cluster's pod CIDR)
//	    "ipam": {"type": "host-local", // bridge-tap; this is the default
//	             "ranges": [[{"subnet": "10.88.0.0/16"}]],
//	             "routes": [{"dst": "0.0.0.0/0"}]},
//	    "dns": {"nameservers": ["10.88.0.1"]},  // optional, overridden by the dns capability
//	    "capabilities": {"portMappings": true, "dns": true, "mac": true}
//	  }]
//	}
//
// macOS modes: "vmnet-nat" (needs nothing, but vmnet isolates every VM
// from the others: pods reach neither each other nor the node VM),
// "socket" with "socket": "/var/run/socket_vmnet" (socket_vmnet's shared
// network, or its bridged one on a socket such as
// /var/run/socket_vmnet.bridged.en0 with "lan": true and the LAN's
// "subnet"; no entitlement), and "vmnet-bridged"
// with "interface": "en0" (needs the restricted com.apple.vm.networking
// entitlement, which only an Apple-provisioned build can carry: use
// socket_vmnet's bridged mode instead). `macvz config network` prints the
// default for the host: socket on socket_vmnet's shared socket when it is
// at one of SocketVmnetPaths, else vmnet-nat. STATUS of the socket mode
// fails (code 50, naming the path and how to start socket_vmnet) unless
// socket_vmnet accepts a connection. They take no
// "ipam": the guest gets its address by DHCP. "subnet" (IPv4 CIDR) and
// "gateway" say where that address must lie and the host's address
// there; defaults 192.168.64.0/24 (vmnet-nat), 192.168.105.0/24 (socket,
// socket_vmnet's default), none (vmnet-bridged), the gateway being the
// subnet's first address. On vmnet-nat and socket the daemon takes the
// pod IP from the host DHCP server's lease for the guest's MAC, inside
// the subnet; the guest agent's report only confirms it. On socket with
// "lan" and on vmnet-bridged the LAN's DHCP server leaves no lease on the
// host: the daemon takes the address the guest reports inside "subnet"
// (runtime/sandbox/pod_ip.go).
//
// Bad configuration fails with CNI error code 7 and a message naming the
// key; STATUS failures are code 50.
//
// # Result (bridge-tap)
//
//	interfaces[0]  the bridge (name, mac)
//	interfaces[1]  the tap, host side: "mvz" + 11 hex digits (TapName),
//	               persistent; QEMU opens it with -netdev tap,ifname=<name>
//	interfaces[2]  the guest NIC: name = CNI_IFNAME, mac = GuestMAC (stable,
//	               locally administered; give it to QEMU's virtio-net-pci),
//	               sandbox = CNI_NETNS as passed
//	ips            the IPAM addresses, interface 2, gateway = the bridge's
//	               address (first host of the range unless IPAM says)
//	routes, dns    from IPAM / the dns capability / the "dns" key
//
// On macOS interfaces[0] is the host side (HostVmnetNAT, the bridged host
// interface, or HostSocket with socketPath) and interfaces[1] the guest NIC
// with its MAC; there are no ips.
//
// CNI_NETNS: VMs have no network namespace. The daemon passes the
// sandbox's state directory; the plugin only echoes it as the guest
// interface's sandbox and never enters it.
//
// # Host state (bridge-tap) and cleanup
//
// The bridge (with a fixed MAC and the gateway address), ip_forward,
// route_localnet on the bridge (loopback hostPorts need it) and the
// table's base chains are shared and stay; the base includes the input
// rules that drop packets for 127.0.0.0/8 that did not come in on lo and
// were not DNAT'ed, so that route_localnet does not open the host's
// loopback-only services to the pods (CVE-2020-8558). Per attachment: the tap
// (its alias is the attachment's Tag), the IPAM reservation, and the
// nftables rules in table inet macvz whose comment is the Tag (layout in
// nft_linux.go). DEL removes those three and is idempotent; GC removes the
// ones of every attachment of the network not in cni.dev/valid-attachments
// (host-local's store is cleaned directly: host-local has no GC yet).
// Invocations on one host serialize on LockPath.
package netplugin
