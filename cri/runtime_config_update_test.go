package cri

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/macvz/macvz/cri/config"
)

// testConfTemplate is a dual-stack capable macvz-net + host-local
// template: one range per pod CIDR, the routes of their families.
const testConfTemplate = `{
  "cniVersion": "1.1.0",
  "name": "macvz",
  "plugins": [{
    "type": "macvz-net", "mode": "bridge-tap", "bridge": "macvz0",
    "ipam": {
      "type": "host-local",
      "ranges": [{{range $i, $c := .PodCIDRRanges}}{{if $i}}, {{end}}[{"subnet": "{{$c}}"}]{{end}}],
      "routes": [{{range $i, $r := .Routes}}{{if $i}}, {{end}}{"dst": "{{$r}}"}{{end}}]
    },
    "first": "{{.PodCIDR}}",
    "capabilities": {"portMappings": true, "dns": true, "mac": true}
  }]
}
`

// stubPlugin stands in for macvz-net in Status: it speaks CNI 1.1's
// VERSION and passes STATUS (the daemon's readiness check runs nothing
// else), so no real plugin is needed.
const stubPlugin = `#!/bin/sh
cat >/dev/null
case "$CNI_COMMAND" in
VERSION) echo '{"cniVersion": "1.1.0", "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]}' ;;
STATUS) ;;
*) echo '{"cniVersion": "1.1.0", "code": 4, "msg": "stub plugin: only VERSION and STATUS"}'; exit 1 ;;
esac
`

// templateEnv is a fake daemon with network.conf_template set (when tmpl
// is not ""), its own conf dir and a bin dir holding the stub macvz-net.
type templateEnv struct {
	*fake
	tmpl, confDir, conf string
}

