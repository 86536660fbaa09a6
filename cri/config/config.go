// Package config is macvz's daemon configuration (/etc/macvz/config.toml).
package config

// Config is the whole daemon configuration. Field comments are the
// reference; `macvz config default` prints them with their defaults.
type Config struct {
	// Root holds persistent data: content store, image records, VM bases.
	Root string `toml:"root"`
	// State holds runtime state that does not survive a reboot: sockets.
	State string `toml:"state"`
	// Socket is the CRI gRPC unix socket.
	Socket string `toml:"socket"`
	// Backend is the VM driver: "qemu" (Linux) or "vz" (macOS).
	Backend string `toml:"backend"`

	Log      Log      `toml:"log"`
	Registry Registry `toml:"registry"`
	Image    Image    `toml:"image"`
}

// Log configures the daemon's log/slog output.
type Log struct {
	Level  string `toml:"level"`  // debug, info, warn, error
	Format string `toml:"format"` // text or json
}

// Registry configures how images are fetched.
type Registry struct {
	// Hosts maps a registry host as written in image references
	// ("docker.io", "registry.k8s.io", "localhost:5000") to its settings.
	Hosts map[string]Host `toml:"hosts"`
}

// Host is the configuration of one registry host.
type Host struct {
	// Mirrors are tried in order before the host itself, each as
	// "host[:port]" (scheme from Insecure of that mirror's own entry, or
	// https).
	Mirrors []string `toml:"mirrors"`
	// Insecure allows plain HTTP to this host. Never implied.
	Insecure bool `toml:"insecure"`
	// SkipVerify disables TLS certificate verification for this host.
	SkipVerify bool `toml:"skip_verify"`
}

// Image configures pulls.
type Image struct {
	// MaxConcurrentDownloads bounds the blobs fetched at once per pull.
	MaxConcurrentDownloads int `toml:"max_concurrent_downloads"`
}
