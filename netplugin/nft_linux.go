//go:build linux

package netplugin

import (
	"encoding/binary"
	"fmt"
	"net"

	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// The nftables layout: one inet table, shared by every network the plugin
// serves, whose per-attachment rules carry the attachment's Tag as their
// comment (so DEL and GC remove exactly theirs):
//
//	table inet macvz {
//	  chain hostports {                      # DNAT, one rule per mapping and pod IP
//	    meta nfproto ipv4 [ip daddr H] meta l4proto tcp th dport 8080 dnat ip to 10.88.0.2:80 comment "macvz <net> eth0 <id>"
//	  }
//	  chain prerouting { type nat hook prerouting priority dstnat; fib daddr type local jump hostports comment "macvz base" }
//	  chain output     { type nat hook output priority -100;       fib daddr type local jump hostports comment "macvz base" }
//	  chain postrouting {                    # type nat hook postrouting priority srcnat
//	    meta nfproto ipv4 ip saddr 10.88.0.2 ip daddr != 10.88.0.0/16 masquerade comment "..."           # outbound NAT
//	    meta nfproto ipv4 ip saddr 127.0.0.0/8 ip daddr 10.88.0.2 ct status dnat masquerade comment "..." # hostPort from loopback
//	    meta nfproto ipv4 ip saddr 10.88.0.0/16 ip daddr 10.88.0.2 ct status dnat masquerade comment "..." # hairpin
//	  }
//	  chain input {                          # type filter hook input priority filter: the loopback guard
//	    meta nfproto ipv4 iifname != "lo" ip daddr 127.0.0.0/8 ct status dnat accept comment "macvz base"
//	    meta nfproto ipv4 iifname != "lo" ip daddr 127.0.0.0/8 drop comment "macvz base"
//	  }
//	}
//
// Loopback hostPorts also need route_localnet=1 on the bridge (set on ADD):
// without it the kernel drops a 127.0.0.1-sourced packet routed out of a
// non-loopback device before postrouting can rewrite its source, and drops
// the pod's answer (de-masqueraded back to 127.0.0.1 as it comes in on the
// bridge) as a martian. But route_localnet also lets anything on the bridge
// reach the host's loopback-only services: a guest sending a packet for
// 127.0.0.1 to the bridge's MAC gets it delivered locally (the
// CVE-2020-8558 pattern). The input chain closes that as kube-proxy does:
// packets for 127.0.0.0/8 that did not come in on lo are dropped unless
// their connection was DNAT'ed (the answers of loopback hostPorts; a pod's
// connection to 127.0.0.1:hostPort is DNAT'ed to a pod and never reaches
// input). The accept comes first so that a packet conntrack does not
// track (ct status cannot match then) is dropped too. ADD installs the
// guard before it turns route_localnet on and, like the rest of the base,
// it stays as long as the table does (route_localnet stays too).
//
// IPv6 needs no guard: the kernel drops a packet for ::1 that comes in on
// any device but lo (ip6_rcv_core), and has no route_localnet for IPv6
// (so hostPorts are not reachable on [::1] either).
const (
	TableName       = "macvz"
	chainHostports  = "hostports"
	chainPrerouting = "prerouting"
	chainOutput     = "output"
	chainPost       = "postrouting"
	chainInput      = "input"
	baseTag         = "macvz base"
)

// taggedChains hold per-attachment rules.
var taggedChains = []string{chainHostports, chainPost}

type nft struct {
	conn  *nftables.Conn
	table *nftables.Table
}

func openNFT() (*nft, error) {
	conn, err := nftables.New()
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	return &nft{conn: conn, table: &nftables.Table{Name: TableName, Family: nftables.TableFamilyINet}}, nil
}

func (n *nft) chain(name string) *nftables.Chain {
	return &nftables.Chain{Name: name, Table: n.table}
}

// tableExists reports whether the macvz table is there.
func (n *nft) tableExists() (bool, error) {
	tables, err := n.conn.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return false, fmt.Errorf("nftables: list tables: %w", err)
	}
	for _, t := range tables {
		if t.Name == TableName {
			return true, nil
		}
	}
	return false, nil
}