func newTemplateFake(t *testing.T, tmpl string) *templateEnv {
	t.Helper()
	dir := t.TempDir()
	e := &templateEnv{confDir: filepath.Join(dir, "net.d")}
	e.conf = filepath.Join(e.confDir, templateConfName)
	bin := filepath.Join(dir, "bin")
	if err := os.Mkdir(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bin, "macvz-net"), []byte(stubPlugin), 0o755); err != nil {
		t.Fatal(err)
	}
	if tmpl != "" {
		e.tmpl = filepath.Join(dir, "macvz.conflist.tmpl")
		if err := os.WriteFile(e.tmpl, []byte(tmpl), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	e.fake = newFake(t, func(c *config.Config) {
		c.Network.ConfTemplate, c.Network.ConfDir, c.Network.BinDirs = e.tmpl, e.confDir, []string{bin}
	})
	return e
}

func (e *templateEnv) update(cidr string) error {
	_, err := e.UpdateRuntimeConfig(context.Background(), &runtimeapi.UpdateRuntimeConfigRequest{
		RuntimeConfig: &runtimeapi.RuntimeConfig{NetworkConfig: &runtimeapi.NetworkConfig{PodCidr: cidr}},
	})
	return err
}

// recorded is <root>/pod-cidr ("" when absent).
func (e *templateEnv) recorded(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(e.cfg.Root, podCIDRFile))
	if os.IsNotExist(err) {
		return ""
	}
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// ipam is the rendered conflist's host-local ranges and routes.
func (e *templateEnv) ipam(t *testing.T) (ranges [][]string, routes []string, first string) {
	t.Helper()
	b, err := os.ReadFile(e.conf)
	if err != nil {
		t.Fatal(err)
	}
	var l struct {
		Plugins []struct {
			Type  string `json:"type"`
			First string `json:"first"`
			IPAM  struct {
				Type   string `json:"type"`
				Ranges [][]struct {
					Subnet string `json:"subnet"`
				} `json:"ranges"`
				Routes []struct {
					Dst string `json:"dst"`
				} `json:"routes"`
			} `json:"ipam"`
		} `json:"plugins"`
	}
	if err := json.Unmarshal(b, &l); err != nil {
		t.Fatalf("%s is not JSON: %v\n%s", e.conf, err, b)
	}
	if len(l.Plugins) != 1 || l.Plugins[0].Type != "macvz-net" || l.Plugins[0].IPAM.Type != "host-local" {
		t.Fatalf("rendered %s", b)
	}
	for _, set := range l.Plugins[0].IPAM.Ranges {
		var s []string
		for _, r := range set {
			s = append(s, r.Subnet)
		}
		ranges = append(ranges, s)
	}
	for _, r := range l.Plugins[0].IPAM.Routes {
		routes = append(routes, r.Dst)
	}
	return ranges, routes, l.Plugins[0].First
}

// TestUpdateRuntimeConfigRendersTemplate: kubelet's pod CIDR renders
// conf_template into <conf_dir>/10-macvz.conflist (host-local's ranges
// and routes from it; dual stack gives one range per family and both
// default routes), the CIDR is recorded, a repeated call rewrites
// nothing, and the network becomes ready from that file without a
// restart.
func TestUpdateRuntimeConfigRendersTemplate(t *testing.T) {
	e := newTemplateFake(t, testConfTemplate)
	if n := conditions(t, e.fake)[runtimeapi.NetworkReady]; n.GetStatus() || n.GetReason() != "NoNetworkConfig" {
		t.Fatalf("NetworkReady before the pod CIDR: %v", n)
	}

	if err := e.update("10.244.1.0/24"); err != nil {
		t.Fatalf("UpdateRuntimeConfig: %v", err)
	}
	ranges, routes, first := e.ipam(t)
	if !reflect.DeepEqual(ranges, [][]string{{"10.244.1.0/24"}}) || !reflect.DeepEqual(routes, []string{"0.0.0.0/0"}) || first != "10.244.1.0/24" {
		t.Errorf("one CIDR: ranges %v routes %v .PodCIDR %q", ranges, routes, first)
	}
	if got := e.recorded(t); got != "10.244.1.0/24\n" {
		t.Errorf("recorded %q", got)
	}
	if n := conditions(t, e.fake)[runtimeapi.NetworkReady]; !n.GetStatus() {
		t.Errorf("NetworkReady after the render: %v", n)
	}

	// The same CIDR again: the file is not replaced (a rewrite is a
	// rename, a new inode).
	before, err := os.Stat(e.conf)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.update("10.244.1.0/24"); err != nil {
		t.Fatalf("UpdateRuntimeConfig again: %v", err)
	}
	if after, err := os.Stat(e.conf); err != nil || !os.SameFile(before, after) {
		t.Errorf("the unchanged conflist was rewritten (%v)", err)
	}

	// Dual stack, as kubelet joins the Node's podCIDRs.
	if err := e.update("10.244.2.0/24, fd00:10:244:2::/64"); err != nil {
		t.Fatalf("UpdateRuntimeConfig dual stack: %v", err)
	}
	ranges, routes, first = e.ipam(t)
	if !reflect.DeepEqual(ranges, [][]string{{"10.244.2.0/24"}, {"fd00:10:244:2::/64"}}) || !reflect.DeepEqual(routes, []string{"0.0.0.0/0", "::/0"}) || first != "10.244.2.0/24" {
		t.Errorf("two CIDRs: ranges %v routes %v .PodCIDR %q", ranges, routes, first)
	}
	if got := e.recorded(t); got != "10.244.2.0/24,fd00:10:244:2::/64\n" {
		t.Errorf("recorded %q", got)
	}
	if ents, _ := os.ReadDir(e.confDir); len(ents) != 1 {
		t.Errorf("conf dir holds %v, want only %s", ents, templateConfName)
	}
	if n := conditions(t, e.fake)[runtimeapi.NetworkReady]; !n.GetStatus() {
		t.Errorf("NetworkReady after the dual-stack render: %v", n)
	}
}

// TestUpdateRuntimeConfigRestore: at start the daemon renders the
// recorded CIDR with the template as it is now (restorePodCIDRs, which
// newService calls): an edited template takes effect before kubelet
// calls again.
func TestUpdateRuntimeConfigRestore(t *testing.T) {
	e := newTemplateFake(t, testConfTemplate)
	if err := e.update("fd00:10:244:3::/64"); err != nil {
		t.Fatal(err)
	}
	ranges, routes, _ := e.ipam(t)
	if !reflect.DeepEqual(ranges, [][]string{{"fd00:10:244:3::/64"}}) || !reflect.DeepEqual(routes, []string{"::/0"}) {
		t.Errorf("IPv6 only: ranges %v routes %v", ranges, routes)
	}
	edited := strings.Replace(testConfTemplate, `"first": "{{.PodCIDR}}"`, `"first": "edited {{.PodCIDR}}"`, 1)
	if err := os.WriteFile(e.tmpl, []byte(edited), 0o644); err != nil {
		t.Fatal(err)
	}
	e.restorePodCIDRs()
	if _, _, first := e.ipam(t); first != "edited fd00:10:244:3::/64" {
		t.Errorf("after a restart with an edited template: .PodCIDR rendered as %q", first)
	}
}

// TestUpdateRuntimeConfigNoop: an empty pod_cidr changes nothing.
func TestUpdateRuntimeConfigNoop(t *testing.T) {
	e := newTemplateFake(t, testConfTemplate)
	if err := e.update(""); err != nil {
		t.Fatalf("empty pod_cidr: %v", err)
	}
	if _, err := e.UpdateRuntimeConfig(context.Background(), &runtimeapi.UpdateRuntimeConfigRequest{}); err != nil {
		t.Fatalf("no runtime_config: %v", err)
	}
	if _, err := os.Stat(e.conf); !os.IsNotExist(err) {
		t.Errorf("conflist written for an empty pod_cidr (%v)", err)
	}
	if got := e.recorded(t); got != "" {
		t.Errorf("recorded %q for an empty pod_cidr", got)
	}
}

// TestUpdateRuntimeConfigInvalid: a pod_cidr that is not a list of
// CIDRs is InvalidArgument, names the bad entry, and changes nothing.
func TestUpdateRuntimeConfigInvalid(t *testing.T) {
	e := newTemplateFake(t, testConfTemplate)
	if err := e.update("10.244.1.0/24"); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ cidr, want string }{
		{"garbage", `"garbage" is not a CIDR`},
		{"10.244.0.0/33", `"10.244.0.0/33" is not a CIDR`},
		{"10.244.1.0", `"10.244.1.0" is not a CIDR`},
		{"10.244.1.5/24", "host bits set; the network is 10.244.1.0/24"},
		{"10.244.2.0/24,", "empty entry"},
		{"10.244.2.0/24,fd00::/64,nope", `"nope" is not a CIDR`},
	} {
		err := e.update(tc.cidr)
		if grpcCode(err) != codes.InvalidArgument || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("pod_cidr %q: %v, want InvalidArgument saying %q", tc.cidr, err, tc.want)
		}
	}
	if ranges, _, _ := e.ipam(t); !reflect.DeepEqual(ranges, [][]string{{"10.244.1.0/24"}}) {
		t.Errorf("after refused calls the conflist has ranges %v", ranges)
	}
	if got := e.recorded(t); got != "10.244.1.0/24\n" {
		t.Errorf("after refused calls recorded %q", got)
	}
}

