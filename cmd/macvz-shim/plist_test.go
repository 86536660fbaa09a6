package main

import (
	"os"
	"reflect"
	"testing"

	"howett.net/plist"
)

// The entitlements `make sign` applies, and the launchd jobs of the
// daemon and the guest agent, are what macOS will read.
func TestPlists(t *testing.T) {
	for path, want := range map[string]map[string]any{
		"macvz.entitlements":         {"com.apple.security.virtualization": true},
		"macvz-bridged.entitlements": {"com.apple.security.virtualization": true, "com.apple.vm.networking": true},
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
