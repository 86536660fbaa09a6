package config

import (
	"bytes"
	"text/template"
)

// defaultTemplate is `macvz config default`: every key with its default
// and what it means. config_test.go decodes it back and compares with
// Default(), so the text and the code cannot drift apart.
var defaultTemplate = template.Must(template.New("config").Parse(`# macvz daemon configuration ({{.Path}}).
# Every key is shown with its default; delete what you do not change.
# Unknown keys are an error, so a misspelt key is reported, not ignored.

# Persistent data: image content store, image records, VM disk bases and
# sandbox disk clones. Bases and clones must be on one file system that can
# clone files (APFS on macOS; XFS with reflink=1 or btrfs on Linux), or
# every sandbox start copies its whole disk.
root = "{{.C.Root}}"

# Runtime state that does not survive a reboot: per-VM shim sockets.
state = "{{.C.State}}"

# The CRI v1 gRPC socket kubelet and crictl connect to
# (--container-runtime-endpoint unix://<socket>). Created mode 0660, owned
# by the daemon's user (root).
socket = "{{.C.Socket}}"

# VM driver: "vz" (Virtualization.framework, macOS guests on macOS) or
# "qemu" (Linux guests under qemu-system-x86_64 on Linux).
backend = "{{.C.Backend}}"

[log]
  # debug, info, warn or error.
  level = "{{.C.Log.Level}}"
  # text (logfmt-style key=value) or json.
  format = "{{.C.Log.Format}}"

[image]
  # Blobs (layers, disk chunks) fetched at once by one pull.
  max_concurrent_downloads = {{.C.Image.MaxConcurrentDownloads}}

# Per-registry settings, keyed by the host as written in image references.
# Mirrors are tried in order before the host itself; credentials given to
# PullImage are sent only to the host they were given for. Plain HTTP is
# used only for a host (or mirror) whose own entry says insecure = true.
#
# [registry.hosts."registry.k8s.io"]
#   mirrors = ["mirror.example.com:5000"]
#
# [registry.hosts."mirror.example.com:5000"]
#   insecure = true      # plain HTTP
#   skip_verify = false  # HTTPS without certificate verification
[registry]
  [registry.hosts]
`))

// DefaultTOML is the default configuration as commented TOML.
func DefaultTOML() []byte {
	var buf bytes.Buffer
	err := defaultTemplate.Execute(&buf, struct {
		Path string
		C    *Config
	}{DefaultPath, Default()})
	if err != nil {
		panic(err) // the template is fixed; a failure is a programming error
	}
	return buf.Bytes()
}
