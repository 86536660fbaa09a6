package main

import (
	"context"
	"os"
	"path/filepath"
	"testing"
)

// TestDockerConfigAuth: credentials are found under every name a
// config.json files a registry by (Docker Hub's URL for docker.io), from
// "auth" (base64 user:password) or user and password or an identity
// token; a missing file or entry is none; a broken one is an error
// that names the file and never prints the secret.
func TestDockerConfigAuth(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "config.json")
	cfg := `{"auths": {
	  "https://index.docker.io/v1/": {"auth": "aHViOnMzY3JldA=="},
	  "reg.example:5000": {"username": "u", "password": "p"},
	  "https://tok.example": {"identitytoken": "refresh"},
	  "bad.example": {"auth": "!!!"}
	}}`
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for host, want := range map[string]regAuth{
		"docker.io":        {Username: "hub", Password: "s3cret"},
		"reg.example:5000": {Username: "u", Password: "p"},
		"tok.example":      {IdentityToken: "refresh"},
	} {
		a, err := authFromDockerConfig(ctx, path, host)
		if err != nil || a == nil || *a != want {
			t.Errorf("%s: %+v %v; want %+v", host, a, err, want)
		}
	}
	if a, err := authFromDockerConfig(ctx, path, "other.example"); a != nil || err != nil {
		t.Errorf("a registry without an entry: %+v %v", a, err)
	}
	if a, err := authFromDockerConfig(ctx, filepath.Join(dir, "none.json"), "docker.io"); a != nil || err != nil {
		t.Errorf("no config file: %+v %v", a, err)
	}
	if _, err := authFromDockerConfig(ctx, path, "bad.example"); err == nil {
		t.Error("an auth that is not base64 was accepted")
	}
	if name, pass, has, err := parseCreds("me:pa:ss"); err != nil || name != "me" || pass != "pa:ss" || !has {
		t.Errorf("parseCreds: %q %q %v %v", name, pass, has, err)
	}
	if _, _, has, err := parseCreds("me"); err != nil || has {
		t.Errorf("parseCreds without a password: %v %v", has, err)
	}
	if _, _, _, err := parseCreds(":x"); err == nil {
		t.Error("an empty user name was accepted")
	}
}

// TestCredentialHelper: docker-credential-<name> on PATH answers for a
// registry; "<token>" as the user is an identity token.
func TestCredentialHelper(t *testing.T) {
	bin := t.TempDir()
	script := "#!/bin/sh\nread server\nif [ \"$server\" = tok.example ]; then echo '{\"Username\":\"<token>\",\"Secret\":\"rt\"}'; else echo '{\"Username\":\"u\",\"Secret\":\"pw\"}'; fi\n"
	if err := os.WriteFile(filepath.Join(bin, "docker-credential-fake"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", bin+":"+os.Getenv("PATH"))
	path := filepath.Join(t.TempDir(), "config.json")
	if err := os.WriteFile(path, []byte(`{"credHelpers": {"tok.example": "fake"}, "credsStore": "fake"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if a, err := authFromDockerConfig(ctx, path, "tok.example"); err != nil || a == nil || a.IdentityToken != "rt" {
		t.Errorf("credHelpers: %+v %v", a, err)
	}
	if a, err := authFromDockerConfig(ctx, path, "reg.example"); err != nil || a == nil || a.Username != "u" || a.Password != "pw" {
		t.Errorf("credsStore: %+v %v", a, err)
	}
	if _, err := credentialHelper(ctx, "../evil", "x"); err == nil {
		t.Error("a helper name with a path was run")
	}
}