// ensureBase creates the table, its chains, the jumps into hostports and
// the loopback guard, leaving what exists alone (a base chain lacking some
// of its base rules gets them all anew).
func (n *nft) ensureBase() error {
	n.conn.AddTable(n.table)
	n.conn.AddChain(n.chain(chainHostports))
	accept := nftables.ChainPolicyAccept
	n.conn.AddChain(&nftables.Chain{Name: chainPrerouting, Table: n.table, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest, Policy: &accept})
	n.conn.AddChain(&nftables.Chain{Name: chainOutput, Table: n.table, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityNATDest, Policy: &accept})
	n.conn.AddChain(&nftables.Chain{Name: chainPost, Table: n.table, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource, Policy: &accept})
	n.conn.AddChain(&nftables.Chain{Name: chainInput, Table: n.table, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter, Policy: &accept})
	if err := n.conn.Flush(); err != nil {
		return fmt.Errorf("nftables: create table %s: %w", TableName, err)
	}
	jump := append(fibLocalDst(), &expr.Verdict{Kind: expr.VerdictJump, Chain: chainHostports})
	for _, c := range []struct {
		name  string
		rules [][]expr.Any
	}{
		{chainPrerouting, [][]expr.Any{jump}},
		{chainOutput, [][]expr.Any{jump}},
		{chainInput, loopbackGuard()},
	} {
		have, err := n.baseRules(c.name)
		if err != nil {
			return err
		}
		if len(have) == len(c.rules) {
			continue
		}
		for _, r := range have {
			if err := n.conn.DelRule(r); err != nil {
				return fmt.Errorf("nftables: delete rule: %w", err)
			}
		}
		for _, e := range c.rules {
			n.conn.AddRule(&nftables.Rule{Table: n.table, Chain: n.chain(c.name), Exprs: e, UserData: comment(baseTag)})
		}
	}
	if err := n.conn.Flush(); err != nil {
		return fmt.Errorf("nftables: add the base rules of table %s: %w", TableName, err)
	}
	return nil
}

// baseRules lists a chain's rules tagged baseTag.
func (n *nft) baseRules(chain string) ([]*nftables.Rule, error) {
	rules, err := n.conn.GetRules(n.table, n.chain(chain))
	if err != nil {
		return nil, fmt.Errorf("nftables: list chain %s: %w", chain, err)
	}
	var out []*nftables.Rule
	for _, r := range rules {
		if ruleTag(r) == baseTag {
			out = append(out, r)
		}
	}
	return out, nil
}

// hasLoopbackGuard reports whether the input chain has the loopback guard
// (CHECK).
func (n *nft) hasLoopbackGuard() (bool, error) {
	chains, err := n.conn.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return false, fmt.Errorf("nftables: list chains: %w", err)
	}
	found := false
	for _, ch := range chains {
		found = found || (ch.Table.Name == TableName && ch.Name == chainInput)
	}
	if !found {
		return false, nil
	}
	have, err := n.baseRules(chainInput)
	return err == nil && len(have) == len(loopbackGuard()), err
}

// loopbackGuard is the input chain's rules: IPv4 packets for 127.0.0.0/8
// that came in on a device other than lo pass only when their connection
// was DNAT'ed (see the layout above).
func loopbackGuard() [][]expr.Any {
	loopback := &net.IPNet{IP: net.IPv4(127, 0, 0, 0).To4(), Mask: net.CIDRMask(8, 32)}
	match := cat(matchFamily(true), notFromLoopback(), matchAddr(true, false, expr.CmpOpEq, loopback))
	return [][]expr.Any{
		cat(match, ctDNAT(), []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}}),
		cat(match, []expr.Any{&expr.Verdict{Kind: expr.VerdictDrop}}),
	}
}

// notFromLoopback matches packets whose input device is not lo (iifname
// != "lo", the name padded to IFNAMSIZ as the kernel compares it).
func notFromLoopback() []expr.Any {
	name := make([]byte, unix.IFNAMSIZ)
	copy(name, "lo")
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: name},
	}
}

func comment(tag string) []byte {
	return userdata.AppendString(nil, userdata.TypeComment, tag)
}

func ruleTag(r *nftables.Rule) string {
	s, _ := userdata.GetString(r.UserData, userdata.TypeComment)
	return s
}

