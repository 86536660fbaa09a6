//go:build linux

package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// The hostile mode (hostile.go) is only in agents built with -tags
// hostile: the production binary has none of it.
func TestProductionAgentHasNoHostileMode(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		tags string
		want bool
	}{{"", false}, {"hostile", true}} {
		bin := filepath.Join(dir, "agent-"+c.tags)
		cmd := exec.Command("go", "build", "-tags", c.tags, "-o", bin, ".")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build -tags %q: %v\n%s", c.tags, err, out)
		}
		b, err := os.ReadFile(bin)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range []string{"macvz.hostile", "hostile console flood"} {
			if got := bytes.Contains(b, []byte(s)); got != c.want {
				t.Errorf("agent built with tags %q contains %q: %v", c.tags, s, got)
			}
		}
	}
}
