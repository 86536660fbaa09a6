package agent

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/containerd/ttrpc"

	api "github.com/macvz/macvz/runtime/agentapi"
)

func TestMain(m *testing.M) {
	// The agent re-executes itself (/proc/self/exe, here the test
	// binary) as the exec helper of processes with capability, user or
	// mount namespace settings.
	if len(os.Args) > 1 && os.Args[1] == ExecHelperArg {
		RunExecHelper(os.Args[2:])
	}
	os.Exit(m.Run())
}

// New and Register, as cmd/macvz-agent uses them (not init, not owning
// the machine): the service answers with the version it was given.
func TestNewRegister(t *testing.T) {
	dir := t.TempDir()
	a, err := New(Options{EtcDir: filepath.Join(dir, "etc"), Version: "1.2.3"})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ttrpc.NewServer()
	if err != nil {
		t.Fatal(err)
	}
	a.Register(srv)
	l, err := net.Listen("unix", filepath.Join(dir, "a.sock"))
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(context.Background(), l)
	t.Cleanup(func() { srv.Close() })
	conn, err := net.Dial("unix", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	tc := ttrpc.NewClient(conn)
	defer tc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c := api.NewAgentClient(tc)
	r, err := c.Ping(ctx, &api.PingRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if r.AgentVersion != "1.2.3" {
		t.Fatalf("version %q, want 1.2.3", r.AgentVersion)
	}
	// Not init and not owning the machine: no shutdown.
	if _, err := c.Shutdown(ctx, &api.ShutdownRequest{}); err == nil {
		t.Fatal("Shutdown succeeded on an agent that does not own the machine")
	}
}