// tagged lists the per-attachment rules whose tag satisfies match, by chain.
func (n *nft) tagged(match func(tag string) bool) (map[string][]*nftables.Rule, error) {
	out := map[string][]*nftables.Rule{}
	ok, err := n.tableExists()
	if err != nil || !ok {
		return out, err
	}
	for _, name := range taggedChains {
		rules, err := n.conn.GetRules(n.table, n.chain(name))
		if err != nil {
			return nil, fmt.Errorf("nftables: list chain %s: %w", name, err)
		}
		for _, r := range rules {
			if t := ruleTag(r); t != "" && t != baseTag && match(t) {
				out[name] = append(out[name], r)
			}
		}
	}
	return out, nil
}

// queueDelete queues the deletion of rules (sent by the next Flush).
func (n *nft) queueDelete(rules map[string][]*nftables.Rule) (int, error) {
	count := 0
	for _, rs := range rules {
		for _, r := range rs {
			if err := n.conn.DelRule(r); err != nil {
				return count, fmt.Errorf("nftables: delete rule: %w", err)
			}
			count++
		}
	}
	return count, nil
}

// deleteTagged removes every per-attachment rule whose tag satisfies
// match; a missing table is nothing to remove.
func (n *nft) deleteTagged(match func(tag string) bool) (int, error) {
	rules, err := n.tagged(match)
	if err != nil {
		return 0, err
	}
	count, err := n.queueDelete(rules)
	if err != nil || count == 0 {
		return count, err
	}
	if err := n.conn.Flush(); err != nil {
		return 0, fmt.Errorf("nftables: delete rules: %w", err)
	}
	return count, nil
}

// attachmentRules is one attachment's rules.
type attachmentRules struct {
	hostports [][]expr.Any
	post      [][]expr.Any
}

// replace installs one attachment's rules atomically, replacing any it
// already has (a repeated ADD). The caller has made the base (ensureBase).
func (n *nft) replace(tag string, ar attachmentRules) error {
	old, err := n.tagged(func(t string) bool { return t == tag })
	if err != nil {
		return err
	}
	if _, err := n.queueDelete(old); err != nil {
		return err
	}
	for _, e := range ar.hostports {
		n.conn.AddRule(&nftables.Rule{Table: n.table, Chain: n.chain(chainHostports), Exprs: e, UserData: comment(tag)})
	}
	for _, e := range ar.post {
		n.conn.AddRule(&nftables.Rule{Table: n.table, Chain: n.chain(chainPost), Exprs: e, UserData: comment(tag)})
	}
	if err := n.conn.Flush(); err != nil {
		return fmt.Errorf("nftables: add rules for %q: %w", tag, err)
	}
	return nil
}

// planRules computes an attachment's rules from its IPs and port
// mappings; traffic to noMasq keeps the pod's address.
func planRules(ips []*current.IPConfig, ports []PortMapping, noMasq []*net.IPNet) attachmentRules {
	var ar attachmentRules
	for _, ipc := range ips {
		pod := ipc.Address.IP
		v4 := pod.To4() != nil
		if v4 {
			pod = pod.To4()
		}
		subnet := &net.IPNet{IP: pod.Mask(ipc.Address.Mask), Mask: ipc.Address.Mask}
		host := &net.IPNet{IP: pod, Mask: net.CIDRMask(len(pod)*8, len(pod)*8)}

		// Outbound NAT: the pod's traffic leaving its subnet, except to
		// the ranges reached with the pod's own address.
		out := cat(matchFamily(v4), matchAddr(v4, true, expr.CmpOpEq, host), matchAddr(v4, false, expr.CmpOpNeq, subnet))
		for _, n := range noMasq {
			if (n.IP.To4() != nil) == v4 {
				out = cat(out, matchAddr(v4, false, expr.CmpOpNeq, n))
			}
		}
		ar.post = append(ar.post, cat(out, []expr.Any{&expr.Masq{}}))
		if len(ports) == 0 {
			continue
		}
		// hostPorts reached from the host's loopback, and from the pods
		// themselves (hairpin): the pod must answer through the host.
		if v4 {
			loopback := &net.IPNet{IP: net.IPv4(127, 0, 0, 0).To4(), Mask: net.CIDRMask(8, 32)}
			ar.post = append(ar.post, cat(matchFamily(v4), matchAddr(v4, true, expr.CmpOpEq, loopback),
				matchAddr(v4, false, expr.CmpOpEq, host), ctDNAT(), []expr.Any{&expr.Masq{}}))
		}
		ar.post = append(ar.post, cat(matchFamily(v4), matchAddr(v4, true, expr.CmpOpEq, subnet),
			matchAddr(v4, false, expr.CmpOpEq, host), ctDNAT(), []expr.Any{&expr.Masq{}}))

		for _, pm := range ports {
			var hostIP net.IP
			if pm.HostIP != "" {
				hostIP = net.ParseIP(pm.HostIP)
				if (hostIP.To4() != nil) != v4 {
					continue // the mapping is for the pod's other family
				}
			}
			e := matchFamily(v4)
			if hostIP != nil && !hostIP.IsUnspecified() {
				l := 128
				if v4 {
					hostIP, l = hostIP.To4(), 32
				}
				e = cat(e, matchAddr(v4, false, expr.CmpOpEq, &net.IPNet{IP: hostIP, Mask: net.CIDRMask(l, l)}))
			}
			e = cat(e, matchL4Dport(pm.Protocol, pm.HostPort), dnat(v4, pod, pm.ContainerPort))
			ar.hostports = append(ar.hostports, e)
		}
	}
	return ar
}

