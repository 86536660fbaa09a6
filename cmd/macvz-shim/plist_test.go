package main

import (
	"encoding/xml"
	"os"
	"strings"
	"testing"
)

// plistKeys reads an XML property list's top-level dict as key → the
// element that follows it ("true", "string:value", "array", ...).
func plistKeys(t *testing.T, path string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dec := xml.NewDecoder(strings.NewReader(string(b)))
	keys := map[string]string{}
	depth, key := 0, ""
	for {
		tok, err := dec.Token()
		if err != nil {
			break
		}
		switch el := tok.(type) {
		case xml.StartElement:
			depth++
			if depth != 3 { // plist > dict > (key | value)
				continue
			}
			if el.Name.Local == "key" {
				var k string
				if err := dec.DecodeElement(&k, &el); err != nil {
					t.Fatalf("%s: %v", path, err)
				}
				key, depth = k, depth-1
				continue
			}
			v := el.Name.Local
			if v == "string" {
				var s string
				dec.DecodeElement(&s, &el)
				v, depth = "string:"+s, depth-1
			}
			keys[key] = v
		case xml.EndElement:
			depth--
		}
	}
	if depth != 0 {
		t.Fatalf("%s: not well-formed", path)
	}
	return keys
}

// The entitlements `make sign` applies, and the launchd jobs of the
// daemon and the guest agent, are what macOS will read.
func TestPlists(t *testing.T) {
	for path, want := range map[string]map[string]string{
		"macvz.entitlements":         {"com.apple.security.virtualization": "true"},
		"macvz-bridged.entitlements": {"com.apple.security.virtualization": "true", "com.apple.vm.networking": "true"},
		"../macvz/launchd/io.macvz.macvz.plist": {"Label": "string:io.macvz.macvz", "ProgramArguments": "array",
			"AbandonProcessGroup": "true", "KeepAlive": "true", "RunAtLoad": "true"},
		"../macvz-agent/io.macvz.agent.plist": {"Label": "string:io.macvz.agent", "ProgramArguments": "array",
			"KeepAlive": "true", "RunAtLoad": "true"},
	} {
		got := plistKeys(t, path)
		for k, v := range want {
			if got[k] != v {
				t.Errorf("%s: %s = %q, want %q (all: %v)", path, k, got[k], v, got)
			}
		}
	}
}
