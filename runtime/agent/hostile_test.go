//go:build hostile && linux

package agent

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/containerd/ttrpc"

	api "github.com/macvz/macvz/runtime/agentapi"
)

// go test -tags hostile ./runtime/agent: the attacks on the agent
// channel, against the host's side of the link and ttrpc.

func TestParseHostile(t *testing.T) {
	c := parseHostile("console=ttyS0 quiet macvz.hostile=written,ip macvz.hostile.flood=7 macvz.hostile.junk=bad")
	if !c.attacks["written"] || !c.attacks["ip"] || c.attacks["noise"] || c.floodMiB != 7 || c.junk != 5000 {
		t.Fatalf("%+v", c)
	}
}

// hostileLink serves an agent on a LinkListener whose port has the
// attacks, and returns a host ttrpc client that dialled it.
func hostileLink(t *testing.T, attacks ...string) (api.AgentClient, *ttrpc.Client, error) {
	hostileMu.Lock()
	hostileCfg = &hostileConfig{attacks: map[string]bool{}, junk: 2000}
	for _, a := range attacks {
		hostileCfg.attacks[a] = true
	}
	hostileMu.Unlock()
	guestEnd, hostEnd := net.Pipe()
	opened := false
	open := func() (io.ReadWriteCloser, error) {
		if opened {
			return nil, errors.New("gone")
		}
		opened = true
		return guestEnd, nil
	}
	l := api.NewLinkListener("test", hostilePort(slog.Default(), open), 5*time.Millisecond)
	srv, err := ttrpc.NewServer()
	if err != nil {
		t.Fatal(err)
	}
	api.RegisterAgentService(srv, newAgent(config{etcDir: t.TempDir()}))
	go srv.Serve(context.Background(), l)
	t.Cleanup(func() {
		srv.Close()
		l.Close()
		hostEnd.Close()
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := api.LinkClient(ctx, hostEnd, 10*time.Millisecond)
	if err != nil {
		return nil, nil, err
	}
	tc := ttrpc.NewClient(c)
	t.Cleanup(func() { tc.Close() })
	return api.NewAgentClient(tc), tc, nil
}

func TestHostileNoiseIsSkipped(t *testing.T) {
	a, _, err := hostileLink(t, "noise")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for range 3 {
		if _, err := a.Ping(ctx, &api.PingRequest{}); err != nil {
			t.Fatalf("ping through the noise: %v", err)
		}
	}
}

func TestHostileGarbageBreaksTheSession(t *testing.T) {
	a, _, err := hostileLink(t, "garbage")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if _, err := a.Ping(ctx, &api.PingRequest{}); err == nil {
		t.Fatal("ping worked on a session the agent broke")
	} else {
		t.Logf("ping: %v", err)
	}
}

func TestHostileWrittenAndInterfaces(t *testing.T) {
	hostileMu.Lock()
	hostileCfg = &hostileConfig{attacks: map[string]bool{"written": true, "ip": true}}
	hostileMu.Unlock()
	if w := hostileWritten(5, 5); w != 1005 {
		t.Errorf("first count %d", w)
	}
	if w := hostileWritten(5, 5); w != ^uint32(0) {
		t.Errorf("second count %d", w)
	}
	ifs := hostileInterfaces([]*api.NetInterface{{Name: "lo"}, {Name: "eth0", Mac: "52:54:00:12:34:56", Addresses: []string{"10.88.0.3/16"}}})
	if len(ifs) != 3 || ifs[1].Addresses[0] != "127.0.0.1/8" || ifs[2].Name != "eth9" {
		t.Errorf("%v", ifs)
	}
}
