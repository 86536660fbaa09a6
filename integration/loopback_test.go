//go:build linux

package integration

import (
	"net"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/macvz/macvz/netplugin"
)

// TestPodLoopbackIsolation: a pod VM on the bridge-tap network cannot
// reach the host's loopback-only services through the bridge (the
// CVE-2020-8558 pattern: route_localnet, which loopback hostPorts need, lets
// the host take packets for 127.0.0.1 from the bridge), while a hostPort
// on 127.0.0.1 still answers from the host's loopback.
//
// Inside the guest a connection to 127.0.0.1 goes to its own loopback, so
// the test makes the guest behave as a hostile one would: its local routes
// for 127.0.0.0/8 go and 127.0.0.1 is routed via the gateway, so its
// packets for 127.0.0.1 go to the bridge's MAC.
func TestPodLoopbackIsolation(t *testing.T) {
	n := newNetTest(t)
	const gw = "10.88.0.1" // the bridge's address (bridgeTapConf)

	// A service of the "host" (the namespace where the daemon and the
	// bridge live) bound to its loopback only, like kubelet's healthz.
	secret, err := n.ns.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer secret.Close()
	var accepted atomic.Int32
	go func() {
		for {
			c, err := secret.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			c.Close()
		}
	}()
	secretAddr := secret.Addr().String()
	secretPort := strconv.Itoa(secret.Addr().(*net.TCPAddr).Port)

	podCfg := n.podConfig(t, "lo-probe", map[string]any{
		"hostname": "lo-probe", "linux": map[string]any{},
		"port_mappings": []map[string]any{{"host_ip": "127.0.0.1", "host_port": 12000, "container_port": 80}},
	})
	pod := n.runPod(t, podCfg)
	// NET_ADMIN: the test changes the guest's routes from this container.
	netAdmin := map[string]any{"security_context": map[string]any{"capabilities": map[string]any{"add_capabilities": []string{"NET_ADMIN"}}}}
	ctr := n.startCtr(t, pod, n.ctrConfig(t, "httpd", n.httpd, map[string]any{"linux": netAdmin}), podCfg)

	// The plugin's guard is in place, and the hostPort on 127.0.0.1
	// answers from the namespace's loopback.
	rules := n.ns.Exec(t, "nft", "list", "table", "inet", netplugin.TableName)
	for _, want := range []string{
		`iifname != "lo" ip daddr 127.0.0.0/8 ct status dnat accept`,
		`iifname != "lo" ip daddr 127.0.0.0/8 drop`,
	} {
		if !strings.Contains(rules, want) {
			t.Errorf("no %q in the input chain:\n%s", want, rules)
		}
	}
	waitFor(t, "the hostPort 127.0.0.1:12000 from the namespace's loopback", time.Minute, func() bool {
		out, err := n.httpGet("127.0.0.1:12000")
		return err == nil && strings.Contains(out, "hello from the macvz guest")
	})

	// Aim the guest's 127.0.0.1 at the bridge. route_localnet on its eth0
	// lets it send and take packets with 127.0.0.1 in them; accept_local
	// lets it take answers from 127.0.0.1 although lo keeps that address.
	n.execOut(t, ctr, "sh", "-c", strings.Join([]string{
		"sysctl -w net.ipv4.conf.eth0.route_localnet=1 net.ipv4.conf.eth0.accept_local=1",
		"ip route del local 127.0.0.1 dev lo table local",
		"ip route del local 127.0.0.0/8 dev lo table local",
		"ip route add 127.0.0.1/32 via " + gw + " dev eth0",
	}, " && "))
	if out := n.execOut(t, ctr, "ip", "route", "get", "127.0.0.1"); !strings.Contains(out, "via "+gw+" dev eth0") {
		t.Fatalf("the guest's route to 127.0.0.1: %q", out)
	}

	// The crafted packets do reach the host: the hostPort on 127.0.0.1
	// DNATs the guest's connection back to the pod (hairpin), which it
	// could reach at the bridge's address anyway.
	waitFor(t, "the guest to fetch 127.0.0.1:12000 through the bridge", time.Minute, func() bool {
		// timeout, not wget -T: the guest's busybox 1.35 wget crashes with -T.
		out, err := n.d.crictl("exec", "-s", ctr, "timeout", "10", "wget", "-q", "-O", "-", "http://127.0.0.1:12000/")
		return err == nil && strings.Contains(out, "hello from the macvz guest")
	})

	// But the host's own loopback services are out of reach: the test's
	// listener and the daemon's streaming server. The guest keeps trying
	// until the deadline; every connect fails and the listener sees
	// nothing.
	targets := []string{secretPort}
	if m := regexp.MustCompile(`"streaming server listening" addr=127\.0\.0\.1:(\d+)`).FindStringSubmatch(n.d.log.String()); m != nil {
		targets = append(targets, m[1])
	} else {
		t.Errorf("no streaming server address in the daemon's log")
	}
	deadline := time.Now().Add(8 * time.Second)
	tries, connected := 0, false
	for time.Now().Before(deadline) && accepted.Load() == 0 && !connected {
		for _, port := range targets {
			tries++
			out, err := n.d.crictl("exec", "-s", ctr, "sh", "-c", "nc -w 2 127.0.0.1 "+port+" </dev/null && echo CONNECTED")
			if err == nil && strings.Contains(out, "CONNECTED") {
				t.Errorf("the guest connected to the namespace's 127.0.0.1:%s through the bridge", port)
				connected = true
			}
		}
	}
	if got := accepted.Load(); got != 0 {
		t.Errorf("the loopback-only listener %s accepted %d connections from the guest", secretAddr, got)
	} else if !connected {
		t.Logf("%d connects from the guest to 127.0.0.1 ports %v through the bridge, all failed; the hostPort on 127.0.0.1 answered", tries, targets)
	}

	// The listener itself works (from the namespace's loopback).
	before := accepted.Load()
	c, err := n.ns.Dial("tcp4", secretAddr)
	if err != nil {
		t.Fatalf("the listener from the namespace's loopback: %v", err)
	}
	c.Close()
	waitFor(t, "the listener to count the namespace's connection", 10*time.Second, func() bool { return accepted.Load() == before+1 })

	n.d.mustCrictl("rmp", "-f", pod)
	n.assertNetClean(t, "after rmp")
}
