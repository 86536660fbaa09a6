package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/macvz/macvz/vmimage/agentinstall"
)

// The macOS guest agent as the Go toolchain builds it (GOOS=darwin
// GOARCH=arm64, CGO_ENABLED=0) is what install-agent accepts, and the
// command refuses, with a message that says why, to run off macOS.
func TestMacOSAgentInstallable(t *testing.T) {
	agent := filepath.Join(t.TempDir(), "macvz-agent")
	cmd := exec.Command("go", "build", "-o", agent, "github.com/macvz/macvz/cmd/macvz-agent")
	cmd.Env = append(os.Environ(), "GOOS=darwin", "GOARCH=arm64", "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building the darwin agent: %v\n%s", err, out)
	}
	if err := agentinstall.CheckAgent(agent); err != nil {
		t.Fatalf("install-agent refuses the darwin agent: %v", err)
	}
	linuxAgent := filepath.Join(t.TempDir(), "linux-agent")
	cmd = exec.Command("go", "build", "-o", linuxAgent, "github.com/macvz/macvz/cmd/macvz-agent")
	cmd.Env = append(os.Environ(), "GOOS=linux", "GOARCH=amd64", "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building the linux agent: %v\n%s", err, out)
	}
	if err := agentinstall.CheckAgent(linuxAgent); err == nil {
		t.Error("install-agent accepts a Linux agent")
	}

	vmDir := t.TempDir()
	os.WriteFile(filepath.Join(vmDir, "disk.img"), make([]byte, 4096), 0o644)
	out, err := exec.Command(macvzBin, "image", "install-agent", "--agent", agent, vmDir).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "run it on the Mac") {
		t.Errorf("install-agent off macOS: %v: %s", err, out)
	}
}