func cat(parts ...[]expr.Any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func matchFamily(v4 bool) []expr.Any {
	proto := byte(unix.NFPROTO_IPV6)
	if v4 {
		proto = unix.NFPROTO_IPV4
	}
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
	}
}

// matchAddr compares the source or destination address with a prefix.
func matchAddr(v4, src bool, op expr.CmpOp, n *net.IPNet) []expr.Any {
	var off, l uint32
	switch {
	case v4 && src:
		off, l = 12, 4
	case v4:
		off, l = 16, 4
	case src:
		off, l = 8, 16
	default:
		off, l = 24, 16
	}
	ip := n.IP
	if v4 {
		ip = ip.To4()
	} else {
		ip = ip.To16()
	}
	e := []expr.Any{&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: l}}
	if ones, bits := n.Mask.Size(); ones != bits {
		e = append(e, &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: l, Mask: []byte(n.Mask), Xor: make([]byte, l)})
	}
	return append(e, &expr.Cmp{Op: op, Register: 1, Data: []byte(ip.Mask(n.Mask))})
}

func matchL4Dport(proto string, port int) []expr.Any {
	p := byte(unix.IPPROTO_TCP)
	switch proto {
	case "udp":
		p = unix.IPPROTO_UDP
	case "sctp":
		p = unix.IPPROTO_SCTP
	}
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{p}},
		// th dport: the destination port is at offset 2 of TCP, UDP and SCTP.
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(uint16(port))},
	}
}

func dnat(v4 bool, ip net.IP, port int) []expr.Any {
	fam := uint32(unix.NFPROTO_IPV6)
	if v4 {
		fam = unix.NFPROTO_IPV4
		ip = ip.To4()
	}
	return []expr.Any{
		&expr.Immediate{Register: 1, Data: []byte(ip)},
		&expr.Immediate{Register: 2, Data: binaryutil.BigEndian.PutUint16(uint16(port))},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: fam, RegAddrMin: 1, RegProtoMin: 2, Specified: true},
	}
}

// ctDNAT matches connections whose destination was rewritten (ct status
// dnat; the status word is in host byte order).
func ctDNAT() []expr.Any {
	const ipsDstNAT = 1 << 5 // IPS_DST_NAT, linux/netfilter/nf_conntrack_common.h
	mask := make([]byte, 4)
	binary.NativeEndian.PutUint32(mask, ipsDstNAT)
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATUS},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
	}
}

// fibLocalDst matches packets addressed to this host (fib daddr type local).
func fibLocalDst() []expr.Any {
	v := make([]byte, 4)
	binary.NativeEndian.PutUint32(v, unix.RTN_LOCAL)
	return []expr.Any{
		&expr.Fib{Register: 1, FlagDADDR: true, ResultADDRTYPE: true},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: v},
	}
}
