package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"time"
)

// regAuth is what `macvz image pull` sends the daemon for a registry:
// a user and password, or an identity token.
type regAuth struct {
	Username, Password, IdentityToken string
}

// dockerConfig is the part of a Docker config.json that names
// credentials: inline entries by registry, a credential helper per
// registry, or one store for all.
type dockerConfig struct {
	Auths map[string]struct {
		Auth          string `json:"auth"`
		Username      string `json:"username"`
		Password      string `json:"password"`
		IdentityToken string `json:"identitytoken"`
	} `json:"auths"`
	CredHelpers map[string]string `json:"credHelpers"`
	CredsStore  string            `json:"credsStore"`
}

// dockerConfigPath is where docker and crictl users keep credentials:
// $DOCKER_CONFIG/config.json, else ~/.docker/config.json (of the user
// who ran sudo, when run through it).
func dockerConfigPath() string {
	if d := os.Getenv("DOCKER_CONFIG"); d != "" {
		return filepath.Join(d, "config.json")
	}
	home, _ := os.UserHomeDir()
	if name := os.Getenv("SUDO_USER"); name != "" && name != "root" {
		if u, err := user.Lookup(name); err == nil && u.HomeDir != "" {
			home = u.HomeDir
		}
	}
	return filepath.Join(home, ".docker", "config.json")
}

// registryKeys are the names a config.json may file a registry under:
// Docker Hub's historical URL for docker.io, the host with and without
// a scheme.
func registryKeys(host string) []string {
	if host == "docker.io" || host == "registry-1.docker.io" || host == "index.docker.io" {
		return []string{"https://index.docker.io/v1/", "index.docker.io", "docker.io", "registry-1.docker.io"}
	}
	return []string{host, "https://" + host, "http://" + host, "https://" + host + "/v2/"}
}

// authFromDockerConfig finds host's credentials in a Docker config
// file; none (nil, nil) when the file or the entry is missing.
func authFromDockerConfig(ctx context.Context, path, host string) (*regAuth, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var cfg dockerConfig
	if err := json.Unmarshal(b, &cfg); err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	for _, k := range registryKeys(host) {
		if h := cfg.CredHelpers[k]; h != "" {
			return credentialHelper(ctx, h, k)
		}
	}
	for _, k := range registryKeys(host) {
		e, ok := cfg.Auths[k]
		if !ok {
			continue
		}
		a := &regAuth{Username: e.Username, Password: e.Password, IdentityToken: e.IdentityToken}
		if e.Auth != "" {
			raw, err := base64.StdEncoding.DecodeString(e.Auth)
			if err != nil {
				return nil, fmt.Errorf("%s: the auth of %s is not base64", path, k)
			}
			user, pass, ok := strings.Cut(string(raw), ":")
			if !ok {
				return nil, fmt.Errorf("%s: the auth of %s is not user:password", path, k)
			}
			a.Username, a.Password = user, pass
		}
		if a.Username != "" || a.IdentityToken != "" {
			return a, nil
		}
	}
	if cfg.CredsStore != "" {
		return credentialHelper(ctx, cfg.CredsStore, registryKeys(host)[0])
	}
	return nil, nil
}

// credentialHelper asks docker-credential-<name> for a registry's
// credentials, as docker does (the protocol: the server URL on stdin,
// JSON with Username and Secret on stdout; "<token>" as the user means
// an identity token).
func credentialHelper(ctx context.Context, name, server string) (*regAuth, error) {
	if strings.ContainsAny(name, "/\\ ") {
		return nil, fmt.Errorf("credential helper %q: not a helper name", name)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "docker-credential-"+name, "get")
	cmd.Stdin = strings.NewReader(server)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		if strings.Contains(string(out)+stderr.String(), "credentials not found") {
			return nil, nil
		}
		return nil, fmt.Errorf("docker-credential-%s get %s: %v %s", name, server, err, strings.TrimSpace(stderr.String()))
	}
	var r struct{ Username, Secret string }
	if err := json.Unmarshal(out, &r); err != nil {
		return nil, fmt.Errorf("docker-credential-%s: %v", name, err)
	}
	if r.Username == "<token>" {
		return &regAuth{IdentityToken: r.Secret}, nil
	}
	return &regAuth{Username: r.Username, Password: r.Secret}, nil
}

// parseCreds reads --creds USER[:PASSWORD], as crictl takes it; a
// password left out is read from the terminal by the caller.
func parseCreds(s string) (name, pass string, hasPass bool, err error) {
	name, pass, hasPass = strings.Cut(s, ":")
	if name == "" {
		return "", "", false, fmt.Errorf("--creds: the user name is empty")
	}
	return name, pass, hasPass, nil
}