// TestUpdateRuntimeConfigWithoutTemplate: without conf_template the CIDR
// is recorded and the conf dir is not touched (containerd's behaviour:
// another component writes the network configuration).
func TestUpdateRuntimeConfigWithoutTemplate(t *testing.T) {
	e := newTemplateFake(t, "")
	if err := e.update("10.244.1.0/24,fd00:10:244:1::/64"); err != nil {
		t.Fatalf("UpdateRuntimeConfig: %v", err)
	}
	if _, err := os.Stat(e.confDir); !os.IsNotExist(err) {
		t.Errorf("conf dir touched without a template (%v)", err)
	}
	if got := e.recorded(t); got != "10.244.1.0/24,fd00:10:244:1::/64\n" {
		t.Errorf("recorded %q", got)
	}
	if n := conditions(t, e.fake)[runtimeapi.NetworkReady]; n.GetStatus() {
		t.Errorf("NetworkReady without any configuration: %v", n)
	}
}

// TestUpdateRuntimeConfigBadRender: a template that renders no conflist
// fails the call (FailedPrecondition, naming the template) and writes
// nothing.
func TestUpdateRuntimeConfigBadRender(t *testing.T) {
	e := newTemplateFake(t, `{"cniVersion": "1.1.0", "name": "macvz", "plugins": [{"type": "macvz-net", "subnet": {{.PodCIDR}}}]}`)
	err := e.update("10.244.1.0/24")
	if grpcCode(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), e.tmpl) {
		t.Errorf("a template rendering bad JSON: %v, want FailedPrecondition naming it", err)
	}
	if _, err := os.Stat(e.conf); !os.IsNotExist(err) {
		t.Errorf("a bad conflist was written (%v)", err)
	}
}
