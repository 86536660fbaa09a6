package main

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"howett.net/plist"
)

// The entitlements `make sign` applies, and the launchd jobs of the
// daemon and the guest agent, are what macOS will read.
func TestPlists(t *testing.T) {
	// The restricted networking entitlement on an ad-hoc signature gets
	// the binary killed at exec: no entitlements file here may carry it.
	files, err := filepath.Glob("*.entitlements")
	if err != nil || len(files) == 0 {
		t.Fatalf("entitlements files: %v, %v", files, err)
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var got map[string]any
		if _, err := plist.Unmarshal(b, &got); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if _, ok := got["com.apple.vm.networking"]; ok {
			t.Errorf("%s carries com.apple.vm.networking", f)
		}
	}

	for path, want := range map[string]map[string]any{
		"macvz.entitlements": {"com.apple.security.virtualization": true},
		"../macvz/launchd/io.macvz.macvz.plist": {"Label": "io.macvz.macvz", "AbandonProcessGroup": true, "KeepAlive": true, "RunAtLoad": true,
			"ProgramArguments": []any{"/usr/local/bin/macvz", "serve", "--config", "/etc/macvz/config.toml"}},
		"../../vmimage/agentinstall/io.macvz.agent.plist": {"Label": "io.macvz.agent", "KeepAlive": true, "RunAtLoad": true,
			"ProgramArguments": []any{"/usr/local/bin/macvz-agent", "--listen", "vsock:1024", "--system"}},
	} {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		var got map[string]any
		if _, err := plist.Unmarshal(b, &got); err != nil {
			t.Errorf("%s: %v", path, err)
			continue
		}
		for k, v := range want {
			if !reflect.DeepEqual(got[k], v) {
				t.Errorf("%s: %s = %#v, want %#v", path, k, got[k], v)
			}
		}
	}
}
