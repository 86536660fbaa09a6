package config

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
)

func TestDefaultTOMLRoundTrip(t *testing.T) {
	got, err := Decode(bytes.NewReader(DefaultTOML()))
	if err != nil {
		t.Fatalf("decode default TOML: %v\n%s", err, DefaultTOML())
	}
	if !reflect.DeepEqual(got, Default()) {
		t.Fatalf("default TOML decodes to %+v, want %+v", got, Default())
	}
	// Every key of the struct appears in the commented text.
	for _, key := range []string{"root", "state", "socket", "backend", "level", "format", "max_concurrent_downloads", "max_unpacked_size", "mirrors", "insecure", "skip_verify", "default_cpus", "default_memory_bytes", "boot_timeout", "max_concurrent_boots", "binary", "accel", "vm_image", "allow_vm_image_annotation", "conf_template", "device_plugin", "device_plugin_dir", "address"} {
		if !strings.Contains(string(DefaultTOML()), key+" =") {
			t.Errorf("default TOML does not document %q", key)
		}
	}
}

func TestDecodeOverridesDefaults(t *testing.T) {
	cfg, err := Decode(strings.NewReader(`
root = "/srv/macvz"
[image]
max_concurrent_downloads = 8
[registry.hosts."registry.k8s.io"]
mirrors = ["127.0.0.1:5000"]
[registry.hosts."127.0.0.1:5000"]
insecure = true
`))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Root != "/srv/macvz" || cfg.Socket != Default().Socket || cfg.Image.MaxConcurrentDownloads != 8 {
		t.Fatalf("unexpected config %+v", cfg)
	}
	if m := cfg.Registry.Hosts["registry.k8s.io"].Mirrors; len(m) != 1 || m[0] != "127.0.0.1:5000" {
		t.Fatalf("mirrors = %v", m)
	}
	if !cfg.Registry.Hosts["127.0.0.1:5000"].Insecure {
		t.Fatal("insecure not set")
	}
}

func TestDecodeRejects(t *testing.T) {
	for name, tc := range map[string]struct{ in, want string }{
		"unknown key":           {`rooot = "/x"`, "rooot"},
		"relative root":         {`root = "var/lib"`, "root"},
		"backend":               {`backend = "kvm"`, "backend"},
		"log level":             {"[log]\nlevel = \"loud\"", "log.level"},
		"downloads":             {"[image]\nmax_concurrent_downloads = 0", "max_concurrent_downloads"},
		"device plugin dir":     {"[kubelet]\ndevice_plugin_dir = \"device-plugins\"", "kubelet.device_plugin_dir"},
		"unpacked size":         {"[image]\nmax_unpacked_size = 1000", "max_unpacked_size"},
		"mirror scheme":         {"[registry.hosts.\"a.io\"]\nmirrors = [\"http://m:5000\"]", "mirrors"},
		"syntax":                {`root = `, "line 1"},
		"wrong type":            {`root = 3`, "root"},
		"unknown host key":      {"[registry.hosts.\"a.io\"]\nmirror = [\"m\"]", "mirror"},
		"default handler image": {"[runtime_handlers.macvz]\nvm_image = \"x\"", "runtime_handlers.macvz.vm_image"},
		"empty handler name":    {"[runtime_handlers.\"\"]\nallow_vm_image_annotation = true", "runtime_handlers"},
		"handler agent":         {"[runtime_handlers.tart]\nagent = \"off\"", "runtime_handlers.tart.agent"},
		"metrics host":          {"[metrics]\naddress = \"localhost:9102\"", "metrics.address"},
		"metrics no port":       {"[metrics]\naddress = \"127.0.0.1\"", "metrics.address"},
		"metrics bad port":      {"[metrics]\naddress = \"127.0.0.1:99999\"", "metrics.address"},
		"concurrent boots":      {"[vm]\nmax_concurrent_boots = -2", "vm.max_concurrent_boots"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Decode(strings.NewReader(tc.in))
			if err == nil {
				t.Fatal("accepted")
			}
			if !errdefs.IsInvalidArgument(err) {
				t.Errorf("error %v is not InvalidArgument", err)
			}
			if !strings.Contains(strings.ToLower(err.Error()), tc.want) {
				t.Errorf("error %q does not mention %q", err, tc.want)
			}
		})
	}
}

