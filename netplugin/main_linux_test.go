//go:build linux

package netplugin_test

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/macvz/macvz/integration/nettest"
)

// binDir holds the built plugins (macvz-net, host-local, portmap).
var binDir string

func TestMain(m *testing.M) { os.Exit(nettest.Main(m, &binDir)) }

// exec runs the plugin binary the way a runtime does and returns stdout
// and the CNI error (from stdout) when it failed.
func execPlugin(t *testing.T, env map[string]string, stdin string) ([]byte, *types.Error) {
	t.Helper()
	cmd := exec.Command(filepath.Join(binDir, "macvz-net"))
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	cmd.Stdin = strings.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err == nil {
		return stdout.Bytes(), nil
	}
	var e types.Error
	if jerr := json.Unmarshal(stdout.Bytes(), &e); jerr != nil {
		t.Fatalf("plugin failed (%v) without a CNI error on stdout: %q, stderr %q", err, stdout.String(), stderr.String())
	}
	return stdout.Bytes(), &e
}

func cniEnv(cmd string) map[string]string {
	return map[string]string{
		"CNI_COMMAND":     cmd,
		"CNI_CONTAINERID": "abc",
		"CNI_NETNS":       "/var/lib/macvz/sandboxes/abc",
		"CNI_IFNAME":      "eth0",
		"CNI_PATH":        binDir,
	}
}

func TestVersion(t *testing.T) {
	out, cerr := execPlugin(t, map[string]string{"CNI_COMMAND": "VERSION"}, "")
	if cerr != nil {
		t.Fatal(cerr)
	}
	var v struct {
		CNIVersion        string   `json:"cniVersion"`
		SupportedVersions []string `json:"supportedVersions"`
	}
	if err := json.Unmarshal(out, &v); err != nil {
		t.Fatalf("%s: %v", out, err)
	}
	for _, want := range []string{"0.4.0", "1.0.0", "1.1.0"} {
		if !slices.Contains(v.SupportedVersions, want) {
			t.Errorf("VERSION %s lacks %s", out, want)
		}
	}
	if v.CNIVersion != "1.1.0" {
		t.Errorf("VERSION cniVersion %q", v.CNIVersion)
	}

	// No CNI_COMMAND: the about line on stderr, exit 0.
	cmd := exec.Command(filepath.Join(binDir, "macvz-net"))
	cmd.Env = []string{}
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "macvz-net") || !strings.Contains(string(out), "1.1.0") {
		t.Fatalf("about: %v %q", err, out)
	}
}

// The protocol errors come before the plugin touches anything, so they
// need no root.
func TestProtocolErrors(t *testing.T) {
	good := `"cniVersion":"1.1.0","name":"n","type":"macvz-net"`
	for _, tc := range []struct {
		name, cmd, conf string
		env             map[string]string
		code            uint
		msg             string
	}{
		{"unknown mode", "ADD", `{` + good + `,"mode":"slirp"}`, nil, 7, `unknown mode "slirp"`},
		{"bad subnet", "ADD", `{` + good + `,"mode":"bridge-tap","ipam":{"type":"host-local","ranges":[[{"subnet":"10.88.0.0/40"}]]}}`, nil, 7, "subnet"},
		{"missing ipam type", "ADD", `{` + good + `,"mode":"bridge-tap","ipam":{"subnet":"10.88.0.0/16"}}`, nil, 7, `missing "type"`},
		{"missing name", "ADD", `{"cniVersion":"1.1.0","type":"macvz-net"}`, nil, 7, "missing network name"},
		{"bad json", "ADD", `{"name":`, nil, 6, ""},
		{"macOS mode on linux", "ADD", `{` + good + `,"mode":"vmnet-nat"}`, nil, 7, "only available on macOS"},
		{"bridged without interface", "ADD", `{` + good + `,"mode":"vmnet-bridged"}`, nil, 7, `needs "interface"`},
		{"bad hostPort", "ADD", `{` + good + `,"runtimeConfig":{"portMappings":[{"hostPort":70000,"containerPort":80}]}}`, nil, 7, "hostPort 70000"},
		{"unsupported version", "ADD", `{"cniVersion":"9.9.9","name":"n","type":"macvz-net"}`, nil, 1, ""},
		{"check without prevResult", "CHECK", `{` + good + `}`, nil, 7, "prevResult"},
		{"gc without list", "GC", `{` + good + `}`, nil, 7, "valid-attachments"},
		{"gc on 1.0.0", "GC", `{"cniVersion":"1.0.0","name":"n","type":"macvz-net","cni.dev/valid-attachments":[]}`, nil, 1, ""},
		{"status on 0.4.0", "STATUS", `{"cniVersion":"0.4.0","name":"n","type":"macvz-net"}`, nil, 1, ""},
		{"missing CNI_IFNAME", "ADD", `{` + good + `}`, map[string]string{"CNI_IFNAME": ""}, 4, "CNI_IFNAME"},
		{"missing CNI_NETNS", "ADD", `{` + good + `}`, map[string]string{"CNI_NETNS": ""}, 4, "CNI_NETNS"},
	} {
		env := cniEnv(tc.cmd)
		for k, v := range tc.env {
			if v == "" {
				delete(env, k)
			} else {
				env[k] = v
			}
		}
		_, cerr := execPlugin(t, env, tc.conf)
		if cerr == nil || cerr.Code != tc.code || !strings.Contains(cerr.Msg, tc.msg) {
			t.Errorf("%s: got %+v, want code %d with %q", tc.name, cerr, tc.code, tc.msg)
		}
	}
}
