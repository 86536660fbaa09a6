//go:build linux

package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/containerd/ttrpc"

	api "github.com/macvz/macvz/runtime/agentapi"
)

// The built binary as a subreaper on a unix socket: the central wait4(-1)
// reaper (what init uses) hands every exit status to its waiter, also
// when many processes exit at once and orphans are reaped along the way.
func TestBinarySubreaper(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "macvz-agent")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	sock := filepath.Join(dir, "a.sock")
	cmd := exec.Command(bin, "--listen", "unix:"+sock, "--subreaper", "--etc-dir", filepath.Join(dir, "etc"), "--log-level", "debug")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
	}()
	var conn net.Conn
	var err error
	for range 500 {
		if conn, err = net.Dial("unix", sock); err == nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	tc := ttrpc.NewClient(conn)
	defer tc.Close()
	c := api.NewAgentClient(tc)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	uid, gid := uint32(os.Getuid()), uint32(os.Getgid())
	var wg sync.WaitGroup
	for i := range 30 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := &api.ProcessID{ContainerId: "r", ExecId: fmt.Sprint(i)}
			// Every third one leaves an orphan behind.
			script := fmt.Sprintf("exit %d", i)
			if i%3 == 0 {
				script = fmt.Sprintf("sleep 0.05 & exit %d", i)
			}
			if _, err := c.CreateProcess(ctx, &api.CreateProcessRequest{Id: id, Argv: []string{"/bin/sh", "-c", script}, Env: baseEnv(), Uid: uid, Gid: gid}); err != nil {
				t.Error(err)
				return
			}
			if _, err := c.StartProcess(ctx, &api.StartProcessRequest{Id: id}); err != nil {
				t.Error(err)
				return
			}
			w, err := c.WaitProcess(ctx, &api.WaitProcessRequest{Id: id})
			if err != nil {
				t.Error(err)
				return
			}
			if w.Status.ExitCode != int32(i) {
				t.Errorf("process %d: exit %v", i, w.Status)
			}
		}()
	}
	wg.Wait()
	// The orphans were reaped: no zombie children of the agent remain.
	time.Sleep(300 * time.Millisecond)
	out, _ := exec.Command("ps", "-o", "stat=", "--ppid", fmt.Sprint(cmd.Process.Pid)).Output()
	for _, s := range out {
		if s == 'Z' {
			t.Errorf("zombies left:\n%s", out)
			break
		}
	}
	if _, err := c.Shutdown(ctx, &api.ShutdownRequest{}); err == nil {
		t.Error("Shutdown worked without --system")
	}
}

func baseEnv() []string {
	return []string{"PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "HOME=/"}
}