func TestLoadMissingFile(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "none.toml")
	cfg, err := Load(missing, false)
	if err != nil || !reflect.DeepEqual(cfg, Default()) {
		t.Fatalf("implicit missing file: %v %+v", err, cfg)
	}
	if _, err := Load(missing, true); err == nil {
		t.Fatal("explicit missing --config accepted")
	}
	p := filepath.Join(t.TempDir(), "c.toml")
	if err := os.WriteFile(p, []byte("socket = \"/tmp/x.sock\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err = Load(p, true)
	if err != nil || cfg.Socket != "/tmp/x.sock" {
		t.Fatalf("load: %v %+v", err, cfg)
	}
}

func TestVMImageAnnotationOption(t *testing.T) {
	cfg, err := Decode(strings.NewReader(`
[runtime_handlers.macvz]
allow_vm_image_annotation = true
[runtime_handlers.linux]
vm_image = "example.com/guest:1"
`))
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.RuntimeHandlers[DefaultHandler].AllowVMImageAnnotation {
		t.Error("default handler: the annotation is not allowed")
	}
	if h := cfg.RuntimeHandlers["linux"]; h.AllowVMImageAnnotation || h.VMImage != "example.com/guest:1" {
		t.Errorf("handler linux: %+v (the annotation must be off unless set)", h)
	}
	if Default().RuntimeHandlers[DefaultHandler].AllowVMImageAnnotation {
		t.Error("allowed by default")
	}
}

// TestConfTemplateValidation: network.conf_template is off by default;
// when set, its file must exist and parse as a Go template.
func TestConfTemplateValidation(t *testing.T) {
	if Default().Network.ConfTemplate != "" {
		t.Fatalf("conf_template defaults to %q, want none", Default().Network.ConfTemplate)
	}
	dir := t.TempDir()
	good := filepath.Join(dir, "good.tmpl")
	bad := filepath.Join(dir, "bad.tmpl")
	empty := filepath.Join(dir, "empty.tmpl")
	for p, text := range map[string]string{
		good:  `{"cniVersion": "1.1.0", "name": "macvz", "plugins": [{"type": "macvz-net", "ipam": {"type": "host-local", "ranges": [[{"subnet": "{{.PodCIDR}}"}]]}}]}`,
		bad:   `{"subnet": "{{.PodCIDR"}`,
		empty: "\n",
	} {
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cfg, err := Decode(strings.NewReader("[network]\nconf_template = \"" + good + "\"\n"))
	if err != nil || cfg.Network.ConfTemplate != good {
		t.Fatalf("a good template: %v %+v", err, cfg)
	}
	for name, tc := range map[string]struct{ path, want string }{
		"missing":  {filepath.Join(dir, "none.tmpl"), "no such file"},
		"unparsed": {bad, "bad.tmpl"},
		"empty":    {empty, "empty"},
		"relative": {"net.tmpl", "absolute"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Decode(strings.NewReader("[network]\nconf_template = \"" + tc.path + "\"\n"))
			if err == nil {
				t.Fatal("accepted")
			}
			if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), "network.conf_template") || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q: want InvalidArgument naming network.conf_template and %q", err, tc.want)
			}
		})
	}
}

func TestMetricsAddress(t *testing.T) {
	if Default().Metrics.Address != "" {
		t.Error("metrics are on by default")
	}
	for _, a := range []string{"127.0.0.1:9102", "[::1]:0", "0.0.0.0:9102"} {
		cfg, err := Decode(strings.NewReader("[metrics]\naddress = \"" + a + "\""))
		if err != nil || cfg.Metrics.Address != a {
			t.Errorf("address %q: %v", a, err)
		}
	}
}

func TestTracing(t *testing.T) {
	if d := Default().Tracing; d.Endpoint != "" || d.SamplingRatio != 1 || d.ServiceName != "macvz" {
		t.Errorf("default [tracing] %+v: want off, ratio 1, service macvz", d)
	}
	cfg, err := Decode(strings.NewReader("[tracing]\nendpoint = \"https://otel.example:4318\"\nsampling_ratio = 0.25\nservice_name = \"mini-7\""))
	if err != nil || cfg.Tracing != (Tracing{Endpoint: "https://otel.example:4318", SamplingRatio: 0.25, ServiceName: "mini-7"}) {
		t.Errorf("[tracing]: %+v, %v", cfg.Tracing, err)
	}
	for _, bad := range []string{
		`endpoint = "127.0.0.1:4318"`, // no scheme: the exporter would take it as a path
		`endpoint = "grpc://127.0.0.1:4317"`,
		`endpoint = "http://"`,
		`endpoint = "https://user:secret@otel.example:4318"`,
		`endpoint = "ftp://user:secret@otel.example"`,
		`endpoint = "http://user:secret@[::1"`,
		`sampling_ratio = 1.5`,
		`sampling_ratio = -0.1`,
		`sampling_ratio = nan`,
		`service_name = ""`,
	} {
		_, err := Decode(strings.NewReader("[tracing]\n" + bad))
		if err == nil || !strings.Contains(err.Error(), "tracing.") || strings.Contains(err.Error(), "secret") {
			t.Errorf("%s: %v, want an error naming the key (and no password)", bad, err)
		}
	}
}
